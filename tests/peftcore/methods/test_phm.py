"""Compacter (PHM layers): AdapterHub's numbers and parameter counts, its key layout both ways, the Kronecker
weight, the init options AdapterHub ignores, and clear errors."""

from __future__ import annotations

import math
import warnings

import adapters
import pytest
import torch
import transformers as tf
from adapters.methods.modeling import PHMLayer

from peftcore import ADAPTER_CONFIG_MAP, BnConfig, CompacterConfig, CompacterPlusPlusConfig, ConfigUnion, SeqBnConfig
from peftcore.methods.phm import PHMLinear, PHMShared
from peftcore.models import BertModel, RobertaModel
from tests.archs import ARCHS, BERT_FAMILY, reference, tiny_model
from tests.conftest import SMALL
from tests.parity import assert_parity, padded_batch, real_tokens

# bert-base / roberta-base shapes: hidden 768, 12 layers
COUNT_CONFIGS = [
    "compacter",
    "compacter++",
    "compacter[shared_phm_rule=False]",
    "compacter[factorized_phm_rule=True]",
    "compacter++[shared_phm_rule=False, factorized_phm_rule=True]",
    "compacter[factorized_phm_W=False]",
    "compacter[phm_rank=2]",
    "compacter++[phm_bias=False]",
    "compacter[shared_W_phm=True]",
    "compacter++[shared_W_phm=True, shared_phm_rule=False, phm_rank=3]",
    "compacter[phm_dim=8, reduction_factor=16, leave_out=[0, 11]]",
    "seq_bn[phm_layer=True, ln_before=True, use_gating=True]",
]
# tiny models (hidden 64): reduction 8 or 16 keeps the width divisible by phm_dim. The default shared rule,
# N(0, 1e-4), barely moves in 3 steps; a uniform or wider rule makes the adapter change the outputs visibly.
PARITY_CONFIGS = [
    "compacter[reduction_factor=8, phm_c_init='uniform']",
    "compacter++[reduction_factor=8, shared_phm_rule=False, factorized_phm_rule=True]",
    "compacter[reduction_factor=16, factorized_phm_W=False, phm_bias=False, phm_init_range=0.1]",
    "compacter++[reduction_factor=8, shared_W_phm=True, phm_rank=2, phm_c_init='uniform']",
    "double_seq_bn[phm_layer=True, reduction_factor=8, phm_dim=2, ln_before=True, phm_init_range=0.1]",
]


