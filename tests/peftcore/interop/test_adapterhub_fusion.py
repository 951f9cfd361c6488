"""AdapterFusion files and the fusions AdapterHub accepts, against live AdapterHub (``adapters`` 1.3.0): fusions with
a custom name (``add_adapter_fusion(Fuse("a", "b"), name="custom")``) keep their ``adapter_names`` both ways, a fusion's
head travels with it (``save_adapter_fusion(with_head=...)``), safetensors files both ways, and ours refuses to fuse
exactly the adapters AdapterHub refuses to fuse (placed at different sub-layers).

One AdapterHub defect is worked around: its flex models load no key of a fusion file written without the base-model
prefix (``AdapterFusionLoader.load`` does not pass ``in_base_model``, and loading is not strict), so ours writes the
prefix, which its bare models read too.
"""

from __future__ import annotations

import json

import adapters.composition as ah
import pytest
import torch

from peftcore.composition import Fuse
from tests.archs import reference
from tests.parity import assert_parity
from tests.peftcore.interop.test_adapterhub_composition import Pair

WEIGHTS = {False: ("pytorch_model_adapter_fusion.bin", "pytorch_model_head.bin"),
           True: ("model_adapter_fusion.safetensors", "model_head.safetensors")}


@pytest.fixture
def pair(hf_checkpoint, tmp_path):
    """pair(flex) -> AdapterHub and ours holding adapters a and b (b four times wider: sizes may differ in a
    fusion), AdapterHub's perturbed and saved, loaded into ours."""
    def make(flex: bool = False) -> Pair:
        directory = reference(hf_checkpoint, "bert", variant="wide")[0]
        return Pair("bert", directory, flex).add({"a": "seq_bn", "b": "seq_bn[reduction_factor=4]"}, tmp_path)

    return make


