"""The workloads of ``bench.py``: each builds its contenders on the same weights and measures them interleaved.

Every checkpoint is a random-init transformers model written with ``save_pretrained`` into a temporary directory;
peftcore loads it with ``models.from_pretrained``, the references with their own ``from_pretrained``.
Train steps are forward, cross-entropy on a 2-label classification head, backward and AdamW.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers as tf
from torch import nn

from benchmarks import harness
from peftcore import LoRAConfig, models

METHODS = ("lora", "ia3", "seq_bn", "compacter", "prefix_tuning", "mam", "unipelt", "prompt_tuning", "mtl_lora",
           "vera", "dora", "dvora", "loreft")
ARCHS = ("bert", "roberta", "deberta_v2", "deberta", "vit", "xlm_roberta", "camembert", "electra", "distilbert",
         "albert")
VARLEN = (16, 128)  # variable-length batches: each example's length uniform in this range, padded to the batch max

SHAPES = {
    "small": dict(layers=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
                  vocab_size=1000, batch=8, length=64, image=dict(image_size=64, patch_size=8)),
    "base": dict(layers=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
                 vocab_size=None, batch=8, length=128, image=dict(image_size=224, patch_size=16)),  # roberta-base
    "minilm": dict(layers=dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
                   vocab_size=None, batch=32, length=64, image=dict(image_size=224, patch_size=16)),  # MiniLM-L6
}
LENGTHS = {"1..8": (1, 8), "3..8": (3, 8), "8..64": (8, 64), "16..128": (16, 128), "1..128": (1, 128)}  # unpad,
# attention: each example's length uniform in the range
VOCAB = {"bert": 30522, "roberta": 50265, "deberta_v2": 128100, "deberta": 50265,  # the base checkpoints' sizes
         "xlm_roberta": 250002, "camembert": 32005, "electra": 30522, "distilbert": 30522, "albert": 30000}
ELECTRA = {"small": dict(embedding_size=128), "base": dict(embedding_size=768),  # electra-small's (< hidden), base's
           "minilm": dict(embedding_size=384)}
ALBERT = dict(embedding_size=128)  # albert-base-v2's: one layer, shared by every pass; its gelu_new and no dropout
DEBERTA_V3 = dict(relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=256, max_relative_positions=-1,
                  norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False, type_vocab_size=0,
                  layer_norm_eps=1e-7)  # deberta-v3-base's config.json
DEBERTA_V1 = dict(relative_attention=True, pos_att_type=["c2p", "p2c"], max_relative_positions=-1,
                  position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7)  # deberta-base's


@dataclass
class Bench:
    """What every workload shares: shape, device, dtype, repetitions, the checkpoint directory and the rows."""

    shape: str
    device: torch.device
    dtype: torch.dtype
    repeats: int
    root: Path
    threads: int
    rows: list[dict] = field(default_factory=list)
    floor: dict = field(default_factory=dict)
    lengths: tuple[str, ...] = tuple(LENGTHS)  # the length distributions of the unpad workload
    cleanliness: dict = field(default_factory=dict)

    @property
    def spec(self) -> dict:
        return SHAPES[self.shape]

    def hf_config(self, arch: str) -> tf.PretrainedConfig:
        layers = self.spec["layers"]
        if arch == "vit":
            return tf.ViTConfig(**layers, **self.spec["image"])
        vocab = dict(vocab_size=self.spec["vocab_size"] or VOCAB[arch])
        extra = {"deberta_v2": DEBERTA_V3, "deberta": DEBERTA_V1, "electra": ELECTRA[self.shape],
                 "albert": ALBERT}.get(arch, {})
        config_class = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig, "deberta_v2": tf.DebertaV2Config,
                        "deberta": tf.DebertaConfig, "xlm_roberta": tf.XLMRobertaConfig,
                        "camembert": tf.CamembertConfig, "electra": tf.ElectraConfig,
                        "distilbert": tf.DistilBertConfig, "albert": tf.AlbertConfig}[arch]
        renames = models.MODEL_CLASSES[config_class.model_type].architecture.config_renames_back  # DistilBERT's dim...
        return config_class(**{renames.get(key, key): value for key, value in layers.items()}, **vocab, **extra)

    def checkpoint(self, arch: str) -> Path:
        """A random-init transformers checkpoint of ``arch`` at this shape, written once."""
        directory = self.root / arch
        if not (directory / "config.json").exists():
            torch.manual_seed(0)
            tf.AutoModel.from_config(self.hf_config(arch)).save_pretrained(directory)
        return directory

    def place(self, model: nn.Module) -> nn.Module:
        return model.to(device=self.device, dtype=self.dtype)

    def inputs(self, arch: str, lengths: list[int] | None = None, seed: int = 0) -> dict:
        """A batch for ``arch``: full-length token ids, or ids padded to the longest of ``lengths``."""
        generator = torch.Generator().manual_seed(seed)
        batch = self.spec["batch"]
        if arch == "vit":
            size = self.spec["image"]["image_size"]
            pixels = torch.randn(batch, 3, size, size, generator=generator)
            return {"pixel_values": pixels.to(self.device, self.dtype)}
        config = self.hf_config(arch)
        lengths = lengths or [self.spec["length"]] * batch
        ids = torch.randint(5, config.vocab_size, (batch, max(lengths)), generator=generator)
        mask = torch.zeros_like(ids)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        ids = ids.masked_fill(mask == 0, config.pad_token_id)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def varlen_batches(self, count: int) -> list[dict]:
        """``count`` RoBERTa batches whose lengths are uniform in VARLEN, padded to each batch's longest."""
        generator = torch.Generator().manual_seed(1)
        low, high = VARLEN
        lengths = [torch.randint(low, high + 1, (self.spec["batch"],), generator=generator).tolist()
                   for _ in range(count)]
        return [self.inputs("roberta", batch_lengths, seed=i) for i, batch_lengths in enumerate(lengths)]

    def labels(self, batch: dict) -> torch.Tensor:
        rows = next(iter(batch.values())).shape[0]
        return (torch.arange(rows) % 2).to(self.device)

    def add(self, workload: str, times: dict, reference: str, second: str | None = None, unit: str = "s",
            **notes: object) -> dict:
        if unit == "s":  # how many samples ran with other processes off the CPU, and how busy they were
            notes = {**self.cleanliness, **notes}
        row = harness.make_row(workload, times, reference, second, unit, **notes)
        self.rows.append(row)
        harness.print_row(row)
        return row

    def measure(self, contenders: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
        times, self.cleanliness = harness.interleave(contenders, self.repeats, self.device)
        return times


# ---- the contenders ---------------------------------------------------------------------------------------------

def ours(b: Bench, arch: str = "roberta") -> nn.Module:
    return b.place(models.from_pretrained(b.checkpoint(arch)))


def transformers_model(b: Bench, arch: str = "roberta") -> nn.Module:
    return b.place(tf.AutoModel.from_pretrained(b.checkpoint(arch)))


def require_input_grads(embeddings: nn.Module) -> None:
    """Make the embeddings' output require grad, so that a frozen model's backward still runs through every layer
    (activation gradients only): the step every adapter method pays for, without the adapters."""
    embeddings.register_forward_hook(lambda module, args, out: out.requires_grad_(True))


def build_trainee(b: Bench, contender: str, method: str | LoRAConfig | None) -> nn.Module:
    """A RoBERTa with a 2-label classification head, in train mode, with only what ``contender`` trains trainable.

    ours / adapterhub: adapter ``method`` and its head; ``* frozen``: the encoder frozen, the head trainable,
    gradients flowing back through the encoder to its input; ``transformers head-only``: the same without
    those gradients (backward stops at the head); ``transformers full``: everything trainable; peft: PEFT's LoRA
    with AdapterHub's defaults (r=8, alpha=8 on query and value); ``peft all-linear``: the same on every linear of
    the layers (``target_modules="all-linear"``; the classifier is PEFT's modules_to_save).
    A contender ending in `` checkpointed`` is that contender with gradient checkpointing (non-reentrant, as ours
    always is).
    """
    checkpointed = contender.endswith(" checkpointed")
    contender = contender.removesuffix(" checkpointed")
    directory = b.checkpoint("roberta")
    with contextlib.redirect_stderr(io.StringIO()):
        if contender == "ours":
            model = models.from_pretrained(directory)
            model.add_adapter("a", method)
            model.add_classification_head("a", num_labels=2)
            model.train_adapter("a")
        elif contender == "adapterhub":
            import adapters

            model = adapters.AutoAdapterModel.from_pretrained(directory)
            model.add_adapter("a", config=method)
            model.add_classification_head("a", num_labels=2)
            model.train_adapter("a")
        elif contender == "ours frozen":
            model = models.from_pretrained(directory)
            model.add_classification_head("h", num_labels=2)
            model.freeze_model(True)
            model.heads["h"].requires_grad_(True)
            require_input_grads(model.embeddings)
        elif contender.startswith("peft"):
            import peft

            model = peft.get_peft_model(
                tf.AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2),
                peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8, lora_dropout=0.0,
                                target_modules="all-linear" if contender == "peft all-linear" else ["query", "value"]))
        else:
            model = tf.AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2)
            if contender in ("transformers frozen", "transformers head-only"):
                model.base_model.requires_grad_(False)
            if contender == "transformers frozen":
                model.enable_input_require_grads()
    if checkpointed:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return b.place(model).train()


