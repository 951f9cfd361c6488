"""VeRA and DVoRA: AdapterHub's numbers from its own files, the published vectors where AdapterHub trains dense
matrices, the frozen shared projections and their seed, merge/reset, and HuggingFace PEFT's VeRA files both ways.

AdapterHub saves no VeRA projections (its files hold vera_D and vera_B only), so its files reproduce the adapter only
when ``init_weights_seed`` draws the projections again; the parity tests train seeded adapters, and a test pins what
AdapterHub does without a seed.
"""

from __future__ import annotations

import adapters
import peft
import pytest
import torch
import transformers as tf

from peftcore import DvoRAConfig, LoRAConfig, VeraConfig
from peftcore.methods import DVoRA, LoRA, Vera
from peftcore.models import BertModel
from tests.archs import BERT_FAMILY, reference, tiny_model
from tests.conftest import SMALL
from tests.parity import assert_adapterhub_round_trip, assert_parity, padded_batch

SEEDED = ["vera[init_weights_seed=3]", "dvora[init_weights_seed=3]",
          "vera[init_weights_seed=5, r=4, alpha=16, attn_matrices=['q', 'k', 'v'], use_gating=True]"]


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    return matrix - torch.diag(matrix.diagonal())


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("config", SEEDED)
def test_adapter_trained_by_adapterhub_gives_its_outputs_and_count_and_ours_saved_back_gives_them_in_adapterhub(
        adapterhub_trained, arch, config, tmp_path):
    ours = assert_adapterhub_round_trip(*adapterhub_trained(arch, config), tmp_path)
    assert ours.adapter_configs["a"].vera_dense  # AdapterHub's training fills the off-diagonals: kept dense


def test_adapterhub_training_moves_the_off_diagonal_entries_of_its_scaling_matrices(adapterhub_trained, tmp_path):
    """The measurement behind vera_dense: after 3 AdamW steps nearly every off-diagonal entry is non-zero (vera_D's
    first gradient is zero while vera_B = 0, so the first step moves vera_B's only)."""
    adapterhub_trained("bert", "vera")
    saved = torch.load(tmp_path / "a" / "pytorch_adapter.bin", weights_only=True)
    for suffix, r in (("vera_B", SMALL["hidden_size"]), ("vera_D", 8)):
        matrices = [t for key, t in saved.items() if key.endswith(suffix)]
        assert matrices and all(t.shape == (r, r) for t in matrices)
        share = sum(int(off_diagonal(t).count_nonzero()) for t in matrices) / (len(matrices) * r * (r - 1))
        assert share > 0.8, (suffix, share)


def test_adapterhub_saves_no_projections_so_an_unseeded_file_loses_them(adapterhub_trained, tmp_path):
    directory, theirs, ids, mask = adapterhub_trained("bert", "vera")
    saved = torch.load(tmp_path / "a" / "pytorch_adapter.bin", weights_only=True)
    assert not any("shared_parameters" in key for key in saved)
    again = tf.BertModel.from_pretrained(directory).eval()
    adapters.init(again)
    again.load_adapter(str(tmp_path / "a"), set_active=True)  # new random projections
    with torch.no_grad():
        moved = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (again(input_ids=ids, attention_mask=mask).last_hidden_state - moved).abs().max() > 1e-6
    with pytest.raises(ValueError, match=r"missing: shared_parameters\.vera\.lora_A, shared_parameters\.vera\.lora_B"):
        BertModel.from_pretrained(directory).load_adapter(tmp_path / "a")


