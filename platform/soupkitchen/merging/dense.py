"""Dense merges: the exact W0 + Σ c_i ΔW_i done once (export, full-weight backbones), and the A/B-averaged
baseline of Rewarded Soups' public code (a different model, kept only to reproduce that baseline)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from soupkitchen.merging.mixed import flatten_stack, lora_specs, parse_adapter, stack_adapters


def _untie(model: nn.Module, layer: nn.Module) -> None:
    """Give ``layer`` its own weight if it shares it (tied lm_head ↔ input embedding); untie the config."""
    shared = sum(p is layer.weight for _, p in model.named_parameters(remove_duplicate=False))
    if shared > 1:
        layer.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=layer.weight.requires_grad)
        for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
            cfg.tie_word_embeddings = False


@torch.no_grad()
def materialize(
    base_model: nn.Module, adapters: Sequence[Mapping[str, torch.Tensor]], c, lora_config
) -> nn.Module:
    """A copy of ``base_model`` with dense weights W = W0 + Σ_i c_i s_i B_i A_i (``Conv1D``: the transpose).

    c is one coefficient vector [n] (negative entries and Σc = 1 + α are legal). A targeted ``lm_head`` tied
    to the input embedding is untied first, so only the output projection changes (``tie_word_embeddings``
    becomes False in the config). The delta is computed in float32 and added in the weight's dtype.
    """
    c = torch.as_tensor(c, dtype=torch.float32).flatten()
    if c.numel() != len(adapters) or not torch.isfinite(c).all():
        raise ValueError(f"c must be {len(adapters)} finite coefficients (one per adapter), got {c.tolist()}")
    if hasattr(base_model, "soup_mix"):
        raise ValueError("materialize needs the plain base model, not a mixed one")
    model = copy.deepcopy(base_model)
    specs, stacked = stack_adapters(model, adapters, lora_config)
    cs = c * torch.tensor([s.scaling for s in specs])
    for module, ab in stacked.items():
        layer = model.get_submodule(module)
        A_flat, B_flat, r = flatten_stack([(A.float().cpu(), B.float().cpu()) for A, B in ab])
        delta = B_flat @ (cs.repeat_interleave(r)[:, None] * A_flat)  # [out, in] = Σ_i c_i s_i B_i A_i
        _untie(model, layer)
        w = layer.weight
        w += (delta if isinstance(layer, nn.Linear) else delta.T).to(w.device, w.dtype)
    return model


def save_materialized(model: nn.Module, tokenizer, directory: str | Path) -> Path:
    """``save_pretrained`` (safetensors) of a dense model and its tokenizer into ``directory``."""
    directory = Path(directory)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    if list(directory.glob("*.bin")) or not list(directory.glob("*.safetensors")):
        raise RuntimeError(f"{directory}: expected safetensors weights only")
    return directory


def ab_averaged_adapter(adapters: Sequence[Mapping[str, torch.Tensor]], weights) -> dict[str, torch.Tensor]:
    """Rewarded Soups' public-code merge: A = Σ_i w_i A_i and B = Σ_i w_i B_i, averaged separately.

    NOT the same model as the exact merge: s·(Σ_i w_i B_i)(Σ_j w_j A_j) = Σ_ij w_i w_j s B_i A_j has cross
    terms B_i A_j (i ≠ j) and is quadratic in w. (PEFT ``add_weighted_adapter(..., "linear")`` is the same
    idea with √w on each side.) Kept only as the named baseline; needs equal ranks and scalings.
    """
    weights = [float(w) for w in weights]
    if len(weights) != len(adapters):
        raise ValueError(f"got {len(weights)} weights for {len(adapters)} adapters")
    parsed = [parse_adapter(a, f"adapter {i}")[0] for i, a in enumerate(adapters)]
    out = {}
    for module in parsed[0]:
        shapes = {(p[module][0].shape, p[module][1].shape) for p in parsed if module in p}
        if len(shapes) != 1 or any(module not in p for p in parsed):
            raise ValueError(
                f"A/B averaging needs identical modules and ranks; {module!r} differs between adapters"
            )
        for k, half in (("A", 0), ("B", 1)):
            out[f"base_model.model.{module}.lora_{k}.weight"] = sum(
                w * p[module][half].float() for w, p in zip(weights, parsed, strict=True)
            )
    return out


def ab_averaged_merge(
    base_model: nn.Module, adapters: Sequence[Mapping[str, torch.Tensor]], weights, lora_config
) -> nn.Module:
    """Dense model of the A/B-averaged baseline (``ab_averaged_adapter``); see there why it is not exact."""
    specs = lora_specs(lora_config, len(adapters))
    if len({s.scaling for s in specs}) > 1:
        raise ValueError("A/B averaging needs one scaling α/r for all adapters")
    return materialize(base_model, [ab_averaged_adapter(adapters, weights)], [1.0], specs[0])
