"""BERT and RoBERTa equal transformers on the same weights: every head, padded batches, dtypes, compile.

RoBERTa is BERT's network with other positions and heads, so both are specified here over ``BERT_FAMILY``;
RoBERTa-only behaviour is in test_roberta.py.
"""

from __future__ import annotations

import pytest
import torch

from tests import archs
from tests.archs import ARCHS, BERT_FAMILY
from tests.parity import assert_parity, padded_batch

CONFIGS = {
    "small": {},  # the registry's test size, SMALL
    "three-layers-odd-sizes": dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=80,
                                   vocab_size=97),
    "one-head-gelu-new": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=1, intermediate_size=37,
                              vocab_size=64, hidden_act="gelu_new", max_position_embeddings=40),
}
HEADS = tuple(ARCHS["bert"].hf)  # None (the bare encoder), then every head; RoBERTa has the same


def reference(hf_checkpoint, arch: str, head: str | None = None, **overrides):
    """(checkpoint directory, transformers model) for a random-init ``arch`` model with ``head``."""
    return archs.reference(hf_checkpoint, arch, head, num_labels=2 if head == "question_answering" else 3, **overrides)


def batch_for(model):
    return padded_batch(model.config.vocab_size, model.config.pad_token_id)


def run(model, ids, mask, **kwargs):
    return model(input_ids=ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
def test_hidden_states_and_pooler_equal_transformers_on_padded_batches(hf_checkpoint, arch, config, unpad):
    """Unpadded (the default), real tokens equal transformers' and padded positions are zeros; with
    ``unpad=False`` every position equals transformers'."""
    directory, theirs = reference(hf_checkpoint, arch, **CONFIGS[config])
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ours.unpad = unpad
    ids, mask = batch_for(theirs)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        got = ours(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    compared = mask if unpad else None
    assert_parity(got.last_hidden_state, expected.last_hidden_state, mask=compared)
    assert_parity(got.pooler_output, expected.pooler_output)
    assert len(got.hidden_states) == len(expected.hidden_states)
    for mine, hers in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_parity(mine, hers, mask=compared)
    if unpad:
        assert not got.last_hidden_state[mask == 0].any() and not got.hidden_states[-1][mask == 0].any()


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("head", HEADS[1:])
def test_every_head_gives_the_logits_of_its_transformers_class(hf_checkpoint, arch, head):
    directory, theirs = reference(hf_checkpoint, arch, head)
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    assert ours.config.head == head
    ids, mask = batch_for(theirs)
    with torch.no_grad():
        expected, got = run(theirs, ids, mask), run(ours, ids, mask)
    if head == "question_answering":
        assert_parity(got.start_logits, expected.start_logits, mask=mask)
        assert_parity(got.end_logits, expected.end_logits, mask=mask)
    else:
        assert_parity(got.logits, expected.logits, mask=mask if got.logits.dim() == 3 else None)


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_masked_lm_decoder_is_tied_to_the_word_embeddings(hf_checkpoint, arch):
    directory, _ = reference(hf_checkpoint, arch, "masked_lm")
    ours = ARCHS[arch].model.from_pretrained(directory)
    assert ours.head.decoder.weight is ours.embeddings.word.weight


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_untied_masked_lm_decoder_loads_its_own_weights(hf_checkpoint, arch):
    directory, theirs = reference(hf_checkpoint, arch, "masked_lm", tie_word_embeddings=False)
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    assert ours.head.decoder.weight is not ours.embeddings.word.weight
    ids, mask = batch_for(theirs)
    with torch.no_grad():
        assert_parity(run(ours, ids, mask).logits, run(theirs, ids, mask).logits, mask=mask)


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_attentions_token_types_positions_and_embeddings_inputs_equal_transformers(hf_checkpoint, arch):
    directory, theirs = reference(hf_checkpoint, arch, type_vocab_size=2)
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ids, mask = batch_for(theirs)
    token_types = (torch.arange(ids.shape[1]) >= 4).long().expand_as(ids)
    positions = torch.arange(ids.shape[1]).flip(0).expand_as(ids) + 2
    with torch.no_grad():
        kwargs = dict(attention_mask=mask, token_type_ids=token_types, position_ids=positions, output_attentions=True)
        expected, got = theirs(input_ids=ids, **kwargs), ours(input_ids=ids, **kwargs)
        embeds = theirs.embeddings.word_embeddings(ids)
        from_embeds = [model(inputs_embeds=embeds, attention_mask=mask) for model in (theirs, ours)]
    assert_parity(got.last_hidden_state, expected.last_hidden_state, mask=mask)
    for mine, hers in zip(got.attentions, expected.attentions, strict=True):  # the rows of real query tokens
        assert_parity(mine.transpose(1, 2), hers.transpose(1, 2), mask=mask)
    assert_parity(from_embeds[1].last_hidden_state, from_embeds[0].last_hidden_state, mask=mask)


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("head", HEADS)
def test_export_to_hf_layout_loads_in_transformers_with_the_same_outputs(hf_checkpoint, arch, head, tmp_path):
    directory, _ = reference(hf_checkpoint, arch, head)
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ours.save_pretrained(tmp_path)
    reloaded = ARCHS[arch].hf[head].from_pretrained(tmp_path).eval()
    ids, mask = batch_for(ours)
    with torch.no_grad():
        got, expected = run(ours, ids, mask), run(reloaded, ids, mask)
    if head is None:
        assert_parity(got.last_hidden_state, expected.last_hidden_state, mask=mask)
    elif head == "question_answering":
        assert_parity(got.start_logits, expected.start_logits, mask=mask)
    else:
        assert_parity(got.logits, expected.logits, mask=mask if got.logits.dim() == 3 else None)


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_peftcore_format_round_trip_is_bit_exact(hf_checkpoint, arch, tmp_path):
    directory, _ = reference(hf_checkpoint, arch, "masked_lm")
    ours = ARCHS[arch].model.from_pretrained(directory)
    ours.save_pretrained(tmp_path, format="peftcore")
    again = ARCHS[arch].model.from_pretrained(tmp_path)
    assert again.config == ours.config
    assert again.head.decoder.weight is again.embeddings.word.weight
    for (key, mine), (_, theirs) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(mine, theirs), key


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("layout", ["sharded-safetensors", "pytorch-bin", "sharded-bin"])
def test_every_weights_layout_loads_the_same_model(hf_checkpoint, arch, layout, tmp_path):
    directory, theirs = reference(hf_checkpoint, arch)
    theirs.save_pretrained(tmp_path, safe_serialization=layout == "sharded-safetensors",
                           max_shard_size="50KB" if layout.startswith("sharded") else "10GB")
    index = {"sharded-safetensors": "model.safetensors.index.json", "pytorch-bin": "pytorch_model.bin",
             "sharded-bin": "pytorch_model.bin.index.json"}[layout]
    assert (tmp_path / index).is_file()
    ours, reference_model = ARCHS[arch].model.from_pretrained(tmp_path), ARCHS[arch].model.from_pretrained(directory)
    for key, tensor in reference_model.state_dict().items():
        assert torch.equal(ours.state_dict()[key], tensor), key


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_base_checkpoint_starts_a_classifier_with_a_fresh_head_and_says_so(hf_checkpoint, arch):
    directory, _ = reference(hf_checkpoint, arch, "masked_lm")
    with pytest.warns(UserWarning, match=r"head\.") as record:
        ours = ARCHS[arch].model.from_pretrained(directory, head="sequence_classification", num_labels=5)
    assert "freshly initialised" in str(record[0].message)
    ids, mask = batch_for(ours)
    assert ours(input_ids=ids, attention_mask=mask).logits.shape == (ids.shape[0], 5)


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_pooler_can_be_left_out(hf_checkpoint, arch):
    directory, theirs = reference(hf_checkpoint, arch)
    ours = ARCHS[arch].model.from_pretrained(directory, add_pooling_layer=False).eval()
    ids, mask = batch_for(theirs)
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask)
        assert_parity(got.last_hidden_state, theirs(input_ids=ids, attention_mask=mask).last_hidden_state, mask=mask)
    assert ours.pooler is None and got.pooler_output is None


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_is_finite_and_close_to_fp32(hf_checkpoint, arch, dtype):
    directory, _ = reference(hf_checkpoint, arch, "masked_lm")
    full = ARCHS[arch].model.from_pretrained(directory).eval()
    half = ARCHS[arch].model.from_pretrained(directory, dtype=dtype).eval()
    assert half.embeddings.word.weight.dtype == dtype
    ids, mask = batch_for(full)
    with torch.no_grad():
        expected, got = run(full, ids, mask), run(half, ids, mask)
    assert got.last_hidden_state.dtype == dtype
    assert torch.isfinite(got.logits).all()
    assert_parity(got.last_hidden_state, expected.last_hidden_state, atol=0.1, mask=mask)


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_torch_compile_gives_the_eager_outputs(hf_checkpoint, arch):
    directory, _ = reference(hf_checkpoint, arch, "masked_lm")
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    compiled = torch.compile(ours)
    ids, mask = batch_for(ours)
    with torch.no_grad():
        assert_parity(run(compiled, ids, mask).logits, run(ours, ids, mask).logits, mask=mask)


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_fully_padded_example_gives_finite_outputs(hf_checkpoint, arch):
    directory, _ = reference(hf_checkpoint, arch)
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ids, mask = batch_for(ours)
    mask[1] = 0
    with torch.no_grad():
        out = ours(input_ids=ids, attention_mask=mask)
    assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(out.pooler_output).all()
