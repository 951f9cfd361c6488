"""Bottleneck and invertible adapters against live AdapterHub (``adapters`` 1.3.0), both ways.

AdapterHub trains an adapter (3 AdamW steps, so that identity-initialised ones move), saves it, and ours loads it and
gives AdapterHub's outputs within 1e-5; ours saves in AdapterHub's layout and AdapterHub loads it and gives ours.
Flexible heads, safetensors files, prefixed and bare key layouts, and every placement option of ``BnConfig`` are
covered on BERT and RoBERTa; DeBERTa v2 and ViT take a representative subset, XLM-RoBERTa and ELECTRA that subset
and each other method family. DeBERTa v1 is compared key by key only: AdapterHub's DeBERTa v1 integration changes
outputs with no adapter at all (a test below says so).

Where AdapterHub 1.3.0 is wrong, a test pins its behaviour and ours next to it, so it fails if they fix it:
its static masked-LM heads skip the invertible adapter's inverse, its GLOW coupling crashes on any forward,
``residual_before_ln="post_add"`` without ``original_ln_before`` crashes, and ``ln_before`` adapters cannot be saved
as safetensors.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import adapters
import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

from peftcore.interop import adapterhub
from peftcore.models import BertModel
from tests import archs
from tests.archs import ADAPTERHUB_ARCHS, ARCHS, BERT_FAMILY, reference
from tests.parity import assert_parity, real_tokens

NAMED = ["seq_bn", "double_seq_bn", "par_bn", "scaled_par_bn", "seq_bn_inv", "double_seq_bn_inv",
         "pfeiffer", "houlsby", "parallel", "scaled_parallel", "pfeiffer+inv", "houlsby+inv"]
# every placement option of BnConfig, each at least once
VARIANTS = [
    "seq_bn[ln_before=True]",
    "seq_bn[ln_after=True]",
    "double_seq_bn[ln_before=True, ln_after=True]",
    "seq_bn[residual_before_ln=False]",
    "seq_bn[residual_before_ln='post_add']",
    "double_seq_bn[original_ln_before=True, residual_before_ln='post_add']",
    "seq_bn[adapter_residual_before_ln=True, ln_after=True]",
    "double_seq_bn[adapter_residual_before_ln=True]",
    "seq_bn[original_ln_after=False]",
    "double_seq_bn[original_ln_before=True, original_ln_after=False]",
    "double_seq_bn[original_ln_after=False, residual_before_ln=False]",
    "seq_bn[scaling='learned']",
    "seq_bn[scaling='channel']",
    "seq_bn[scaling=0.5]",
    "par_bn[scaling='channel', ln_after=True]",
    "seq_bn[use_gating=True]",
    "par_bn[use_gating=True]",
    "double_seq_bn[use_gating=True, init_weights='houlsby']",
    "seq_bn[reduction_factor={'0': 4, 'default': 16}]",
    "double_seq_bn[leave_out=[1]]",
    "seq_bn_inv[leave_out=[0], inv_adapter_reduction_factor=4, non_linearity='tanh']",
    "seq_bn[init_weights='houlsby']",
    "double_seq_bn[init_weights='mam_adapter']",
    "par_bn[init_weights='bert', non_linearity='gelu']",
]
SUBSET = ["seq_bn", "double_seq_bn", "scaled_par_bn", "seq_bn[ln_before=True, use_gating=True, scaling='channel']",
          "double_seq_bn[reduction_factor={'0': 4, 'default': 16}, leave_out=[1], ln_after=True]",
          "lora[attn_matrices=['q', 'k', 'v'], intermediate_lora=True, output_lora=True]", "ia3[use_gating=True]",
          "prefix_tuning[prefix_length=4, bottleneck_size=16]", "mam",
          "unipelt",
          "dora[attn_matrices=['q', 'k', 'v'], intermediate_lora=True, alpha=16]",
          "vera[init_weights_seed=3]", "dvora[init_weights_seed=3]",  # AdapterHub saves no VeRA projections:
          # seeded, they are drawn again
          "mtl_lora[attn_matrices=['q', 'k', 'v'], n_up_projection=2]"]  # one task's adapter: no MultiTask needed
# with SUBSET, each method family at least once: what the registry's newer text models run
# (Compacter's bottleneck 64 // 8 takes phm_dim 4; AdapterHub drops a shared phm rule when it saves from a bare model,
# tests/peftcore/methods/test_phm.py)
EVERY_METHOD = ["double_seq_bn_inv", "seq_bn_inv", "par_bn", "compacter[reduction_factor=8, shared_phm_rule=False]",
                "compacter++[reduction_factor=8, shared_phm_rule=False]", "prefix_tuning_flat"]
SUBSETS = {"bert": NAMED + VARIANTS, "roberta": NAMED + VARIANTS, "deberta-v2": [*SUBSET, "double_seq_bn_inv"],
           "vit": SUBSET,  # AdapterHub refuses invertible adapters on ViT
           "xlm-roberta": [*SUBSET, *EVERY_METHOD], "electra": [*SUBSET, *EVERY_METHOD],
           # DistilBERT: no prefix tuning (AdapterHub's SDPA path mis-masks its prefixes on padded batches); ALBERT:
           # no adapter at attn.residual that reads the attention's input or output alone (AdapterHub's ALBERT swaps
           # the two). test_distilbert.py and test_albert.py pin both, and run Compacter (saved from a flex model)
           "distilbert": [*[c for c in SUBSET if "prefix" not in c and c not in ("mam", "unipelt")],
                          "double_seq_bn_inv", "lora[use_gating=True]"],
           "albert": [*[c for c in SUBSET if not c.startswith("double_seq_bn")], "seq_bn_inv"]}
CASES = [pytest.param(arch, config, id=f"{arch}-{config}") for arch in ADAPTERHUB_ARCHS for config in SUBSETS[arch]]
# AdapterPlus has no config name; its 96 would leave no unit at these widths, and AdapterHub's stochastic depth needs
# torchvision (ours does not; test_bottleneck.py tests it)
ADAPTER_PLUS = adapters.AdapterPlusConfig(reduction_factor=8, stochastic_depth=0.0)
CASES += [pytest.param(arch, ADAPTER_PLUS, id=f"{arch}-AdapterPlusConfig")
          for arch in ("bert", "roberta", "deberta-v2", "vit")]

# flexible heads: (AdapterHub's add_*_head, its kwargs, the adapter trained with it)
HEADS = {
    "classification": ("classification", dict(num_labels=3), "seq_bn"),
    "multilabel": ("classification", dict(num_labels=4, multilabel=True), "houlsby"),
    "tagging": ("tagging", dict(num_labels=5), "double_seq_bn[ln_after=True]"),
    "qa": ("qa", {}, "par_bn"),
    "masked_lm": ("masked_lm", {}, "seq_bn_inv"),  # the flex LM head runs the inverse: parity on logits
}


# ---- helpers --------------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(hf_checkpoint):
    """checkpoint(arch) -> the directory of a random-init transformers model written by save_pretrained, at the text
    models' width (the "wide" variant: ViT widens)."""
    return lambda arch: reference(hf_checkpoint, arch, variant="wide")[0]


