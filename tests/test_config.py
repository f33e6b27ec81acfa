"""Recipe loading: every shipped recipe validates; bad keys, types, ranges and overrides are rejected
with the key path in the message."""

import dataclasses
import json
import pickle

import pytest
import yaml

from soupkitchen.config import (
    ConfigError,
    DistributedConfig,
    EvalConfig,
    ModelConfig,
    PPOConfig,
    Recipe,
    SearchConfig,
    SoupConfig,
    _num,
    apply_overrides,
    available_recipes,
    from_dict,
    load_recipe,
    parse_cli_overrides,
    replace,
    to_dict,
)
from soupkitchen.methods import Method


def test_every_shipped_recipe_loads():
    names = available_recipes()
    assert {"tiny", "demo", "hh-helpful-harmless", "hh-helpful-humor", "summary-faithful"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name
        assert len(recipe.objectives) >= 2


def test_overrides_reach_the_typed_tree():
    recipe = load_recipe("tiny", {"ppo.kl_coef": 0.5, "soup.beta": 0.8, "rewards.0.params.keywords": ["x"]})
    assert recipe.ppo.kl_coef == 0.5
    assert recipe.soup.beta == 0.8
    assert recipe.rewards[0].params == {"keywords": ["x"]}
    assert isinstance(recipe.ppo.learning_rate, float)


def test_cli_override_parsing():
    argv = [
        "--ppo.kl_coef",
        "0.1",
        "--soup.beta=0.8",
        "--rewards.0.params.keywords",
        "[a, b]",
        "--model.name",
        "x",
    ]
    assert parse_cli_overrides(argv) == {
        "ppo.kl_coef": 0.1,
        "soup.beta": 0.8,
        "rewards.0.params.keywords": ["a", "b"],
        "model.name": "x",
    }
    with pytest.raises(ConfigError, match="missing its value"):
        parse_cli_overrides(["--ppo.steps"])
    with pytest.raises(ConfigError, match="expected a --key.path"):
        parse_cli_overrides(["ppo.steps", "3"])


@pytest.mark.parametrize(
    ("overrides", "path", "fragment"),
    [
        ({"ppo.klcoef": 1}, "ppo.klcoef", "did you mean 'kl_coef'"),
        ({"nonsense": 1}, "nonsense", "allowed keys here"),
        ({"model.source": "foo"}, "model.source", "must be one of 'hf', 'gguf', 'tiny'"),
        ({"ppo.steps": "many"}, "ppo.steps", "expected an integer"),
        ({"ppo.steps": 0}, "ppo.steps", r"must lie in \[1, inf\)"),
        ({"ppo.steps": 2.5}, "ppo.steps", "expected an integer"),
        ({"generation.top_p": 1.5}, "generation.top_p", r"\(0, 1\]"),
        ({"generation.temperature": 0}, "generation.temperature", r"\(0, inf\)"),
        ({"ppo.adaptive_kl": "yes"}, "ppo.adaptive_kl", "true or false"),
        ({"soup.beta": 0.3}, "soup.beta", r"\(0.5, 1\]"),
        ({"soup.beta_candidates": [0.7, 0.4]}, "soup.beta_candidates.1", r"\(0.5, 1\]"),
        ({"rewards.0.kind": "lenght"}, "rewards.0.kind", "must be one of"),
        ({"rewards.1.name": "warm"}, "rewards", "unique"),
        ({"eval.ref_point": [0.0]}, "eval.ref_point", "one per objective"),
        ({"eval.grid_step": 0.3}, "eval.grid_step", "integer"),
        ({"ppo.mini_batch_size": 5}, "ppo.mini_batch_size", "must divide"),
        ({"distributed.num_workers": 0}, "distributed.num_workers", r"\[1, inf\)"),
        ({"distributed.num_workers": 3}, "distributed.num_workers", "must divide ppo.mini_batch_size"),
        ({"distributed.zero_stage": 4}, "distributed.zero_stage", r"\[0, 3\]"),
        ({"soup.morlhf_preferences": [[0.5, 0.6]]}, "soup.morlhf_preferences.0", "sum to 1"),
        ({"soup.morlhf_preferences": [[1.0]]}, "soup.morlhf_preferences.0", "2 objectives"),
        ({"model.source": "gguf"}, "model.gguf_file", "gguf_package"),
    ],
)
def test_bad_values_name_the_key(overrides, path, fragment):
    with pytest.raises(ConfigError, match=fragment) as err:
        load_recipe("tiny", overrides)
    assert err.value.path == path
    assert str(err.value).startswith(path + ":")


def test_override_path_errors():
    with pytest.raises(ConfigError, match="out of range"):
        apply_overrides({"rewards": [{}]}, {"rewards.3.name": "x"})
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"seed": 1}, {"seed.x": 2})
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["seed"])


