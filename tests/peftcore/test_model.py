"""The adapter API every model inherits (peftcore/model.py): adding, deleting and activating adapters, training only
the chosen one, where modules are placed, dtype, the summary table, and a researcher's own model with sites."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from torch import nn

from peftcore import SeqBnConfig
from peftcore.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from peftcore.methods import Bottleneck, NICECoupling
from peftcore.model import AdapterModelMixin
from peftcore.models import attention
from tests import archs
from tests.archs import ARCHS, TEXT_ARCHS, TINY, tiny_model
from tests.parity import assert_parity, padded_batch, real_tokens
from tests.peftcore.test_sites import TinyTransformer


def inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """Three short padded examples, or three images."""
    return archs.inputs(model.config, lengths=(6, 4, 2), seed=1)


def hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return real_tokens(model(**batch).last_hidden_state, batch.get("attention_mask"))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: tensor.clone() for key, tensor in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert not changed, f"changed: {changed}"


# ---- lifecycle ----------------------------------------------------------------------------------------------


def test_add_activate_deactivate_delete():
    model = tiny_model()
    model.add_adapter("a", "seq_bn")
    assert list(model.adapter_configs) == ["a"] and model.active_adapters is None
    assert any(".adapters.a." in key for key in model.state_dict())
    model.set_active_adapters("a")
    assert model.active_adapters == Stack("a")
    model.set_active_adapters(None)
    assert model.active_adapters is None
    model.delete_adapter("a")
    assert model.adapter_configs == {} and list(model.iter_adapters()) == []
    assert not any(".adapters." in key for key in model.state_dict())
    assert all(site.module.plug is None for site in model.sites_found)


def test_add_with_set_active_activates_and_default_config_is_seq_bn():
    model = tiny_model()
    model.add_adapter("a", set_active=True)
    assert model.active_adapters == Stack("a")
    assert model.adapter_configs["a"] == SeqBnConfig()


def test_adding_a_name_twice_needs_overwrite_ok():
    model = tiny_model()
    model.add_adapter("a", "seq_bn")
    with pytest.raises(ValueError, match="'a' exists; pass overwrite_ok=True"):
        model.add_adapter("a", "double_seq_bn")
    assert set(model.get_adapter("a")[0]) == {"output_adapter"}
    model.add_adapter("a", "double_seq_bn", overwrite_ok=True)
    assert set(model.get_adapter("a")[0]) == {"mh_adapter", "output_adapter"}


def test_overwriting_an_active_adapter_runs_the_new_modules():
    model = tiny_model()
    batch, plain = inputs(model), hidden(tiny_model(), inputs(model))
    model.add_adapter("a", "seq_bn", set_active=True)
    assert not torch.equal(hidden(model, batch), plain)
    model.add_adapter("a", "seq_bn", overwrite_ok=True)
    for module in model.get_adapter("a").values():
        nn.init.zeros_(module["output_adapter"].up.weight)
        nn.init.zeros_(module["output_adapter"].up.bias)
    assert model.active_adapters == Stack("a")
    assert torch.equal(hidden(model, batch), plain)  # a zero up-projection is the identity: the old modules are gone


def test_loading_onto_an_existing_name_suggests_load_as(tmp_path):
    model = tiny_model()
    model.add_adapter("a", "seq_bn")
    model.save_adapter(tmp_path / "a", "a")
    with pytest.raises(ValueError, match="already has an adapter 'a'; pass load_as="):
        model.load_adapter(tmp_path / "a")
    assert model.load_adapter(tmp_path / "a", load_as="b") == "b"


@pytest.mark.parametrize("call", [
    lambda model: model.set_active_adapters("missing"),
    lambda model: model.set_active_adapters(["a", "missing"]),
    lambda model: model.delete_adapter("missing"),
    lambda model: model.adapter_state("missing"),
    lambda model: model.train_adapter("missing"),
    lambda model: model.save_adapter("unused", "missing"),
], ids=["set_active", "set_active_list", "delete", "state", "train", "save"])
def test_unknown_adapter_name_lists_the_known_names(call):
    model = tiny_model()
    model.add_adapter("a", "seq_bn")
    model.add_adapter("b", "lora")
    with pytest.raises(KeyError, match=r"no adapter named 'missing'; this model has \['a', 'b'\]"):
        call(model)


@pytest.mark.parametrize("name", ["", "x.y", "x,y", 3])
def test_adapter_names_must_be_plain_strings(name):
    with pytest.raises(ValueError, match="without '.' or ','"):
        tiny_model().add_adapter(name, "seq_bn")


def test_deleting_the_whole_active_setup_leaves_none_active_as_in_adapterhub():
    model = tiny_model()
    batch = inputs(model)
    plain = hidden(model, batch)
    model.add_adapter("a", "seq_bn", set_active=True)
    model.add_classification_head("a")
    model.delete_adapter("a")
    assert model.active_adapters is None and model.active_head is None and "a" not in model.adapter_configs
    assert torch.equal(hidden(model, batch), plain)


def test_deleting_an_adapter_of_a_larger_active_setup_is_refused_and_changes_nothing():
    model = tiny_model()
    batch = inputs(model)
    model.add_adapter("a", "seq_bn")
    model.add_adapter("b", "lora")
    model.set_active_adapters(Stack("a", "b"))
    before, out = snapshot(model), hidden(model, batch)
    with pytest.raises(ValueError, match="'a' is part of the active setup"):
        model.delete_adapter("a")
    assert model.active_adapters == Stack("a", "b") and "a" in model.adapter_configs
    assert_same_state(model, before)
    assert torch.equal(hidden(model, batch), out)


@pytest.mark.parametrize(("setup", "error", "message"), [
    ("missing", KeyError, "no adapter named 'missing'"),
    (["b", "missing"], KeyError, "no adapter named 'missing'"),
    (Fuse("a", "c"), ValueError, r"has no fusion layer"),
    ([3], TypeError, "takes adapter names"),
])
def test_an_invalid_setup_keeps_the_previous_one(setup, error, message):
    model = tiny_model()
    batch = inputs(model)
    model.add_adapter("a", "seq_bn")
    model.add_adapter("b", "seq_bn_inv[mh_adapter=True, output_adapter=False]")
    model.add_adapter("c", "par_bn")
    model.set_active_adapters("b")
    out = hidden(model, batch)
    with pytest.raises(error, match=message):
        model.set_active_adapters(setup)
    assert model.active_adapters == Stack("b")
    assert torch.equal(hidden(model, batch), out)


def test_adapters_at_different_sites_are_active_together():
    model = tiny_model()
    batch, plain = inputs(model), hidden(tiny_model(), inputs(model))
    model.add_adapter("a", "seq_bn")
    model.add_adapter("b", "lora")
    with torch.no_grad():  # LoRA starts as the identity (B = 0)
        for parameter in model.adapter_parameters("b"):
            parameter.normal_(0.0, 0.5)
    model.set_active_adapters(["a", "b"])
    both = hidden(model, batch)
    model.set_active_adapters("a")
    assert not torch.equal(both, hidden(model, batch)) and not torch.equal(both, plain)


def test_skip_layers_runs_no_adapter_in_those_layers_as_adapterdrop():
    model = tiny_model()
    batch, plain = inputs(model), hidden(model, inputs(model))
    for name, leave_out in (("a", []), ("b", [1])):
        model.add_adapter(name, f"seq_bn[leave_out={leave_out}]|lora[leave_out={leave_out}]")
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        for key, parameter in parameters.items():
            if ".adapters.a." in key:
                parameter.normal_(0.0, 0.5)
        for key, parameter in parameters.items():
            if ".adapters.b." in key:
                parameter.copy_(parameters[key.replace(".adapters.b.", ".adapters.a.")])
    model.set_active_adapters("b")
    first_layer_only = hidden(model, batch)
    model.set_active_adapters("a", skip_layers=[1])
    assert model.adapters_config.skip_layers == [1]
    assert_parity(hidden(model, batch), first_layer_only)
    model.set_active_adapters("a", skip_layers=[0, 1])
    assert torch.equal(hidden(model, batch), plain)
    model.set_active_adapters("a")  # the next activation runs every layer again
    assert model.adapters_config.skip_layers is None
    assert not torch.allclose(hidden(model, batch), first_layer_only)


@pytest.mark.parametrize("skip_layers", [[2], [-1], [0.5], [True]])
def test_skip_layers_that_are_not_layer_indices_are_refused_and_change_nothing(skip_layers):
    model = tiny_model()
    model.add_adapter("a", "seq_bn", set_active=True)
    with pytest.raises(ValueError, match="not layer indices of this model"):
        model.set_active_adapters("a", skip_layers=skip_layers)
    assert model.active_adapters == Stack("a") and not model.plan.skip_layers


def test_skipping_layers_of_a_merged_adapter_is_refused():
    model = tiny_model()
    model.add_adapter("a", "lora", set_active=True)
    model.merge_adapter("a")
    with pytest.raises(ValueError, match="merged into the weights of every layer"):
        model.set_active_adapters("a", skip_layers=[0])
    assert not model.plan.skip_layers


# ---- training -----------------------------------------------------------------------------------------------


def test_train_adapter_trains_only_that_adapter_and_its_head():
    model = tiny_model()
    model.add_adapter("a", "double_seq_bn_inv")
    model.add_adapter("b", "seq_bn")
    model.add_classification_head("a", num_labels=3)
    model.add_classification_head("b", num_labels=3)
    model.train_adapter("a")
    assert model.training and model.active_adapters == Stack("a") and model.active_head == "a"
    own = {id(p) for p in model.adapter_parameters("a")} | {id(p) for p in model.heads["a"].parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, p in model.named_parameters() if id(p) in own}
    assert {name.split(".adapters.")[1].split(".")[0] for name in trainable if ".adapters." in name} == {"a"}

    batch = inputs(model)
    before = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # all of them: a frozen one must get no gradient
    labels = torch.tensor([0, 2, 1])
    for _ in range(3):
        out = model(**batch)
        model.heads["a"].loss(out.logits, labels).backward()
        with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
        assert with_grad == trainable
        assert all(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    after = model.state_dict()
    for key, tensor in before.items():
        if any(key.startswith(prefix) for prefix in ("heads.a.",)) or ".adapters.a." in key:
            assert not torch.equal(tensor, after[key]), f"{key} did not train"
        else:
            assert torch.equal(tensor, after[key]), f"{key} changed"


def test_freeze_model_freezes_and_unfreezes_everything():
    model = tiny_model()
    model.add_adapter("a", "seq_bn")
    model.freeze_model(True)
    assert not any(p.requires_grad for p in model.parameters())
    model.freeze_model(False)
    assert all(p.requires_grad for p in model.parameters())


# ---- placement ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "expected"), [
    ("seq_bn", {0: {"output_adapter": 1}, 1: {"output_adapter": 1}}),
    ("double_seq_bn", {0: {"mh_adapter": 1, "output_adapter": 1}, 1: {"mh_adapter": 1, "output_adapter": 1}}),
    ("seq_bn_inv", {-1: {"invertible": 1}, 0: {"output_adapter": 1}, 1: {"output_adapter": 1}}),
    ("seq_bn[leave_out=[0]]", {1: {"output_adapter": 1}}),
    ("lora", {0: {"selfattn": 2}, 1: {"selfattn": 2}}),
    ("lora[intermediate_lora=True, output_lora=True]", {i: {"selfattn": 2, "intermediate": 1, "output": 1}
                                                         for i in (0, 1)}),
    ("compacter[reduction_factor=2]", {-1: {"shared": 1}, 0: {"mh_adapter": 1, "output_adapter": 1},
                   1: {"mh_adapter": 1, "output_adapter": 1}}),
])
def test_get_adapter_maps_layers_to_adapterhubs_locations(config, expected):
    """{layer: {location: module}} as AdapterHub's get_adapter: its location names, several modules at one location
    (LoRA's q and v) in a ModuleList, layer -1 for what sits outside the layers; iter_adapters gives our sites."""
    model = tiny_model()
    model.add_adapter("a", config)
    model.add_adapter("other", "seq_bn")
    layers = model.get_adapter("a")
    assert {layer: {location: len(m) if isinstance(m, nn.ModuleList) else 1 for location, m in at.items()}
            for layer, at in layers.items()} == expected
    found = {id(m) for at in layers.values() for module in at.values()
             for m in (module if isinstance(module, nn.ModuleList) else [module])}
    rows = [(layer, site, module) for name, layer, site, module in model.iter_adapters("a")]
    assert {id(module) for *_, module in rows} <= found
    for layer, site, module in rows:
        assert module is model.get_submodule(f"layers.{layer}.{site}.adapters.a" if layer >= 0 else
                                             "embeddings.site.adapters.a")
    assert {name for name, *_ in model.iter_adapters()} == {"a", "other"}
    assert model.get_adapter("missing") == {}  # as AdapterHub: an adapter the model lacks has no modules


def test_module_types_of_an_invertible_config():
    model = tiny_model()
    model.add_adapter("a", "seq_bn_inv")
    layers = model.get_adapter("a")
    assert isinstance(layers[-1]["invertible"], NICECoupling)
    assert all(isinstance(layers[i]["output_adapter"], Bottleneck) for i in (0, 1))


def test_left_out_layers_hold_no_module():
    model = tiny_model()
    model.add_adapter("a", "double_seq_bn[leave_out=[1]]")
    assert not any(".adapters." in key for key in model.layers[1].state_dict())
    assert any(".adapters." in key for key in model.layers[0].state_dict())


@pytest.mark.parametrize(("config", "message"), [
    ("seq_bn[leave_out=[2]]", r"leave_out holds layer\(s\) \[2\], but the model has 2 layers"),
    ("lora[leave_out=[0, 7]]", r"leave_out holds layer\(s\) \[7\]"),
    ("seq_bn[leave_out=[0, 1]]", "places no module on this model"),
])
def test_leave_out_beyond_the_model_or_of_everything_is_an_error(config, message):
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        model.add_adapter("a", config)
    assert model.adapter_configs == {}
    assert_same_state(model, before)


# ---- outputs and dtype --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("config", ["double_seq_bn_inv", "lora[intermediate_lora=True, output_lora=True]",
                                    "prefix_tuning[prefix_length=3]"])