def train_step(b: Bench, model: nn.Module, batches: list[dict], run: Callable | None = None) -> Callable[[], None]:
    """One repetition: a train step (forward, loss, backward, AdamW) on each batch; ``run`` runs the forward
    (default: the model; a compiled model of its parameters)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    labels = [b.labels(batch) for batch in batches]
    run = model if run is None else run

    def step() -> None:
        for batch, target in zip(batches, labels, strict=True):
            F.cross_entropy(run(**batch).logits.float(), target).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step


def forward(model: nn.Module, batches: list[dict]) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            for batch in batches:
                model(**batch)
    return step


# ---- workloads --------------------------------------------------------------------------------------------------

def floor(b: Bench) -> None:
    """The matmul rate of the FFN's shape and the FLOP floor of a RoBERTa forward and train step at this shape."""
    layers, spec = b.spec["layers"], b.spec
    tokens = spec["batch"] * spec["length"]
    rate = harness.matmul_rate(b.device, b.dtype, tokens, layers["hidden_size"], layers["intermediate_size"])
    flops = harness.forward_flops(spec["batch"], spec["length"], layers["hidden_size"], layers["intermediate_size"],
                                  layers["num_hidden_layers"])
    b.floor = {"matmul_gflops": rate, "forward_gflop": flops / 1e9, "forward_s": flops / rate / 1e9,
               "frozen_step_s": 2 * flops / rate / 1e9, "full_step_s": 3 * flops / rate / 1e9}
    print(f"FLOP floor: matmul ({tokens} x {layers['hidden_size']}) @ ({layers['hidden_size']} x "
          f"{layers['intermediate_size']}) runs at {rate:.1f} GFLOP/s; a RoBERTa forward is {flops / 1e9:.1f} GFLOP, "
          f"so forward >= {b.floor['forward_s']:.4f} s, frozen-base train step (forward + activation gradients) >= "
          f"{b.floor['frozen_step_s']:.4f} s, full fine-tuning step >= {b.floor['full_step_s']:.4f} s", flush=True)