def inputs_for(arch: str) -> dict[str, torch.Tensor]:
    """A padded text batch (three lengths) or three random images."""
    return archs.inputs(ARCHS[arch].hf_config("wide"))


def adapterhub_model(arch: str, directory: Path, flex: bool = False) -> torch.nn.Module:
    """AdapterHub on the checkpoint: ``adapters.init`` on the bare transformers model, or its XAdapterModel."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the flex class warns about the checkpoint's missing head
        if flex:
            return ARCHS[arch].adapterhub.from_pretrained(directory).eval()
        model = ARCHS[arch].hf[None].from_pretrained(directory).eval()
    adapters.init(model)
    return model


def train_adapterhub(model: torch.nn.Module, inputs: dict, output: Callable = lambda out: out.last_hidden_state):
    """3 AdamW steps on adapter 'a' (and its head), so its weights are far from their initialisation."""
    torch.manual_seed(0)
    model.train_adapter("a")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        output(model(**inputs)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def perturb(ours: torch.nn.Module, name: str) -> None:
    """Move every tensor of adapter ``name`` and its head off its initialisation (several start as identity)."""
    generator = torch.Generator().manual_seed(0)
    tied = {id(p) for p in ours.embeddings.parameters()}  # a masked-LM decoder is the word embeddings: leave it
    head = [p for p in ours.heads[name].parameters() if id(p) not in tied] if name in ours.heads else []
    parameters = [*ours.adapter_parameters(name), *head]
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def ours_from(arch: str, directory: Path) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a checkpoint without pooler or head says so
        return ARCHS[arch].model.from_pretrained(directory).eval()


def hidden(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return real_tokens(model(**inputs).last_hidden_state, inputs.get("attention_mask"))


def assert_moved(adapted: torch.Tensor, plain: torch.Tensor) -> None:
    """The adapter changes the outputs, so parity is not between two plain models."""
    assert (adapted - plain).abs().max() > 1e-3


def read_adapterhub_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / "adapter.safetensors").is_file():
        return load_file(directory / "adapter.safetensors")
    return torch.load(directory / "pytorch_adapter.bin", weights_only=True)


def head_logits(out, head: str, attention_mask: torch.Tensor) -> torch.Tensor:
    """The head's logits; per-token ones at real tokens only (see real_tokens)."""
    logits = torch.stack((out.start_logits, out.end_logits), -1) if head == "qa" else out.logits
    return logits if logits.dim() == 2 else real_tokens(logits, attention_mask)


