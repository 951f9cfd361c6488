"""UniPELT gating: gated methods equal AdapterHub, and their gate values come back on request in its layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftcore.models import BertModel, RobertaModel
from tests.parity import assert_parity

OURS = {"bert": BertModel, "roberta": RobertaModel}


@pytest.mark.parametrize("arch", OURS)
@pytest.mark.parametrize("config", ["unipelt", "seq_bn[use_gating=True]", "lora[use_gating=True]",
                                    "prefix_tuning[prefix_length=3, bottleneck_size=8, use_gating=True]"])
def test_gating_scores_equal_adapterhubs(adapterhub_trained, arch, config, tmp_path):
    directory, theirs, ids, mask = adapterhub_trained(arch, config)
    ours = OURS[arch].from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, output_adapter_gating_scores=True)
        got = ours(input_ids=ids, attention_mask=mask, output_adapter_gating_scores=True)
    assert_parity(got.last_hidden_state, expected.last_hidden_state, mask=mask)
    theirs_scores, ours_scores = expected.adapter_gating_scores["a"], got.adapter_gating_scores["a"]
    assert {layer: set(locations) for layer, locations in ours_scores.items()} == \
        {layer: set(locations) for layer, locations in theirs_scores.items()}
    for layer, locations in theirs_scores.items():
        for location, score in locations.items():
            assert ours_scores[layer][location].shape == score.shape
            np.testing.assert_allclose(ours_scores[layer][location], score, atol=1e-6)


def test_ungated_adapters_report_no_scores_and_recording_is_off_by_default():
    model = BertModel(BertModel.config_class(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=24)).eval()
    model.add_adapter("plain", "par_bn", set_active=True)  # AdapterHub reports its up-projection here: a bug
    ids = torch.randint(0, 50, (2, 5))
    assert model(input_ids=ids).adapter_gating_scores is None
    assert model(input_ids=ids, output_adapter_gating_scores=True).adapter_gating_scores == {}
    assert all(getattr(module, "record", None) is None for *_, module in model.iter_adapters())


def test_gated_adapters_cannot_merge():
    model = BertModel(BertModel.config_class(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=24))
    model.add_adapter("u", "unipelt")
    with pytest.raises(ValueError, match="only LoRA|gated"):
        model.merge_adapter("u")
