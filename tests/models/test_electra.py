"""ELECTRA equals transformers' ElectraModel and ElectraFor* on the same weights, both ways.

Its embeddings are ``embedding_size`` wide and projected up to ``hidden_size`` where the two differ (the registry's
"every_tensor" variant: 48 < 64; electra-small's 128 < 256), or as wide as the layers (its other variants;
electra-base's). The generator's masked-LM head and the sequence classifier use gelu whatever ``hidden_act`` says,
and a discriminator checkpoint (ElectraForPreTraining) loads as its encoder. Methods plug into the projected model's
sites and train, and adapters AdapterHub trained on it give AdapterHub's outputs in ours.
"""

from __future__ import annotations

import warnings

import adapters
import pytest
import torch
import transformers as tf

from peftcore.models import ElectraConfig, ElectraModel, from_pretrained
from tests.archs import ARCHS, inputs
from tests.models import families
from tests.parity import assert_outputs_parity, assert_parity, real_tokens

ELECTRA = ARCHS["electra"]
HEADS = tuple(ELECTRA.hf)  # None (the bare encoder: ELECTRA has no pooler), then every head
PROJECTED = "every_tensor"  # embedding_size 48, hidden_size 64


def checkpoint(hf_checkpoint, head: str | None = None, variant: str = PROJECTED, **fields):
    """(directory, transformers model) of a random-init ELECTRA with ``head``; biases and norms randomised."""
    return families.checkpoint(hf_checkpoint, "electra", head, variant, **fields)


def run(model, batch, **kwargs):
    with torch.no_grad():
        return model(**batch, **kwargs)


CASES = [*((head, PROJECTED) for head in HEADS), (None, "default"), ("masked_lm", "default")]


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
@pytest.mark.parametrize(("head", "variant"), CASES, ids=[f"{head}-{variant}" for head, variant in CASES])
def test_every_head_equals_transformers_on_a_padded_batch(hf_checkpoint, head, variant, unpad):
    ours = families.check_every_head(hf_checkpoint, "electra", head, unpad, variant)
    assert ours.pooler is None and (ours.embeddings.proj is None) == (variant != PROJECTED)


def test_hidden_states_attentions_and_embedding_inputs_equal_transformers(hf_checkpoint):
    directory, theirs = checkpoint(hf_checkpoint)
    ours = ElectraModel.from_pretrained(directory).eval()
    batch = inputs(theirs.config)
    mask = batch["attention_mask"]
    expected = run(theirs, batch, output_hidden_states=True, output_attentions=True)
    got = run(ours, batch, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == len(expected.hidden_states)  # the first: the projected embeddings
    for mine, hers in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_parity(mine, hers, mask=mask)
    for mine, hers in zip(got.attentions, expected.attentions, strict=True):  # the rows of real query tokens
        assert_parity(mine.transpose(1, 2), hers.transpose(1, 2), mask=mask)
    embeds = theirs.embeddings.word_embeddings(batch["input_ids"])  # (B, T, E): before the projection
    by_embeds = {"inputs_embeds": embeds, "attention_mask": mask}
    assert_parity(run(ours, by_embeds).last_hidden_state, run(theirs, by_embeds).last_hidden_state, mask=mask)


def test_the_projection_exists_only_where_the_embeddings_are_narrower(hf_checkpoint):
    for variant, projected in ((PROJECTED, True), ("default", False)):
        directory, theirs = checkpoint(hf_checkpoint, variant=variant)
        assert hasattr(theirs, "embeddings_project") == projected
        ours = ElectraModel.from_pretrained(directory)
        assert ("embeddings.proj.weight" in ours.state_dict()) == projected
        assert ours.embeddings.word.weight.shape[1] == theirs.config.embedding_size


@pytest.mark.parametrize("head", ["masked_lm", "sequence_classification"])
def test_the_generator_head_and_the_classifier_use_gelu_whatever_hidden_act_says(hf_checkpoint, head):
    directory, theirs = checkpoint(hf_checkpoint, head, hidden_act="relu")
    ours = ElectraModel.from_pretrained(directory).eval()
    batch = inputs(theirs.config)
    assert_outputs_parity(run(ours, batch), run(theirs, batch), head, batch["attention_mask"])


def test_a_discriminator_checkpoint_loads_as_its_encoder_without_its_detector(hf_checkpoint, tmp_path):
    """ElectraForPreTraining (what google/electra-*-discriminator ship): its replaced-token detector is not
    implemented, so the checkpoint loads as the bare encoder and exports as ElectraModel."""
    config = ELECTRA.hf_config(PROJECTED)
    directory, theirs = hf_checkpoint(tf.ElectraForPreTraining, config)
    ours = from_pretrained(directory).eval()
    assert ours.config.head is None
    batch = inputs(config)
    assert_parity(run(ours, batch).last_hidden_state, run(theirs.electra, batch).last_hidden_state,
                  mask=batch["attention_mask"])
    ours.save_pretrained(tmp_path)
    reloaded = tf.ElectraModel.from_pretrained(tmp_path).eval()
    assert_parity(run(reloaded, batch).last_hidden_state, run(theirs.electra, batch).last_hidden_state)


@pytest.mark.parametrize("head", HEADS)
def test_export_to_hf_layout_loads_in_transformers_with_the_same_outputs(hf_checkpoint, head, tmp_path):
    families.check_export(hf_checkpoint, "electra", head, tmp_path, PROJECTED)


def test_masked_lm_decoder_is_tied_to_the_word_embeddings_unless_the_config_unties_it(hf_checkpoint):
    directory, _ = checkpoint(hf_checkpoint, "masked_lm")
    ours = ElectraModel.from_pretrained(directory)
    assert ours.head.decoder.weight is ours.embeddings.word.weight
    directory, theirs = checkpoint(hf_checkpoint, "masked_lm", tie_word_embeddings=False)
    untied = ElectraModel.from_pretrained(directory).eval()
    assert untied.head.decoder.weight is not untied.embeddings.word.weight
    batch = inputs(theirs.config)
    assert_outputs_parity(run(untied, batch), run(theirs, batch), "masked_lm", batch["attention_mask"])


def test_a_transformers_config_json_loads_without_warnings_and_exports_unchanged(hf_checkpoint, tmp_path):
    directory, theirs = checkpoint(hf_checkpoint, "sequence_classification")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # summary_* and every other field of ElectraConfig are known
        ours = ElectraModel.from_pretrained(directory)
    ours.save_pretrained(tmp_path)
    exported = tf.ElectraConfig.from_pretrained(tmp_path)
    for field in ("embedding_size", "hidden_size", "summary_type", "summary_use_proj", "summary_activation",
                  "summary_last_dropout", "num_labels"):
        assert getattr(exported, field) == getattr(theirs.config, field), field


def test_config_defaults_are_transformers_electra_small_defaults():
    theirs, ours = tf.ElectraConfig().to_dict(), ElectraConfig()
    for field in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                  "pad_token_id", "summary_type", "summary_use_proj", "summary_activation", "summary_last_dropout"):
        assert getattr(ours, field) == theirs[field], field


