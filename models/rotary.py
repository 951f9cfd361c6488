"""Rotary position embeddings (Su et al., 2021, "RoFormer", https://arxiv.org/abs/2104.09864) and sliding-window
attention over packed sequences, as ModernBERT uses them (models/modernbert.py).

Numerically equal to transformers 4.57's ``ModernBertRotaryEmbedding`` + ``apply_rotary_pos_emb`` (default rope
type) and to the ``sliding_window_mask`` of ``ModernBertModel._update_attention_mask``: the same float32 products in
the same order, so the rotated queries and keys are bitwise those of transformers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from peftcore.models.layers import Padding, merge_heads, split_heads


def inverse_frequencies(theta: float, head_dim: int) -> Tensor:
    """(D/2,) 1 / theta^(2j / D), in float32 from int64 exponents as transformers'
    ``_compute_default_rope_parameters`` computes them."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rotate(x: Tensor, cos: Tensor, sin: Tensor, num_heads: int) -> Tensor:
    """x (..., T, H D) rotated by position: x cos + rotate_half(x) sin per head; cos, sin (..., T, D)."""
    x = x.unflatten(-1, (num_heads, -1))  # (..., T, H, D)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos.unsqueeze(-2) + rotated * sin.unsqueeze(-2)).flatten(-2)  # (..., T, H D)


@dataclass(frozen=True)
class Rotary:
    """One forward's rotary tables and local-attention mask, built once and handed to every layer.

    ``tables`` maps each rope theta the layers use to (cos, sin) at every token the layers see: (B, T, D) padded,
    or (1, N, D) for the packed real tokens when ``padding`` packs them. ``local_mask`` is the additive sliding-window
    mask (B|1, 1, T, T) over the padded layout (padding keys masked too), built where a layer attends over it; None
    where every layer attends per sequence or no layer is local.
    """

    tables: dict[float, tuple[Tensor, Tensor]]
    local_mask: Tensor | None

    @classmethod
    def build(cls, positions: Tensor, thetas: Iterable[float], head_dim: int, padding: Padding, dtype: torch.dtype,
              half_window: int | None, padded_layout: bool) -> Rotary:
        """The tables for ``positions`` (B, T) at each of ``thetas``; the local mask keeps keys within
        ``half_window`` tokens of the query (None: no local layer), when ``padded_layout`` says a layer attends over
        the padded batch."""
        positions = positions.float()
        tables = {}
        for theta in dict.fromkeys(thetas):
            freqs = positions[..., None] * inverse_frequencies(theta, head_dim).to(positions.device)  # (B, T, D/2)
            angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
            tables[theta] = (padding.pack(angles.cos().to(dtype)), padding.pack(angles.sin().to(dtype)))
        local_mask = None
        if half_window is not None and padded_layout:
            T = positions.shape[-1]
            index = torch.arange(T, device=positions.device)
            outside = (index[:, None] - index[None, :]).abs() > half_window  # (T, T)
            base = padding.mask if padding.mask is not None else torch.zeros(1, 1, 1, T, dtype=dtype,
                                                                               device=positions.device)
            local_mask = base.masked_fill(outside, torch.finfo(dtype).min)  # (B|1, 1, T, T)
        return cls(tables, local_mask)


def attend_windowed(q: Tensor, k: Tensor, v: Tensor, lengths: tuple[int, ...], num_heads: int, dropout_p: float,
                    half_window: int, prefix: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Packed (1, N, C) q, k, v -> (1, N, C): SDPA over each row's run of real tokens, each query attending to the
    keys at most ``half_window`` tokens away and to every prefix key and value (B, H, P, D) of its row.

    A row no longer than ``half_window + 1`` tokens needs no mask; models/layers.attend_per_sequence is this
    function's global-attention twin.
    """
    outputs = []
    for row, run in enumerate(zip(*(t.split(lengths, dim=1) for t in (q, k, v)), strict=True)):
        q_row, k_row, v_row = (split_heads(t, num_heads) for t in run)  # (1, H, T_row, D)
        T_row = q_row.shape[2]
        mask = None
        if T_row > half_window + 1:
            index = torch.arange(T_row, device=q.device)
            mask = (index[:, None] - index[None, :]).abs() <= half_window  # (T_row, T_row), True: attended
        if prefix is not None:
            k_row, v_row = (torch.cat([p[row:row + 1], t], dim=2) for p, t in zip(prefix, (k_row, v_row), strict=True))
            if mask is not None:  # prefix positions are always attendable
                mask = torch.cat([mask.new_ones(T_row, k_row.shape[2] - T_row), mask], dim=1)
        y = F.scaled_dot_product_attention(q_row, k_row, v_row, attn_mask=mask, dropout_p=dropout_p)
        outputs.append(merge_heads(y))
    return torch.cat(outputs, dim=1)


__all__ = ["Rotary", "attend_windowed", "inverse_frequencies", "rotate"]
