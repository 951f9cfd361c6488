"""Adapter configs: AdapterHub's names and exact defaults, strict dict round trips, the "name[k=v]" syntax,
``AdapterConfigBase.load``, and validation that names the offending field."""

from __future__ import annotations

import dataclasses
import json

import adapters
import pytest
import transformers as tf

import peftcore
from peftcore import (
    BnConfig,
    DoubleSeqBnConfig,
    IA3Config,
    LoRAConfig,
    ParBnConfig,
    PrefixTuningConfig,
    SeqBnConfig,
)
from peftcore.configs import ADAPTER_CONFIG_MAP, DEFAULT_ADAPTER_CONFIG, AdapterConfigBase, ConfigUnion, parse
from tests.archs import tiny_model
from tests.parity import assert_adapterhub_round_trip

# our config classes (and factories) that AdapterHub 1.3.0 exports under the same name, callable without arguments
SAME_NAMED = sorted(name for name in peftcore.__all__ if name.endswith("Config") and hasattr(adapters, name)
                    and name not in ("AdapterConfig", "BnConfig", "AdapterFusionConfig", "ReftConfig"))
# the pre-1.0 class names AdapterHub keeps only as registry keys
LEGACY_NAMES = {"PfeifferConfig": "pfeiffer", "HoulsbyConfig": "houlsby", "ParallelConfig": "parallel",
                "PfeifferInvConfig": "pfeiffer+inv", "HoulsbyInvConfig": "houlsby+inv"}


# ---- AdapterHub's defaults ----------------------------------------------------------------------------------


# the names of HF PEFT's methods AdapterHub lacks: PEFT's defaults (tests/peftcore/methods/test_loha.py, ...)
PEFT_ONLY = {"loha", "lokr", "adalora"}
ADAPTERHUB_NAMES = sorted(set(ADAPTER_CONFIG_MAP) - PEFT_ONLY)


def test_registry_is_a_subset_of_adapterhubs_with_the_same_default():
    assert set(ADAPTERHUB_NAMES) <= set(adapters.ADAPTER_CONFIG_MAP)
    assert DEFAULT_ADAPTER_CONFIG == adapters.DEFAULT_ADAPTER_CONFIG


# what AdapterHub's dicts lose: its DiReFT's subtract_projection=False is a class attribute its to_dict drops
LOST_BY_ADAPTERHUB = {"direft": {"subtract_projection": False}, "DiReftConfig": {"subtract_projection": False}}


@pytest.mark.parametrize("name", ADAPTERHUB_NAMES)
def test_registry_entry_has_adapterhubs_exact_fields_and_defaults(name):
    ours = ADAPTER_CONFIG_MAP[name].to_dict()
    theirs = {**adapters.ADAPTER_CONFIG_MAP[name].to_dict(), **LOST_BY_ADAPTERHUB.get(name, {})}
    assert sorted(ours) == sorted(theirs)
    for field, value in theirs.items():
        assert ours[field] == value, f"{name}.{field}: ours {ours[field]!r}, AdapterHub {value!r}"


@pytest.mark.parametrize("name", SAME_NAMED)
def test_same_named_config_class_has_adapterhubs_defaults(name):
    assert getattr(peftcore, name)().to_dict() == {**getattr(adapters, name)().to_dict(),
                                                   **LOST_BY_ADAPTERHUB.get(name, {})}


@pytest.mark.parametrize(("name", "key"), sorted(LEGACY_NAMES.items()))
def test_legacy_class_names_are_the_legacy_registry_entries(name, key):
    assert getattr(peftcore, name)().to_dict() == adapters.ADAPTER_CONFIG_MAP[key].to_dict()


def test_bn_config_has_exactly_adapterhubs_fields():
    # but ours gate_over_real_tokens (gating.py), which to_dict leaves out while it is off
    ours = {field.name for field in dataclasses.fields(BnConfig)} - {"gate_over_real_tokens"}
    assert ours == {field.name for field in dataclasses.fields(adapters.BnConfig)}