# ---- adapters, both ways --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "config"), CASES)
def test_adapter_trained_by_adapterhub_gives_its_outputs_in_ours(checkpoint, arch, config, tmp_path):
    directory, inputs = checkpoint(arch), inputs_for(arch)
    theirs = adapterhub_model(arch, directory)
    theirs.add_adapter("a", config=config)
    train_adapterhub(theirs, inputs).save_adapter(str(tmp_path / "a"), "a")
    ours = ours_from(arch, directory)
    plain = hidden(ours, inputs)
    assert ours.load_adapter(tmp_path / "a", set_active=True) == "a"
    expected = hidden(theirs, inputs)
    assert_parity(hidden(ours, inputs), expected)  # real tokens; gates also read the padding, so it must match too
    assert_moved(expected, plain)


@pytest.mark.parametrize(("old", "current"), [("gelu", "gelu_new"), ("gelu_orig", "gelu")])
def test_an_old_file_without_version_names_gelu_as_adapter_transformers_meant_it(checkpoint, old, current, tmp_path):
    """adapter-transformers before 3.0 wrote no "version" and meant the tanh GELU by "gelu"; AdapterHub renames."""
    directory, inputs = checkpoint("bert"), inputs_for("bert")
    theirs = adapterhub_model("bert", directory)
    theirs.add_adapter("a", config=f"seq_bn[non_linearity='{current}']")
    train_adapterhub(theirs, inputs).save_adapter(str(tmp_path / "a"), "a")
    raw = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    del raw["version"]
    raw["config"]["non_linearity"] = old
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(raw))
    old_theirs = adapterhub_model("bert", directory)
    old_theirs.load_adapter(str(tmp_path / "a"), set_active=True)
    ours = ours_from("bert", directory)
    ours.load_adapter(tmp_path / "a", set_active=True)
    assert ours.adapter_configs["a"].non_linearity == current
    assert_parity(hidden(ours, inputs), hidden(old_theirs, inputs))


@pytest.mark.parametrize(("arch", "config"), CASES)
def test_ours_saved_in_adapterhub_layout_gives_our_outputs_in_adapterhub(checkpoint, arch, config, tmp_path):
    directory, inputs = checkpoint(arch), inputs_for(arch)
    ours = ours_from(arch, directory)
    plain = hidden(ours, inputs)
    ours.add_adapter("a", config, set_active=True)
    perturb(ours, "a")
    ours.save_adapter(tmp_path / "a", "a", format="adapterhub")
    theirs = adapterhub_model(arch, directory)
    assert theirs.load_adapter(str(tmp_path / "a")) == "a"
    theirs.set_active_adapters("a")
    expected = hidden(ours, inputs)
    assert_parity(hidden(theirs, inputs), expected)
    assert_moved(expected, plain)


KEY_CASES = [pytest.param(arch, config, id=f"{arch}-{config}")
             for arch in ARCHS if ARCHS[arch].adapterhub for config in (
    "double_seq_bn_inv" if ARCHS[arch].is_text else "double_seq_bn",  # invertible: token embeddings only
    "seq_bn[ln_before=True, ln_after=True, use_gating=True, scaling='channel']",
    "lora[selfattn_lora=False, intermediate_lora=True, output_lora=True]" if arch == "deberta" else
    "lora[attn_matrices=['q', 'k', 'v'], intermediate_lora=True, output_lora=True]",
    "prefix_tuning[use_gating=True, prefix_length=4, bottleneck_size=16]",
)]