def test_an_inactive_adapter_leaves_outputs_bit_identical(arch, config):
    model = tiny_model(arch)
    batch = inputs(model)
    plain = hidden(model, batch)
    model.add_adapter("a", config)
    with torch.no_grad():  # lora starts as the identity: make every adapter weight show when active
        for parameter in model.adapter_parameters("a"):
            parameter.normal_(0.0, 0.5)
    assert torch.equal(hidden(model, batch), plain)
    model.set_active_adapters("a")
    assert not torch.equal(hidden(model, batch), plain)
    model.set_active_adapters(None)
    assert torch.equal(hidden(model, batch), plain)


def test_adapters_and_heads_added_after_a_dtype_change_come_in_that_dtype():
    model = tiny_model().to(torch.bfloat16)
    model.add_adapter("a", "double_seq_bn_inv", set_active=True)
    model.add_classification_head("a")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = model(**inputs(model))
    assert out.last_hidden_state.dtype == out.logits.dtype == torch.bfloat16


# ---- summary ------------------------------------------------------------------------------------------------


def test_adapter_summary_rows_and_table():
    model = tiny_model()
    base = sum(p.numel() for p in model.parameters())
    model.add_adapter("a", "seq_bn")
    model.add_adapter("b", "lora")
    model.add_classification_head("a")
    model.train_adapter("a")
    rows = model.adapter_summary(as_dict=True)
    assert [row["name"] for row in rows] == ["a", "b", "Full model"]
    a, b, full = rows
    assert (a["architecture"], a["active"], a["train"]) == ("bottleneck", True, True)
    assert (b["architecture"], b["active"], b["train"]) == ("lora", False, False)
    assert a["#param"] == sum(p.numel() for p in model.adapter_parameters("a")) == 2 * (32 * 2 + 2 + 2 * 32 + 32)
    assert full == {"name": "Full model", "#param": base, "%param": 100.0, "train": False}
    assert a["%param"] == pytest.approx(100 * a["#param"] / base)

    lines = model.adapter_summary().splitlines()
    assert lines[0] == lines[-1] == "=" * 80 and lines[2] == lines[-3] == "-" * 80
    assert lines[1].split() == ["Name", "Architecture", "#Param", "%Param", "Active", "Train"]
    assert [line.split()[0] for line in lines[3:-3]] == ["a", "b"] and lines[-2].startswith("Full model")
    # AdapterHub's row format prints the active and train flags as 1 / 0; ours is the same format
    assert lines[3].split() == ["a", "bottleneck", f"{a['#param']:,}", f"{a['%param']:.3f}", "1", "1"]
    assert all(len(line) == 80 for line in lines)