# ---- dicts --------------------------------------------------------------------------------------------------

ROUND_TRIPS = [
    SeqBnConfig(),
    DoubleSeqBnConfig(reduction_factor={"0": 4, "default": 16}, leave_out=[1], non_linearity="gelu"),
    SeqBnConfig(reduction_factor={"1": 2.5, "default": 8}, scaling="channel", residual_before_ln="post_add"),
    ADAPTER_CONFIG_MAP["seq_bn_inv"],
    ADAPTER_CONFIG_MAP["scaled_par_bn"],
    LoRAConfig(r=4, leave_out=(0, 2)),
]


@pytest.mark.parametrize("config", ROUND_TRIPS, ids=lambda config: type(config).__name__)
def test_to_dict_from_dict_round_trips_through_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    again = AdapterConfigBase.from_dict(data)
    assert again == config
    assert isinstance(again, BnConfig if isinstance(config, BnConfig) else type(config))


# one config of every class (or factory) peftcore exports, fields away from their defaults where that is easy
EVERY_CLASS = [
    *(config_class(leave_out=[1]) for config_class in sorted(
        {getattr(peftcore, name) for name in peftcore.__all__ if name.endswith("Config")} - {
            peftcore.BnConfig, peftcore.AdapterFusionConfig, peftcore.MAMConfig, peftcore.UniPELTConfig,
            peftcore.PromptTuningConfig, peftcore.ReftConfig, peftcore.LoReftConfig, peftcore.NoReftConfig,
            peftcore.DiReftConfig},
        key=lambda config_class: config_class.__name__)),
    peftcore.PromptTuningConfig(prompt_length=3, combine="prefix_after_bos"),  # one prompt for the whole model
    *(config_class(layers=[1]) for config_class in (peftcore.LoReftConfig, peftcore.NoReftConfig,
                                                    peftcore.DiReftConfig)),
    peftcore.ReftConfig(layers="all", prefix_positions=1, suffix_positions=2, r=2, orthogonality=False),
    BnConfig(mh_adapter=True, output_adapter=False, reduction_factor={"0": 4, "default": 8}, non_linearity="gelu"),
    ConfigUnion(LoRAConfig(r=2), SeqBnConfig(non_linearity="tanh")),
    peftcore.MAMConfig(),
    peftcore.UniPELTConfig(),
]


@pytest.mark.parametrize("config", EVERY_CLASS, ids=lambda config: type(config).__name__)
def test_from_dict_on_the_configs_class_gives_an_equal_config_of_that_class(config):
    again = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert type(again) is type(config) and again == config
    if config.architecture in PEFT_ONLY:
        return  # HF PEFT's methods: AdapterHub has no such class
    theirs = getattr(adapters, type(config).__name__).from_dict(config.to_dict())  # AdapterHub reads it the same
    assert {**theirs.to_dict(), **LOST_BY_ADAPTERHUB.get(type(config).__name__, {})} == config.to_dict()


def test_from_dict_on_the_base_class_picks_the_class_from_the_architecture():
    assert type(AdapterConfigBase.from_dict(SeqBnConfig().to_dict())) is BnConfig  # no "architecture": bottleneck
    ia3 = AdapterConfigBase.from_dict(IA3Config().to_dict())
    assert type(ia3) is LoRAConfig and ia3 == IA3Config()
    assert type(AdapterConfigBase.from_dict(PrefixTuningConfig().to_dict())) is PrefixTuningConfig


def test_from_dict_on_a_method_class_reads_its_named_variants_dicts():
    """As in AdapterHub: the class decides, the fields say what the config is."""
    houlsby = SeqBnConfig.from_dict(DoubleSeqBnConfig().to_dict())
    assert type(houlsby) is SeqBnConfig and houlsby.mh_adapter and houlsby == DoubleSeqBnConfig()
    assert type(LoRAConfig.from_dict(IA3Config().to_dict())) is LoRAConfig


