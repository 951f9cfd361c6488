"""Prediction heads named after adapters: AdapterHub's flexible-head layout key for key, which head is active, logits
shapes per task, losses equal to transformers', and clear errors for heads that cannot work."""

from __future__ import annotations

import warnings

import adapters
import pytest
import torch
import transformers as tf

from peftcore.heads import MaskedLMPredictionHead
from peftcore.models import BertModel
from tests.archs import ARCHS, reference, tiny_model
from tests.parity import assert_parity, padded_batch

TINY = ARCHS["bert"].tiny_size  # of ours (tiny_model) and of the transformers references alike
B, T = 3, 6

# (add_* method, its arguments, logits shape for a (B, T) batch)
HEADS = {
    "classification": ("add_classification_head", dict(num_labels=3), (B, 3)),
    "classification_1_layer": ("add_classification_head", dict(num_labels=3, layers=1), (B, 3)),
    "regression": ("add_classification_head", dict(num_labels=1), (B, 1)),
    "multilabel": ("add_classification_head", dict(num_labels=4, multilabel=True), (B, 4)),
    "tagging": ("add_tagging_head", dict(num_labels=5), (B, T, 5)),
    "tagging_2_layers": ("add_tagging_head", dict(num_labels=5, layers=2), (B, T, 5)),
    "qa": ("add_qa_head", dict(), (B, T, 2)),
    "masked_lm": ("add_masked_lm_head", dict(), (B, T, TINY["vocab_size"])),
}


def batch() -> dict[str, torch.Tensor]:
    ids, mask = padded_batch(TINY["vocab_size"], 0, lengths=(T, 4, 2))
    return {"input_ids": ids, "attention_mask": mask}


def head_shapes(model: torch.nn.Module, name: str) -> dict[str, tuple[int, ...]]:
    return {key: tuple(t.shape) for key, t in model.state_dict().items() if key.startswith(f"heads.{name}.")}


