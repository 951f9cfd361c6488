"""Invertible adapters (NICE, GLOW): placement, the coupling equations on tensors, exact invertibility, AdapterHub's
NICE block on the same weights, and the MAD-X language-model path (embeddings forward, decoder inverse).
Whole-model parity with AdapterHub is in tests/peftcore/interop/test_adapterhub.py."""

from __future__ import annotations

import pytest
import torch
from adapters.methods.modeling import GLOWCouplingBlock, NICECouplingBlock

from peftcore import BnConfig, DoubleSeqBnInvConfig, SeqBnConfig, SeqBnInvConfig
from peftcore.methods.invertible import GLOWCoupling, NICECoupling
from peftcore.models import BertConfig, BertModel
from tests.archs import tiny_model

GLOW = SeqBnConfig(inv_adapter="glow", inv_adapter_reduction_factor=2)
COUPLINGS = {"nice": (NICECoupling, SeqBnInvConfig()), "glow": (GLOWCoupling, GLOW)}


@pytest.mark.parametrize(("coupling", "config", "layer", "expected"), [
    (NICECoupling, SeqBnInvConfig(), None, ("embeddings",)),
    (NICECoupling, DoubleSeqBnInvConfig(), None, ("embeddings",)),
    (NICECoupling, SeqBnInvConfig(), 0, ()),  # layers are the bottleneck's
    (NICECoupling, SeqBnInvConfig(leave_out=(0, 1)), None, ("embeddings",)),  # leave_out counts layers only
    (NICECoupling, SeqBnConfig(), None, ()),
    (NICECoupling, GLOW, None, ()),
    (GLOWCoupling, GLOW, None, ("embeddings",)),
    (GLOWCoupling, SeqBnInvConfig(), None, ()),
    (GLOWCoupling, GLOW, 1, ()),
])
def test_coupling_sites_follow_inv_adapter(coupling, config, layer, expected):
    assert coupling.sites(config, layer) == expected


def make(kind: str, hidden_size: int, scale: float = 0.2, seed: int = 0):
    """A coupling whose weights are far from their N(0, 0.02) start (10x), so that it is far from the identity; far
    larger weights make the GLOW scales exp(±5) and fp32 round-off, not the algebra, dominates the round trip."""
    coupling, config = COUPLINGS[kind]
    torch.manual_seed(seed)
    module = coupling(config, hidden_size).eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * scale)
    return module


@pytest.mark.parametrize("hidden_size", [64, 33])  # odd: the halves differ in width
@pytest.mark.parametrize("kind", COUPLINGS)
def test_coupling_inverse_undoes_forward_and_forward_undoes_inverse(kind, hidden_size):
    module = make(kind, hidden_size)
    x = torch.randn(3, 7, hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = module(x)
        assert (y - x).abs().max() > 0.1  # far from the identity
        torch.testing.assert_close(module.inverse(y), x, rtol=0, atol=1e-5)
        torch.testing.assert_close(module(module.inverse(x)), x, rtol=0, atol=1e-5)


def test_nice_computes_additive_coupling():
    """y1 = x1 + F(x2); y2 = x2 + G(y1)."""
    module = make("nice", 33)
    x = torch.randn(2, 5, 33)
    x1, x2 = x[..., :16], x[..., 16:]
    with torch.no_grad():
        y1 = x1 + module.F(x2)
        torch.testing.assert_close(module(x), torch.cat((y1, x2 + module.G(y1)), -1), rtol=0, atol=0)


def test_glow_computes_affine_coupling_with_soft_clamped_scales():
    """y1 = e(s2(x2)) ⊙ x1 + t2(x2); y2 = e(s1(y1)) ⊙ x2 + t1(y1); e(s) = exp(5 · 0.636 · atan(s / 5))."""
    module = make("glow", 32, scale=2.0)
    x = torch.randn(2, 5, 32)
    x1, x2 = x[..., :16], x[..., 16:]

    def e(s):
        return torch.exp(5 * 0.636 * torch.atan(s / 5))

    with torch.no_grad():
        s2, t2 = module.s2(x2).chunk(2, -1)
        y1 = e(s2) * x1 + t2
        s1, t1 = module.s1(y1).chunk(2, -1)
        torch.testing.assert_close(module(x), torch.cat((y1, e(s1) * x2 + t1), -1), rtol=0, atol=0)
        assert s2.abs().max() > 5  # the clamp is in play
        assert e(s2).max() <= torch.exp(torch.tensor(5 * 0.636 * torch.pi / 2))


@pytest.mark.parametrize("non_linearity", ["relu", "tanh"])
def test_nice_equals_adapterhubs_nice_block_both_ways_on_the_same_weights(non_linearity):
    config = SeqBnInvConfig(non_linearity=non_linearity, inv_adapter_reduction_factor=4)
    theirs = NICECouplingBlock([[64]], non_linearity=non_linearity, reduction_factor=4)
    ours = NICECoupling(config, 64)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.normal_(0.0, 0.3)
    ours.load_state_dict(theirs.state_dict())  # same module names: F.0, F.2, G.0, G.2
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.inverse(x), theirs(x, rev=True), rtol=0, atol=1e-6)


