"""Typed configuration tree for every soupkitchen job.

A recipe is a YAML file (``recipes/<name>.yaml``) that maps onto :class:`Recipe`. Every
field is type-checked on load; unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the dotted key path and what is allowed. Command-line overrides use
the same paths: ``--ppo.kl_coef 0.1`` or ``--rewards.0.params.target 40``.

Range checks live in field metadata (``_range(lo, hi)``) so the schema reads top to bottom; cross-field
rules (e.g. ``mini_batch_size`` divides ``batch_size``) live in ``Recipe.validate``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES_DIR = REPO_ROOT / "recipes"


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key path and the fix."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path or '<recipe>'}: {message}")


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """Field metadata: value must lie in [lo, hi] (open ends where requested)."""
    return {"range": (lo, hi, lo_open, hi_open)}


def _num(default, lo=None, hi=None, **kw):
    return field(default=default, metadata=_range(lo, hi, **kw))


# --------------------------------------------------------------------------------------------- schema


@dataclass
class TinyModelConfig:
    """A random GPT-2-like model built in code (tests): a few hundred thousand parameters."""

    n_layer: int = _num(2, 1, 48)
    n_head: int = _num(4, 1, 64)
    n_embd: int = _num(64, 8, 4096)
    n_positions: int = _num(256, 16, 8192)
    seed: int = 0


@dataclass
class ModelConfig:
    """Where the base model W0 comes from.

    source: ``hf`` (Hugging Face id or local directory), ``gguf`` (a GGUF file shipped inside an
    installed Python package, dequantised once and cached as safetensors) or ``tiny``.
    """

    source: Literal["hf", "gguf", "tiny"] = "tiny"
    name: str = "tiny"
    gguf_package: str | None = None
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    use_chat_template: bool = True
    max_prompt_tokens: int = _num(256, 8, 131072)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class LoraConfig:
    """LoRA adapters ΔW = (alpha/r)·B·A on the target modules (PEFT)."""

    r: int = _num(8, 1, 1024)
    alpha: float = _num(16.0, 0.0, None, lo_open=True)
    dropout: float = _num(0.0, 0.0, 1.0, hi_open=True)
    target_modules: list[str] = field(default_factory=lambda: ["c_attn"])


@dataclass
class NormalizationConfig:
    """Per-objective reward normalisation z = (r - mean) / std: the run's one reward space (``reward_space``).

    ``calibrated``: mean/std of SFT rollouts on training prompts, measured once before any policy trains
    and frozen for every policy, evaluation and serving; ``fixed``: constants from the recipe; ``none``: raw
    rewards; ``running``: each policy's own online statistics (only for policies with one-hot w: in a soup
    they would give w a different meaning per policy, so mixed-w methods refuse it).
    """

    kind: Literal["none", "calibrated", "running", "fixed"] = "none"
    mean: float = 0.0
    std: float = _num(1.0, 0.0, None, lo_open=True)


@dataclass
class RewardConfig:
    """One objective. ``kind`` picks the scorer; ``params`` are checked by that scorer's own schema."""

    name: str = ""
    kind: Literal["length", "keyword", "vader", "minilm_relevance", "hf_classifier"] = "length"
    params: dict[str, Any] = field(default_factory=dict)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)


@dataclass
class DataConfig:
    """Prompts. ``source``: ``builtin:<name>`` (shipped in the package), a local JSONL path, or
    ``hf:<dataset id>`` (Hugging Face datasets, paper-scale; needs network or a local cache)."""

    source: str = "builtin:tiny"
    hf_config: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    prompt_field: str = "prompt"
    format: Literal["plain", "hh_rlhf", "tldr"] = "plain"
    max_train_prompts: int | None = _num(None, 1, None)
    max_eval_prompts: int = _num(32, 1, None)
    max_validation_prompts: int = _num(32, 1, None)  # seeded sample of train prompts, for searches
    eval_fraction: float = _num(0.1, 0.0, 1.0, lo_open=True, hi_open=True)
    sft_source: str | None = None
    seed: int = 0


