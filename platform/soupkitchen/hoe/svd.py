"""Task vectors → LoRA experts (HoE Sec. 3.1, App. D.1 "task-SVD") and the task-vector merge of Eq. 4.

A fine-tuned matrix is W_0 + τ (τ [out, in], the nn.Linear weight convention). Task-SVD prunes τ by magnitude
(|τ| < t → 0, t a global threshold over the whole model) and keeps its top-r singular triplets:

    τ ≈ U_r S_r V_rᵀ,   B = U_r √S_r [out, r],   A = √S_r V_rᵀ [r, in],   B A = best rank-r approximation

Eq. 4 merges task vectors at a preference λ: τ(λ) = Merge({τ_i}, λ), linear (Σ λ_i τ_i) or TIES.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence

import torch
from peft.utils.merge_utils import task_arithmetic, ties

_DIGIT = 16  # bits of |x|'s bit pattern resolved per histogram pass (2^16 bins)
_CHUNK = 1 << 22  # elements per streamed chunk
_COLLECT = 1 << 20  # a window this small is gathered and selected with kthvalue


def _check_fraction(keep_fraction: float) -> float:
    f = keep_fraction
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0 < f <= 1:
        raise ValueError(f"keep_fraction must be a number in (0, 1], got {keep_fraction!r}")
    return float(f)


def _chunks(tensors: Sequence[torch.Tensor], work: torch.dtype) -> Iterator[torch.Tensor]:
    """|x| of every tensor, flattened, in chunks of _CHUNK elements, as `work` floats."""
    for t in tensors:
        flat = t.detach().reshape(-1)
        for s in range(0, flat.numel(), _CHUNK):
            yield flat[s : s + _CHUNK].abs().to(work)


def global_threshold(tensors: Iterable[torch.Tensor], keep_fraction: float) -> float:
    """Magnitude t such that keeping |x| ≥ t over all `tensors` keeps k = ⌈f·total⌉ entries (more on ties).

    t is the exact k-th largest |x| (k ≥ 1; relative float noise below 1e-9 in f·total is ignored), found by
    streaming selection in chunks, with no concatenation and no size limit (torch.quantile stops at 2^24).
    The IEEE bit pattern of |x| ≥ 0, read as an integer, is monotone in |x|: each pass histograms the next
    16 bits (2^16 bins) of the entries still in the window and keeps the bin holding the k-th largest
    (radix select); once the window holds ≤ 2^20 entries they are gathered and kthvalue gives t. float32
    (also bf16/fp16, upcast exactly) needs at most 2 passes; float64 at most 4. keep_fraction = 1 → t = 0.0.
    """
    f = _check_fraction(keep_fraction)
    tensors = list(tensors)
    if not tensors or not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors):
        raise ValueError("tensors must be a non-empty sequence of floating-point torch tensors")
    total = sum(t.numel() for t in tensors)
    if total == 0:
        raise ValueError("tensors hold no entries")
    if f == 1.0:
        return 0.0
    work = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    ints = torch.int64 if work == torch.float64 else torch.int32
    inf_bits = int(torch.tensor(math.inf, dtype=work).view(ints))
    x = f * total
    k = min(total, max(1, math.ceil(x - 1e-9 * x)))
    top = low = torch.finfo(work).bits - 1  # the sign bit of |x| is 0
    prefix = 0  # the window: entries whose bits >> low == prefix
    above, count = 0, total  # entries above the window; entries in it
    while count > _COLLECT and low > 0:
        width = min(_DIGIT, low)
        hist = torch.zeros(1 << width, dtype=torch.int64)
        for v in _chunks(tensors, work):
            bits = v.view(ints)
            bits = bits if low == top else bits[(bits >> low) == prefix]
            hist += torch.bincount((bits >> (low - width)) & ((1 << width) - 1), minlength=1 << width).cpu()
        if low == top and hist[inf_bits >> (low - width) :].sum() > 0:
            raise ValueError("tensors contain NaN or inf")
        from_top = hist.flip(0).cumsum(0)
        j = int(torch.searchsorted(from_top, k - above))  # first j with from_top[j] ≥ k − above
        b = (1 << width) - 1 - j
        above, count = above + int(from_top[j] - hist[b]), int(hist[b])
        prefix, low = (prefix << width) | b, low - width
    if low == 0:  # the window is a single value
        return float(torch.tensor(prefix, dtype=ints).view(work))
    w = torch.cat([v[(v.view(ints) >> low) == prefix].cpu() for v in _chunks(tensors, work)])
    if not torch.isfinite(w).all():
        raise ValueError("tensors contain NaN or inf")
    return float(torch.kthvalue(w, w.numel() - (k - above) + 1).values)


def task_svd(
    delta: torch.Tensor,
    rank: int,
    keep_fraction: float | None = None,
    rescale: float = 1.0,
    threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA (A [rank, in], B [out, rank]) of the task vector delta [out, in] (App. D.1), B A ≈ rescale · τ.

    Pruning: `threshold` zeroes |τ| < threshold (the model-wide global_threshold, computed by the caller);
    else `keep_fraction` uses this matrix's own threshold, global_threshold([τ], keep_fraction); else none.
    Then τ = U S Vᵀ (torch.linalg.svd, full_matrices=False, in float32, float64 kept as float64) and
    B = U_r diag(√S_r) √rescale, A = diag(√S_r) V_rᵀ √rescale: B A = rescale · the best rank-r approximation
    (Eckart–Young). rank > min(out, in) zero-pads A's rows and B's columns, so all experts share r.
    A and B come back in delta's dtype and device.
    """
    if not isinstance(delta, torch.Tensor) or delta.ndim != 2 or not delta.is_floating_point():
        raise ValueError(
            f"delta must be a 2-D floating-point tensor [out, in], got {getattr(delta, 'shape', delta)}"
        )
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    if (
        isinstance(rescale, bool)
        or not isinstance(rescale, (int, float))
        or not math.isfinite(rescale)
        or rescale <= 0
    ):
        raise ValueError(f"rescale must be a finite number > 0, got {rescale!r}")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
        or threshold < 0
    ):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if threshold is None and keep_fraction is not None:
        threshold = global_threshold([delta], keep_fraction)
    tau = delta.detach().to(torch.promote_types(delta.dtype, torch.float32))
    if threshold is not None:
        tau = torch.where(tau.abs() < threshold, torch.zeros_like(tau), tau)
    U, S, Vh = torch.linalg.svd(tau, full_matrices=False)
    r = min(rank, S.numel())
    root = S[:r].sqrt() * math.sqrt(rescale)
    out, inp = tau.shape
    B, A = tau.new_zeros(out, rank), tau.new_zeros(rank, inp)
    B[:, :r] = U[:, :r] * root
    A[:r] = root[:, None] * Vh[:r]
    return A.to(delta.dtype), B.to(delta.dtype)


