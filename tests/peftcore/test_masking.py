"""The masking collator's statistics: BERT's 15% and 80/10/10 within binomial bounds, specials and padding never
chosen, labels exactly at the chosen tokens, whole words chosen together."""

from __future__ import annotations

import pytest
import torch

from peftcore.masking import MaskingCollator, continuation_ids

PAD, CLS, SEP, MASK, VOCAB = 0, 1, 2, 3, 1000
CONTINUATIONS = frozenset(range(500, 1000))  # as if the second half of the vocabulary were ##pieces


def sentences(generator: torch.Generator, count: int = 400) -> list[dict[str, torch.Tensor]]:
    """[CLS] tokens [SEP] of random lengths 4..60: word starts from 10..499, each followed by 0-2 pieces."""
    examples = []
    for _ in range(count):
        length = int(torch.randint(4, 61, (1,), generator=generator))
        pieces = torch.randint(10, 500, (length,), generator=generator)
        continues = torch.rand(length, generator=generator) < 0.4
        continues[0] = False
        pieces[continues] += 490  # a continuation piece's id
        ids = torch.cat((torch.tensor([CLS]), pieces, torch.tensor([SEP])))
        examples.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return examples


def within(count: int, total: int, p: float) -> bool:
    """``count`` successes of ``total`` trials are within 5 standard deviations of a binomial(p)."""
    return abs(count - total * p) <= 5 * (total * p * (1 - p)) ** 0.5


@pytest.mark.parametrize("whole_word", [False, True])
def test_bert_rule_holds_statistically(whole_word):
    generator = torch.Generator().manual_seed(0)
    examples = sentences(generator)
    collator = MaskingCollator(MASK, PAD, VOCAB, special_ids=(CLS, SEP), whole_word=whole_word,
                               continuations=CONTINUATIONS, generator=generator)
    batch = collator(examples)
    padded = torch.nn.utils.rnn.pad_sequence([e["input_ids"] for e in examples], batch_first=True)
    chosen = batch["labels"] != -100
    assert torch.equal(batch["labels"][chosen], padded[chosen])  # labels: the original ids, only where chosen
    assert not chosen[(padded == PAD) | (padded == CLS) | (padded == SEP)].any()  # never specials or padding
    assert torch.equal(batch["input_ids"][~chosen], padded[~chosen])  # the rest is untouched
    real = (padded >= 10)
    if whole_word:
        starts = real & (padded < 500)
        words = int(starts.sum())
        chosen_words = int((chosen & starts).sum())
        assert within(chosen_words, words, 0.15)
        # a piece is chosen exactly when the word it continues is
        previous = torch.cat((torch.zeros_like(chosen[:, :1]), chosen[:, :-1]), 1)
        pieces = real & ~starts
        assert torch.equal(chosen[pieces], previous[pieces])
    else:
        assert within(int(chosen.sum()), int(real.sum()), 0.15)
    total = int(chosen.sum())
    inputs = batch["input_ids"][chosen]
    as_mask = int((inputs == MASK).sum())
    unchanged = int((inputs == padded[chosen]).sum())
    assert within(as_mask, total, 0.8)
    # random replacements land on the original with probability 1 / VOCAB, so unchanged is 10% + 0.01%
    assert within(unchanged, total, 0.1 + 0.1 / VOCAB)
    assert within(total - as_mask - unchanged, total, 0.1 - 0.1 / VOCAB)


def test_continuations_come_from_wordpiece_prefixes():
    assert continuation_ids({"play": 5, "##ing": 6, "[CLS]": 1, "##s": 9}) == {6, 9}
    with pytest.raises(ValueError, match="continuation"):
        MaskingCollator(MASK, PAD, VOCAB, whole_word=True)