# ---- layout -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_head_has_adapterhubs_keys_and_shapes(kind):
    method, kwargs, _ = HEADS[kind]
    ours = tiny_model()
    getattr(ours, method)("h", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = adapters.BertAdapterModel(tf.BertConfig(**TINY))
    getattr(theirs, method)("h", **kwargs)
    assert head_shapes(ours, "h") == head_shapes(theirs, "h")


def test_two_layer_classification_head_is_dropout_linear_tanh_dropout_linear():
    model = tiny_model()
    model.add_classification_head("a", num_labels=3)
    assert sorted(head_shapes(model, "a")) == ["heads.a.1.bias", "heads.a.1.weight", "heads.a.4.bias",
                                               "heads.a.4.weight"]
    head = model.heads["a"]
    assert [type(module).__name__ for module in head] == ["Dropout", "Linear", "Activation", "Dropout", "Linear"]
    assert head[2].name == "tanh" and head[0].p == head[3].p == model.config.hidden_dropout_prob


def test_masked_lm_head_is_numbered_0_2_3_and_its_decoder_is_the_word_embeddings():
    model = tiny_model()
    model.add_masked_lm_head("a")
    assert {key.split(".")[2] for key in head_shapes(model, "a")} == {"0", "2", "3"}
    assert model.heads["a"].decoder.weight is model.embeddings.word.weight


# ---- which head runs ----------------------------------------------------------------------------------------


def test_the_active_head_follows_set_active_adapters():
    model = tiny_model()
    for name, labels in (("a", 2), ("b", 5)):
        model.add_adapter(name, "seq_bn")
        model.add_classification_head(name, num_labels=labels)
    model.add_adapter("headless", "lora")
    assert model.active_head == "b"  # a new head becomes active
    model.set_active_adapters("a")
    assert model.active_head == "a" and model(**batch()).logits.shape == (B, 2)
    model.set_active_adapters("b")
    assert model.active_head == "b" and model(**batch()).logits.shape == (B, 5)
    model.set_active_adapters(["headless", "a"])
    assert model.active_head == "a"
    model.set_active_adapters("headless")  # no head of that name: the head stays, as in AdapterHub
    assert model.active_head == "a"
    model.set_active_adapters(None)
    assert model.active_head is None and model(**batch()).logits is None  # the model's own head: none here


def test_deleting_the_active_head_leaves_no_active_head():
    model = tiny_model()
    model.add_classification_head("a")
    model.delete_head("a")
    assert model.active_head is None and "a" not in model.heads
    with pytest.raises(KeyError, match=r"no head named 'a'; this model has none"):
        model.delete_head("a")


def test_adding_a_head_twice_needs_overwrite_ok():
    model = tiny_model()
    model.add_classification_head("a", num_labels=2)
    with pytest.raises(ValueError, match="head named 'a' exists; pass overwrite_ok=True"):
        model.add_classification_head("a", num_labels=3)
    model.add_classification_head("a", num_labels=3, overwrite_ok=True)
    assert model(**batch()).logits.shape == (B, 3)


# ---- outputs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_logits_shape(kind):
    method, kwargs, shape = HEADS[kind]
    model = tiny_model()
    getattr(model, method)("h", **kwargs)
    out = model(**batch())
    assert out.logits.shape == shape
    if kind == "qa":
        assert out.start_logits.shape == out.end_logits.shape == (B, T)
        assert torch.equal(torch.stack([out.start_logits, out.end_logits], dim=-1), out.logits)


def test_classification_reads_the_first_token_or_the_pooler():
    model = tiny_model()
    model.add_classification_head("a", num_labels=3, layers=1)
    model.add_classification_head("p", num_labels=3, layers=1, use_pooler=True)
    model.heads["p"].load_state_dict(model.heads["a"].state_dict())
    out = model(**batch())  # "p" is active
    head = model.heads["a"][1]
    assert torch.allclose(out.logits, head(out.pooler_output))
    model.active_head = "a"
    assert torch.allclose(model(**batch()).logits, head(out.last_hidden_state[:, 0]))


def test_a_pooler_head_on_a_model_without_pooler_says_so():
    model = tiny_model(add_pooling_layer=False)
    model.add_classification_head("p", use_pooler=True)
    with pytest.raises(ValueError, match="use_pooler=True but the model has no pooler"):
        model(**batch())


def test_masked_lm_head_starts_from_the_checkpoints_lm_head(hf_checkpoint):
    directory, reference_model = reference(hf_checkpoint, "bert", "masked_lm")
    model = BertModel.from_pretrained(directory).eval()
    ids, mask = padded_batch(reference_model.config.vocab_size, 0)
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=mask).logits
        model.add_masked_lm_head("a")
        assert model.active_head == "a" and model.active_adapters is None
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, own)
        assert_parity(own, reference_model(input_ids=ids, attention_mask=mask).logits, mask=mask)
    assert model.heads["a"].decoder.weight is model.embeddings.word.weight


def test_image_classification_head_on_vit():
    model = tiny_model("vit")
    model.add_image_classification_head("a", num_labels=5)
    assert sorted(head_shapes(model, "a")) == ["heads.a.1.bias", "heads.a.1.weight"]
    pixels = torch.randn(2, 3, 16, 16)
    out = model(pixel_values=pixels)
    assert out.logits.shape == (2, 5)
    assert torch.allclose(out.logits, model.heads["a"][1](out.last_hidden_state[:, 0]))


# ---- losses -------------------------------------------------------------------------------------------------


def transformers_loss(model_class, config: tf.BertConfig, **labels) -> tuple[torch.Tensor, ...]:
    """A tiny transformers task model's (loss, logits...) on our batch, as the reference."""
    torch.manual_seed(1)
    with torch.no_grad():
        out = model_class(config).eval()(**batch(), **labels)
    return out


@pytest.mark.parametrize(("kind", "problem_type", "labels"), [
    ("classification", "single_label_classification", torch.tensor([0, 2, 1])),
    ("regression", "regression", torch.tensor([0.5, -1.0, 2.0])),
    ("multilabel", "multi_label_classification", torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]])),
])
def test_sequence_losses_are_transformers(kind, problem_type, labels):
    method, kwargs, _ = HEADS[kind]
    model = tiny_model()
    getattr(model, method)("h", **kwargs)
    config = tf.BertConfig(**TINY, num_labels=kwargs["num_labels"], problem_type=problem_type)
    theirs = transformers_loss(tf.BertForSequenceClassification, config, labels=labels.float()
                               if problem_type != "single_label_classification" else labels)
    assert_parity(model.heads["h"].loss(theirs.logits, labels), theirs.loss, atol=1e-6)