def plain_forward(b: Bench) -> None:
    """Plain forward of every architecture, ours against transformers' (default attention) on the same weights."""
    for arch in ARCHS:
        ours_model, theirs = ours(b, arch).eval(), transformers_model(b, arch).eval()
        batch = [b.inputs(arch)]
        times = b.measure({"ours": forward(ours_model, batch), "transformers": forward(theirs, batch)})
        notes = {}
        if arch == "roberta" and b.floor:
            notes["floor_s"] = b.floor["forward_s"]
        b.add(f"forward {arch}", times, "transformers", **notes)


def train(b: Bench, methods: tuple[str, ...]) -> None:
    """References first (frozen and full fine-tuning), then each method: ours, AdapterHub and our frozen step."""
    batch = [b.inputs("roberta")]
    references = ("ours frozen", "transformers frozen", "transformers head-only", "transformers full")
    steps = {name: train_step(b, build_trainee(b, name, None), batch) for name in references}
    notes = {"floor_frozen_step_s": b.floor["frozen_step_s"], "floor_full_step_s": b.floor["full_step_s"]} \
        if b.floor else {}
    b.add("train step references", b.measure(steps), "transformers frozen", "ours frozen", **notes)
    del steps
    for method in methods:
        names = ("ours", "adapterhub", "ours frozen") + (("peft",) if method == "lora" else ())
        steps = {name: train_step(b, build_trainee(b, name, method), batch) for name in names}
        b.add(f"train step {method}", b.measure(steps), "adapterhub", "ours frozen")
    if "lora" in methods:  # every linear of the layers: ours target="all-linear" against PEFT's "all-linear"
        all_linear = LoRAConfig(target="all-linear")
        steps = {"ours": train_step(b, build_trainee(b, "ours", all_linear), batch),
                 "peft all-linear": train_step(b, build_trainee(b, "peft all-linear", None), batch),
                 "ours frozen": train_step(b, build_trainee(b, "ours frozen", None), batch)}
        b.add("train step lora all-linear", b.measure(steps), "peft all-linear", "ours frozen")


