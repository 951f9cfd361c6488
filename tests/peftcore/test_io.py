"""Adapter files (peftcore/io.py): what a save writes, bit-exact round trips, and loads that check everything
before touching the model — a bad directory of any kind leaves every parameter, adapter and head as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftcore.io
import peftcore.placement
from peftcore.composition import Stack
from tests.archs import tiny_model
from tests.parity import padded_batch

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]
HEAD_FILES = ["head_config.json", "head_model.safetensors"]


def randomize(model: torch.nn.Module, name: str, scale: float = 1.0) -> None:
    """Move an adapter and its head away from their initialisation (to N(0, scale²) draws), so a reload that
    re-initialises shows."""
    generator = torch.Generator().manual_seed(7)
    parameters = list(model.adapter_parameters(name))
    if name in model.heads:
        parameters += list(model.heads[name].parameters())
    tied = getattr(getattr(model.embeddings, "word", None), "weight", None)  # a masked-LM decoder's (ViT has none)
    with torch.no_grad():
        for parameter in parameters:
            if parameter is not tied:
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))


def trained(config: str = "seq_bn_inv", model: torch.nn.Module | None = None, head: str | None = "classification"):
    """A model with adapter "a" (and head "a") away from their initialisation."""
    model = model if model is not None else tiny_model()
    model.add_adapter("a", config)
    if head == "classification":
        model.add_classification_head("a", num_labels=3)
    elif head == "masked_lm":
        model.add_masked_lm_head("a")
    randomize(model, "a")
    return model


def fingerprint(model: torch.nn.Module) -> dict:
    """Everything a load could change: every tensor, the adapters, heads and what is active."""
    tensors = {**model.state_dict(), **dict(model.named_buffers())}  # non-persistent buffers too
    return {"state": {key: t.clone() for key, t in tensors.items()},
            "adapters": dict(model.adapter_configs), "heads": list(model.heads), "active": model.active_adapters,
            "head": model.active_head, "plugs": [site.module.plug is None for site in model.sites_found]}


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = fingerprint(model)
    assert list(after["state"]) == list(before["state"])
    assert all(torch.equal(before["state"][key], after["state"][key]) for key in before["state"])
    assert {key: value for key, value in after.items() if key != "state"} == \
        {key: value for key, value in before.items() if key != "state"}


def same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return list(first) == list(second) and all(torch.equal(first[key], second[key]) for key in first)


# ---- what a save writes -------------------------------------------------------------------------------------


def test_save_writes_config_and_safetensors_with_relative_keys(tmp_path):
    model = trained()
    model.save_adapter(tmp_path / "a", "a", with_head=False)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ADAPTER_FILES
    raw = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert raw["format"] == "peftcore-adapter" and raw["name"] == "a"
    assert (raw["model_type"], raw["hidden_size"], raw["num_hidden_layers"]) == ("bert", 32, 2)
    assert raw["config"] == model.adapter_configs["a"].to_dict()
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert same_tensors(dict(sorted(tensors.items())), dict(sorted(model.adapter_state("a").items())))
    assert "layers.0.ffn.residual.adapters.down.weight" in tensors  # the adapter's name is not in the file
    assert any(key.startswith("embeddings.site.adapters.") for key in tensors)


def test_save_with_head_writes_the_head_beside_the_adapter(tmp_path):
    model = trained()
    model.save_adapter(tmp_path / "a", "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(ADAPTER_FILES + HEAD_FILES)
    head = load_file(tmp_path / "a" / "head_model.safetensors")
    assert sorted(head) == ["1.bias", "1.weight", "4.bias", "4.weight"]
    assert json.loads((tmp_path / "a" / "head_config.json").read_text())["config"] == model.heads["a"].config


# ---- round trips --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["seq_bn_inv", "double_seq_bn[reduction_factor={'0': 4, 'default': 8}]",
                                    "scaled_par_bn[leave_out=[0]]", "lora[r=2]", "prefix_tuning[prefix_length=3]"])
def test_load_restores_every_tensor_bit_exactly(config, tmp_path):
    model = trained(config)
    model.save_adapter(tmp_path / "a", "a")
    fresh = tiny_model()
    assert fresh.load_adapter(tmp_path / "a", set_active=True) == "a"
    assert fresh.adapter_configs["a"].to_dict() == model.adapter_configs["a"].to_dict()  # BnConfig, as AdapterHub
    assert same_tensors(fresh.adapter_state("a"), model.adapter_state("a"))
    assert same_tensors(fresh.heads["a"].state_dict(), model.heads["a"].state_dict())
    assert fresh.active_adapters == Stack("a") and fresh.active_head == "a"
    model.set_active_adapters("a")
    ids, mask = padded_batch(100, 0)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids, attention_mask=mask).logits,
                           model(input_ids=ids, attention_mask=mask).logits)


def test_load_as_renames_adapter_and_head(tmp_path):
    model = trained()
    model.save_adapter(tmp_path / "a", "a")
    assert model.load_adapter(tmp_path / "a", load_as="b") == "b"
    assert same_tensors(model.adapter_state("b"), model.adapter_state("a"))
    assert same_tensors(model.heads["b"].state_dict(), model.heads["a"].state_dict())
    assert model.active_adapters is None


def test_load_without_head_adds_no_head(tmp_path):
    trained().save_adapter(tmp_path / "a", "a")
    fresh = tiny_model()
    fresh.load_adapter(tmp_path / "a", with_head=False)
    assert "a" in fresh.adapter_configs and list(fresh.heads) == []


def test_masked_lm_head_reloads_tied_to_the_word_embeddings(tmp_path):
    model = trained(head="masked_lm")
    model.save_adapter(tmp_path / "a", "a")
    assert "3.weight" not in load_file(tmp_path / "a" / "head_model.safetensors")  # the embeddings are not saved
    fresh = tiny_model()
    fresh.load_adapter(tmp_path / "a")
    assert fresh.heads["a"].decoder.weight is fresh.embeddings.word.weight
    assert same_tensors(fresh.heads["a"].state_dict(), model.heads["a"].state_dict())


def test_save_all_adapters_writes_one_directory_each(tmp_path):
    model = trained()
    model.add_adapter("b", "lora")
    randomize(model, "b")
    model.save_all_adapters(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    fresh = tiny_model()
    for name in ("a", "b"):
        assert fresh.load_adapter(tmp_path / name) == name
        assert same_tensors(fresh.adapter_state(name), model.adapter_state(name))
    assert list(fresh.heads) == ["a"]


def test_saving_again_without_the_head_leaves_no_stale_head(tmp_path):
    model = trained()
    model.save_adapter(tmp_path / "a", "a")
    model.save_adapter(tmp_path / "a", "a", with_head=False)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ADAPTER_FILES
    fresh = tiny_model()
    fresh.load_adapter(tmp_path / "a")
    assert list(fresh.heads) == []


# ---- failed loads change nothing ----------------------------------------------------------------------------


def edit_json(directory: Path, change) -> None:
    file = directory / "adapter_config.json"
    raw = json.loads(file.read_text())
    change(raw)
    file.write_text(json.dumps(raw))


def edit_tensors(directory: Path, change, file: str = "adapter_model.safetensors") -> None:
    tensors = load_file(directory / file)
    change(tensors)
    save_file(tensors, directory / file)


def write_bytes(directory: Path, file: str, data) -> None:
    path = directory / file
    path.write_bytes(data(path.read_bytes()))


KEY, EXTRA = "layers.0.ffn.residual.adapters.down.weight", "layers.0.ffn.residual.adapters.extra"

CORRUPTIONS = {  # name -> (change the saved directory of adapter "a", error, message)
    "wrong shape": (lambda d: edit_tensors(d, lambda t: t.update({KEY: torch.zeros(3, 32)})), ValueError,
                    rf"1 shape mismatches: {KEY}: file \(3, 32\), model \(2, 32\)"),
    "extra key": (lambda d: edit_tensors(d, lambda t: t.update({EXTRA: t[KEY].clone()})), ValueError,
                  rf"1 unexpected: {EXTRA}"),
    "integer dtype": (lambda d: edit_tensors(d, lambda t: t.update({KEY: t[KEY].long()})), ValueError,
                      rf"1 dtype mismatches: {KEY}: file torch.int64, model torch.float32"),
    "bool head dtype": (lambda d: edit_tensors(d, lambda t: t.update({"4.bias": t["4.bias"] > 0}),
                                               "head_model.safetensors"), ValueError, "4.bias: file torch.bool"),
    "missing key": (lambda d: edit_tensors(d, lambda t: t.pop(KEY)), ValueError, rf"1 missing: {KEY}"),
    "head shape": (lambda d: edit_tensors(d, lambda t: t.update({"4.weight": torch.zeros(5, 32)}),
                                          "head_model.safetensors"), ValueError, r"head 'a' does not fit"),
    "truncated": (lambda d: write_bytes(d, "adapter_model.safetensors", lambda b: b[: len(b) // 2]), ValueError,
                  "not a readable safetensors file"),
    "zero bytes": (lambda d: write_bytes(d, "adapter_model.safetensors", lambda b: b""), ValueError,
                   "not a readable safetensors file"),
    "garbage": (lambda d: write_bytes(d, "adapter_model.safetensors", lambda b: bytes(range(256)) * 8), ValueError,
                "not a readable safetensors file"),
    "truncated head": (lambda d: write_bytes(d, "head_model.safetensors", lambda b: b[:-9]), ValueError,
                       "head_model.safetensors is not a readable safetensors file"),
    "no weights": (lambda d: (d / "adapter_model.safetensors").unlink(), FileNotFoundError,
                   "has no adapter_model.safetensors"),
    "invalid json": (lambda d: write_bytes(d, "adapter_config.json", lambda b: b[:-5]), ValueError,
                     "adapter_config.json is not valid JSON"),
    "json list": (lambda d: (d / "adapter_config.json").write_text("[1, 2]"), ValueError, "holds list"),
    "unknown config field": (lambda d: edit_json(d, lambda raw: raw["config"].update(speed=2)), ValueError,
                             r"has no field\(s\) \['speed'\]"),
    "wrong method": (lambda d: edit_json(d, lambda raw: raw["config"].update(architecture="lora")), ValueError,
                     r"LoRAConfig has no field\(s\) \['adapter_residual_before_ln'"),
    "unknown method": (lambda d: edit_json(d, lambda raw: raw["config"].update(architecture="made_up")), ValueError,
                       "adapter architecture 'made_up' is not known"),
    "union without members": (lambda d: edit_json(d, lambda raw: raw.update(config={"architecture": "union"})),
                              ValueError, "a union config holds one field, 'configs'"),
    "no config": (lambda d: edit_json(d, lambda raw: raw.pop("config")), ValueError, r"lacks \['config'\]"),
    "config not an object": (lambda d: edit_json(d, lambda raw: raw.update(config="seq_bn")), TypeError,
                             "an adapter config dict maps field names to values, got str"),
    "invalid config value": (lambda d: edit_json(d, lambda raw: raw["config"].update(reduction_factor=-1)),
                             ValueError, "reduction_factor must be positive"),
    "future format": (lambda d: edit_json(d, lambda raw: raw.update(format_version=2)), ValueError,
                      "format_version 2"),
    "no model type": (lambda d: edit_json(d, lambda raw: raw.pop("model_type")), ValueError,
                      r"lacks \['model_type'\]"),
    "unknown format": (lambda d: edit_json(d, lambda raw: raw.update(format="other")), ValueError,
                       "neither a peftcore adapter"),
}


@pytest.fixture
def target():
    """The model a bad load must leave alone: it has an adapter and a head of its own, active."""
    model = trained()
    model.add_adapter("other", "lora")
    model.add_tagging_head("other")
    model.set_active_adapters("a")
    return model


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_directory_is_refused_and_the_model_is_unchanged(corruption, target, tmp_path):
    corrupt, error, message = CORRUPTIONS[corruption]
    trained().save_adapter(tmp_path / "saved", "a")
    corrupt(tmp_path / "saved")
    before = fingerprint(target)
    with pytest.raises(error, match=message):
        target.load_adapter(tmp_path / "saved", load_as="new")
    assert_unchanged(target, before)


@pytest.mark.parametrize(("source", "message"), [
    (lambda: tiny_model("roberta"), "adapter for a 'roberta' model; this model is 'bert'"),
    (lambda: tiny_model(hidden_size=48), "adapter for hidden size 48; this model's is 32"),
    (lambda: tiny_model(num_hidden_layers=3), r"4 unexpected: layers\.2\.ffn"),
])
def test_an_adapter_for_another_model_is_refused_and_the_model_is_unchanged(source, message, target, tmp_path):
    trained(model=source()).save_adapter(tmp_path / "saved", "a")
    before = fingerprint(target)
    with pytest.raises(ValueError, match=message):
        target.load_adapter(tmp_path / "saved", load_as="new")
    assert_unchanged(target, before)


def test_a_model_checkpoint_directory_is_refused_as_an_adapter(target, tmp_path):
    tiny_model("roberta").save_pretrained(tmp_path / "roberta")
    before = fingerprint(target)
    with pytest.raises(FileNotFoundError, match=r"has no adapter_config.json \(it holds \['config.json'"):
        target.load_adapter(tmp_path / "roberta")
    assert_unchanged(target, before)


def test_a_missing_directory_is_refused(target, tmp_path):
    before = fingerprint(target)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        target.load_adapter(tmp_path / "nowhere")
    assert_unchanged(target, before)


class Payload:
    """A pickle that runs code when loaded: creates the file it names."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_pickle_carrying_code_is_refused_without_running_it(target, tmp_path):
    directory, sentinel = tmp_path / "hub", tmp_path / "pwned"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({
        "config": target.adapter_configs["a"].to_dict(), "name": "evil", "model_type": "bert", "hidden_size": 32,
        "version": "adapters.1.3.0"}))
    torch.save({"bert.encoder.layer.0.output.adapters.evil.adapter_up.weight": Payload(sentinel)},
               directory / "pytorch_adapter.bin")
    before = fingerprint(target)
    with pytest.raises(ValueError, match="weights-only"):
        target.load_adapter(directory)
    assert not sentinel.exists()
    assert_unchanged(target, before)
    torch.load(directory / "pytorch_adapter.bin", weights_only=False)  # the payload is live: an unsafe load runs it
    assert sentinel.exists()


