"""RoBERTa's own behaviour: positions count real tokens and start after the padding index."""

from __future__ import annotations

import pytest
import torch

from peftcore.models import RobertaModel
from tests.archs import reference
from tests.conftest import SMALL
from tests.parity import assert_parity


@pytest.fixture(scope="module")
def roberta(hf_checkpoint):
    directory, theirs = reference(hf_checkpoint, "roberta", max_position_embeddings=20)
    return RobertaModel.from_pretrained(directory).eval(), theirs


def test_left_padded_batch_gets_positions_from_the_padding_in_input_ids(roberta):
    ours, theirs = roberta
    ids = torch.randint(3, SMALL["vocab_size"], (2, 9))
    mask = torch.ones_like(ids)
    ids[0, :4], mask[0, :4] = 1, 0  # left padding
    with torch.no_grad():
        expected, got = theirs(input_ids=ids, attention_mask=mask), ours(input_ids=ids, attention_mask=mask)
    assert_parity(got.last_hidden_state, expected.last_hidden_state, mask=mask)


def test_the_position_table_holds_two_fewer_tokens_than_its_rows(roberta):
    ours, theirs = roberta
    longest = torch.randint(3, SMALL["vocab_size"], (1, 18))  # 20 rows: padding index 1 plus 18 positions
    with torch.no_grad():
        assert_parity(ours(input_ids=longest).last_hidden_state, theirs(input_ids=longest).last_hidden_state)
    with pytest.raises(ValueError, match="exceeds the 18 positions"):
        ours(input_ids=torch.randint(3, SMALL["vocab_size"], (1, 19)))
