"""AdapterSetup (peftcore/context.py): the forwards inside the block run another setup and heads than the active
ones, as AdapterHub's context manager does, per thread and without changing the model."""

from __future__ import annotations

import threading

import pytest
import torch

from peftcore.composition import Parallel, Stack
from peftcore.context import AdapterSetup
from tests import archs
from tests.archs import tiny_model


def batch(model):
    return archs.inputs(model.config, lengths=(5, 3), seed=2)


def model_with(*names, heads=()):
    model = tiny_model()
    for name in names:
        model.add_adapter(name, "seq_bn")
    for name in heads:
        model.add_classification_head(name, num_labels=3 if name == "b" else 2)
    model.eval()
    return model


def test_a_setup_runs_its_adapters_as_activating_them_would_and_leaves_the_active_one():
    model = model_with("a", "b")
    x = batch(model)
    model.set_active_adapters("b")
    with torch.no_grad():
        with AdapterSetup(Stack("a", "b")):
            inside = model(**x).last_hidden_state
        assert model.active_adapters == Stack("b")
        after = model(**x).last_hidden_state
        model.set_active_adapters(Stack("a", "b"))
        activated = model(**x).last_hidden_state
        model.set_active_adapters("b")
        assert torch.equal(model(**x).last_hidden_state, after)
    assert torch.equal(inside, activated)
    assert not torch.equal(inside, after)


def test_no_adapter_runs_the_plain_model_and_ignore_empty_keeps_the_active_setup():
    model = model_with("a")
    x = batch(model)
    with torch.no_grad():
        plain = model(**x).last_hidden_state
        model.set_active_adapters("a")
        active = model(**x).last_hidden_state
        with AdapterSetup(None):
            assert torch.equal(model(**x).last_hidden_state, plain)
        with AdapterSetup(None, ignore_empty=True):
            assert torch.equal(model(**x).last_hidden_state, active)


def test_the_innermost_setup_wins_and_leaving_it_restores_the_outer_one():
    model = model_with("a", "b")
    x = batch(model)
    with torch.no_grad():
        with AdapterSetup("a"):
            outer = model(**x).last_hidden_state
            with AdapterSetup("b"):
                inner = model(**x).last_hidden_state
            assert torch.equal(model(**x).last_hidden_state, outer)
        model.set_active_adapters("b")
        assert torch.equal(model(**x).last_hidden_state, inner)


def test_heads_follow_the_setup_or_head_setup_and_unknown_heads_are_refused():
    model = model_with("a", "b", heads=("a", "b"))
    x = batch(model)
    model.set_active_adapters("a")
    with torch.no_grad():
        with AdapterSetup("b"):
            assert model(**x).logits.shape == (2, 3)
        with AdapterSetup("a", head_setup="b"):
            assert model(**x).logits.shape == (2, 3)
        with AdapterSetup(Parallel("a", "b")):
            outputs = model(**x)
        assert [out.logits.shape for out in outputs] == [(2, 2), (2, 3)]
        assert model(**x).logits.shape == (2, 2) and model.active_head == "a"
        with AdapterSetup("a", head_setup="missing"), pytest.raises(ValueError, match="head 'missing'"):
            model(**x)


def test_labels_give_the_loss_of_the_context_head():
    model = model_with("a", "b", heads=("a", "b"))
    x = batch(model)
    with AdapterSetup("b"):
        out = model(**x, labels=torch.tensor([2, 0]))
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0


def test_the_setup_holds_for_its_own_thread_only():
    model = model_with("a")
    x = batch(model)
    with torch.no_grad():
        plain = model(**x).last_hidden_state
        seen = {}

        def other_thread():
            with torch.no_grad():
                seen["hidden"] = model(**x).last_hidden_state

        with AdapterSetup("a"):
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
            assert not torch.equal(model(**x).last_hidden_state, plain)
    assert torch.equal(seen["hidden"], plain)


def test_an_unknown_adapter_is_refused_at_the_forward():
    model = model_with("a")
    with AdapterSetup("missing"), pytest.raises(KeyError, match="no adapter named 'missing'"):
        model(**batch(model))
