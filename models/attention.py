"""Attention over a batch packed to its real tokens, and the head reshapes every attention shares.

A packed batch is (1, N, C): each row's real tokens in a run, ``lengths`` of them (models/layers.py ``Padding``).
Three ways give each token softmax attention over its own row's tokens (after the row's prefix keys, if any):

- ``per_sequence``: one SDPA call per row, no mask: no score is computed for padding, but each row pays a call;
- ``block_diagonal``: one SDPA call over all N tokens with a block-diagonal mask: one call, N² scores;
- ``padded``: the rows padded to the longest one, one masked SDPA call: one call, B · max(lengths)² scores.

``attend_unpadded`` picks the cheapest by a cost model whose per-call cost was measured
(``python benchmarks/bench.py --only attention``, docs/performance.md): per-sequence for few long rows,
padded for many short ones of similar lengths, block-diagonal for many short rows beside a long one. All three give
the same numbers (tests/models/test_attention.py). Every attention of the models calls ``sdpa`` below.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from peftcore.models.dropout import dropout, dropout_all, uses_bit_mask

STRATEGIES = ("per_sequence", "block_diagonal", "padded")
CALL_COST = 1_000_000  # one attention call's fixed cost (forward and backward, with its splits, copies and dropout)
# in units of one score times the head width: about 0.3 ms against 0.12 us per score of MiniLM's 12 x 32 heads, fitted
# to the attention table of docs/performance.md (CPU, 2 threads; every choice within 1.02x of the fastest there)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """'B T (H D) -> B H T D' (a view, not unflatten, whose sizes an ONNX trace would freeze)"""
    return x.view(*x.shape[:-1], num_heads, x.shape[-1] // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """'B H T D -> B T (H D)'"""
    return x.transpose(1, 2).flatten(2)


def costs(lengths: tuple[int, ...], prefix_length: int, width: int) -> dict[str, float]:
    """Each strategy's estimated cost for rows of ``lengths`` after ``prefix_length`` prefix keys, heads ``width``
    (H · D) wide: calls times ``CALL_COST`` plus scores times width."""
    rows, tokens, longest = len(lengths), sum(lengths), max(lengths)
    scores = {"per_sequence": sum(n * (prefix_length + n) for n in lengths),
              "block_diagonal": tokens * (rows * prefix_length + tokens),
              "padded": rows * longest * (prefix_length + longest)}
    calls = {"per_sequence": rows, "block_diagonal": 1, "padded": 1}
    return {name: calls[name] * CALL_COST + scores[name] * width for name in STRATEGIES}


def choose(lengths: tuple[int, ...], prefix_length: int, width: int) -> str:
    """The strategy ``costs`` finds cheapest."""
    estimated = costs(lengths, prefix_length, width)
    return min(STRATEGIES, key=estimated.__getitem__)


def attend_unpadded(q: Tensor, k: Tensor, v: Tensor, lengths: tuple[int, ...], num_heads: int, dropout_p: float,
                    prefix: tuple[Tensor, Tensor] | None = None, strategy: str | None = None) -> Tensor:
    """Packed (1, N, C) q, k, v -> (1, N, C): each token's attention over its row's run (``lengths``), after the
    row's prefix keys and values (B, H, P, D) if any, by ``strategy`` (default: ``choose``'s)."""
    strategy = strategy or choose(lengths, 0 if prefix is None else prefix[0].shape[2], q.shape[-1])
    attend = {"per_sequence": attend_per_sequence, "block_diagonal": attend_block_diagonal,
              "padded": attend_padded}[strategy]
    return attend(q, k, v, lengths, num_heads, dropout_p, prefix)


def attend_per_sequence(q: Tensor, k: Tensor, v: Tensor, lengths: tuple[int, ...], num_heads: int,
                        dropout_p: float, prefix: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """SDPA over each row's run of real tokens, unmasked: no score for padding, one call per row. Under the
    bit-mask dropout (``sdpa``), each row's softmax attention explicitly, every row's dropout from one mask
    (``dropout_all``): a mask per row costs a dozen small ops per row."""
    q, k, v = (split_heads(t, num_heads)[0] for t in (q, k, v))  # (H, N, D) views, split by row below: a few ops
    # for all rows rather than each, and 3-D products (at 32 rows a layer, per-row ops cost more than their arithmetic)
    drops = drops_bits(q, dropout_p)
    if drops:
        q = q * (1 / math.sqrt(q.shape[-1]))  # the softmax scale, once for every row
    rows = []
    for row, (q_row, k_row, v_row) in enumerate(zip(*(t.split(lengths, dim=1) for t in (q, k, v)), strict=True)):
        if prefix is not None:
            k_row, v_row = (torch.cat([p[row], t], dim=1) for p, t in zip(prefix, (k_row, v_row), strict=True))
        rows.append((q_row, k_row, v_row))
    if drops:
        # attention_probs without a mask, q already scaled, as bmm: matmul's reshapes around bmm cost 10% here
        probs = dropout_all([torch.bmm(q_row, k_row.transpose(1, 2)).softmax(dim=-1) for q_row, k_row, _ in rows],
                            dropout_p)
        outputs = [torch.bmm(p, v_row) for p, (_, _, v_row) in zip(probs, rows, strict=True)]
    else:
        outputs = [F.scaled_dot_product_attention(q_row[None], k_row[None], v_row[None], dropout_p=dropout_p)[0]
                   for q_row, k_row, v_row in rows]  # 4-D, as CUDA's fused kernels take them
    return merge_heads(torch.cat(outputs, dim=1)[None])


def attend_block_diagonal(q: Tensor, k: Tensor, v: Tensor, lengths: tuple[int, ...], num_heads: int,
                          dropout_p: float, prefix: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """One SDPA call over all N packed tokens, each query masked to its row's keys: (B·P + N) keys."""
    rows = torch.arange(len(lengths), device=q.device)
    query_rows = rows.repeat_interleave(torch.tensor(lengths, device=q.device))  # (N,)
    q, k, v = (split_heads(t, num_heads) for t in (q, k, v))  # (1, H, N, D)
    key_rows = query_rows
    if prefix is not None:  # every row's prefix first: (B, H, P, D) -> (1, H, B·P, D)
        k, v = (torch.cat([p.transpose(0, 1).flatten(1, 2)[None], t], dim=2) for p, t in zip(prefix, (k, v),
                                                                                              strict=True))
        key_rows = torch.cat([rows.repeat_interleave(prefix[0].shape[2]), query_rows])
    mask = query_rows[:, None] == key_rows[None, :]  # (N, B·P + N)
    return merge_heads(sdpa(q, k, v, mask, dropout_p))


