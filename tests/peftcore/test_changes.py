"""Every call that changes a model is all-or-nothing and never runs from inside a forward of that model
(peftcore/changes.py): whatever step of it fails, the model is exactly as before — tensors, adapters, heads, fusions,
merges, the active setup and head, the plugs."""

from __future__ import annotations

import pytest
import torch

import peftcore.changes
import peftcore.fusion
import peftcore.heads
import peftcore.merging
import peftcore.placement
from peftcore.composition import Average, BatchSplit, Fuse, Parallel, Stack
from peftcore.setup import Plan
from tests.archs import tiny_model
from tests.peftcore.test_io import assert_unchanged, fingerprint, randomize

# internal steps that change the model; a failure injected right after any of them must undo the whole call
STEPS = [(peftcore.placement, "attach"), (peftcore.placement, "remove"), (peftcore.fusion, "attach"),
         (peftcore.fusion, "remove"), (peftcore.heads, "attach"), (peftcore.heads, "delete"),
         (peftcore.merging, "merge"), (peftcore.merging, "reset"), (Plan, "install")]


def prepared(tmp_path) -> torch.nn.Module:
    """A model with something of every kind: active and idle adapters, a fusion, merged and prefix adapters, heads,
    and files to load."""
    model = tiny_model()
    configs = {"a": "seq_bn", "b": "seq_bn", "idle": "lora", "other": "lora",
               "merged": "lora[selfattn_lora=False, output_lora=True]", "p": "prefix_tuning"}
    for name, config in configs.items():
        model.add_adapter(name, config)
        randomize(model, name)
    model.add_adapter_fusion(["a", "b"])
    model.add_classification_head("h", num_labels=3)
    model.merge_adapter("merged")
    model.save_adapter(tmp_path / "saved", "b")
    model.save_adapter_fusion(tmp_path / "fusion", "a,b", with_head="h")
    model.save_head(tmp_path / "head", "h")
    model.set_active_adapters(Stack("a"))
    return model


CALLS = {
    "add_adapter": lambda m, d: m.add_adapter("new", "lora", set_active=True),
    "replace_active_adapter": lambda m, d: m.add_adapter("a", "double_seq_bn", overwrite_ok=True),
    "delete_adapter": lambda m, d: m.delete_adapter("idle"),
    "set_active_adapters": lambda m, d: m.set_active_adapters(Fuse("a", "b")),
    "train_adapter": lambda m, d: m.train_adapter("idle"),
    "merge_adapter": lambda m, d: m.merge_adapter("idle"),
    "reset_adapter": lambda m, d: m.reset_adapter("merged"),
    "average_adapter": lambda m, d: m.average_adapter("avg", ["a", "b"], set_active=True),
    "add_adapter_fusion": lambda m, d: m.add_adapter_fusion(["b", "a"], set_active=True),
    "delete_adapter_fusion": lambda m, d: m.delete_adapter_fusion("a,b"),
    "train_adapter_fusion": lambda m, d: m.train_adapter_fusion(Fuse("a", "b")),
    "load_adapter": lambda m, d: m.load_adapter(d / "saved", load_as="loaded", set_active=True),
    "load_adapter_fusion": lambda m, d: m.load_adapter_fusion(d / "fusion", load_as="loaded_fusion",
                                                              set_active=True),
    "add_head": lambda m, d: m.add_tagging_head("t", num_labels=2),
    "delete_head": lambda m, d: m.delete_head("h"),
    "average_head": lambda m, d: m.average_head("averaged", ["h", "h"], set_active=True),
    "load_head": lambda m, d: m.load_head(d / "head", load_as="loaded_head"),
    "eject_prefix_tuning": lambda m, d: m.eject_prefix_tuning("p"),
    "merge_adapters": lambda m, d: m.merge_adapters("mixed", ["idle", "other"], [1.0, -0.5], method="ties_svd",
                                                    density=0.5, set_active=True),
    "merge_and_unload": lambda m, d: unload_idle(m),
}


def unload_idle(model) -> None:
    """Activate the LoRA adapter "idle" and fold it in for good (every adapter and the fusion removed), as one call."""
    with peftcore.changes.changing(model):
        model.set_active_adapters("idle")
        model.merge_and_unload()


class Injected(RuntimeError):
    pass


