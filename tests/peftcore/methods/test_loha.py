"""LoHa against HF PEFT 0.21.2: adapters PEFT trained and saved load with its outputs, ours saved for PEFT load in it
with ours, training-time rank and module dropout draw as PEFT's, merge/reset is exact, and what it cannot hold is
refused."""

from __future__ import annotations

import warnings

import peft
import pytest
import torch

from peftcore import LoHaConfig
from tests import archs
from tests.archs import ARCHS
from tests.parity import assert_parity
from tests.peftcore.interop.test_peft import SEQ_CLS, assert_same_outputs, inputs, reference, train_in_peft

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def assert_round_trip_and_exact_merge(arch, theirs, directory, batch, tmp_path) -> None:
    """Ours loaded from PEFT's file in ``directory``/a: its outputs; saved for PEFT and loaded there: ours again;
    merged: the same outputs; reset: the weights bit for bit."""
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rank_pattern pads ranks
        ours.load_adapter(tmp_path / "a", set_active=True)
    assert_same_outputs(ours, theirs, batch)
    ours.save_adapter(tmp_path / "back", "a", format="peft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT: a new classifier; fan_in_fan_out, which LyCORIS configs lack
        again = peft.PeftModel.from_pretrained(ARCHS[arch].hf["sequence_classification"].from_pretrained(directory),
                                               tmp_path / "back").eval()
    assert_same_outputs(ours, again, batch)
    weights = {key: t.clone() for key, t in ours.state_dict().items()}
    with torch.no_grad():
        before = ours(**batch).logits
        ours.merge_adapter("a")
        assert_parity(ours(**batch).logits, before)
        ours.reset_adapter("a")
    assert all(torch.equal(t, weights[key]) for key, t in ours.state_dict().items())


CASES = [
    ("bert", peft.LoHaConfig(r=4, alpha=6, target_modules=["query", "value", "intermediate.dense"],
                             rank_pattern={"value": 2}, alpha_pattern={"query": 3}, **SEQ_CLS)),
    ("roberta", peft.LoHaConfig(r=2, alpha=4, target_modules=r".*\.(key|\d\.output\.dense)", **SEQ_CLS)),
]


@pytest.mark.parametrize("arch, config", CASES, ids=["bert", "roberta"])
def test_peft_trained_loha_loads_with_its_outputs_and_ours_loads_in_peft(hf_checkpoint, arch, config, tmp_path):
    directory, model = reference(hf_checkpoint, arch)
    batch = inputs(arch)
    theirs = train_in_peft(model, config, batch, tmp_path / "a")
    assert_round_trip_and_exact_merge(arch, theirs, directory, batch, tmp_path)


def test_rank_and_module_dropout_draw_as_peft_in_training(hf_checkpoint, tmp_path):
    directory, model = archs.reference(hf_checkpoint, "bert", "sequence_classification", **NO_DROPOUT)
    config = peft.LoHaConfig(r=4, alpha=64, target_modules=["query", "key"], init_weights=False, rank_dropout=0.5,
                             module_dropout=0.5, **SEQ_CLS)
    theirs = peft.get_peft_model(model, config)
    theirs.save_pretrained(tmp_path / "a")
    ours = ARCHS["bert"].model.from_pretrained(directory)
    ours.load_adapter(tmp_path / "a", set_active=True)
    batch = inputs("bert")
    theirs.train(), ours.train()
    outputs = []
    for seed in range(4):  # some draws skip a module, all drop rows
        torch.manual_seed(seed)
        outputs.append(theirs(**batch, output_hidden_states=True).hidden_states[-1])
        torch.manual_seed(seed)
        assert_parity(ours(**batch, output_hidden_states=True).hidden_states[-1], outputs[-1],
                      mask=batch["attention_mask"])
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3  # the draws matter


def test_defaults_are_pefts():
    fields = ("r", "alpha", "rank_dropout", "module_dropout", "init_weights", "use_effective_conv2d")
    assert {field: getattr(LoHaConfig(), field) for field in fields} == \
        {field: getattr(peft.LoHaConfig(), field) for field in fields}


@pytest.mark.parametrize("fields, message", [
    (dict(use_effective_conv2d=True), "convolutions"),
    (dict(init_weights="lycoris"), "init_weights"),
    (dict(rank_dropout=1.0), "rank_dropout"),
    (dict(r=0), "positive"),
])
def test_bad_options_are_refused_naming_them(fields, message):
    with pytest.raises(ValueError, match=message):
        LoHaConfig(**fields)


def test_saving_for_adapterhub_is_refused(tmp_path):
    model = archs.tiny_model("bert")
    model.add_adapter("a", "loha[r=2]")
    with pytest.raises(ValueError, match="no AdapterHub equivalent"):
        model.save_adapter(tmp_path / "a", "a", format="adapterhub")
    assert not (tmp_path / "a").exists()