@pytest.mark.parametrize(("arch", "config"), KEY_CASES)
def test_adapterhub_layout_of_ours_has_exactly_adapterhubs_keys_and_shapes(checkpoint, arch, config, tmp_path):
    """Every site path of every architecture (DeBERTa v1 included) names the module AdapterHub attaches to."""
    directory = checkpoint(arch)
    theirs = adapterhub_model(arch, directory)
    theirs.add_adapter("a", config=config)
    theirs.save_adapter(str(tmp_path / "theirs"), "a")
    ours = ours_from(arch, directory)
    ours.add_adapter("a", config)
    ours.save_adapter(tmp_path / "ours", "a", format="adapterhub")
    # AdapterHub saves its prefix pool once more per layer (reference/adapterhub.md §4.4); ours, once
    their_shapes = {key: tuple(t.shape) for key, t in read_adapterhub_weights(tmp_path / "theirs").items()
                    if ".prefix_tuning.pool." not in key}
    assert {key: tuple(t.shape) for key, t in read_adapterhub_weights(tmp_path / "ours").items()} == their_shapes


def test_adapterhub_deberta_v1_changes_outputs_with_no_adapter_so_it_is_no_reference(checkpoint):
    """Why DeBERTa v1 is compared key by key only (DESIGN.md: its reference is transformers plus the math)."""
    directory, inputs = checkpoint("deberta"), inputs_for("deberta")
    plain = hidden(ARCHS["deberta"].hf[None].from_pretrained(directory).eval(), inputs)
    mask = inputs["attention_mask"].bool()
    assert_parity(hidden(ours_from("deberta", directory), inputs), plain)
    assert (hidden(adapterhub_model("deberta", directory), inputs) - plain)[mask].abs().max() > 1e-3


def test_deberta_v1_adapter_trained_by_adapterhub_lands_on_our_sites_tensor_for_tensor(checkpoint, tmp_path):
    directory, inputs = checkpoint("deberta"), inputs_for("deberta")
    theirs = adapterhub_model("deberta", directory)
    theirs.add_adapter("a", config="double_seq_bn_inv")
    train_adapterhub(theirs, inputs).save_adapter(str(tmp_path / "a"), "a")
    ours = ours_from("deberta", directory)
    ours.load_adapter(tmp_path / "a", set_active=True)
    saved = read_adapterhub_weights(tmp_path / "a")
    mine = ours.adapter_state("a")
    expected = {"layers.1.attn.residual.adapters.down.weight": "encoder.layer.1.attention.output.adapters.a."
                "adapter_down.0.weight",
                "layers.0.ffn.residual.adapters.up.bias": "encoder.layer.0.output.adapters.a.adapter_up.bias",
                "embeddings.site.adapters.G.2.weight": "invertible_adapters.a.G.2.weight"}
    assert len(mine) == len(saved)
    for our_key, their_key in expected.items():
        assert torch.equal(mine[our_key], saved[their_key]), our_key


# ---- safetensors and key prefixes ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("config", ["double_seq_bn_inv", "scaled_par_bn[use_gating=True]"])
def test_adapter_saved_by_adapterhub_as_safetensors_gives_its_outputs_in_ours(checkpoint, arch, config, tmp_path):
    directory, inputs = checkpoint(arch), inputs_for(arch)
    theirs = adapterhub_model(arch, directory)
    theirs.add_adapter("a", config=config)
    train_adapterhub(theirs, inputs).save_adapter(str(tmp_path / "a"), "a", use_safetensors=True)
    assert (tmp_path / "a" / "adapter.safetensors").is_file()
    assert not (tmp_path / "a" / "pytorch_adapter.bin").exists()
    ours = ours_from(arch, directory)
    ours.load_adapter(tmp_path / "a", set_active=True)
    assert_parity(hidden(ours, inputs), hidden(theirs, inputs))


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("config", ["double_seq_bn_inv", "seq_bn[ln_before=True, scaling='learned']"])
def test_ours_saved_as_adapterhub_safetensors_gives_our_outputs_in_adapterhub(checkpoint, arch, config, tmp_path):
    directory, inputs = checkpoint(arch), inputs_for(arch)
    ours = ours_from(arch, directory)
    ours.add_adapter("a", config, set_active=True)
    perturb(ours, "a")
    adapterhub.save(ours, tmp_path / "a", "a", safetensors=True)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    theirs = adapterhub_model(arch, directory)
    theirs.load_adapter(str(tmp_path / "a"), use_safetensors=True)
    theirs.set_active_adapters("a")
    assert_parity(hidden(theirs, inputs), hidden(ours, inputs))


