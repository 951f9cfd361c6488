"""peftcore.adapters' model classes (peftcore/adapters/models.py): AdapterHub's and transformers' names over our
models, built from transformers config objects, saving as AdapterHub does, and ``init``/``load_model``."""

from __future__ import annotations

import adapters as adapterhub
import pytest
import safetensors.torch
import torch
import transformers as tf

import peftcore.adapters as adapters
from peftcore.models import RobertaModel
from tests import archs
from tests.archs import ARCHS, TEXT_TINY

BERT = dict(TEXT_TINY, num_attention_heads=4)


def hf_config(arch: str = "bert", **fields):
    return ARCHS[arch].hf_config("default", **{**BERT, **fields})


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_architecture_has_adapterhubs_model_class_built_from_a_transformers_config(arch):
    config = ARCHS[arch].hf_config("default")
    model = adapters.AutoAdapterModel.from_config(config)
    assert type(model) is adapters.ADAPTER_MODEL_MAPPING[type(config)]
    assert isinstance(model, ARCHS[arch].model) and model.head is None
    assert type(model).__name__ == type(adapterhub.AutoAdapterModel.from_config(config)).__name__ if (
        type(config) in adapterhub.ADAPTER_MODEL_MAPPING) else type(model).__name__.endswith("AdapterModel")
    assert model.config.hidden_size == config.hidden_size


def test_transformers_task_classes_build_their_head_from_the_config_and_init_accepts_them():
    config = hf_config(num_labels=3)
    model = adapters.BertForSequenceClassification(config)
    assert adapters.init(model) is None
    assert model.config.num_labels == 3 and model(**archs.inputs(model.config)).logits.shape == (3, 3)
    auto = adapters.AutoModelForTokenClassification.from_config(hf_config("roberta", num_labels=4))
    assert isinstance(auto, RobertaModel) and type(auto).__name__ == "RobertaForTokenClassification"
    assert auto(**archs.inputs(auto.config)).logits.shape[-1] == 4
    with pytest.raises(TypeError, match="cannot add adapters to a BertForSequenceClassification; build the model "
                                        "from peftcore.adapters"):
        adapters.init(tf.BertForSequenceClassification(config))


def test_the_same_weights_give_transformers_outputs(hf_checkpoint):
    directory, theirs = archs.reference(hf_checkpoint, "bert", "sequence_classification", num_labels=3)
    ours = adapters.BertForSequenceClassification.from_pretrained(directory)
    batch = archs.inputs(theirs.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits, atol=1e-5, rtol=0)


def test_adapters_save_in_adapterhubs_files_which_adapterhub_loads(tmp_path):
    model = adapters.BertAdapterModel(hf_config())
    model.add_adapter("a", adapters.SeqBnConfig(reduction_factor=4))
    model.add_classification_head("a", num_labels=2)
    model.save_adapter(tmp_path / "a", "a")
    assert {path.name for path in (tmp_path / "a").iterdir()} >= {"adapter_config.json", "pytorch_adapter.bin",
                                                                  "head_config.json", "pytorch_model_head.bin"}
    theirs = adapterhub.BertAdapterModel(hf_config())
    theirs.load_adapter(str(tmp_path / "a"), set_active=True)
    assert "a" in theirs.adapters_config and "a" in theirs.heads