def test_adapterhubs_glow_block_has_our_parameters_but_crashes_on_a_sequence():
    """AdapterHub 1.3.0's GLOW forward slices the sequence axis (reference/adapterhub.md §5.5): our layout loads
    its weights, its forward raises. If they fix it, this test fails and GLOW gets a parity test."""
    theirs = GLOWCouplingBlock([[64]], non_linearity="relu", reduction_factor=2)
    ours = GLOWCoupling(GLOW, 64)
    ours.load_state_dict(theirs.state_dict())
    with pytest.raises(RuntimeError):
        theirs(torch.randn(3, 7, 64))


def test_coupling_subnets_start_from_bert_init():
    """AdapterHub applies init_bert_weights to the block: N(0, 0.02) weights, zero biases."""
    torch.manual_seed(0)
    module = NICECoupling(BnConfig(mh_adapter=False, output_adapter=False, reduction_factor=16,
                                   non_linearity="relu", inv_adapter="nice", inv_adapter_reduction_factor=2), 768)
    for net in (module.F, module.G):
        for linear in (net[0], net[2]):
            assert 0.018 < linear.weight.std() < 0.022 and not linear.bias.any()
        assert net[0].out_features == 384 // 2


# ---- the MAD-X path through a model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def masked_lm():
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=48, head="masked_lm", add_pooling_layer=False)).eval()


@pytest.mark.parametrize("kind", COUPLINGS)
def test_invertible_adapter_transforms_the_embedding_output_and_the_lm_head_decodes_through_its_inverse(masked_lm,
                                                                                                         kind):
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    masked_lm.add_adapter("lang", COUPLINGS[kind][1], set_active=True)
    try:
        coupling = masked_lm.get_adapter("lang")[-1]["invertible"]
        with torch.no_grad():
            for parameter in coupling.parameters():
                parameter.normal_(0.0, 0.3)
            out = masked_lm(input_ids=ids, output_hidden_states=True)
            masked_lm.set_active_adapters(None)
            plain = masked_lm(input_ids=ids, output_hidden_states=True)
        head = masked_lm.head
        with torch.no_grad():
            torch.testing.assert_close(out.hidden_states[0], coupling(plain.hidden_states[0]), rtol=0, atol=1e-6)
            expected = head.decoder(coupling.inverse(head.transform(out.last_hidden_state)))
            torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-6)
            assert (out.logits - head.decoder(head.transform(out.last_hidden_state))).abs().max() > 1e-3
    finally:
        masked_lm.set_active_adapters(None)
        masked_lm.delete_adapter("lang")


def test_hooks_on_an_invertible_adapter_see_the_coupling_and_its_inverse_before_an_lm_head():
    """The site calls the module for both (AdapterHub's ``forward(x, rev=True)``), so hooks fire twice."""
    model = tiny_model()
    model.add_adapter("lang", "seq_bn_inv")
    model.add_masked_lm_head("lang")
    model.set_active_adapters("lang")
    calls = []
    model.invertible_adapters["lang"].register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs),
                                                                with_kwargs=True)
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert calls == [{}, {"rev": True}]
