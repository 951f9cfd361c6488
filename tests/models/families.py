"""What every encoder family's test file checks against transformers on the same random weights: each head on a
padded batch, and our export to the family's HF layout loaded by the transformers class of its head."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import transformers as tf

from peftcore.models import from_pretrained
from peftcore.models.pretrained import PretrainedEncoder
from tests.archs import ARCHS, inputs, reference
from tests.parity import assert_outputs_parity, real_tokens


def checkpoint(hf_checkpoint, arch: str, head: str | None, variant: str = "default", **fields: Any):
    """(directory, transformers model) of a random-init ``arch`` with ``head`` (3 labels; QA's 2), biases and norms
    randomised."""
    return reference(hf_checkpoint, arch, head, variant, num_labels=2 if head == "question_answering" else 3,
                     **fields)


def check_every_head(hf_checkpoint, arch: str, head: str | None, unpad: bool, variant: str = "default",
                     **fields: Any) -> PretrainedEncoder:
    """``from_pretrained`` picks our class by model_type and gives transformers' outputs on a padded batch: at real
    tokens unpadded (zeros at padding), at every position with ``unpad=False``. Returns our model."""
    directory, theirs = checkpoint(hf_checkpoint, arch, head, variant, **fields)
    ours = from_pretrained(directory).eval()
    assert type(ours) is ARCHS[arch].model and ours.config.head == head
    ours.unpad = unpad
    batch = inputs(theirs.config)
    with torch.no_grad():
        got, expected = ours(**batch), theirs(**batch)
    assert_outputs_parity(got, expected, head, batch["attention_mask"] if unpad else None)
    if unpad and head is None:
        assert torch.equal(got.last_hidden_state, real_tokens(got.last_hidden_state, batch["attention_mask"]))
    return ours


def check_export(hf_checkpoint, arch: str, head: str | None, tmp_path, variant: str = "default",
                 **fields: Any) -> tf.PreTrainedModel:
    """Ours saved in the HF layout loads in the transformers class of its head with our outputs; returns that
    transformers model."""
    directory, _ = checkpoint(hf_checkpoint, arch, head, variant, **fields)
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ours.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ALBERT's masked-LM export with its pooler names AlbertForPreTraining
        reloaded = ARCHS[arch].hf[head].from_pretrained(tmp_path).eval()
    batch = inputs(ours.config)
    with torch.no_grad():
        assert_outputs_parity(ours(**batch), reloaded(**batch), head, batch["attention_mask"])
    return reloaded
