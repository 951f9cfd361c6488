"""Numerics of every method on every architecture: bf16 and fp16 forward and backward stay finite and within a stated
tolerance of fp32; a batch of one at the position limit and fully padded examples give no NaN or inf anywhere.

CPU supports every op here in fp16 and bf16 (torch 2.13). Losses weigh real tokens only, as training losses do:
PyTorch's CPU attention spreads a fully masked query row differently in fp16 than in fp32/fp64, so the outputs at
padded positions (which no loss reads) are finite but not comparable across dtypes.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from peftcore import BnConfig
from peftcore.configs import AdapterConfigBase, parse
from tests.archs import ARCHS, TEXT_ARCHS, tiny_model
from tests.parity import assert_parity
from tests.peftcore.test_io import randomize
from tests.peftcore.test_model import inputs

METHODS = ["seq_bn", "double_seq_bn", "par_bn", "scaled_par_bn", "seq_bn_inv", "seq_bn_inv[inv_adapter='glow']",
           "double_seq_bn_inv", "compacter", "compacter++", "lora[intermediate_lora=True, output_lora=True]", "ia3",
           "prefix_tuning", "prefix_tuning_flat", "mam", "unipelt"]
# |half - fp32| on real tokens' hidden states, and |Δgrad| / |grad| over all adapter gradients together
OUTPUT_ATOL = {torch.bfloat16: 0.1, torch.float16: 0.02}
GRADIENT_RTOL = 0.2


def small(config: AdapterConfigBase) -> AdapterConfigBase:
    """A config fitted to the tiny model: Compacter's reduction factor of 32 would leave one unit of 32."""
    return config.replace(reduction_factor=4) if isinstance(config, BnConfig) and config.phm_layer else config


def adapted(arch: str, method: str, **model_changes) -> nn.Module:
    """A tiny model training adapter "a" (weights drawn away from its identity init), in eval mode: no dropout."""
    model = tiny_model(arch)
    if model_changes:
        model = type(model)(model.config.__class__(**{**vars(model.config), **model_changes})).eval()
    model.add_adapter("a", small(parse(method)))
    randomize(model, "a", scale=0.1)
    model.train_adapter("a")
    return model.eval()


def forward_backward(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The hidden states and the flattened gradients of a fixed random projection of the real tokens' states."""
    out = model(**batch).last_hidden_state
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    if "attention_mask" in batch:
        weights = weights * batch["attention_mask"][..., None]
    (out.float() * weights).sum().backward()  # a sum, not a mean: fp16 gradients of a mean underflow
    grads = [p.grad.float().flatten() for p in model.parameters() if p.grad is not None]
    return out, torch.cat(grads)


def cast(batch: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    return {key: t.to(dtype) if t.is_floating_point() else t for key, t in batch.items()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_half_precision_forward_and_backward_are_finite_and_close_to_fp32(arch, method, dtype):
    full = adapted(arch, method)
    half = copy.deepcopy(full).to(dtype)
    batch = inputs(full)
    expected, expected_grads = forward_backward(full, batch)
    got, grads = forward_backward(half, cast(batch, dtype))
    assert got.dtype == dtype and torch.isfinite(got).all() and torch.isfinite(grads).all()
    assert_parity(got, expected, atol=OUTPUT_ATOL[dtype], mask=batch.get("attention_mask"))
    assert (grads - expected_grads).norm() <= GRADIENT_RTOL * expected_grads.norm()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", TEXT_ARCHS)
def test_fully_padded_examples_give_finite_outputs_and_gradients(arch, method, dtype):
    model = adapted(arch, method).to(dtype)
    batch = inputs(model)
    batch["attention_mask"][1] = 0
    out = model(**batch).last_hidden_state
    out.float().sum().backward()  # padded positions included: nothing may be NaN even there
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_a_batch_of_one_at_the_position_limit_is_finite(arch, method):
    model = adapted(arch, method, max_position_embeddings=64)
    if not ARCHS[arch].is_text:
        batch = {"pixel_values": inputs(model)["pixel_values"][:1]}
    else:
        ids = torch.randint(3, 100, (1, model.max_length), generator=torch.Generator().manual_seed(0))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    out, grads = forward_backward(model, batch)
    assert out.shape[0] == 1 and torch.isfinite(out).all() and torch.isfinite(grads).all()


@pytest.mark.parametrize("arch", TEXT_ARCHS)
def test_a_prefix_longer_than_the_position_table_takes_no_positions(arch):
    """Prefixes are keys and values only, so prefix_length is not bounded by max_position_embeddings."""
    model = adapted(arch, "prefix_tuning[prefix_length=80]", max_position_embeddings=64)
    ids = torch.randint(3, 100, (2, model.max_length), generator=torch.Generator().manual_seed(0))
    out, grads = forward_backward(model, {"input_ids": ids})
    assert torch.isfinite(out).all() and torch.isfinite(grads).all()
    with pytest.raises(ValueError, match=f"sequence length {model.max_length + 1} exceeds the {model.max_length} "
                                         "positions"):
        model(input_ids=torch.cat([ids, ids[:, :1]], dim=1))