@dataclass
class GenerationConfig:
    """Sampling settings for rollouts and evaluation."""

    max_new_tokens: int = _num(16, 1, 8192)
    temperature: float = _num(0.7, 0.0, None, lo_open=True)
    top_p: float = _num(1.0, 0.0, 1.0, lo_open=True)
    top_k: int = _num(0, 0, None)
    do_sample: bool = True
    stop: list[str] = field(default_factory=list)


@dataclass
class SFTConfig:
    """Supervised fine-tuning stage (TRL SFTTrainer + LoRA, merged into W0 afterwards).

    Loss on the completion tokens only. ``output_dir`` None → ``$SOUPKITCHEN_CACHE/sft/<recipe name>``.
    """

    enabled: bool = False
    max_steps: int = _num(100, 1, None)
    learning_rate: float = _num(1.41e-4, 0.0, None, lo_open=True)
    batch_size: int = _num(8, 1, None)
    lr_scheduler: Literal["linear", "constant", "cosine"] = "linear"
    weight_decay: float = _num(0.0, 0.0, None)
    max_seq_length: int = _num(1024, 8, 131072)  # prompt + completion tokens (≤ model positions); rest cut
    gradient_checkpointing: bool = True
    logging_steps: int = _num(10, 1, None)
    output_dir: str | None = None


@dataclass
class PPOConfig:
    """Vector-reward PPO (notes/bonesoup.md Table 8 defaults for the paper recipes)."""

    algorithm: Literal["ppo", "grpo"] = "ppo"
    steps: int = _num(20, 1, None)
    batch_size: int = _num(8, 1, None)
    mini_batch_size: int = _num(4, 1, None)
    ppo_epochs: int = _num(4, 1, None)
    learning_rate: float = _num(1e-5, 0.0, None, lo_open=True)
    kl_coef: float = _num(0.2, 0.0, None)
    adaptive_kl: bool = True
    kl_target: float = _num(6.0, 0.0, None, lo_open=True)
    kl_horizon: int = _num(10000, 1, None)
    gamma: float = _num(1.0, 0.0, 1.0)
    lam: float = _num(0.95, 0.0, 1.0)
    cliprange: float = _num(0.2, 0.0, None, lo_open=True)
    cliprange_value: float = _num(0.2, 0.0, None, lo_open=True)
    vf_coef: float = _num(0.1, 0.0, None)
    max_grad_norm: float = _num(0.5, 0.0, None, lo_open=True)
    whiten_advantages: bool = True
    missing_eos: Literal["truncate", "penalize"] = "truncate"  # score a cut-off response as is, or penalise
    missing_eos_penalty: float = -1.0
    # unit_spread: divide h = wᵀz by its SFT spread sqrt(wᵀΣw) so the KL penalty weighs the same against the
    # reward for a mixed backbone as for a specialist (conflicting objectives shrink a mix's spread); none: h.
    scale_rewards: Literal["unit_spread", "none"] = "unit_spread"
    target_kl: float | None = _num(None, 0.0, None, lo_open=True)  # stop an update's epochs once KL > 1.5×
    checkpoint_every: int = _num(10, 1, None)
    seed: int = 0


@dataclass
class RewardSpaceConfig:
    """Calibration of the run's reward space (``soupkitchen.reward_space``): SFT rollouts on a seeded sample
    of training prompts, sampled with ``generation``, before any policy trains."""

    num_prompts: int = _num(64, 1, None)  # training prompts rolled out by W0
    samples_per_prompt: int = _num(2, 1, None)  # samples per prompt (mean/std over prompts and samples)
    seed: int = 0  # prompt sample and sampling seed: the same space for every policy and every re-run


