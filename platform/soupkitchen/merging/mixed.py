"""The per-row adapter-coefficient layer: n LoRA adapters stacked over one frozen base W0.

For every targeted linear layer, with PEFT's scaling s_i = α_i / r_i (α_i / √r_i for rsLoRA),

    y = W0·x + Σ_i c_i · s_i · B_i (A_i x)      A_i [r_i, in], B_i [out, r_i], c [batch, n] or [batch, seq, n]

which equals the dense merge W = W0 + Σ_i c_i ΔW_i, ΔW_i = s_i B_i A_i, exactly: the LoRA path is linear
in c, so there are no cross terms. Ranks are zero-padded to r = max r_i (a zero row of A and zero column
of B add nothing), so all n adapters are two matmuls: x @ A_flatᵀ [.., n·r] → scale by c·s per adapter →
@ B_flatᵀ. Dropout is never applied (inference only). GPT-2 ``Conv1D`` (weight stored [in, out]) and
``nn.Linear`` are both handled: PEFT stores lora_A/lora_B as [r, in]/[out, r] for both.

A LoRA on a tied ``lm_head`` only adds its low-rank term to the output projection; the shared weight
itself is never written, so the input embedding stays W0.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# PEFT keys: "base_model.model.<module>.lora_A.weight" (saved) or "<module>.lora_A.<adapter>.weight" (live).
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
# PEFT also saves the base weight of a targeted tied lm_head (``save_embedding_layers``): W0, not LoRA.
_BASE_COPY_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.base_layer\.weight$")


@dataclass(frozen=True)
class LoraSpec:
    """What the mixing needs from a LoRA config: rank, α, targets (module-name suffixes), rsLoRA flag."""

    r: int
    alpha: float
    target_modules: tuple[str, ...]
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        """PEFT's s = α / r (α / √r with rsLoRA)."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def lora_spec(cfg) -> LoraSpec:
    """A ``LoraSpec`` from a soupkitchen ``LoraConfig``, a PEFT ``LoraConfig``, a mapping or a LoraSpec."""
    if isinstance(cfg, LoraSpec):
        return cfg
    get = cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)
    for unsupported in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if get(unsupported, None):
            raise ValueError(
                f"lora config sets {unsupported}={get(unsupported)!r}: mixing supports plain LoRA only"
            )
    alpha = get("lora_alpha", None) if get("alpha", None) is None else get("alpha")
    r, targets = get("r", None), get("target_modules", None)
    if r is None or alpha is None or not targets:
        raise ValueError(f"lora config needs r, alpha (or lora_alpha) and target_modules, got {cfg!r}")
    targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
    return LoraSpec(int(r), float(alpha), targets, bool(get("use_rslora", False)))


def lora_specs(lora_config, n: int) -> list[LoraSpec]:
    """One LoraSpec per adapter: a single config is shared, a sequence must have n entries."""
    if isinstance(lora_config, Sequence) and not isinstance(lora_config, (str, Mapping)):
        if len(lora_config) != n:
            raise ValueError(
                f"got {len(lora_config)} lora configs for {n} adapters; pass one, or one per adapter"
            )
        return [lora_spec(c) for c in lora_config]
    return [lora_spec(lora_config)] * n


def load_adapter_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a dir's trainable.safetensors / adapter_model.safetensors."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        found = [
            path / f for f in ("trainable.safetensors", "adapter_model.safetensors") if (path / f).is_file()
        ]
        if not found:
            raise FileNotFoundError(
                f"{path} holds neither trainable.safetensors nor adapter_model.safetensors"
            )
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    return load_file(str(path))


