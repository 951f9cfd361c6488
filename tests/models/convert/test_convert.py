"""Reading checkpoint directories: every kind of bad input is a clear error, a load fills the model with the
checkpoint's tensors and initialises only what it lacks, and saves are atomic."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftcore.io
from peftcore.models import BertModel, RobertaModel, from_pretrained
from peftcore.models.convert import ConversionError
from peftcore.models.convert.keymap import hf_to_ours
from tests.archs import reference


@pytest.fixture
def bert_dir(hf_checkpoint, tmp_path):
    """A writable copy of a small random-init BertModel checkpoint."""
    source, _ = reference(hf_checkpoint, "bert")
    return shutil.copytree(source, tmp_path / "bert")


def edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_checkpoint_of_another_architecture_names_both(hf_checkpoint):
    directory, _ = reference(hf_checkpoint, "roberta")
    with pytest.raises(ConversionError, match=r"model_type 'roberta'.*BertModel loads 'bert'"):
        BertModel.from_pretrained(directory)
    assert isinstance(from_pretrained(directory), RobertaModel)


def test_weights_of_another_architecture_under_a_wrong_model_type_list_the_keys(hf_checkpoint, tmp_path):
    directory, _ = reference(hf_checkpoint, "roberta", "masked_lm")
    copy = shutil.copytree(directory, tmp_path / "mislabelled")
    edit_config(copy, model_type="bert", architectures=["BertForMaskedLM"])
    with pytest.raises(ConversionError, match="unexpected keys.*lm_head"):
        BertModel.from_pretrained(copy)


def test_missing_directory_config_and_weights_each_say_what_is_missing(bert_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertModel.from_pretrained(tmp_path / "nowhere")
    os.remove(bert_dir / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"has no weights: expected model\.safetensors"):
        BertModel.from_pretrained(bert_dir)
    os.remove(bert_dir / "config.json")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        BertModel.from_pretrained(bert_dir)


@pytest.mark.parametrize("damage", ["truncated", "zero-byte", "garbage"])
def test_corrupt_safetensors_is_a_clear_error(bert_dir, damage):
    file = bert_dir / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"truncated": data[: len(data) // 2], "zero-byte": b"", "garbage": os.urandom(256)}[damage])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        BertModel.from_pretrained(bert_dir)


def edit_weights(directory, change) -> None:
    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors")


QUERY = "encoder.layer.0.attention.self.query.weight"


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.update({"encoder.layer.0.extra.weight": torch.zeros(2)}),
     r"1 unexpected keys \(no entry in the key table\): encoder\.layer\.0\.extra\.weight"),
    (lambda t: t.pop(QUERY), r"1 missing keys \(the model needs them\): layers\.0\.attn\.q\.weight"),
    (lambda t: t.update({QUERY: t[QUERY][:-1]}),
     r"1 shape mismatches: layers\.0\.attn\.q\.weight: checkpoint \(63, 64\)"),
    (lambda t: t.update({QUERY: t[QUERY].long()}), r"not floating point .*: layers\.0\.attn\.q\.weight: torch\.int64"),
], ids=["extra key", "missing key", "wrong shape", "integer dtype"])
def test_tensors_that_do_not_fit_are_named_one_by_one(bert_dir, change, message):
    edit_weights(bert_dir, change)
    with pytest.raises(ConversionError, match=message):
        BertModel.from_pretrained(bert_dir)


def test_a_half_precision_checkpoint_loads_in_the_requested_dtype(bert_dir):
    edit_weights(bert_dir, lambda tensors: tensors.update({k: t.half() for k, t in tensors.items()}))
    model = BertModel.from_pretrained(bert_dir)
    assert model.layers[0].attn.q.weight.dtype == torch.float32
    assert torch.equal(model.layers[0].attn.q.weight, load_file(bert_dir / "model.safetensors")[QUERY].float())


def test_a_head_the_checkpoint_lacks_is_initialised_and_every_other_tensor_is_the_checkpoints_own(hf_checkpoint):
    directory, _ = reference(hf_checkpoint, "roberta")  # a base checkpoint: no LM head
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="freshly initialised"):
        model = RobertaModel.from_pretrained(directory, head="masked_lm")
    head, std = model.head, model.config.initializer_range
    assert head.dense.weight.std().item() == pytest.approx(std, rel=0.1)
    for zero in (head.dense.bias, head.norm.bias, head.decoder.bias):
        assert torch.equal(zero, torch.zeros_like(zero))
    assert torch.equal(head.norm.weight, torch.ones_like(head.norm.weight))
    assert head.decoder.weight is model.embeddings.word.weight
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        again = RobertaModel.from_pretrained(directory, head="masked_lm")
    assert torch.equal(again.head.dense.weight, head.dense.weight)  # the same seed, the same fresh head

    checkpoint = load_file(directory / "model.safetensors")
    expected = {key: tuple(t.shape) for key, t in model.base_state_dict().items()}
    loaded = hf_to_ours(model.architecture.keymap, checkpoint, expected, model.aliases(), model.config,
                        "RobertaModel").state
    assert len(loaded) > 30 and not [key for key in loaded if key.startswith("head.")]
    state = model.state_dict()
    for key, tensor in loaded.items():
        assert torch.equal(state[key], tensor), key
    for name, parameter in model.named_parameters():  # real parameters with memory of their own: in-place updates work
        assert isinstance(parameter, torch.nn.Parameter) and parameter.requires_grad, name
        assert parameter.is_contiguous() and parameter.device.type == "cpu", name
        assert parameter.untyped_storage().nbytes() == parameter.numel() * parameter.element_size(), name
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    assert torch.equal(model.embeddings.word.weight, checkpoint["embeddings.word_embeddings.weight"] + 1.0)
    assert torch.equal(load_file(directory / "model.safetensors")["embeddings.word_embeddings.weight"],
                       checkpoint["embeddings.word_embeddings.weight"])


def test_an_adapter_directory_is_refused_as_a_checkpoint(bert_dir, tmp_path):
    model = BertModel.from_pretrained(bert_dir)
    model.add_adapter("a", "lora")
    model.save_adapter(tmp_path / "adapter", "a")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        BertModel.from_pretrained(tmp_path / "adapter")


def test_invalid_config_json_is_a_clear_error(bert_dir):
    (bert_dir / "config.json").write_text("{ nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        BertModel.from_pretrained(bert_dir)


class RunsCode:
    """Unpickling this calls os.system; a weights-only load must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_carrying_code_is_refused_and_never_run(bert_dir, tmp_path):
    marker = tmp_path / "pwned"
    os.remove(bert_dir / "model.safetensors")
    with open(bert_dir / "pytorch_model.bin", "wb") as file:
        pickle.dump({"embeddings.word_embeddings.weight": RunsCode(marker)}, file)
    with pytest.raises(ValueError, match="weights-only"):
        BertModel.from_pretrained(bert_dir)
    assert not marker.exists()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("position_embedding_type", "relative_key", "implements only 'absolute'"),
    ("is_decoder", True, "is_decoder"),
    ("hidden_act", "softsign", "hidden_act='softsign' is not supported"),
    ("architectures", ["BertLMHeadModel"], "cannot load; supported"),
    ("num_attention_heads", 5, "not divisible"),
])
def test_config_values_we_do_not_implement_are_refused(bert_dir, field, value, message):
    edit_config(bert_dir, **{field: value})
    with pytest.raises(ValueError, match=message):
        BertModel.from_pretrained(bert_dir)


def test_unknown_config_fields_are_ignored_with_a_warning(bert_dir):
    edit_config(bert_dir, shiny_new_option=3)
    with pytest.warns(UserWarning, match="shiny_new_option"):
        BertModel.from_pretrained(bert_dir)


def test_unknown_override_lists_the_valid_fields(bert_dir):
    with pytest.raises(ValueError, match=r"no field\(s\) \['hiden_size'\]; valid fields"):
        BertModel.from_pretrained(bert_dir, hiden_size=3)


def test_weights_that_do_not_fit_the_config_report_the_shapes(bert_dir):
    edit_config(bert_dir, intermediate_size=128)
    with pytest.raises(ConversionError, match=r"shape mismatches: .*checkpoint \(96, 64\), model \(128, 64\)"):
        BertModel.from_pretrained(bert_dir)


def test_interrupted_save_leaves_the_previous_checkpoint_intact(bert_dir, monkeypatch, tmp_path):
    model = BertModel.from_pretrained(bert_dir)
    model.save_pretrained(tmp_path / "out")
    before = {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(peftcore.io, "save_file", crash)
    with torch.no_grad():
        model.embeddings.word.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "out")
    assert {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
