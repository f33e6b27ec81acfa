"""Prompt sets for training and evaluation, and (prompt, completion) pairs for SFT.

Sources (``data.source``):

- ``builtin:demo``: ~300 hand-written assistant prompts shipped in ``prompts/demo.jsonl``;
- ``builtin:tiny``: short prompts generated in code from :data:`TINY_PROMPT_WORDS` (tiny tokenizer words);
- a local ``.jsonl`` file, or a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- ``hf:<dataset id>``: ``datasets.load_dataset(id, data.hf_config, split=...)`` (paper-scale: needs network
  or the Hugging Face cache).

Formats (``data.format``), following Bone Soup A.4 and its public code (the paper recipes in recipes/):

- ``plain``: the prompt is row[``data.prompt_field``];
- ``hh_rlhf``: the ``chosen`` conversation cut at its last ``"\\n\\nAssistant:"``; eval keeps every 4th
  example;
- ``tldr``: openai/summarize_from_feedback 'comparisons'; prompt built from ``info.post`` (100 < len < 1200
  chars); eval is deduplicated by ``info.id`` and keeps the first 2000 posts.

Train/eval: named splits (``data.train_split`` / ``data.eval_split``) for ``hf:`` sources and saved
``DatasetDict`` directories; a seeded split by ``data.eval_fraction`` over distinct prompts (posts for
``tldr``) for builtin, JSONL and single saved ``Dataset`` sources. Token-length filters need tokenizers
and belong to the job that owns them (``model.max_prompt_tokens``), not here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from soupkitchen.config import REPO_ROOT, ConfigError, DataConfig

Split = Literal["train", "eval", "validation"]

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
BUILTINS = ("demo", "tiny")

HH_ASSISTANT = "\n\nAssistant:"
HH_EVAL_STRIDE = 4
TLDR_INSTRUCTION = "Generate a one-sentence summary of this post."
TLDR_MIN_CHARS = 100  # exclusive: keep posts with TLDR_MIN_CHARS < len(post) < TLDR_MAX_CHARS
TLDR_MAX_CHARS = 1200
TLDR_EVAL_POSTS = 2000
COMPLETION_FIELD = "completion"

# Words of the tiny prompt set. The tiny tokenizer's vocabulary must contain all of them; none is a
# reward keyword of recipes/tiny.yaml (happy kind warm love joy bright safe calm quiet rest slow still).
_TINY_DETS = ("the", "a", "my", "your", "this", "our")
_TINY_ADJS = ("old", "new", "big", "small", "little", "long", "short", "young", "dark", "open")
_TINY_NOUNS = (
    "cat",
    "dog",
    "day",
    "night",
    "tree",
    "house",
    "road",
    "book",
    "city",
    "sea",
    "rain",
    "morning",
    "friend",
    "room",
    "door",
    "garden",
    "town",
    "bird",
    "water",
    "flower",
    "sky",
    "moon",
    "star",
    "family",
    "song",
    "food",
    "home",
    "place",
)
_TINY_PREPS = ("in", "on", "with", "near", "under")
_TINY_TEMPLATES = (
    "tell me about {np}",
    "tell me about {np} and {np}",
    "what do you think of {np}",
    "talk about {np}",
    "write about {np} {prep} {np}",
    "where is {np}",
    "how is {np}",
    "what is {np} {prep} {np}",
    "{np} and {np}",
    "{np} {prep} {np}",
)
TINY_PROMPT_WORDS: tuple[str, ...] = tuple(
    sorted(
        set(_TINY_DETS + _TINY_ADJS + _TINY_NOUNS + _TINY_PREPS)
        | {w for t in _TINY_TEMPLATES for w in t.split() if not w.startswith("{")}
    )
)


@dataclass(frozen=True)
class PromptRecord:
    """What the policy sees (``prompt``) and what text-pair rewards compare against (``context``:
    the TL;DR post for ``tldr``; the prompt itself otherwise)."""

    prompt: str
    context: str | None = None

    def __post_init__(self) -> None:
        if self.context is None:
            object.__setattr__(self, "context", self.prompt)


@dataclass(frozen=True)
class SFTExample:
    """One supervised pair; ``prompt + completion`` is the full training text."""

    prompt: str
    completion: str


# --------------------------------------------------------------------------------------------- builtins


def tiny_prompts(n: int = 200, seed: int = 0) -> list[str]:
    """``n`` distinct prompts of 3–8 words from :data:`TINY_PROMPT_WORDS`, deterministic in ``seed``."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    for _ in range(n * 1000):
        if len(out) == n:
            break
        template = rng.choice(_TINY_TEMPLATES)
        words: list[str] = []
        for tok in template.split():
            if tok == "{np}":
                words.append(rng.choice(_TINY_DETS))
                if rng.random() < 0.4:
                    words.append(rng.choice(_TINY_ADJS))
                words.append(rng.choice(_TINY_NOUNS))
            elif tok == "{prep}":
                words.append(rng.choice(_TINY_PREPS))
            else:
                words.append(tok)
        if 3 <= len(words) <= 8:
            out.setdefault(" ".join(words))
    if len(out) < n:  # pragma: no cover - the grammar has far more than n sentences
        raise RuntimeError(f"could only generate {len(out)} distinct tiny prompts, asked for {n}")
    return list(out)