@pytest.mark.parametrize("config", ["vera", "dvora[r=4, attn_matrices=['q', 'k']]"])
def test_ours_saves_vectors_as_diagonal_matrices_and_reloads_them_as_vectors(hf_checkpoint, config, tmp_path):
    directory, _ = reference(hf_checkpoint, "bert")
    ours = BertModel.from_pretrained(directory).eval()
    ours.add_adapter("a", config, set_active=True)
    with torch.no_grad():
        for parameter in ours.adapter_parameters("a"):
            parameter.add_(torch.randn_like(parameter) * 0.1)
    ours.save_adapter(tmp_path / "a", "a", format="adapterhub")
    saved = torch.load(tmp_path / "a" / "pytorch_adapter.bin", weights_only=True)
    scalings = [t for key, t in saved.items() if key.endswith(("vera_B", "vera_D"))]
    assert scalings and all(t.dim() == 2 and not off_diagonal(t).any() for t in scalings)
    theirs = tf.BertModel.from_pretrained(directory).eval()
    adapters.init(theirs)
    theirs.load_adapter(str(tmp_path / "a"), set_active=True)
    again = BertModel.from_pretrained(directory).eval()
    again.load_adapter(tmp_path / "a", set_active=True)
    assert not again.adapter_configs["a"].vera_dense
    ids, mask = padded_batch(SMALL["vocab_size"], 0)
    with torch.no_grad():
        expected = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_parity(theirs(input_ids=ids, attention_mask=mask).last_hidden_state, expected, mask=mask)
        assert_parity(again(input_ids=ids, attention_mask=mask).last_hidden_state, expected, mask=mask)


def test_seeded_projections_are_adapterhubs_and_train_adapter_leaves_them_frozen():
    theirs = tf.BertModel(tf.BertConfig(**SMALL)).eval()
    adapters.init(theirs)
    theirs.add_adapter("a", config="vera[init_weights_seed=7]")
    model = tiny_model("bert", hidden_size=SMALL["hidden_size"])
    model.add_adapter("a", "vera[init_weights_seed=7]")
    projections = model.shared_parameters["a"]["vera"]
    for local in ("lora_A", "lora_B"):
        assert torch.equal(getattr(projections, local), theirs.shared_parameters["a"][local])
    model.train_adapter("a")
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(name.endswith(("vera_d", "vera_b")) for name in trained)
    before = {name: t.clone() for name, t in projections.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(input_ids=torch.randint(0, 100, (2, 6))).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, before[name]) for name, p in projections.named_parameters())
    assert any(p.ne(0.0).any() for name, p in model.named_parameters() if name.endswith("vera_b"))


@pytest.mark.parametrize("config", ["vera[alpha=16]", "vera[vera_dense=True, attn_matrices=['k']]", "dvora[alpha=4]",
                                    "dvora[dora_variant='peft', vera_dense=True]"])
def test_merge_equals_the_unmerged_forward_and_reset_restores_the_weights_bit_for_bit(config):
    model = tiny_model("bert")
    model.add_adapter("a", config, set_active=True)
    with torch.no_grad():
        for parameter in model.adapter_parameters("a"):
            parameter.add_(torch.randn_like(parameter) * 0.1)
    base = {key: t.clone() for key, t in model.base_state_dict().items()}
    ids = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        unmerged = model(input_ids=ids).last_hidden_state
        for _ in range(3):
            model.merge_adapter("a")
            assert_parity(model(input_ids=ids).last_hidden_state, unmerged)
            model.reset_adapter("a")
    assert all(torch.equal(model.base_state_dict()[key], t) for key, t in base.items())


def test_the_presets_are_adapterhubs_and_place_the_variants():
    assert VeraConfig().to_dict() == adapters.VeraConfig().to_dict()
    assert DvoRAConfig().to_dict() == adapters.DvoRAConfig().to_dict()
    assert Vera.sites(VeraConfig(), 0) == ("attn.q", "attn.v") and LoRA.sites(VeraConfig(), 0) == ()
    assert DVoRA.sites(DvoRAConfig(), 1) == ("attn.q", "attn.v") and Vera.sites(DvoRAConfig(), 1) == ()
    assert Vera.sites(LoRAConfig(), 0) == ()


