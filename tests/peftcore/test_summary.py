"""adapter_summary: parameter counts equal AdapterHub's to the parameter on bert-base, roberta-base, xlm-roberta-base
and electra-base shapes, and the printed table is AdapterHub's, character for character.

Both models are built at full size on the meta device: counts and the table depend on shapes only, and no forward runs,
so nothing needs allocating or initialising. Shapes are the registry's "base" variant: bert-base's, roberta-base's
released shapes (514 positions, one token type), which are our RobertaConfig's defaults, xlm-roberta-base's (RoBERTa's
with 250,002 tokens) and electra-base-discriminator's (BERT's, its embeddings as wide as its layers).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import adapters
import pytest
import torch

from peftcore import AdapterPlusConfig
from tests.archs import ARCHS, BASE_SIZED

CONFIGS = ["seq_bn", "double_seq_bn", "par_bn", "scaled_par_bn", "seq_bn_inv", "double_seq_bn_inv",
           "pfeiffer", "houlsby", "parallel", "scaled_parallel", "pfeiffer+inv", "houlsby+inv",
           "seq_bn[ln_before=True, ln_after=True, use_gating=True, scaling='channel']",
           "double_seq_bn[reduction_factor={'0': 4, 'default': 16}, leave_out=[11]]",
           "par_bn[use_gating=True, init_weights='houlsby']",
           "seq_bn[inv_adapter='glow', inv_adapter_reduction_factor=4]",
           "compacter", "compacter++", "prefix_tuning", "prefix_tuning_flat", "lora", "ia3", "dora", "mam", "unipelt",
           "lora[r=4, attn_matrices=['q', 'k', 'v'], intermediate_lora=True, output_lora=True, use_gating=True]",
           "loreft", "noreft", "direft", "loreft[suffix_positions=2, tied_weights=True, layers=[0, 3]]",
           "prompt_tuning[prompt_length=20]", "mtl_lora",
           "mtl_lora[n_up_projection=3, r=4, intermediate_lora=True, output_lora=True, use_gating=True]"]


def adapter_name(config: str) -> str:
    return f"adapter_{CONFIGS.index(config)}"


def base_size_models(arch: str, added: Iterable[tuple[str, Any, Any]]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """AdapterHub's and our model of ``arch`` at its base shapes, on the meta device, with each adapter of ``added``
    (name, AdapterHub's config or None for ours alone, our config)."""
    entry = ARCHS[arch]
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        theirs, ours = entry.hf[None](entry.hf_config("base")), entry.model(entry.config("base"))
        adapters.init(theirs)
        for name, their_config, our_config in added:
            if their_config is not None:
                theirs.add_adapter(name, config=their_config)
            ours.add_adapter(name, our_config)
    return theirs, ours


@pytest.fixture(scope="module", params=BASE_SIZED)
def base_size_pair(request):
    """AdapterHub's and our base-size model, built once per architecture, with every config of CONFIGS added."""
    theirs, ours = base_size_models(request.param, [(adapter_name(config), config, config) for config in CONFIGS])
    assert all(p.is_meta for p in ours.parameters())  # AdapterHub's PHM layers allocate real tensors regardless
    return theirs, ours


@pytest.fixture(scope="module")
def summary_rows(base_size_pair):
    """(AdapterHub's, our) ``adapter_summary(as_dict=True)`` rows, once per architecture: AdapterHub takes most of a
    second for each."""
    theirs, ours = base_size_pair
    return theirs.adapter_summary(as_dict=True), ours.adapter_summary(as_dict=True)


@pytest.mark.parametrize("config", CONFIGS)
def test_adapter_parameter_count_equals_adapterhubs(summary_rows, config):
    their_rows, our_rows = summary_rows
    name = adapter_name(config)
    their_row = next(row for row in their_rows if row["name"] == name)
    our_row = next(row for row in our_rows if row["name"] == name)
    assert our_row["#param"] == their_row["#param"]
    assert our_row == their_row  # architecture, %param, active and train too


def test_adapterplus_parameter_count_at_roberta_base_equals_adapterhubs():
    # AdapterHub's stochastic depth needs torchvision; it changes no count
    theirs, ours = base_size_models("roberta", [("a", adapters.AdapterPlusConfig(stochastic_depth=0.0),
                                                 AdapterPlusConfig())])
    assert ours.adapter_summary(as_dict=True)[0] == theirs.adapter_summary(as_dict=True)[0]


def test_full_model_row_counts_the_encoder_without_adapters_as_adapterhub_does(base_size_pair, summary_rows):
    _, ours = base_size_pair
    their_rows, our_rows = summary_rows
    assert [row["name"] for row in our_rows] == [row["name"] for row in their_rows]
    assert our_rows[-1] == their_rows[-1]
    assert our_rows[-1]["#param"] == sum(p.numel() for p in ours.parameters()) - sum(r["#param"] for r in our_rows[:-1])


def test_printed_summary_equals_adapterhubs_character_for_character(base_size_pair):
    """One adapter training, the others inactive, the base frozen: every column of the table in play. Both models
    change alike, so the other tests' comparisons hold in any order."""
    theirs, ours = base_size_pair
    for model in (theirs, ours):
        model.train_adapter(adapter_name("houlsby"))
    table = ours.adapter_summary()
    assert table == theirs.adapter_summary()
    assert f"{adapter_name('houlsby'):<25}bottleneck        1,789,056" in table


@pytest.fixture(scope="module")
def vera_rows():
    """AdapterHub's and our summary rows at roberta-base shape for VeRA and DVoRA, ours also with vera_dense."""
    theirs, ours = base_size_models("roberta", [entry for config in ("vera", "dvora") for entry in (
        (config, config, config), (f"{config}_dense", None, f"{config}[vera_dense=True]"))])
    return tuple({row["name"]: row["#param"] for row in rows} for rows in (theirs.adapter_summary(as_dict=True),
                                                                          ours.adapter_summary(as_dict=True)))


@pytest.mark.parametrize("config", ["vera", "dvora"])
def test_vera_counts_the_published_vectors_where_adapterhub_counts_dense_matrices(vera_rows, config):
    """AdapterHub trains vera_D (r, r) and vera_B (out, out) per linear (12 layers x query, value at roberta-base:
    14.2M for VeRA, more than LoRA's 295k); ours the vectors d (r,) and b (out,), and AdapterHub's count with
    vera_dense=True. Both count the shared frozen A (r, 768) and B (768, r), as AdapterHub does."""
    theirs, ours = vera_rows
    linears, r, width = 24, 8, 768
    shared, magnitude = 2 * r * width, width if config == "dvora" else 0
    assert theirs[config] == linears * (r * r + width * width + magnitude) + shared
    assert ours[config] == linears * (r + width + magnitude) + shared
    assert ours[f"{config}_dense"] == theirs[config]
