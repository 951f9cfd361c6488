"""AdapterHub 1.3.0's multiple-choice and dependency-parsing heads against ours: head files both ways, predictions and
losses on the same weights and inputs, and composition with Parallel as AdapterHub runs it.

Multiple choice runs on every architecture whose AdapterHub model lists it (BERT, RoBERTa, DeBERTa v2); AdapterHub's
parser only on BERT and RoBERTa.
"""

from __future__ import annotations

import adapters
import adapters.composition as ah
import pytest
import torch

from peftcore.composition import BatchSplit, Parallel
from tests.archs import reference
from tests.parity import assert_parity
from tests.peftcore.interop.test_adapterhub import adapterhub_model, inputs_for, ours_from
from tests.peftcore.interop.test_adapterhub_heads import randomized

CHOICE_ARCHS = ("bert", "roberta", "deberta-v2")
PARSING_ARCHS = ("bert", "roberta")


@pytest.fixture
def models(hf_checkpoint):
    """models(arch) -> (AdapterHub's XAdapterModel, ours) on one random checkpoint."""
    def make(arch: str):
        directory = reference(hf_checkpoint, arch, variant="wide")[0]
        return adapterhub_model(arch, directory, flex=True), ours_from(arch, directory)

    return make


def choice_inputs(arch: str) -> dict[str, torch.Tensor]:
    """Three examples of two choices (B, 2, T): the padded batch and its rows rolled by one, with their masks."""
    batch = inputs_for(arch)
    return {key: torch.stack((t, t.roll(1, 0)), dim=1) for key, t in batch.items()}


def parse_inputs(arch: str, pad_token_id: int) -> dict[str, torch.Tensor]:
    """The padded batch (lengths 12, 7, 3) with word starts (words of one and two tokens between the first and last
    token, the list padded with 0) and gold arcs and relations per word (``pad_token_id`` past the words)."""
    batch = inputs_for(arch)
    tokens = batch["input_ids"].shape[1]
    word_starts = torch.zeros_like(batch["input_ids"])
    arcs = torch.full_like(batch["input_ids"], pad_token_id)
    rels = torch.zeros_like(batch["input_ids"])
    generator = torch.Generator().manual_seed(1)
    for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
        starts = [1]
        while starts[-1] < length - 1:
            starts.append(min(starts[-1] + 1 + len(starts) % 2, length - 1))
        word_starts[row, :len(starts)] = torch.tensor(starts)
        words = len(starts) - 1
        arcs[row, :words] = torch.randint(0, words + 1, (words,), generator=generator)
        rels[row, :words] = torch.randint(0, 3, (words,), generator=generator)
    assert tokens >= word_starts.count_nonzero(1).max()
    return {**batch, "word_starts": word_starts, "labels_arcs": arcs, "labels_rels": rels}


def forward(model: torch.nn.Module, inputs: dict, head: str):
    model.active_head = head
    with torch.no_grad():
        return model(**inputs)


def assert_same_parse(ours, theirs) -> None:
    assert_parity(ours.arc_preds, theirs.arc_preds)
    assert_parity(ours.rel_preds, theirs.rel_preds)
    assert_parity(ours.loss, theirs.loss)


@pytest.mark.parametrize("safetensors", [False, True], ids=["pickle", "safetensors"])
@pytest.mark.parametrize("arch", CHOICE_ARCHS)
def test_multiple_choice_head_files_load_both_ways_with_adapterhubs_logits_and_loss(models, arch, safetensors,
                                                                                   tmp_path):
    theirs, ours = models(arch)
    theirs.add_multiple_choice_head("mc", num_choices=2, id2label={0: "first", 1: "second"})
    randomized(theirs, "mc")
    theirs.save_head(str(tmp_path / "theirs"), "mc", use_safetensors=safetensors)
    assert ours.load_head(tmp_path / "theirs") == "mc" and ours.active_head == "mc"
    assert ours.heads["mc"].config == theirs.heads["mc"].config
    assert ours.get_labels("mc") == theirs.get_labels("mc") == ["first", "second"]
    inputs = {**choice_inputs(arch), "labels": torch.tensor([1, 0, 1])}
    got, expected = forward(ours, inputs, "mc"), forward(theirs, inputs, "mc")
    assert got.logits.shape == (3, 2)
    assert_parity(got.logits, expected.logits)
    assert_parity(got.loss, expected.loss)

    randomized(ours, "mc")
    ours.save_head(tmp_path / "ours", "mc", format="adapterhub", use_safetensors=safetensors)
    theirs.load_head(str(tmp_path / "ours"), load_as="back", use_safetensors=safetensors)
    assert_parity(forward(theirs, inputs, "back").logits, forward(ours, inputs, "mc").logits)


@pytest.mark.parametrize("arch", PARSING_ARCHS)
def test_dependency_parsing_head_files_load_both_ways_with_adapterhubs_scores_and_loss(models, arch, tmp_path):
    theirs, ours = models(arch)
    theirs.add_dependency_parsing_head("parse", num_labels=3)
    randomized(theirs, "parse")
    theirs.save_head(str(tmp_path / "theirs"), "parse")
    assert ours.load_head(tmp_path / "theirs") == "parse"
    assert ours.heads["parse"].config == theirs.heads["parse"].config
    assert ours.get_labels("parse") == theirs.get_labels("parse")
    inputs = parse_inputs(arch, ours.config.pad_token_id)
    got, expected = forward(ours, inputs, "parse"), forward(theirs, inputs, "parse")
    assert got.arc_preds.shape == (3, 12, 13) and got.rel_preds.shape == (3, 12, 13, 3)
    assert_same_parse(got, expected)
    assert (got.rel_preds, got.arc_preds) == (got[1], got[2])  # AdapterHub's tuple order: loss, rel_preds, arc_preds

    randomized(ours, "parse")
    ours.save_head(tmp_path / "ours", "parse", format="adapterhub")
    theirs.load_head(str(tmp_path / "ours"), load_as="back")
    assert_same_parse(forward(ours, inputs, "parse"), forward(theirs, inputs, "back"))


