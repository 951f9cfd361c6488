"""The heads API of AdapterHub's flexible-head models (``adapters`` 1.3.0, ``ModelWithFlexibleHeadsAdaptersMixin``)
against live AdapterHub: ``save_head``/``load_head`` files both ways, ``average_head`` numbers and refusals,
``get_labels``/``get_labels_dict``, the ``loss`` a forward given labels returns.

Where AdapterHub 1.3.0 is wrong, a test pins its behaviour next to ours: ``average_head`` given the ``{head: weight}``
dict its docstring offers crashes (KeyError), and ``save_head`` without a name writes a head config of None (and
every head's tensors) where its docstring says it saves the model's only head.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.archs import reference
from tests.parity import assert_parity, real_tokens
from tests.peftcore.interop.test_adapterhub import adapterhub_model, inputs_for, ours_from

# (add_* method, its arguments)
HEADS = {
    "classification": ("add_classification_head", dict(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})),
    "tagging": ("add_tagging_head", dict(num_labels=5)),
    "masked_lm": ("add_masked_lm_head", {}),
}


@pytest.fixture
def models(hf_checkpoint):
    """models() -> (AdapterHub's BertAdapterModel, ours, a padded batch) on one random checkpoint."""
    def make():
        directory = reference(hf_checkpoint, "bert", variant="wide")[0]
        return adapterhub_model("bert", directory, flex=True), ours_from("bert", directory), inputs_for("bert")

    return make


def randomized(model: torch.nn.Module, *names: str) -> None:
    """Move heads off their initialisation (a masked-LM decoder stays the word embeddings)."""
    generator = torch.Generator().manual_seed(len(names))
    tied = model.get_input_embeddings().weight
    with torch.no_grad():
        for name in names:
            for parameter in model.heads[name].parameters():
                if parameter is not tied:
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def logits(model: torch.nn.Module, inputs: dict, head: str) -> torch.Tensor:
    model.active_head = head
    with torch.no_grad():
        out = model(**inputs).logits
    return out if out.dim() == 2 else real_tokens(out, inputs["attention_mask"])


@pytest.mark.parametrize("safetensors", [False, True], ids=["pickle", "safetensors"])
@pytest.mark.parametrize("kind", HEADS)
def test_head_saved_by_adapterhubs_save_head_loads_into_ours_and_gives_its_logits(models, kind, safetensors,
                                                                                 tmp_path):
    theirs, ours, inputs = models()
    method, kwargs = HEADS[kind]
    getattr(theirs, method)("h", **kwargs)
    randomized(theirs, "h")
    theirs.save_head(str(tmp_path / "h"), "h", use_safetensors=safetensors)
    weights = "model_head.safetensors" if safetensors else "pytorch_model_head.bin"
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["head_config.json", weights]
    assert ours.load_head(tmp_path / "h") == "h" and ours.active_head == "h"
    assert ours.get_labels("h") == theirs.get_labels("h")
    assert_parity(logits(ours, inputs, "h"), logits(theirs, inputs, "h"))


@pytest.mark.parametrize("safetensors", [False, True], ids=["pickle", "safetensors"])
@pytest.mark.parametrize("kind", HEADS)
def test_head_saved_by_ours_in_adapterhub_layout_loads_in_adapterhub_and_gives_our_logits(models, kind, safetensors,
                                                                                         tmp_path):
    theirs, ours, inputs = models()
    method, kwargs = HEADS[kind]
    getattr(ours, method)("h", **kwargs)
    randomized(ours, "h")
    ours.save_head(tmp_path / "h", "h", format="adapterhub", use_safetensors=safetensors)
    weights = "model_head.safetensors" if safetensors else "pytorch_model_head.bin"
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["head_config.json", weights]
    theirs.load_head(str(tmp_path / "h"), use_safetensors=safetensors)
    assert theirs.active_head == "h" and theirs.get_labels("h") == ours.get_labels("h")
    assert_parity(logits(theirs, inputs, "h"), logits(ours, inputs, "h"))


def test_load_head_with_load_as_and_id2label_names_the_head_and_its_labels_as_adapterhub(models, tmp_path):
    theirs, ours, _ = models()
    theirs.add_classification_head("h", num_labels=3)
    theirs.save_head(str(tmp_path / "h"), "h")
    renamed = {0: "a", 1: "b", 2: "c"}
    _, their_name = theirs.load_head(str(tmp_path / "h"), load_as="w", id2label=renamed)  # AdapterHub returns
    # (directory, name) where its docstring says it returns the name
    assert ours.load_head(tmp_path / "h", load_as="w", id2label=renamed) == their_name == "w"
    assert ours.active_head == theirs.active_head == "w"
    assert ours.get_labels("w") == theirs.get_labels("w") == ["a", "b", "c"]
    assert ours.get_labels_dict("w") == theirs.get_labels_dict("w")


def test_labels_of_every_head_are_adapterhubs(models):
    theirs, ours, _ = models()
    for model in (theirs, ours):
        model.add_classification_head("named", num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
        model.add_classification_head("regression", num_labels=1)
        model.add_tagging_head("tagging", num_labels=4)
        model.add_qa_head("qa")
        model.add_masked_lm_head("lm")
    for head in ("named", "regression", "tagging", "qa", "lm"):
        assert ours.get_labels(head) == theirs.get_labels(head), head
        assert ours.get_labels_dict(head) == theirs.get_labels_dict(head), head
    assert ours.get_labels() == theirs.get_labels() is None  # the active head: the masked-LM head, added last


@pytest.mark.parametrize(("weights", "normalize"), [(None, True), ([1.0, 3.0], True), ([0.5, 2.0], False)])
@pytest.mark.parametrize("kind", ["classification", "masked_lm"])
def test_average_head_gives_adapterhubs_averaged_head(models, kind, weights, normalize, tmp_path):
    theirs, ours, inputs = models()
    method, kwargs = HEADS[kind]
    for name in ("x", "y"):
        getattr(theirs, method)(name, **kwargs)
        randomized(theirs, name)
        theirs.save_head(str(tmp_path / name), name)
        ours.load_head(tmp_path / name)
    theirs.average_head("avg", ["x", "y"], weights=weights, normalize_weights=normalize)
    ours.average_head("avg", ["x", "y"], weights=weights, normalize_weights=normalize)
    assert ours.active_head == theirs.active_head == "y"  # averaging does not activate by default
    assert ours.heads["avg"].config == theirs.heads["avg"].config
    expected = logits(theirs, inputs, "avg")
    assert_parity(logits(ours, inputs, "avg"), expected)
    assert (expected - logits(theirs, inputs, "x")).abs().max() > 1e-3


@pytest.mark.parametrize(("first", "second"), [("named", "unnamed"), ("named", "tagging"), ("named", "one_layer")])
def test_heads_adapterhub_refuses_to_average_ours_refuses(models, first, second):
    theirs, ours, _ = models()
    for model in (theirs, ours):
        model.add_classification_head("named", num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
        model.add_classification_head("unnamed", num_labels=3)
        model.add_classification_head("one_layer", num_labels=3, layers=1, id2label={0: "neg", 1: "neu", 2: "pos"})
        model.add_tagging_head("tagging", num_labels=3)
        with pytest.raises(ValueError, match="different (configs|configurations|classes)"):
            model.average_head("avg", [first, second])
        assert "avg" not in model.heads


def test_adapterhub_crashes_on_a_dict_of_head_weights_and_ours_averages_by_them(models):
    """AdapterHub's docstring offers ``head_list`` as ``{head: weight}``; it indexes the dict by position."""
    theirs, ours, inputs = models()
    for model in (theirs, ours):
        model.add_classification_head("x", num_labels=3)
        model.add_classification_head("y", num_labels=3)
    with pytest.raises(KeyError):
        theirs.average_head("avg", {"x": 1.0, "y": 3.0})
    randomized(ours, "x", "y")
    ours.average_head("avg", {"x": 1.0, "y": 3.0})
    ours.average_head("listed", ["x", "y"], weights=[1.0, 3.0])
    assert torch.equal(logits(ours, inputs, "avg"), logits(ours, inputs, "listed"))


def test_adapterhub_saves_no_head_config_without_a_head_name_and_ours_saves_the_only_head(models, tmp_path):
    theirs, ours, inputs = models()
    for model in (theirs, ours):
        model.add_classification_head("only", num_labels=2)
    theirs.save_head(str(tmp_path / "theirs"))
    assert json.loads((tmp_path / "theirs" / "head_config.json").read_text())["config"] is None
    randomized(ours, "only")
    ours.save_head(tmp_path / "ours", format="adapterhub")
    theirs.load_head(str(tmp_path / "ours"), load_as="loaded")
    assert_parity(logits(theirs, inputs, "loaded"), logits(ours, inputs, "only"))


# (add_* method, its arguments, the forward's targets for inputs_for's batch of 3, padded to 12 tokens)
LABELLED = {
    "classification": ("add_classification_head", dict(num_labels=3), dict(labels=torch.tensor([0, 2, 1]))),
    "regression": ("add_classification_head", dict(num_labels=1), dict(labels=torch.tensor([0.5, -1.0, 2.0]))),
    "multilabel": ("add_classification_head", dict(num_labels=2, multilabel=True),
                   dict(labels=torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))),
    "tagging": ("add_tagging_head", dict(num_labels=5),
                dict(labels=torch.randint(0, 5, (3, 12), generator=torch.Generator().manual_seed(3)))),
    "qa": ("add_qa_head", {}, dict(start_positions=torch.tensor([1, 0, 40]), end_positions=torch.tensor([3, 2, 50]))),
    "masked_lm": ("add_masked_lm_head", {}, dict(labels=torch.tensor([[-100, 5, 7] + [-100] * 9] * 3))),
}


@pytest.mark.parametrize("kind", LABELLED)
def test_labels_give_adapterhubs_flex_head_loss(models, kind, tmp_path):
    theirs, ours, inputs = models()
    method, kwargs, targets = LABELLED[kind]
    getattr(theirs, method)("h", **kwargs)
    randomized(theirs, "h")
    theirs.save_head(str(tmp_path / "h"), "h")
    ours.load_head(tmp_path / "h")
    ours.unpad = False  # padded positions as AdapterHub computes them: the span loss reads every position
    with torch.no_grad():
        got, expected = ours(**inputs, **targets), theirs(**inputs, **targets)
        assert ours(**inputs).loss is None
    assert_parity(got.loss, expected.loss)
    assert_parity(got[0], expected[0])