@pytest.mark.parametrize(("config_class", "config"), [
    (SeqBnConfig, LoRAConfig()),
    (LoRAConfig, PrefixTuningConfig()),
    (BnConfig, ConfigUnion(LoRAConfig(), SeqBnConfig())),
])
def test_from_dict_on_a_method_class_refuses_another_methods_dict(config_class, config):
    with pytest.raises(ValueError, match=rf"{config_class.__name__}.from_dict got the dict of a .*AdapterConfigBase"):
        config_class.from_dict(config.to_dict())


def test_adapterhub_reads_another_methods_dict_into_the_class_it_was_called_on():
    """It keeps the fields both classes have and sets the others as attributes: a bottleneck with LoRA's init."""
    theirs = adapters.SeqBnConfig.from_dict(adapters.LoRAConfig().to_dict())
    assert type(theirs) is adapters.SeqBnConfig and theirs.init_weights == "lora"


@pytest.mark.parametrize(("theirs", "ours"), [
    (adapters.SeqBnConfig(reduction_factor=4, leave_out=[0]), SeqBnConfig(reduction_factor=4, leave_out=[0])),
    (adapters.CompacterConfig(), peftcore.CompacterConfig()),
    (adapters.LoRAConfig(r=2, attn_matrices=["q", "k"]), LoRAConfig(r=2, attn_matrices=["q", "k"])),
    (adapters.IA3Config(), IA3Config()),
    (adapters.PrefixTuningConfig(flat=True), PrefixTuningConfig(flat=True)),
    (adapters.UniPELTConfig(), peftcore.UniPELTConfig()),
], ids=lambda config: type(config).__name__)
def test_load_reads_the_dict_adapterhub_saves(theirs, ours):
    assert AdapterConfigBase.load(json.loads(json.dumps(theirs.to_dict()))) == ours


# ---- equality -----------------------------------------------------------------------------------------------


def test_configs_are_equal_when_their_dicts_are_whatever_their_class_as_in_adapterhub():
    assert adapters.SeqBnConfig() == adapters.BnConfig(**adapters.SeqBnConfig().to_dict())
    assert SeqBnConfig() == BnConfig(**SeqBnConfig().to_dict()) == SeqBnConfig(reduction_factor=16.0)
    assert IA3Config() == LoRAConfig(**{k: v for k, v in IA3Config().to_dict().items() if k != "architecture"})
    assert SeqBnConfig() != DoubleSeqBnConfig() and SeqBnConfig() != SeqBnConfig(leave_out=[0])
    assert SeqBnConfig() != SeqBnConfig().to_dict() and SeqBnConfig() != "seq_bn"


def test_equal_configs_hash_alike():
    same = {SeqBnConfig(), BnConfig(**SeqBnConfig().to_dict()), SeqBnConfig(reduction_factor=16.0)}
    assert len(same) == 1
    assert len({SeqBnConfig(reduction_factor={"0": 2, "default": 4}), SeqBnConfig(reduction_factor={"default": 4,
                                                                                                     "0": 2})}) == 1
    assert hash(peftcore.MAMConfig()) == hash(AdapterConfigBase.from_dict(peftcore.MAMConfig().to_dict()))


def test_unions_with_other_members_differ_even_where_adapterhub_finds_them_equal():
    """AdapterHub's ConfigUnion.__eq__ zips the member lists, so a union equals any that adds members to it."""
    assert adapters.ConfigUnion(adapters.LoRAConfig(), adapters.SeqBnConfig()) == adapters.ConfigUnion(
        adapters.LoRAConfig(), adapters.SeqBnConfig(), adapters.PrefixTuningConfig())
    assert ConfigUnion(LoRAConfig(), SeqBnConfig()) != ConfigUnion(LoRAConfig(), SeqBnConfig(), PrefixTuningConfig())
    assert ConfigUnion(LoRAConfig(), SeqBnConfig()) != ConfigUnion(SeqBnConfig(), LoRAConfig())


