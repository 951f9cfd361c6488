"""Prediction heads named after adapters: AdapterHub's flexible-head layout key for key, which head is active, logits
shapes per task, losses equal to transformers', and clear errors for heads that cannot work."""

from __future__ import annotations

import json
import warnings

import adapters
import pytest
import torch
import transformers as tf

from peftcore.composition import BatchSplit, Parallel
from peftcore.heads import MaskedLMPredictionHead
from peftcore.models import BertModel
from tests.archs import ARCHS, reference, tiny_model
from tests.parity import assert_parity, padded_batch
from tests.peftcore.test_io import assert_unchanged, fingerprint

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


def test_labels_give_each_parallel_branch_its_heads_loss_and_a_batch_split_is_refused():
    model = tiny_model()
    for name, labels in (("a", 3), ("b", 3)):
        model.add_adapter(name, "seq_bn")
        model.add_classification_head(name, num_labels=labels)
    model.set_active_adapters(Parallel("a", "b"))
    labels = torch.tensor([0, 2, 1])
    outputs = model(**batch(), labels=labels)
    for out, name in zip(outputs, "ab", strict=True):
        assert torch.equal(out.loss, model.heads[name].loss(out.logits, labels))
    assert outputs[0].loss != outputs[1].loss
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
    with pytest.raises(ValueError, match="labels with a BatchSplit"):
        model(**batch(), labels=labels)
    model.set_active_adapters("a")
    with pytest.raises(ValueError, match="labels with adapter_names"):
        model(**batch(), labels=labels, adapter_names=["a", "b", "a"])


# ---- labels, head files, averaged heads (AdapterHub parity: tests/peftcore/interop/test_adapterhub_heads.py) ----


def randomized_heads(model: torch.nn.Module, *names: str) -> None:
    generator = torch.Generator().manual_seed(3)
    tied = model.embeddings.word.weight
    with torch.no_grad():
        for name in names:
            for parameter in model.heads[name].parameters():
                if parameter is not tied:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator))


def test_labels_are_the_heads_names_by_id_or_adapterhubs_defaults():
    model = tiny_model()
    model.add_classification_head("named", num_labels=3, id2label={2: "pos", 0: "neg", 1: "neu"})
    model.add_qa_head("qa")
    model.add_masked_lm_head("lm")
    assert model.get_labels_dict("named") == {0: "neg", 1: "neu", 2: "pos"}
    assert model.get_labels("named") == ["neg", "neu", "pos"]
    assert model.get_labels("qa") == ["LABEL_0", "LABEL_1"]
    assert model.get_labels("lm") is None and model.get_labels_dict("lm") is None
    model.active_head = "named"
    assert model.get_labels() == ["neg", "neu", "pos"]
    model.active_head = None
    with pytest.raises(ValueError, match="no head name given and no single head is active"):
        model.get_labels()
    with pytest.raises(KeyError, match="no head named 'nope'"):
        model.get_labels("nope")


@pytest.mark.parametrize("kind", ["classification", "masked_lm"])
def test_a_head_saved_alone_loads_bit_exactly_and_becomes_active(kind, tmp_path):
    method, kwargs, _ = HEADS[kind]
    model = tiny_model()
    getattr(model, method)("h", **kwargs)
    randomized_heads(model, "h")
    model.save_head(tmp_path / "h", "h")
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["head_config.json", "head_model.safetensors"]
    fresh = tiny_model()
    fresh.add_classification_head("other")
    assert fresh.load_head(tmp_path / "h") == "h" and fresh.active_head == "h"
    assert torch.equal(fresh(**batch()).logits, model(**batch()).logits)
    assert fresh.load_head(tmp_path / "h", load_as="again", set_active=False) == "again"
    assert fresh.active_head == "h"
    if kind == "masked_lm":
        assert fresh.heads["h"].decoder.weight is fresh.embeddings.word.weight


def test_load_head_renames_the_labels_with_id2label(tmp_path):
    model = tiny_model()
    model.add_classification_head("h", num_labels=2)
    model.save_head(tmp_path / "h", "h")
    model.load_head(tmp_path / "h", load_as="named", id2label={0: "no", 1: "yes"})
    assert model.get_labels("named") == ["no", "yes"] and model.get_labels("h") == ["LABEL_0", "LABEL_1"]


def test_save_head_without_a_name_saves_the_only_head_and_refuses_several(tmp_path):
    model = tiny_model()
    model.add_tagging_head("only", num_labels=4)
    model.save_head(tmp_path / "only")
    assert json.loads((tmp_path / "only" / "head_config.json").read_text())["name"] == "only"
    model.add_tagging_head("second", num_labels=4)
    with pytest.raises(ValueError, match=r"has 2 heads \(\['only', 'second'\]\), not one; pass head_name"):
        model.save_head(tmp_path / "two")
    with pytest.raises(KeyError, match="no head named 'nope'"):
        model.save_head(tmp_path / "nope", "nope")
    assert not (tmp_path / "two").exists() and not (tmp_path / "nope").exists()


