"""Sentence embeddings against sentence-transformers: its directories read and written, pooling, and its losses."""

from __future__ import annotations

import shutil

import pytest
import torch
from sentence_transformers import SentenceTransformer, losses
from sentence_transformers.models import Pooling

from peftcore import embeddings
from peftcore.models import BertConfig, BertModel, Tokenizer
from tests.models.test_minilm import SENTENCES
from tests.parity import assert_parity

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def test_minilm_directory_embeds_as_sentence_transformers(minilm_checkpoint):
    config = embeddings.read_sentence_transformers(minilm_checkpoint)
    assert config == embeddings.SentenceTransformersConfig("mean", True, 256)
    model = BertModel.from_pretrained(minilm_checkpoint)
    model.add_embedding_head("st", **config.head_fields)
    got = embeddings.encode_texts(model, Tokenizer.from_pretrained(minilm_checkpoint), SENTENCES)
    expected = SentenceTransformer(str(minilm_checkpoint), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    assert_parity(got, expected)


@pytest.mark.parametrize("mode, normalize", [("mean", False), ("lasttoken", True)])
def test_written_directory_loads_in_sentence_transformers(minilm_checkpoint, tmp_path, mode, normalize):
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 max_position_embeddings=32))
    model.add_adapter("lora", "lora[r=4]")
    with torch.no_grad():
        for _, _, _, module in model.iter_adapters("lora"):
            module.lora_B.normal_()  # LoRA starts as the identity: make the merge change the weights
    model.add_embedding_head("pool", pooling_mode=mode, normalize=normalize)
    model.set_active_adapters("lora")
    model.active_head = "pool"
    model.eval()
    with pytest.raises(ValueError, match="merge_adapter"):
        embeddings.save_sentence_transformers(model, tmp_path, "pool", max_seq_length=32)
    model.merge_adapter("lora")
    with pytest.warns(UserWarning):  # the hf format leaves the adapter objects and the head out, and says so
        embeddings.save_sentence_transformers(model, tmp_path, "pool", max_seq_length=32)
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_checkpoint / name, tmp_path / name)
    assert embeddings.read_sentence_transformers(tmp_path) == embeddings.SentenceTransformersConfig(mode, normalize, 32)
    got = embeddings.encode_texts(model, Tokenizer.from_pretrained(tmp_path), SENTENCES, max_length=32)
    expected = SentenceTransformer(str(tmp_path), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    assert_parity(got, expected)


@pytest.mark.parametrize("mode", embeddings.POOLING_MODES)
def test_pooling_equals_sentence_transformers_with_either_padding(mode):
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # right, left, no padding
    reference = Pooling(8, pooling_mode=mode)
    expected = reference({"token_embeddings": hidden, "attention_mask": mask})["sentence_embedding"]
    assert_parity(embeddings.pool(hidden, mask, mode), expected)


def test_losses_equal_sentence_transformers():
    torch.manual_seed(0)
    anchor, positive, negative = (torch.randn(6, 16) for _ in range(3))
    scores = torch.rand(6)
    ranking = losses.MultipleNegativesRankingLoss(model=None)
    assert_parity(embeddings.multiple_negatives_ranking_loss(anchor, positive),
                  ranking.compute_loss_from_embeddings([anchor, positive], None))
    assert_parity(embeddings.multiple_negatives_ranking_loss(anchor, positive, negative),
                  ranking.compute_loss_from_embeddings([anchor, positive, negative], None))
    assert_parity(embeddings.cosine_similarity_loss(anchor, positive, scores),
                  losses.CosineSimilarityLoss(model=None).compute_loss_from_embeddings([anchor, positive], scores))
    expected = losses.TripletLoss(model=None).compute_loss_from_embeddings([anchor, positive, negative], None)
    assert expected > 0  # margin 5 is not met by random vectors: the test compares a live loss, not a zero
    assert_parity(embeddings.triplet_loss(anchor, positive, negative), expected)


def test_retrieval_metrics_rank_the_right_document():
    queries = torch.eye(3)
    documents = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0.5]])  # 2 ranks query 1's document second
    metrics = embeddings.retrieval_metrics(queries, documents)
    assert metrics == pytest.approx({"mrr@10": (1 + 0.5 + 0.5) / 3, "accuracy@1": 1 / 3})


def test_unsupported_modules_are_named(tmp_path):
    (tmp_path / "modules.json").write_text('[{"path": "", "type": "sentence_transformers.models.Transformer"}, '
                                           '{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}, '
                                           '{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]')
    with pytest.raises(ValueError, match="Dense"):
        embeddings.read_sentence_transformers(tmp_path)