def parse_adapter(
    state: Mapping[str, torch.Tensor], name: str = "adapter"
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """PEFT LoRA state dict → ``{module path: (A [r, in], B [out, r])}`` and ``{module path: W0 copy}``.

    Accepts ``get_peft_model_state_dict`` keys, live ``...lora_A.<adapter name>.weight`` keys and
    ``trainable.safetensors`` (``adapter.*`` keys; ``value_heads.*`` are ignored). Anything that is not
    plain LoRA (DoRA, LoRA bias, embedding LoRA, modules_to_save) is refused.
    """
    if any(k.startswith("adapter.") for k in state):
        state = {k[len("adapter.") :]: v for k, v in state.items() if k.startswith("adapter.")}
    halves: dict[str, dict[str, torch.Tensor]] = {}
    base_copies = {}
    for key, t in state.items():
        if m := _LORA_KEY.match(key):
            halves.setdefault(m["module"], {})[m["ab"]] = t
        elif m := _BASE_COPY_KEY.match(key):
            base_copies[m["module"]] = t
        else:
            raise ValueError(
                f"{name}: unsupported key {key!r}; only LoRA lora_A/lora_B weights can be mixed "
                "(no DoRA, LoRA bias, embedding LoRA or modules_to_save)"
            )
    if not halves:
        raise ValueError(f"{name}: no lora_A/lora_B weights found; pass a PEFT LoRA state dict")
    pairs = {}
    for module, h in sorted(halves.items()):
        if set(h) != {"A", "B"}:
            raise ValueError(
                f"{name}: module {module!r} has lora_{''.join(h)} but not both lora_A and lora_B"
            )
        A, B = h["A"], h["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise ValueError(
                f"{name}: {module!r} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}; "
                "expected [r, in] and [out, r]"
            )
        pairs[module] = (A, B)
    return pairs, base_copies


def _matches(module: str, target: str) -> bool:
    return module == target or module.endswith("." + target)


def linear_shape(layer: nn.Module) -> tuple[int, int]:
    """(in, out) of an ``nn.Linear`` or GPT-2 ``Conv1D`` (weight [in, out]); TypeError for anything else."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    raise TypeError(f"{type(layer).__name__} is neither nn.Linear nor Conv1D")


def stack_adapters(
    model: nn.Module | None, adapters: Sequence[Mapping[str, torch.Tensor]], lora_config, names=None
) -> tuple[list[LoraSpec], dict[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Validate n adapters against each other, their configs and (when given) ``model``.

    Returns the per-adapter specs and ``{module path: [(A_i, B_i) for i in range(n)]}``. Every failure is a
    ValueError naming the adapter, the module and the fix.
    """
    n = len(adapters)
    if n == 0:
        raise ValueError("need at least one adapter")
    names = list(names) if names is not None else [f"adapter {i}" for i in range(n)]
    specs = lora_specs(lora_config, n)
    parsed = [parse_adapter(a, nm) for a, nm in zip(adapters, names, strict=True)]
    modules = list(parsed[0][0])
    for (pairs, _), nm in zip(parsed[1:], names[1:], strict=True):
        if set(pairs) != set(modules):
            diff = sorted(set(pairs) ^ set(modules))
            raise ValueError(
                f"{nm} targets different modules than {names[0]} (differ on {diff[:3]}); "
                "all adapters of a soup must use the same lora target_modules"
            )
    linear = dict(model.named_modules()) if model is not None else {}
    stacked: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for module in modules:
        for spec, (pairs, copies), nm in zip(specs, parsed, names, strict=True):
            A, B = pairs[module]
            if not any(_matches(module, t) for t in spec.target_modules):
                raise ValueError(
                    f"{nm}: module {module!r} is not in lora target_modules {list(spec.target_modules)}"
                )
            if A.shape[0] != spec.r:
                raise ValueError(
                    f"{nm}: {module!r} has rank {A.shape[0]} but its lora config says r={spec.r}; "
                    "pass the config the adapter was trained with (one per adapter if ranks differ)"
                )
            if model is not None:
                layer = linear.get(module)
                if layer is None:
                    raise ValueError(f"{nm}: module {module!r} does not exist in {type(model).__name__}")
                fan_in, fan_out = linear_shape(layer)
                if (A.shape[1], B.shape[0]) != (fan_in, fan_out):
                    raise ValueError(
                        f"{nm}: {module!r} maps {A.shape[1]}→{B.shape[0]} but the base layer is "
                        f"{fan_in}→{fan_out}; the adapter was trained on another base model"
                    )
                w0 = copies.get(module)
                if w0 is not None and (
                    w0.shape != layer.weight.shape
                    or not torch.allclose(
                        w0.float().cpu(), layer.weight.detach().float().cpu(), rtol=1e-3, atol=1e-5
                    )
                ):
                    raise ValueError(
                        f"{nm}: the saved base weight of {module!r} differs from this base model's; "
                        "the adapter was trained on another base (W0)"
                    )
            stacked.setdefault(module, []).append((A, B))
    for spec, nm in zip(specs, names, strict=True):
        unused = [t for t in spec.target_modules if not any(_matches(m, t) for m in modules)]
        if unused:
            raise ValueError(f"{nm}: lora target_modules {unused} match no module of the adapter")
    for module, ab in stacked.items():
        if len({(A.shape[1], B.shape[0]) for A, B in ab}) > 1:
            shapes = [(A.shape[1], B.shape[0]) for A, B in ab]
            raise ValueError(f"adapters disagree on the (in, out) shape of {module!r}: {shapes}")
    return specs, stacked


def flatten_stack(ab: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Zero-pad ranks to r = max r_i: A_flat [n·r, in] (rows i·r… of adapter i), B_flat [out, n·r], r."""
    r = max(A.shape[0] for A, _ in ab)
    A_flat = torch.cat([F.pad(A, (0, 0, 0, r - A.shape[0])) for A, _ in ab], dim=0)
    B_flat = torch.cat([F.pad(B, (0, r - B.shape[1])) for _, B in ab], dim=1)
    return A_flat, B_flat, r


class MixState:
    """Coefficients shared by every mixed layer of one model; set with ``set_coefficients``."""

    def __init__(self, n: int, names: list[str]):
        self.n, self.names = n, names
        self.c: torch.Tensor | None = None

    def rows_for(self, x: torch.Tensor) -> torch.Tensor:
        """c shaped to broadcast against x[..., n]: [batch, 1.., n] or [batch, seq, n]."""
        c = self.c
        if c is None:
            raise RuntimeError("no coefficients set: call set_coefficients(model, c) with c [batch, n] first")
        if c.ndim == 1:
            return c.view(*([1] * (x.ndim - 1)), self.n)
        rows = x.shape[0]
        if c.shape[0] != rows:
            # generate(num_beams=k | num_return_sequences=k) expands each row k times with repeat_interleave.
            if rows % c.shape[0]:
                raise ValueError(f"coefficients have {c.shape[0]} rows but the batch has {rows}")
            c = c.repeat_interleave(rows // c.shape[0], dim=0)
        if c.ndim == 2:
            return c.view(rows, *([1] * (x.ndim - 2)), self.n)
        if x.ndim != 3 or c.shape[1] != x.shape[1]:
            raise ValueError(
                f"per-token coefficients cover {c.shape[1]} positions but this forward has input "
                f"{tuple(x.shape[:-1])}; with a KV cache set c [batch, new tokens, n] before every step"
            )
        return c


class MixedLoRALinear(nn.Module):
    """y = W0·x + Σ_i c_i s_i B_i (A_i x) for the c of the shared ``MixState`` (see module docstring).

    ``base_layer`` is the original ``nn.Linear``/``Conv1D`` (its weight object is kept, so ties survive and
    are never written). Buffers: ``lora_A`` [n·r, in], ``lora_B`` [out, n·r], ``scaling`` [n].
    """

    def __init__(
        self,
        base_layer: nn.Module,
        ab: Sequence[tuple[torch.Tensor, torch.Tensor]],
        scaling: Sequence[float],
        state: MixState,
    ):
        super().__init__()
        self.base_layer, self.mix = base_layer, state
        self.in_features, self.out_features = linear_shape(base_layer)
        A_flat, B_flat, self.r = flatten_stack(ab)
        w = base_layer.weight
        self.register_buffer("lora_A", A_flat.to(w.device, w.dtype), persistent=False)
        self.register_buffer("lora_B", B_flat.to(w.device, w.dtype), persistent=False)
        self.register_buffer("scaling", torch.tensor(list(scaling), device=w.device), persistent=False)
        self.n = len(ab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_delta(x, self.coefficients(x))

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """c of this forward, [batch, 1|seq, n] (``soupkitchen.hoe`` adds per-token router terms here)."""
        return self.mix.rows_for(x)

    def lora_delta(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Σ_i c_i s_i B_i (A_i x): two matmuls over the flattened stack."""
        cs = (c * self.scaling).to(x.dtype)
        h = F.linear(x, self.lora_A).unflatten(-1, (self.n, self.r)) * cs.unsqueeze(-1)
        return F.linear(h.flatten(-2), self.lora_B)

    def extra_repr(self) -> str:
        return f"n={self.n}, r={self.r}, in={self.in_features}, out={self.out_features}"


def build_mixed_model(
    model: nn.Module,
    adapters: Sequence[Mapping[str, torch.Tensor]],
    lora_config,
    names: Sequence[str] | None = None,
    *,
    state: MixState | None = None,
    layer=None,
) -> nn.Module:
    """Replace, in place, every targeted linear of a plain HF model with a ``MixedLoRALinear``; return it.

    ``adapters`` are PEFT LoRA state dicts (``get_peft_model_state_dict``, or a backbone's
    ``trainable.safetensors``); ``lora_config`` is one config or one per adapter. Set the coefficients with
    ``set_coefficients(model, c)`` before ``forward``/``generate``. ``state`` / ``layer(module path, base
    layer, [(A_i, B_i)], scaling, state)``: a subclass's (``soupkitchen.hoe.build_hoe_model``).
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        raise ValueError("pass the plain base model (load_base_model), not a PeftModel")
    if hasattr(model, "soup_mix"):
        raise ValueError("model is already mixed; build from a fresh base model")
    names = list(names) if names is not None else [f"adapter{i}" for i in range(len(adapters))]
    specs, stacked = stack_adapters(model, adapters, lora_config, names)
    state = state or MixState(len(adapters), names)
    layer = layer or (lambda _module, base, ab, scaling, st: MixedLoRALinear(base, ab, scaling, st))
    scaling = [s.scaling for s in specs]
    for module, ab in stacked.items():
        parent_name, _, child = module.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, layer(module, getattr(parent, child), ab, scaling, state))
    model.soup_mix = state
    return model


def mix_state(model: nn.Module) -> MixState:
    state = getattr(model, "soup_mix", None)
    if state is None:
        raise ValueError("model has no mixed adapters; build it with build_mixed_model")
    return state


def set_coefficients(model: nn.Module, c) -> torch.Tensor:
    """Use c ([n] for every row, [batch, n] per row, [batch, seq, n] per token) in the next forward/generate.

    Negative entries and Σc ≠ 1 (extrapolation) are legal; NaN/inf are not. ``None`` clears.
    """
    state = mix_state(model)
    if c is None:
        state.c = None
        return None
    device = next(b for m in model.modules() if isinstance(m, MixedLoRALinear) for b in m.buffers()).device
    c = torch.as_tensor(c, dtype=torch.float32).to(device)
    if c.ndim not in (1, 2, 3) or c.shape[-1] != state.n:
        raise ValueError(
            f"coefficients must be [n], [batch, n] or [batch, seq, n] with n={state.n}, got {tuple(c.shape)}"
        )
    if not torch.isfinite(c).all():
        raise ValueError("coefficients contain NaN or inf")
    state.c = c
    return c


@contextlib.contextmanager
def use_coefficients(model: nn.Module, c) -> Iterator[torch.Tensor]:
    """``with use_coefficients(model, c): model.generate(...)``; restores the previous coefficients after."""
    state = mix_state(model)
    previous = state.c
    try:
        yield set_coefficients(model, c)
    finally:
        state.c = previous