def test_from_dict_normalises_sequences_and_layer_keys():
    config = AdapterConfigBase.from_dict({**SeqBnConfig().to_dict(), "leave_out": [0, 1],
                                          "reduction_factor": {0: 4, "default": 16}})
    assert config.leave_out == (0, 1)
    assert config.reduction_factor == {"0": 4, "default": 16}
    assert (config.reduction_for(0), config.reduction_for(1)) == (4, 16)


def test_reduction_dict_without_default_fails_for_an_unlisted_layer():
    """A ValueError, and the KeyError AdapterHub raises, with the message unquoted."""
    config = SeqBnConfig(reduction_factor={"0": 4})
    with pytest.raises(ValueError, match="no entry for layer 1") as raised:
        config.reduction_for(1)
    assert isinstance(raised.value, KeyError) and str(raised.value).startswith("reduction_factor {'0': 4}")


def test_from_dict_refuses_an_unknown_key_and_lists_the_fields():
    with pytest.raises(ValueError, match=r"no field\(s\) \['speed'\].*valid fields.*reduction_factor"):
        AdapterConfigBase.from_dict({**SeqBnConfig().to_dict(), "speed": 2})


def test_from_dict_refuses_an_unknown_architecture():
    with pytest.raises(ValueError, match="'made_up' is not known"):
        AdapterConfigBase.from_dict({"architecture": "made_up", "r": 1})


# ---- "name[key=value, ...]" ---------------------------------------------------------------------------------


def test_overrides_parse_bare_words_and_literals():
    config = parse("seq_bn[reduction_factor=8, non_linearity=gelu]")
    assert (config.reduction_factor, config.non_linearity) == (8, "gelu")
    assert config.to_dict() == adapters.AdapterConfig.load("seq_bn[reduction_factor=8, non_linearity='gelu']").to_dict()


@pytest.mark.parametrize("text", [
    "seq_bn[reduction_factor={'0': 4, 'default': 16}, leave_out=[1, 0]]",
    "double_seq_bn[non_linearity='relu', leave_out=[0, 1], ln_before=True]",
    'pfeiffer[non_linearity="tanh", scaling="learned"]',
    "par_bn[scaling=2.0, reduction_factor={'default': 4}]",
])
def test_nested_brackets_and_quotes_parse_as_adapterhub_parses_them(text):
    assert parse(text).to_dict() == adapters.AdapterConfig.load(text).to_dict()


def test_spaces_around_names_and_values_are_allowed():
    assert parse(' pfeiffer [ non_linearity = "tanh" , scaling = learned ] ') == SeqBnConfig(non_linearity="tanh",
                                                                                              scaling="learned")


def test_a_comma_inside_quotes_does_not_split_overrides():
    with pytest.raises(ValueError, match=r"non_linearity='a,b'"):
        parse("seq_bn[non_linearity='a,b']")


def test_no_overrides_give_the_registry_entry_itself():
    assert parse("houlsby") is ADAPTER_CONFIG_MAP["double_seq_bn"]
    assert parse("seq_bn[]") is ADAPTER_CONFIG_MAP["seq_bn"]


@pytest.mark.parametrize("text", ["seq_bn[reduction_factor]", "seq_bn[=3]", "seq_bn[reduction_factor=8"])
def test_malformed_override_strings_are_refused(text):
    with pytest.raises(ValueError, match="key=value|not 'name'"):
        parse(text)


def test_unknown_config_name_lists_the_known_names():
    with pytest.raises(ValueError, match=r"unknown adapter config 'pfeifer'.*'double_seq_bn'.*'seq_bn'"):
        parse("pfeifer")


def test_unknown_override_field_is_named():
    """A TypeError, as an unknown keyword argument is (and AdapterHub raises)."""
    with pytest.raises(TypeError, match=r"\['speed'\].*valid fields"):
        parse("seq_bn[speed=3]")


def test_a_union_replaces_a_plain_field_in_every_member_and_indexes_its_members():
    union = ConfigUnion(LoRAConfig(), SeqBnConfig())
    replaced = union.replace(leave_out=[0])
    assert replaced[0] == LoRAConfig(leave_out=[0]) and replaced[1] == SeqBnConfig(leave_out=[0])
    assert union.replace(**{"1.reduction_factor": 4})["1.reduction_factor"] == 4