@dataclass
class SoupConfig:
    """How backbones are trained and merged.

    bone_soup: backbone i is trained on h_i = w_iᵀ r with w_i column i of circulant B(β) and merged
    with λ = (1+α) B⁻¹μ; rewarded_soups: w_i = e_i, λ = μ; morlhf: one policy per μ in
    ``morlhf_preferences`` (the baseline).
    """

    method: Literal["bone_soup", "rewarded_soups", "morlhf"] = "bone_soup"
    beta: float = _num(0.7, 0.0, 1.0, lo_open=True)
    alpha: float = _num(0.0, 0.0, None)
    beta_candidates: list[float] = field(default_factory=lambda: [0.6, 0.7, 0.8])
    morlhf_preferences: list[list[float]] = field(default_factory=lambda: [[0.5, 0.5]])


@dataclass
class EvalConfig:
    """Front evaluation over the preference grid. Points, the reference point and every metric are in the
    run's reward space (``reward_space``: z = (r − m) / s); intervals by a paired bootstrap over prompts."""

    grid_step: float = _num(0.1, 0.0, 1.0, lo_open=True)
    ref_point: list[float] | None = None  # in z units; None: −1 each (one SFT std below SFT's mean)
    num_prompts: int | None = _num(None, 1, None)  # None: every prompt of the split (data.max_eval_prompts)
    bootstrap_samples: int = _num(1000, 1, None)  # paired bootstrap replicates over prompts
    confidence: float = _num(0.95, 0.0, 1.0, lo_open=True, hi_open=True)  # of every reported interval
    batch_size: int = _num(16, 1, None)
    greedy: bool = True
    samples_per_prompt: int = _num(1, 1, None)  # sampled responses per prompt and μ (greedy: 1)
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.2])  # Bone Soup α compared (0 = none)


@dataclass
class DistributedConfig:
    """Ray Train + DeepSpeed settings for each backbone trainer."""

    num_workers: int = _num(1, 1, None)
    use_gpu: bool = False
    cpus_per_worker: float = _num(1.0, 0.0, None, lo_open=True)
    gpus_per_worker: float = _num(0.0, 0.0, None)
    zero_stage: int = _num(2, 0, 3)
    max_failures: int = _num(1, -1, None)
    storage_path: str = "~/.cache/soupkitchen/runs"


@dataclass
class SearchConfig:
    """Ray Tune searches (``tune/``): β by short backbone runs, α and γ by evaluation-only trials, all scored
    by front hypervolume on the validation prompts (``data.max_validation_prompts``)."""

    betas: list[float] | None = None  # None → soup.beta_candidates
    beta_fraction: float = _num(0.2, 0.0, 1.0, lo_open=True)  # share of ppo.steps per β trial (paper: 20%)
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    gammas: list[float] = field(default_factory=lambda: [0.0])  # MAGE's grid: [0.1, 0.2, 1.0, 3.0, 5.0]
    searcher: Literal["grid", "optuna"] = "grid"
    num_samples: int = _num(8, 1, None)  # trials of the optuna searcher (grid: one per grid point)
    cpus_per_trial: float = _num(1.0, 0.0, None)
    gpus_per_trial: float = _num(0.25, 0.0, None)  # used when distributed.use_gpu
    max_concurrent_trials: int = _num(0, 0, None)  # 0: as many as the cluster's resources allow


@dataclass
class TrackingConfig:
    """MLflow tracking. ``tracking_uri`` None → local SQLite store under the data directory."""

    tracking_uri: str | None = None
    experiment: str = "soupkitchen"
    registered_model_prefix: str = "soup"
    upload_retry_s: float = _num(120.0, 0.0, None)  # how long finish() retries what MLflow/S3 did not take


DECODING_MODES = ("plain", "mage_i_m", "mage_i", "mage_e_m", "mage_e", "mod")


