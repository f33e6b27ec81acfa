"""Prompt loading: builtin sets, seeded splits, caps, the paper formats (hh_rlhf, tldr) on local stand-ins
with the real schemas, SFT pairs and errors that name the key path. CPU only, no network."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml

from soupkitchen import data
from soupkitchen.config import RECIPES_DIR, ConfigError, DataConfig
from soupkitchen.data import (
    TINY_PROMPT_WORDS,
    PromptRecord,
    SFTExample,
    load_prompt_records,
    load_prompts,
    load_sft_examples,
    tiny_prompts,
)

HH_PROMPT = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how? \n\nAssistant:"
TLDR_HEAD = "### Instruction: Generate a one-sentence summary of this post. ### Input: "
TLDR_TAIL = " ### Response: "


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def hh_row(i: int) -> dict:
    return {
        "chosen": f"\n\nHuman: hi {i}\n\nAssistant: hello\n\nHuman: how {i}?\n\nAssistant: like this {i}",
        "rejected": f"\n\nHuman: hi {i}\n\nAssistant: hello\n\nHuman: how {i}?\n\nAssistant: no",
    }


def hh_prompt(i: int) -> str:
    return f"\n\nHuman: hi {i}\n\nAssistant: hello\n\nHuman: how {i}? \n\nAssistant:"


def post_of(i: int, length: int = 150) -> str:
    head = f"post {i}\nline two "
    return head + "x" * (length - len(head))


def tldr_row(pid: str, post: str, choice: int = 0, ref: bool = False) -> dict:
    return {
        "info": {"id": pid, "post": post, "title": f"title {pid}", "subreddit": "r/test"},
        "summaries": [
            {"text": f" summary A of {pid}", "policy": "ref" if ref else "sup1", "note": None},
            {"text": f" summary B of {pid}", "policy": "sup2", "note": None},
        ],
        "choice": choice,
    }


def tldr_prompt_of(post: str) -> str:
    return TLDR_HEAD + post.replace("\n", " ") + TLDR_TAIL


# --------------------------------------------------------------------------------------------- builtins


def test_demo_prompts_unique_short_and_well_formed():
    lines = (data.PROMPTS_DIR / "demo.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    prompts = [r["prompt"] for r in rows]
    assert len(prompts) >= 250
    assert len(set(prompts)) == len(prompts)
    assert len({p.lower() for p in prompts}) == len(prompts)
    assert all(isinstance(p, str) and 0 < len(p.split()) <= 30 for p in prompts)
    assert all(set(r) <= {"prompt", "topic"} for r in rows)
    assert data.builtin_prompts("demo") == prompts


def test_tiny_prompts_deterministic_and_neutral():
    prompts = tiny_prompts()
    assert prompts == tiny_prompts() and len(prompts) == 200 == len(set(prompts))
    assert tiny_prompts(seed=1) != prompts
    recipe = yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())
    keywords = {k for r in recipe["rewards"] for k in r["params"]["keywords"]}
    assert len(keywords) == 12
    words = {w for p in prompts for w in p.split()}
    assert words <= set(TINY_PROMPT_WORDS)
    assert not (set(TINY_PROMPT_WORDS) & keywords)
    assert all(3 <= len(p.split()) <= 8 for p in prompts)


def test_tiny_prompt_words_are_in_tiny_vocab():
    from soupkitchen.models.tiny import TINY_VOCAB

    missing = sorted(set(TINY_PROMPT_WORDS) - set(TINY_VOCAB))
    assert not missing, f"tiny prompt words missing from TINY_VOCAB: {missing}"


@pytest.mark.parametrize("name", ["demo", "tiny"])
@pytest.mark.parametrize("frac", [0.1, 0.25])
def test_builtin_split_disjoint_deterministic_sized(name, frac):
    cfg = DataConfig(source=f"builtin:{name}", eval_fraction=frac, max_eval_prompts=10_000)
    train, ev = load_prompts(cfg, "train"), load_prompts(cfg, "eval")
    everything = data.builtin_prompts(name)
    assert not set(train) & set(ev)
    assert sorted(train + ev) == sorted(everything)
    assert len(ev) == round(len(everything) * frac)
    assert (train, ev) == (load_prompts(cfg, "train"), load_prompts(cfg, "eval"))
    other = DataConfig(source=f"builtin:{name}", eval_fraction=frac, max_eval_prompts=10_000, seed=1)
    assert set(load_prompts(other, "eval")) != set(ev)


def test_caps():
    cfg = DataConfig(source="builtin:demo", max_train_prompts=10, max_eval_prompts=5)
    train, ev = load_prompts(cfg, "train"), load_prompts(cfg, "eval")
    assert len(train) == 10 and len(ev) == 5
    full = DataConfig(source="builtin:demo", max_eval_prompts=10_000)
    assert train == load_prompts(full, "train")[:10]
    assert ev == load_prompts(full, "eval")[:5]
    default = DataConfig(source="builtin:demo", eval_fraction=0.5)
    assert len(load_prompts(default, "eval")) == 32  # default max_eval_prompts


def test_records_default_context_is_prompt():
    recs = load_prompt_records(DataConfig(source="builtin:tiny"), "eval")
    assert all(isinstance(r, PromptRecord) and r.context == r.prompt for r in recs)


# --------------------------------------------------------------------------------------------- jsonl plain


def test_jsonl_plain_custom_field_and_duplicates(tmp_path):
    rows = [{"question": f"q{i % 20}", "other": i} for i in range(40)] + [{"question": "   "}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = DataConfig(source=str(path), prompt_field="question", eval_fraction=0.25, max_eval_prompts=100)
    train, ev = load_prompts(cfg, "train"), load_prompts(cfg, "eval")
    assert len(ev) == 5 == len(set(ev))  # distinct prompts are split; eval holds one copy of each
    assert not set(train) & set(ev)
    assert len(train) == 30  # both copies of each of the 15 train prompts, blank prompt dropped
    assert set(train) | set(ev) == {f"q{i}" for i in range(20)}


# --------------------------------------------------------------------------------------------- hh_rlhf


def test_hh_prompt_extraction_exact():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this"
    assert data.hh_split(chosen) == (HH_PROMPT, "like this")
    assert data.hh_split("\n\nHuman: no assistant turn") is None


def test_hh_jsonl_seeded_split(tmp_path):
    rows = [hh_row(i) for i in range(20)] + [{"chosen": "\n\nHuman: dangling", "rejected": ""}]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    cfg = DataConfig(source=str(path), format="hh_rlhf", eval_fraction=0.2, max_eval_prompts=100)
    train, ev = load_prompts(cfg, "train"), load_prompts(cfg, "eval")
    assert len(ev) == 4 and not set(train) & set(ev)
    assert sorted(train + ev) == sorted(hh_prompt(i) for i in range(20))


def test_hh_save_to_disk_named_splits_every_4th(tmp_path):
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([hh_row(i) for i in range(6)]),
            "test": datasets.Dataset.from_list([hh_row(100 + i) for i in range(10)]),
        }
    )
    dd.save_to_disk(str(tmp_path / "hh"))
    cfg = DataConfig(source=str(tmp_path / "hh"), format="hh_rlhf", max_eval_prompts=100)
    assert load_prompts(cfg, "train") == [hh_prompt(i) for i in range(6)]
    assert load_prompts(cfg, "eval") == [hh_prompt(100), hh_prompt(104), hh_prompt(108)]
    assert load_prompts(DataConfig(source=cfg.source, format="hh_rlhf", max_eval_prompts=2), "eval") == [
        hh_prompt(100),
        hh_prompt(104),
    ]
    sft = load_sft_examples(cfg)
    assert sft[0] == SFTExample(hh_prompt(0), " like this 0") and len(sft) == 6
    assert sft[0].prompt + sft[0].completion == hh_row(0)["chosen"].replace("how 0?", "how 0? ")


# --------------------------------------------------------------------------------------------- tldr


def test_tldr_save_to_disk_filters_dedupe_exact_prompt(tmp_path):
    lengths = {"a": 100, "b": 101, "c": 1199, "d": 1200, "e": 500}
    posts = {pid: post_of(ord(pid), n) for pid, n in lengths.items()}
    train = [tldr_row(pid, posts[pid]) for pid in "abcde"] + [tldr_row("b", posts["b"], choice=1)]
    validation = [tldr_row(pid, posts[pid]) for pid in "ebebcad"]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(train), "validation": datasets.Dataset.from_list(validation)}
    ).save_to_disk(str(tmp_path / "tldr"))
    cfg = DataConfig(
        source=str(tmp_path / "tldr"), format="tldr", eval_split="validation", max_eval_prompts=100
    )

    # train: length filter only (100 < len < 1200), repeats kept as in the paper's PPO data
    assert load_prompts(cfg, "train") == [tldr_prompt_of(posts[p]) for p in "bceb"]
    # eval: filter, then dedupe by info.id keeping first occurrences in order
    recs = load_prompt_records(cfg, "eval")
    assert [r.prompt for r in recs] == [tldr_prompt_of(posts[p]) for p in "ebc"]
    assert recs[0].prompt == TLDR_HEAD + posts["e"].replace("\n", " ") + TLDR_TAIL
    assert "\n" not in recs[0].prompt and recs[0].prompt.endswith("### Response: ")
    assert [r.context for r in recs] == [posts[p].replace("\n", " ") for p in "ebc"]


def test_tldr_eval_first_n_posts(tmp_path, monkeypatch):
    rows = [tldr_row(str(i), post_of(i)) for i in range(6)]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "t"))
    monkeypatch.setattr(data, "TLDR_EVAL_POSTS", 4)
    cfg = DataConfig(source=str(tmp_path / "t"), format="tldr", eval_split="validation", max_eval_prompts=100)
    assert load_prompts(cfg, "eval") == [tldr_prompt_of(post_of(i)) for i in range(4)]


def test_tldr_jsonl_split_by_post_id(tmp_path):
    rows = [tldr_row(str(i % 10), post_of(i % 10), choice=(i // 10) % 2) for i in range(30)]
    path = write_jsonl(tmp_path / "tldr.jsonl", rows)
    cfg = DataConfig(source=str(path), format="tldr", eval_fraction=0.2, max_eval_prompts=100)
    train, ev = load_prompts(cfg, "train"), load_prompts(cfg, "eval")
    assert len(ev) == 2 == len(set(ev)) and len(train) == 24
    assert not set(train) & set(ev)
    sft = load_sft_examples(cfg)
    assert {ex.prompt for ex in sft} == set(train)  # eval posts held out of SFT
    assert len(sft) == 16  # 8 posts x 2 distinct preferred summaries (choice alternates)


def test_tldr_sft_prefers_reference_summary(tmp_path):
    rows = [tldr_row("r", post_of(1), choice=1, ref=True), tldr_row("c", post_of(2), choice=1)]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    cfg = DataConfig(source="builtin:demo", sft_source=str(path), format="tldr")
    assert load_sft_examples(cfg) == [
        SFTExample(tldr_prompt_of(post_of(1)), "summary A of r"),
        SFTExample(tldr_prompt_of(post_of(2)), "summary B of c"),
    ]


# --------------------------------------------------------------------------------------------- SFT, hf


def test_sft_jsonl_pairs_and_builtin_error(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": f"p{i}", "completion": f" c{i}"} for i in range(5)])
    cfg = DataConfig(source="builtin:tiny", sft_source=str(path))
    assert load_sft_examples(cfg) == [SFTExample(f"p{i}", f" c{i}") for i in range(5)]
    with pytest.raises(ConfigError) as ei:
        load_sft_examples(DataConfig(source="builtin:demo"))
    assert ei.value.path == "data.source"
    assert "sft.enabled" in str(ei.value) and "data.sft_source" in str(ei.value)
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "p"}, {"prompt": "q"}])
    with pytest.raises(ConfigError, match="completion") as ei:
        load_sft_examples(DataConfig(source=str(plain)))
    assert ei.value.path == "data.source"


def test_hf_source_passes_id_config_split(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([hh_row(i) for i in range(9)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(source="hf:Anthropic/hh-rlhf", format="hh_rlhf", hf_config="x", max_eval_prompts=100)
    assert load_prompts(cfg, "eval") == [hh_prompt(0), hh_prompt(4), hh_prompt(8)]
    assert len(load_prompts(cfg, "train")) == 9
    assert calls == [("Anthropic/hh-rlhf", "x", "test"), ("Anthropic/hh-rlhf", "x", "train")]


def test_hf_unavailable_offline_says_so(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub (offline mode is enabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError) as ei:
        load_prompts(DataConfig(source="hf:openai/summarize_from_feedback", format="tldr"), "train")
    msg = str(ei.value)
    assert ei.value.path == "data.source"
    assert "network" in msg and "cache" in msg and "openai/summarize_from_feedback" in msg


# --------------------------------------------------------------------------------------------- errors


def raises_at(path: str, cfg: DataConfig, split: str = "train", match: str | None = None) -> str:
    with pytest.raises(ConfigError, match=match) as ei:
        load_prompts(cfg, split)
    assert ei.value.path == path, str(ei.value)
    return str(ei.value)


def test_errors_name_the_key(tmp_path):
    msg = raises_at("data.source", DataConfig(source="builtin:nope"))
    assert "builtin:demo" in msg and "builtin:tiny" in msg
    raises_at("data.source", DataConfig(source=str(tmp_path / "missing.jsonl")), match="no such file")
    raises_at("data.format", DataConfig(source="builtin:demo", format="tldr"))
    raises_at("data.source", DataConfig(source="hf:"))

    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "a", "id": 1}, {"text": "b", "id": 2}])
    msg = raises_at("data.prompt_field", DataConfig(source=str(path)), match="'prompt'")
    assert "text, id" in msg
    raises_at("data.format", DataConfig(source=str(path), format="hh_rlhf"), match="chosen")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{not json}\n')
    raises_at("data.source", DataConfig(source=str(bad)), match="bad.jsonl:2")
    txt = tmp_path / "p.txt"
    txt.write_text("hello\n")
    raises_at("data.source", DataConfig(source=str(txt)), match=".jsonl")
    (tmp_path / "emptydir").mkdir()
    raises_at("data.source", DataConfig(source=str(tmp_path / "emptydir")), match="save_to_disk")


def test_errors_datasets(tmp_path):
    short = [tldr_row(str(i), "too short") for i in range(4)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(short)}).save_to_disk(str(tmp_path / "t"))
    cfg = DataConfig(source=str(tmp_path / "t"), format="tldr")
    raises_at("data.source", cfg, match="no train prompts after filters")
    msg = raises_at("data.eval_split", cfg, split="eval")
    assert "'test'" in msg and "train" in msg

    ds = datasets.Dataset.from_list([{"info": {"id": "1", "title": "t"}, "summaries": [], "choice": 0}] * 3)
    ds.save_to_disk(str(tmp_path / "noinfo"))
    raises_at("data.format", DataConfig(source=str(tmp_path / "noinfo"), format="tldr"), match="info.post")

    ds = datasets.Dataset.from_list([{"text": f"t{i}"} for i in range(5)])
    ds.save_to_disk(str(tmp_path / "plain"))
    msg = raises_at("data.prompt_field", DataConfig(source=str(tmp_path / "plain")))
    assert "fields present: text" in msg
    good = DataConfig(source=str(tmp_path / "plain"), prompt_field="text", eval_fraction=0.2)
    assert sorted(load_prompts(good, "train") + load_prompts(good, "eval")) == [f"t{i}" for i in range(5)]
