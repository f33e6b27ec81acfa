"""HoE's pure math: preference routing (Eqs. 9-11) and task-SVD / task-vector merging (Sec. 3.1, Eq. 4)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from soupkitchen.hoe import svd
from soupkitchen.hoe.routing import lora_weights, nearest, preference_routing
from soupkitchen.hoe.svd import global_threshold, merge_task_vectors, task_svd

# Figure 2 of the paper: four LoRA experts (three single-objective, one MO at the centre) and a router.
FIG2 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3], [1 / 2, 1 / 2, 0]])
FIG2_SLOTS = [0, 1, 2, 3, -1]
FIG2_LAMBDA = [5 / 9, 3 / 9, 1 / 9]


def _residual(omega, experts, lam):
    return np.linalg.norm(np.asarray(experts).T @ omega - np.asarray(lam))


# ---------------------------------------------------------------- routing (Eqs. 9-10)


@pytest.mark.parametrize(
    "experts, j",
    [(FIG2, 0), (FIG2, 2), (FIG2, 3), (FIG2, 4), ([[1, 0], [0, 1], [0.5, 0.5]], 2), ([[1, 0], [0, 1]], 1)],
)
def test_routing_at_an_experts_own_preference_is_one_hot(experts, j):
    omega = preference_routing(np.asarray(experts, dtype=float)[j], experts)
    assert omega.tolist() == np.eye(len(experts))[j].tolist()


def test_figure_2_example():
    d = np.linalg.norm(FIG2 - FIG2_LAMBDA, axis=1)
    # router 0.208 < centre 0.314 < [1,0,0] 0.567 < [0,1,0] 0.875 < [0,0,1] 1.100
    np.testing.assert_allclose(d, [26**0.5 / 9, 62**0.5 / 9, 98**0.5 / 9, 8**0.5 / 9, 14**0.5 / 18])
    assert nearest(FIG2_LAMBDA, FIG2, 3).tolist() == [4, 3, 0]
    omega = preference_routing(FIG2_LAMBDA, FIG2)
    np.testing.assert_allclose(omega, [2 / 9, 0, 0, 1 / 3, 4 / 9], atol=1e-9)
    # The router votes over the LoRA slots of [1,0,0], [0,1,0], [1/3,1/3,1/3] and outputs [0.4, 0, 0.6]:
    # g = 2/9 e_0 + 1/3 e_3 + 4/9 (0.4 e_0 + 0.6 e_3) = 0.4 e_0 + 0.6 e_3.
    g = lora_weights(omega, FIG2_SLOTS, votes={4: [0, 1, 3]}, router_outputs={4: [0.4, 0.0, 0.6]})
    np.testing.assert_allclose(g, [0.4, 0, 0, 0.6], atol=1e-9)


def test_lora_weights_skips_unrouted_routers_and_validates():
    g = lora_weights([0.5, 0.5, 0.0], [1, 0, -1], votes={}, router_outputs={})
    assert g.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="router expert 2"):
        lora_weights([0.5, 0.0, 0.5], [1, 0, -1], votes={}, router_outputs={})
    with pytest.raises(ValueError, match="distinct LoRA positions"):
        lora_weights([0.5, 0.5], [0, 0], votes={}, router_outputs={})
    with pytest.raises(ValueError, match=r"votes\[2\]"):
        lora_weights([0.5, 0.0, 0.5], [1, 0, -1], votes={2: [0, 5]}, router_outputs={2: [0.5, 0.5]})
    with pytest.raises(ValueError, match=r"router_outputs\[2\]"):
        lora_weights([0.5, 0.0, 0.5], [1, 0, -1], votes={2: [0, 1]}, router_outputs={2: [1.0]})


def test_zero_padding_a_new_objective_leaves_routing_unchanged():
    # λ and every expert get a 0 for a new objective; the new one-hot expert [0,0,0,1] is ≥ 1 away from λ,
    # beyond the 3 nearest (all < 0.6). With the same n = 3 the routing is unchanged. (The default n would
    # become N = 4 and route over a 4th expert: padding keeps routing only at a fixed n.)
    padded = np.vstack([np.pad(FIG2, ((0, 0), (0, 1))), [0, 0, 0, 1]])
    lam = FIG2_LAMBDA + [0.0]
    omega = preference_routing(lam, padded, n=3)
    np.testing.assert_allclose(omega[:5], preference_routing(FIG2_LAMBDA, FIG2), atol=1e-12)
    assert omega[5] == 0.0
    np.testing.assert_allclose(preference_routing(lam, padded[:5], n=3), omega[:5], atol=1e-12)


def test_ties_are_deterministic():
    # [1,0] and [0.5,0.5] are both 0.354 from λ: the lower index wins a tie, and both lie on the segment.
    experts = [[1, 0], [0, 1], [0.5, 0.5]]
    assert nearest([0.75, 0.25], experts, 2).tolist() == [0, 2]
    np.testing.assert_allclose(preference_routing([0.75, 0.25], experts), [0.5, 0, 0.5], atol=1e-12)
    assert nearest([0.5, 0.5], [[1, 0], [0, 1]], 2).tolist() == [0, 1]
    np.testing.assert_allclose(preference_routing([0.5, 0.5], [[1, 0], [0, 1]]), [0.5, 0.5], atol=1e-12)
    assert preference_routing([0.5, 0.5], [[1, 0], [0, 1]], n=1).tolist() == [1.0, 0.0]  # projection on [1,0]
    a = [preference_routing([0.75, 0.25], experts).tolist() for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_random_preferences_are_reconstructed_on_a_sparse_simplex():
    experts = np.vstack([np.eye(3), [[1 / 3] * 3], [[0.5, 0.5, 0]]])  # vertices + centre + a router
    rng = np.random.default_rng(0)
    for lam in rng.dirichlet(np.ones(3), size=200):
        omega = preference_routing(lam, experts)
        assert omega.shape == (5,) and np.all(omega >= 0) and abs(omega.sum() - 1) < 1e-12
        assert np.count_nonzero(omega) <= 3
        assert _residual(omega, experts, lam) < 1e-8
        assert preference_routing(lam, experts).tolist() == omega.tolist()


def test_outside_hull_fallback():
    # λ = [0.5, 0.5]: its 2 nearest, [0.6,0.4] (0.141) and [0.7,0.3] (0.283), span [0.6, 0.7] ∌ 0.5. By
    # distance sum, {[0.6,0.4], [0,1]} (0.141 + 0.707) is the first subset holding λ: 5/6 and 1/6.
    experts = [[0.6, 0.4], [0.7, 0.3], [0, 1], [1, 0]]
    assert nearest([0.5, 0.5], experts, 2).tolist() == [0, 1]
    omega = preference_routing([0.5, 0.5], experts)
    np.testing.assert_allclose(omega, [5 / 6, 0, 1 / 6, 0], atol=1e-12)
    assert _residual(omega, experts, [0.5, 0.5]) < 1e-12
    # 3 objectives: λ's 3 nearest (0.122, 0.187, 0.187) are collinear on the face λ_3 = 0 and miss it; the
    # first subset holding it is {[.5,.5,0], [0,0,1]} (0.122 + 1.100, below every triple): 0.9 / 0.1.
    experts3 = np.array([[0.5, 0.5, 0], [0.6, 0.4, 0], [0.4, 0.6, 0], [0, 0, 1], [1, 0, 0]])
    lam = [0.45, 0.45, 0.1]
    assert nearest(lam, experts3, 3).tolist() == [0, 1, 2]
    omega = preference_routing(lam, experts3)
    np.testing.assert_allclose(omega, [0.9, 0, 0, 0.1, 0], atol=1e-12)
    # The experts do not cover λ: the projection on its n nearest (the closest convex combination) stays.
    np.testing.assert_allclose(
        preference_routing([0.2, 0.2, 0.6], [[1, 0, 0], [0, 1, 0]]), [0.5, 0.5], atol=1e-9
    )


@pytest.mark.parametrize(
    "lam, experts, n, match",
    [
        ([0.5, 0.5], FIG2, None, "2 entries but there are 3 objectives"),
        ([1.2, -0.2, 0.0], FIG2, None, "negative entry"),
        ([np.nan, 0.5, 0.5], FIG2, None, "NaN"),
        ([0.5, 0.5, 0.0], [[1, 0, 0], [0.5, 0.6, 0]], None, "row 1 sums to 1.1"),
        ([0.5, 0.5, 0.0], [[1, 0, 0], [-0.5, 1.5, 0]], None, "row 1 has a negative entry"),
        ([0.5, 0.5, 0.0], [[1, 0, 0], [np.nan, 1, 0]], None, "row 1 contains NaN"),
        ([0.5, 0.5, 0.0], [1, 0, 0], None, "2-D array"),
        ([0.5, 0.5, 0.0], FIG2, 0, "n must be an int >= 1"),
        ([0.5, 0.5, 0.0], FIG2, 1.5, "n must be an int >= 1"),
    ],
)
def test_routing_rejects_bad_inputs(lam, experts, n, match):
    with pytest.raises(ValueError, match=match):
        preference_routing(lam, experts, n)


def test_n_larger_than_m_is_clipped():
    assert nearest([0.5, 0.5], [[1, 0], [0, 1]], 5).tolist() == [0, 1]
    np.testing.assert_allclose(preference_routing([0.5, 0.5], [[1, 0], [0, 1]], n=5), [0.5, 0.5])


# ---------------------------------------------------------------- task-SVD (Sec. 3.1, App. D.1)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_task_svd_recovers_a_low_rank_task_vector(dtype, tol):
    g = torch.Generator().manual_seed(0)
    tau = (
        torch.randn(40, 3, generator=g, dtype=torch.float64)
        @ torch.randn(3, 30, generator=g, dtype=torch.float64)
    ).to(dtype)
    for rank in (3, 5):
        A, B = task_svd(tau, rank)
        assert A.shape == (rank, 30) and B.shape == (40, rank) and A.dtype == B.dtype == dtype
        torch.testing.assert_close(B @ A, tau, rtol=0, atol=tol * tau.abs().max().item())
        A, B = task_svd(tau, rank, rescale=1.9)
        torch.testing.assert_close(B @ A, 1.9 * tau, rtol=0, atol=tol * tau.abs().max().item())
    A, B = task_svd(tau, 5)  # singular values 4-5 are noise: their triplets vanish
    assert (B[:, 3:] @ A[3:]).abs().max() < tol * tau.abs().max()
    A, B = task_svd(tau, 35)  # past min(out, in) = 30: zero-padded to rank 35
    assert A.shape == (35, 30) and B.shape == (40, 35)
    assert A[30:].abs().max() == 0 and B[:, 30:].abs().max() == 0
    torch.testing.assert_close(B @ A, tau, rtol=0, atol=tol * tau.abs().max().item())


def test_task_svd_prunes_by_threshold_or_fraction():
    tau = torch.randn(40, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = 0.8
    A, B = task_svd(tau, 30, threshold=t)
    torch.testing.assert_close(B @ A, torch.where(tau.abs() < t, 0.0, tau), rtol=0, atol=1e-10)
    A, B = task_svd(tau, 30, keep_fraction=0.25)
    assert int((B @ A).abs().gt(1e-9).sum()) == 300  # 25% of 1200 distinct entries
    for bad in (dict(rank=0), dict(rank=2.0), dict(rank=2, rescale=0.0), dict(rank=2, rescale=math.inf)):
        with pytest.raises(ValueError):
            task_svd(tau, **bad)


def test_global_threshold_keeps_ceil_fraction_of_all_entries():
    total = 7 + 120 + 999
    values = (torch.randperm(total, generator=torch.Generator().manual_seed(2)).double() + 1) / 3
    values = values * torch.where(torch.rand(total) < 0.5, -1.0, 1.0)  # distinct magnitudes, random signs
    tensors = [values[:7].float(), values[7:127].reshape(12, 10).float(), values[127:].reshape(27, 37)]
    for f in (0.001, 0.1, 0.37, 0.5, 0.999):
        t = global_threshold(tensors, f)
        assert sum(int((x.abs() >= t).sum()) for x in tensors) == math.ceil(f * total)
    assert global_threshold(tensors, 0.3) == global_threshold(tensors, 0.3)
    assert global_threshold(tensors, 1.0) == 0.0
    for bad in (0, 0.0, -0.1, 1.5, math.nan, True, "0.5"):
        with pytest.raises(ValueError, match="keep_fraction"):
            global_threshold(tensors, bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        global_threshold([torch.tensor([1.0, math.nan])] * 3, 0.5)


@pytest.mark.parametrize(
    "seed, dtype", [(0, torch.float32), (1, torch.float32), (2, torch.float32), (2, torch.float64)]
)
def test_global_threshold_streaming_passes_match_kthvalue(monkeypatch, seed, dtype):
    # Tiny digits, chunks and gather size force many radix passes on a heavy-tailed, tied sample.
    monkeypatch.setattr(svd, "_DIGIT", 3)
    monkeypatch.setattr(svd, "_CHUNK", 100)
    monkeypatch.setattr(svd, "_COLLECT", 16)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3000, generator=g) * torch.randn(3000, generator=g).exp() ** 4
    x[:5] = 1e6  # outliers
    x[100:400] = 0.125  # ties
    x[400 : 400 + 600 * (seed % 3)] = 0.0  # zeros and tiny values: the window's leading bits are all 0
    x[2000:2300] = torch.rand(300, generator=g) * 1e-38
    x = x.to(dtype)
    tensors = [x[:1000], x[1000:2900].reshape(19, 100), x[2900:]]
    for f in (0.01, 0.2, 0.5, 0.8, 0.95, 0.999):
        k = math.ceil(f * x.numel())
        expected = x.abs().kthvalue(x.numel() - k + 1).values.item()
        assert global_threshold(tensors, f) == expected
    assert global_threshold([torch.full((50,), -2.0)], 0.3) == 2.0


def test_global_threshold_past_torch_quantile_limit():
    x = torch.randn(20_000_000, generator=torch.Generator().manual_seed(3))
    with pytest.raises(
        RuntimeError, match="too large"
    ):  # on a 20M-element view (sorting x first costs seconds)
        torch.quantile(torch.zeros(1).expand(x.numel()), 0.9)
    start = time.perf_counter()
    t = global_threshold([x], 0.1)
    elapsed = time.perf_counter() - start
    k = math.ceil(0.1 * x.numel())
    assert t == x.abs().kthvalue(x.numel() - k + 1).values.item()
    assert elapsed < 5, f"global_threshold on 20M entries took {elapsed:.1f} s"


# ---------------------------------------------------------------- merging (Eq. 4)


def test_linear_merge_is_the_weighted_sum():
    g = torch.Generator().manual_seed(4)
    taus = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    lam = [0.25, 0.5, 0.25]
    expected = 0.25 * taus[0] + 0.5 * taus[1] + 0.25 * taus[2]
    torch.testing.assert_close(merge_task_vectors(taus, lam), expected, rtol=1e-15, atol=1e-15)
    ints = [torch.tensor([[1.0, -2.0], [3.0, 0.0]]), torch.tensor([[1.0, 2.0], [-1.0, 4.0]])]
    assert merge_task_vectors(ints, [0.75, 0.25]).tolist() == [[1.0, -1.0], [2.0, 1.0]]


def test_ties_at_the_centre_is_plain_ties():
    tau1 = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    tau2 = torch.tensor([[1.0, 2.0], [-1.0, 4.0]])
    # Elected sign = sign of τ1 + τ2 = [[2, 0], [2, 4]] → + everywhere (0 counts as +). Disjoint mean over
    # the entries agreeing with it (a zero agrees with no sign):
    #   (0,0): both → (1 + 1)/2 = 1; (0,1): only τ2: 2; (1,0): only τ1: 3; (1,1): only τ2 (τ1 is 0): 4.
    merged = merge_task_vectors([tau1, tau2], [0.5, 0.5], method="ties", density=1.0)
    assert merged.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_merge_validates():
    taus = [torch.zeros(2, 2), torch.zeros(2, 2)]
    with pytest.raises(ValueError, match="linear|ties"):
        merge_task_vectors(taus, [0.5, 0.5], method="dare")
    with pytest.raises(ValueError, match="2 task vectors"):
        merge_task_vectors(taus, [1.0])
    with pytest.raises(ValueError, match="one shape"):
        merge_task_vectors([torch.zeros(2, 2), torch.zeros(2, 3)], [0.5, 0.5])