def test_save_pretrained_keeps_adapters_heads_and_the_setup_and_load_model_brings_them_back(tmp_path):
    model = adapters.BertAdapterModel(hf_config())
    model.add_adapter("a", "lora")
    model.add_classification_head("a", num_labels=2)
    model.set_active_adapters("a")
    model.eval()
    with torch.no_grad():
        model.heads["a"][1].bias.fill_(0.5)
    model.save_pretrained(tmp_path)
    loaded, info = adapters.load_model(tmp_path, adapters.BertAdapterModel, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert loaded.active_adapters == model.active_adapters and loaded.active_head == "a"
    batch = archs.inputs(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert isinstance(adapters.AutoAdapterModel.from_pretrained(tmp_path), adapters.BertAdapterModel)


def test_loads_fill_adapterhubs_loading_info_and_take_its_use_safetensors(tmp_path):
    model = adapters.BertAdapterModel(hf_config())
    model.add_adapter("a", "seq_bn")
    model.save_adapter(tmp_path, "a", use_safetensors=True)
    other = adapters.BertAdapterModel(hf_config())
    info = {}
    assert other.load_adapter(tmp_path, loading_info=info, use_safetensors=True) == "a"
    assert info == {"missing_keys": [], "unexpected_keys": []}


def test_mapping_and_auto_classes_refuse_what_they_do_not_know():
    assert tf.BertConfig in adapters.ADAPTER_MODEL_MAPPING and tf.GPT2Config not in adapters.ADAPTER_MODEL_MAPPING
    with pytest.raises(KeyError, match="no peftcore model for model_type 'gpt2'"):
        adapters.AutoAdapterModel.from_config(tf.GPT2Config())
    with pytest.raises(TypeError, match="from_config"):
        adapters.AutoAdapterModel()
    with pytest.raises(TypeError, match="takes a BertConfig, a config.json dict or a transformers config"):
        adapters.BertAdapterModel(42)


def test_the_namespace_is_adapterhubs_for_what_peftcore_has():
    """Every name of AdapterHub's top level that peftcore.adapters has is of the same kind (something to call for
    something to call: MAMConfig builds a union here, it is a union class there)."""
    ours = set(adapters.__all__)
    theirs = set(adapterhub.__all__) if hasattr(adapterhub, "__all__") else {
        name for name in dir(adapterhub) if not name.startswith("_")}
    for name in ours & theirs:
        assert callable(getattr(adapters, name)) == callable(getattr(adapterhub, name)), name
    assert {"AutoAdapterModel", "BertAdapterModel", "AdapterSetup", "Stack", "Fuse", "ConfigUnion", "LoRAConfig",
            "init", "load_model", "ADAPTER_CONFIG_MAP", "ADAPTERFUSION_CONFIG_MAP"} <= ours
    assert adapters.AdapterConfig.load("lora[r=4]") == adapters.LoRAConfig(r=4)
    assert adapters.__version__ == adapterhub.__version__


def test_adapterhubs_loading_is_the_default_here_and_says_what_it_left_out(tmp_path):
    model = adapters.BertAdapterModel(hf_config())
    model.add_adapter("a", "seq_bn")
    model.save_adapter(tmp_path, "a", format="peftcore", with_head=False)
    weights = tmp_path / "adapter_model.safetensors"
    state = safetensors.torch.load_file(weights)
    state["extra"] = torch.zeros(1)
    safetensors.torch.save_file(state, weights)
    with pytest.warns(UserWarning, match=r"ignoring \['extra'\]; pass strict=True"):
        adapters.BertAdapterModel(hf_config()).load_adapter(tmp_path)
    info = {}
    adapters.BertAdapterModel(hf_config()).load_adapter(tmp_path, loading_info=info)
    assert info == {"missing_keys": [], "unexpected_keys": ["extra"]}
    with pytest.raises(ValueError, match="does not fit"):
        adapters.BertAdapterModel(hf_config()).load_adapter(tmp_path, strict=True)


def test_loading_a_head_over_one_of_its_name_replaces_it_as_adapterhub_does(tmp_path):
    model = adapters.BertAdapterModel(hf_config())
    model.add_tagging_head("tags", num_labels=3, id2label={0: "O", 1: "B", 2: "I"})
    model.save_head(tmp_path, "tags")
    with torch.no_grad():
        model.heads["tags"][1].weight.zero_()
    assert model.load_head(tmp_path) == "tags"
    assert model.get_labels("tags") == ["O", "B", "I"] and model.heads["tags"][1].weight.abs().sum() > 0


def test_adapter_layers_show_each_sites_adapters_and_the_tensors_they_share_as_adapterhubs_do():
    model = adapters.BertAdapterModel(hf_config())
    for task in "abc":
        model.add_adapter(task, adapters.MTLLoRAConfig())
    model.share_parameters(adapter_names=adapters.MultiTask("a", "b", "c"), name="shared")
    seen = []

    def look(layer_index: int, layer: adapters.models.AdapterLayer) -> None:
        for task in "abc":
            if task in layer.adapter_modules:
                assert layer.adapter_modules[task].lora_A is layer.shared_parameters["shared"]["lora_A"]
                seen.append(layer_index)

    model.apply_to_adapter_layers(look)
    assert sorted(set(seen)) == list(range(BERT["num_hidden_layers"]))
    shared = [name for name, _ in model.named_parameters() if ".shared_parameters.shared." in name]
    assert shared and all(name.endswith(("lora_A", "lora_B")) for name in shared)  # AdapterHub's names for them
