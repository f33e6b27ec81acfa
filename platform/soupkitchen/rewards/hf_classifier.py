"""Any Hugging Face sequence-classification reward model, with its own tokenizer and input format.

Input formats (``context`` = the prompt, or the part of it matched by ``prompt_extract``):

- ``pair``: ``tok(context, response)`` as a text pair (Ray2333 helpful/harmless, OpenAssistant DeBERTa);
- ``response``: ``tok(response)`` (humor-no-humor);
- ``response_pair_prompt``: ``tok(text=response, text_pair=context)`` (CogComp BART faithfulness);
- ``template``: ``tok(template.format(prompt=context, response=..., bos=..., eos=...))``
  (Tristan summary RM: ``"{response} {bos} {prompt}"``).

Score = ``logits[:, output_index]`` (``output_index`` None needs a 1-label head), in float64, optionally
rounded. Texts are truncated to ``min(max_length, tokenizer.model_max_length, model positions)``, sorted by
length and padded on the right per batch; a missing pad token is set to EOS (and written into the model
config, which GPT-2-style heads use to find the last token), so scores do not depend on the batch size.
"""

from __future__ import annotations

import re
import string
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from soupkitchen.config import ConfigError, Schema
from soupkitchen.rewards.base import BaseReward, check_device, resolve_device
from soupkitchen.rewards.presets import PRESET_BY_MODEL, PRESETS, get_preset, preset_names

TEMPLATE_FIELDS = frozenset({"prompt", "response", "bos", "eos"})
_FORMAT_KEYS = ("input", "output_index", "template", "prompt_extract", "max_length")
_HUGE = 10**9  # tokenizers without a limit report model_max_length ≈ 1e30