def attend_padded(q: Tensor, k: Tensor, v: Tensor, lengths: tuple[int, ...], num_heads: int, dropout_p: float,
                  prefix: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """The rows padded to the longest run (B, max(lengths)), one masked SDPA call, packed back."""
    rows, longest = len(lengths), max(lengths)
    real = torch.arange(longest, device=q.device)[None] < torch.tensor(lengths, device=q.device)[:, None]
    index = real.flatten().nonzero().squeeze(1)  # (N,) positions of the packed tokens in (B, max(lengths))
    q, k, v = (scatter(t, index, rows, longest, num_heads) for t in (q, k, v))
    if prefix is not None:
        k, v = (torch.cat([p, t], dim=2) for p, t in zip(prefix, (k, v), strict=True))
        real = torch.cat([real.new_ones(rows, prefix[0].shape[2]), real], dim=1)
    mask = torch.zeros(real.shape, dtype=q.dtype, device=q.device).masked_fill_(~real, torch.finfo(q.dtype).min)
    y = sdpa(q, k, v, mask[:, None, None], dropout_p)
    return merge_heads(y).flatten(0, 1)[index][None]  # (1, N, C); the finite minimum keeps empty rows finite


def scatter(t: Tensor, index: Tensor, rows: int, length: int, num_heads: int) -> Tensor:
    """Packed (1, N, C) -> (B, H, T, D) of ``rows`` B and ``length`` T: each token at its flat position ``index``
    (N,) in (B, T), zeros elsewhere."""
    flat = t.new_zeros(rows * length, t.shape[-1]).index_copy(0, index, t[0])
    return split_heads(flat.unflatten(0, (rows, length)), num_heads)


def attend_scattered(q: Tensor, k: Tensor, v: Tensor, index: Tensor, mask: Tensor, num_heads: int,
                     dropout_p: float) -> Tensor:
    """Packed (1, N, C) q, k, v -> (1, N, C) by padded attention: scattered to their flat positions ``index`` (N,)
    in the (B, T) of the additive padding ``mask`` (B, 1, 1, T), one masked SDPA call, gathered back. Its sizes
    come from tensors, not Python lengths: a compiled graph traces it once for any lengths (models/compiled.py)."""
    rows, length = mask.shape[0], mask.shape[-1]
    q, k, v = (scatter(t, index, rows, length, num_heads) for t in (q, k, v))
    y = sdpa(q, k, v, mask, dropout_p)
    return merge_heads(y).flatten(0, 1)[index][None]


def drops_bits(x: Tensor, dropout_p: float) -> bool:
    """Whether attention over ``x`` applies its dropout itself, with the bit-mask dropout (dropout on, CPU, eager or
    compiled), rather than inside SDPA."""
    return dropout_p != 0.0 and uses_bit_mask(x)


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0,
         scale: float | None = None) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, mask, dropout_p, scale=scale)``. With dropout on CPU, the explicit
    softmax attention with our bit-mask dropout instead: torch's CPU kernels have no dropout, so SDPA falls back to
    its math path, whose ``bernoulli_`` mask and copies made attention about 20% of a MiniLM train step
    (docs/performance.md); compiled, inductor's random numbers cost more still."""
    if drops_bits(q, dropout_p):
        return attend_explicitly(q, k, v, mask, dropout_p, scale)[0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def attend_explicitly(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float,
                      scale: float | None = None) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ · scale + mask) v, also returning the probabilities that SDPA cannot return."""
    probs = attention_probs(q, k, mask, scale)
    return dropout(probs, dropout_p) @ v, probs


def attention_probs(q: Tensor, k: Tensor, mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale + mask), scale 1/√D by default; ``mask`` additive, or boolean (True: attend) as SDPA
    takes it."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q * scale) @ k.transpose(-1, -2)  # (B, H, T, T); scaling q costs a pass over T·D, not T·T, values
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    elif mask is not None:
        scores = scores + mask
    return scores.softmax(dim=-1)
