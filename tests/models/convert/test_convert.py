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


# ---- strict reading, and full-model saves with adapters -------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "error", "message"), [
    ("hidden_size", "64", TypeError, "BertConfig.hidden_size must be"),
    ("layer_norm_eps", 0, ValueError, "layer_norm_eps must be positive"),
    ("layer_norm_eps", "1e-12", TypeError, "BertConfig.layer_norm_eps must be"),
    ("initializer_range", -1.0, ValueError, "initializer_range must not be negative"),
    ("tie_word_embeddings", "true", TypeError, "BertConfig.tie_word_embeddings must be"),
    ("num_hidden_layers", [2], TypeError, "BertConfig.num_hidden_layers must be"),
    ("num_labels", 10**9, ValueError, "num_labels=1000000000 exceeds 1,000,000"),
])
def test_config_json_is_read_strictly_naming_the_field(bert_dir, field, value, error, message):
    edit_config(bert_dir, **{field: value})
    with pytest.raises(error, match=message):
        BertModel.from_pretrained(bert_dir)


def test_a_checkpoint_with_nan_or_infinite_weights_is_refused(bert_dir):
    edit_weights(bert_dir, lambda t: t["encoder.layer.0.output.dense.bias"].__setitem__(0, float("inf")))
    with pytest.raises(ConversionError, match=r"NaN or infinite values: \['encoder.layer.0.output.dense.bias'\]"):
        BertModel.from_pretrained(bert_dir)


def sharded(directory, weight_map: dict) -> None:
    """Split a checkpoint's weights into two shards under a hand-written index."""
    tensors = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[: len(keys) // 2]}, directory / "one.safetensors")
    save_file({k: tensors[k] for k in keys[len(keys) // 2:]}, directory / "two.safetensors")
    index = {k: "one.safetensors" if i < len(keys) // 2 else "two.safetensors" for i, k in enumerate(keys)}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {**index, **weight_map}}))


@pytest.mark.parametrize(("weight_map", "message"), [
    ({"extra": "../outside.safetensors"}, "not files of the checkpoint directory"),
    ({"extra": "/etc/passwd"}, "not files of the checkpoint directory"),
    ({"extra": "sub/dir.safetensors"}, "not files of the checkpoint directory"),
])
def test_a_shard_index_may_name_only_files_beside_it(bert_dir, weight_map, message):
    sharded(bert_dir, weight_map)
    with pytest.raises(ValueError, match=message):
        BertModel.from_pretrained(bert_dir)


def test_a_tensor_in_two_shards_is_refused(bert_dir):
    sharded(bert_dir, {})
    first = load_file(bert_dir / "one.safetensors")
    save_file({**load_file(bert_dir / "two.safetensors"), **first}, bert_dir / "two.safetensors")
    with pytest.raises(ValueError, match="in more than one shard"):
        BertModel.from_pretrained(bert_dir)


def test_from_pretrained_returns_the_model_in_eval_mode(bert_dir):
    model = BertModel.from_pretrained(bert_dir)
    assert not model.training and not any(module.training for module in model.modules())


def test_our_full_save_keeps_adapters_heads_fusions_merges_and_the_setup(bert_dir, tmp_path):
    from peftcore.composition import Fuse, Stack

    model = BertModel.from_pretrained(bert_dir)
    for name, config in {"a": "seq_bn", "b": "seq_bn", "l": "lora", "p": "prefix_tuning[prefix_length=3]",
                         "c": "compacter[reduction_factor=8]"}.items():
        model.add_adapter(name, config)
        with torch.no_grad():
            for parameter in model.adapter_parameters(name):
                parameter.add_(torch.randn_like(parameter) * 0.1)
    model.add_adapter_fusion(["a", "b"])
    model.add_classification_head("a", num_labels=3)
    model.merge_adapter("l")
    model.set_active_adapters(Stack("p", Fuse("a", "b")))
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=(ids != 0).long())
    model.save_pretrained(tmp_path / "ours", format="peftcore")
    again = from_pretrained(tmp_path / "ours")
    assert (again.active_adapters, again.active_head, again.merged_adapters()) == (Stack("p", Fuse("a", "b")), "a",
                                                                                   {"l"})
    assert sorted(again.adapter_configs) == sorted(model.adapter_configs) and sorted(again.heads) == ["a"]
    assert all(torch.equal(t, again.state_dict()[key]) for key, t in model.state_dict().items())
    with torch.no_grad():
        got = again(input_ids=ids, attention_mask=(ids != 0).long())
    assert torch.equal(got.logits, expected.logits)


def test_the_hf_format_writes_the_base_model_and_names_what_it_leaves_out(bert_dir, tmp_path):
    model = BertModel.from_pretrained(bert_dir)
    model.add_adapter("p", "prefix_tuning[prefix_length=3]")
    model.add_adapter("l", "lora")
    model.merge_adapter("l")
    with pytest.warns(UserWarning, match=r"merged adapters \['l'\] baked in\); left out: .*'adapters': \['l', 'p'\]"):
        model.save_pretrained(tmp_path / "hf")
    BertModel.from_pretrained(tmp_path / "hf")  # a checkpoint transformers and we load: nothing of the adapters