def run(model, ids, mask):
    return real_tokens(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


# ---- parameter counts on base-size shapes -----------------------------------------------------------------


@pytest.fixture(scope="module", params=BERT_FAMILY)
def base_size_pair(request):
    """(ours, AdapterHub's) at bert-base / roberta-base shapes, random init; adapters come and go per test."""
    arch = ARCHS[request.param]
    torch.manual_seed(0)
    theirs = arch.hf[None](arch.hf_config("base"))
    adapters.init(theirs)
    return arch.model(arch.config("base")), theirs


@pytest.mark.parametrize("config", COUNT_CONFIGS)
def test_parameter_count_equals_adapterhub_at_base_size(base_size_pair, config):
    ours, theirs = base_size_pair
    ours.add_adapter("a", config)
    theirs.add_adapter("a", config=config)
    try:
        assert ours.adapter_summary(as_dict=True)[0]["#param"] == theirs.adapter_summary(as_dict=True)[0]["#param"]
    finally:
        ours.delete_adapter("a")
        theirs.delete_adapter("a")


# ---- parity with adapters trained and saved by AdapterHub ------------------------------------------------------


@pytest.fixture
def trained_in_adapterhub(hf_checkpoint, tmp_path):
    """trained_in_adapterhub(arch, config) -> (checkpoint dir, AdapterHub model, ids, mask), adapter 'a' trained 3
    AdamW steps and saved to tmp_path / "a". It is an AdapterHub *AdapterModel*: saved from a bare transformers model,
    AdapterHub drops the shared parameters (see the test below)."""

    def make(arch: str, config: str):
        directory, reference_model = reference(hf_checkpoint, arch)
        ids, mask = padded_batch(SMALL["vocab_size"], reference_model.config.pad_token_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = ARCHS[arch].adapterhub.from_pretrained(directory)
            theirs.add_adapter("a", config=config)
            theirs.train_adapter("a")
            optimizer = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
            for _ in range(3):
                run(theirs, ids, mask).pow(2).mean().backward()
                optimizer.step()
                optimizer.zero_grad()
            theirs.eval().save_adapter(str(tmp_path / "a"), "a")
        return directory, theirs, ids, mask

    return make


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("config", PARITY_CONFIGS)
def test_compacter_trained_by_adapterhub_gives_its_outputs_and_parameter_count(trained_in_adapterhub, arch, config,
                                                                               tmp_path):
    directory, theirs, ids, mask = trained_in_adapterhub(arch, config)
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    with torch.no_grad():
        plain = run(ours, ids, mask)
        ours.load_adapter(tmp_path / "a", set_active=True)
        expected = run(theirs, ids, mask)
        assert_parity(run(ours, ids, mask), expected)
    assert (expected - plain).abs().max() > 1e-3  # the adapter matters, so parity is not vacuous
    assert ours.adapter_summary(as_dict=True)[0]["#param"] == theirs.adapter_summary(as_dict=True)[0]["#param"]


@pytest.mark.parametrize("config", ["compacter[reduction_factor=8, phm_c_init='uniform']",
                                    "compacter++[reduction_factor=8, shared_W_phm=True, factorized_phm_rule=True]"])
def test_ours_saved_in_adapterhub_layout_loads_in_adapterhub(hf_checkpoint, config, tmp_path):
    directory, _ = reference(hf_checkpoint, "roberta")
    ours = RobertaModel.from_pretrained(directory).eval()
    ours.add_adapter("a", config, set_active=True)
    with torch.no_grad():
        for parameter in ours.adapter_parameters("a"):
            parameter.add_(torch.randn_like(parameter) * 0.1)
    ours.save_adapter(tmp_path / "a", "a", format="adapterhub")
    shared = [key for key in torch.load(tmp_path / "a" / "pytorch_adapter.bin") if "shared_parameters" in key]
    assert shared and all(key.startswith("shared_parameters.a.") for key in shared)
    theirs = tf.RobertaModel.from_pretrained(directory).eval()
    adapters.init(theirs)
    theirs.load_adapter(str(tmp_path / "a"))
    theirs.set_active_adapters("a")
    ids, mask = padded_batch(SMALL["vocab_size"], 1)
    with torch.no_grad():
        assert_parity(run(ours, ids, mask), run(theirs, ids, mask))


def test_adapterhub_drops_the_shared_rule_when_saving_a_bare_model_and_we_refuse_the_file(adapterhub_trained,
                                                                                          tmp_path):
    """AdapterHub's save filter wants '.shared_parameters.a.' with a leading dot (loading.py filter_func), which a
    bare BertModel's keys lack: the rule is not written, and AdapterHub reloads the adapter with a fresh one."""
    directory, theirs, ids, mask = adapterhub_trained("bert", "compacter[reduction_factor=8, phm_c_init='uniform']")
    assert not any("shared_parameters" in key for key in torch.load(tmp_path / "a" / "pytorch_adapter.bin"))
    again = tf.BertModel.from_pretrained(directory).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapters.init(again)
        again.load_adapter(str(tmp_path / "a"))
    again.set_active_adapters("a")
    with torch.no_grad():
        assert (run(again, ids, mask) - run(theirs, ids, mask)).abs().max() > 1e-3
    ours = BertModel.from_pretrained(directory)
    with pytest.raises(ValueError, match=r"missing: shared_parameters\.phm\.phm_rule"):
        ours.load_adapter(tmp_path / "a")
    assert not ours.adapter_configs


def test_our_format_round_trip_keeps_the_shared_parameters_once(tmp_path):
    model = tiny_bert()
    model.add_adapter("a", "compacter[reduction_factor=4, shared_W_phm=True, phm_c_init='uniform']", set_active=True)
    ids = torch.randint(0, 50, (2, 6))
    model.save_adapter(tmp_path / "a", "a")
    shared = sorted(key for key in model.adapter_state("a") if key.startswith("shared_parameters."))
    assert shared == [f"shared_parameters.phm.{name}" for name in
                      ("W_down_left", "W_down_right", "W_up_left", "W_up_right", "phm_rule")]
    again = tiny_bert()
    again.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        assert torch.equal(run(again, ids, None), run(model, ids, None))


# ---- the PHM layer itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize("changes", [{}, {"factorized_phm_rule": True}, {"factorized_phm_W": False, "phm_dim": 2},
                                     {"phm_rank": 3, "phm_bias": False}])