@dataclass
class DecodingConfig:
    """Guided decoding (MAGE, notes/mage.md §1.6-1.7; MOD baseline). See ``soupkitchen.decoding``.

    ``mode``: plain (merged base only), mage_i_m / mage_i (implicit guidance, merged / ensemble),
    mage_e_m / mage_e (explicit value models, merged / ensemble), mod (Σ μ_i log π_i). Score per token:
    log π_base(μ) + γ·g. ``implicit_shortcut``: when π*_merge has the base's coefficients, score with
    (1+γ) log π_base − γ log π_ref (one forward row less, mage.md §1.5). ``guide_top_k`` > 0 restricts
    guidance to the base's top-k tokens (not in the paper; 0 = off). ``ensemble_weights``: weights of
    the mage_i / mage_e ensembles and of mod: ``mu`` (Eq. 26) or ``bone_soup`` ((1+α)B⁻¹μ).
    Beam (mage.md §1.7, chunk-level): ``beam_width`` b > 0 switches it on; each of b beams samples
    ``beam_expansion`` c chunks of ``beam_lookahead`` l tokens, the b best by value are kept.
    ``max_new_tokens`` / ``stop`` None: taken from ``generation``.
    """

    mode: Literal["plain", "mage_i_m", "mage_i", "mage_e_m", "mage_e", "mod"] = "plain"
    gamma: float = _num(1.0, 0.0, 100.0)
    greedy: bool = True
    temperature: float = _num(1.0, 0.0, None, lo_open=True)
    top_k: int = _num(0, 0, None)
    top_p: float = _num(1.0, 0.0, 1.0, lo_open=True)
    max_new_tokens: int | None = _num(None, 1, 8192)
    stop: list[str] | None = None
    implicit_shortcut: bool = True
    guide_top_k: int = _num(0, 0, None)
    ensemble_weights: Literal["mu", "bone_soup"] = "mu"
    beam_width: int = _num(0, 0, 64)
    beam_expansion: int = _num(1, 1, 64)
    beam_lookahead: int = _num(10, 1, 1024)
    modes: list[str] = field(default_factory=lambda: ["mage_i_m", "mod"])  # compared by evaluate_front

    def __post_init__(self):
        for i, m in enumerate(self.modes):
            if m not in DECODING_MODES:
                raise ConfigError(f"decoding.modes.{i}", f"unknown mode {m!r}; choose from {DECODING_MODES}")


@dataclass
class ValueModelConfig:
    """Explicit value models (MAGE-E, notes/mage.md §1.3): one LoRA adapter per objective on W0 read as a
    residual head, Q-values V(x, y<t)[v] = logits_{W0+ΔV} − logits_{W0} (0 at init), trained with Eq. 16 on
    rollouts of ``policies`` scored by the reward.

    ``policies``: ``sft`` (W0, the π_ref of Eq. 15), ``backbones`` (the given backbones at μ on the grid)
    or ``both``. ``lora_r`` / ``lora_alpha`` None: the recipe's ``lora`` (targets are always the recipe's,
    so value adapters stack with the backbones).
    """

    policies: Literal["sft", "backbones", "both"] = "both"
    num_prompts: int = _num(64, 1, None)
    samples_per_prompt: int = _num(2, 1, None)
    epochs: int = _num(3, 1, None)
    batch_size: int = _num(8, 1, None)
    learning_rate: float = _num(1e-4, 0.0, None, lo_open=True)
    max_steps: int | None = _num(None, 1, None)
    val_fraction: float = _num(0.2, 0.0, 1.0, hi_open=True)
    lora_r: int | None = _num(None, 1, 1024)
    lora_alpha: float | None = _num(None, 0.0, None, lo_open=True)
    seed: int = 0


