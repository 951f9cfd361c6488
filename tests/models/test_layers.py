"""Forward-time input checks and config validation shared by every text encoder."""

from __future__ import annotations

import pytest
import torch

from peftcore.models import BertConfig, BertModel
from peftcore.models.layers import Padding, SelfAttention, additive_mask
from tests.archs import inputs, reference
from tests.parity import assert_parity

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=8)


@pytest.fixture(scope="module")
def model():
    return BertModel(BertConfig(**TINY)).eval()


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(input_ids=torch.tensor([[1, 50]])), r"input_ids hold 50, outside the vocabulary \[0, 50\)"),
    (dict(input_ids=torch.tensor([[1, -3]])), "input_ids hold -3"),
    (dict(input_ids=torch.ones(1, 9, dtype=torch.long)), "sequence length 9 exceeds the 8 positions"),
    (dict(input_ids=torch.ones(4, dtype=torch.long)), "must be .batch, tokens."),
    (dict(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4)), "attention_mask has shape"),
    (dict(), "exactly one of input_ids and inputs_embeds"),
    (dict(inputs_embeds=torch.ones(1, 3, 7)), "inputs_embeds has width 7"),
    (dict(input_ids=torch.tensor([[1.0, 2.0]])), r"input_ids are torch.float32; pass integer ids"),
    (dict(input_ids=torch.ones(2, 0, dtype=torch.long)), r"the input is empty \(shape \(2, 0\)\)"),
    (dict(input_ids=torch.ones(0, 3, dtype=torch.long)), "the input is empty"),
    (dict(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 2, 0]])),
     "attention_mask holds values other than 0 and 1"),
    (dict(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.tensor([[1.0, 0.5, 0.0]])),
     "attention_mask holds values other than 0 and 1"),
    (dict(input_ids=torch.ones(1, 2, dtype=torch.long), token_type_ids=torch.tensor([[0, 2]])),
     r"token_type_ids hold 2, outside \[0, 2\)"),
    (dict(input_ids=torch.ones(1, 2, dtype=torch.long), position_ids=torch.tensor([[0, 8]])),
     r"position_ids hold 8, outside \[0, 8\)"),
    (dict(input_ids=torch.ones(1, 2, dtype=torch.long), position_ids=torch.tensor([[-1, 0]])), "position_ids hold -1"),
    (dict(input_ids=torch.ones(1, 2, dtype=torch.long), adapter_names=[]), "adapter_names has 0 entries"),
    (dict(input_ids=torch.ones(0, 2, dtype=torch.long), adapter_names=[]), "the batch is empty"),
])
def test_bad_inputs_are_refused_with_what_to_pass(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


def test_float_and_bool_masks_of_zeros_and_ones_are_masks(model):
    ids = torch.tensor([[3, 4, 5], [6, 7, 0]])
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]])).last_hidden_state
        for mask in (torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]), torch.tensor([[True] * 3, [True, True, False]])):
            assert torch.equal(model(input_ids=ids, attention_mask=mask).last_hidden_state, expected)


@pytest.mark.parametrize(("change", "message"), [
    (dict(hidden_size=15), "not divisible"),
    (dict(num_hidden_layers=0), "num_hidden_layers must be a positive int"),
    (dict(hidden_act="nope"), "hidden_act='nope' is not supported"),
    (dict(head="summarization"), "head='summarization' is not supported"),
    (dict(hidden_dropout_prob=1.5), r"hidden_dropout_prob must lie in \[0, 1\)"),
    (dict(pad_token_id=50), "pad_token_id=50 lies outside the vocabulary"),
    (dict(head="question_answering", num_labels=3), "num_labels must be 2"),
    (dict(head="sequence_classification", num_labels=10**8), "num_labels=100000000 exceeds 1,000,000"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps must be positive"),
    (dict(initializer_range=-0.02), "initializer_range must not be negative"),
])
def test_invalid_configs_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        BertConfig(**{**TINY, **change})


@pytest.mark.parametrize("change", [dict(hidden_size="32"), dict(num_hidden_layers=True), dict(layer_norm_eps="1e-12"),
                                    dict(tie_word_embeddings="yes"), dict(layer_norm_eps=float("nan")),
                                    dict(hidden_act=["gelu"]), dict(num_labels=2.0), dict(head=3)])
def test_config_fields_of_the_wrong_type_are_refused_naming_the_field(change):
    (field,) = change
    with pytest.raises(TypeError, match=rf"BertConfig.{field} must be .*, got"):
        BertConfig(**{**TINY, **change})


def test_model_refuses_a_config_of_another_architecture():
    from peftcore.models import RobertaConfig
    with pytest.raises(TypeError, match="BertModel takes a BertConfig"):
        BertModel(RobertaConfig(**TINY))


def test_dropout_is_active_in_training_and_off_in_eval(model):
    ids = torch.randint(0, 50, (2, 8))
    model.train()
    assert not torch.equal(model(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)
    model.eval()
    assert torch.equal(model(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)


# ---- unpadded execution -------------------------------------------------------------------------------------------


def test_padding_packs_the_real_tokens_and_pads_them_back_with_zeros():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 1]])  # right padding, and a hole
    x = torch.arange(18.0).view(3, 3, 2)
    padding = Padding.of(mask, None, unpad=True)
    packed = padding.pack(x)
    assert packed.shape == (1, 6, 2) and torch.equal(packed[0], x[mask.bool()])
    assert torch.equal(padding.pad(packed), x * mask[..., None])