class HFClassifierParams(Schema):
    """``model``: hub id or local directory (required, or given by ``preset``); see the module docstring.

    ``preset``: a name from ``presets.PRESETS`` (or an alias such as ``helpful``); keys set next to it
    override the preset's. ``tokenizer``: a different tokenizer id/path (default: ``model``'s).
    ``prompt_extract``: regex with one group cutting the context out of the prompt (no match → whole prompt).
    ``allow_pickle_weights``: false (default) → safetensors weights only; true → also a pickle-based
    ``.bin`` checkpoint (read with ``weights_only``, but a pickle still runs code on load: opt in only for a
    checkpoint you trust).
    """

    preset: str | None = None
    model: str | None = None
    tokenizer: str | None = None
    input: Literal["pair", "response", "response_pair_prompt", "template"] = "pair"
    template: str | None = None
    prompt_extract: str | None = None
    output_index: int | None = Field(None, ge=0)
    max_length: int = Field(1024, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str | None = None
    batch_size: int = Field(8, ge=1)
    trust_remote_code: bool = False
    round_decimals: int | None = Field(None, ge=0, le=12)
    revision: str | None = None
    allow_pickle_weights: bool = False  # .bin/.pt weights are pickles; safetensors cannot run code

    @model_validator(mode="after")
    def _format(self):
        if not self.model:
            raise ConfigError(
                "model",
                "required: a Hugging Face model id or local directory (or set preset to one of "
                f"{', '.join(preset_names())})",
            )
        check_device(self.device, "device")
        if self.input == "template":
            if not self.template:
                raise ConfigError(
                    "template", "input 'template' needs a template, e.g. '{response} {bos} {prompt}'"
                )
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
            except ValueError as e:
                raise ConfigError("template", f"is not a valid format string: {e}") from None
            bad = sorted(names - TEMPLATE_FIELDS)
            if bad:
                raise ConfigError(
                    "template", f"unknown placeholder(s) {bad}; allowed: {sorted(TEMPLATE_FIELDS)}"
                )
        elif self.template is not None:
            raise ConfigError("template", f"is only used with input 'template' (input is {self.input!r})")
        if self.prompt_extract is not None:
            try:
                groups = re.compile(self.prompt_extract, re.DOTALL).groups
            except re.error as e:
                raise ConfigError("prompt_extract", f"is not a valid regex: {e}") from None
            if groups != 1:
                raise ConfigError("prompt_extract", f"needs exactly one capture group, has {groups}")

        return self


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _positions(config) -> int | None:
    for key in ("n_positions", "max_position_embeddings"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


class HFClassifierReward(BaseReward):
    kind = "hf_classifier"
    Params = HFClassifierParams

    def __init__(
        self, name: str, params: HFClassifierParams, model, tokenizer, *, device: str, path: str = ""
    ):
        super().__init__(name, params)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        num_labels = int(model.config.num_labels)
        idx = params.output_index
        where = f"{path}.output_index" if path else "output_index"
        if idx is None:
            if num_labels != 1:
                raise ConfigError(
                    where,
                    f"model {params.model!r} has {num_labels} labels "
                    f"{getattr(model.config, 'id2label', '')}: set output_index (0..{num_labels - 1}) "
                    "to pick the logit used as reward",
                )
            idx = 0
        elif idx >= num_labels:
            raise ConfigError(
                where,
                f"{idx} is out of range: model {params.model!r} has num_labels={num_labels} "
                f"(valid 0..{num_labels - 1})",
            )
        self.output_index = idx
        limits = [params.max_length, tokenizer.model_max_length, _positions(model.config)]
        self.max_length = min(int(v) for v in limits if isinstance(v, int) and 0 < v < _HUGE)
        self._extract = re.compile(params.prompt_extract, re.DOTALL) if params.prompt_extract else None
        if params.input == "template" and params.template:
            fields = {f for _, f, _, _ in string.Formatter().parse(params.template) if f}
            for tok_name in ("bos", "eos"):
                if tok_name in fields and getattr(tokenizer, f"{tok_name}_token", None) is None:
                    raise ConfigError(
                        f"{path}.template",
                        f"uses {{{tok_name}}} but tokenizer of {params.model!r} has no {tok_name} token",
                    )

    @classmethod
    def prepare_params(cls, raw: Any, path: str) -> Any:
        """Expand ``preset`` (or a known model id) into its format params; explicit keys win."""
        if not isinstance(raw, dict):
            return raw
        name = raw.get("preset")
        if name is not None:
            preset = get_preset(name) if isinstance(name, str) else None
            if preset is None:
                raise ConfigError(
                    f"{path}.preset", f"unknown preset {name!r}; known: {', '.join(preset_names())}"
                )
            base = preset.params()
        elif isinstance(raw.get("model"), str) and raw["model"] in PRESET_BY_MODEL:
            base = {
                k: v for k, v in PRESETS[PRESET_BY_MODEL[raw["model"]]].params().items() if k in _FORMAT_KEYS
            }
        else:
            return raw
        if raw.get("input", base.get("input")) != base.get("input"):
            base.pop("template", None)  # the preset's template belongs to its own input format
        return {**base, **raw}

    @classmethod
    def from_params(cls, name, params: HFClassifierParams, *, path, device=None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        dev = resolve_device(params.device, device)
        common = {"revision": params.revision, "trust_remote_code": params.trust_remote_code}
        # safetensors only, unless pickles are allowed: then transformers' order (safetensors, else .bin)
        weights = {"use_safetensors": None if params.allow_pickle_weights else True}
        try:
            tok = AutoTokenizer.from_pretrained(params.tokenizer or params.model, **common)
        except (OSError, ValueError) as e:
            where = "tokenizer" if params.tokenizer else "model"
            raise ConfigError(
                f"{path}.{where}", f"cannot load tokenizer {params.tokenizer or params.model!r}: {e}"
            ) from e
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                params.model, dtype=_dtype(params.dtype), **common, **weights
            )
        except (OSError, ValueError) as e:
            hint = (
                ""
                if params.allow_pickle_weights
                else f" (only safetensors weights are read; if this checkpoint ships only pickle .bin weights"
                f" and you trust it, set {path}.allow_pickle_weights: true)"
            )
            raise ConfigError(
                f"{path}.model", f"cannot load sequence-classification model {params.model!r}: {e}{hint}"
            ) from e
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ConfigError(
                    f"{path}.tokenizer", f"tokenizer of {params.model!r} has neither pad nor eos token"
                )
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"
        model.config.pad_token_id = tok.pad_token_id
        return cls(name, params, model.to(dev), tok, device=dev, path=path)

    # ------------------------------------------------------------------------------------------ inputs

    def context(self, prompt: str) -> str:
        """The part of the prompt the RM sees (``prompt_extract`` group, stripped; else the whole prompt)."""
        if self._extract is not None:
            m = self._extract.search(prompt)
            if m is not None:
                return m.group(1).strip()
        return prompt

    def texts(self, prompts: list[str], responses: list[str]) -> tuple[list[str], list[str] | None]:
        """(text, text_pair) lists passed to the tokenizer for this input format."""
        fmt = self.params.input
        if fmt == "response":
            return responses, None
        ctx = [self.context(p) for p in prompts]
        if fmt == "pair":
            return ctx, responses
        if fmt == "response_pair_prompt":
            return responses, ctx
        tok = self.tokenizer
        values = {"bos": tok.bos_token or "", "eos": tok.eos_token or ""}
        return [
            self.params.template.format(prompt=c, response=r, **values)
            for c, r in zip(ctx, responses, strict=True)
        ], None

    def encode(self, prompts: list[str], responses: list[str]) -> list[dict[str, list[int]]]:
        """Tokenised, truncated, unpadded features per row.

        Rows are tokenised one call each, as the seeds do: an empty second text then means "no pair"
        (a batched call would add an extra separator). A row with no tokens gets one EOS (or pad) token.
        """
        text, pair = self.texts(prompts, responses)
        tok, kw = self.tokenizer, {"truncation": True, "max_length": self.max_length}
        rows = []
        for i, a in enumerate(text):
            b = pair[i] if pair is not None else None
            enc = tok(a, b, **kw) if b else tok(a, **kw)
            rows.append({k: list(v) for k, v in enc.items()})
        filler = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
        for row in rows:
            if not row["input_ids"]:
                row.update(
                    {k: [filler if k == "input_ids" else 1 if k == "attention_mask" else 0] for k in row}
                )
        return rows

    # ------------------------------------------------------------------------------------------ scoring

    def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        import torch

        rows = self.encode(prompts, responses)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))  # less padding per batch
        out = np.empty(len(rows), dtype=np.float64)
        bs = self.params.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                batch = self.tokenizer.pad([rows[i] for i in idx], padding=True, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits = self.model(**batch).logits
                out[idx] = logits[:, self.output_index].float().cpu().numpy().astype(np.float64)
        if self.params.round_decimals is not None:
            out = np.round(out, self.params.round_decimals)
        return out