def test_an_unsupported_hf_peft_method_is_refused_clearly(target, tmp_path):
    directory = tmp_path / "peft"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "OFT", "r": 8}))
    save_file({"base_model.model.encoder.layer.0.attention.self.query.oft_R.weight": torch.zeros(32, 8)},
              directory / "adapter_model.safetensors")
    before = fingerprint(target)
    with pytest.raises(ValueError, match="PEFT method 'OFT' is not available in peftcore"):
        target.load_adapter(directory)
    assert_unchanged(target, before)


# ---- interrupted saves --------------------------------------------------------------------------------------


def crash_at(call: int, function, error: BaseException):
    """``function``, raising ``error`` on its ``call``-th use (1-based) instead of running."""
    calls = iter(range(1, 1000))

    def crashing(*args, **kwargs):
        if next(calls) == call:
            raise error
        return function(*args, **kwargs)

    return crashing


def half_written(tensors, path, metadata=None):
    Path(path).write_bytes(b"half a file")
    raise OSError("disk full")


@pytest.mark.parametrize("crash", [
    pytest.param(lambda: ("save_file", half_written), id="while writing the weights"),
    pytest.param(lambda: ("os.replace", crash_at(1, os.replace, OSError("disk full"))), id="at the first rename"),
    pytest.param(lambda: ("os.replace", crash_at(2, os.replace, KeyboardInterrupt())), id="between the renames"),
])
def test_an_interrupted_save_leaves_the_previous_adapter_intact(crash, tmp_path, monkeypatch):
    model = trained()
    model.save_adapter(tmp_path / "a", "a")
    (tmp_path / "a" / "notes.txt").write_text("the user's own file")
    files = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    saved_state = {key: t.clone() for key, t in model.adapter_state("a").items()}
    model.delete_head("a")  # the new save would drop the head file: it must not, when it fails
    model.add_adapter("a", "lora[r=3]", overwrite_ok=True)  # new config and shapes that must not reach the directory
    randomize(model, "a")

    target, replacement = crash()
    monkeypatch.setattr(peftcore.io, "save_file", replacement) if target == "save_file" else \
        monkeypatch.setattr(peftcore.io.os, "replace", replacement)
    with pytest.raises((OSError, KeyboardInterrupt)):
        model.save_adapter(tmp_path / "a", "a")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no scratch directory left behind
    fresh = tiny_model()
    fresh.load_adapter(tmp_path / "a")
    assert same_tensors(fresh.adapter_state("a"), saved_state)


