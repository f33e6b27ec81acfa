"""Prompt relabeling (MOC Eq. 3): the one formatter shared by training, evaluation and serving.

    relabel("How do I ...?", [0.3, 0.7])  →  "<R1> 0.30 <R2> 0.70 How do I ...?"

The values are the preference p for MOC and the desired (normalised) rewards for RiC; the tag spelling,
number format and position come from ``PreferencePromptConfig`` and are recorded in every manifest and
bundle, so a served request reads exactly the prompt the policy was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

from soupkitchen.config import PreferencePromptConfig

DEFAULT_FORMAT = PreferencePromptConfig()


def preference_prefix(values: Sequence[float], fmt: PreferencePromptConfig | None = None) -> str:
    """``<R1> v1 <R2> v2 … <RN> vN`` with ``fmt.decimals`` digits (−0.00 printed as 0.00)."""
    fmt = fmt or DEFAULT_FORMAT
    return " ".join(
        f"{fmt.tag.replace('{i}', str(i + 1))} {float(v) + 0.0:.{fmt.decimals}f}"
        for i, v in enumerate(values)
    )


def relabel(prompt: str, preference: Sequence[float], fmt: PreferencePromptConfig | None = None) -> str:
    """Eq. 3: the preference (or RiC's desired rewards) written before (``prefix``) or after the prompt."""
    fmt = fmt or DEFAULT_FORMAT
    tags = preference_prefix([float(x) for x in preference], fmt)
    return f"{tags} {prompt}" if fmt.position == "prefix" else f"{prompt} {tags}"
