"""Property tests (hypothesis) over the whole config space: any valid config of any method, or union of methods,
builds on a tiny model of every architecture, trains with finite outputs and gradients, reloads bit-exactly from
disk and (LoRA, (IA)^3, MTL-LoRA) merges and resets exactly; a MultiTask setup runs every row as its task's adapter
alone; any invalid config is refused with an error that names the offending field, before a tensor is built. The
examples drawn come from the profile in tests/conftest.py."""

from __future__ import annotations

import dataclasses
import re
import tempfile

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from peftcore import (
    AdaLoraConfig,
    BnConfig,
    CompacterConfig,
    DoRAConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoRAConfig,
    LoReftConfig,
    MTLLoRAConfig,
    MultiTask,
    PrefixTuningConfig,
    PromptTuningConfig,
    ReftConfig,
    SeqBnConfig,
    SeqBnInvConfig,
    VeraConfig,
)
from peftcore.configs import ADAPTER_CONFIG_MAP, AdapterConfigBase, ConfigUnion, members, parse
from peftcore.methods.activations import NAMES as ACTIVATION_NAMES
from tests.archs import ARCHS, TINY, tiny_model
from tests.peftcore.test_io import assert_unchanged, fingerprint, randomize, same_tensors
from tests.peftcore.test_model import hidden, inputs
from tests.peftcore.test_numerics import forward_backward, small

HIDDEN, LAYERS = TINY["hidden_size"], TINY["num_hidden_layers"]

# ---- valid configs ------------------------------------------------------------------------------------------

leave_out = st.sampled_from([(), (0,), (1,)])  # leaving out both layers places nothing: an error of its own
activation = st.sampled_from(ACTIVATION_NAMES)
small_rate = st.sampled_from([0.0, 0.1])


@st.composite
def bottleneck_configs(draw: st.DrawFn) -> BnConfig:
    """Sequential, double, parallel and scaled bottlenecks, with or without a NICE/GLOW coupling and PHM layers."""
    phm = draw(st.booleans())
    inv = draw(st.sampled_from([None, "nice", "glow"]))
    places = [(False, True), (True, False), (True, True)] + [(False, False)] * (inv is not None)  # (mh, output)
    mh, output = draw(st.sampled_from(places))
    factor = st.sampled_from([1, 2, 4, 8])  # widths 32..4: every phm_dim drawn divides them
    per_layer = st.fixed_dictionaries({"0": factor, "default": factor})
    return BnConfig(
        mh_adapter=mh, output_adapter=output, non_linearity=draw(activation),
        reduction_factor=draw(factor if phm else st.one_of(factor, st.sampled_from([2.5, 3]), per_layer)),
        original_ln_before=draw(st.booleans()), original_ln_after=draw(st.booleans()),
        residual_before_ln=draw(st.sampled_from([True, False, "post_add"])),
        adapter_residual_before_ln=draw(st.booleans()), ln_before=draw(st.booleans()), ln_after=draw(st.booleans()),
        init_weights=draw(st.sampled_from(["bert", "mam_adapter"] if phm else ["bert", "mam_adapter", "houlsby"])),
        is_parallel=draw(st.booleans()), use_gating=draw(st.booleans()),
        scaling=draw(st.one_of(st.floats(0.1, 4), st.floats(-4, -0.1), st.sampled_from(["learned", "channel"]))),
        inv_adapter=inv, inv_adapter_reduction_factor=draw(st.sampled_from([1, 2, 4])) if inv else None,
        leave_out=draw(leave_out), dropout=draw(small_rate), stochastic_depth=draw(small_rate),
        init_weights_seed=draw(st.none() | st.integers(0, 2**31)), phm_layer=phm,
        phm_dim=draw(st.sampled_from([1, 2, 4])), phm_rank=draw(st.integers(1, 3)),
        factorized_phm_W=draw(st.booleans()), shared_W_phm=draw(st.booleans()),
        shared_phm_rule=draw(st.booleans()), factorized_phm_rule=draw(st.booleans()),
        phm_c_init=draw(st.sampled_from(["normal", "uniform"])), learn_phm=draw(st.booleans()),
        hypercomplex_nonlinearity=draw(st.sampled_from(["glorot-uniform", "glorot-normal", "normal", "phm"])),
        phm_bias=draw(st.booleans()))


