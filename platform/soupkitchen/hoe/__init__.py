"""HoE: hierarchical experts over one frozen base (docs/methods/hoe.md).

    svd.py       task vectors → LoRA factors (task-SVD, global magnitude pruning, Eq. 4 merges)
    routing.py   preference routing: the N nearest experts and their convex weights (Eqs. 9-10)
    layer.py     the mixing layer with router experts' per-token votes (Eqs. 11-12)
    manifest.py  ``hoe.json``: every expert, its λ, kind, files and provenance
    experts.py   building LoRA experts from single-objective policies; loading a set; its coefficient rows
    routers.py   router training on the PPO engine (OMD-STCH, Eqs. 5-8, 18-19)
    build.py     the whole job (``jobs/build_hoe.py``): experts, fidelity and z*, routers on Ray Train

``build`` is imported by name (it runs jobs); the rest is what evaluation and serving load.
"""

from soupkitchen.hoe.experts import (
    ExpertSet,
    ExpertStack,
    build_experts,
    configurations,
    dense_task_vector,
    load_experts,
    lora_task_vector,
)
from soupkitchen.hoe.layer import HoELoRALinear, HoEState, Router, build_hoe_model
from soupkitchen.hoe.manifest import HOE_FILE, ExpertEntry, HoEManifest
from soupkitchen.hoe.routing import lora_weights, nearest, preference_routing
from soupkitchen.hoe.svd import global_threshold, merge_task_vectors, task_svd

__all__ = [
    "HOE_FILE",
    "ExpertEntry",
    "ExpertSet",
    "ExpertStack",
    "HoELoRALinear",
    "HoEManifest",
    "HoEState",
    "Router",
    "build_experts",
    "build_hoe_model",
    "configurations",
    "dense_task_vector",
    "global_threshold",
    "load_experts",
    "lora_task_vector",
    "lora_weights",
    "merge_task_vectors",
    "nearest",
    "preference_routing",
    "task_svd",
]