def inference(b: Bench) -> None:
    """LoRA and (IA)^3 inference, unmerged and merged, against our plain forward (eval mode, no grad)."""
    batch = [b.inputs("roberta")]
    contenders = {"plain": forward(ours(b).eval(), batch)}
    for method in ("lora", "ia3"):
        for merged in (False, True):
            model = ours(b).eval()
            model.add_adapter("a", method, set_active=True)
            with torch.no_grad():  # non-zero adapter weights: LoRA's B and the IA3 scales start as no-ops
                for name, parameter in model.named_parameters():
                    if ".adapters." in name:
                        parameter.normal_(1.0 if method == "ia3" else 0.0, 0.02)
            if merged:
                model.merge_adapter("a")
            contenders[f"{method} {'merged' if merged else 'unmerged'}"] = forward(model, batch)
    b.add("inference with LoRA / IA3", b.measure(contenders), "plain")


def mixed(b: Bench) -> None:
    """8 LoRA adapters x 1 example each: one forward with adapter_names against one forward per adapter."""
    batch = b.inputs("roberta")
    model = ours(b).eval()
    names = [f"m{i}" for i in range(b.spec["batch"])]
    for name in names:
        model.add_adapter(name, "lora")
    try:
        with torch.no_grad():
            model(**batch, adapter_names=names)
    except TypeError as error:
        print(f"mixed-adapter batches: skipped, the model does not take adapter_names yet ({error})", flush=True)
        return
    rows = [{key: value[i:i + 1] for key, value in batch.items()} for i in range(len(names))]

    def one_forward() -> None:
        with torch.no_grad():
            model(**batch, adapter_names=names)

    def loop() -> None:
        with torch.no_grad():
            for name, row in zip(names, rows, strict=True):
                model.set_active_adapters(name)
                model(**row)
        model.set_active_adapters(None)

    b.add("mixed batch, 8 LoRA x 1 example", b.measure({"mixed batch": one_forward, "loop over adapters": loop}),
          "loop over adapters")


def memory(b: Bench, methods: tuple[str, ...], child_arguments: list[str]) -> None:
    """Peak memory of two train steps above the built model, each contender in its own fresh process."""
    def peak(contender: str, method: str | None) -> dict:
        arguments = [*child_arguments, "--memory-child", contender, "--root", str(b.root)]
        return harness.run_child(arguments + (["--method", method] if method else []))

    b.checkpoint("roberta")
    references = ("ours frozen", "transformers frozen", "transformers head-only", "transformers full")
    results = {name: peak(name, None) for name in references}
    b.add("peak train memory references", {name: [result["peak_mb"]] for name, result in results.items()},
          "transformers frozen", "ours frozen", unit="MB", how=next(iter(results.values()))["method"],
          built_mb={name: round(result["before_mb"]) for name, result in results.items()})
    for method in methods:
        results = {name: peak(name, method) for name in ("ours", "adapterhub")}
        b.add(f"peak train memory {method}", {name: [result["peak_mb"]] for name, result in results.items()},
              "adapterhub", unit="MB", built_mb={name: round(result["before_mb"]) for name, result in results.items()})


def checkpointing(b: Bench, methods: tuple[str, ...], child_arguments: list[str]) -> None:
    """Train step time and peak train memory with and without gradient checkpointing: ours with each method, and
    transformers' full fine-tuning beside them; each memory figure from a fresh process, as in ``memory``."""
    batch = [b.inputs("roberta")]
    runs = [(method, "ours", method) for method in methods] + [("full FT", "transformers full", None)]
    for label, contender, method in runs:
        pair = (contender, f"{contender} checkpointed")
        steps = {name: train_step(b, build_trainee(b, name, method), batch) for name in pair}
        b.add(f"checkpointing step {label}", b.measure(steps), contender)
        del steps
        method_arguments = ["--method", method] if method else []
        peaks = {name: harness.run_child([*child_arguments, "--memory-child", name, "--root", str(b.root),
                                          *method_arguments]) for name in pair}
        b.add(f"checkpointing memory {label}", {name: [peak["peak_mb"]] for name, peak in peaks.items()}, contender,
              unit="MB", how=peaks[contender]["method"])


