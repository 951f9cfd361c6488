"""Adapter configs: AdapterHub's names and exact defaults, strict dict round trips, the "name[k=v]" syntax,
``AdapterConfigBase.load``, and validation that names the offending field."""

from __future__ import annotations

import dataclasses
import json

import adapters
import pytest

import peftcore
from peftcore import BnConfig, DoubleSeqBnConfig, LoRAConfig, SeqBnConfig
from peftcore.configs import ADAPTER_CONFIG_MAP, DEFAULT_ADAPTER_CONFIG, AdapterConfigBase, parse

# our config classes (and factories) that AdapterHub 1.3.0 exports under the same name, callable without arguments
SAME_NAMED = sorted(name for name in peftcore.__all__ if name.endswith("Config") and hasattr(adapters, name)
                    and name not in ("AdapterConfig", "BnConfig", "AdapterFusionConfig"))
# the pre-1.0 class names AdapterHub keeps only as registry keys
LEGACY_NAMES = {"PfeifferConfig": "pfeiffer", "HoulsbyConfig": "houlsby", "ParallelConfig": "parallel",
                "PfeifferInvConfig": "pfeiffer+inv", "HoulsbyInvConfig": "houlsby+inv"}


# ---- AdapterHub's defaults ----------------------------------------------------------------------------------


def test_registry_is_a_subset_of_adapterhubs_with_the_same_default():
    assert set(ADAPTER_CONFIG_MAP) <= set(adapters.ADAPTER_CONFIG_MAP)
    assert DEFAULT_ADAPTER_CONFIG == adapters.DEFAULT_ADAPTER_CONFIG


@pytest.mark.parametrize("name", sorted(ADAPTER_CONFIG_MAP))
def test_registry_entry_has_adapterhubs_exact_fields_and_defaults(name):
    ours, theirs = ADAPTER_CONFIG_MAP[name].to_dict(), adapters.ADAPTER_CONFIG_MAP[name].to_dict()
    assert sorted(ours) == sorted(theirs)
    for field, value in theirs.items():
        assert ours[field] == value, f"{name}.{field}: ours {ours[field]!r}, AdapterHub {value!r}"


@pytest.mark.parametrize("name", SAME_NAMED)
def test_same_named_config_class_has_adapterhubs_defaults(name):
    assert getattr(peftcore, name)().to_dict() == getattr(adapters, name)().to_dict()


@pytest.mark.parametrize(("name", "key"), sorted(LEGACY_NAMES.items()))
def test_legacy_class_names_are_the_legacy_registry_entries(name, key):
    assert getattr(peftcore, name)().to_dict() == adapters.ADAPTER_CONFIG_MAP[key].to_dict()


def test_bn_config_has_exactly_adapterhubs_fields():
    ours = {field.name for field in dataclasses.fields(BnConfig)}
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
    assert again.to_dict() == config.to_dict()
    assert isinstance(again, BnConfig if isinstance(config, BnConfig) else type(config))


def test_from_dict_normalises_sequences_and_layer_keys():
    config = AdapterConfigBase.from_dict({**SeqBnConfig().to_dict(), "leave_out": [0, 1],
                                          "reduction_factor": {0: 4, "default": 16}})
    assert config.leave_out == (0, 1)
    assert config.reduction_factor == {"0": 4, "default": 16}
    assert (config.reduction_for(0), config.reduction_for(1)) == (4, 16)


def test_reduction_dict_without_default_fails_for_an_unlisted_layer():
    config = SeqBnConfig(reduction_factor={"0": 4})
    with pytest.raises(ValueError, match="no entry for layer 1"):
        config.reduction_for(1)


def test_from_dict_refuses_an_unknown_key_and_lists_the_fields():
    with pytest.raises(ValueError, match=r"no field\(s\) \['speed'\].*valid fields.*reduction_factor"):
        AdapterConfigBase.from_dict({**SeqBnConfig().to_dict(), "speed": 2})


def test_from_dict_refuses_an_unknown_architecture():
    with pytest.raises(ValueError, match="'reft' is not known"):
        AdapterConfigBase.from_dict({"architecture": "reft", "r": 1})


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
    with pytest.raises(ValueError, match=r"\['speed'\].*valid fields"):
        parse("seq_bn[speed=3]")


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
    (dict(non_linearity="mish"), ValueError, "non_linearity='mish' is not supported; use one of"),
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
    with pytest.raises(ValueError, match=r"\['speed'\].*valid fields"):
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
