"""``labels=`` on a model's own transformers task head: the output's ``loss`` is transformers' ``XFor<Task>`` loss on
the same weights, ``problem_type`` rules included; without labels there is none, and without a head it is an error."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.archs import ARCHS, inputs, reference, tiny_model
from tests.parity import assert_parity

B = 3  # rows of archs.inputs' batch


def pair(hf_checkpoint, arch: str, head: str, **fields) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(ours, transformers' task model, a padded batch) on one random checkpoint; ours runs padded positions as
    transformers does (``unpad=False``), so span and per-token losses read the same logits."""
    directory, theirs = reference(hf_checkpoint, arch, head, **fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = ARCHS[arch].model.from_pretrained(directory)
    ours.unpad = False
    return ours, theirs, inputs(theirs.config)


def losses(ours: torch.nn.Module, theirs: torch.nn.Module, batch: dict, **labels) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return ours(**batch, **labels).loss, theirs(**batch, **labels).loss


@pytest.mark.parametrize("arch", ["bert", "roberta", "vit"])
@pytest.mark.parametrize(("num_labels", "problem_type", "labels"), [
    (3, None, torch.tensor([0, 2, 1])),  # integer labels: single-label
    (1, None, torch.tensor([0.5, -1.0, 2.0])),  # one label: regression
    (4, None, torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]])),  # float labels: multi-label
    (2, "regression", torch.tensor([[0.5, 1.0], [-1.0, 0.0], [2.0, 3.0]])),
    (3, "single_label_classification", torch.tensor([2, 0, 1])),
    (2, "multi_label_classification", torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])),
])
def test_sequence_classification_loss_is_transformers(hf_checkpoint, arch, num_labels, problem_type, labels):
    head = "sequence_classification" if arch != "vit" else "image_classification"
    ours, theirs, batch = pair(hf_checkpoint, arch, head, num_labels=num_labels, problem_type=problem_type)
    assert ours.config.problem_type == problem_type
    assert_parity(*losses(ours, theirs, batch, labels=labels))


def test_token_classification_loss_is_transformers_and_ignores_minus_100(hf_checkpoint):
    ours, theirs, batch = pair(hf_checkpoint, "bert", "token_classification", num_labels=5)
    labels = torch.randint(0, 5, batch["input_ids"].shape, generator=torch.Generator().manual_seed(1))
    labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    assert_parity(*losses(ours, theirs, batch, labels=labels))


def test_question_answering_loss_is_transformers_with_out_of_range_positions_ignored(hf_checkpoint):
    ours, theirs, batch = pair(hf_checkpoint, "bert", "question_answering")
    starts, ends = torch.tensor([1, 0, 40]), torch.tensor([3, 2, 50])  # the last span lies beyond the sequence
    assert_parity(*losses(ours, theirs, batch, start_positions=starts, end_positions=ends))


def test_masked_lm_loss_is_transformers_and_ignores_minus_100(hf_checkpoint):
    ours, theirs, batch = pair(hf_checkpoint, "bert", "masked_lm")
    labels = torch.full(batch["input_ids"].shape, -100)
    labels[:, 1], labels[0, 3] = batch["input_ids"][:, 1].flip(0), 11
    assert_parity(*losses(ours, theirs, batch, labels=labels))


def test_without_labels_there_is_no_loss_and_logits_are_unchanged(hf_checkpoint):
    ours, _, batch = pair(hf_checkpoint, "bert", "sequence_classification", num_labels=3)
    with torch.no_grad():
        plain, labelled = ours(**batch), ours(**batch, labels=torch.tensor([0, 1, 2]))
    assert plain.loss is None and labelled.loss is not None
    assert torch.equal(plain.logits, labelled.logits)


def test_labels_on_a_model_without_a_head_are_refused():
    with pytest.raises(ValueError, match="no head to compute a loss"):
        tiny_model()(input_ids=torch.ones(B, 4, dtype=torch.long), labels=torch.zeros(B, dtype=torch.long))


def test_question_answering_takes_both_positions():
    model = tiny_model(head="question_answering")
    with pytest.raises(ValueError, match="start_positions and end_positions together"):
        model(input_ids=torch.ones(B, 4, dtype=torch.long), start_positions=torch.zeros(B, dtype=torch.long))


def test_an_unknown_problem_type_is_refused():
    with pytest.raises(ValueError, match="problem_type='ranking' is not supported"):
        ARCHS["bert"].config(problem_type="ranking")