@dataclass
class Recipe:
    """One job configuration, loaded from ``recipes/<name>.yaml``."""

    name: str = "unnamed"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: list[RewardConfig] = field(default_factory=list)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reward_space: RewardSpaceConfig = field(default_factory=RewardSpaceConfig)
    soup: SoupConfig = field(default_factory=SoupConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    value_model: ValueModelConfig = field(default_factory=ValueModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    @property
    def objectives(self) -> list[str]:
        return [r.name for r in self.rewards]

    def validate(self) -> Recipe:
        """Cross-field rules that a single field's type/range cannot express."""
        n = len(self.rewards)
        if n < 1:
            raise ConfigError("rewards", "at least one reward is required (one per objective)")
        names = self.objectives
        for i, r in enumerate(self.rewards):
            if not r.name or not r.name.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(f"rewards.{i}.name", f"must be a non-empty identifier, got {r.name!r}")
        if len(set(names)) != n:
            raise ConfigError("rewards", f"objective names must be unique, got {names}")
        if self.soup.method == "bone_soup" and n > 1:
            lo = 1.0 / n
            for path, b in [("soup.beta", self.soup.beta)] + [
                (f"soup.beta_candidates.{i}", b) for i, b in enumerate(self.soup.beta_candidates)
            ]:
                if not (lo < b <= 1.0):
                    raise ConfigError(
                        path, f"β must lie in (1/n, 1] = ({lo:.4g}, 1] for n={n} objectives, got {b}"
                    )
        for i, mu in enumerate(self.soup.morlhf_preferences):
            path = f"soup.morlhf_preferences.{i}"
            if len(mu) != n:
                raise ConfigError(path, f"has {len(mu)} entries but there are {n} objectives {names}")
            if any(not math.isfinite(m) or m < 0 for m in mu) or abs(sum(mu) - 1.0) > 1e-6:
                raise ConfigError(path, f"must be non-negative and sum to 1, got {mu}")
        if self.eval.ref_point is not None and len(self.eval.ref_point) != n:
            raise ConfigError(
                "eval.ref_point", f"has {len(self.eval.ref_point)} entries, need one per objective ({n})"
            )
        for i, a in enumerate(self.eval.alphas):
            if not (math.isfinite(a) and 0.0 <= a <= 1.0):
                raise ConfigError(f"eval.alphas.{i}", f"α must be in [0, 1] (0 = no extrapolation), got {a}")
        for path, values, hi in (
            ("search.alphas", self.search.alphas, 1.0),
            ("search.gammas", self.search.gammas, None),
        ):
            for i, v in enumerate(values):
                if not math.isfinite(v) or v < 0 or (hi is not None and v > hi):
                    raise ConfigError(
                        f"{path}.{i}", f"must be in {f'[0, {hi}]' if hi else '[0, inf)'}, got {v}"
                    )
            if not values:
                raise ConfigError(path, "needs at least one value")
        if self.eval.greedy and self.eval.samples_per_prompt > 1:
            raise ConfigError(
                "eval.samples_per_prompt", "greedy decoding repeats itself: set eval.greedy false or use 1"
            )
        if not self.eval.alphas:
            raise ConfigError("eval.alphas", "needs at least one α; [0.0] evaluates without extrapolation")
        steps = 1.0 / self.eval.grid_step
        if abs(steps - round(steps)) > 1e-9:
            raise ConfigError(
                "eval.grid_step",
                f"1/grid_step must be an integer (e.g. 0.1, 0.25), got {self.eval.grid_step}",
            )
        if self.ppo.batch_size % self.ppo.mini_batch_size:
            raise ConfigError(
                "ppo.mini_batch_size",
                f"must divide ppo.batch_size ({self.ppo.batch_size}), got {self.ppo.mini_batch_size}",
            )
        if self.ppo.mini_batch_size % self.distributed.num_workers:
            raise ConfigError(
                "distributed.num_workers",
                f"must divide ppo.mini_batch_size ({self.ppo.mini_batch_size}) so each worker gets "
                f"whole rows of every minibatch, got {self.distributed.num_workers}",
            )
        m = self.model
        if m.source == "gguf" and not (m.gguf_package and m.gguf_file):
            raise ConfigError("model.gguf_file", "source 'gguf' needs model.gguf_package and model.gguf_file")
        if self.distributed.use_gpu and self.distributed.gpus_per_worker <= 0:
            raise ConfigError("distributed.gpus_per_worker", "must be > 0 when distributed.use_gpu is true")
        return self


# --------------------------------------------------------------------------------------------- loading


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _check_range(value, meta, path):
    lo, hi, lo_open, hi_open = meta
    if value is None:
        return
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi))
    )
    if bad or (isinstance(value, float) and not math.isfinite(value)):
        left = "(-inf" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        right = "inf)" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        raise ConfigError(path, f"must lie in {left}, {right}, got {value!r}")