def test_a_save_over_an_adapter_keeps_the_users_other_files_and_drops_a_stale_head(tmp_path):
    model = trained()
    model.save_adapter(tmp_path / "a", "a")
    (tmp_path / "a" / "notes.txt").write_text("the user's own file")
    (tmp_path / "a" / "runs").mkdir()
    (tmp_path / "a" / "runs" / "log.txt").write_text("a subdirectory")
    model.save_adapter(tmp_path / "a", "a", with_head=False)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([*ADAPTER_FILES, "notes.txt", "runs"])
    assert (tmp_path / "a" / "runs" / "log.txt").read_text() == "a subdirectory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


# ---- names, paths, and what a killed save leaves ------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape", "a/b", "a\\b", "/abs", "tab\there", "nul\x00", "..", " "])
def test_names_that_would_leave_a_directory_or_nest_keys_are_refused_and_change_nothing(name):
    model = trained("seq_bn")
    model.add_adapter("b", "seq_bn")
    before = fingerprint(model)
    for call in (lambda: model.add_adapter(name, "lora"), lambda: model.add_classification_head(name),
                 lambda: model.add_adapter_fusion(["a", "b"], name=name),
                 lambda: model.average_adapter(name, ["a", "b"])):
        with pytest.raises(ValueError, match=r"without '\.' or ','"):
            call()
    assert_unchanged(model, before)


