"""The bit-mask dropout (models/dropout.py): the same Bernoulli law, scaling and eval identity as ``F.dropout``.

The statistics use a fixed seed, so each test is deterministic; their bounds (5 standard deviations, chi-square 24
with one degree of freedom: p < 1e-6) fail a biased or correlated mask source, e.g. a byte-quantised threshold (ties
with the threshold's top byte left unresolved) or bytes of a 64-bit draw that depend on each other.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from peftcore.models import dropout as module
from peftcore.models.dropout import Dropout, drop_threshold, dropout, dropout_all
from tests.archs import TEXT_ARCHS, tiny_model

CHI2_LIMIT = 24.0  # one degree of freedom: exceeded with probability below 1e-6 by independent masks


@pytest.mark.parametrize("p", [0.0, 1e-6, 0.1, 26.5 / 256, 0.5, 0.9, 1 - 1e-6])
def test_the_threshold_drops_with_probability_p_to_within_two_to_the_minus_33(p):
    top, low = drop_threshold(p)
    assert 0 <= low < 2**24 and abs((top * 2**24 + low) / 2**32 - p) <= 2**-33


@pytest.mark.parametrize("p", [26.5 / 256, 0.5 / 256, 255.5 / 256])
def test_the_drop_rate_is_p_and_not_a_byte_quantised_p(p):
    """p halfway between two byte levels, so half the ties with its top byte must be dropped; at the low and the
    high end too."""
    n = 2**22
    torch.manual_seed(0)
    rate = (dropout(torch.ones(n), p) == 0).double().mean().item()
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(rate - p) < 5 * sd
    assert min(abs(rate - math.floor(p * 256) / 256), abs(rate - math.ceil(p * 256) / 256)) > 10 * sd


@pytest.mark.parametrize(("p", "rate"), [(1 - 1e-12, 1.0), (1 - 2**-34, 1.0), (1e-12, 0.0), (2**-34, 0.0)])
def test_p_within_two_to_the_minus_33_of_one_or_zero_drops_everything_or_nothing(p, rate):
    """round(p · 2³²) = 2³² has no top byte: every U falls below it, so every element is dropped."""
    x = torch.ones(4096, requires_grad=True)
    y = dropout(x, p)
    y.sum().backward()
    assert (y == 0).double().mean().item() == rate and torch.equal(x.grad == 0, y == 0)


def chi2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson's chi-square of the 2x2 table of two boolean samples, against independence."""
    n = a.numel()
    observed = torch.stack([(a & b).sum(), (a & ~b).sum(), (~a & b).sum(), (~a & ~b).sum()]).double()
    pa, pb = a.double().mean(), b.double().mean()
    expected = n * torch.stack([pa * pb, pa * (1 - pb), (1 - pa) * pb, (1 - pa) * (1 - pb)])
    return ((observed - expected) ** 2 / expected).sum().item()


def test_masks_are_independent_between_elements_and_between_draws():
    """Bytes that share a 64-bit draw (elements 8i + j and 8i + j + 1), neighbours across draws (8i + 7, 8i + 8),
    far elements, and the same element in two calls."""
    torch.manual_seed(0)
    x = torch.ones(256, 4097)  # odd width: rows start at every byte of a draw
    first, second = (dropout(x, 0.3) == 0 for _ in range(2))
    flat = first.flatten()[:256 * 4096]
    for byte in range(7):
        assert chi2(flat[byte::8], flat[byte + 1::8]) < CHI2_LIMIT
    assert chi2(flat[7:-8:8], flat[8::8]) < CHI2_LIMIT
    assert chi2(first[:, :2048], first[:, 2048:4096]) < CHI2_LIMIT
    assert chi2(first, second) < CHI2_LIMIT


def test_kept_elements_are_scaled_and_gradients_follow_the_mask():
    x = torch.randn(64, 33, dtype=torch.float64, requires_grad=True)
    y = dropout(x, 0.25)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75, rtol=0, atol=1e-15)
    y.sum().backward()
    assert torch.equal(x.grad, kept.double() / 0.75)


