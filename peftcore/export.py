"""ONNX export of a text model with its adapters: merged into the weights, or active and unmerged (bottleneck,
prefix tuning, LoRA, ... as the active setup composes them), with dynamic batch and sequence axes.

One forward is traced by torch.onnx's TorchScript exporter (``dynamo=False``; it needs the ``onnx`` package, the
``onnx`` extra). The trace runs the padded path: running unpadded packs a batch's real tokens, whose count the data
decide, so the graph takes padded batches with their attention mask, as transformers' exports do. Setups that send
rows of the batch through different adapters (BatchSplit, Parallel) depend on the batch's layout and are refused.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from peftcore.composition import BatchSplit, Parallel, walk
from peftcore.host import AdapterHost

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits")  # those a forward sets
AXES = {0: "batch", 1: "sequence"}
PER_TOKEN = (*INPUTS, "last_hidden_state", "start_logits", "end_logits")
OPSET = 17  # LayerNorm as one op; every runtime of the last years runs it


class Traced(nn.Module):
    """The model's forward on positional ``inputs``, returning the ``outputs`` it names as a tuple: what the tracer
    records."""

    def __init__(self, model: nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        out = self.model(**dict(zip(self.inputs, tensors, strict=True)))
        return tuple(getattr(out, name) for name in self.outputs)


def example_batch(config: object, inputs: tuple[str, ...], rows: int = 2, length: int = 8) -> dict[str, Tensor]:
    """A padded batch to trace: random ids (the padding id left out), the last row half padding."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(config.vocab_size, (rows, length), generator=generator)
    ids[ids == config.pad_token_id] = (config.pad_token_id + 1) % config.vocab_size
    mask = torch.ones_like(ids)
    mask[-1, length // 2:] = 0
    batch = {"input_ids": ids.masked_fill(mask == 0, config.pad_token_id), "attention_mask": mask,
             "token_type_ids": torch.zeros_like(ids)}
    return {name: batch[name] for name in inputs}


def dynamic_axes(tensors: dict[str, Tensor]) -> dict[str, dict[int, str]]:
    """Axis 0 of every input and output is the batch; axis 1 is the sequence where it has one entry per token (not
    in the pooled output nor in a sequence classifier's (B, L) logits)."""
    return {name: AXES if name in PER_TOKEN or t.dim() == 3 else {0: AXES[0]} for name, t in tensors.items()}


def check_exportable(model: AdapterHost) -> None:
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("ONNX export needs the onnx package: pip install peftcore[onnx]")
    if not isinstance(getattr(model.config, "vocab_size", None), int):
        raise ValueError(f"{type(model).__name__} takes no input_ids; ONNX export covers text models.")
    split = [block for block in walk(model.plan.setup) if isinstance(block, (BatchSplit, Parallel))]
    if split:
        raise ValueError(f"the active setup {model.active_adapters!r} sends rows of the batch through different "
                         f"adapters ({split[0]!r}), which an exported graph cannot follow; export with a setup that "
                         "runs every row alike (Stack, Fuse, Average, or one adapter).")


def export_onnx(model: AdapterHost, path: str | os.PathLike, *, token_type_ids: bool = False,
                opset_version: int = OPSET) -> tuple[str, ...]:
    """Write ``model`` as it runs now (merged adapters in its weights, the active setup's adapters unmerged) to the
    ONNX file ``path``, atomically; returns the output names.

    Inputs ``input_ids`` and ``attention_mask`` (B, T) (with ``token_type_ids``, also ``token_type_ids``), both axes
    dynamic; outputs ``last_hidden_state`` and, where the model computes them, ``pooler_output`` and its active
    head's ``logits`` (``start_logits`` and ``end_logits`` for question answering). The model is traced on the
    padded path in eval mode and left as it was.
    """
    check_exportable(model)
    inputs = INPUTS if token_type_ids else INPUTS[:2]
    batch = example_batch(model.config, inputs)
    was_training, unpad = model.training, model.unpad
    model.eval()
    model.unpad = False  # the padded path: packing depends on the data
    try:
        with torch.no_grad():
            out = model(**batch)
        if isinstance(out, list):
            raise ValueError("the model returns one output per head of its setup; export with one head active.")
        outputs = tuple(name for name in OUTPUTS if getattr(out, name, None) is not None)
        axes = dynamic_axes({**batch, **{name: getattr(out, name) for name in outputs}})
        traced = Traced(model, inputs, outputs).eval()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.tmp-") as scratch:
            staged = Path(scratch) / target.name
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
                warnings.filterwarnings("ignore", message=".*will be removed.*", category=DeprecationWarning)
                torch.onnx.export(traced, tuple(batch.values()), staged, dynamo=False, input_names=list(inputs),
                                  output_names=list(outputs), opset_version=opset_version,
                                  dynamic_axes=axes)
            os.replace(staged, target)
    finally:
        model.unpad = unpad
        model.train(was_training)
    return outputs