def test_kronecker_weight_is_the_sum_of_torch_kron_and_follows_the_parameters(changes):
    config = CompacterConfig(shared_phm_rule=False, phm_c_init="uniform", **changes)
    layer = PHMLinear(16, 8, config)
    with torch.no_grad():
        rule, weight = layer.rule(), layer.weight_blocks()
        explicit = sum(torch.kron(rule[i], weight[i]) for i in range(config.phm_dim))
        assert layer.kronecker().shape == (16, 8)
        torch.testing.assert_close(layer.kronecker(), explicit, rtol=0, atol=1e-7)
        x = torch.randn(3, 5, 16)
        bias = 0 if layer.b is None else layer.b
        torch.testing.assert_close(layer(x), x @ explicit + bias)
        for parameter in layer.parameters():  # nothing is cached: a changed parameter changes H
            parameter.add_(1.0)
        assert not torch.allclose(layer.kronecker(), explicit)


def test_hypercomplex_nonlinearity_chooses_the_init_of_w_where_adapterhub_always_uses_glorot_normal():
    fan = 128  # W blocks (4, 128, 128): Glorot std sqrt(2 / (128 + 128)), uniform bound sqrt(3) std
    std = math.sqrt(2 / (2 * fan))
    bound = math.sqrt(3) * std

    def drawn(nonlinearity: str) -> torch.Tensor:
        config = CompacterConfig(shared_phm_rule=False, factorized_phm_W=False, hypercomplex_nonlinearity=nonlinearity,
                                 phm_init_range=0.03)
        torch.manual_seed(0)
        return PHMLinear(4 * fan, 4 * fan, config).W.detach()

    uniform, normal, small = drawn("glorot-uniform"), drawn("glorot-normal"), drawn("normal")
    assert uniform.abs().max() <= bound and uniform.std() == pytest.approx(std, rel=0.02)
    assert normal.abs().max() > bound and normal.std() == pytest.approx(std, rel=0.02)
    assert small.std() == pytest.approx(0.03, rel=0.02)
    torch.manual_seed(0)
    their_config = adapters.CompacterConfig(shared_phm_rule=False, factorized_phm_W=False,
                                            hypercomplex_nonlinearity="glorot-uniform")
    theirs = PHMLayer("a", 4 * fan, 4 * fan, "down", their_config).W.detach()
    assert theirs.abs().max() > bound  # AdapterHub: glorot-normal whatever was asked


def test_phm_c_init_and_phm_init_range_draw_the_rule():
    def rule(**changes) -> torch.Tensor:
        config = CompacterConfig(phm_dim=16, reduction_factor=1, **changes)
        return (PHMShared(config, 64, 64).phm_rule if config.shared_phm_rule else
                PHMLinear(64, 64, config).phm_rule).detach()

    assert rule(phm_init_range=0.05).std() == pytest.approx(0.05, rel=0.05)  # shared, normal
    shared_uniform = rule(phm_c_init="uniform")
    assert shared_uniform.abs().max() <= 1 and shared_uniform.abs().max() > 0.9  # shared, U(-1, 1) as AdapterHub
    own_uniform = rule(phm_c_init="uniform", shared_phm_rule=False)
    assert own_uniform.abs().max() <= 0.01 and own_uniform.abs().max() > 0.009  # per layer, U(±0.01) as AdapterHub
    assert rule(shared_phm_rule=False).std() == pytest.approx(0.01, rel=0.05)


def test_init_weights_seed_gives_every_layer_the_same_draw():
    model = tiny_bert()
    model.add_adapter("a", "compacter++[reduction_factor=4, shared_phm_rule=False, init_weights_seed=3]")
    first, second = (model.layers[i].ffn.residual.adapters["a"] for i in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                           strict=True))


# ---- init_weights, learn_phm, errors ----------------------------------------------------------------------------


def tiny_bert() -> BertModel:
    return tiny_model("bert", hidden_size=16, intermediate_size=24, vocab_size=50)


@pytest.mark.parametrize("config", [
    "compacter[reduction_factor=2, init_weights='mam_adapter']",
    "compacter++[reduction_factor=2, init_weights='mam_adapter', shared_W_phm=True]",
    "compacter[reduction_factor=4, init_weights='mam_adapter', factorized_phm_W=False]",
])
def test_mam_adapter_init_starts_as_the_identity_and_still_trains(config):
    model = tiny_bert()
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        plain = run(model, ids, None)
    model.add_adapter("a", config)
    model.train_adapter("a")
    with torch.no_grad():
        assert torch.equal(run(model.eval(), ids, None), plain)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    run(model.train(), ids, None).pow(2).mean().backward()
    optimizer.step()
    with torch.no_grad():
        assert (run(model.eval(), ids, None) - plain).abs().max() > 1e-4