@pytest.mark.parametrize("arch", PARSING_ARCHS)
def test_parsing_head_trained_by_adapterhub_with_an_adapter_gives_its_scores_in_ours(models, arch, tmp_path):
    """Three AdamW steps of AdapterHub on adapter 'a' and its parser, saved together, load into ours as one."""
    theirs, ours = models(arch)
    theirs.add_adapter("a", config="seq_bn")
    theirs.add_dependency_parsing_head("a", num_labels=3)
    theirs.train_adapter("a")
    inputs = parse_inputs(arch, ours.config.pad_token_id)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        theirs(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    theirs.eval()
    theirs.save_adapter(str(tmp_path / "a"), "a")
    ours.load_adapter(tmp_path / "a", set_active=True)
    assert ours.heads["a"].biaffine_arcs.weight.abs().max() > 0  # trained off its zero start
    assert_same_parse(forward(ours, inputs, "a"), forward(theirs, inputs, "a"))


def parallel_heads(theirs, ours, add_head: str, tmp_path, **head_args) -> None:
    """Adapters a and b, each with an AdapterHub head (``add_<add_head>_head``) and random weights, saved by
    AdapterHub and loaded into ours; Parallel(a, b) active in both."""
    for name in ("a", "b"):
        theirs.add_adapter(name, config="seq_bn")
        getattr(theirs, f"add_{add_head}_head")(name, **head_args)
        randomized(theirs, name)
        theirs.save_adapter(str(tmp_path / name), name)
        ours.load_adapter(tmp_path / name)
    theirs.set_active_adapters(ah.Parallel("a", "b"))
    ours.set_active_adapters(Parallel("a", "b"))


def test_parallel_adapters_with_multiple_choice_heads_give_adapterhubs_branch_outputs(models, tmp_path):
    theirs, ours = models("bert")
    parallel_heads(theirs, ours, "multiple_choice", tmp_path, num_choices=2)
    inputs = {**choice_inputs("bert"), "labels": torch.tensor([1, 0, 1])}
    with torch.no_grad():
        got, expected = ours(**inputs), theirs(**inputs)
    assert len(got) == len(expected) == 2
    for mine, reference_output in zip(got, expected, strict=True):
        assert_parity(mine.logits, reference_output.logits)
    assert_parity(got.loss, expected.loss)


def test_parallel_adapters_with_parsing_heads_give_adapterhubs_branch_outputs(models, tmp_path):
    theirs, ours = models("roberta")
    parallel_heads(theirs, ours, "dependency_parsing", tmp_path, num_labels=3)
    inputs = parse_inputs("roberta", ours.config.pad_token_id)
    with torch.no_grad():
        got, expected = ours(**inputs), theirs(**inputs)
    for mine, reference_output in zip(got, expected, strict=True):
        assert_same_parse(mine, reference_output)
    assert_parity(got.loss, expected.loss)


def test_adapterhub_lists_the_heads_we_build_for_each_architecture():
    """Multiple choice where AdapterHub's model lists it; the parser beyond BERT and RoBERTa is ours alone."""
    for arch in CHOICE_ARCHS:
        assert "multiple_choice" in adapters.ADAPTER_MODEL_MAPPING[type(inputs_config(arch))].head_types
    for arch in PARSING_ARCHS:
        assert "dependency_parsing" in adapters.ADAPTER_MODEL_MAPPING[type(inputs_config(arch))].head_types


def inputs_config(arch: str):
    from tests.archs import ARCHS
    return ARCHS[arch].hf_config("wide")


def test_adapterhub_batch_split_parsers_read_the_first_rows_word_starts_and_ours_their_own(models, tmp_path):
    theirs, ours = models("bert")
    for name in ("a", "b"):
        theirs.add_adapter(name, config="seq_bn")
        theirs.add_dependency_parsing_head(name, num_labels=3)
        randomized(theirs, name)
        theirs.save_adapter(str(tmp_path / name), name)
        ours.load_adapter(tmp_path / name)
    inputs = {key: value for key, value in parse_inputs("bert", 0).items() if not key.startswith("labels")}
    rows = {key: value[1:] for key, value in inputs.items()}
    theirs.set_active_adapters(ah.BatchSplit("a", "b", batch_sizes=[1, 2]))
    ours.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
    with torch.no_grad():
        their_split, our_split = theirs(**inputs), ours(**inputs)
        theirs.set_active_adapters("b")
        their_rows = theirs(**rows)
        their_misread = theirs(**{**rows, "word_starts": inputs["word_starts"][:2]})
    assert_parity(their_split[1].arc_preds, their_misread.arc_preds)
    assert (their_split[1].arc_preds - their_rows.arc_preds).abs().max() > 1e-3
    assert_parity(our_split[1].arc_preds, their_rows.arc_preds)
    assert_parity(our_split[0].arc_preds, their_split[0].arc_preds)


def test_adapterhub_parser_drops_the_word_axis_of_a_one_token_batch_and_ours_keeps_it(models):
    theirs, ours = models("bert")
    for model in (theirs, ours):
        model.add_dependency_parsing_head("parse")
    inputs = {"input_ids": inputs_for("bert")["input_ids"][:, :1], "word_starts": torch.zeros(3, 1, dtype=torch.long)}
    assert forward(theirs, inputs, "parse").arc_preds.shape == (1, 3, 2)  # (batch, tokens) squeezed, then unsqueezed
    assert forward(ours, inputs, "parse").arc_preds.shape == (3, 1, 2)