@st.composite
def linear_configs(draw: st.DrawFn, ia3: bool | None = None, gating: bool = True, variants: bool = True) -> LoRAConfig:
    """LoRA, DoRA, VeRA or DVoRA (composition "add"; only LoRA without ``variants``) or (IA)^3 ("scale") on any
    non-empty choice of the five linear sites (VeRA's: of the attention matrices)."""
    ia3 = draw(st.booleans()) if ia3 is None else ia3
    vera = not ia3 and variants and draw(st.booleans())
    matrices = tuple(draw(st.lists(st.sampled_from("qkv"), unique=True, min_size=vera, max_size=3)))
    intermediate, output = (False, False) if vera else (draw(st.booleans()), draw(st.booleans()))
    if not matrices and not (intermediate or output):
        intermediate = True
    common = dict(attn_matrices=matrices, selfattn_lora=bool(matrices), intermediate_lora=intermediate,
                  output_lora=output, leave_out=draw(leave_out), alpha=draw(st.sampled_from([0.5, 1, 8, 16])),
                  init_weights=draw(st.sampled_from(["lora", "bert", "ia3"] + ["vera"] * (not ia3))),
                  use_gating=draw(st.booleans()) if gating else False, init_weights_seed=draw(st.none() | st.just(3)))
    if ia3:
        return IA3Config(**common)
    dora = variants and draw(st.booleans())
    variants = dict(use_dora=dora, dora_variant=draw(st.sampled_from(["adapterhub", "peft"])) if dora and not
                    common["use_gating"] else "adapterhub")
    if vera:
        variants.update(vera_d=draw(st.floats(-1, 1)), vera_b=draw(st.floats(-1, 1)), vera_dense=draw(st.booleans()))
    return LoRAConfig(r=draw(st.integers(1, 40)), dropout=draw(small_rate), **common, **variants)  # r may exceed width


@st.composite
def mtl_lora_configs(draw: st.DrawFn, gating: bool = True) -> MTLLoRAConfig:
    """MTL-LoRA on any sites LoRA takes, with 1-3 up-projections and either task matrix."""
    lora = draw(linear_configs(ia3=False, gating=gating, variants=False))
    return MTLLoRAConfig(**{f.name: getattr(lora, f.name) for f in dataclasses.fields(lora)},
                         n_up_projection=draw(st.integers(1, 3)), weights_sharpness=draw(st.sampled_from([0.05, 1.0])),
                         task_specific_matrix_type=draw(st.sampled_from(["singular_values", "linear"])))


@st.composite
def prefix_configs(draw: st.DrawFn) -> PrefixTuningConfig:
    return PrefixTuningConfig(flat=draw(st.booleans()), prefix_length=draw(st.integers(1, 12)),
                              bottleneck_size=draw(st.integers(1, 48)), non_linearity=draw(activation),
                              dropout=draw(small_rate), use_gating=draw(st.booleans()),
                              shared_gating=draw(st.booleans()), leave_out=draw(leave_out))


@st.composite
def prompt_configs(draw: st.DrawFn) -> PromptTuningConfig:
    return PromptTuningConfig(prompt_length=draw(st.integers(1, 12)),
                              combine=draw(st.sampled_from(["prefix", "prefix_after_bos"])),
                              random_uniform_scale=draw(st.floats(0.01, 2)),
                              init_weights_seed=draw(st.none() | st.integers(0, 2**31 - 1)))


@st.composite
def reft_configs(draw: st.DrawFn) -> ReftConfig:
    """Interventions on any layers and positions (more than a short row has), tied or not, any projection."""
    prefix, suffix = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    prefix = prefix if prefix or suffix else 1
    return ReftConfig(layers=draw(st.sampled_from(["all", (0,), (1,)])), prefix_positions=prefix,
                      suffix_positions=suffix, r=draw(st.integers(1, HIDDEN)), orthogonality=draw(st.booleans()),
                      tied_weights=draw(st.booleans()), subtract_projection=draw(st.booleans()),
                      dropout=draw(small_rate), non_linearity=draw(st.none() | activation),
                      init_weights_seed=draw(st.none() | st.just(3)))