@pytest.mark.parametrize(("fields", "message"), [
    (dict(vera_d=0.1), "needs both vera_d and vera_b"),
    (dict(vera_d=0.1, vera_b=0.0, intermediate_lora=True), "attention matrices only"),
    (dict(vera_dense=True), "applies to VeRA"),
    (dict(vera_d=0.1, vera_b=0.0, composition_mode="scale", r=1), "no DoRA or VeRA form"),
])
def test_configs_that_are_not_vera_are_refused_clearly(fields, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**fields)


def test_adapterhub_vera_on_a_feed_forward_linear_crashes_at_the_forward_and_ours_refuses_the_config():
    """AdapterHub sizes the shared projections by the first linear (hidden x hidden); the intermediate's (96, 96)
    vera_B cannot multiply its (64, r) B."""
    theirs = tf.BertModel(tf.BertConfig(**SMALL)).eval()
    adapters.init(theirs)
    theirs.add_adapter("a", config="vera[intermediate_lora=True]")
    theirs.set_active_adapters("a")
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        theirs(input_ids=torch.randint(3, 100, (2, 5)))
    with pytest.raises(ValueError, match="attention matrices only"):
        tiny_model("bert").add_adapter("a", "vera[intermediate_lora=True]")


# ---- HuggingFace PEFT's VeRA files ---------------------------------------------------------------------------------

def peft_vera(directory, **fields):
    model = peft.get_peft_model(tf.BertModel.from_pretrained(directory), peft.VeraConfig(**fields)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "vera_lambda" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


@pytest.mark.parametrize("save_projection", [True, False])
def test_peft_vera_file_gives_peft_outputs_in_ours_and_ours_saved_for_peft_gives_them_back(hf_checkpoint,
                                                                                            save_projection, tmp_path):
    directory, _ = reference(hf_checkpoint, "bert")
    theirs = peft_vera(directory, r=4, target_modules=["query", "key"], save_projection=save_projection,
                       projection_prng_key=11)
    theirs.save_pretrained(tmp_path / "peft")
    ours = BertModel.from_pretrained(directory).eval()
    name = ours.load_adapter(tmp_path / "peft", set_active=True)
    config = ours.adapter_configs[name]
    assert config.is_vera and config.alpha == config.r == 4 and config.attn_matrices == ("q", "k")
    ids, mask = padded_batch(SMALL["vocab_size"], 0)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state, expected, mask=mask)
    ours.save_adapter(tmp_path / "back", name, format="peft")
    again = peft.PeftModel.from_pretrained(tf.BertModel.from_pretrained(directory), tmp_path / "back").eval()
    with torch.no_grad():
        assert_parity(again(input_ids=ids, attention_mask=mask).last_hidden_state, expected, mask=mask)


def test_ours_with_alpha_saved_for_peft_folds_the_scaling_into_b(hf_checkpoint, tmp_path):
    directory, _ = reference(hf_checkpoint, "bert")
    ours = BertModel.from_pretrained(directory).eval()
    ours.add_adapter("a", "vera[alpha=32, vera_b=0.3]", set_active=True)
    ours.save_adapter(tmp_path / "a", "a", format="peft")
    theirs = peft.PeftModel.from_pretrained(tf.BertModel.from_pretrained(directory), tmp_path / "a").eval()
    ids, mask = padded_batch(SMALL["vocab_size"], 0)
    with torch.no_grad():
        assert_parity(theirs(input_ids=ids, attention_mask=mask).last_hidden_state,
                      ours(input_ids=ids, attention_mask=mask).last_hidden_state, mask=mask)


@pytest.mark.parametrize(("config", "message"), [("vera[vera_dense=True]", "dense matrices"),
                                                 ("dvora", "DVoRA adapters have no HuggingFace PEFT equivalent")])
def test_what_peft_cannot_hold_is_refused_when_saving(config, message, tmp_path):
    model = tiny_model("bert")
    model.add_adapter("a", config)
    with pytest.raises(ValueError, match=message):
        model.save_adapter(tmp_path / "a", "a", format="peft")
    assert not (tmp_path / "a").exists()
