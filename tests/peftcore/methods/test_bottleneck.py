"""Bottleneck adapters: where a config places them, the math of each placement written out on tensors, widths, and
the identity start of ``init_weights="mam_adapter"``. Parity with AdapterHub on whole models is in
tests/peftcore/interop/test_adapterhub.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peftcore import AdapterPlusConfig, BnConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig, SeqBnInvConfig
from peftcore.configs import parse
from peftcore.methods.bottleneck import Bottleneck
from peftcore.models import BertConfig, BertModel

C = 16  # hidden size of the tensor-level tests


@pytest.mark.parametrize(("config", "layer", "expected"), [
    (SeqBnConfig(), 0, ("ffn.residual",)),
    (DoubleSeqBnConfig(), 1, ("attn.residual", "ffn.residual")),
    (ParBnConfig(), 0, ("ffn.residual",)),
    (BnConfig(mh_adapter=True, output_adapter=False, reduction_factor=16, non_linearity="relu"), 0, ("attn.residual",)),
    (DoubleSeqBnConfig(leave_out=(1,)), 0, ("attn.residual", "ffn.residual")),
    (DoubleSeqBnConfig(leave_out=(1,)), 1, ()),
    (SeqBnConfig(leave_out=(0, 2)), 2, ()),
    (SeqBnInvConfig(), 0, ("ffn.residual",)),
    (SeqBnInvConfig(), None, ()),  # the embeddings belong to the invertible coupling, not the bottleneck
    (BnConfig(mh_adapter=False, output_adapter=False, inv_adapter="nice", inv_adapter_reduction_factor=2,
              reduction_factor=16, non_linearity="relu"), 0, ()),
])
def test_bottleneck_sites_follow_mh_adapter_output_adapter_and_leave_out(config, layer, expected):
    assert Bottleneck.sites(config, layer) == expected


# ---- the math of each placement ---------------------------------------------------------------------------------


def make(config: str, seed: int = 0) -> Bottleneck:
    """A bottleneck with every tensor random (biases, norms and scalings too), so no term can hide."""
    torch.manual_seed(seed)
    module = Bottleneck(parse(config), C, layer=0).eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
    return module


def f(m: Bottleneck, z: torch.Tensor, act=F.relu) -> torch.Tensor:
    """The bottleneck written out: up(act(down(z))), no scaling, gate or norms."""
    return F.linear(act(F.linear(z, m.down.weight, m.down.bias)), m.up.weight, m.up.bias)


def gate(m: Bottleneck, z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(F.linear(z, m.gate.weight, m.gate.bias)).mean(dim=1, keepdim=True)  # (B, 1, 1)


# (config, expected output from h (sub-layer output), x (sub-layer input), LN (the layer's norm), m (the module))
PLACEMENTS = {
    "pfeiffer: LN(h + f(LN(h + x)) + x), the same LN twice":
        ("seq_bn", lambda h, x, LN, m: LN(h + f(m, LN(h + x)) + x)),
    "houlsby: LN(h + f(h) + x)":
        ("double_seq_bn", lambda h, x, LN, m: LN(h + f(m, h, F.silu) + x)),
    "parallel: LN(h + 4 f(x) + x)":
        ("par_bn", lambda h, x, LN, m: LN(h + 4.0 * f(m, x) + x)),
    "scaled parallel: LN(h + s f(x) + x), s learned":
        ("scaled_par_bn", lambda h, x, LN, m: LN(h + m.scaling * f(m, x) + x)),
    "residual after the LN: LN(LN(h + x) + f(LN(h + x)) + x)":
        ("seq_bn[residual_before_ln=False]", lambda h, x, LN, m: LN(LN(h + x) + f(m, LN(h + x)) + x)),
    "residual after the add: LN(h + x + f(LN(h + x)) + x)":
        ("seq_bn[residual_before_ln='post_add']", lambda h, x, LN, m: LN(h + x + f(m, LN(h + x)) + x)),
    "post_add without an add: the residual is h":
        ("double_seq_bn[residual_before_ln='post_add']", lambda h, x, LN, m: LN(h + f(m, h, F.silu) + x)),
    "ln_before and ln_after: LN(LN_a(f(LN_b(h))) + h + x)":
        ("double_seq_bn[ln_before=True, ln_after=True]",
         lambda h, x, LN, m: LN(m.norm_after(f(m, m.norm_before(h), F.silu)) + h + x)),
    "adapter residual before ln_after: LN(LN_a(f(h) + h) + x)":
        ("double_seq_bn[ln_after=True, adapter_residual_before_ln=True]",
         lambda h, x, LN, m: LN(m.norm_after(f(m, h, F.silu) + h) + x)),
    "no original LN after: f(LN(h + x)) + h":
        ("seq_bn[original_ln_after=False]", lambda h, x, LN, m: f(m, LN(h + x)) + h),
    "channel scaling and gate: LN(h + g(z) s ⊙ f(z) + x), z = LN(h + x)":
        ("seq_bn[scaling='channel', use_gating=True]",
         lambda h, x, LN, m: LN(h + gate(m, LN(h + x)) * m.scaling * f(m, LN(h + x)) + x)),
    "gated parallel reads the sub-layer input: LN(h + LN_a(g(x) 0.5 f(x)) + x)":
        ("par_bn[use_gating=True, ln_after=True, scaling=0.5]",
         lambda h, x, LN, m: LN(h + m.norm_after(gate(m, x) * 0.5 * f(m, x)) + x)),
}


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_bottleneck_computes_the_placement_its_config_states(placement):
    config, expected = PLACEMENTS[placement]
    module = make(config)
    torch.manual_seed(1)
    h, x = torch.randn(2, 2, 5, C)
    norm = nn.LayerNorm(C)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
        torch.testing.assert_close(module(h, x, norm), expected(h, x, norm, module), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("reduction_factor", "widths"), [
    (16, (4, 4, 4)),
    ({"0": 4, "default": 16}, (16, 4, 4)),
    ({"1": 2, "default": 8}, (8, 32, 8)),
    (2.5, (25, 25, 25)),  # int(64 // 2.5)
])
def test_bottleneck_width_is_hidden_size_floor_divided_by_the_layers_reduction_factor(reduction_factor, widths):
    config = SeqBnConfig(reduction_factor=reduction_factor)
    assert tuple(Bottleneck(config, 64, layer).down.out_features for layer in range(3)) == widths


def test_a_reduction_factor_that_leaves_no_unit_is_refused():
    """AdapterHub keeps a one-unit bottleneck; a factor above the hidden size is a mistake worth naming."""
    with pytest.raises(ValueError, match=r"SeqBnConfig.reduction_factor=1000 exceeds the width 64"):
        Bottleneck(SeqBnConfig(reduction_factor=1000), 64, 0)


# ---- initialisation ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=48)).eval()
    with torch.no_grad():  # non-trivial norms, so an adapter that skipped or doubled one would show
        for site in model.sites_found:
            if site.name.endswith("residual"):
                site.module.norm.weight.normal_(1.0, 0.2)
                site.module.norm.bias.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("config", [
    "par_bn",
    "scaled_par_bn",
    "seq_bn[init_weights='mam_adapter']",
    "double_seq_bn[init_weights='mam_adapter']",
    "seq_bn[init_weights='mam_adapter', ln_after=True, use_gating=True, scaling='channel']",
    "par_bn[use_gating=True, ln_before=True]",
])
def test_mam_adapter_init_leaves_model_outputs_unchanged(bert, config):
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = bert(input_ids=ids).last_hidden_state
        bert.add_adapter("mam", config, set_active=True)
        try:
            adapted = bert(input_ids=ids).last_hidden_state
            up = [module.up for _, _, _, module in bert.iter_adapters("mam")]
        finally:
            bert.set_active_adapters(None)
            bert.delete_adapter("mam")
    assert torch.equal(adapted, plain)
    assert all(not linear.weight.any() and not linear.bias.any() for linear in up)


@pytest.mark.parametrize("config", ["seq_bn", "double_seq_bn[init_weights='houlsby']"])
def test_bert_and_houlsby_init_change_outputs_from_the_start(bert, config):
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = bert(input_ids=ids).last_hidden_state
        bert.add_adapter("start", config, set_active=True)
        try:
            adapted = bert(input_ids=ids).last_hidden_state
        finally:
            bert.set_active_adapters(None)
            bert.delete_adapter("start")
    assert not torch.equal(adapted, plain)


def test_houlsby_init_draws_truncated_normal_within_two_hundredths():
    torch.manual_seed(0)
    module = Bottleneck(SeqBnConfig(init_weights="houlsby", reduction_factor=2), 256, 0)
    for linear in (module.down, module.up):
        assert linear.weight.abs().max() <= 2e-2 and 0.005 < linear.weight.std() < 0.012
        assert not linear.bias.any()


def test_init_weights_seed_gives_every_layer_the_same_weights_without_reseeding_the_global_rng():
    def build(seed: int) -> tuple[Bottleneck, Bottleneck, torch.Tensor]:
        torch.manual_seed(0)
        config = SeqBnConfig(init_weights_seed=seed)
        return Bottleneck(config, 32, 0), Bottleneck(config, 32, 1), torch.rand(3)

    first, second, after = build(3)
    first_state, second_state = first.state_dict(), second.state_dict()
    assert all(torch.equal(first_state[key], second_state[key]) for key in first_state)
    other, _, after_other_seed = build(4)
    assert not torch.equal(first.down.weight, other.down.weight)
    assert torch.equal(after, after_other_seed)  # AdapterHub calls torch.manual_seed(seed) instead



def test_adapterplus_stochastic_depth_drops_whole_examples_while_training_and_none_in_eval():
    torch.manual_seed(0)
    module = Bottleneck(AdapterPlusConfig(reduction_factor=2, stochastic_depth=0.5), C, 0)
    without_update = copy.deepcopy(module)
    nn.init.zeros_(without_update.up.weight)
    nn.init.zeros_(without_update.up.bias)
    norm = nn.LayerNorm(C)
    h, residual = torch.randn(400, 3, C), torch.randn(400, 3, C)
    with torch.no_grad():
        plain = without_update(h, residual, norm)
        update = module.eval()(h, residual, norm) - plain
        trained = module.train()(h, residual, norm)
    dropped = torch.isclose(trained, plain, atol=1e-6).flatten(1).all(1)
    kept = torch.isclose(trained, plain + update / 0.5, atol=1e-5).flatten(1).all(1)  # scaled by 1 / (1 - p)
    assert bool((dropped ^ kept).all())  # each example whole: dropped or kept
    assert 0.4 < dropped.float().mean() < 0.6
