"""AdapterFusion trained by the Trainer: a task that needs two adapters' knowledge is solved by fusing both, not by
fusing either alone; the fusion regulariser is part of the loss; fusion checkpoints resume."""

from __future__ import annotations

import torch

from peftcore import Fuse
from peftcore.models import BertConfig, BertModel
from peftcore.training import Trainer, TrainingConfig

T = 5  # tokens per sequence


def tagged(generator: torch.Generator, bits: torch.Tensor, count: int, label) -> list[dict[str, torch.Tensor]]:
    """Random sequences of tokens 8..39 after a [CLS] (2), each token labelled by ``label(its bits)``."""
    examples = []
    for _ in range(count):
        ids = torch.randint(8, 40, (T,), generator=generator)
        ids[0] = 2
        labels = label(bits[ids])
        labels[0] = -100
        examples.append({"input_ids": ids, "attention_mask": torch.ones(T, dtype=torch.long), "labels": labels})
    return examples


def token_accuracy(model, examples) -> float:
    batch = {key: torch.stack([example[key] for example in examples]) for key in examples[0]}
    labels = batch.pop("labels")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1)
    kept = labels != -100
    return (predicted[kept] == labels[kept]).float().mean().item()


def train_with_frozen_head(model, name, config, examples, checkpoint_dir=None):
    """Train ``name`` with its head fixed, so what is learned lives in the adapter (or fusion), not in a head that
    could read the token's identity from the frozen model."""
    if checkpoint_dir:
        config = TrainingConfig(**{**config.__dict__, "checkpoint_dir": str(checkpoint_dir)})
    trainer = Trainer(model, name, config, examples, progress=False)
    model.heads[name].requires_grad_(False)
    return trainer, trainer.fit()


def test_fusing_two_adapters_solves_the_task_that_needs_both(tmp_path):
    # Each token has two random bits a and b. Adapter "a" learns a, adapter "b" learns b (each under a fixed random
    # tagging head). The fusion task labels each token 2a + b through a fixed head composed of those two heads:
    # only fusion layers train, so a fusion must draw a from one adapter and b from the other.
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = BertModel(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64))
    bits = torch.randint(0, 2, (40, 2), generator=generator)
    config = TrainingConfig(epochs=4, batch_size=16, learning_rate=3e-2, seed=0)
    for column, name in enumerate("ab"):
        model.add_adapter(name, "seq_bn[reduction_factor=4]")
        model.add_tagging_head(name, num_labels=2)
        with torch.no_grad():
            model.heads[name][-1].weight.normal_(0, 0.5, generator=generator)
        train_with_frozen_head(model, name, config, tagged(generator, bits, 128, lambda b, c=column: b[:, c].clone()))
    both = lambda b: 2 * b[:, 0] + b[:, 1]  # noqa: E731
    train, test = tagged(generator, bits, 128, both), tagged(generator, bits, 64, both)
    a_head, b_head = model.heads["a"][-1], model.heads["b"][-1]
    accuracy = {}
    for fusion, adapters in (("only_a", ("a",)), ("only_b", ("b",)), ("fused", ("a", "b"))):
        model.add_adapter_fusion(Fuse(*adapters, name=fusion))
        model.add_tagging_head(fusion, num_labels=4)
        with torch.no_grad():
            for label in range(4):
                model.heads[fusion][-1].weight[label] = a_head.weight[label // 2] + b_head.weight[label % 2]
                model.heads[fusion][-1].bias[label] = a_head.bias[label // 2] + b_head.bias[label % 2]
        fusion_config = TrainingConfig(epochs=4, batch_size=16, learning_rate=1e-2, seed=0)
        checkpoints = tmp_path if fusion == "fused" else None
        trainer, result = train_with_frozen_head(model, fusion, fusion_config, train, checkpoints)
        assert all(not p.requires_grad for name in adapters for p in model.adapter_parameters(name))
        accuracy[fusion] = token_accuracy(model, test)
    assert accuracy["fused"] > max(accuracy["only_a"], accuracy["only_b"]) + 0.2, accuracy

    # the step's loss is the head's loss plus AdapterHub's value regulariser 0.01 · Σ ||I - W_v||²
    batch = trainer.collate_fn(train[:16])
    model.train()
    torch.manual_seed(1)
    got = trainer.loss(dict(batch))
    labels = batch.pop("labels")
    torch.manual_seed(1)
    head_loss = model.heads["fused"].loss(model(**batch).logits, labels)
    regulariser = sum(0.01 * (torch.eye(32) - fusion.value.weight).pow(2).sum() for _, fusion in
                      model.fusion_layers("fused"))
    torch.testing.assert_close(got, head_loss + regulariser)

    # a rerun finds the fusion's finished checkpoint and brings its layers back
    state = {key: tensor.clone() for key, tensor in model.fusion_state("fused").items()}
    with torch.no_grad():
        for tensor in model.fusion_state("fused").values():
            tensor.zero_()
    _, again = train_with_frozen_head(model, "fused", fusion_config, train, tmp_path)
    assert again.was_finished and again.losses == result.losses
    assert all(torch.equal(model.fusion_state("fused")[key], tensor) for key, tensor in state.items())