def perturbed(model: torch.nn.Module, word: str) -> None:
    """Move every parameter whose name holds ``word`` (a fusion's or head's name) off its initialisation."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if f".{word}." in key:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def logits(models: Pair, ours_setup, theirs_setup, head: str) -> tuple[torch.Tensor, torch.Tensor]:
    models.ours.set_active_adapters(ours_setup)
    models.theirs.set_active_adapters(theirs_setup)
    models.ours.active_head = models.theirs.active_head = head
    with torch.no_grad():
        return models.ours(**models.inputs).logits, models.theirs(**models.inputs).logits


@pytest.mark.parametrize("safetensors", [False, True], ids=["pickle", "safetensors"])
def test_custom_named_fusion_saved_by_adapterhub_loads_over_its_adapters_and_gives_its_outputs(pair, safetensors,
                                                                                             tmp_path):
    models = pair()
    models.theirs.add_adapter_fusion(ah.Fuse("a", "b"), name="custom")
    perturbed(models.theirs, "custom")
    models.theirs.save_adapter_fusion(str(tmp_path / "fusion"), "custom", use_safetensors=safetensors)
    config = json.loads((tmp_path / "fusion" / "adapter_fusion_config.json").read_text())
    assert config["name"] == "custom" and config["adapter_names"] == ["a", "b"]
    assert (tmp_path / "fusion" / WEIGHTS[safetensors][0]).is_file()
    assert models.ours.load_adapter_fusion(tmp_path / "fusion", set_active=True) == "custom"
    assert models.ours.fused_adapters == {"custom": ("a", "b")}
    assert models.ours.active_adapters == Fuse("a", "b", name="custom")
    ours, theirs = models.hidden(Fuse("a", "b", name="custom"), ah.Fuse("a", "b", name="custom"))
    assert_parity(ours, theirs)
    assert (ours - models.ours_hidden("b")).abs().max() > 1e-3


@pytest.mark.parametrize(("flex", "safetensors"), [(False, False), (True, True)], ids=["bare-pickle", "flex-safe"])
def test_custom_named_fusion_saved_by_ours_in_adapterhub_layout_loads_over_its_adapters_in_adapterhub(
        pair, flex, safetensors, tmp_path):
    models = pair(flex)
    models.ours.add_adapter_fusion(Fuse("b", "a"), name="custom")
    perturbed(models.ours, "custom")
    models.ours.save_adapter_fusion(tmp_path / "fusion", "custom", format="adapterhub", use_safetensors=safetensors)
    assert sorted(p.name for p in (tmp_path / "fusion").iterdir()) == ["adapter_fusion_config.json",
                                                                      WEIGHTS[safetensors][0]]
    models.theirs.load_adapter_fusion(str(tmp_path / "fusion"), use_safetensors=safetensors)
    assert models.theirs.adapters_config.get_fusion("custom")[1] == ["b", "a"]
    ours, theirs = models.hidden(Fuse("b", "a", name="custom"), ah.Fuse("b", "a", name="custom"))
    assert_parity(theirs, ours)
    assert (ours - models.ours_hidden("a")).abs().max() > 1e-3


@pytest.mark.parametrize("safetensors", [False, True], ids=["pickle", "safetensors"])
@pytest.mark.parametrize("with_head", [True, "task"])
def test_fusion_head_saved_by_adapterhub_loads_with_the_fusion_and_gives_its_logits(pair, with_head, safetensors,
                                                                                   tmp_path):
    models = pair(flex=True)
    head = "custom" if with_head is True else with_head
    models.theirs.add_adapter_fusion(ah.Fuse("a", "b"), name="custom")
    models.theirs.add_classification_head(head, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
    perturbed(models.theirs, "custom")
    perturbed(models.theirs, head)
    models.theirs.save_adapter_fusion(str(tmp_path / "fusion"), "custom", with_head=with_head,
                                      use_safetensors=safetensors)
    assert sorted(p.name for p in (tmp_path / "fusion").iterdir()) == sorted(
        ["adapter_fusion_config.json", "head_config.json", *WEIGHTS[safetensors]])
    models.ours.load_adapter_fusion(tmp_path / "fusion", set_active=True)
    assert models.ours.active_head == head and models.ours.get_labels(head) == ["neg", "neu", "pos"]
    ours, theirs = logits(models, Fuse("a", "b", name="custom"), ah.Fuse("a", "b", name="custom"), head)
    assert_parity(ours, theirs)


@pytest.mark.parametrize("safetensors", [False, True], ids=["pickle", "safetensors"])
def test_fusion_head_saved_by_ours_in_adapterhub_layout_loads_in_adapterhub_and_gives_our_logits(pair, safetensors,
                                                                                                tmp_path):
    models = pair(flex=True)
    models.ours.add_adapter_fusion(Fuse("a", "b"), name="custom")
    models.ours.add_classification_head("custom", num_labels=3)
    perturbed(models.ours, "custom")
    models.ours.save_adapter_fusion(tmp_path / "fusion", "custom", with_head=True, format="adapterhub",
                                    use_safetensors=safetensors)
    assert sorted(p.name for p in (tmp_path / "fusion").iterdir()) == sorted(
        ["adapter_fusion_config.json", "head_config.json", *WEIGHTS[safetensors]])
    models.theirs.load_adapter_fusion(str(tmp_path / "fusion"), set_active=True, use_safetensors=safetensors)
    assert models.theirs.active_head == "custom"
    ours, theirs = logits(models, Fuse("a", "b", name="custom"), ah.Fuse("a", "b", name="custom"), "custom")
    assert_parity(theirs, ours)


def test_load_as_names_the_fusion_and_its_head_as_in_adapterhub(pair, tmp_path):
    models = pair(flex=True)
    models.theirs.add_adapter_fusion(ah.Fuse("a", "b"), name="custom")
    models.theirs.add_classification_head("custom", num_labels=2)
    models.theirs.save_adapter_fusion(str(tmp_path / "fusion"), "custom", with_head=True)
    models.theirs.load_adapter_fusion(str(tmp_path / "fusion"), load_as="other")
    models.ours.load_adapter_fusion(tmp_path / "fusion", load_as="other")
    assert models.theirs.adapters_config.get_fusion("other")[1] == ["a", "b"]
    assert models.ours.fused_adapters == {"other": ("a", "b")}
    assert "other" in models.theirs.heads and list(models.ours.heads) == ["other"]
    assert models.ours.active_head is None  # set_active=False, as AdapterHub's head loader is told


def test_a_fusion_without_the_head_it_was_saved_with_loads_alone(pair, tmp_path):
    models = pair(flex=True)
    models.theirs.add_adapter_fusion(ah.Fuse("a", "b"), name="custom")
    models.theirs.add_classification_head("custom", num_labels=2)
    models.theirs.save_adapter_fusion(str(tmp_path / "fusion"), "custom", with_head=True)
    models.ours.load_adapter_fusion(tmp_path / "fusion", with_head=False)
    assert "custom" in models.ours.fusion_configs and "custom" not in models.ours.heads


@pytest.mark.parametrize("adapter_names", ["a,b", [], ["a", 3]])
def test_a_fusion_file_whose_adapter_names_are_no_list_of_names_is_refused(pair, adapter_names, tmp_path):
    models = pair()
    models.ours.add_adapter_fusion(Fuse("a", "b"), name="custom")
    models.ours.save_adapter_fusion(tmp_path / "fusion", "custom", format="adapterhub")
    models.ours.delete_adapter_fusion("custom")
    config = json.loads((tmp_path / "fusion" / "adapter_fusion_config.json").read_text())
    (tmp_path / "fusion" / "adapter_fusion_config.json").write_text(json.dumps({**config,
                                                                               "adapter_names": adapter_names}))
    with pytest.raises(ValueError, match="names the fused adapters .*; expected a list of adapter names"):
        models.ours.load_adapter_fusion(tmp_path / "fusion")
    assert models.ours.fusion_configs == {}


def test_saving_a_fusion_with_a_head_it_does_not_have_is_refused_as_in_adapterhub(pair, tmp_path):
    models = pair(flex=True)
    models.theirs.add_adapter_fusion(ah.Fuse("a", "b"), name="custom")
    with pytest.raises(ValueError, match="No head with name custom found"):
        models.theirs.save_adapter_fusion(str(tmp_path / "theirs"), "custom", with_head=True)
    models.ours.add_adapter_fusion(Fuse("a", "b"), name="custom")
    for format in ("peftcore", "adapterhub"):
        with pytest.raises(KeyError, match="no head named 'custom'"):
            models.ours.save_adapter_fusion(tmp_path / format, "custom", with_head=True, format=format)
        assert not (tmp_path / format).exists()


# (the second adapter's config, whether AdapterHub accepts a fusion of it with a seq_bn adapter); AdapterHub drops a
# shared phm rule when it saves from a bare model (tests/peftcore/methods/test_phm.py)
FUSIONS = {"seq_bn[reduction_factor=2]": True, "par_bn": True, "seq_bn_inv": True,
           "compacter++[reduction_factor=8, shared_phm_rule=False]": True,
           "double_seq_bn": False, "lora": False, "prefix_tuning": False, "ia3": False,
           "compacter[reduction_factor=8, shared_phm_rule=False]": False}


@pytest.mark.parametrize("config", FUSIONS)
def test_ours_fuses_exactly_the_adapters_adapterhub_fuses(hf_checkpoint, config, tmp_path):
    """AdapterHub refuses a fusion of adapters whose mh_adapter or output_adapter differ (non-bottleneck configs have
    neither): ours refuses adapters at different residual sites, which is the same set."""
    directory = reference(hf_checkpoint, "bert", variant="wide")[0]
    models = Pair("bert", directory).add({"a": "seq_bn", "c": config}, tmp_path)
    if FUSIONS[config]:  # (running a Fuse over an invertible adapter is refused apart: plugs.embedding)
        models.theirs.add_adapter_fusion(ah.Fuse("a", "c"))
        models.ours.add_adapter_fusion(Fuse("a", "c"))
        assert models.ours.fused_adapters == {"a,c": ("a", "c")}
        return
    with pytest.raises(ValueError, match="must define the same value for config attribute mh_adapter"):
        models.theirs.add_adapter_fusion(ah.Fuse("a", "c"))
    with pytest.raises(ValueError, match="fuses adapters placed at different sub-layers"):
        models.ours.add_adapter_fusion(Fuse("a", "c"))
    assert models.ours.fusion_configs == {}
