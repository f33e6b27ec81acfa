"""Recipe loading: every shipped recipe validates; bad keys, types, ranges and overrides are rejected
with the key path in the message."""

import pytest

from soupkitchen.config import (
    ConfigError,
    Recipe,
    apply_overrides,
    available_recipes,
    from_dict,
    load_recipe,
    parse_cli_overrides,
)


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
