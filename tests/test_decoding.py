"""Guided decoding on the tiny recipe's trained backbones: exactness (γ = 0 is plain decoding, one-hot MOD
is the backbone, mixed batches equal rows alone, the MAGE-I-M and MAGE-E scores are their formulas, an
untrained residual value head adds nothing), expert roles, sampling and beam determinism, stop strings, the
LogitsProcessor, input validation.

References are independent of the decoding loop: HF ``generate`` (via ``generate_batch``) on the mixed
model, dense ``materialize`` merges, and plain forward passes.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft import get_peft_model_state_dict

from soupkitchen import preferences
from soupkitchen.config import load_recipe
from soupkitchen.data import load_prompt_records
from soupkitchen.decoding import (
    AdapterRoles,
    DecodeSettings,
    GuidanceProcessor,
    RowBatch,
    RowRequest,
    RunningBatch,
    base_coefficients,
    decode,
    row_plan,
)
from soupkitchen.errors import ConfigError
from soupkitchen.evaluation import build_plan, load_mixed, read_source
from soupkitchen.generation import generate_batch
from soupkitchen.merging import build_mixed_model, load_adapter_state, materialize, use_coefficients
from soupkitchen.methods import Mode, parse_guided_modes
from soupkitchen.models import attach_lora, load_base_model
from soupkitchen.preferences import Preference
from soupkitchen.value_models import value_lora

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
MUS = [[0.0, 1.0], [0.3, 0.7], [1.0, 0.0], [0.5, 0.5], [0.8, 0.2], [0.1, 0.9]]


@pytest.fixture(scope="module")
def stack(tiny_policies):
    """Mixed model over [BS backbone 0, BS backbone 1, RS backbone 0, RS backbone 1]; roles (MAGE-I over the
    BS backbones, MOD over the RS ones); prompts."""
    recipe, trained = tiny_policies
    sources = {m: read_source(trained["manifests"][m], m) for m in ("bone_soup", "rewarded_soups")}
    plan = build_plan(recipe, sources, include_sft=False)
    model, tok = load_mixed(plan, recipe)
    roles = AdapterRoles(4, [0, 1], sources["bone_soup"].beta, 0.0, mod_experts=[2, 3])
    prompts = [r.prompt for r in load_prompt_records(recipe.data, "eval")[: len(MUS)]]
    return SimpleNamespace(
        recipe=recipe, sources=sources, plan=plan, model=model, tok=tok, roles=roles, prompts=prompts
    )


def run(s, plans, settings=None, prompts=None, **kw):
    return decode(
        s.model, s.tok, prompts or s.prompts, plans, settings or DecodeSettings(max_new_tokens=10), **kw
    )


def test_gamma_zero_is_plain_decoding_and_plain_is_hf_generate(stack):
    s = stack
    plain = run(s, [s.roles.plan(Mode.BONE_SOUP, mu, 0.0) for mu in MUS])
    for mode in (Mode.MAGE_I_M, Mode.MAGE_I, Mode.MOD):
        plans = [s.roles.plan(mode, mu, 0.0) for mu in MUS]
        if mode is not Mode.MOD:
            assert all(p.width == 1 for p in plans)  # γ = 0 drops every guidance row
            assert torch.equal(run(s, plans).tokens, plain.tokens), mode
    with use_coefficients(s.model, np.stack([s.roles.base(mu) for mu in MUS])):
        hf = generate_batch(s.model, s.tok, s.prompts, s.recipe.generation, do_sample=False)
    hf_tokens = hf.sequences[:, hf.prompt_len :][:, :10]
    mask = torch.arange(10)[None] < plain.lengths[:, None]
    assert torch.equal(plain.tokens[mask], hf_tokens[mask])
    assert plain.tokens.shape == (len(MUS), 10) and plain.forward_rows == len(MUS)
    assert (plain.lengths >= 1).all() and (plain.lengths <= 10).all()


def test_one_hot_mod_reproduces_that_backbone(stack):
    """MOD at μ = e_i with the RS experts is RS backbone i: compare with its dense merge W0 + ΔW_i."""
    s = stack
    base, _ = load_base_model(s.recipe.model)
    for i in (0, 1):
        mu = np.eye(2)[i]
        plan = s.roles.plan(Mode.MOD, mu, 1.0)
        assert plan.width == 1 and plan.components[0].weight == 1.0
        out = run(s, [plan] * 3, prompts=s.prompts[:3])
        dense = materialize(base, [load_adapter_state(s.plan.adapters[2 + i])], [1.0], s.plan.lora[2 + i])
        ref = generate_batch(dense, s.tok, s.prompts[:3], s.recipe.generation, do_sample=False)
        ref_tokens = ref.sequences[:, ref.prompt_len :][:, :10]
        mask = torch.arange(10)[None] < out.lengths[:, None]
        assert torch.equal(out.tokens[mask], ref_tokens[:, :10][mask]), i


def test_mixed_batch_rows_equal_rows_decoded_alone(stack):
    s = stack
    r = s.roles
    plans = [
        r.plan(Mode.BONE_SOUP, MUS[0], 0.0),
        r.plan(Mode.MAGE_I_M, MUS[1], 1.0),
        r.plan(Mode.MAGE_I, MUS[2], 0.5),
        r.plan(Mode.MOD, MUS[3], 1.0),
        r.plan(Mode.MAGE_I_M, MUS[4], 2.0, shortcut=False),
        r.plan(Mode.MAGE_I, MUS[5], 3.0, ensemble_weights="bone_soup"),
    ]
    together = run(s, plans)
    assert together.forward_rows == sum(p.width for p in plans) == 1 + 2 + 3 + 2 + 3 + 4  # μ_i = 0: no row
    for i, p in enumerate(plans):
        alone = run(s, [p], prompts=[s.prompts[i]])
        n = int(alone.lengths[0])
        assert torch.equal(alone.tokens[0, :n], together.tokens[i, :n]), i
    assert len(set(together.texts)) > 1


@torch.no_grad()
def test_mage_i_m_score_is_its_formula(stack):
    """First-step score = log π_base + γ(log π*_merge − log π_ref), against dense merges (shortcut on/off)."""
    s = stack
    mu, gamma = [0.2, 0.8], 1.5
    base_model, _ = load_base_model(s.recipe.model)
    adapters = [load_adapter_state(p) for p in s.plan.adapters[:2]]
    c = s.roles.base(mu)[:2]
    dense = materialize(base_model, adapters, c, s.plan.lora[0])
    enc = s.tok(s.prompts[:2], return_tensors="pt", padding=True)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    lp_base = dense(**enc, position_ids=pos).logits[:, -1].log_softmax(-1)
    lp_ref = base_model(**enc, position_ids=pos).logits[:, -1].log_softmax(-1)
    want = (1 + gamma) * lp_base - gamma * lp_ref
    for shortcut, width in ((True, 2), (False, 3)):
        plan = s.roles.plan(Mode.MAGE_I_M, mu, gamma, shortcut=shortcut)
        assert plan.width == width
        batch = RowBatch(s.model, [plan, plan], enc["input_ids"], enc["attention_mask"])
        score, lp = batch.forward()
        torch.testing.assert_close(score, want, atol=2e-4, rtol=0)
        torch.testing.assert_close(lp, lp_base, atol=1e-4, rtol=0)


def _first_logits(model, enc) -> torch.Tensor:
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return model(**enc, position_ids=pos).logits[:, -1].float()


@torch.no_grad()
def test_mage_e_score_reads_value_rows_as_residuals(stack):
    """MAGE-E with the RS adapters as stand-in value models: first-step score = log π_base + γ Σ_i μ_i
    (logits(W0 + ΔV_i) − logits(W0)), against dense merges; one shared W0 row (c = 0) per decoding row."""
    s = stack
    mu, gamma = [0.2, 0.8], 1.5
    roles = AdapterRoles(4, [0, 1], s.sources["bone_soup"].beta, 0.0, values=[2, 3])
    base_model, _ = load_base_model(s.recipe.model)
    adapters = [load_adapter_state(p) for p in s.plan.adapters]
    enc = s.tok(s.prompts[:2], return_tensors="pt", padding=True)
    lp_base = _first_logits(materialize(base_model, adapters[:2], roles.base(mu)[:2], s.plan.lora[0]), enc)
    lp_base = lp_base.log_softmax(-1)
    w0 = _first_logits(base_model, enc)
    q = [_first_logits(materialize(base_model, [a], [1.0], s.plan.lora[2]), enc) - w0 for a in adapters[2:]]
    want = {
        "mage_e": lp_base + gamma * (mu[0] * q[0] + mu[1] * q[1]),
        "mage_e_m": lp_base
        + gamma * (_first_logits(materialize(base_model, adapters[2:], mu, s.plan.lora[2]), enc) - w0),
    }
    for mode, width in ((Mode.MAGE_E, 4), (Mode.MAGE_E_M, 3)):
        plan = roles.plan(mode, mu, gamma)
        assert plan.width == width and plan.components[-1].c == (0.0,) * 4  # base, value rows, W0
        assert plan.components[-1].value == -gamma  # −γ Σ μ_i logits(W0)
        score, lp = RowBatch(s.model, [plan, plan], enc["input_ids"], enc["attention_mask"]).forward()
        torch.testing.assert_close(score, want[mode], atol=2e-4, rtol=0)
        torch.testing.assert_close(lp, lp_base, atol=1e-4, rtol=0)


def test_untrained_value_models_add_no_guidance(stack):
    """Freshly initialised value adapters (B = 0) under the residual head: V ≡ 0, so MAGE-E(-M) decodes
    exactly as plain at any γ (read raw, their logits would be W0's and γ·V would pull toward W0)."""
    s = stack
    fresh, _ = load_base_model(s.recipe.model)
    untrained = get_peft_model_state_dict(attach_lora(fresh, value_lora(s.recipe), seed=3))
    assert all(not v.any() for k, v in untrained.items() if "lora_B" in k)
    base, _ = load_base_model(s.recipe.model)
    states = [load_adapter_state(p) for p in s.plan.adapters[:2]] + [untrained, untrained]
    lora = [*s.plan.lora[:2], value_lora(s.recipe), value_lora(s.recipe)]
    model = build_mixed_model(base, states, lora, ["bs0", "bs1", "v0", "v1"])
    roles = AdapterRoles(4, [0, 1], s.sources["bone_soup"].beta, 0.0, values=[2, 3])
    settings = DecodeSettings(max_new_tokens=10)
    plain = decode(model, s.tok, s.prompts, [roles.plan(Mode.BONE_SOUP, mu, 0.0) for mu in MUS], settings)
    enc = s.tok(s.prompts, return_tensors="pt", padding=True)
    for mode in (Mode.MAGE_E, Mode.MAGE_E_M):
        for gamma in (1.0, 20.0):
            plans = [roles.plan(mode, mu, gamma) for mu in MUS]
            with torch.no_grad():
                score, lp = RowBatch(model, plans, enc["input_ids"], enc["attention_mask"]).forward()
            torch.testing.assert_close(score, lp, atol=1e-5, rtol=0)
            assert torch.equal(decode(model, s.tok, s.prompts, plans, settings).tokens, plain.tokens), mode


def test_residual_w0_row_is_one_shared_forward_row():
    """All value rows share one c = 0 row (u = −γ Σ w_i); a c = 0 row already in the plan (here the base)
    serves the residual too (w and u on one forward row), unless the shortcut is off."""
    e = np.eye(3)
    plan = row_plan(Mode.MAGE_E, 2.0, base=e[0], values=[e[1], e[2]], value_weights=[0.25, 0.75])
    assert [(c.c, c.weight, c.value) for c in plan.components] == [
        ((1.0, 0, 0), 1.0, 0.0),
        ((0, 1.0, 0), 0.0, 0.5),
        ((0, 0, 1.0), 0.0, 1.5),
        ((0, 0, 0), 0.0, -2.0),
    ]
    shared = row_plan(Mode.MAGE_E_M, 2.0, base=np.zeros(3), values=[e[1], e[2]])
    assert shared.width == 2 and (shared.components[0].weight, shared.components[0].value) == (1.0, -2.0)
    assert row_plan(Mode.MAGE_E_M, 2.0, base=np.zeros(3), values=[e[1], e[2]], shortcut=False).width == 3


def test_mage_i_uses_bone_soup_backbones_and_mod_the_rewarded_soups(stack):
    """With both sources, evaluate's MAGE-I π*_i are the Bone Soup backbones, MOD's experts the RS ones."""
    s = stack
    plan = build_plan(s.recipe, s.sources, include_sft=False, modes=[Mode.MAGE_I, Mode.MOD], gamma=1.0)
    fronts = {f.label: f for f in plan.fronts}
    files = {m: {p.resolve() for p in src.adapters} for m, src in s.sources.items()}

    def used(front) -> set:
        idx = {j for pl in front.plans for c in pl.components for j, x in enumerate(c.c) if x != 0}
        return {plan.adapters[j].resolve() for j in idx}

    assert used(fronts["mage_i"]) == files["bone_soup"]
    assert used(fronts["mod"]) == files["rewarded_soups"]
    mu = [0.3, 0.7]
    mage_i = s.roles.plan(Mode.MAGE_I, mu, 1.0)  # base, π*_0 = e_0, π*_1 = e_1, π_ref = 0
    assert [c.c for c in mage_i.components[1:]] == [(1.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 0, 0)]
    assert [c.c for c in s.roles.plan(Mode.MOD, mu, 1.0).components] == [(0, 0, 1.0, 0), (0, 0, 0, 1.0)]


def test_rows_joining_and_leaving_mid_decode_equal_rows_decoded_alone(stack):
    """Continuous batching: rows of every mode (greedy and seeded sampling) join a running batch between
    steps and leave when they end or are dropped; each row's tokens are exactly its tokens decoded alone, the
    batch shrinks as rows end, and its KV length follows its live rows, not the oldest."""
    s, r = stack, stack.roles
    rows = [  # (plan, settings, step it joins at)
        (r.plan(Mode.BONE_SOUP, MUS[0], 0.0), DecodeSettings(max_new_tokens=14, min_new_tokens=14), 0),
        (r.plan(Mode.MAGE_I_M, MUS[1], 1.0), DecodeSettings(max_new_tokens=4, greedy=False, seed=3), 2),
        (r.plan(Mode.MOD, MUS[2], 1.0), DecodeSettings(max_new_tokens=6), 2),
        (
            r.plan(Mode.MAGE_I, MUS[3], 0.5),
            DecodeSettings(max_new_tokens=5, greedy=False, top_k=5, seed=9),
            5,
        ),
        (r.plan(Mode.REWARDED_SOUPS, MUS[4], 0.0), DecodeSettings(max_new_tokens=3), 9),
        (r.plan(Mode.MAGE_I_M, MUS[5], 2.0), DecodeSettings(max_new_tokens=12, min_new_tokens=12), 1),
    ]
    batch = RunningBatch(s.model, s.tok)
    out, sizes, step = {}, [], 0
    while len(out) < len(rows) - 1:
        joining = [i for i, (_, _, at) in enumerate(rows) if at == step]
        if joining:
            batch.admit(
                joining,
                [s.prompts[i] for i in joining],
                [rows[i][0] for i in joining],
                [rows[i][1] for i in joining],
            )
        if step == 4:
            batch.drop([5])  # a cancelled request: gone before the next step
        if len(batch):
            sizes.append((len(batch), batch.forward_rows, batch.batch.length))
            for f in batch.step()[1]:
                out[f.key] = f.tokens
        step += 1
    assert 5 not in out and sorted(out) == [0, 1, 2, 3, 4]
    for i in out:
        alone = decode(s.model, s.tok, [s.prompts[i]], [rows[i][0]], [rows[i][1]])
        assert out[i] == alone.tokens[0, : int(alone.lengths[0])].tolist(), i
    assert max(n for n, _, _ in sizes) >= 3 and sizes[-1][0] == 1  # rows joined, then left
    # the last steps hold row 0 alone: its cache is its own prompt + tokens, not the padding of rows gone
    prompt0 = len(s.tok(s.prompts[0], add_special_tokens=False)["input_ids"])
    assert sizes[-1][2] <= prompt0 + 14 and sizes[-1][1] == rows[0][0].width


def test_sampling_is_seeded_and_top_k_1_is_greedy(stack):
    s = stack
    plans = [s.roles.plan(Mode.MAGE_I_M, mu, 1.0) for mu in MUS]
    st = DecodeSettings(max_new_tokens=10, greedy=False, temperature=1.3, top_p=0.95, seed=5)
    a, b = run(s, plans, st), run(s, plans, st)
    assert torch.equal(a.tokens, b.tokens)
    c = run(s, plans, DecodeSettings(max_new_tokens=10, greedy=False, temperature=1.3, top_p=0.95, seed=6))
    assert not torch.equal(a.tokens, c.tokens)
    greedy = run(s, plans)
    assert torch.equal(
        run(s, plans, DecodeSettings(max_new_tokens=10, greedy=False, top_k=1)).tokens, greedy.tokens
    )


def test_chunk_beam(stack):
    """b = c = 1 is plain sampling (same draws); b2c2 is deterministic under a seed, one row per request."""
    s = stack
    plans = [s.roles.plan(Mode.MAGE_I_M, mu, 1.0) for mu in MUS[:3]]
    prompts = s.prompts[:3]
    sample = run(s, plans, DecodeSettings(max_new_tokens=9, greedy=False, seed=2), prompts=prompts)
    b1 = DecodeSettings(max_new_tokens=9, seed=2, beam_width=1, beam_expansion=1, beam_lookahead=4)
    assert torch.equal(run(s, plans, b1, prompts=prompts).tokens, sample.tokens)
    b2 = DecodeSettings(max_new_tokens=9, seed=2, beam_width=2, beam_expansion=2, beam_lookahead=3)
    x, y = run(s, plans, b2, prompts=prompts), run(s, plans, b2, prompts=prompts)
    assert torch.equal(x.tokens, y.tokens) and x.tokens.shape == (3, 9)
    assert x.forward_rows == 2 * 2 * sum(p.width for p in plans)


def test_stop_strings_and_eos(stack):
    s = stack
    plans = [s.roles.plan(Mode.BONE_SOUP, mu, 0.0) for mu in MUS]
    free = run(s, plans)
    words = free.texts[0].split()
    stop = words[min(2, len(words) - 1)]
    cut = run(s, plans, DecodeSettings(max_new_tokens=10, stop=(stop,)))
    assert stop not in cut.texts[0] and int(cut.lengths[0]) <= int(free.lengths[0])
    assert cut.texts[0] == free.texts[0].split(stop, 1)[0].strip()
    eos = s.tok.eos_token_id
    for row, n, has in zip(free.tokens, free.lengths, free.has_eos, strict=True):
        assert bool(has) == bool((row[:n] == eos).any()) and (not has or row[n - 1] == eos)
    assert (free.tokens[:, 0] != eos).all()  # min_new_tokens = 1, as generate_batch


def test_logits_processor_matches_the_loop(stack):
    s = stack
    enc = s.tok(s.prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    for mode in (Mode.MAGE_I_M, Mode.MAGE_I):
        plans = [s.roles.plan(mode, mu, 1.0) for mu in MUS]
        with use_coefficients(s.model, base_coefficients(plans)), torch.no_grad():
            out = s.model.generate(
                **enc,
                max_new_tokens=10,
                min_new_tokens=1,
                do_sample=False,
                pad_token_id=s.tok.pad_token_id,
                logits_processor=[GuidanceProcessor(s.model, plans, enc["attention_mask"])],
            )
        loop = run(s, plans)
        hf = out[:, enc["input_ids"].shape[1] :]
        mask = torch.arange(hf.shape[1])[None] < loop.lengths[:, None]
        assert torch.equal(hf[mask], loop.tokens[:, : hf.shape[1]][mask]), mode
    with pytest.raises(ConfigError, match="has no base model row"):
        base_coefficients([s.roles.plan(Mode.MOD, MUS[0], 1.0)])


def test_inputs_are_validated_with_the_field_named(stack):
    r = stack.roles
    with pytest.raises(ConfigError, match="decoding.mode: unknown mode 'magic'"):
        r.plan("magic", [0.5, 0.5], 1.0)
    with pytest.raises(ConfigError, match="decoding.gamma: guidance strength"):
        r.plan("mage_i_m", [0.5, 0.5], -1.0)
    with pytest.raises(ConfigError, match="mu: preference mu has 3 entries"):
        r.plan("mage_i_m", [0.2, 0.3, 0.5], 1.0)
    with pytest.raises(ConfigError, match="mu: preference mu sums to"):
        r.plan("mod", [0.2, 0.3], 1.0)
    with pytest.raises(ConfigError, match="--value-models: mode 'mage_e_m' needs explicit value models"):
        r.plan("mage_e_m", [0.5, 0.5], 1.0)
    with pytest.raises(ConfigError, match="decoding.mode: unknown mode 'plain'"):  # now bone_soup
        r.plan("plain", [0.5, 0.5], 0.0)
    with pytest.raises(ConfigError, match="decoding.mode: mode 'mage_i_m' needs π"):
        row_plan(Mode.MAGE_I_M, 1.0, base=np.zeros(4))
    with pytest.raises(ConfigError, match="decoding.beam_expansion: must be an integer >= 1"):
        DecodeSettings(beam_width=2, beam_expansion=0).check()
    with pytest.raises(ConfigError, match="decoding.top_p"):
        DecodeSettings(top_p=0.0).check()
    with pytest.raises(ConfigError, match=r"decoding.beam_width: must lie in \[0, 64\]"):
        load_recipe("tiny", {"decoding.beam_width": -1})
    with pytest.raises(ConfigError, match="decoding.modes: unknown key"):  # modes are per request row
        load_recipe("tiny", {"decoding.modes": ["mod", "mage"]})
    with pytest.raises(ConfigError, match="--modes: unknown guided mode 'mage'"):  # where the rule lives now
        parse_guided_modes("mod,mage")
    with pytest.raises(ConfigError, match="soup.alpha: extrapolation α must be a finite number >= 0"):
        AdapterRoles(2, [0, 1], 0.7, alpha=-0.5)
    rec = load_recipe(
        "tiny", {"decoding.max_new_tokens": 7, "decoding.greedy": False, "decoding.beam_width": 2}
    )
    st = DecodeSettings.from_config(rec.decoding, rec.generation)
    assert (st.max_new_tokens, st.greedy, st.beam_width, st.stop) == (7, False, 2, ())
    st = DecodeSettings.from_config(rec.decoding, rec.generation, 3, greedy=True, top_k=5)
    assert (st.max_new_tokens, st.greedy, st.top_k, st.seed, st.beam_width) == (7, True, 5, 3, 2)
    with pytest.raises(ConfigError, match="decoding.top_k: must be an integer >= 0"):
        DecodeSettings.from_config(rec.decoding, rec.generation, top_k=-1)


def test_a_request_is_validated_once(stack, monkeypatch):
    """``plan`` validates μ once (it used to be checked again by every coefficient helper it called);
    ``plan_for`` takes a typed ``RowRequest`` and validates nothing: the serving engine's path."""
    calls = []
    check = preferences.validate_preference
    monkeypatch.setattr(preferences, "validate_preference", lambda *a: calls.append(a) or check(*a))
    r, mu = stack.roles, [0.3, 0.7]
    for mode in Mode:
        calls.clear()
        if mode.explicit or mode.conditioned or mode is Mode.HOE:  # no value models / MOC policy / HoE set
            continue
        plan = r.plan(mode, mu, 1.0, ensemble_weights="bone_soup")
        assert len(calls) == 1, mode
        calls.clear()
        typed = r.plan_for(RowRequest(mode, Preference((0.3, 0.7)), 1.0), ensemble_weights="bone_soup")
        assert calls == [] and typed == plan, mode


def test_conditioned_modes_decode_their_policy_alone(stack):
    """moc / ric: the conditioned policy at c = 1 (its prompt carries μ); without one, a ConfigError."""
    roles = dataclasses.replace(stack.roles, conditioned={"moc": 3})
    plan = roles.plan(Mode.MOC, [0.3, 0.7], 1.0)
    assert plan.width == 1 and list(plan.components[0].c) == [0.0, 0.0, 0.0, 1.0]
    with pytest.raises(ConfigError, match="ric"):
        roles.plan(Mode.RIC, [0.3, 0.7], 0.0)


def test_unguided_modes_decode_the_merged_soup(stack):
    """bone_soup decodes c = (1+α)B(β)⁻¹μ, rewarded_soups c = (1+α)μ on the same backbones (B = I); a
    request's own α overrides the roles' (``RowRequest.alpha``); γ has nothing to guide."""
    r, mu = stack.roles, Preference((0.3, 0.7))
    bs = r.plan_for(RowRequest(Mode.BONE_SOUP, mu, 0.0))
    rs = r.plan_for(RowRequest(Mode.REWARDED_SOUPS, mu, 0.0, alpha=0.5))
    assert bs.width == rs.width == 1 and bs.base == rs.base == 0 and not bs.mode.guided
    np.testing.assert_allclose(bs.components[0].c[:2], mu.coefficients(r.beta))
    np.testing.assert_allclose(rs.components[0].c, [0.45, 1.05, 0.0, 0.0])
    assert r.plan(Mode.REWARDED_SOUPS, mu, 3.0) == r.plan(Mode.REWARDED_SOUPS, [0.3, 0.7], 0.0)
