"""The ``Architecture`` record: config.json renames both ways, and the HF-layout questions a model answers from it
(where AdapterHub keeps a site's modules, which HF modules PEFT may target, the head's key table)."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import replace

import pytest
import torch

from peftcore.models import BertModel
from peftcore.models.convert.tables import BERT, split_in_proj
from peftcore.sites import SiteLinear, find_sites
from tests.archs import ARCHS, reference

HEADS = {"bert": "sequence_classification", "roberta": "masked_lm", "deberta": "question_answering",
         "deberta-v2": "token_classification", "vit": "image_classification", "xlm-roberta": "question_answering",
         "camembert": "token_classification", "electra": "masked_lm", "distilbert": "sequence_classification",
         "albert": "masked_lm", "modernbert": "sequence_classification"}


def build(arch: str, head: str | None = None):
    """Our model with every optional module (the "every_tensor" variant)."""
    return ARCHS[arch].model(ARCHS[arch].config("every_tensor", head=head))


class RenamedBert(BertModel):
    """BERT under a record whose config.json calls hidden_size "dim", as DistilBERT's does."""

    architecture = replace(BERT, config_renames={"dim": "hidden_size"})


def test_a_config_rename_reads_the_hf_name_and_exports_it_back(hf_checkpoint, tmp_path):
    source, _ = reference(hf_checkpoint, "bert")
    directory = shutil.copytree(source, tmp_path / "renamed")
    raw = json.loads((directory / "config.json").read_text())
    raw["dim"] = raw.pop("hidden_size")
    (directory / "config.json").write_text(json.dumps(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "dim" is known: no "not used" warning
        model = RenamedBert.from_pretrained(directory)
    assert model.config.hidden_size == ARCHS["bert"].size["hidden_size"]
    model.save_pretrained(tmp_path / "out")
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["dim"] == ARCHS["bert"].size["hidden_size"] and "hidden_size" not in exported


def test_a_config_json_with_both_names_of_a_renamed_field_is_refused(hf_checkpoint, tmp_path):
    source, _ = reference(hf_checkpoint, "bert")
    directory = shutil.copytree(source, tmp_path / "both")
    raw = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**raw, "dim": 32}))
    with pytest.raises(ValueError, match=r"sets both \['dim'\] and their BertConfig names \['hidden_size'\]"):
        RenamedBert.from_pretrained(directory)


@pytest.mark.parametrize(("change", "message"), [
    (dict(site_paths={"attn.query": "x"}), r"unknown sites \['attn.query'\]"),
    (dict(config_renames={"dim": "hidden_size", "d_model": "hidden_size"}), "maps two config.json fields"),
    (dict(hf_classes={}), "at least one transformers class"),
])
def test_a_malformed_record_fails_when_built(change, message):
    with pytest.raises(ValueError, match=message):
        replace(BERT, **change)


def test_site_paths_name_adapterhubs_modules_and_none_where_it_has_none():
    bert, deberta = build("bert"), build("deberta")
    assert bert.hf_site_path("attn.residual", 3) == "encoder.layer.3.attention.output"
    assert bert.hf_site_path("embeddings", None) == deberta.hf_site_path("embeddings", None) == "invertible_adapters"
    assert deberta.hf_site_path("attn.q", 0) is None  # v1's q/k/v are one fused in_proj
    assert deberta.hf_site_path("ffn.output", 1) == "encoder.layer.1.output.dense"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("with_head", [False, True], ids=["base", "head"])
def test_hf_modules_cover_every_linear_site_once_at_its_site_path(arch, with_head):
    model = build(arch, HEADS[arch] if with_head else None)
    modules = model.hf_modules(with_prefix=False)
    covered = [(module.layer, site) for module in modules.values() for site in module.sites]
    linear = [(site.layer, site.name) for site in find_sites(model) if isinstance(site.module, SiteLinear)]
    assert sorted(covered) == sorted(linear)
    for module in modules.values():
        if len(module.sites) == 1 and module.sites[0] != "attn.out":  # AdapterHub keeps no modules at attn.out
            assert model.hf_site_path(module.sites[0], module.layer) == module.path
    prefixed = model.hf_modules(with_prefix=True)
    head_paths = {key.removesuffix(".weight") for key in model.hf_head_keys() if key.endswith(".weight")}
    assert bool(head_paths) == with_head and head_paths <= set(prefixed)
    assert {path if path in head_paths else model.hf_prefix + path for path in modules} == set(prefixed)


def test_albert_layers_are_numbered_by_group_and_layer_in_group_in_hf_paths():
    model = build("albert")  # two groups of two layers: our layer 3 is group 1's second
    assert model.hf_site_path("attn.q", 3) == "encoder.albert_layer_groups.1.albert_layers.1.attention.query"
    assert model.hf_site_path("ffn.residual", 2) == "encoder.albert_layer_groups.1.albert_layers.0.output_adapters"
    module = model.hf_modules(with_prefix=True)["albert.encoder.albert_layer_groups.0.albert_layers.1.ffn_output"]
    assert (module.layer, module.sites) == (1, ("ffn.output",))


def test_deberta_v1_in_proj_covers_q_k_v_with_split_and_join_bound_to_the_config():
    model = build("deberta")
    module = model.hf_modules(with_prefix=True)["deberta.encoder.layer.1.attention.self.in_proj"]
    assert (module.layer, module.sites) == (1, ("attn.q", "attn.k", "attn.v"))
    weight = torch.randn(3 * model.config.hidden_size, model.config.hidden_size)
    parts = module.split(weight)
    assert all(torch.equal(a, b) for a, b in zip(parts, split_in_proj(weight, model.config), strict=True))
    assert torch.equal(module.join(parts), weight)


def test_hf_head_keys_are_the_own_heads_table_and_empty_without_a_head():
    assert build("bert").hf_head_keys() == {}
    assert build("bert", "sequence_classification").hf_head_keys() == {
        "classifier.weight": "head.classifier.weight", "classifier.bias": "head.classifier.bias"}
    assert build("bert", "masked_lm").hf_head_keys()["cls.seq_relationship.weight"] is None  # dropped
