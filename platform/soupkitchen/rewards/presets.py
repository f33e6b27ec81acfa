"""The seeds' Hugging Face reward models: id, input format and output index (Bone Soup A.4.3-A.4.4).

Source: RiC ``ppo/multi_reward_models.py`` + ``utils.get_rewards`` (copied by Bone Soup, MAGE, MOC, HoE).
The seeds load every RM in bf16 and round every score to 1 decimal; those are recipe choices
(``dtype: bfloat16``, ``round_decimals: 1``), not preset defaults. For the summary task the seeds feed the
RM the *post*, cut out of the instruction prompt ("### Input: <post> ### Response:"): ``prompt_extract``
does that, and falls back to the whole prompt when the pattern does not match (e.g. the prompt already is
the raw post).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUMMARY_POST_RE = r"### Input:(.*)### Response:"


@dataclass(frozen=True)
class Preset:
    """One reward model as the seeds use it."""

    model: str
    input: str
    output_index: int | None = None
    template: str | None = None
    prompt_extract: str | None = None
    max_length: int = 1024
    note: str = ""

    def params(self) -> dict[str, Any]:
        """The hf_classifier params this preset stands for (``note`` excluded)."""
        keys = ("model", "input", "output_index", "template", "prompt_extract", "max_length")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


PRESETS: dict[str, Preset] = {
    "ray2333-helpful": Preset(
        "Ray2333/gpt2-large-helpful-reward_model", "pair",
        note="GPT-2 large, 1 label; tok(prompt, response) with the HH prompt ending in '\\n\\nAssistant:'",
    ),
    "ray2333-harmless": Preset(
        "Ray2333/gpt2-large-harmless-reward_model", "pair",
        note="GPT-2 large, 1 label; tok(prompt, response)",
    ),
    "humor-no-humor": Preset(
        "mohameddhiab/humor-no-humor", "response", output_index=1, max_length=512,
        note="DistilBERT joke classifier, 2 labels; response only, logit of class 1",
    ),
    "cogcomp-faithful": Preset(
        "CogComp/bart-faithful-summary-detector", "response_pair_prompt", output_index=1,
        prompt_extract=SUMMARY_POST_RE,
        note="BART, 2 labels; tok(text=summary, text_pair=post), logit of class 1",
    ),
    "tristan-summary": Preset(
        "Tristan/gpt2_reward_summarization", "template", template="{response} {bos} {prompt}",
        prompt_extract=SUMMARY_POST_RE,
        note="GPT-2, 1 label; tok(summary + ' ' + bos + ' ' + post)",
    ),
    "oasst-deberta-large-v2": Preset(
        "OpenAssistant/reward-model-deberta-v3-large-v2", "pair", max_length=512,
        note="DeBERTa-v3 large, 1 label; tok(question, answer) (HoE 'deberta' objective)",
    ),
}  # fmt: skip

# The seeds' objective names, for recipes that mirror the papers (``preset: helpful``).
PRESET_ALIASES: dict[str, str] = {
    "helpful": "ray2333-helpful",
    "harmless": "ray2333-harmless",
    "humor": "humor-no-humor",
    "faithful": "cogcomp-faithful",
    "summary": "tristan-summary",
    "preference1": "tristan-summary",
    "deberta": "oasst-deberta-large-v2",
}

# A recipe naming one of these model ids directly gets the preset's input format and output index unless
# it sets them itself.
PRESET_BY_MODEL: dict[str, str] = {p.model: name for name, p in PRESETS.items()}


def preset_names() -> list[str]:
    return sorted(PRESETS) + sorted(PRESET_ALIASES)


def get_preset(name: str) -> Preset | None:
    return PRESETS.get(PRESET_ALIASES.get(name, name))
