"""Gradient checkpointing gives the gradients of the plain backward pass: every method, every architecture, the
composition blocks, mixed batches, padded and unpadded execution, with dropout on (the recomputation replays the
forward's dropout masks) — within 1e-5 in fp32."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from peftcore import BatchSplit, Fuse, Parallel, Stack
from peftcore.configs import parse
from peftcore.context import AdapterSetup
from tests.archs import ARCHS, tiny_model
from tests.peftcore.test_io import randomize
from tests.peftcore.test_model import inputs
from tests.peftcore.test_numerics import METHODS, small

MORE_METHODS = ["dora", "vera", "dvora", "mtl_lora", "loreft", "direft", "noreft", "prompt_tuning"]  # the presets
# that the numerics tests leave out
DROPOUT = dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def training(arch: str, *methods: str) -> nn.Module:
    """A tiny model with dropout, adapters "a", "b", ... (weights drawn away from their identity init) trainable,
    in training mode."""
    model = tiny_model(arch, **(DROPOUT if ARCHS[arch].is_text else {}))
    names = "abc"[:len(methods)]
    for name, method in zip(names, methods, strict=True):
        model.add_adapter(name, small(parse(method)))
        randomize(model, name, scale=0.1)
    model.train_adapter(Stack(*names))
    return model.train()


def gradients(model: nn.Module, checkpointing: bool, batch: dict[str, Tensor], **kwargs) -> dict[str, Tensor]:
    """Every parameter's gradient of a fixed projection of the real tokens' states, dropout drawn from seed 0."""
    if checkpointing:
        model.gradient_checkpointing_enable()
    else:
        model.gradient_checkpointing_disable()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    out = model(**batch, **kwargs).last_hidden_state
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    if "attention_mask" in batch:
        mask = batch["attention_mask"]
        weights = weights * mask.repeat(len(out) // len(mask), 1)[..., None]  # a Parallel setup's copies too
    (out * weights).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(model: nn.Module, batch: dict[str, Tensor], **kwargs) -> None:
    expected = gradients(model, False, batch, **kwargs)
    got = gradients(model, True, batch, **kwargs)
    assert expected and got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("method", [*METHODS, *MORE_METHODS])
def test_every_method_has_the_gradients_of_the_plain_backward_pass(method):
    model = training("bert", method)
    assert_same_gradients(model, inputs(model))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_has_the_gradients_of_the_plain_backward_pass(arch):
    model = training(arch, "mam")  # prefix tuning and a parallel bottleneck: attention and residual sites
    assert_same_gradients(model, inputs(model))


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
def test_padded_and_unpadded_execution_checkpoint_alike(unpad):
    model = training("roberta", "lora", "prefix_tuning")
    model.unpad = unpad
    assert_same_gradients(model, inputs(model))


@pytest.mark.parametrize("setup", [Stack("a", "b"), Fuse("a", "b"), Parallel("a", "b"),
                                   BatchSplit("a", "b", batch_sizes=[2, 1])], ids=repr)
def test_composition_blocks_checkpoint_alike(setup):
    model = training("bert", "seq_bn", "par_bn")
    if isinstance(setup, Fuse):
        model.add_adapter_fusion(setup)
        model.train_adapter_fusion(setup, unfreeze_adapters=True)
        model.train()
    else:
        model.set_active_adapters(setup)
    assert_same_gradients(model, inputs(model))


def test_mixed_batches_and_adapter_setups_recompute_under_the_plan_of_their_forward():
    """Both install their plan for the span of the forward only; the backward pass, where the recomputation runs,
    comes after it, with the active setup back in the sites."""
    model = training("bert", "lora", "seq_bn")
    model.set_active_adapters("a")
    batch = inputs(model)
    assert_same_gradients(model, batch, adapter_names=["b", None, "a"])
    with AdapterSetup(Stack("b", "a")):
        assert_same_gradients(model, batch)


def test_only_training_forwards_with_gradients_checkpoint(monkeypatch):
    model = training("bert", "lora")
    calls = []
    run = model.run_checkpointed
    monkeypatch.setattr(model, "run_checkpointed", lambda *args, **kwargs: calls.append(1) or run(*args, **kwargs))
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    batch = inputs(model)
    with torch.no_grad():
        model(**batch)
    model.eval()(**batch)
    assert not calls
    model.train()(**batch)
    assert len(calls) == len(model.layers)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    with pytest.raises(ValueError, match="use_reentrant=False"):
        model.gradient_checkpointing_enable({"use_reentrant": True})