def merge_task_vectors(
    deltas: list[torch.Tensor], weights: Sequence[float], method: str = "linear", density: float = 1.0
) -> torch.Tensor:
    """Eq. 4, τ(λ) = Merge({τ_i}, λ), on the dense task vectors of one matrix, by PEFT's merge_utils.

    linear: task_arithmetic(τ, λ) = Σ_i λ_i τ_i.
    ties: ties(τ, n·λ, density, majority_sign_method="total"), n = len(deltas): each τ_i is trimmed to its
    top `density` magnitudes, the sign of Σ_i τ_i (unweighted) is elected per entry, and the disjoint mean
    Σ_{i agrees} n λ_i τ_i / #agreeing is taken. At the simplex centre λ = 1/n the weights are 1: plain TIES.
    Away from it this is not Σ λ_i τ_i even at density 1 (at a vertex e_i, entries where τ_i alone agrees
    get n·τ_i). `density` in (0, 1] applies to ties only. The result has the deltas' dtype.
    """
    if method not in ("linear", "ties"):
        raise ValueError(f"method must be one of linear|ties, got {method!r}")
    if not deltas or not all(isinstance(t, torch.Tensor) for t in deltas):
        raise ValueError("deltas must be a non-empty list of tensors")
    if any(t.shape != deltas[0].shape for t in deltas):
        raise ValueError(f"deltas must share one shape, got {[tuple(t.shape) for t in deltas]}")
    if len(weights) != len(deltas):
        raise ValueError(f"got {len(weights)} weights for {len(deltas)} task vectors")
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"density must be a number in (0, 1], got {density!r}")
    if method == "linear" and density != 1:
        raise ValueError(f"density={density} applies to method='ties' only; linear merges do not prune")
    dtype = torch.promote_types(deltas[0].dtype, torch.float32)
    taus = [t.detach().to(dtype) for t in deltas]
    w = torch.tensor([float(x) for x in weights], dtype=dtype, device=taus[0].device)
    if not torch.isfinite(w).all():
        raise ValueError(f"weights must be finite, got {list(weights)}")
    if method == "linear":
        merged = task_arithmetic(taus, w)
    else:
        with warnings.catch_warnings():  # PEFT warns that density 1 prunes nothing
            warnings.filterwarnings("ignore", message="The density")
            merged = ties(taus, len(taus) * w, density, majority_sign_method="total")
    return merged.to(deltas[0].dtype)
