"""Tokenizer: padding, truncation and clear errors."""

from __future__ import annotations

import pytest

from peftcore.models import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(minilm_checkpoint):
    return Tokenizer.from_pretrained(minilm_checkpoint)


def test_batch_is_padded_to_its_longest_text_with_the_pad_token(tokenizer):
    batch = tokenizer(["one", "one two three four"])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 6)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch["input_ids"][0, 3:].tolist() == [tokenizer.pad_token_id] * 3


def test_truncation_defaults_to_the_model_max_length(tokenizer):
    assert tokenizer.model_max_length == 512
    assert tokenizer("word " * 1000)["input_ids"].shape == (1, 512)
    assert tokenizer("word " * 1000, max_length=16)["input_ids"].shape == (1, 16)


def test_decode_inverts_encode(tokenizer):
    assert tokenizer.decode(tokenizer("hello world")["input_ids"][0]) == "hello world"


def test_unpadded_batch_of_different_lengths_is_refused(tokenizer):
    with pytest.raises(ValueError, match="padding=True"):
        tokenizer(["one", "one two"], padding=False)


def test_pairs_must_match_texts_in_number(tokenizer):
    with pytest.raises(ValueError, match="one pair per text"):
        tokenizer(["a", "b"], ["c"])


def test_directory_without_tokenizer_json_says_what_to_save(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_corrupt_tokenizer_json_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not be read"):
        Tokenizer.from_pretrained(tmp_path)