def test_unknown_recipe_lists_the_available_ones():
    with pytest.raises(ConfigError, match="one of: .*tiny"):
        load_recipe("tinyy")


def test_no_rewards_is_an_error():
    with pytest.raises(ConfigError, match="at least one reward"):
        from_dict(Recipe, {}).validate()


def test_recipe_from_a_yaml_path(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\nrewards:\n  - {name: a, kind: length}\n  - {name: b, kind: length}\n")
    assert load_recipe(p).objectives == ["a", "b"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)


def test_extends_merges_sections_and_replaces_lists(tmp_path):
    (tmp_path / "parent.yaml").write_text(
        "name: parent\nppo: {steps: 7, batch_size: 8}\n"
        "rewards:\n  - {name: a, kind: length}\n  - {name: b, kind: length}\n"
    )
    (tmp_path / "child.yaml").write_text(
        "extends: parent\nname: child\nppo: {steps: 9}\n"
        "rewards:\n  - {name: c, kind: length}\n  - {name: d, kind: length}\n"
    )
    child = load_recipe(tmp_path / "child.yaml")
    assert (child.name, child.ppo.steps, child.ppo.batch_size) == ("child", 9, 8)
    assert child.objectives == ["c", "d"]
    humor = load_recipe("hh-helpful-humor")
    assert humor.objectives == ["helpful", "humor"]
    assert humor.ppo == load_recipe("hh-helpful-harmless").ppo
    (tmp_path / "loop.yaml").write_text("extends: loop\nname: loop\n")
    with pytest.raises(ConfigError, match="loops"):
        load_recipe(tmp_path / "loop.yaml")


# ------------------------------------------------------------------------------- schema (pydantic)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"ppo.klcoef": 1},
            "ppo.klcoef: unknown key; did you mean 'kl_coef'? allowed keys here: adaptive_kl, algorithm, ",
        ),
        ({"decoding.mode": "mod"}, "decoding.mode: unknown key; "),  # modes are per request row
        ({"generation.top_p": 1.5}, "generation.top_p: must lie in (0, 1], got 1.5"),
        ({"generation.temperature": float("nan")}, "generation.temperature: must lie in (0, inf), got nan"),
        ({"model.source": "foo"}, "model.source: must be one of 'hf', 'gguf', 'tiny'; got 'foo'"),
        (
            {"soup.method": "bonesoup"},
            "soup.method: must be one of 'bone_soup', 'rewarded_soups', 'morlhf'; got 'bonesoup'",
        ),
        ({"ppo.steps": True}, "ppo.steps: expected an integer, got True"),
        ({"ppo.steps": "3"}, "ppo.steps: expected an integer, got '3'"),
        ({"ppo.kl_coef": True}, "ppo.kl_coef: expected a number, got True"),
        ({"model.name": 3}, "model.name: expected a string, got 3"),
        ({"generation.stop": "x"}, "generation.stop: expected a list (list[str]), got 'x'"),
        ({"model": 3}, "model: expected a mapping for ModelConfig, got 3"),
        ({"rewards.0.normalization.std": 0}, "rewards.0.normalization.std: must lie in (0, inf), got 0"),
    ],
)
def test_messages_say_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_recipe("tiny", overrides)
    assert str(err.value).startswith(message), str(err.value)


def test_a_float_field_takes_an_int_and_the_method_is_the_enum():
    recipe = load_recipe("tiny", {"ppo.kl_coef": 1, "soup.method": "morlhf"})
    assert recipe.ppo.kl_coef == 1.0 and isinstance(recipe.ppo.kl_coef, float)
    assert recipe.soup.method is Method.MORLHF