def test_adapterhub_crashes_on_mam_adapter_init_and_on_shared_unfactorized_w():
    model = tf.BertModel(ARCHS["bert"].hf_config())
    adapters.init(model)
    with pytest.raises(AttributeError, match="weight"):
        model.add_adapter("mam", config="compacter[reduction_factor=8, init_weights='mam_adapter']")
    with pytest.raises(NameError, match="_in_feats_per_axis"):
        model.add_adapter("shared", config="compacter[reduction_factor=8, shared_W_phm=True, factorized_phm_W=False]")
    ours = tiny_bert()
    ours.add_adapter("shared", "compacter[reduction_factor=4, shared_W_phm=True, factorized_phm_W=False]")
    assert sorted(ours.shared_parameters["shared"]["phm"].state_dict()) == ["W_down", "W_up", "phm_rule"]


@pytest.mark.parametrize("learn", [True, False])
def test_learn_phm_false_keeps_the_rule_fixed_through_train_adapter(learn):
    model = tiny_bert()
    model.add_adapter("a", f"compacter[reduction_factor=2, learn_phm={learn}, phm_c_init='uniform']")
    rule = model.shared_parameters["a"]["phm"].phm_rule
    assert rule.requires_grad is learn
    before = rule.detach().clone()
    model.train_adapter("a")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        run(model, torch.randint(0, 50, (2, 6)), None).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.equal(rule.detach(), before) is not learn


def test_sizes_not_divisible_by_phm_dim_fail_clearly_and_change_nothing():
    model = tiny_bert()  # hidden 16
    for config, message in [("compacter", "reduction_factor=32 exceeds the width 16"),
                            ("compacter[reduction_factor=16]", "phm_dim=4 does not divide the bottleneck width 1"),
                            ("compacter[reduction_factor=8]", "phm_dim=4 does not divide the bottleneck width 2"),
                            ("compacter[phm_dim=3, reduction_factor=1]", "phm_dim=3 does not divide the hidden size"),
                            ("compacter[phm_dim=3, shared_phm_rule=False, reduction_factor=2]",
                             "phm_dim=3 does not divide the hidden")]:
        with pytest.raises(ValueError, match=message):
            model.add_adapter("a", config)
    assert not model.adapter_configs and not len(model.shared_parameters)
    with pytest.raises(ValueError, match="in_features=10 is not divisible by phm_dim=4"):
        PHMLinear(10, 8, CompacterConfig(shared_phm_rule=False))


@pytest.mark.parametrize(("changes", "message"), [
    ({"phm_c_init": "xavier"}, "phm_c_init='xavier' is not supported"),
    ({"hypercomplex_nonlinearity": "kaiming"}, "hypercomplex_nonlinearity='kaiming' is not supported"),
    ({"phm_dim": 0}, "phm_dim must be a positive int"),
    ({"phm_rank": 1.5}, "phm_rank must be a positive int"),
    ({"phm_init_range": -1.0}, "phm_init_range must be positive"),
    ({"init_weights": "houlsby"}, "init_weights='houlsby'.*phm_layer=True"),
])
def test_invalid_compacter_fields_are_refused_with_the_field_named(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        CompacterConfig(**changes)


def test_compacter_configs_are_adapterhubs_presets():
    assert ADAPTER_CONFIG_MAP["compacter"] == CompacterConfig()
    assert ADAPTER_CONFIG_MAP["compacter++"] == CompacterPlusPlusConfig()
    for ours, theirs in ((CompacterConfig(), adapters.CompacterConfig()),
                         (CompacterPlusPlusConfig(), adapters.CompacterPlusPlusConfig())):
        assert ours.to_dict() == {key: value for key, value in theirs.to_dict().items() if key in ours.to_dict()}
    assert isinstance(BnConfig.from_dict(CompacterConfig().to_dict()), BnConfig)
    assert SeqBnConfig(phm_layer=True).phm_layer  # AdapterHub's field name switches it on for any bottleneck
    with pytest.raises(ValueError, match="two Compacter bottlenecks that share"):
        ConfigUnion(CompacterPlusPlusConfig(), CompacterConfig(output_adapter=False))
    ConfigUnion(CompacterPlusPlusConfig(), CompacterConfig(output_adapter=False, shared_phm_rule=False))
