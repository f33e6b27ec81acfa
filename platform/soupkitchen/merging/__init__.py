"""Merging: n LoRA adapters over one frozen base W0, mixed per batch row (or per token) with coefficients c.

    y = W0·x + Σ_i c_i · s_i · B_i (A_i x)   ≡   dense W = W0 + Σ_i c_i ΔW_i   (exact, c_i may be < 0)

    model = build_mixed_model(base, adapters, lora_config)      # in place; adapters: PEFT state dicts
    set_coefficients(model, c)                                   # c [n] | [batch, n] | [batch, seq, n]
    out = model.generate(**batch, do_sample=False)               # KV cache; each row keeps its own c
    dense = materialize(base, adapters, c_row, lora_config)      # the same arithmetic, done once
    bundle = load_bundle(dir); c = bundle.coefficients(mu)      # Bone Soup: c = (1 + α) B⁻¹μ

Modules: ``mixed`` (the mixing layer), ``dense`` (materialised merges and the A/B-averaged baseline),
``bundle`` (the soup bundle format).
"""

from soupkitchen.manifests import BUNDLE_FORMAT
from soupkitchen.merging.bundle import (
    Bundle,
    adapters_from_manifest,
    attach_hoe,
    attach_value_models,
    check_bundle,
    load_bundle,
    write_bundle,
)
from soupkitchen.merging.dense import ab_averaged_adapter, ab_averaged_merge, materialize, save_materialized
from soupkitchen.merging.mixed import (
    LoraSpec,
    MixedLoRALinear,
    build_mixed_model,
    load_adapter_state,
    lora_spec,
    parse_adapter,
    set_coefficients,
    use_coefficients,
)

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "LoraSpec",
    "MixedLoRALinear",
    "ab_averaged_adapter",
    "ab_averaged_merge",
    "adapters_from_manifest",
    "build_mixed_model",
    "load_adapter_state",
    "attach_hoe",
    "attach_value_models",
    "check_bundle",
    "load_bundle",
    "lora_spec",
    "materialize",
    "parse_adapter",
    "save_materialized",
    "set_coefficients",
    "use_coefficients",
    "write_bundle",
]