def test_a_pooler_is_refused_naming_the_first_token_classifier():
    with pytest.raises(ValueError, match="ELECTRA has no pooler"):
        ElectraConfig(add_pooling_layer=True)


METHODS = {"lora": "lora[intermediate_lora=True]", "seq_bn": "seq_bn", "prefix": "prefix_tuning[prefix_length=3]",
           "ia3": "ia3", "compacter": "compacter[reduction_factor=8]", "unipelt": "unipelt",
           "invertible": "seq_bn_inv", "glow": "seq_bn_inv[inv_adapter='glow']"}


def test_every_method_plugs_into_a_projected_model_and_trains(hf_checkpoint):
    directory, theirs = checkpoint(hf_checkpoint)
    ours = ElectraModel.from_pretrained(directory)
    batch = inputs(theirs.config)
    for name, config in METHODS.items():
        ours.add_adapter(name, config)
        ours.train_adapter(name)
        real_tokens(ours(**batch).last_hidden_state, batch["attention_mask"]).pow(2).mean().backward()
        grads = [p.grad for p in ours.adapter_parameters(name)]
        assert grads and all(g is not None and g.isfinite().all() for g in grads), name
        ours.zero_grad()


# ---- AdapterHub on a projected ELECTRA (the registry's AdapterHub tests run the unprojected one) ------------------


def adapterhub_trained(directory, config: str, batch, flex_head: str | None = None):
    """AdapterHub's ELECTRA with adapter 'a' (and a flex head of that kind) trained 3 AdamW steps."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if flex_head is None:
            theirs = tf.ElectraModel.from_pretrained(directory)
            adapters.init(theirs)
        else:
            theirs = adapters.ElectraAdapterModel.from_pretrained(directory)
    theirs.add_adapter("a", config=config)
    if flex_head is not None:
        getattr(theirs, f"add_{flex_head}_head")("a")
    theirs.train_adapter("a")
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        out = theirs(**batch)
        (out.logits if flex_head else out.last_hidden_state).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return theirs.eval()


@pytest.mark.parametrize("config", ["seq_bn[ln_before=True]", "double_seq_bn",
                                    "lora[attn_matrices=['q', 'k', 'v'], intermediate_lora=True, output_lora=True]",
                                    "prefix_tuning[prefix_length=4, bottleneck_size=16]", "unipelt"])
def test_adapter_trained_by_adapterhub_on_a_projected_electra_gives_its_outputs_in_ours(hf_checkpoint, config,
                                                                                       tmp_path):
    directory, reference_model = checkpoint(hf_checkpoint)
    batch = inputs(reference_model.config)
    theirs = adapterhub_trained(directory, config, batch)
    theirs.save_adapter(str(tmp_path / "a"), "a")
    ours = ElectraModel.from_pretrained(directory).eval()
    plain = real_tokens(run(ours, batch).last_hidden_state, batch["attention_mask"])
    ours.load_adapter(tmp_path / "a", set_active=True)
    expected = real_tokens(run(theirs, batch).last_hidden_state, batch["attention_mask"])
    assert_parity(real_tokens(run(ours, batch).last_hidden_state, batch["attention_mask"]), expected)
    assert (expected - plain).abs().max() > 1e-3


def test_madx_language_adapter_on_a_projected_electra_gives_adapterhubs_logits(hf_checkpoint, tmp_path):
    directory, reference_model = checkpoint(hf_checkpoint)
    batch = inputs(reference_model.config)
    theirs = adapterhub_trained(directory, "seq_bn_inv", batch, flex_head="masked_lm")
    theirs.save_adapter(str(tmp_path / "a"), "a")
    ours = ElectraModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    assert ours.embedding_site().adapters["a"].F[0].in_features == 48 // 2  # the invertible adapter is E wide
    mask = batch["attention_mask"]
    assert_parity(real_tokens(run(ours, batch).logits, mask), real_tokens(run(theirs, batch).logits, mask))
