"""The real all-MiniLM-L6-v2 checkpoint: our tokenizer and model give sentence-transformers' embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from peftcore.models import BertModel, Tokenizer
from tests.parity import assert_parity

SENTENCES = [
    "A man is playing a guitar.",
    "Someone strums an acoustic guitar on stage.",
    "The quarterly report shows revenue grew by 12% – unexpected, given the café closures!",
    "short",
]


def embed(model: BertModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_mean_pooled_embeddings_equal_sentence_transformers(minilm_checkpoint):
    reference = SentenceTransformer(str(minilm_checkpoint), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True)
    model = BertModel.from_pretrained(minilm_checkpoint).eval()
    with torch.no_grad():
        got = embed(model, Tokenizer.from_pretrained(minilm_checkpoint)(SENTENCES))
    assert_parity(got, expected)


def test_our_tokenizer_gives_transformers_token_ids(minilm_checkpoint):
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(minilm_checkpoint))
    ours = Tokenizer.from_pretrained(minilm_checkpoint)
    expected = theirs(SENTENCES, SENTENCES[::-1], padding=True, truncation=True, max_length=24, return_tensors="pt")
    got = ours(SENTENCES, SENTENCES[::-1], max_length=24)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(got[key], expected[key]), key