def memory_child(b: Bench, contender: str, method: str | None) -> dict:
    """In a fresh process: build one contender, then measure the peak of two train steps above what it holds."""
    model = build_trainee(b, contender, method)
    with torch.no_grad():  # read every tensor once: weights that from_pretrained memory-mapped become resident
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()
    step = train_step(b, model, [b.inputs("roberta")])
    return harness.measure_peak(lambda: (step(), step()), b.device)


def loading(b: Bench) -> None:
    """Checkpoint conversion (ours from an HF directory vs transformers) and adapter load time."""
    import adapters

    for arch in ("roberta", "deberta_v2", "vit"):
        directory = b.checkpoint(arch)
        with contextlib.redirect_stderr(io.StringIO()):
            times = b.measure({"ours": partial(models.from_pretrained, directory),
                               "transformers": partial(tf.AutoModel.from_pretrained, directory)})
        b.add(f"load checkpoint {arch}", times, "transformers")
    for method in ("seq_bn", "lora"):
        ours_model, hub = models.from_pretrained(b.checkpoint("roberta")), adapters.AutoAdapterModel.from_pretrained(
            b.checkpoint("roberta"))
        ours_model.add_adapter("a", method)
        hub.add_adapter("a", config=method)
        ours_dir, hub_dir = b.root / f"ours-{method}", b.root / f"hub-{method}"
        ours_model.save_adapter(ours_dir, "a")
        hub.save_adapter(str(hub_dir), "a")

        def loader(model: nn.Module, directory: Path) -> Callable[[], float]:
            def step() -> float:  # times the load only; deleting it again is not counted
                start = time.perf_counter()
                model.load_adapter(str(directory), load_as="x")
                elapsed = time.perf_counter() - start
                model.delete_adapter("x")
                return elapsed
            return step

        with contextlib.redirect_stderr(io.StringIO()):
            times = b.measure({"ours": loader(ours_model, ours_dir),
                               "ours from AdapterHub dir": loader(ours_model, hub_dir),
                               "adapterhub": loader(hub, hub_dir)})
        b.add(f"load adapter {method}", times, "adapterhub")


def compile_in_one_thread() -> None:
    """torch.compile without a pool of compile workers, which would stay busy while we time."""
    import torch._inductor.config

    torch._inductor.config.compile_threads = 1


def compiled(b: Bench) -> None:
    """Our model with a LoRA adapter attached: torch.compile'd forward against eager (eval, no grad)."""
    batch = [b.inputs("roberta")]
    model = ours(b).eval()
    model.add_adapter("a", "lora", set_active=True)
    compile_in_one_thread()
    compiled_model = torch.compile(model)
    start = time.perf_counter()
    forward(compiled_model, batch)()
    harness.synchronize(b.device)
    compile_s = time.perf_counter() - start
    reference = model(**batch[0]).last_hidden_state
    difference = (compiled_model(**batch[0]).last_hidden_state - reference).abs().max().item()
    times = b.measure({"eager": forward(model, batch), "compiled": forward(compiled_model, batch)})
    b.add("forward with LoRA, torch.compile", times, "eager", compile_s=round(compile_s, 2),
          max_abs_difference=difference)


def varlen(b: Bench, methods: tuple[str, ...], count: int) -> None:
    """Batches with lengths uniform in VARLEN, padded to each batch's longest: forward and train steps."""
    batches = b.varlen_batches(count)
    real = sum(int(batch["attention_mask"].sum()) for batch in batches)
    padded = sum(batch["attention_mask"].numel() for batch in batches)
    notes = {"batches": count, "real_token_fraction": round(real / padded, 3),
             "padded_lengths": [batch["input_ids"].shape[1] for batch in batches]}
    padded_model = ours(b).eval()
    padded_model.unpad = False  # what running on the real tokens only buys
    times = b.measure({"ours": forward(ours(b).eval(), batches), "ours padded": forward(padded_model, batches),
                       "transformers": forward(transformers_model(b).eval(), batches)})
    b.add("varlen forward roberta", times, "transformers", "ours padded", **notes)
    for method in methods:
        steps = {name: train_step(b, build_trainee(b, name, method), batches) for name in ("ours", "adapterhub")}
        b.add(f"varlen train step {method}", b.measure(steps), "adapterhub")


def quiet() -> None:
    """Silence the references' warnings (newly initialised heads, deprecations) so the table stays readable."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    tf.logging.set_verbosity_error()
