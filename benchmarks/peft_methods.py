"""The ``peft_methods`` workload of ``bench.py``: train steps of HF PEFT's LoHa, LoKr and AdaLoRA, ours against
PEFT's on the same RoBERTa checkpoint, with each method's work around the optimizer step (AdaLoRA's regulariser and
rank allocation) on both sides.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import transformers as tf

from benchmarks.workloads import Bench
from peftcore import models

# PEFT's methods that AdapterHub lacks, as peft configures them and as ours, on RoBERTa's query and value
PEFT_ONLY = {
    "loha": ("loha", lambda peft: peft.LoHaConfig(r=8, alpha=8, target_modules=["query", "value"],
                                                  task_type="SEQ_CLS")),
    "lokr": ("lokr", lambda peft: peft.LoKrConfig(r=8, alpha=8, target_modules=["query", "value"],
                                                  task_type="SEQ_CLS")),
    "adalora": ("adalora[init_r=12, target_r=8, total_step=1000000]",  # budgeting phase: ranks allocated every step
                lambda peft: peft.AdaLoraConfig(init_r=12, target_r=8, total_step=1000000, task_type="SEQ_CLS",
                                                target_modules=["query", "value"])),
}


def peft_only_step(b: Bench, contender: str, method: str, batches: list[dict]) -> Callable[[], None]:
    """A train step as ``train_step``'s for a method of ``PEFT_ONLY``, with the method's work around the optimizer
    step: ours with our Trainer's callbacks (AdaLoRA's regulariser and allocator), PEFT's with the regulariser it adds
    to a loss from labels and its ``update_and_allocate``."""
    ours_config, peft_config = PEFT_ONLY[method]
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if contender == "ours":
            from peftcore.training import training_callbacks

            model = models.from_pretrained(b.checkpoint("roberta"))
            model.add_adapter("a", ours_config)
            model.add_classification_head("a", num_labels=2)
            model.train_adapter("a")
            callbacks = training_callbacks(model, "a", 1000000)

            def loss(batch: dict, target: torch.Tensor) -> torch.Tensor:
                task = F.cross_entropy(model(**batch).logits.float(), target)
                return sum((callback.regularisation() for callback in callbacks), task)

            def after(step: int) -> None:
                for callback in callbacks:
                    callback.after_step(step)
        else:
            import peft

            model = peft.get_peft_model(tf.AutoModelForSequenceClassification.from_pretrained(
                b.checkpoint("roberta"), num_labels=2), peft_config(peft))

            def loss(batch: dict, target: torch.Tensor) -> torch.Tensor:
                return model(**batch, labels=target).loss

            after = model.base_model.update_and_allocate if method == "adalora" else (lambda step: None)
    model = b.place(model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    labels, count = [b.labels(batch) for batch in batches], [0]

    def step() -> None:
        for batch, target in zip(batches, labels, strict=True):
            loss(batch, target).float().backward()
            optimizer.step()
            after(count[0])
            count[0] += 1
            optimizer.zero_grad(set_to_none=True)
    return step


def run(b: Bench) -> None:
    """Train steps of LoHa, LoKr and AdaLoRA (allocation and regulariser included), ours against PEFT's."""
    batch = [b.inputs("roberta")]
    for method in PEFT_ONLY:
        steps = {name: peft_only_step(b, name, method, batch) for name in ("ours", "peft")}
        b.add(f"train step {method}", b.measure(steps), "peft")