def test_ours_saved_over_an_adapterhub_directory_leaves_no_stale_weights_or_head(checkpoint, tmp_path):
    """Loading prefers safetensors: safetensors (or a head) left from an earlier save would be read instead of, or
    beside, the new files."""
    directory, inputs = checkpoint("bert"), inputs_for("bert")
    ours = ours_from("bert", directory)
    ours.add_adapter("a", "seq_bn", set_active=True)
    ours.add_classification_head("a", num_labels=2)
    ours.save_adapter(tmp_path / "a", "a", format="adapterhub", use_safetensors=True)
    perturb(ours, "a")
    (tmp_path / "a" / "notes.txt").write_text("the user's own file stays")
    ours.save_adapter(tmp_path / "a", "a", with_head=False, format="adapterhub")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_config.json", "notes.txt",
                                                                 "pytorch_adapter.bin"]
    theirs = adapterhub_model("bert", directory)
    theirs.load_adapter(str(tmp_path / "a"), use_safetensors=True)  # falls back to the pickle
    theirs.set_active_adapters("a")
    ours.active_head = None
    assert_parity(hidden(theirs, inputs), hidden(ours, inputs))


def test_adapterhub_cannot_save_an_ln_before_adapter_as_safetensors_and_ours_can(checkpoint, tmp_path):
    """AdapterHub keeps the input LayerNorm under two names (adapter_down.0 and adapter_norm_before) that share
    memory, which safetensors refuses. Ours writes both names, as AdapterHub's pickle has them."""
    directory = checkpoint("bert")
    theirs = adapterhub_model("bert", directory)
    theirs.add_adapter("a", config="seq_bn[ln_before=True]")
    with pytest.raises(RuntimeError, match="share memory"):
        theirs.save_adapter(str(tmp_path / "theirs"), "a", use_safetensors=True)
    ours = ours_from("bert", directory)
    ours.add_adapter("a", "seq_bn[ln_before=True]")
    adapterhub.save(ours, tmp_path / "ours", "a", safetensors=True)
    keys = load_file(tmp_path / "ours" / "adapter.safetensors")
    assert torch.equal(keys["encoder.layer.0.output.adapters.a.adapter_norm_before.weight"],
                       keys["encoder.layer.0.output.adapters.a.adapter_down.0.weight"])


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_adapter_saved_from_prefixed_and_from_bare_model_load_alike(checkpoint, arch, tmp_path):
    directory, inputs = checkpoint(arch), inputs_for(arch)
    bare = adapterhub_model(arch, directory)
    bare.add_adapter("a", config="double_seq_bn_inv[ln_before=True]")
    train_adapterhub(bare, inputs).save_adapter(str(tmp_path / "bare"), "a")
    flex = adapterhub_model(arch, directory, flex=True)
    flex.load_adapter(str(tmp_path / "bare"))
    flex.save_adapter(str(tmp_path / "prefixed"), "a", with_head=False)
    prefix = f"{arch}."
    assert not any(key.startswith(prefix) for key in read_adapterhub_weights(tmp_path / "bare"))
    assert all(key.startswith(prefix) for key in read_adapterhub_weights(tmp_path / "prefixed"))
    expected = hidden(bare, inputs)
    for saved in ("bare", "prefixed"):
        ours = ours_from(arch, directory)
        ours.load_adapter(tmp_path / saved, set_active=True)
        assert_parity(hidden(ours, inputs), expected)