# ---- a researcher's own model -------------------------------------------------------------------------------


class TinyModelWithAdapters(AdapterModelMixin, TinyTransformer):
    """A model built from peftcore.sites classes (test_sites.TinyTransformer) plus the mixin and a config: done."""

    def __init__(self, width: int = 8, depth: int = 2) -> None:
        super().__init__(width, depth)
        self.config = SimpleNamespace(hidden_size=width, model_type="tiny", layer_norm_eps=1e-5)
        self.init_adapters()


def test_a_custom_model_with_sites_and_the_mixin_takes_adapters():
    torch.manual_seed(0)
    model, ids = TinyModelWithAdapters(), torch.tensor([[1, 2, 3, 4]])
    plain = model(ids)
    model.add_adapter("a", "seq_bn[reduction_factor=2]")
    assert set(model.get_adapter("a")) == {0, 1}
    assert torch.equal(model(ids), plain)
    model.set_active_adapters("a")
    assert not torch.allclose(model(ids), plain)
    with pytest.raises(ValueError, match="give the model's config a num_attention_heads"):
        model.add_adapter("p", "prefix_tuning")  # the one method that needs more than hidden_size


# ---- size on disk -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roberta_base_shaped():
    roberta = ARCHS["roberta"]
    return roberta.model(roberta.config("base"))  # roberta-base's shape: 12 layers of 768