# (section, its class, keys of the section, the failing key relative to the section, message fragment)
SECTION_RULES = [
    ("eval", EvalConfig, {"grid_step": 0.3}, "grid_step", "1/grid_step must be an integer"),
    ("eval", EvalConfig, {"alphas": [0.5, 1.5]}, "alphas.1", r"α must be in \[0, 1\]"),
    ("eval", EvalConfig, {"alphas": []}, "alphas", "needs at least one α"),
    ("eval", EvalConfig, {"greedy": True, "samples_per_prompt": 2}, "samples_per_prompt", "greedy"),
    ("search", SearchConfig, {"alphas": [0.1, 2.0]}, "alphas.1", r"must be in \[0, 1.0\]"),
    ("search", SearchConfig, {"gammas": [-1.0]}, "gammas.0", r"must be in \[0, inf\)"),
    ("search", SearchConfig, {"gammas": []}, "gammas", "at least one value"),
    (
        "ppo",
        PPOConfig,
        {"batch_size": 8, "mini_batch_size": 3},
        "mini_batch_size",
        r"must divide ppo.batch_size \(8\)",
    ),
    ("model", ModelConfig, {"source": "gguf", "gguf_package": "p"}, "gguf_file", "needs model.gguf_package"),
    ("distributed", DistributedConfig, {"use_gpu": True}, "gpus_per_worker", "must be > 0"),
    (
        "soup",
        SoupConfig,
        {"morlhf_preferences": [[0.5, 0.5], [0.7, 0.7]]},
        "morlhf_preferences.1",
        "sum to 1",
    ),
]


@pytest.mark.parametrize(("section", "cls", "keys", "key", "fragment"), SECTION_RULES)
def test_each_section_checks_its_own_rules(section, cls, keys, key, fragment):
    with pytest.raises(ConfigError, match=fragment) as err:
        cls(**keys)  # built in code: the path is relative to the section
    assert err.value.path == key
    with pytest.raises(ConfigError, match=fragment) as err:
        load_recipe("tiny", {f"{section}.{k}": v for k, v in keys.items()})
    assert err.value.path == f"{section}.{key}"


def test_assignment_is_validated_and_a_refused_value_is_not_kept():
    recipe = load_recipe("tiny")
    steps, mini = recipe.ppo.steps, recipe.ppo.mini_batch_size
    with pytest.raises(ConfigError, match=r"^steps: must lie in \[1, inf\), got 0"):
        recipe.ppo.steps = 0
    with pytest.raises(ConfigError, match="^mini_batch_size: must divide"):
        recipe.ppo.mini_batch_size = 3
    with pytest.raises(ConfigError, match="expected an integer"):
        recipe.seed = "1"
    assert (recipe.ppo.steps, recipe.ppo.mini_batch_size, recipe.seed) == (steps, mini, 0)
    with pytest.raises(ConfigError, match=r"^soup.beta: β must lie in \(1/n, 1\]"):  # a cross-section rule
        recipe.soup = replace(recipe.soup, beta=0.3)
    assert recipe.soup.beta != 0.3
    recipe.ppo.steps = 3
    assert recipe.ppo.steps == 3


def test_replace_validates_and_leaves_the_original_alone():
    lora = load_recipe("tiny").lora
    small = replace(lora, r=4, alpha=2)
    assert (small.r, small.alpha, lora.r) == (4, 2.0, load_recipe("tiny").lora.r)
    with pytest.raises(ConfigError, match=r"^r: must lie in \[1, 1024\], got 0"):
        replace(lora, r=0)
    with pytest.raises(ConfigError, match="^dropuot: unknown key; did you mean 'dropout'?"):
        replace(lora, dropuot=0.1)


def test_recipes_pickle_and_round_trip_through_plain_dicts():
    for name in available_recipes():
        recipe = load_recipe(name)
        assert pickle.loads(pickle.dumps(recipe)) == recipe  # they travel to Ray workers as objects
        tree = to_dict(recipe)
        assert from_dict(Recipe, tree) == recipe
        assert json.loads(json.dumps(tree)) == tree
        assert type(tree["soup"]["method"]) is str  # an enum comes out as its value
        assert yaml.safe_load(yaml.safe_dump(tree)) == tree


@dataclasses.dataclass
class _Options:
    """A plain dataclass with ``_num`` ranges (like ``serving.ServeOptions``): from_dict checks it too."""

    name: str = ""
    workers: int = _num(1, 1)
    share: float = _num(0.5, 0.0, 1.0, hi_open=True)


def test_from_dict_and_to_dict_keep_working_on_plain_dataclasses():
    opts = from_dict(_Options, {"workers": 2, "share": 0}, "args")
    assert opts == _Options(workers=2, share=0.0) and isinstance(opts, _Options)
    assert to_dict(opts) == {"name": "", "workers": 2, "share": 0.0}
    for data, message in [
        (
            {"workerz": 2},
            "args.workerz: unknown key; did you mean 'workers'? allowed keys here: name, share, workers",
        ),
        ({"workers": 0}, r"args.workers: must lie in [1, inf), got 0"),
        ({"share": 1.0}, r"args.share: must lie in [0, 1), got 1.0"),
        ({"name": 1}, "args.name: expected a string, got 1"),
    ]:
        with pytest.raises(ConfigError) as err:
            from_dict(_Options, data, "args")
        assert str(err.value) == message
