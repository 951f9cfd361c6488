"""Attention over packed rows (models/attention.py): every strategy equals masked attention over the padded batch,
and the chooser follows its cost model."""

from __future__ import annotations

import pytest
import torch

from peftcore.models import attention
from peftcore.models import dropout as dropout_module
from peftcore.models.attention import STRATEGIES, attend_unpadded, choose, merge_heads, sdpa, split_heads
from peftcore.models.layers import additive_mask
from tests.parity import assert_parity


def padded_reference(q, k, v, lengths, num_heads, prefix):
    """Masked SDPA over the rows padded to the longest, at the real tokens: the padded path's attention."""
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    index = mask.flatten().nonzero().squeeze(1)

    def pad(t):
        flat = t.new_zeros(mask.numel(), t.shape[-1]).index_copy(0, index, t[0])
        return split_heads(flat.unflatten(0, mask.shape), num_heads)

    q, k, v = pad(q), pad(k), pad(v)
    additive = additive_mask(mask, q.dtype)
    if prefix is not None:
        k, v = (torch.cat([p, t], dim=2) for p, t in zip(prefix, (k, v), strict=True))
        additive = torch.cat([additive.new_zeros(len(lengths), 1, 1, prefix[0].shape[2]), additive], dim=-1)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=additive)
    return merge_heads(y).flatten(0, 1)[index][None]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("with_prefix", [False, True], ids=["no prefix", "prefix"])
def test_every_strategy_equals_masked_attention_over_the_padded_rows(strategy, with_prefix):
    torch.manual_seed(0)
    lengths, heads = (5, 0, 1, 7), 2  # an empty row and a one-token row
    q, k, v = (torch.randn(1, sum(lengths), 8, requires_grad=True) for _ in range(3))
    prefix = tuple(torch.randn(len(lengths), heads, 3, 4) for _ in range(2)) if with_prefix else None
    got = attend_unpadded(q, k, v, lengths, heads, 0.0, prefix, strategy=strategy)
    expected = padded_reference(q, k, v, lengths, heads, prefix)
    assert_parity(got, expected)
    weights = torch.randn(got.shape)
    grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    for grad, reference in zip(grads, torch.autograd.grad((expected * weights).sum(), (q, k, v)), strict=True):
        assert_parity(grad, reference)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_drops_attention_out_in_training(strategy):
    lengths = (4, 6)
    q, k, v = (torch.randn(1, 10, 8) for _ in range(3))
    first, second = (attend_unpadded(q, k, v, lengths, 2, 0.5, strategy=strategy) for _ in range(2))
    assert torch.isfinite(first).all() and not torch.equal(first, second)


def keep(monkeypatch, kept: int) -> None:
    """Make the bit-mask dropout keep every element (1) or none (0), so its outputs are known."""
    monkeypatch.setattr(dropout_module, "keep_mask",
                        lambda shape, p, device: torch.full(shape, kept, dtype=torch.uint8))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("with_prefix", [False, True], ids=["no prefix", "prefix"])
def test_dropout_scales_the_kept_probabilities_in_every_strategy(strategy, with_prefix, monkeypatch):
    """At p = 0.5 with every element kept, attention is twice attention without dropout (the probabilities scaled
    by 1/(1-p)); with none kept, zero. The mask's law is tests/models/test_dropout.py's."""
    torch.manual_seed(0)
    lengths, heads = (5, 1, 7, 3), 2
    q, k, v = (torch.randn(1, sum(lengths), 8) for _ in range(3))
    prefix = tuple(torch.randn(len(lengths), heads, 3, 4) for _ in range(2)) if with_prefix else None
    expected = padded_reference(q, k, v, lengths, heads, prefix)
    for kept, factor in ((1, 2.0), (0, 0.0)):
        keep(monkeypatch, kept)
        assert_parity(attend_unpadded(q, k, v, lengths, heads, 0.5, prefix, strategy=strategy), factor * expected)


@pytest.mark.parametrize("mask", ["none", "additive", "boolean"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_sdpa_with_dropout_on_cpu_is_softmax_attention_of_the_kept_probabilities(mask, scale, monkeypatch):
    """torch's CPU SDPA has no dropout kernel; ``sdpa`` computes it explicitly, for each kind of mask SDPA takes."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    attend = torch.rand(2, 1, 5, 5) > 0.3
    attend[..., 0] = True  # no row fully masked
    attn_mask = {"none": None, "additive": torch.randn(2, 1, 5, 5), "boolean": attend}[mask]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    keep(monkeypatch, 1)
    assert_parity(sdpa(q, k, v, attn_mask, 0.2, scale), expected / 0.8)
    assert_parity(sdpa(q, k, v, attn_mask, 0.0, scale), expected)


def test_sdpa_with_dropout_off_cpu_is_torchs(monkeypatch):
    """The branch CUDA takes, run where it can be here: the meta device."""
    calls = []
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda q, k, v, **kwargs: calls.append((q.device.type, kwargs["dropout_p"])) or q)
    sdpa(*(torch.empty(1, 2, 3, 4, device="meta") for _ in range(3)), dropout_p=0.1)
    assert calls == [("meta", 0.1)]


def test_compiled_sdpa_with_dropout_on_cpu_drops_the_probabilities_itself():
    """Compiled on CPU too, with our mask: each output row is a rescaled mix of v's rows under the kept
    probabilities, and the gradients follow the forward's mask (v's gradient is the dropped probabilities' column
    sums)."""
    torch.manual_seed(0)
    q, k = (torch.randn(2, 3, 16, 4) for _ in range(2))
    v = torch.eye(16).expand(2, 3, 16, 16).clone().requires_grad_()  # v = I: the output is the dropped probabilities
    dropped = torch.compile(lambda v: sdpa(q, k, v, dropout_p=0.5), fullgraph=True)(v)
    probs = attention.attention_probs(q, k)
    kept = dropped != 0
    torch.testing.assert_close(dropped, probs * kept / 0.5)
    assert 0.4 < kept.double().mean().item() < 0.6
    dropped.sum().backward()
    torch.testing.assert_close(v.grad, dropped.detach().sum(dim=-2)[..., None].expand(-1, -1, -1, 16))


@pytest.mark.parametrize(("lengths", "prefix_length", "width", "expected"), [
    ((128, 96, 120, 110, 100, 127, 90, 115), 0, 768, "per_sequence"),  # few long rows: no scores for padding
    ((3, 8, 5, 7, 4, 6, 8, 2) * 4, 0, 384, "padded"),  # many short rows: one call
    ((1,) * 31 + (128,), 0, 384, "block_diagonal"),  # many short rows beside a long one
])
def test_the_chooser_follows_the_cost_model(lengths, prefix_length, width, expected):
    assert choose(lengths, prefix_length, width) == expected
    costs = attention.costs(lengths, prefix_length, width)
    assert min(costs, key=costs.__getitem__) == expected
