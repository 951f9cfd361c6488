"""Workloads of ``bench.py`` that time one mechanism of ours against its alternative, interleaved in one run:
dropout's mask source, the attention strategies over packed rows, and unpadded against padded execution over
length distributions (with each batch's real-token FLOP floor).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from benchmarks import harness, workloads
from benchmarks.workloads import LENGTHS, Bench, build_trainee, compile_in_one_thread, forward, ours, train_step
from peftcore.models import attention, dropout
from peftcore.models.layers import SelfAttention


def length_batches(b: Bench, low: int, high: int, count: int, batch: int | None = None) -> list[dict]:
    """``count`` RoBERTa batches of ``batch`` rows (default: the shape's), lengths uniform in low..high, padded."""
    generator = torch.Generator().manual_seed(2)
    rows = batch or b.spec["batch"]
    old = b.spec["batch"]
    b.spec["batch"] = rows
    try:
        return [b.inputs("roberta", torch.randint(low, high + 1, (rows,), generator=generator).tolist(), seed=i)
                for i in range(count)]
    finally:
        b.spec["batch"] = old


def real_token_floor(b: Bench, batches: list[dict], passes: int) -> float:
    """Seconds the FLOPs of the real tokens take at the measured matmul rate: each row's forward at its own
    length, times ``passes`` (1 forward, 2 frozen-base step)."""
    layers = b.spec["layers"]
    flops = sum(harness.forward_flops(1, int(length), layers["hidden_size"], layers["intermediate_size"],
                                      layers["num_hidden_layers"])
                for batch in batches for length in batch["attention_mask"].sum(dim=1))
    return passes * flops / (b.floor["matmul_gflops"] * 1e9)


def floor_contender(b: Bench, seconds_at_floor: float) -> Callable[[], None]:
    """The matmuls of the floor's shape that make up ``seconds_at_floor`` at the measured rate: timed interleaved
    with a workload, so that the ratio to the floor sees the same machine load as the workload."""
    layers, tokens = b.spec["layers"], b.spec["batch"] * b.spec["length"]
    a = torch.randn(tokens, layers["hidden_size"], device=b.device, dtype=b.dtype)
    w = torch.randn(layers["hidden_size"], layers["intermediate_size"], device=b.device, dtype=b.dtype)
    count = max(1, round(seconds_at_floor * b.floor["matmul_gflops"] * 1e9 / (2 * a.shape[0] * a.shape[1]
                                                                               * w.shape[1])))

    def run() -> None:
        for _ in range(count):
            a @ w
    return run


def with_torch_dropout(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` as it ran before the bit-mask dropout: our models' dropout calling ``F.dropout`` (its CPU
    ``bernoulli_`` mask) and attention calling SDPA with dropout (its math path) instead of drawing bits."""
    def run() -> None:
        uses_bit_mask = dropout.uses_bit_mask
        dropout.uses_bit_mask = attention.uses_bit_mask = lambda x: False
        try:
            step()
        finally:
            dropout.uses_bit_mask = attention.uses_bit_mask = uses_bit_mask
    return run


def per_sequence_only(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` with unpadded attention always one SDPA call per row (what ran before the chooser)."""
    def run() -> None:
        choose = attention.choose
        attention.choose = lambda *args: "per_sequence"
        try:
            step()
        finally:
            attention.choose = choose
    return run


def dropout_step(b: Bench) -> None:
    """Our frozen-base train step with the bit-mask dropout against the same step with torch's dropout."""
    batch = [b.inputs("roberta")]
    step = train_step(b, build_trainee(b, "ours frozen", None), batch)
    contenders = {"bit mask": step, "torch bernoulli_": with_torch_dropout(step)}
    if b.floor:
        contenders["FLOP floor"] = floor_contender(b, b.floor["frozen_step_s"])
    b.add("frozen step, dropout mask", b.measure(contenders), "torch bernoulli_", "FLOP floor" if b.floor else None)


def linears_step(b: Bench, activation_and_norm: bool) -> Callable[[], None]:
    """Forward and activation gradients through each layer's six linears (q, k, v, attention output, FFN in and out,
    frozen, random weights of this shape) and its two residual adds, on a full-length batch's tokens: the matmuls the
    floor counts (but attention's 3%) and the adds; with ``activation_and_norm`` also GELU and the two LayerNorms."""
    layers, tokens = b.spec["layers"], b.spec["batch"] * b.spec["length"]
    width, inner = layers["hidden_size"], layers["intermediate_size"]
    shapes = [(width, width)] * 4 + [(width, inner), (inner, width)]
    blocks = [[nn.Linear(*shape).to(b.device, b.dtype).requires_grad_(False) for shape in shapes]
              for _ in range(layers["num_hidden_layers"])]
    x = torch.randn(tokens, width, device=b.device, dtype=b.dtype)
    gelu, norm = (nn.GELU(), nn.LayerNorm(width)) if activation_and_norm else (nn.Identity(), nn.Identity())
    norm = norm.to(b.device, b.dtype).requires_grad_(False)

    def step() -> None:
        h = x.clone().requires_grad_(True)
        for q, k, v, out, up, down in blocks:
            h = norm(out(q(h) + k(h) + v(h)) + h)
            h = norm(down(gelu(up(h))) + h)
        h.sum().backward()
    return step


def keep_dropout(model: nn.Module, hidden: bool, attention_too: bool) -> nn.Module:
    """``model`` with its hidden dropout (the ``nn.Dropout`` modules) and its attention dropout off where False."""
    for module in model.modules():
        if isinstance(module, nn.Dropout) and not hidden:
            module.p = 0.0
        if isinstance(module, SelfAttention) and not attention_too:
            module.dropout_p = 0.0
    return model


def breakdown(b: Bench, compiled: bool = False) -> None:
    """Where our frozen step's distance to the FLOP floor goes, on a full-length batch: the floor, the layers'
    linears and residual adds alone, with GELU and LayerNorm, our step without dropout, with hidden dropout only, and
    as it runs; interleaved, each a ratio to the floor. With ``compiled``, each of the last four also under
    torch.compile (compiled in the untimed warm-up round): how much of the distance fusing element-wise passes takes."""
    if not b.floor:
        workloads.floor(b)
    if compiled:
        compile_in_one_thread()
    batch = [b.inputs("roberta")]
    contenders = {"FLOP floor": floor_contender(b, b.floor["frozen_step_s"]),
                  "linears + residual adds": linears_step(b, False),
                  "+ GELU, LayerNorm": linears_step(b, True)}
    if compiled:
        contenders["+ GELU, LayerNorm, compiled"] = torch.compile(linears_step(b, True))
    for name, hidden, attention_too in (("ours frozen, no dropout", False, False),
                                        ("ours frozen, hidden dropout only", True, False), ("ours frozen", True, True)):
        for compile_model in (False, True) if compiled else (False,):
            model = keep_dropout(build_trainee(b, "ours frozen", None), hidden, attention_too)
            run = torch.compile(model) if compile_model else None
            contenders[f"{name}, compiled" if compile_model else name] = train_step(b, model, batch, run)
    b.add("frozen step breakdown", b.measure(contenders), "FLOP floor", "ours frozen")


def attention_strategies(b: Bench, batch_sizes: tuple[int, ...] = (8, 32)) -> None:
    """One attention call's forward and backward (dropout 0.1) over packed rows by each strategy, at this shape's
    heads, for each length distribution and batch size: the measurements ``attention.choose`` is fitted to."""
    layers = b.spec["layers"]
    width, heads = layers["hidden_size"], layers["num_attention_heads"]
    generator = torch.Generator().manual_seed(3)
    for name, (low, high) in LENGTHS.items():
        for rows in batch_sizes:
            lengths = tuple(torch.randint(low, high + 1, (rows,), generator=generator).tolist())
            q, k, v = (torch.randn(1, sum(lengths), width, device=b.device, dtype=b.dtype, requires_grad=True)
                       for _ in range(3))

            def run(strategy: str, lengths: tuple[int, ...] = lengths, q=q, k=k, v=v) -> Callable[[], None]:
                return lambda: attention.attend_unpadded(q, k, v, lengths, heads, 0.1, strategy=strategy).sum() \
                    .backward()

            times = b.measure({strategy: run(strategy) for strategy in attention.STRATEGIES})
            b.add(f"attention {name} x {rows}", times, "per_sequence", chosen=attention.choose(lengths, 0, width),
                  estimated={key: round(value) for key, value in attention.costs(lengths, 0, width).items()},
                  lengths=lengths)


def unpadded_against_padded(b: Bench, count: int) -> None:
    """Ours unpadded against ours padded (``unpad=False``) on batches of each length distribution: forward, and the
    LoRA train step; each row notes its real-token FLOP floor."""
    for name, (low, high) in LENGTHS.items():
        if name not in b.lengths:
            continue
        for rows in sorted({b.spec["batch"], 32}):
            batches = length_batches(b, low, high, count, rows)
            padded = ours(b).eval()
            padded.unpad = False
            notes = {"batches": count, "rows": rows,
                     "real_token_fraction": round(sum(int(x["attention_mask"].sum()) for x in batches)
                                                  / sum(x["attention_mask"].numel() for x in batches), 3)}
            if b.floor:
                notes["floor_forward_s"] = real_token_floor(b, batches, 1)
            unpadded = forward(ours(b).eval(), batches)
            times = b.measure({"unpadded": unpadded, "padded": forward(padded, batches),
                               "unpadded per-sequence": per_sequence_only(unpadded)})
            b.add(f"unpad forward {name} x {rows}", times, "padded", **notes)
            trainees = {"unpadded": build_trainee(b, "ours", "lora"), "padded": build_trainee(b, "ours", "lora")}
            trainees["padded"].unpad = False
            if b.floor:
                notes["floor_frozen_step_s"] = real_token_floor(b, batches, 2)
            steps = {contender: train_step(b, model, batches) for contender, model in trainees.items()}
            b.add(f"unpad train lora {name} x {rows}", b.measure(steps), "padded", **notes)


def frozen_step_lengths(b: Bench) -> tuple[int, int]:
    """The length range of the variable-length frozen steps: 16..128 at roberta-base, 8..64 at smaller shapes."""
    return LENGTHS["16..128" if b.shape == "base" else "8..64"]


def frozen_varlen(b: Bench, count: int) -> None:
    """Our frozen-base step on variable-length batches (unpadded) against transformers', with the real-token floor."""
    low, high = frozen_step_lengths(b)
    batches = length_batches(b, low, high, count)
    models: dict[str, nn.Module] = {name: build_trainee(b, name, None)
                                    for name in ("ours frozen", "transformers frozen")}
    contenders = {name: train_step(b, model, batches) for name, model in models.items()}
    if b.floor:
        contenders["real-token FLOP floor"] = floor_contender(b, real_token_floor(b, batches, 2))
    b.add("varlen frozen step", b.measure(contenders), "transformers frozen",
          "real-token FLOP floor" if b.floor else None, lengths=f"{low}..{high}")


def compiled_steps(b: Bench, count: int) -> None:
    """Our frozen-base and LoRA train steps eager against compiled, beside their FLOP floor: on a full-length batch
    ``torch.compile(model)``, on variable-length ones (the frozen_varlen lengths) ``model.compile_packed`` with
    the real-token floor. The compiles run in the untimed warm-up round."""
    compile_in_one_thread()
    low, high = frozen_step_lengths(b)
    varlen = length_batches(b, low, high, count)
    for label, batches, packed in (("full length", [b.inputs("roberta")], False),
                                   (f"lengths {low}..{high}", varlen, True)):
        contenders: dict[str, Callable[[], object]] = {}
        for name, method in (("frozen", None), ("LoRA", "lora")):
            for compiled in (False, True):
                torch.manual_seed(0)
                model = build_trainee(b, "ours frozen" if method is None else "ours", method)
                model.compile_packed = compiled and packed
                run = torch.compile(model) if compiled and not packed else model
                contenders[f"{name} {'compiled' if compiled else 'eager'}"] = train_step(b, model, batches, run)
        if b.floor:
            floor_s = real_token_floor(b, batches, 2) if packed else b.floor["frozen_step_s"]
            contenders["FLOP floor"] = floor_contender(b, floor_s)
        b.add(f"compiled steps, {label}", b.measure(contenders), "frozen eager", "FLOP floor" if b.floor else None)


def compiled_packed(b: Bench, count: int) -> None:
    """Eager packed (the default) against compiled packed (``model.compile_packed``) and compiled padded
    (``torch.compile(model)``) on lengths 8..64 at batch 32: a frozen forward and a LoRA train step. The compiles
    run in the untimed warm-up round; the first packed batch compiles once, for any N."""
    compile_in_one_thread()
    batches = length_batches(b, 8, 64, count, batch=32)
    for workload, method in (("forward", None), ("LoRA step", "lora")):
        contenders: dict[str, Callable[[], object]] = {}
        for name in ("eager packed", "compiled packed", "compiled padded"):
            torch.manual_seed(0)
            model = ours(b).eval() if method is None else build_trainee(b, "ours", method)
            model.compile_packed = name == "compiled packed"
            run = torch.compile(model) if name == "compiled padded" else model
            contenders[name] = forward(run, batches) if method is None else train_step(b, model, batches, run)
        b.add(f"compiled {workload}, lengths 8..64", b.measure(contenders), "eager packed", batch=32)
