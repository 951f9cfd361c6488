"""Weighted merging of adapters into a new one (``merge_adapters``), HF PEFT's ``add_weighted_adapter`` strategies on
the weight updates ΔWᵢ = sᵢ·Bᵢ·Aᵢ ("task vectors", Ilharco et al., 2023, https://arxiv.org/abs/2212.04089):

- ``linear`` and ``cat``: Σ wᵢ·ΔWᵢ, exactly, as one low-rank update of rank Σ rᵢ (the factors concatenated);
- ``svd``: the same sum cut to ``svd_rank`` by SVD;
- ``ties`` (Yadav et al., 2023, https://arxiv.org/abs/2306.01708): each ΔWᵢ keeps its ``density`` largest entries, the
  sign of each entry is elected across adapters, and the entries that agree with it are averaged (weighted);
- ``dare_linear``/``dare_ties`` (Yu et al., 2023, https://arxiv.org/abs/2311.03099): each ΔWᵢ keeps a random
  ``density`` of its entries, rescaled by 1/density, then summed (weighted) or TIES-merged;
- ``magnitude_prune``: the ``density`` largest entries of each ΔWᵢ, summed (weighted);
- ``*_svd``: the same, cut to ``svd_rank`` by SVD (``svd_clamp`` clamps the factors at that quantile).

PEFT 0.21.2 (``peft/tuners/lora/model.py``, ``peft/utils/merge_utils.py``) runs ``linear``, ``ties``, ``dare_*`` and
``magnitude_prune`` on the A's and the B's separately (weights √|wᵢsᵢ| on each, the sign on A): the product then holds
cross terms Bᵢ·Aⱼ, so it is not the weighted sum of the updates but for a single adapter (PEFT issue #3004). Ours
applies each strategy to the updates themselves and keeps the result exact: a pruned sum has full rank, so those
strategies give an adapter of rank min(out, in); their ``*_svd`` forms cut it as PEFT does (equal to PEFT's).

``WeightedLowRank`` gives LoRA (lora.py) these strategies through the ``Method`` hooks of ``merge_adapters``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from peftcore.methods.base import STRATEGIES, Weighting
from peftcore.methods.lora_init import is_base_changing


def concatenated(updates: Sequence[tuple[Tensor, Tensor]], weights: Sequence[float]) -> tuple[Tensor, Tensor]:
    """(B, A) with B·A = Σ wᵢ·Bᵢ·Aᵢ exactly: the factors side by side, each weight applied once (on B)."""
    B = torch.cat([w * B for w, (B, _) in zip(weights, updates, strict=True)], dim=1)  # (out, Σ R)
    A = torch.cat([A for _, A in updates])  # (Σ R, in)
    return B, A


def combined(deltas: Sequence[Tensor], weights: Sequence[float], weighting: Weighting) -> Tensor:
    """The strategy's merged update from the updates ``deltas`` (each (out, in), scalings applied)."""
    w = torch.tensor(weights, dtype=deltas[0].dtype, device=deltas[0].device).view(-1, 1, 1)
    base = weighting.base
    if base == "linear":
        return (torch.stack(list(deltas)) * w).sum(0)
    if base in ("ties", "magnitude_prune"):
        kept = torch.stack([largest(delta, weighting.density) for delta in deltas])  # (N, out, in)
    else:
        kept = torch.stack([dropped(delta, weighting.density, weighting.generator) for delta in deltas])
    if base.endswith("ties"):
        agree = elected(kept, weighting.majority_sign_method)
        return (kept * w * agree).sum(0) / agree.sum(0).clamp(min=1)
    return (kept * w).sum(0)


def largest(delta: Tensor, density: float) -> Tensor:
    """``delta`` with all but its ``density`` largest entries (by magnitude) set to zero; 1 keeps everything."""
    if density >= 1:
        return delta
    keep = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    keep[delta.abs().flatten().topk(int(density * delta.numel())).indices] = 1
    return delta * keep.view_as(delta)


def dropped(delta: Tensor, density: float, generator: torch.Generator | None) -> Tensor:
    """DARE: each entry kept with probability ``density`` and rescaled by 1/density, so the expectation is ``delta``;
    1 keeps everything (and draws nothing, as PEFT)."""
    if density >= 1:
        return delta
    return delta * torch.bernoulli(torch.full_like(delta, density), generator=generator) / density


def elected(kept: Tensor, method: str) -> Tensor:
    """TIES' sign election over the stacked updates ``kept`` (N, out, in): where each agrees with the sign of the
    sum ("total") or of the count of signs ("frequency"); ties elect +. Unweighted, as PEFT."""
    sign = kept.sign()
    majority = torch.where((kept if method == "total" else sign).sum(0) >= 0, 1.0, -1.0)
    return (sign == majority).to(kept.dtype)