# ---- load ---------------------------------------------------------------------------------------------------


def test_load_takes_a_name_a_dict_or_a_config():
    expected = SeqBnConfig().to_dict()
    assert AdapterConfigBase.load("seq_bn").to_dict() == expected
    assert AdapterConfigBase.load(expected).to_dict() == expected
    config = SeqBnConfig()
    assert AdapterConfigBase.load(config) is config


def test_load_applies_overrides_after_the_string_overrides():
    config = AdapterConfigBase.load("seq_bn[reduction_factor=8]", non_linearity="gelu")
    assert (config.reduction_factor, config.non_linearity) == (8, "gelu")
    assert AdapterConfigBase.load(SeqBnConfig(), reduction_factor=4).reduction_factor == 4
    assert AdapterConfigBase.load(SeqBnConfig().to_dict(), leave_out=[0]).leave_out == (0,)


def test_load_ignores_none_overrides_as_adapterhub_does():
    ours = AdapterConfigBase.load("seq_bn", reduction_factor=None, dropout=0.1)
    assert ours.to_dict() == adapters.AdapterConfig.load("seq_bn", reduction_factor=None, dropout=0.1).to_dict()
    assert ours.reduction_factor == 16


def test_load_refuses_other_types():
    with pytest.raises(TypeError, match="a name, a dict or a config object, got int"):
        AdapterConfigBase.load(16)


# ---- validation ---------------------------------------------------------------------------------------------

INVALID = [  # (changes to SeqBnConfig, exception, text the message must contain)
    (dict(reduction_factor="x"), TypeError, "reduction_factor must be a positive number"),
    (dict(reduction_factor=True), TypeError, "reduction_factor must be a positive number"),
    (dict(reduction_factor=0), ValueError, "reduction_factor must be positive"),
    (dict(reduction_factor=-4), ValueError, "reduction_factor must be positive"),
    (dict(reduction_factor={"first": 4}), ValueError, "reduction_factor keys are layer indices or 'default'"),
    (dict(reduction_factor={"default": 0}), ValueError, r"reduction_factor\['default'\] must be positive"),
    (dict(non_linearity="swiglu"), ValueError, "non_linearity='swiglu' is not supported; use one of"),
    (dict(residual_before_ln="maybe"), ValueError, "residual_before_ln='maybe' is not supported"),
    (dict(residual_before_ln=0), ValueError, "residual_before_ln=0 is not supported"),
    (dict(residual_before_ln=1), ValueError, "residual_before_ln=1 is not supported"),
    (dict(scaling="huge"), ValueError, "scaling='huge' is not supported; use one of"),
    (dict(inv_adapter="real-nvp"), ValueError, "inv_adapter='real-nvp' is not supported"),
    (dict(inv_adapter="nice", inv_adapter_reduction_factor=None), TypeError, "inv_adapter_reduction_factor"),
    (dict(init_weights="xavier"), ValueError, "init_weights='xavier'"),
    (dict(dropout=1.5), ValueError, r"dropout must lie in \[0, 1\)"),
    (dict(dropout=-0.1), ValueError, r"dropout must lie in \[0, 1\)"),
    (dict(leave_out=[-1]), ValueError, "leave_out holds -1"),
    (dict(leave_out=["0"]), TypeError, "leave_out must be"),
    (dict(leave_out=3), TypeError, "leave_out must be a list"),
    (dict(mh_adapter="yes"), TypeError, "mh_adapter must be True or False"),
    (dict(ln_before=1), TypeError, "ln_before must be True or False"),
    (dict(init_weights_seed=1.5), TypeError, "init_weights_seed must be an int"),
    (dict(cross_adapter=True), ValueError, "cross_adapter=True"),
    (dict(mh_adapter=False, output_adapter=False), ValueError, "places nothing"),
]