def test_a_batch_with_a_row_that_starts_with_padding_keeps_its_layout():
    """Left padding: the pooler and first-token heads read position 0, which transformers computes, masked or not
    (AdapterHub's Parallel-with-heads test masks tokens at random)."""
    padding = Padding.of(torch.tensor([[1, 1, 1], [0, 1, 1]]), None, unpad=True)
    assert padding.index is None


@pytest.mark.parametrize("mask", [None, torch.ones(2, 3, dtype=torch.long)], ids=["no mask", "no padding"])
def test_a_batch_without_padding_keeps_its_layout(mask):
    x = torch.randn(2, 3, 4)
    padding = Padding.of(mask, None, unpad=True)
    assert padding.index is None and padding.pack(x) is x and padding.pad(x) is x


def test_a_batch_without_padding_adds_no_mask_to_the_scores():
    """Its additive mask is all zeros: attention runs unmasked (SDPA's fastest kernel, no pass over the scores)."""
    ones = torch.ones(2, 3, dtype=torch.long)
    padding = Padding.of(ones, torch.zeros(2, 1, 1, 3), unpad=True)
    assert padding.mask is None and padding.attention_mask is ones
    assert Padding.of(ones, torch.zeros(2, 1, 1, 3), unpad=False).mask is not None  # unpad off: as given


def test_unpad_false_keeps_the_padded_layout():
    assert Padding.of(torch.tensor([[1, 0]]), None, unpad=False).index is None


def test_attention_per_sequence_equals_masked_attention_over_the_padded_batch():
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]])  # holes, an empty row, left padding
    attention = SelfAttention(8, 2, 0.0, None).eval()
    x = torch.randn(4, 4, 8)
    padded = Padding(additive_mask(mask, x.dtype))
    # packed by hand: Padding.of keeps batches whose rows start with padding padded, but the kernel handles them
    unpadded = Padding(padded.mask, mask.flatten().nonzero().squeeze(1), tuple(mask.shape),
                       tuple(mask.sum(dim=1).tolist()), mask)
    assert unpadded.lengths == (4, 2, 0, 3)
    expected, _ = attention(x, padded)
    got, _ = attention(unpadded.pack(x), unpadded)
    assert_parity(unpadded.pad(got), expected, mask=mask)


def test_outputs_index_as_transformers_model_output(hf_checkpoint):
    """``out[0]``, ``out[1]``, slices, names, ``len``, ``keys()`` and ``to_tuple()`` over the fields set, ``loss`` and
    ``logits`` first, as transformers' ``ModelOutput`` of the same weights gives them."""
    directory, theirs = reference(hf_checkpoint, "bert", "sequence_classification", num_labels=3)
    ours = BertModel.from_pretrained(directory)
    batch, labels = inputs(theirs.config), torch.tensor([0, 2, 1])
    ours.unpad = False  # padded positions as transformers computes them
    with torch.no_grad():
        got = ours(**batch, labels=labels, output_attentions=True)
        expected = theirs(**batch, labels=labels, output_attentions=True)
    assert got.keys() == ["loss", "logits", "last_hidden_state", "pooler_output", "attentions"]
    assert list(expected.keys()) == ["loss", "logits", "attentions"]
    for name in expected:
        assert got[name] is getattr(got, name)
    assert_parity(got[0], expected[0])
    assert_parity(got[1], expected[1])
    assert_parity(got["logits"], expected["logits"])
    assert len(got) == len(got.to_tuple()) == 5 and got.to_tuple()[0] is got.loss and got[1:][0] is got.logits
    assert all(isinstance(a, torch.Tensor) for a in got[4]) and len(got[4]) == len(expected[2])
    for mine, reference_probs in zip(got.attentions, expected.attentions, strict=True):
        assert_parity(mine, reference_probs)
    with pytest.raises(KeyError, match="'start_logits' is not set"):
        got["start_logits"]


def test_bare_encoder_output_tuple_is_transformers(hf_checkpoint):
    directory, theirs = reference(hf_checkpoint, "bert")
    ours = BertModel.from_pretrained(directory)
    ours.unpad = False
    batch = inputs(theirs.config)
    with torch.no_grad():
        got, expected = ours(**batch).to_tuple(), theirs(**batch).to_tuple()
    assert len(got) == len(expected) == 2
    for mine, reference_value in zip(got, expected, strict=True):
        assert_parity(mine, reference_value)
