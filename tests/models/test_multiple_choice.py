"""The multiple-choice task head of BERT and the RoBERTa family against transformers' XForMultipleChoice on the same
weights: logits and loss, checkpoints both ways, peftcore.adapters' task and Auto classes, and refused inputs."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import peftcore.adapters as adapters
from tests.archs import ARCHS
from tests.parity import assert_parity, padded_batch

FAMILY = ("bert", "roberta", "xlm-roberta", "camembert")


def transformers_class(arch: str) -> type[tf.PreTrainedModel]:
    prefix = next(iter(ARCHS[arch].model.architecture.hf_classes)).removesuffix("Model")
    return getattr(tf, f"{prefix}ForMultipleChoice")


def choices(config, choices: int = 3) -> dict[str, torch.Tensor]:
    """Two examples of ``choices`` choices each (B, choices, T): padded sequences of lengths 9, 6 and 4."""
    ids, mask = padded_batch(config.vocab_size, config.pad_token_id, lengths=(9, 6, 4))
    order = [torch.tensor([0, 1, 2][:choices]), torch.tensor([2, 0, 1][:choices])]
    return {"input_ids": torch.stack([ids[o] for o in order]), "attention_mask": torch.stack([mask[o] for o in order])}


@pytest.fixture
def pair(hf_checkpoint):
    """pair(arch) -> (our model loaded from transformers' XForMultipleChoice checkpoint, that model)."""
    def make(arch: str):
        directory, theirs = hf_checkpoint(transformers_class(arch), ARCHS[arch].hf_config())
        return ARCHS[arch].model.from_pretrained(directory), theirs

    return make


@pytest.mark.parametrize("arch", FAMILY)
def test_logits_and_loss_equal_transformers_multiple_choice(pair, arch):
    ours, theirs = pair(arch)
    assert ours.config.head == "multiple_choice" and ours.pooler is not None
    inputs = {**choices(ours.config), "labels": torch.tensor([2, 0])}
    with torch.no_grad():
        got, expected = ours(**inputs), theirs(**inputs)
        two = {key: value[:, :2].contiguous() for key, value in choices(ours.config).items()}  # any number of choices
        assert_parity(ours(**two).logits, theirs(**two).logits)
    assert got.logits.shape == (2, 3)
    assert_parity(got.logits, expected.logits)
    assert_parity(got.loss, expected.loss)


@pytest.mark.parametrize("arch", ("bert", "roberta"))
def test_checkpoint_saved_in_transformers_layout_loads_in_transformers_with_our_logits(pair, arch, tmp_path):
    ours, _ = pair(arch)
    with torch.no_grad():
        ours.head.classifier.weight.add_(0.1)
    ours.save_pretrained(tmp_path, format="hf")
    reloaded = transformers_class(arch).from_pretrained(tmp_path).eval()
    inputs = choices(ours.config)
    with torch.no_grad():
        assert_parity(ours(**inputs).logits, reloaded(**inputs).logits)


def test_peftcore_adapters_has_the_task_and_auto_classes(pair, tmp_path):
    ours, theirs = pair("bert")
    theirs.save_pretrained(tmp_path)
    model = adapters.BertForMultipleChoice.from_pretrained(tmp_path)
    auto = adapters.AutoModelForMultipleChoice.from_pretrained(tmp_path)
    inputs = choices(ours.config)
    with torch.no_grad():
        expected = theirs(**inputs).logits
        assert_parity(model(**inputs).logits, expected)
        assert_parity(auto(**inputs).logits, expected)
    assert type(adapters.BertForMultipleChoice(tf.BertConfig(**ARCHS["bert"].tiny_size)).head).__name__ == \
        "PooledChoiceHead"


def test_an_adapter_on_the_multiple_choice_model_gets_the_gradient_of_its_loss(pair):
    ours, _ = pair("roberta")
    ours.add_adapter("a", config="seq_bn")
    ours.train_adapter("a")
    ours(**choices(ours.config), labels=torch.tensor([2, 0])).loss.backward()
    adapter = [p for name, p in ours.named_parameters() if ".adapters.a." in name]
    assert adapter and all(p.grad is not None for p in adapter)
    assert any(p.grad.abs().sum() > 0 for p in adapter)  # the up-projections (the rest sees them zero at start)


@pytest.mark.parametrize(("inputs", "message"), [
    (lambda i: {key: value[:, 0] for key, value in i.items()}, r"takes input_ids of shape \(batch, choices, tokens\)"),
    (lambda i: {**i, "attention_mask": i["attention_mask"][:, 0]}, r"attention_mask has shape \(2, 9\)"),
])
def test_inputs_without_a_choices_axis_are_refused(pair, inputs, message):
    ours, _ = pair("bert")
    with pytest.raises(ValueError, match=message):
        ours(**inputs(choices(ours.config)))


def test_a_mixed_batch_is_refused_as_it_cannot_take_choices(pair):
    ours, _ = pair("bert")
    ours.add_adapter("a", config="seq_bn")
    with pytest.raises(ValueError, match="head of the model takes other inputs"):
        ours(**choices(ours.config, choices=2), adapter_names=["a", None])