@st.composite
def union_configs(draw: st.DrawFn) -> ConfigUnion:
    """Two or three methods at different sites: prefix + bottleneck + LoRA/(IA)^3 in any subset, or a bottleneck
    after attention with another after the FFN."""
    bottleneck = bottleneck_configs().map(lambda c: c.replace(phm_layer=False))
    if draw(st.booleans()):
        first, second = draw(bottleneck), draw(bottleneck)
        return ConfigUnion(first.replace(mh_adapter=True, output_adapter=False),
                           second.replace(mh_adapter=False, output_adapter=True, inv_adapter=None))
    members = draw(st.lists(st.sampled_from(["prefix", "bottleneck", "linear", "reft"]), min_size=2, max_size=3,
                            unique=True))
    strategies = {"prefix": prefix_configs(), "bottleneck": bottleneck, "linear": linear_configs(),
                  "reft": reft_configs()}
    return ConfigUnion(*(draw(strategies[member]) for member in members))


presets = st.sampled_from(sorted(ADAPTER_CONFIG_MAP)).map(lambda name: small(ADAPTER_CONFIG_MAP[name]))
configs = st.one_of(presets, bottleneck_configs(), linear_configs(), prefix_configs(), reft_configs(), union_configs(),
                    prompt_configs(), mtl_lora_configs())
archs = st.sampled_from(sorted(ARCHS))  # in this order the ci profile draws the examples it always has


@given(config=configs, arch=archs)
def test_any_valid_config_trains_with_finite_outputs_and_gradients_on_every_architecture(config, arch):
    torch.manual_seed(0)
    model = tiny_model(arch)
    model.add_adapter("a", config)
    randomize(model, "a", scale=0.1)  # away from identity inits ((IA)^3's "lora" init zeroes every gradient)
    model.train_adapter("a")
    out, grads = forward_backward(model, inputs(model))
    assert torch.isfinite(out).all() and torch.isfinite(grads).all() and grads.any()
    own = {id(p) for p in model.adapter_parameters("a")}
    assert all(p.grad is None for p in model.parameters() if id(p) not in own)


@given(config=configs, arch=archs)
def test_any_valid_config_reloads_bit_exactly(config, arch):
    model = tiny_model(arch)
    model.add_adapter("a", config, set_active=True)
    randomize(model, "a", scale=0.1)
    with tempfile.TemporaryDirectory() as directory:
        model.save_adapter(directory, "a")
        fresh = tiny_model(arch)
        fresh.load_adapter(directory, set_active=True)
    assert fresh.adapter_configs["a"].to_dict() == config.to_dict()
    assert same_tensors(fresh.adapter_state("a"), model.adapter_state("a"))
    assert torch.equal(hidden(fresh, inputs(fresh)), hidden(model, inputs(model)))


@given(config=linear_configs(gating=False) | mtl_lora_configs(gating=False), arch=archs)
def test_merge_then_reset_restores_weights_exactly_and_merged_outputs_equal_unmerged(config, arch):
    model = tiny_model(arch)
    model.add_adapter("a", config, set_active=True)
    randomize(model, "a", scale=0.1)
    base = {key: t.clone() for key, t in model.base_state_dict().items()}
    batch = inputs(model)
    unmerged = hidden(model, batch)
    model.merge_adapter("a")
    torch.testing.assert_close(hidden(model, batch), unmerged, rtol=0, atol=1e-5)
    model.reset_adapter("a")
    assert same_tensors(model.base_state_dict(), base)
    assert torch.equal(hidden(model, batch), unmerged)


@given(config=mtl_lora_configs(), arch=archs, tasks=st.lists(st.integers(0, 2), min_size=3, max_size=3))
def test_a_multitask_batch_runs_every_row_as_its_tasks_adapter_alone(config, arch, tasks):
    model = tiny_model(arch)
    for name in "abc":
        model.add_adapter(name, config)
        randomize(model, name, scale=0.1)
    batch = inputs(model)
    model.set_active_adapters(MultiTask("a", "b", "c"))
    together = hidden(model, {**batch, "task_ids": torch.tensor(tasks)})
    for row, task in enumerate(tasks):
        model.set_active_adapters("abc"[task])
        alone = hidden(model, {key: value[row:row + 1] for key, value in batch.items()})
        torch.testing.assert_close(together[row:row + 1], alone, rtol=0, atol=1e-5)


# ---- invalid configs ----------------------------------------------------------------------------------------

text = st.text(min_size=1, max_size=8)
not_bool = st.one_of(st.integers(), st.floats(), text, st.none(), st.lists(st.booleans(), max_size=2))
not_positive_int = st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), text, st.none())
not_positive_number = st.one_of(st.integers(max_value=0), st.floats(max_value=0), st.sampled_from(
    [float("nan"), float("inf"), True, False]), text, st.none(), st.lists(st.integers(), max_size=2))