def test_a_saved_seq_bn_adapter_for_roberta_base_is_under_4_mb(roberta_base_shaped, tmp_path):
    model = roberta_base_shaped
    model.add_adapter("a", "seq_bn")
    model.save_adapter(tmp_path / "a", "a")
    size = sum(file.stat().st_size for file in (tmp_path / "a").iterdir())
    assert size < 4 * 2**20, f"{size / 2**20:.2f} MB"
    assert sum(p.numel() for p in model.adapter_parameters("a")) == 12 * (2 * 768 * 48 + 48 + 768)



# ---- unpadded execution -------------------------------------------------------------------------------------------

TOKEN_WISE = ["lora[intermediate_lora=True, output_lora=True]", "ia3", "dora[output_lora=True]", "dvora",
              "seq_bn", "double_seq_bn", "par_bn",
              "scaled_par_bn", "compacter[reduction_factor=4]", "compacter++[reduction_factor=4]", "prefix_tuning",
              "prefix_tuning_flat", "double_seq_bn_inv",
              "mam"]
LENGTHS = (9, 5, 2)


def text_model(arch: str, **adapters: str) -> nn.Module:
    """A tiny model with each option that touches attention or crosses tokens (the "attention" variant) and without
    dropout, each adapter moved off its (often identity) initialisation."""
    model = tiny_model(arch, "attention", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    for name, config in adapters.items():
        model.add_adapter(name, config)
        with torch.no_grad():
            for parameter in model.adapter_parameters(name):
                parameter.add_(torch.randn_like(parameter) * 0.2)
    return model.eval()


def tokens_seen(model: nn.Module) -> list[tuple[int, ...]]:
    """The input shapes the first FFN linear receives from now on, once per forward: (1, N, C) packed, (B, T, C)
    padded. ALBERT runs each of its shared layers several times a forward: the first run counts."""
    shapes: list[tuple[int, ...]] = []
    runs = sum(layer is model.layers[0] for layer, _ in model.layer_schedule())
    calls = itertools.count()

    def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if next(calls) % runs == 0:
            shapes.append(args[0].shape)

    model.layers[0].ffn.intermediate.register_forward_hook(record)
    return shapes


def forward_and_grads(model: nn.Module, batch: dict, unpad: bool) -> tuple:
    model.unpad = unpad
    model.zero_grad()
    out = model(**batch, output_hidden_states=True)
    weights = torch.randn(out.last_hidden_state.shape, generator=torch.Generator().manual_seed(0))
    (real_tokens(out.last_hidden_state, batch["attention_mask"]) * weights).sum().backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", TEXT_ARCHS)
@pytest.mark.parametrize("config", TOKEN_WISE)
def test_a_padded_batch_runs_on_its_real_tokens_with_the_padded_paths_outputs_and_gradients(arch, config):
    check_unpadded_equals_padded(arch, config)


@pytest.mark.parametrize("strategy", attention.STRATEGIES)
@pytest.mark.parametrize("config", ["lora", "prefix_tuning"])
def test_each_attention_strategy_runs_unpadded_as_padded(monkeypatch, strategy, config):
    """The chooser picks one strategy for these lengths; each of them, forced, gives the padded path's numbers."""
    monkeypatch.setattr(attention, "choose", lambda *args: strategy)
    check_unpadded_equals_padded("bert", config)


def check_unpadded_equals_padded(arch: str, config: str) -> None:
    model = text_model(arch, a=config)
    model.train_adapter("a")
    model.eval()
    ids, mask = padded_batch(100, model.config.pad_token_id, LENGTHS)
    batch = {"input_ids": ids, "attention_mask": mask}
    shapes = tokens_seen(model)
    (unpadded, grads), (padded, padded_grads) = (forward_and_grads(model, batch, unpad) for unpad in (True, False))
    assert shapes == [(1, sum(LENGTHS), TINY["hidden_size"]), (*ids.shape, TINY["hidden_size"])]
    assert_parity(unpadded.last_hidden_state, padded.last_hidden_state, mask=mask)
    for mine, theirs in zip(unpadded.hidden_states, padded.hidden_states, strict=True):
        assert_parity(mine, theirs, mask=mask)
    assert not unpadded.last_hidden_state[mask == 0].any()
    assert grads.keys() == padded_grads.keys() and grads
    for name, grad in grads.items():
        assert_parity(grad, padded_grads[name], atol=1e-5 * max(1.0, padded_grads[name].abs().max().item()))


def both_layouts(arch: str, adapters: dict[str, str], setup, **kwargs) -> tuple:
    """A padded batch run under ``setup`` with ``unpad`` on, then off: the model, both outputs, the input shapes
    its first FFN linear saw, and the attention mask."""
    model = text_model(arch, **adapters)
    if isinstance(setup, Fuse):
        model.add_adapter_fusion(setup)
    model.set_active_adapters(setup)
    ids, mask = padded_batch(100, model.config.pad_token_id, LENGTHS)
    shapes = tokens_seen(model)
    outputs = []
    with torch.no_grad():
        for unpad in (True, False):
            model.unpad = unpad
            outputs.append(model(input_ids=ids, attention_mask=mask, **kwargs))
    model.unpad = True
    return model, outputs, shapes, mask


@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
@pytest.mark.parametrize("setup", [Stack("a", "b"), Fuse("a", "b"), Average("a", "b", weights=[0.3, 0.7])],
                         ids=repr)
def test_token_wise_compositions_run_unpadded_too(arch, setup):
    _, (unpadded, padded), shapes, mask = both_layouts(arch, {"a": "seq_bn", "b": "seq_bn[reduction_factor=4]"},
                                                       setup)
    assert shapes[0][:2] == (1, sum(LENGTHS))
    assert_parity(unpadded.last_hidden_state, padded.last_hidden_state, mask=mask)


NOT_TOKEN_WISE = {  # what needs the padded layout, and why
    "UniPELT gates average over the padded sequence": ({"a": "unipelt"}, "a", {}),
    "a LoRA gate too": ({"a": "lora[use_gating=True]"}, "a", {}),
    "stochastic depth drops whole examples": ({"a": "seq_bn[stochastic_depth=0.5]"}, "a", {}),
    "Split cuts at a token position": ({"a": "seq_bn", "b": "lora"}, Split("a", "b", splits=[4, 5]), {}),
    "BatchSplit cuts at batch rows": ({"a": "seq_bn", "b": "lora"}, BatchSplit("a", "b", batch_sizes=[1, 2]), {}),
    "Parallel replicates the rows": ({"a": "seq_bn", "b": "lora"}, Parallel("a", "b"), {}),
    "mixed batches are BatchSplits": ({"a": "seq_bn", "b": "lora"}, None, {"adapter_names": ["a", None, "b"]}),
    "fusion attentions are (B, T, N)": ({"a": "seq_bn", "b": "seq_bn[reduction_factor=4]"}, Fuse("a", "b"),
                                        {"output_adapter_fusion_attentions": True}),
}


@pytest.mark.parametrize("case", NOT_TOKEN_WISE)
def test_setups_that_read_across_tokens_or_rows_keep_the_padded_layout(case):
    adapters, setup, kwargs = NOT_TOKEN_WISE[case]
    model, (out, padded), shapes, mask = both_layouts("bert", adapters, setup, **kwargs)
    assert len(shapes) == 2 and all(shape[1:] == (mask.shape[1], TINY["hidden_size"]) for shape in shapes)
    for mine, theirs in zip(*((o if isinstance(o, list) else [o]) for o in (out, padded)), strict=True):
        assert torch.equal(mine.last_hidden_state, theirs.last_hidden_state)
    assert model.unpadded() is bool(kwargs)  # records and mixed batches are per forward; those setups are token-wise


# ---- AdapterHub's settable active setup and head ------------------------------------------------------------------


def test_assigning_active_adapters_activates_as_set_active_adapters_does():
    model = tiny_model()
    model.add_adapter("a", "seq_bn")
    model.add_classification_head("a")
    model.active_head = None
    model.active_adapters = "a"
    assert model.active_adapters == Stack("a") and model.active_head == "a"
    model.active_adapters = None
    assert model.active_adapters is None and model.active_head is None


def test_active_head_takes_a_name_a_list_or_a_block_and_refuses_unknown_heads_changing_nothing():
    model = tiny_model()
    for name, labels in (("a", 2), ("b", 3)):
        model.add_adapter(name, "seq_bn")
        model.add_classification_head(name, num_labels=labels)
    batch = inputs(model)
    model.active_adapters = Parallel("a", "b")
    assert model.active_head == ["a", "b"]  # a Parallel setup's heads, as AdapterHub lists them
    model.active_head = ["a"]  # one head for two branches: refused at the forward, as AdapterHub does
    assert model.active_head == "a"
    with pytest.raises(ValueError, match="runs 2 copies of the batch, but one head is active"):
        model(**batch)
    model.active_head = ["a", "b"]
    assert [out.logits.shape[-1] for out in model(**batch)] == [2, 3]
    model.active_adapters = None
    model.active_head = BatchSplit("a", "b", batch_sizes=[1, 2])
    assert [out.logits.shape for out in model(**batch)] == [(1, 2), (2, 3)]
    with pytest.raises(KeyError, match="no head named 'missing'"):
        model.active_head = BatchSplit("a", "missing", batch_sizes=[1, 2])
    assert model.active_head == BatchSplit("a", "b", batch_sizes=[1, 2])
    model.active_head = "b"
    assert model(**batch).logits.shape == (3, 3)
    model.delete_head("b")
    assert model.active_head is None


def test_loading_info_reports_an_exact_load(tmp_path):
    model = tiny_model()
    model.add_adapter("a", "lora")
    model.add_classification_head("a")
    model.save_adapter(tmp_path / "a", "a")
    model.save_head(tmp_path / "head", "a")
    other, adapter_info, head_info = tiny_model(), {}, {}
    other.load_adapter(tmp_path / "a", loading_info=adapter_info, with_head=False)
    other.load_head(tmp_path / "head", loading_info=head_info)
    assert adapter_info == head_info == {"missing_keys": [], "unexpected_keys": []}


def test_parallel_branches_with_heads_give_a_summed_loss_and_without_heads_one_output():
    model = tiny_model()
    for name, labels in (("a", 2), ("b", 3)):
        model.add_adapter(name, "seq_bn")
        model.add_classification_head(name, num_labels=labels)
    batch, labels = inputs(model), torch.tensor([1, 0, 1])
    model.active_adapters = Parallel("a", "b")
    outputs = model(**batch, labels=labels)
    assert len(outputs) == 2 and outputs.head_outputs == list(outputs)
    torch.testing.assert_close(outputs.loss, outputs[0].loss + outputs[1].loss)
    assert outputs["loss"] is not None
    assert model(**batch).loss is None  # no labels, no loss
    model.active_head = None
    both = model(**batch)
    assert both.last_hidden_state.shape[0] == 6  # the batch's two copies, one after the other


def test_labels_for_a_parallel_setup_through_the_models_own_head_count_every_copy():
    model = tiny_model(head="sequence_classification", num_labels=2)
    for name in ("a", "b"):
        model.add_adapter(name, "seq_bn")
    batch, labels = inputs(model), torch.tensor([1, 0, 1])
    model.active_adapters = Parallel("a", "b")
    out = model(**batch, labels=labels)
    assert out.logits.shape == (6, 2)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, labels.repeat(2)))