def _demo_prompts() -> list[str]:
    rows = _read_jsonl(PROMPTS_DIR / "demo.jsonl", "data.source")
    return [r["prompt"] for r in rows]


_BUILTIN_LOADERS: dict[str, Callable[[], list[str]]] = {"demo": _demo_prompts, "tiny": tiny_prompts}


def builtin_prompts(name: str) -> list[str]:
    """The prompts of builtin set ``name`` (``demo`` or ``tiny``), in file/generation order."""
    if name not in _BUILTIN_LOADERS:
        raise ConfigError(
            "data.source",
            f"unknown builtin prompt set {name!r}; builtins: {', '.join(f'builtin:{b}' for b in BUILTINS)}",
        )
    return _BUILTIN_LOADERS[name]()


# --------------------------------------------------------------------------------------------- raw rows


@dataclass
class _Table:
    """Rows of one table (a JSONL file, a Dataset or one split) with a description for messages."""

    rows: list[dict[str, Any]]
    columns: list[str] | None  # known column names (datasets); None for JSONL (per-row keys)
    desc: str


def _read_jsonl(path: Path, key: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(key, f"{path}:{lineno} is not valid JSON: {e}") from None
            if not isinstance(row, dict):
                raise ConfigError(key, f"{path}:{lineno} must be a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _dataset_table(ds: Any, needed: Iterable[str], desc: str) -> _Table:
    """Materialise the needed columns of a ``datasets.Dataset`` (all columns kept in the listing)."""
    columns = list(ds.column_names)
    keep = [c for c in dict.fromkeys(needed) if c in columns]
    rows = ds.select_columns(keep).to_list() if keep else [{} for _ in range(len(ds))]
    return _Table(rows, columns, desc)


def _local_path(source: str, key: str) -> Path:
    p = Path(source).expanduser()
    for cand in [p] if p.is_absolute() else [p, REPO_ROOT / p]:
        if cand.exists():
            return cand
    raise ConfigError(
        key,
        f"no such file or directory {source!r} (relative paths are tried from the working directory and "
        f"{REPO_ROOT}); expected builtin:<name> ({', '.join(BUILTINS)}), hf:<dataset id>, a .jsonl file "
        "or a directory written by datasets' save_to_disk",
    )


def _load_hf(dataset_id: str, cfg: DataConfig, split_name: str, key: str) -> Any:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise ConfigError(key, "hf: sources need the 'datasets' package (pip install datasets)") from None
    try:
        return datasets.load_dataset(dataset_id, cfg.hf_config, split=split_name)
    except Exception as e:  # network, cache, unknown id/config/split: all surface as a config problem
        raise ConfigError(
            key,
            f"could not load Hugging Face dataset {dataset_id!r} (config {cfg.hf_config!r}, split "
            f"{split_name!r}): {type(e).__name__}: {e}. hf: sources are paper-scale and need network access "
            "or the dataset already in the Hugging Face cache (HF_HOME / HF_DATASETS_CACHE; offline mode "
            "HF_HUB_OFFLINE=1 loads cached datasets only). Check data.hf_config, data.train_split and "
            "data.eval_split, or use builtin:demo, a .jsonl file or a save_to_disk directory instead.",
        ) from e


def _open_source(
    source: str, cfg: DataConfig, split: Split, key: str, needed: Iterable[str]
) -> tuple[_Table, bool]:
    """The table to read for ``split`` and whether it is a named split (True) or the whole source."""
    split_name = cfg.train_split if split == "train" else cfg.eval_split
    if source.startswith("hf:"):
        dataset_id = source[3:].strip()
        if not dataset_id:
            raise ConfigError(key, "hf: needs a dataset id, e.g. hf:Anthropic/hh-rlhf")
        ds = _load_hf(dataset_id, cfg, split_name, key)
        return _dataset_table(ds, needed, f"{source} split {split_name!r}"), True
    path = _local_path(source, key)
    if path.is_file():
        if path.suffix != ".jsonl":
            raise ConfigError(key, f"local file {str(path)!r} must be JSON Lines with a .jsonl suffix")
        rows = _read_jsonl(path, key)
        return _Table(rows, None, str(path)), False
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise ConfigError(
            key, f"{str(path)!r} is a directory but not one written by datasets' save_to_disk: {e}"
        ) from e
    if isinstance(ds, datasets.DatasetDict):
        if split_name not in ds:
            split_key = "data.train_split" if split == "train" else "data.eval_split"
            raise ConfigError(
                split_key, f"{str(path)!r} has no split {split_name!r}; splits: {', '.join(ds)}"
            )
        return _dataset_table(ds[split_name], needed, f"{path} split {split_name!r}"), True
    return _dataset_table(ds, needed, str(path)), False


def _field(table: _Table, i: int, name: str, key: str, what: str) -> Any:
    row = table.rows[i]
    if name in row:
        return row[name]
    fields = table.columns if table.columns is not None else list(row)
    where = table.desc if table.columns is not None else f"{table.desc} (row {i})"
    present = ", ".join(map(str, fields)) or "none"
    raise ConfigError(key, f"{where} has no field {name!r} ({what}); fields present: {present}")


# --------------------------------------------------------------------------------------------- formats


def hh_split(chosen: str) -> tuple[str, str] | None:
    """HH-RLHF ``chosen`` → (prompt up to and including the last "\\n\\nAssistant:", final response)."""
    parts = chosen.split(HH_ASSISTANT)
    if len(parts) < 2:
        return None
    return HH_ASSISTANT.join(parts[:-1]) + " " + HH_ASSISTANT, parts[-1].strip()


def tldr_prompt(post: str) -> str:
    """The exact TL;DR policy prompt for a Reddit post (newlines become spaces)."""
    return f"### Instruction: {TLDR_INSTRUCTION} ### Input: {post.replace(chr(10), ' ')} ### Response: "


def _tldr_post(table: _Table, i: int, key: str) -> tuple[str, str] | None:
    """(post id, post) of row ``i`` when it passes the length filter, else None."""
    info = _field(table, i, "info", key, "format 'tldr' reads info.post and info.id")
    if not isinstance(info, dict) or "post" not in info or "id" not in info:
        have = ", ".join(info) if isinstance(info, dict) else type(info).__name__
        raise ConfigError(key, f"{table.desc}: format 'tldr' needs info.post and info.id; info has: {have}")
    post = info["post"]
    if not isinstance(post, str) or not (TLDR_MIN_CHARS < len(post) < TLDR_MAX_CHARS):
        return None
    return str(info["id"]), post


def _tldr_summary(table: _Table, i: int, key: str) -> str | None:
    """The human reference summary (policy 'ref') if present, else the human-preferred one."""
    summaries = _field(table, i, "summaries", key, "format 'tldr' SFT reads the summaries")
    if not isinstance(summaries, list) or not summaries:
        return None
    refs = [s for s in summaries if isinstance(s, dict) and s.get("policy") == "ref"]
    if refs:
        text = refs[0].get("text")
    else:
        choice = table.rows[i].get("choice", 0)
        pick = summaries[choice] if isinstance(choice, int) and 0 <= choice < len(summaries) else None
        text = pick.get("text") if isinstance(pick, dict) else None
    return text.strip() if isinstance(text, str) and text.strip() else None


def _needed_columns(cfg: DataConfig, sft: bool = False) -> list[str]:
    if cfg.format == "hh_rlhf":
        return ["chosen"] + ([cfg.prompt_field, COMPLETION_FIELD] if sft else [])
    if cfg.format == "tldr":
        return ["info"] + (["summaries", "choice", cfg.prompt_field, COMPLETION_FIELD] if sft else [])
    return [cfg.prompt_field] + ([COMPLETION_FIELD] if sft else [])


def _prompt_items(cfg: DataConfig, table: _Table, indices: Iterable[int]) -> list[tuple[str, PromptRecord]]:
    """(split key, record) for the rows that pass the format's filters. The key groups rows that must
    stay on one side of a seeded split: the prompt, or the post id for ``tldr``."""
    items = []
    for i in indices:
        if cfg.format == "plain":
            p = _field(table, i, cfg.prompt_field, "data.prompt_field", "the prompt field")
            if not isinstance(p, str):
                raise ConfigError("data.prompt_field", f"{table.desc} row {i}: expected a string, got {p!r}")
            if p.strip():
                items.append((p, PromptRecord(p)))
        elif cfg.format == "hh_rlhf":
            what = "format 'hh_rlhf' reads the chosen conversation"
            chosen = _field(table, i, "chosen", "data.format", what)
            pair = hh_split(chosen) if isinstance(chosen, str) else None
            if pair:
                items.append((pair[0], PromptRecord(pair[0])))
        else:
            post = _tldr_post(table, i, "data.format")
            if post:
                pid, text = post
                items.append((pid, PromptRecord(tldr_prompt(text), text.replace("\n", " ").strip())))
    return items


def _sft_items(cfg: DataConfig, table: _Table, key: str) -> list[tuple[str, SFTExample]]:
    rows = table.rows
    has_pairs = bool(rows) and cfg.prompt_field in rows[0] and COMPLETION_FIELD in rows[0]
    items = []
    for i in range(len(rows)):
        if has_pairs or cfg.format == "plain":
            what = f"SFT pairs need {cfg.prompt_field!r} and {COMPLETION_FIELD!r} fields"
            p = _field(table, i, cfg.prompt_field, key, what)
            c = _field(table, i, COMPLETION_FIELD, key, what)
            if isinstance(p, str) and isinstance(c, str) and p.strip() and c.strip():
                items.append((p, SFTExample(p, c)))
        elif cfg.format == "hh_rlhf":
            chosen = _field(table, i, "chosen", key, "format 'hh_rlhf' SFT reads the chosen conversation")
            pair = hh_split(chosen) if isinstance(chosen, str) else None
            if pair and pair[1]:
                items.append((pair[0], SFTExample(pair[0], " " + pair[1])))
        else:
            post = _tldr_post(table, i, key)
            summary = _tldr_summary(table, i, key) if post else None
            if post and summary:
                items.append((post[0], SFTExample(tldr_prompt(post[1]), summary)))
    return items


# --------------------------------------------------------------------------------------------- splits


def _seeded_eval_keys(keys: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle distinct keys with ``seed``; the first round(n·eval_fraction) (≥ 1, ≤ n-1) are eval."""
    distinct = list(dict.fromkeys(keys))
    if len(distinct) < 2:
        raise ConfigError(
            "data.source", f"needs at least 2 distinct prompts to split train/eval, got {len(distinct)}"
        )
    random.Random(seed).shuffle(distinct)
    n_eval = min(max(1, round(len(distinct) * eval_fraction)), len(distinct) - 1)
    return distinct[n_eval:], distinct[:n_eval]


def _seeded_split(items: list[tuple[str, PromptRecord]], cfg: DataConfig, split: Split) -> list[PromptRecord]:
    train_keys, eval_keys = _seeded_eval_keys([k for k, _ in items], cfg.eval_fraction, cfg.seed)
    if split == "eval":  # one record per key
        first: dict[str, PromptRecord] = {}
        for k, r in items:
            first.setdefault(k, r)
        return [first[k] for k in eval_keys]
    rank = {k: j for j, k in enumerate(train_keys)}  # train keeps repeats (e.g. several comparisons/post)
    return [r for _, r in sorted(((k, r) for k, r in items if k in rank), key=lambda kr: rank[kr[0]])]


def _filters_text(cfg: DataConfig) -> str:
    return {
        "plain": f"non-empty {cfg.prompt_field!r}",
        "hh_rlhf": "a chosen conversation containing '\\n\\nAssistant:'",
        "tldr": f"{TLDR_MIN_CHARS} < len(info.post) < {TLDR_MAX_CHARS} characters",
    }[cfg.format]


# --------------------------------------------------------------------------------------------- API


def load_prompt_records(cfg: DataConfig, split: Split) -> list[PromptRecord]:
    """Prompts (and reward contexts) of ``split``, after format filters, eval rules and max_* caps.

    ``validation`` is a seeded sample of ``max_validation_prompts`` training prompts (as Bone Soup's code: a
    small slice of the train split): hyperparameter searches select on it, so the eval split stays unseen.
    """
    if split == "validation":
        train = load_prompt_records(cfg, "train")
        picked = random.Random(cfg.seed * 7919 + 17).sample(
            range(len(train)), min(cfg.max_validation_prompts, len(train))
        )
        return [train[i] for i in picked]
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train', 'eval' or 'validation', got {split!r}")
    source = cfg.source.strip()
    if source.startswith("builtin:"):
        if cfg.format != "plain":
            raise ConfigError(
                "data.format",
                f"builtin prompt sets are plain prompt lists; set data.format: plain (got {cfg.format!r})",
            )
        prompts = builtin_prompts(source[len("builtin:") :].strip())
        records = _seeded_split([(p, PromptRecord(p)) for p in prompts], cfg, split)
    else:
        table, named = _open_source(source, cfg, split, "data.source", _needed_columns(cfg))
        if not named:
            records = _seeded_split(_prompt_items(cfg, table, range(len(table.rows))), cfg, split)
        elif split == "eval" and cfg.format == "hh_rlhf":
            records = [r for _, r in _prompt_items(cfg, table, range(0, len(table.rows), HH_EVAL_STRIDE))]
        elif split == "eval" and cfg.format == "tldr":
            first: dict[str, PromptRecord] = {}
            for k, r in _prompt_items(cfg, table, range(len(table.rows))):
                first.setdefault(k, r)
            records = list(first.values())[:TLDR_EVAL_POSTS]
        else:
            records = [r for _, r in _prompt_items(cfg, table, range(len(table.rows)))]
    cap = cfg.max_train_prompts if split == "train" else cfg.max_eval_prompts
    if cap is not None:
        records = records[:cap]
    if not records:
        raise ConfigError(
            "data.source",
            f"{cfg.source!r} gave no {split} prompts after filters (format {cfg.format!r} "
            f"keeps rows with {_filters_text(cfg)})",
        )
    return records


def load_prompts(cfg: DataConfig, split: Split) -> list[str]:
    """The policy prompts of ``split`` (see :func:`load_prompt_records`)."""
    return [r.prompt for r in load_prompt_records(cfg, split)]


def load_sft_examples(cfg: DataConfig) -> list[SFTExample]:
    """Distinct (prompt, completion) pairs for SFT from ``data.sft_source`` (whole train side) or, if unset,
    the train side of ``data.source`` (eval prompts excluded).

    Rows with ``prompt_field`` and ``completion`` fields are used as they are; otherwise ``hh_rlhf`` pairs the
    extracted prompt with " " + the final chosen response and ``tldr`` pairs the TL;DR prompt with the
    human reference summary (policy 'ref'), else the human-preferred one (``summaries[choice]``).
    """
    source = (cfg.sft_source or cfg.source).strip()
    key = "data.sft_source" if cfg.sft_source else "data.source"
    if source.startswith("builtin:"):
        raise ConfigError(
            key,
            f"{source} has prompts only, no reference completions for SFT: set sft.enabled: false, or set "
            "data.sft_source to a .jsonl file with prompt/completion fields (or an hh_rlhf / tldr dataset)",
        )
    table, named = _open_source(source, cfg, "train", key, _needed_columns(cfg, sft=True))
    items = _sft_items(cfg, table, key)
    if not named and not cfg.sft_source:  # keep the seeded eval prompts out of SFT
        prompt_keys = [k for k, _ in _prompt_items(cfg, table, range(len(table.rows)))]
        _, eval_keys = _seeded_eval_keys(prompt_keys, cfg.eval_fraction, cfg.seed)
        held_out = set(eval_keys)
        items = [(k, ex) for k, ex in items if k not in held_out]
    examples = list(dict.fromkeys(ex for _, ex in items))
    if not examples:
        raise ConfigError(key, f"{source!r} gave no SFT examples (format {cfg.format!r})")
    return examples
