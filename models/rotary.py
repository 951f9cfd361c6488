"""Rotary position embeddings (Su et al., 2021, "RoFormer", https://arxiv.org/abs/2104.09864) and sliding-window
attention over packed sequences, as ModernBERT uses them (models/modernbert.py).

Numerically equal to transformers 4.57's ``ModernBertRotaryEmbedding`` + ``apply_rotary_pos_emb`` (default rope
type) and to the ``sliding_window_mask`` of ``ModernBertModel._update_attention_mask``: the same float32 products in
the same order, so the rotated queries and keys are bitwise those of transformers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from peftcore.models.attention import merge_heads, sdpa, split_heads
from peftcore.models.layers import Padding


def inverse_frequencies(theta: float, head_dim: int) -> Tensor:
    """(D/2,) 1 / theta^(2j / D), in float32 from int64 exponents as transformers'
    ``_compute_default_rope_parameters`` computes them."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rotate(x: Tensor, cos: Tensor, sin: Tensor, num_heads: int) -> Tensor:
    """x (..., T, H D) rotated by position, per head: x cos + rotate_half(x) sin, written out on the two halves x1, x2
    of each head as (x1 cos - x2 sin, x2 cos + x1 sin) with the tables' halves cos, sin (..., T, D/2) (transformers'
    tables repeat them: cat(freqs, freqs)). The same float operations as transformers', without its negated copy."""
    x1, x2 = x.unflatten(-1, (num_heads, 2, -1)).unbind(-2)  # (..., T, H, D/2) each
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # (..., T, 1, D/2)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)  # (..., T, H D)


@dataclass(frozen=True)
class Rotary:
    """One forward's rotary tables and local-attention masks, built once and handed to every layer.

    ``tables`` maps each rope theta the layers use to (cos, sin) halves at every token the layers see: (B, T, D/2)
    padded, or (1, N, D/2) for the packed real tokens when ``padding`` packs them. ``local_mask`` is the additive
    sliding-window mask (B|1, 1, T, T) over the padded layout (padding keys masked too), built where a layer attends
    over it; ``row_masks`` are each packed row's additive window mask (T_row, T_row), None for a row the window
    covers whole. Both None where no layer is local.
    """

    tables: dict[float, tuple[Tensor, Tensor]]
    local_mask: Tensor | None = None
    row_masks: tuple[Tensor | None, ...] | None = None

    @classmethod
    def build(cls, positions: Tensor, thetas: Iterable[float], head_dim: int, padding: Padding, dtype: torch.dtype,
              half_window: int | None, padded_layout: bool) -> Rotary:
        """The tables for ``positions`` (B, T) at each of ``thetas``; the local masks keep keys within
        ``half_window`` tokens of the query (None: no local layer), over the padded batch where ``padded_layout``
        says a layer attends over it, and per packed row where the batch runs packed."""
        positions = positions.float()
        tables = {}
        for theta in dict.fromkeys(thetas):
            angles = positions[..., None] * inverse_frequencies(theta, head_dim).to(positions.device)  # (B, T, D/2)
            tables[theta] = (padding.pack(angles.cos().to(dtype)), padding.pack(angles.sin().to(dtype)))
        if half_window is None:
            return cls(tables)
        local_mask = row_masks = None
        if padded_layout:
            T = positions.shape[-1]
            base = padding.mask if padding.mask is not None else torch.zeros(1, 1, 1, T, dtype=dtype,
                                                                               device=positions.device)
            local_mask = base.masked_fill(outside(T, half_window, positions.device), torch.finfo(dtype).min)
        if padding.lengths is not None:
            masks = {length: torch.zeros(length, length, dtype=dtype, device=positions.device).masked_fill(
                outside(length, half_window, positions.device), -math.inf)
                for length in set(padding.lengths) if length > half_window + 1}  # (T_row, T_row)
            row_masks = tuple(masks.get(length) for length in padding.lengths)
        return cls(tables, local_mask, row_masks)


def outside(length: int, half_window: int, device: torch.device) -> Tensor:
    """(T, T) True where key and query are more than ``half_window`` tokens apart."""
    index = torch.arange(length, device=device)
    return (index[:, None] - index[None, :]).abs() > half_window


def attend_windowed(q: Tensor, k: Tensor, v: Tensor, lengths: tuple[int, ...], num_heads: int, dropout_p: float,
                    masks: tuple[Tensor | None, ...], prefix: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Packed (1, N, C) q, k, v -> (1, N, C): SDPA over each row's run of real tokens with the row's additive window
    mask (``Rotary.row_masks``; None: the window covers the row), each query also attending to every prefix key and
    value (B, H, P, D) of its row: a prefix is at no distance. models/attention.attend_per_sequence is this
    function's global-attention twin.
    """
    outputs = []
    for row, run in enumerate(zip(*(t.split(lengths, dim=1) for t in (q, k, v)), strict=True)):
        q_row, k_row, v_row = (split_heads(t, num_heads) for t in run)  # (1, H, T_row, D)
        mask = masks[row]
        if prefix is not None:
            k_row, v_row = (torch.cat([p[row:row + 1], t], dim=2) for p, t in zip(prefix, (k_row, v_row), strict=True))
            if mask is not None:  # prefix positions are always attendable
                mask = torch.cat([mask.new_zeros(mask.shape[0], k_row.shape[2] - mask.shape[0]), mask], dim=1)
        y = sdpa(q_row, k_row, v_row, mask, dropout_p)
        outputs.append(merge_heads(y))
    return torch.cat(outputs, dim=1)


__all__ = ["Rotary", "attend_windowed", "inverse_frequencies", "rotate"]