def test_a_lenient_load_fills_what_fits_and_lists_the_rest_where_a_strict_one_refuses(tmp_path):
    """strict=False is AdapterHub's loading: the file's tensor the adapter lacks is ignored, the adapter's tensor the
    file lacks keeps its fresh value, both listed; shapes must still fit. The default stays strict."""
    model = tiny_model()
    model.add_adapter("a", "seq_bn")
    with torch.no_grad():
        for parameter in model.adapter_parameters("a"):
            parameter.fill_(0.25)
    model.save_adapter(tmp_path, "a", with_head=False)
    weights = tmp_path / "adapter_model.safetensors"
    state = safetensors.torch.load_file(weights)
    dropped = sorted(state)[0]
    state["layers.0.ffn.residual.adapters.extra"] = torch.zeros(2)
    del state[dropped]
    safetensors.torch.save_file(state, weights)
    strict = tiny_model()
    with pytest.raises(ValueError, match="does not fit this model"):
        strict.load_adapter(tmp_path)
    assert strict.adapter_configs == {}
    lenient, info = tiny_model(), {}
    lenient.load_adapter(tmp_path, strict=False, loading_info=info)
    assert info == {"missing_keys": [dropped], "unexpected_keys": ["layers.0.ffn.residual.adapters.extra"]}
    loaded = lenient.adapter_state("a")
    assert all(torch.all(t == 0.25) for key, t in loaded.items() if key != dropped)
    assert not torch.all(loaded[dropped] == 0.25)