@pytest.mark.parametrize(("changes", "error", "message"), INVALID, ids=lambda v: repr(v) if isinstance(v, dict) else "")
def test_invalid_value_is_refused_naming_the_field(changes, error, message):
    with pytest.raises(error, match=message):
        SeqBnConfig(**changes)
    with pytest.raises(error, match=message):  # replace validates too
        SeqBnConfig().replace(**changes)


def test_a_config_with_only_an_invertible_adapter_places_something():
    config = SeqBnConfig(mh_adapter=False, output_adapter=False, inv_adapter="glow", inv_adapter_reduction_factor=2)
    assert config.inv_adapter == "glow"


def test_unknown_constructor_or_replace_field_is_named():
    with pytest.raises(TypeError, match="speed"):
        SeqBnConfig(speed=2)
    with pytest.raises(TypeError, match=r"\['speed'\].*valid fields"):
        SeqBnConfig().replace(speed=2)


def test_configs_are_frozen():
    config = SeqBnConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.reduction_factor = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        ADAPTER_CONFIG_MAP["seq_bn"].leave_out = (0,)
    assert config.replace(reduction_factor=4).reduction_factor == 4 and config.reduction_factor == 16


def test_integer_scaling_is_stored_as_a_float():
    assert SeqBnConfig(scaling=2).scaling == 2.0 and isinstance(SeqBnConfig(scaling=2).scaling, float)


# ---- unions whose members leave layers out --------------------------------------------------------------------

WITH_LEAVE_OUT = [  # AdapterHub's own case (tests/test_misc/test_adapter_config.py), and others it accepts
    (SeqBnConfig(leave_out=[9, 10, 11], reduction_factor=2), SeqBnConfig(leave_out=list(range(9)))),
    (LoRAConfig(leave_out=[0]), SeqBnConfig(leave_out=[1])),
    (LoRAConfig(leave_out=[0]), LoRAConfig(leave_out=[1], r=4)),
    (DoubleSeqBnConfig(leave_out=[0]), ParBnConfig()),  # they meet in layer 1 of a 2-layer model: add_adapter says so
]


@pytest.mark.parametrize("configs", WITH_LEAVE_OUT, ids=lambda configs: "|".join(type(c).__name__ for c in configs))
def test_a_union_of_one_method_with_a_leave_out_is_left_to_the_model_as_adapterhub_leaves_it(configs):
    """Whether two configs of one method meet depends on the model's depth, so neither library decides it here."""
    union = ConfigUnion(*configs)
    assert ConfigUnion.from_dict(json.loads(json.dumps(union.to_dict()))) == union
    theirs = adapters.ConfigUnion(*(adapters.AdapterConfig.load(config.to_dict()) for config in configs))
    assert theirs.to_dict() == union.to_dict()


def placed(model, name: str) -> dict[int, dict[str, tuple[str, int]]]:
    """{layer: {site: (module class, its width)}} of adapter ``name``: a bottleneck's, or a LoRA's rank."""
    layers: dict[int, dict[str, tuple[str, int]]] = {}
    for _, layer, site, m in model.iter_adapters(name):
        layers.setdefault(layer, {})[site] = (type(m).__name__,
                                              m.down.out_features if hasattr(m, "down") else m.lora_A.shape[0])
    return layers


@pytest.mark.parametrize(("configs", "expected"), [
    ((SeqBnConfig(leave_out=[1]), SeqBnConfig(leave_out=[0], reduction_factor=2)),
     {0: {"ffn.residual": ("Bottleneck", 2)}, 1: {"ffn.residual": ("Bottleneck", 16)}}),
    ((LoRAConfig(leave_out=[0]), SeqBnConfig(leave_out=[1])),
     {0: {"ffn.residual": ("Bottleneck", 2)}, 1: {"attn.q": ("LoRA", 8), "attn.v": ("LoRA", 8)}}),
    ((LoRAConfig(leave_out=[0], r=2), LoRAConfig(leave_out=[1], r=4, attn_matrices=["k"], output_lora=True)),
     {0: {"attn.k": ("LoRA", 4), "ffn.output": ("LoRA", 4)}, 1: {"attn.q": ("LoRA", 2), "attn.v": ("LoRA", 2)}}),
])
def test_a_union_places_each_member_in_the_layers_it_keeps(configs, expected):
    model = tiny_model()  # 2 layers, hidden size 32
    model.add_adapter("a", ConfigUnion(*configs))
    assert placed(model, "a") == expected