def test_tagging_loss_is_transformers_and_ignores_padding():
    model = tiny_model()
    model.add_tagging_head("h", num_labels=5)
    mask = batch()["attention_mask"]
    labels = torch.randint(0, 5, (B, T), generator=torch.Generator().manual_seed(2))
    theirs = transformers_loss(tf.BertForTokenClassification, tf.BertConfig(**TINY, num_labels=5),
                               labels=labels.masked_fill(mask == 0, -100))
    head = model.heads["h"]
    assert_parity(head.loss(theirs.logits, labels, attention_mask=mask), theirs.loss, atol=1e-6)
    assert_parity(head.loss(theirs.logits, labels.masked_fill(mask == 0, -100)), theirs.loss, atol=1e-6)


def test_qa_loss_is_transformers_span_loss_with_out_of_range_positions_ignored():
    model = tiny_model()
    model.add_qa_head("h")
    starts, ends = torch.tensor([1, 0, 40]), torch.tensor([3, 2, 50])  # the last span lies beyond the sequence
    theirs = transformers_loss(tf.BertForQuestionAnswering, tf.BertConfig(**TINY), start_positions=starts,
                               end_positions=ends)
    logits = torch.stack([theirs.start_logits, theirs.end_logits], dim=-1)
    assert_parity(model.heads["h"].loss(logits, torch.stack([starts, ends], dim=-1)), theirs.loss, atol=1e-6)


@pytest.mark.parametrize(("num_labels", "multilabel", "labels", "reference"), [
    (3, False, torch.tensor([0, 2]), torch.nn.CrossEntropyLoss()),
    (3, True, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]), torch.nn.BCEWithLogitsLoss()),
    (1, False, torch.tensor([0.5, -2.0]), lambda logits, labels: torch.nn.MSELoss()(logits.view(-1), labels)),
])
def test_image_classification_losses(num_labels, multilabel, labels, reference):
    model = tiny_model("vit")
    model.add_image_classification_head("a", num_labels=num_labels, multilabel=multilabel)
    logits = model(pixel_values=torch.randn(2, 3, 16, 16)).logits
    assert_parity(model.heads["a"].loss(logits, labels), reference(logits, labels), atol=1e-6)


def test_masked_lm_loss_is_transformers():
    model = tiny_model()
    model.add_masked_lm_head("h")
    labels = torch.full((B, T), -100)
    labels[:, 1], labels[0, 3] = torch.tensor([5, 7, 9]), 11
    theirs = transformers_loss(tf.BertForMaskedLM, tf.BertConfig(**TINY), labels=labels)
    assert isinstance(model.heads["h"], MaskedLMPredictionHead)
    assert_parity(model.heads["h"].loss(theirs.logits, labels), theirs.loss, atol=1e-6)


# ---- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("add", "message"), [
    (lambda model: model.add_classification_head("x", num_labels=0), "num_labels >= 1, got 0"),
    (lambda model: model.add_tagging_head("x", num_labels=-2), "num_labels >= 1, got -2"),
    (lambda model: model.add_classification_head("x", layers=0), "layers >= 1, got 0"),
    (lambda model: model.add_qa_head("x", num_labels=3), "num_labels must be 2"),
    (lambda model: model.add_classification_head("x", num_labels=3, id2label={0: "a", 1: "b"}),
     "id2label has 2 labels, num_labels is 3"),
    (lambda model: model.add_head("x", {"head_type": "seq2seq_lm", "layers": 1}),
     "head type 'seq2seq_lm' is not known"),
    (lambda model: model.add_masked_lm_head("x", layers=1), "masked_lm heads have layers=2"),
    (lambda model: model.add_classification_head("x", activation_function="swishy"), "activation 'swishy'"),
    (lambda model: model.add_classification_head("x.y"), "without '.' or ','"),
])
def test_a_bad_head_is_refused_clearly_and_nothing_is_added(add, message):
    model = tiny_model()
    model.add_classification_head("keep")
    with pytest.raises(ValueError, match=message):
        add(model)
    assert list(model.heads) == ["keep"] and model.active_head == "keep"