def test_a_files_own_adapter_name_may_not_leave_its_directory(tmp_path):
    trained("seq_bn").save_adapter(tmp_path / "a", "a")
    raw = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**raw, "name": "../../outside"}))
    model = tiny_model()
    before = fingerprint(model)
    with pytest.raises(ValueError, match="names are non-empty strings"):
        model.load_adapter(tmp_path / "a")
    assert_unchanged(model, before)


def test_saving_over_the_working_directory_or_a_parent_of_it_is_refused(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    model = trained("seq_bn")
    for target in (".", tmp_path, tmp_path / "work"):
        with pytest.raises(ValueError, match="working directory or one of its parents"):
            model.save_adapter(target, "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_a_save_killed_between_its_renames_is_recovered_by_the_next_load(tmp_path):
    """The previous version waits in the dead process's scratch directory; the next load of the path puts it back."""
    model = trained("seq_bn")
    model.save_adapter(tmp_path / "a", "a")
    scratch = tmp_path / f".a.tmp-{dead_pid()}-x1"
    scratch.mkdir()
    os.replace(tmp_path / "a", scratch / "previous")  # what a kill between the two renames leaves
    (scratch / "new").mkdir()
    fresh = tiny_model()
    assert fresh.load_adapter(tmp_path / "a") == "a"
    assert same_tensors(fresh.adapter_state("a"), model.adapter_state("a"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_scratch_of_killed_saves_is_removed_and_that_of_running_ones_kept(tmp_path):
    model = trained("seq_bn")
    dead, running = tmp_path / f".a.tmp-{dead_pid()}-x1", tmp_path / f".a.tmp-{os.getpid()}-x2"
    for scratch in (dead, running):
        (scratch / "new").mkdir(parents=True)
    model.save_adapter(tmp_path / "a", "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a", running.name])


def dead_pid() -> int:
    """The id of a process that has ended."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ---- small files that declare big things, and strict reading ------------------------------------------------

def test_a_small_file_declaring_huge_modules_is_checked_on_the_meta_device_before_anything_is_allocated(
        tmp_path, monkeypatch):
    builds = []
    real_build = peftcore.placement.build

    def spy(host, config, meta=False):
        builds.append(meta)
        return real_build(host, config, meta)

    monkeypatch.setattr(peftcore.placement, "build", spy)
    for saved, change, field in (("lora[r=2]", dict(r=2_000_000), "lora_A"),
                                 ("seq_bn", dict(reduction_factor=1e-7), "down.weight")):
        trained(saved).save_adapter(tmp_path / "a", "a")
        raw = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
        (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**raw, "config": {**raw["config"], **change}}))
        builds.clear()
        with pytest.raises(ValueError, match=f"(?s)does not fit this model:.*{field}"):
            tiny_model().load_adapter(tmp_path / "a")
        assert builds == [True]  # only the meta build: nothing of the declared size was allocated


@pytest.mark.parametrize(("change", "error", "message"), [
    (dict(num_labels=10**8), ValueError, "at most 1,000,000 labels"),
    (dict(layers=200_000), ValueError, "at most 64 layers"),
    (dict(num_labels="3"), TypeError, "head config field num_labels must be"),
    (dict(use_pooler="yes"), TypeError, "head config field use_pooler must be"),
    (dict(layers=[2]), TypeError, "head config field layers must be"),
    (dict(activation_function="gelu_orig"), ValueError, "activation 'gelu_orig' is not known"),
])
def test_a_head_config_with_a_bad_field_is_refused_naming_it(change, error, message, tmp_path):
    trained("seq_bn").save_adapter(tmp_path / "a", "a")
    raw = json.loads((tmp_path / "a" / "head_config.json").read_text())
    (tmp_path / "a" / "head_config.json").write_text(json.dumps({**raw, "config": {**raw["config"], **change}}))
    model = tiny_model()
    before = fingerprint(model)
    with pytest.raises(error, match=message):
        model.load_adapter(tmp_path / "a")
    assert_unchanged(model, before)


@pytest.mark.parametrize(("change", "message"), [
    (dict(config=None), "holds no head config"), (dict(format="something-else"), "is not a peftcore head")])
def test_a_head_file_without_a_config_or_of_another_format_is_refused(change, message, tmp_path):
    trained("seq_bn").save_adapter(tmp_path / "a", "a")
    raw = json.loads((tmp_path / "a" / "head_config.json").read_text())
    (tmp_path / "a" / "head_config.json").write_text(json.dumps({**raw, **change}))
    with pytest.raises(ValueError, match=message):
        tiny_model().load_adapter(tmp_path / "a")


def test_an_adapter_file_with_nan_or_infinite_values_is_refused(tmp_path):
    model = trained("lora")
    model.save_adapter(tmp_path / "a", "a")
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    key = sorted(tensors)[0]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=f"tensors with NaN or infinite values: {key}"):
        tiny_model().load_adapter(tmp_path / "a")