def adapterhub_tiny() -> tf.BertModel:
    """A transformers BERT of tiny_model's size, with AdapterHub's adapter support."""
    model = tf.BertModel(tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=37, vocab_size=100))
    adapters.init(model)
    return model


def test_members_that_meet_in_a_layer_are_refused_when_the_adapter_is_added_as_in_adapterhub():
    union = ConfigUnion(DoubleSeqBnConfig(leave_out=[0]), ParBnConfig())
    model = tiny_model()
    with pytest.raises(ValueError, match=r"places two modules at layers\.1\.ffn\.residual"):
        model.add_adapter("a", union)
    assert not model.adapter_configs and not any(site.module.adapters for site in model.sites_found)
    theirs = adapterhub_tiny()
    with pytest.raises(ValueError, match="conflict for adapter 'a' in layer 1"):
        theirs.add_adapter("a", config=adapters.AdapterConfig.load(union.to_dict()))


def test_the_same_union_fits_a_shallow_model_and_is_refused_on_a_deeper_one():
    union = ConfigUnion(LoRAConfig(leave_out=[0]), LoRAConfig(leave_out=[1], attn_matrices=["v"]))
    tiny_model().add_adapter("a", union)
    with pytest.raises(ValueError, match=r"places two modules at layers\.2\.attn\.v"):
        tiny_model(num_hidden_layers=3).add_adapter("a", union)


def test_adapterhub_refuses_two_lora_members_in_disjoint_layers_ours_places_them():
    """AdapterHub's add_adapter matches a union's LoRA members once with no layer (for VeRA's shared matrices), so it
    finds two wherever they sit; they share nothing in AdapterHub or ours."""
    union = ConfigUnion(LoRAConfig(leave_out=[0]), LoRAConfig(leave_out=[1]))
    theirs = adapterhub_tiny()
    with pytest.raises(ValueError, match="conflict for adapter 'a' in layer None"):
        theirs.add_adapter("a", config=adapters.AdapterConfig.load(union.to_dict()))
    model = tiny_model()
    model.add_adapter("a", union)
    assert sorted(model.get_adapter("a")) == [0, 1]


def test_two_prefix_tuning_configs_are_refused_whatever_their_leave_out():
    """An adapter has one prefix pool; AdapterHub accepts the union and refuses it in add_adapter."""
    configs = (PrefixTuningConfig(leave_out=[0]), PrefixTuningConfig(leave_out=[1]))
    with pytest.raises(ValueError, match="two prefix_tuning configs, but an adapter has one prefix pool"):
        ConfigUnion(*configs)
    theirs = adapters.ConfigUnion(*(adapters.AdapterConfig.load(config.to_dict()) for config in configs))
    with pytest.raises(ValueError, match="conflict for adapter 'a'"):
        adapterhub_tiny().add_adapter("a", config=theirs)


def test_a_union_of_bottlenecks_in_disjoint_layers_gives_adapterhubs_outputs_both_ways(adapterhub_trained, tmp_path):
    union = ConfigUnion(SeqBnConfig(leave_out=[1]), DoubleSeqBnConfig(leave_out=[0], reduction_factor=2))
    directory, theirs, ids, mask = adapterhub_trained("bert", union.to_dict())
    assert assert_adapterhub_round_trip(directory, theirs, ids, mask, tmp_path).adapter_configs["a"] == union


def test_an_override_that_is_neither_a_literal_nor_a_bare_word_is_refused():
    assert parse("seq_bn[non_linearity=gelu_new]").non_linearity == "gelu_new"
    with pytest.raises(ValueError, match=r"'dict\(default=1\)' is neither a Python literal nor a bare word"):
        parse("double_seq_bn[reduction_factor=dict(default=1)]")
