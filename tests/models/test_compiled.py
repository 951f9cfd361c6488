"""Compiled packed execution (models/compiled.py): the eager packed outputs, one graph for any set of lengths."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from peftcore.models.bert import BertConfig, BertModel
from tests.parity import assert_parity


def batch(lengths: list[int], length: int = 8) -> dict:
    ids = torch.randint(1, 64, (len(lengths), length))
    mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask}


def test_compiled_packed_layers_give_the_eager_outputs_without_recompiling_for_new_lengths():
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=37))
    model.add_adapter("a", "lora", set_active=True)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # a LoRA that changes the outputs
            torch.nn.init.normal_(parameter)
    model.eval()
    batches = [batch([8, 3, 5]), batch([2, 6, 5, 4, 6], length=6)]  # other lengths, N, rows and width
    with torch.no_grad():
        eager = [model(**b).last_hidden_state for b in batches]
        model.compile_packed = True
        torch._dynamo.reset()
        counters.clear()
        first = model(**batches[0]).last_hidden_state
        with torch._dynamo.config.patch(error_on_recompile=True):
            second = model(**batches[1]).last_hidden_state
    assert counters["stats"]["unique_graphs"] == 1  # one graph for both layers and both batches
    for compiled, expected, b in zip((first, second), eager, batches, strict=True):
        assert_parity(compiled, expected, mask=b["attention_mask"])


def lora_model(dropout: float) -> BertModel:
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=37, hidden_dropout_prob=dropout,
                                 attention_probs_dropout_prob=dropout))
    model.add_adapter("a", "lora", set_active=True)
    model.train_adapter("a")
    return model


def lora_gradients(model: BertModel, b: dict) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**b).last_hidden_state.square().mean().backward()
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def test_compiled_packed_training_gives_the_eager_gradients():
    """Dropout off, so that eager and compiled draw nothing: the same LoRA gradients."""
    model, b = lora_model(0.0), batch([8, 3, 5])
    eager = lora_gradients(model, b)
    model.compile_packed = True
    torch._dynamo.reset()
    compiled = lora_gradients(model, b)
    assert eager.keys() == compiled.keys()
    for name, gradient in eager.items():
        torch.testing.assert_close(compiled[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_compiled_packed_training_drops_out_with_a_fresh_mask_each_step():
    model, b = lora_model(0.3), batch([8, 3, 5])
    model.compile_packed = True
    torch._dynamo.reset()
    first, second = (model(**b).last_hidden_state for _ in range(2))
    real = b["attention_mask"].bool()
    assert not torch.allclose(first[real], second[real])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**b).last_hidden_state, model(**b).last_hidden_state)
