"""Adapter non-linearities: exactly the names AdapterHub 1.3.0's adapters accept (and old files' ``gelu_orig``), each
computing what AdapterHub's ``Activation_Function_Class`` computes, and the learned ones (``prelu``, ``xielu``) moving
with their adapter's tensors between AdapterHub's files and ours."""

from __future__ import annotations

import pytest
import torch
from adapters.methods.modeling import Activation_Function_Class
from adapters.utils import ACTIVATION_RENAME
from transformers.activations import ACT2FN

from peftcore import PrefixTuningConfig, SeqBnConfig
from peftcore.configs import parse
from peftcore.methods.activations import NAMES, non_linearity
from peftcore.methods.bottleneck import Bottleneck
from tests.parity import assert_adapterhub_round_trip


def adapterhubs(name: str) -> torch.nn.Module:
    """AdapterHub's activation for ``name``, in float32, as it reads ``name`` from an old file (no "version")."""
    return Activation_Function_Class(ACTIVATION_RENAME["gelu_orig"] if name == "gelu_orig" else name).float()


def test_the_names_are_adapterhubs_plus_gelu_orig_of_old_files():
    assert set(NAMES) == set(ACT2FN) | {"leakyrelu", "gelu_orig"}


@pytest.mark.parametrize("name", NAMES)
def test_each_activation_computes_adapterhubs(name):
    theirs = adapterhubs(name)
    ours = non_linearity(name)
    ours.load_state_dict(theirs.state_dict())  # a learned one's tensors, under the same names
    x = 6 * torch.randn(4, 9, 32, generator=torch.Generator().manual_seed(0))  # past gelu_10's clip and laplace's tails
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_gelu_orig_is_the_exact_gelu_adapterhub_renames_it_to_in_old_files():
    """AdapterHub refuses the name in a config and reads it only from files without a version; we take it anywhere."""
    assert ACTIVATION_RENAME["gelu_orig"] == "gelu"
    with pytest.raises(KeyError):
        Activation_Function_Class("gelu_orig")
    assert SeqBnConfig(non_linearity="gelu_orig").to_dict()["non_linearity"] == "gelu_orig"


@pytest.mark.parametrize("name", ["GELU", "Swish", "LeakyReLU", "PReLU", "Gelu_Orig"])
def test_names_are_read_in_any_case_as_adapterhub_reads_them(name):
    config = SeqBnConfig(non_linearity=name)
    assert config.non_linearity == name
    x = torch.randn(3, 8)
    torch.testing.assert_close(non_linearity(name)(x), non_linearity(name.lower())(x), rtol=0, atol=0)


@pytest.mark.parametrize("config_class", [SeqBnConfig, PrefixTuningConfig])
def test_an_unknown_or_non_string_activation_is_refused_listing_the_names(config_class):
    with pytest.raises(ValueError, match=r"non_linearity='swiglu' is not supported; use one of \[.*'gelu_orig'"):
        config_class(non_linearity="swiglu")
    with pytest.raises(TypeError, match="non_linearity must be an activation name"):
        config_class(non_linearity=None)


def test_transformers_keeps_xielus_parameters_in_bfloat16_ours_follow_the_model():
    """transformers' xIELU holds its two learned scalars in bfloat16 in any model, so a float32 adapter's updates
    below bfloat16's resolution are lost and its outputs differ from float32 math by ~1e-3. Ours are float32 in a
    float32 model; given the same values (the test above casts theirs), the outputs agree."""
    assert Activation_Function_Class("xielu").f.alpha_p.dtype == torch.bfloat16
    assert non_linearity("xielu").f.alpha_p.dtype == torch.float32


def test_a_bottlenecks_learned_activation_is_one_of_its_parameters_under_both_adapterhub_names():
    module = Bottleneck(SeqBnConfig(non_linearity="prelu", ln_before=True), 32, 0)
    assert "act.weight" in dict(module.named_parameters())
    assert Bottleneck.adapterhub_names(module.config, "act.weight") == ("adapter_down.2.f.weight",
                                                                        "non_linearity.f.weight")


@pytest.mark.parametrize("text", ["seq_bn[non_linearity='prelu']", "seq_bn_inv[non_linearity='PReLU']",
                                  "double_seq_bn[non_linearity='relu6', ln_before=True]",
                                  "prefix_tuning[prefix_length=2, bottleneck_size=8, non_linearity='prelu']"])
def test_adapters_with_adapterhubs_newer_activations_give_its_outputs_both_ways(adapterhub_trained, text, tmp_path):
    directory, theirs, ids, mask = adapterhub_trained("bert", parse(text).to_dict())
    assert_adapterhub_round_trip(directory, theirs, ids, mask, tmp_path)