def failing_after(original):
    """The step, then (the first time) a failure: the undo may run the step again."""
    failed = []

    def step(*args, **kwargs):
        original(*args, **kwargs)
        if not failed:
            failed.append(True)
            raise Injected("a failure injected after the step")
    return step


@pytest.mark.parametrize("call", CALLS)
def test_a_call_that_fails_after_any_of_its_steps_leaves_the_model_as_it_was(call, tmp_path, monkeypatch):
    reached = []
    for module, name in STEPS:
        model = prepared(tmp_path)
        before = fingerprint(model)
        with monkeypatch.context() as patch:
            patch.setattr(module, name, failing_after(getattr(module, name)))
            try:
                CALLS[call](model, tmp_path)
            except Injected:
                reached.append(name)
                assert_unchanged(model, before)
                assert_shared_modules_linked(model)
    assert reached, f"{call} reached none of the injected steps"


def assert_shared_modules_linked(model: torch.nn.Module) -> None:
    """Every module reads the shared module its adapter keeps in shared_parameters (prefix pools, Compacter)."""
    for name, _, _, module in model.iter_adapters():
        if name in model.shared_parameters and module.shared_key in model.shared_parameters[name]:
            assert module.shared is model.shared_parameters[name][module.shared_key], name


@pytest.mark.parametrize("call", CALLS)
def test_a_call_from_inside_a_forward_is_refused_before_anything_changes(call, tmp_path):
    model = prepared(tmp_path)
    errors = []

    def hook(module, inputs, output):
        try:
            CALLS[call](model, tmp_path)
        except RuntimeError as error:
            errors.append(error)

    site = next(site.module for site in model.sites_found if site.name == "attn.q")
    handle = site.register_forward_hook(hook)
    before = fingerprint(model)
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7]]))
    handle.remove()
    assert len(errors) == 1
    assert all("cannot change inside a forward" in str(error) for error in errors)
    assert_unchanged(model, before)


def test_a_mixed_batch_from_inside_a_forward_is_refused(tmp_path):
    model = prepared(tmp_path)
    ids = torch.tensor([[5, 6, 7]])
    errors = []

    def hook(module, inputs, output):
        try:
            model(input_ids=ids, adapter_names=["b"])
        except RuntimeError as error:
            errors.append(error)

    handle = next(site.module for site in model.sites_found if site.name == "attn.q").register_forward_hook(hook)
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    assert errors and all("cannot change inside a forward" in str(error) for error in errors)


@pytest.mark.parametrize("setup", [Parallel("idle", "a"), BatchSplit("idle", "a", batch_sizes=[1, 1]),
                                   Average("idle", "other")])
def test_merging_an_adapter_its_active_setup_cannot_hold_merged_merges_nothing(setup, tmp_path):
    model = prepared(tmp_path)
    model.set_active_adapters(setup)
    before = fingerprint(model)
    with pytest.raises(ValueError, match="merged into the weights and act on every row"):
        model.merge_adapter("idle")
    assert_unchanged(model, before)
    assert model.merged_adapters() == {"merged"}


def test_averaging_onto_a_merged_adapter_is_refused_and_keeps_its_weights(tmp_path):
    model = prepared(tmp_path)
    before = fingerprint(model)
    with pytest.raises(ValueError, match="'merged' is merged into the weights"):
        model.average_adapter("merged", ["idle", "idle"], overwrite_ok=True)
    assert_unchanged(model, before)


def test_replacing_a_fused_adapter_by_one_at_other_sites_is_refused(tmp_path):
    model = prepared(tmp_path)
    model.set_active_adapters(None)
    before = fingerprint(model)
    with pytest.raises(ValueError, match="'b' is fused in 'a,b'"):
        model.add_adapter("b", "lora", overwrite_ok=True)
    assert_unchanged(model, before)
    model.add_adapter("b", "seq_bn[reduction_factor=4]", overwrite_ok=True)  # at the same sites: the fusion runs it
    model.set_active_adapters(Fuse("a", "b"))


def test_loading_an_adapter_whose_head_name_is_taken_is_refused(tmp_path):
    model = prepared(tmp_path)
    model.add_classification_head("b", num_labels=2, overwrite_ok=True)
    model.save_adapter(tmp_path / "with_head", "b")
    model.add_classification_head("loaded", num_labels=5)
    before = fingerprint(model)
    with pytest.raises(ValueError, match="has a head 'loaded' already"):
        model.load_adapter(tmp_path / "with_head", load_as="loaded")
    assert_unchanged(model, before)
