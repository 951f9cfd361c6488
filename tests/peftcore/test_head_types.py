"""The multiple-choice and dependency-parsing heads on tiny models: AdapterHub's module layout key for key, the
parser's word averaging equal to AdapterHub's, composition with Parallel and BatchSplit, training, and a clear error,
raised before anything runs, for each input that cannot work."""

from __future__ import annotations

import types
import warnings

import adapters
import pytest
import torch
import transformers as tf
from hypothesis import given
from hypothesis import strategies as st

from peftcore.composition import BatchSplit, Parallel
from peftcore.head_types import word_means
from tests.archs import ARCHS, tiny_model
from tests.parity import assert_parity, padded_batch
from tests.peftcore.test_io import assert_unchanged, fingerprint

TINY = ARCHS["bert"].tiny_size
B, C, T = 3, 2, 6


def choice_batch(choices: int = C) -> dict[str, torch.Tensor]:
    ids, mask = padded_batch(TINY["vocab_size"], 0, lengths=(T, 4, 2))
    return {"input_ids": ids[:, None].expand(B, choices, T).contiguous(),
            "attention_mask": mask[:, None].expand(B, choices, T).contiguous()}


def parse_batch() -> dict[str, torch.Tensor]:
    ids, mask = padded_batch(TINY["vocab_size"], 0, lengths=(T, 4, 2))
    word_starts = torch.tensor([[1, 2, 4, 5, 0, 0], [1, 3, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    arcs = torch.tensor([[2, 3, 1, 0, 0, 0], [1, 2, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])  # 0: unlabelled in BERT
    rels = torch.tensor([[1, 0, 2, 0, 0, 0], [2, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    return {"input_ids": ids, "attention_mask": mask, "word_starts": word_starts, "labels_arcs": arcs,
            "labels_rels": rels}


def with_heads(*added: tuple[str, str, dict]) -> torch.nn.Module:
    model = tiny_model()
    for method, name, kwargs in added:
        getattr(model, method)(name, **kwargs)
        with torch.no_grad():
            for parameter in model.heads[name].parameters():
                parameter.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def mc_model() -> torch.nn.Module:
    return with_heads(("add_multiple_choice_head", "mc", dict(num_choices=C)))


def parser() -> torch.nn.Module:
    return with_heads(("add_dependency_parsing_head", "parse", dict(num_labels=3)))


# ---- layout -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "kwargs"), [("add_multiple_choice_head", dict(num_choices=4, layers=2)),
                                                ("add_multiple_choice_head", dict(layers=1, use_pooler=True)),
                                                ("add_dependency_parsing_head", dict(num_labels=7))])
def test_heads_have_adapterhubs_keys_shapes_and_config(method, kwargs):
    ours = tiny_model()
    getattr(ours, method)("h", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = adapters.BertAdapterModel(tf.BertConfig(**TINY))
    getattr(theirs, method)("h", **kwargs)
    shapes = {key: tuple(t.shape) for key, t in ours.state_dict().items() if key.startswith("heads.h.")}
    assert shapes == {key: tuple(t.shape) for key, t in theirs.state_dict().items() if key.startswith("heads.h.")}
    unnamed = {key: value for key, value in theirs.heads["h"].config.items() if key != "label2id"}  # AdapterHub
    # names the labels LABEL_i in the config, ours where they are asked for
    assert {key: value for key, value in ours.heads["h"].config.items() if key != "label2id"} == unnamed
    assert ours.get_labels("h") == theirs.get_labels("h")


def test_parser_scorers_start_at_zero_as_adapterhubs():
    model = tiny_model()
    model.add_dependency_parsing_head("parse")
    assert [name for name, p in model.heads["parse"].named_parameters() if p.any()] == []


# ---- the parser's words ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad_token_id", [0, 1])
def test_word_means_are_adapterhubs_merged_subwords(pad_token_id):
    """Pad entries anywhere in a row are dropped, a non-positive start ends the words, rows past them are zero."""
    x = torch.randn(4, 8, 5, generator=torch.Generator().manual_seed(0))
    word_starts = torch.tensor([[1, 2, 5, 7, 8, 0, 0, 0], [2, 3, pad_token_id, 5, 7, 0, 0, 0],
                                [0, 0, 0, 0, 0, 0, 0, 0], [1, 3, 0, 6, 0, 0, 0, 0]])
    theirs = types.SimpleNamespace(model_config=types.SimpleNamespace(pad_token_id=pad_token_id, hidden_size=5))
    expected = adapters.heads.BiaffineParsingHead._merge_subword_tokens(theirs, x, word_starts)
    assert_parity(word_means(x, word_starts, pad_token_id), expected, atol=1e-6)


@st.composite
def word_start_rows(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    """(word_starts (B, W), pad_token_id): rows of increasing starts in [1, 8], pad ids strewn among them, zeros
    after, and rows that stop at a zero in their middle."""
    pad_token_id = draw(st.sampled_from([0, 1]))
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        starts = sorted(draw(st.sets(st.integers(2, 8), max_size=6)))
        for _ in range(draw(st.integers(0, 2))):
            starts.insert(draw(st.integers(0, len(starts))), draw(st.sampled_from([pad_token_id, 0])))
        rows.append(starts)
    width = max(len(row) for row in rows) + draw(st.integers(0, 2))
    return torch.tensor([row + [0] * (width - len(row)) for row in rows]), pad_token_id


@given(word_start_rows())
def test_word_means_equal_adapterhubs_for_any_valid_word_starts(case):
    word_starts, pad_token_id = case
    x = torch.randn(len(word_starts), 8, 5, generator=torch.Generator().manual_seed(0))
    theirs = types.SimpleNamespace(model_config=types.SimpleNamespace(pad_token_id=pad_token_id, hidden_size=5))
    expected = adapters.heads.BiaffineParsingHead._merge_subword_tokens(theirs, x, word_starts)
    assert_parity(word_means(x, word_starts, pad_token_id), expected, atol=1e-6)


# ---- predictions, losses, composition ---------------------------------------------------------------------


def test_multiple_choice_logits_score_each_choice_as_its_own_sequence():
    model, inputs = mc_model(), choice_batch()
    with torch.no_grad():
        logits = model(**inputs).logits
        model.active_head = None
        second = model(input_ids=inputs["input_ids"][:, 1], attention_mask=inputs["attention_mask"][:, 1])
        alone = torch.nn.Sequential.forward(model.heads["mc"], second.last_hidden_state[:, 0])  # (B, 1)
    assert logits.shape == (B, C)
    assert_parity(logits[:, 1], alone[:, 0], atol=1e-6)


def test_parser_loss_leaves_out_words_whose_head_is_the_pad_id_and_trains_the_scorers():
    model, inputs = parser(), parse_batch()
    out = model(**inputs)
    labelled = inputs["labels_arcs"].ne(0)
    arcs = torch.nn.functional.cross_entropy(out.arc_preds[labelled], inputs["labels_arcs"][labelled])
    at_gold = out.rel_preds[labelled][torch.arange(int(labelled.sum())), inputs["labels_arcs"][labelled]]
    assert_parity(out.loss, arcs + torch.nn.functional.cross_entropy(at_gold, inputs["labels_rels"][labelled]))
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads["parse"].parameters())


def test_parallel_branches_each_get_their_parser_and_every_row_its_word_starts():
    model = with_heads(("add_dependency_parsing_head", "a", dict(num_labels=3)),
                       ("add_dependency_parsing_head", "b", dict(num_labels=3)))
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    inputs = parse_batch()
    model.set_active_adapters(Parallel("a", "b"))
    with torch.no_grad():
        both = model(**inputs)
        for branch, name in zip(both, ("a", "b"), strict=True):
            model.set_active_adapters(name)
            alone = model(**inputs)
            assert_parity(branch.arc_preds, alone.arc_preds)
            assert_parity(branch.loss, alone.loss)
    assert_parity(both.loss, sum(branch.loss for branch in both))


def test_batch_split_gives_each_slice_its_parser_and_its_rows_word_starts():
    """AdapterHub passes every slice the whole batch's word_starts (and crashes on their labels); ours slices them."""
    model = with_heads(("add_dependency_parsing_head", "a", dict(num_labels=3)),
                       ("add_dependency_parsing_head", "b", dict(num_labels=3)))
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    inputs = {key: value for key, value in parse_batch().items() if not key.startswith("labels")}
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
    with torch.no_grad():
        first, second = model(**inputs)
        model.set_active_adapters("b")
        alone = model(**{key: value[1:] for key, value in inputs.items()})
    assert first.arc_preds.shape == (1, T, T + 1)
    assert_parity(second.arc_preds, alone.arc_preds)


def test_multiple_choice_heads_in_a_batch_split_take_slices_of_flattened_choices():
    model = with_heads(("add_multiple_choice_head", "a", dict(num_choices=C)),
                       ("add_multiple_choice_head", "b", dict(num_choices=C)))
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    inputs = choice_batch()
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[2, 4]))  # AdapterHub's: rows of B·choices
    with torch.no_grad():
        first, second = model(**inputs)
        model.set_active_adapters("b")
        alone = model(**{key: value[1:] for key, value in inputs.items()})
    assert first.logits.shape == (1, C)
    assert_parity(second.logits, alone.logits)


# ---- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    (lambda i: {**i, "input_ids": i["input_ids"][:, 0], "attention_mask": i["attention_mask"][:, 0]},
     r"takes input_ids of shape \(batch, 2, tokens\), got \(3, 6\)"),
    (lambda i: choice_batch(choices=3), r"num_choices=2 takes input_ids .* got \(3, 3, 6\)"),
    (lambda i: {**i, "attention_mask": i["attention_mask"][:, 0]}, r"attention_mask has shape \(3, 6\)"),
    (lambda i: {**i, "labels": torch.tensor([[0, 1]] * 3)}, r"one label per example"),
])
def test_multiple_choice_refuses_inputs_of_the_wrong_layout(change, message):
    model = mc_model()
    with pytest.raises(ValueError, match=message):
        model(**change(choice_batch()))


@pytest.mark.parametrize(("change", "message"), [
    (lambda i: {k: v for k, v in i.items() if k != "word_starts"}, "needs word_starts"),
    (lambda i: {**i, "word_starts": i["word_starts"][:2]}, r"one row per sequence"),
    (lambda i: {**i, "word_starts": i["word_starts"].float()}, "integer token indices"),
    (lambda i: {**i, "word_starts": torch.tensor([[1, 9, 0, 0, 0, 0]] * 3)}, r"outside \[0, 6\]"),
    (lambda i: {**i, "word_starts": torch.tensor([[1, 3, 2, 0, 0, 0]] * 3)}, "must increase"),
    (lambda i: {**i, "word_starts": torch.tensor([[1, 2, 3, 4, 5, 6, 6, 6]] * 3)}, "more than 6 words"),
    (lambda i: {**i, "labels_arcs": i["labels_arcs"][:, :4], "labels_rels": i["labels_rels"][:, :4]},
     r"labels_arcs has shape \(3, 4\)"),
    (lambda i: {**i, "labels_rels": i["labels_rels"][:, :4]}, "labels_rels"),
    (lambda i: {k: v for k, v in i.items() if k != "labels_rels"}, "together"),
    (lambda i: {**i, "labels": torch.zeros(3, dtype=torch.long)}, "targets of one head"),
    (lambda i: {**i, "labels_arcs": i["labels_arcs"].masked_fill(i["labels_arcs"] == 3, 7)}, r"heads outside \[0, 7\)"),
    (lambda i: {**i, "labels_rels": i["labels_rels"] + 3}, r"relations outside \[0, 3\)"),
])
def test_parser_refuses_word_starts_and_labels_that_cannot_work(change, message):
    model = parser()
    with pytest.raises(ValueError, match=message):
        model(**change(parse_batch()))


def test_heads_that_read_more_than_the_encoder_output_are_refused_in_mixed_batches():
    model = parser()
    model.add_adapter("parse", config="seq_bn")
    inputs = parse_batch()
    with pytest.raises(ValueError, match="adapter_names"):
        model(**inputs, adapter_names=["parse"] * 3)
    plain = {key: inputs[key] for key in ("input_ids", "attention_mask")}
    with pytest.raises(ValueError, match=r"takes other inputs than \(batch, tokens\)"):
        model(**plain, adapter_names=["parse"] * 3)


def test_heads_of_different_input_layouts_cannot_run_in_parallel():
    model = with_heads(("add_multiple_choice_head", "a", dict(num_choices=C)),
                       ("add_classification_head", "b", dict(num_labels=C)))
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    model.set_active_adapters(Parallel("a", "b"))
    with pytest.raises(ValueError, match="different layouts"):
        model(**choice_batch())


@pytest.mark.parametrize(("method", "kwargs", "message"), [
    ("add_multiple_choice_head", dict(num_choices=0), "num_choices >= 1"),
    ("add_multiple_choice_head", dict(num_choices=2, id2label={0: "a"}), "id2label has 1 labels"),
    ("add_dependency_parsing_head", dict(num_labels=0), "num_labels >= 1"),
])
def test_bad_head_configs_are_refused_and_leave_the_model_as_it_was(method, kwargs, message):
    model = mc_model()
    before = fingerprint(model)
    with pytest.raises(ValueError, match=message):
        getattr(model, method)("h", **kwargs)
    assert_unchanged(model, before)