def factorised(delta: Tensor, rank: int, weighting: Weighting) -> tuple[Tensor, Tensor]:
    """(B, A) of rank ``rank`` (at most min(out, in)) from the SVD of ``delta``: B = U·S, A = Vᵀ; with ``svd_clamp``
    both clamped at that quantile of their entries (PEFT's, after kohya-ss' svd_merge_lora)."""
    U, S, Vh = torch.linalg.svd(delta, full_matrices=weighting.svd_full_matrices)
    B, A = U[:, :rank] * S[:rank], Vh[:rank]  # (out, R), (R, in)
    if weighting.svd_clamp is not None:
        high = torch.quantile(torch.cat([B.flatten(), A.flatten()]), weighting.svd_clamp)
        B, A = B.clamp(-high, high), A.clamp(-high, high)
    return B, A


def merged_update(updates: Sequence[tuple[Tensor, Tensor]], weights: Sequence[float], weighting: Weighting,
                  rank: int) -> tuple[Tensor, Tensor]:
    """(B, A) of the merged update from each source's (sᵢ·Bᵢ, Aᵢ): concatenated for ``linear``/``cat``, else the
    strategy on the products, factorised at ``rank`` (SVD strategies) or exactly (min(out, in))."""
    if weighting.concatenates:
        return concatenated(updates, weights)
    merged = combined([B @ A for B, A in updates], weights, weighting)  # (out, in)
    return factorised(merged, rank if weighting.is_svd else min(merged.shape), weighting)


FOLDED = ("r", "alpha", "rank_pattern", "alpha_pattern", "use_rslora", "init_weights", "init_weights_seed")


def update_rank(config: Any) -> int:
    """The largest rank of ``config``'s update at any site: B0 A0 doubles a PiSSA/OLoRA update's."""
    rank = max([config.r, *config.rank_pattern.values()])
    return 2 * rank if is_base_changing(config.init_weights) else rank


class WeightedLowRank:
    """``merge_adapters`` for LoRA (mixed into ``LoRA`` before its base): every strategy, on modules with
    ``factors()`` (B (out, R), A (R, in)), ``update_scale`` and ``scaling``. The new adapter's alpha is its r, and
    each source's scaling is folded into the merged B, so the sources may differ in r and alpha."""

    weighted_strategies = STRATEGIES

    def weighted_refusal(self) -> str | None:
        if self.gate is not None:
            return "it is gated (use_gating=True): its update depends on the input, so no weighted sum holds it"
        return None

    @classmethod
    def weighted_config(cls, configs: Sequence[Any], weighting: Weighting, shape: Any) -> Any:
        """r: Σ rᵢ (``linear``, ``cat``), ``svd_rank`` or the largest rᵢ (SVD strategies), the hidden size, which is
        min(out, in) at every linear site (the pruning strategies, exact); the sources must sit at the same sites
        with the same options but r and alpha."""
        fixed = [{key: value for key, value in config.essentials().items() if key not in FOLDED} for config in configs]
        if any(options != fixed[0] for options in fixed):
            differing = sorted(key for key in fixed[0] if any(options.get(key) != fixed[0][key] for options in fixed))
            raise ValueError(f"LoRA adapters merge when they sit at the same sites with the same options (r, alpha, "
                             f"their patterns, rsLoRA and the init may differ); these differ in {differing}.")
        ranks = [update_rank(config) for config in configs]
        if weighting.concatenates:
            rank = sum(ranks)
        else:
            rank = (weighting.svd_rank or max(ranks)) if weighting.is_svd else shape.hidden_size
            if rank > shape.hidden_size:
                raise ValueError(f"svd_rank={rank} exceeds the rank a weight update of this model can have "
                                 f"({shape.hidden_size}, its hidden size); choose a smaller svd_rank.")
        return configs[0].replace(r=rank, alpha=rank, rank_pattern={}, alpha_pattern={}, use_rslora=False,
                                  init_weights="lora")

    def weighted_from(self, sources: Sequence[Any], weights: Sequence[float], weighting: Weighting) -> None:
        dtype = torch.promote_types(self.lora_A.dtype, torch.float32)  # PEFT merges half weights in float32 too
        updates = [(source.update_scale * B.to(dtype), A.to(dtype))
                   for source, (B, A) in zip(sources, (source.factors() for source in sources), strict=True)]
        with torch.no_grad():
            B, A = merged_update(updates, weights, weighting, self.lora_A.shape[0])
            rank = A.shape[0]  # at most this adapter's r; the rest stays zero
            self.lora_A.zero_()[:rank] = A
            self.lora_B.zero_()[:, :rank] = B / self.scaling