not_probability = st.one_of(st.floats().filter(lambda x: not 0 <= x < 1), st.integers(1), text, st.none())
not_layer_list = st.one_of(st.integers(), text, st.lists(st.integers(max_value=-1), min_size=1, max_size=2),
                           st.lists(text | st.floats(), min_size=1, max_size=2), st.just([0, 0]))


def not_one_of(*choices: object) -> st.SearchStrategy:
    return st.one_of(text, st.integers(), st.floats(), st.none()).filter(lambda value: value not in choices)


not_an_activation = not_one_of(*ACTIVATION_NAMES).filter(  # names are read in any case
    lambda value: not (isinstance(value, str) and value.lower() in ACTIVATION_NAMES))


def flags(config_class: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class) if f.type == "bool"]


PHM_FLAGS = ("factorized_phm_W", "shared_W_phm", "shared_phm_rule", "factorized_phm_rule")

# (config class, field, strategy of values that field must refuse); Compacter's and the invertible adapter's fields
# are checked on configs that use them (AdapterHub ignores them otherwise)
INVALID_FIELDS = [
    *[(SeqBnConfig, name, not_bool) for name in flags(SeqBnConfig) if name not in PHM_FLAGS],
    *[(CompacterConfig, name, not_bool) for name in PHM_FLAGS],
    *[(LoRAConfig, name, not_bool) for name in flags(LoRAConfig)],
    *[(PrefixTuningConfig, name, not_bool) for name in flags(PrefixTuningConfig)],
    (SeqBnConfig, "reduction_factor", not_positive_number | st.just({"first": 2}) | st.just({"default": 0})),
    (SeqBnConfig, "non_linearity", not_an_activation),
    (SeqBnConfig, "residual_before_ln", not_one_of(True, False, "post_add") | st.sampled_from([0, 1])),
    (SeqBnConfig, "init_weights", not_one_of("bert", "mam_adapter", "houlsby")),
    (SeqBnConfig, "scaling", not_one_of("learned", "channel").filter(
        lambda v: not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"))),
    (SeqBnConfig, "inv_adapter", not_one_of(None, "nice", "glow")),
    (SeqBnInvConfig, "inv_adapter_reduction_factor", not_positive_number),
    (SeqBnConfig, "leave_out", not_layer_list),
    (SeqBnConfig, "dropout", not_probability),
    (SeqBnConfig, "stochastic_depth", not_probability),
    (SeqBnConfig, "init_weights_seed", st.floats() | text),
    (CompacterConfig, "phm_dim", not_positive_int),
    (CompacterConfig, "phm_rank", not_positive_int),
    (CompacterConfig, "phm_init_range", not_positive_number),
    (CompacterConfig, "phm_c_init", not_one_of("normal", "uniform")),
    (CompacterConfig, "hypercomplex_nonlinearity", not_one_of("glorot-uniform", "glorot-normal", "normal", "phm")),
    (LoRAConfig, "r", not_positive_int),
    (LoRAConfig, "alpha", not_positive_number),
    (LoRAConfig, "dropout", not_probability),
    (LoRAConfig, "attn_matrices", st.one_of(text, st.integers(), st.lists(not_one_of("q", "k", "v"), min_size=1,
                                                                            max_size=2), st.just(["q", "q"]))),
    (LoRAConfig, "composition_mode", not_one_of("add", "scale")),
    (LoRAConfig, "init_weights", not_one_of("lora", "bert", "ia3")),
    (LoRAConfig, "leave_out", not_layer_list),
    (LoRAConfig, "vera_d", st.floats()),  # without vera_b
    (LoRAConfig, "vera_dense", st.just(True)),  # without VeRA
    (VeraConfig, "vera_b", st.sampled_from([None, float("nan"), float("inf"), -float("inf"), "0.1", True])),
    (VeraConfig, "intermediate_lora", st.just(True)),
    (DoRAConfig, "dora_variant", not_one_of("adapterhub", "peft")),
    (IA3Config, "use_dora", st.just(True)),
    (LoRAConfig, "dtype", st.just("float16")),
    (IA3Config, "r", st.integers(2)),
    (MTLLoRAConfig, "n_up_projection", not_positive_int),
    (MTLLoRAConfig, "task_specific_matrix_type", not_one_of("singular_values", "linear")),
    (MTLLoRAConfig, "weights_sharpness", not_positive_number),
    (MTLLoRAConfig, "composition_mode", st.just("scale")),
    (MTLLoRAConfig, "use_dora", st.just(True)),  # MTL-LoRA has no DoRA form (nor a VeRA one)
    (PrefixTuningConfig, "prefix_length", not_positive_int),
    (PrefixTuningConfig, "bottleneck_size", not_positive_int),
    (PrefixTuningConfig, "non_linearity", not_an_activation),
    (PrefixTuningConfig, "dropout", not_probability),
    (PrefixTuningConfig, "leave_out", not_layer_list),
    (PromptTuningConfig, "prompt_length", not_positive_int),
    (PromptTuningConfig, "prompt_init", not_one_of("random_uniform", "from_string")),
    (PromptTuningConfig, "prompt_init_text", st.integers() | st.floats() | st.lists(text, max_size=2)),
    (PromptTuningConfig, "random_uniform_scale", not_positive_number),
    (PromptTuningConfig, "combine", not_one_of("prefix", "prefix_after_bos")),
    (PromptTuningConfig, "init_weights_seed", st.floats() | text),
    *[(LoReftConfig, name, not_bool) for name in flags(ReftConfig)],
    (LoReftConfig, "layers", not_layer_list.filter(lambda value: value != "all")),
    (LoReftConfig, "prefix_positions", st.one_of(st.integers(max_value=-1), st.floats(), text, st.none())),
    (LoReftConfig, "suffix_positions", st.one_of(st.integers(max_value=-1), st.floats(), text, st.none())),
    (LoReftConfig, "r", not_positive_int),
    (LoReftConfig, "dropout", not_probability),
    (LoReftConfig, "non_linearity", not_an_activation.filter(lambda value: value is not None)),
    (LoReftConfig, "dtype", st.just("float16")),
]


@pytest.mark.parametrize(("config_class", "field", "values"), INVALID_FIELDS,
                         ids=[f"{cls.__name__}.{field}" for cls, field, _ in INVALID_FIELDS])
@given(data=st.data())
def test_an_invalid_field_value_is_refused_naming_the_field(config_class, field, values, data):
    value = data.draw(values)
    for build in (lambda: config_class(**{field: value}), lambda: config_class().replace(**{field: value}),
                  lambda: AdapterConfigBase.from_dict({**config_class().to_dict(), field: value})):
        with pytest.raises((TypeError, ValueError), match=re.escape(field)):
            build()


field_names = {f.name for cls in (BnConfig, LoRAConfig, PrefixTuningConfig, PromptTuningConfig, MTLLoRAConfig,
                                  ReftConfig, LoHaConfig, LoKrConfig, AdaLoraConfig)
               for f in dataclasses.fields(cls)}


@given(name=st.sampled_from(sorted(ADAPTER_CONFIG_MAP)),
       key=st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True).filter(lambda key: key not in field_names))
def test_an_unknown_field_is_refused_naming_it(name, key):
    config = members(ADAPTER_CONFIG_MAP[name])[0]
    for build in (lambda: type(config)(**{key: 1}), lambda: config.replace(**{key: 1}),
                  lambda: AdapterConfigBase.from_dict({**config.to_dict(), key: 1}),
                  lambda: parse(f"{name}[{key}=1]")):
        with pytest.raises((TypeError, ValueError), match=re.escape(key)):
            build()


@pytest.mark.parametrize(("config_class", "field", "width"), [
    (SeqBnInvConfig, "inv_adapter_reduction_factor", HIDDEN // 2),  # each coupling half is half the hidden size
    (SeqBnConfig, "reduction_factor", HIDDEN),
])
@given(data=st.data())
def test_a_reduction_factor_above_the_width_it_divides_is_refused_and_the_model_is_unchanged(config_class, field,
                                                                                               width, data):
    factor = data.draw(st.integers(width + 1, 10**6) | st.floats(width, 1e9, exclude_min=True), label=field)
    model = tiny_model(data.draw(archs, label="arch"))
    before = fingerprint(model)
    with pytest.raises(ValueError, match=rf"{field}={re.escape(str(factor))} exceeds the width {width}"):
        model.add_adapter("a", config_class(**{field: factor}))
    assert_unchanged(model, before)
