"""ConfigUnion, MAM and UniPELT: AdapterHub's definitions, validation, and parity as one adapter."""

from __future__ import annotations

import adapters
import pytest

from peftcore import (
    DoubleSeqBnConfig,
    LoRAConfig,
    MAMConfig,
    ParBnConfig,
    PrefixTuningConfig,
    SeqBnConfig,
    UniPELTConfig,
)
from peftcore.configs import AdapterConfigBase, ConfigUnion, parse
from tests.parity import assert_adapterhub_round_trip

UNIONS = ["mam[0.prefix_length=4, 0.bottleneck_size=16]", "unipelt", "seq_bn[ln_before=True]|lora[r=2]",
          "double_seq_bn[mh_adapter=False]|houlsby[output_adapter=False, ln_before=True]",
          "prefix_tuning[prefix_length=2]|ia3"]


def test_mam_and_unipelt_are_adapterhubs_unions():
    assert MAMConfig().to_dict() == adapters.MAMConfig().to_dict()
    assert UniPELTConfig().to_dict() == adapters.UniPELTConfig().to_dict()


@pytest.mark.parametrize("text", UNIONS)
def test_union_round_trips_through_a_dict(text):
    config = parse(text)  # members come back as their base class (BnConfig, LoRAConfig), as in AdapterHub
    assert AdapterConfigBase.from_dict(config.to_dict()).to_dict() == config.to_dict()


@pytest.mark.parametrize("text", UNIONS)
def test_union_trained_by_adapterhub_gives_its_outputs_both_ways(adapterhub_trained, text, tmp_path):
    directory, theirs, ids, mask = adapterhub_trained("bert", parse(text).to_dict())
    assert_adapterhub_round_trip(directory, theirs, ids, mask, tmp_path)


@pytest.mark.parametrize(("configs", "message"), [
    ((LoRAConfig(), LoRAConfig(r=4)), "two lora configs"),
    ((SeqBnConfig(), ParBnConfig()), "two bottleneck configs"),
    ((PrefixTuningConfig(),), "at least two"),
    ((ConfigUnion(LoRAConfig(), SeqBnConfig()), PrefixTuningConfig()), "not unions"),
])
def test_conflicting_unions_are_refused(configs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ConfigUnion(*configs)


def test_bottlenecks_at_different_sites_may_be_combined():
    union = ConfigUnion(DoubleSeqBnConfig(output_adapter=False), SeqBnConfig())
    assert union.replace(**{"1.reduction_factor": 4}).configs[1].reduction_factor == 4
    assert [config.reduction_factor for config in union.replace(reduction_factor=4).configs] == [4, 4]
    with pytest.raises(ValueError, match="'N.field'"):
        union.replace(**{"2.reduction_factor": 4})