def test_loading_a_head_under_a_taken_name_is_refused_and_nothing_changes_unless_overwrite_ok(tmp_path):
    model = tiny_model()
    model.add_classification_head("h", num_labels=3)
    model.save_head(tmp_path / "h", "h")
    with torch.no_grad():
        model.heads["h"][1].bias.fill_(1.0)
    model.add_tagging_head("t")
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"has a head 'h' already; delete_head\('h'\), pass load_as"):
        model.load_head(tmp_path / "h")
    assert_unchanged(model, before)
    assert model.load_head(tmp_path / "h", overwrite_ok=True, set_active=False) == "h"  # AdapterHub's reload
    assert not torch.all(model.heads["h"][1].bias == 1.0) and model.active_head == "t"


@pytest.mark.parametrize(("weights", "normalize", "expected"), [
    (None, True, (0.5, 0.5)), ([1.0, 3.0], True, (0.25, 0.75)), ([1.0, 3.0], False, (1.0, 3.0))])
def test_average_head_is_the_weighted_average_of_every_tensor(weights, normalize, expected):
    model = tiny_model()
    for name in ("x", "y"):
        model.add_classification_head(name, num_labels=3)
    randomized_heads(model, "x", "y")
    model.average_head("avg", ["x", "y"], weights=weights, normalize_weights=normalize)
    assert model.active_head == "y"  # unless set_active
    state = {name: model.heads[name].state_dict() for name in ("x", "y", "avg")}
    for key, tensor in state["avg"].items():
        assert_parity(tensor, expected[0] * state["x"][key] + expected[1] * state["y"][key], atol=1e-6)
    model.average_head("by_dict", {"x": 1.0, "y": 3.0}, set_active=True)
    assert model.active_head == "by_dict"
    assert_parity(model.heads["by_dict"][4].weight, 0.25 * state["x"]["4.weight"] + 0.75 * state["y"]["4.weight"])


def test_an_averaged_masked_lm_head_stays_tied_to_the_word_embeddings():
    model = tiny_model()
    for name in ("x", "y"):
        model.add_masked_lm_head(name)
    randomized_heads(model, "x", "y")
    model.average_head("avg", ["x", "y"])
    assert model.heads["avg"].decoder.weight is model.embeddings.word.weight
    assert_parity(model.heads["avg"].decoder.bias, (model.heads["x"].decoder.bias + model.heads["y"].decoder.bias) / 2)


@pytest.mark.parametrize(("average", "error", "message"), [
    (lambda m: m.average_head("avg", []), ValueError, "no heads to average"),
    (lambda m: m.average_head("avg", ["x", "nope"]), KeyError, "no head named 'nope'"),
    (lambda m: m.average_head("x", ["x", "y"]), ValueError, "head named 'x' exists; pass overwrite_ok=True"),
    (lambda m: m.average_head("avg", ["x", "y"], weights=[1.0]), ValueError, "2 heads to average but 1 weights"),
    (lambda m: m.average_head("avg", ["x", "y"], weights=[1.0, -1.0]), ValueError, "sum to 0"),
    (lambda m: m.average_head("avg", {"x": 1.0}, weights=[1.0]), ValueError, "either in head_list"),
    (lambda m: m.average_head("avg", ["x", "three"]), ValueError, "different configs"),
    (lambda m: m.average_head("avg", ["x", "tagging"]), ValueError, "different classes"),
])
def test_heads_that_cannot_be_averaged_are_refused_and_nothing_changes(average, error, message):
    model = tiny_model()
    for name, labels in (("x", 2), ("y", 2), ("three", 3)):
        model.add_classification_head(name, num_labels=labels)
    model.add_masked_lm_head("tagging")
    before = fingerprint(model)
    with pytest.raises(error, match=message):
        average(model)
    assert_unchanged(model, before)


def test_heads_that_differ_only_in_dropout_are_averaged():
    model = tiny_model()
    model.add_head("x", dict(head_type="classification", num_labels=2, layers=2, activation_function="tanh"))
    model.add_head("y", dict(head_type="classification", num_labels=2, layers=2, activation_function="tanh",
                             dropout_prob=0.3))
    model.average_head("avg", ["x", "y"])
    assert model.heads["avg"].config == model.heads["x"].config


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


def test_prediction_heads_config_lists_every_heads_config_by_name():
    model = tiny_model()
    model.add_classification_head("a", num_labels=3)
    model.add_tagging_head("b")
    configs = model.get_prediction_heads_config()
    assert sorted(configs) == ["a", "b"] and configs["a"] == model.heads["a"].config
    assert configs["a"]["head_type"] == "classification" and configs["b"]["head_type"] == "tagging"
    assert model.heads["a"].get_output_embeddings() is None


def test_training_a_masked_lm_head_leaves_the_tied_word_embeddings_frozen_unless_asked():
    model = tiny_model()
    model.add_adapter("mlm", "seq_bn")
    model.add_masked_lm_head("mlm")
    decoder = model.heads["mlm"].get_output_embeddings()
    assert decoder.weight is model.get_input_embeddings().weight
    model.train_adapter("mlm")
    assert not decoder.weight.requires_grad
    assert all(p.requires_grad for key, p in model.heads["mlm"].named_parameters() if key != "3.weight")
    model.train_adapter("mlm", train_embeddings=True)
    assert decoder.weight.requires_grad and model.get_input_embeddings().weight.requires_grad