# ---- heads ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safetensors", [False, True], ids=["pickle", "safetensors"])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_flex_head_trained_by_adapterhub_gives_its_logits_in_ours(checkpoint, arch, head, safetensors, tmp_path):
    kind, kwargs, config = HEADS[head]
    directory, inputs = checkpoint(arch), inputs_for(arch)
    theirs = adapterhub_model(arch, directory, flex=True)
    theirs.add_adapter("a", config=config)
    getattr(theirs, f"add_{kind}_head")("a", **kwargs)
    train_adapterhub(theirs, inputs, lambda out: head_logits(out, head, inputs["attention_mask"]))
    theirs.save_adapter(str(tmp_path / "a"), "a", use_safetensors=safetensors)
    assert (tmp_path / "a" / ("model_head.safetensors" if safetensors else "pytorch_model_head.bin")).is_file()
    ours = ours_from(arch, directory)
    ours.load_adapter(tmp_path / "a", set_active=True)
    assert ours.active_head == "a"
    with torch.no_grad():
        mine, expected = ours(**inputs), theirs(**inputs)
        if head == "masked_lm":  # the inverse is in play: decoding without it gives other logits
            lm = ours.heads["a"]
            assert (lm.decoder(lm.transform(mine.last_hidden_state)) - mine.logits).abs().max() > 1e-3
    mask = inputs["attention_mask"]
    assert_parity(head_logits(mine, head, mask), head_logits(expected, head, mask))


@pytest.mark.parametrize("safetensors", [False, True], ids=["pickle", "safetensors"])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_head_saved_by_ours_in_adapterhub_layout_gives_our_logits_in_adapterhub(checkpoint, arch, head, safetensors,
                                                                               tmp_path):
    kind, kwargs, config = HEADS[head]
    directory, inputs = checkpoint(arch), inputs_for(arch)
    ours = ours_from(arch, directory)
    ours.add_adapter("a", config)
    getattr(ours, f"add_{kind}_head")("a", **kwargs)
    ours.set_active_adapters("a")
    perturb(ours, "a")
    adapterhub.save(ours, tmp_path / "a", "a", safetensors=safetensors)
    head_file = json.loads((tmp_path / "a" / "head_config.json").read_text())
    assert head_file["model_class"] == ARCHS[arch].adapterhub.__name__  # AdapterHub loads flex heads by class name
    theirs = adapterhub_model(arch, directory, flex=True)
    theirs.load_adapter(str(tmp_path / "a"), use_safetensors=safetensors)
    theirs.set_active_adapters("a")
    assert theirs.active_head == "a"
    with torch.no_grad():
        mine, expected = ours(**inputs), theirs(**inputs)
    mask = inputs["attention_mask"]
    assert_parity(head_logits(expected, head, mask), head_logits(mine, head, mask))


def test_static_classification_head_saved_with_the_adapter_gives_adapterhubs_logits(hf_checkpoint, tmp_path):
    directory, _ = reference(hf_checkpoint, "bert", "sequence_classification", num_labels=3)
    inputs = inputs_for("bert")
    theirs = tf.BertForSequenceClassification.from_pretrained(directory).eval()
    adapters.init(theirs)
    theirs.add_adapter("a", config="double_seq_bn")
    train_adapterhub(theirs, inputs, lambda out: out.logits).save_adapter(str(tmp_path / "a"), "a")
    ours = BertModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        assert_parity(ours(**inputs).logits, theirs(**inputs).logits)


def test_adapterhub_static_masked_lm_head_skips_the_inverse_and_ours_applies_it(hf_checkpoint, tmp_path):
    """MAD-X decodes through the invertible adapter's inverse (Pfeiffer et al., 2020, §2.3). AdapterHub's flex LM
    head does (parity above); its static BertForMaskedLM head does not: its pre-hook is never registered. Hidden
    states agree; logits are AdapterHub's decoder(transform(h)) there and decoder(inverse(transform(h))) here."""
    directory, _ = reference(hf_checkpoint, "bert", "masked_lm")
    inputs = inputs_for("bert")
    theirs = tf.BertForMaskedLM.from_pretrained(directory).eval()
    adapters.init(theirs)
    theirs.add_adapter("a", config="seq_bn_inv")
    train_adapterhub(theirs, inputs, lambda out: out.logits).save_adapter(str(tmp_path / "a"), "a")
    ours = BertModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        mine, expected = ours(**inputs), theirs(**inputs, output_hidden_states=True)
        h = expected.hidden_states[-1]
        mask = inputs["attention_mask"]
        assert_parity(mine.last_hidden_state, h, mask=mask)
        predictions = theirs.cls.predictions
        transformed = predictions.transform(h)
        assert_parity(expected.logits, predictions.decoder(transformed))  # no inverse
        inverted = theirs.bert.invertible_adapters["a"](transformed, rev=True)
        assert_parity(mine.logits, predictions.decoder(inverted), mask=mask)
    assert (mine.logits - expected.logits).abs().max() > 1e-3