def coerce(tp, value, path: str):
    """Check ``value`` against the annotation ``tp`` and build dataclasses from mappings."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(a, value, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list ({_type_name(tp)}), got {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(item, v, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): coerce(item, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    raise ConfigError(path, f"unsupported type {tp!r}")  # pragma: no cover - schema bug


def from_dict(cls, data, path: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and checking types and ranges."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(key, f"unknown key; {hint}allowed keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        sub = f"{path}.{name}" if path else name
        kwargs[name] = coerce(hints[name], value, sub)
        if "range" in fields[name].metadata:
            _check_range(kwargs[name], fields[name].metadata["range"], sub)
    return cls(**kwargs)


def read_format(path, flag: str, fmt: str, what: str) -> dict:
    """The JSON document at ``path`` whose ``format`` is ``fmt`` (one of our manifests); a ConfigError naming
    the CLI ``flag`` if it is not JSON or not that kind of document (``what``)."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(flag, f"{path} is not valid JSON ({e})") from e
    found = doc.get("format") if isinstance(doc, dict) else None
    if found != fmt:
        raise ConfigError(flag, f"{path} is not a {what} (format {found!r})")
    return doc


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _parse_scalar(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: dict[str, Any] | list[str]) -> dict:
    """Apply dotted overrides (``{"ppo.kl_coef": 0.1}`` or ``["ppo.kl_coef=0.1"]``) to a raw mapping."""
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(item, "override must look like key.path=value")
            k, v = item.split("=", 1)
            pairs[k.strip()] = _parse_scalar(v)
        overrides = pairs
    for dotted, value in overrides.items():
        keys = dotted.split(".")
        node = data
        for depth, k in enumerate(keys[:-1]):
            here = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(here, f"list index out of range (has {len(node)} entries)")
                node = node[int(k)]
            else:
                node = node.setdefault(k, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(here, "is a value, not a section: cannot override a key below it")
        last = keys[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(dotted, f"list index out of range (has {len(node)} entries)")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(
        "recipe",
        f"no recipe {str(name_or_path)!r}; pass a YAML path or one of: {', '.join(available_recipes())}",
    )


def _deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``: mappings merge key by key, everything else (lists included) is replaced."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_raw_recipe(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The recipe's YAML mapping with ``extends: <parent recipe>`` resolved (parent first, child on top)."""
    path = resolve_recipe_path(name_or_path).resolve()
    if path in _seen:
        raise ConfigError("extends", f"recipe inheritance loops through {path.name}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError("recipe", f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            "recipe", f"{path} must hold a mapping of config sections, got {type(data).__name__}"
        )
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = path.parent / f"{parent}.yaml" if (path.parent / f"{parent}.yaml").exists() else parent
    return _deep_merge(load_raw_recipe(parent_path, (*_seen, path)), data)


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """Load ``recipes/<name>.yaml`` (or a path), apply dotted overrides, type-check and validate."""
    data = apply_overrides(load_raw_recipe(name_or_path), overrides or {})
    return from_dict(Recipe, data).validate()


def parse_cli_overrides(argv: list[str]) -> dict[str, Any]:
    """``["--ppo.kl_coef", "0.1", "--soup.beta=0.8"]`` → ``{"ppo.kl_coef": 0.1, "soup.beta": 0.8}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(arg, "expected a --key.path value override")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(key, "override is missing its value")
            value = argv[i + 1]
            i += 2
        out[key] = _parse_scalar(value)
    return out