def test_the_backward_pass_keeps_one_byte_per_element():
    """The keep mask is saved as uint8, not as a float mask (attention's probabilities are B·H·T² elements)."""
    x = torch.randn(1000, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        dropout(x, 0.1)
    assert [(t.dtype, t.numel()) for t in saved] == [(torch.uint8, 1000)]


def test_dropout_all_drops_each_tensor_from_one_mask():
    """Per-sequence attention drops every row's probabilities from one draw: each tensor keeps its shape, and the
    elements of all of them follow the same law."""
    torch.manual_seed(0)
    tensors = [torch.ones(300, 200), torch.ones(7), torch.ones(2, 3, 4)]
    dropped = dropout_all(tensors, 0.25)
    assert [d.shape for d in dropped] == [t.shape for t in tensors]
    values = torch.cat([d.flatten() for d in dropped])
    assert torch.equal(values.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs((values == 0).double().mean().item() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / values.numel())
    assert all(torch.equal(d, torch.zeros_like(d)) for d in dropout_all(tensors, 1.0))


def test_eval_and_p_zero_are_the_identity():
    x = torch.randn(4, 5)
    layer = Dropout(0.5).eval()
    assert layer(x) is x and dropout(x, 0.0) is x and dropout(x, 0.5, training=False) is x


def test_cuda_and_other_devices_keep_torchs_dropout(monkeypatch):
    """The branch CUDA takes, run where it can be here: the meta device."""
    calls = []
    monkeypatch.setattr(module.F, "dropout", lambda x, p, training, **kw: calls.append(x.device.type) or x)
    dropout(torch.empty(3, 4, device="meta"), 0.1)
    assert calls == ["meta"]
    assert module.uses_bit_mask(torch.empty(1, device="meta")) is False


def test_compiled_graphs_draw_our_mask_once_per_dropout_and_keep_it_for_the_backward(monkeypatch):
    """Under torch.compile the mask is an opaque op (inductor's own random numbers cost a CPU step more than the
    rest of dropout): two dropouts of one size in a graph draw two masks (not merged as common subexpressions), and
    the backward pass scales by the forward's mask (not a redrawn one)."""
    draws = []
    keep_mask = module.keep_mask
    monkeypatch.setattr(module, "keep_mask", lambda *args: draws.append(args) or keep_mask(*args))

    def two_dropouts(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return dropout(x, 0.25) * 3.0 + dropout(y, 0.25)

    torch.manual_seed(0)
    x, y = (torch.ones(64, 1024, requires_grad=True) for _ in range(2))
    out = torch.compile(two_dropouts, fullgraph=True)(x, y)
    out.sum().backward()
    assert len(draws) == 2
    kept_x, kept_y = x.grad != 0, y.grad != 0
    assert torch.equal(x.grad, kept_x / 0.75 * 3.0) and torch.equal(y.grad, kept_y / 0.75)
    torch.testing.assert_close(out, kept_x / 0.75 * 3.0 + kept_y / 0.75)
    assert chi2(kept_x.flatten(), kept_y.flatten()) < CHI2_LIMIT
    sd = math.sqrt(0.25 * 0.75 / x.numel())
    assert abs((~kept_x).double().mean().item() - 0.25) < 5 * sd


def test_f_dropout_and_ours_agree_in_law():
    """Same mean and second moment as torch's dropout over many elements (the scaling 1/(1-p) included)."""
    torch.manual_seed(1)
    x = torch.ones(2**20)
    ours, theirs = dropout(x, 0.2), F.dropout(x, 0.2)
    sd = math.sqrt(0.2 / 0.8 / x.numel())  # of the mean of Bernoulli(0.8)/0.8
    assert abs(ours.mean().item() - 1) < 5 * sd and abs(theirs.mean().item() - 1) < 5 * sd


@pytest.mark.parametrize("arch", TEXT_ARCHS)
def test_every_model_drops_out_with_ours(arch):
    model = tiny_model(arch)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(isinstance(m, Dropout) for m in dropouts)