# ---- AdapterHub's defects -------------------------------------------------------------------------------------

GLOW = "seq_bn[inv_adapter='glow', inv_adapter_reduction_factor=2]"


def test_adapterhub_glow_adapter_crashes_on_forward(checkpoint):
    """AdapterHub 1.3.0's GLOWCouplingBlock slices the sequence axis (reference/adapterhub.md §5.5)."""
    directory, inputs = checkpoint("bert"), inputs_for("bert")
    theirs = adapterhub_model("bert", directory)
    theirs.add_adapter("a", config=GLOW)
    theirs.set_active_adapters("a")
    with pytest.raises(RuntimeError, match="must match the size"):
        theirs(**inputs)


def test_glow_adapter_saved_by_adapterhub_loads_into_ours_and_saves_back_unchanged(checkpoint, tmp_path):
    directory, inputs = checkpoint("bert"), inputs_for("bert")
    theirs = adapterhub_model("bert", directory)
    theirs.add_adapter("a", config=GLOW)
    theirs.save_adapter(str(tmp_path / "theirs"), "a")  # saving needs no forward
    ours = ours_from("bert", directory)
    plain = hidden(ours, inputs)
    ours.load_adapter(tmp_path / "theirs", set_active=True)
    assert torch.isfinite(hidden(ours, inputs)).all()
    assert_moved(hidden(ours, inputs), plain)
    ours.save_adapter(tmp_path / "ours", "a", format="adapterhub")
    saved, resaved = read_adapterhub_weights(tmp_path / "theirs"), read_adapterhub_weights(tmp_path / "ours")
    assert saved.keys() == resaved.keys() and any(".s1." in key for key in saved)
    assert all(torch.equal(saved[key], resaved[key]) for key in saved)


def test_post_add_residual_without_original_ln_before_crashes_adapterhub_and_ours_takes_h(checkpoint, tmp_path):
    """With no residual add before the adapter, "post_add" has no sum to take: AdapterHub's pre_forward leaves the
    residual unbound (UnboundLocalError). Ours takes the sub-layer output h, as ``residual_before_ln=True`` does."""
    directory, inputs = checkpoint("bert"), inputs_for("bert")
    theirs = adapterhub_model("bert", directory)
    theirs.add_adapter("a", config="double_seq_bn[residual_before_ln='post_add']")
    theirs.set_active_adapters("a")
    with pytest.raises(UnboundLocalError):
        theirs(**inputs)
    ours = ours_from("bert", directory)
    ours.add_adapter("post_add", "double_seq_bn[residual_before_ln='post_add']")
    perturb(ours, "post_add")
    ours.save_adapter(tmp_path / "a", "post_add")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    config["config"]["residual_before_ln"] = True
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    ours.load_adapter(tmp_path / "a", load_as="before_ln")
    ours.set_active_adapters("post_add")
    post_add = hidden(ours, inputs)
    ours.set_active_adapters("before_ln")
    assert torch.equal(post_add, hidden(ours, inputs))


def test_skip_layers_gives_adapterhubs_adapterdrop_outputs(checkpoint, tmp_path):
    directory, inputs = checkpoint("bert"), inputs_for("bert")
    theirs = adapterhub_model("bert", directory)
    theirs.add_adapter("a", config="seq_bn|lora|prefix_tuning[prefix_length=4, bottleneck_size=16]")
    train_adapterhub(theirs, inputs).save_adapter(str(tmp_path / "a"), "a")
    ours = ours_from("bert", directory)
    ours.load_adapter(tmp_path / "a")
    every_layer = hidden(theirs, inputs)
    for skip_layers in ([0], [1], [0, 1]):
        theirs.set_active_adapters("a", skip_layers=skip_layers)
        ours.set_active_adapters("a", skip_layers=skip_layers)
        skipping = hidden(theirs, inputs)
        assert_parity(hidden(ours, inputs), skipping)
        assert_moved(every_layer, skipping)
