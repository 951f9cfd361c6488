"""Timing, statistics, tables and measurements shared by every workload of ``bench.py``.

A contender is a callable that runs one repetition of a workload. ``interleave`` runs every contender once per
round, rotating which goes first, so that machine noise (other processes, thermal drift) hits all of them alike;
a row reports each contender's median, inter-quartile range and ratio to a reference contender.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

import torch

NOISY = 0.10  # an IQR above this fraction of the median marks a row as noisy ("!"): re-run it


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``step`` takes; a step that returns a float has timed itself (it excludes set-up or
    clean-up that must not be counted)."""
    synchronize(device)
    start = time.perf_counter()
    result = step()
    synchronize(device)
    return result if isinstance(result, float) else time.perf_counter() - start


class ForeignLoad:
    """CPU time used by other processes, in cores, from /proc/stat minus this process's own CPU time (Linux)."""

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/stat")
        self.hz = os.sysconf("SC_CLK_TCK") if self.available else 100

    def sample(self) -> tuple[float, float, float]:
        if not self.available:
            return 0.0, 0.0, time.perf_counter()
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / self.hz  # all but idle and iowait
        return busy, time.process_time(), time.perf_counter()

    @staticmethod
    def cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
        wall = after[2] - before[2]
        return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall if wall > 0 else 0.0

    def wait_until_quiet(self, max_wait: float, threshold: float = 0.3) -> float:
        """Sleep while other processes use more than ``threshold`` cores, at most ``max_wait`` s; the last load."""
        deadline = time.perf_counter() + max_wait
        while True:
            before = self.sample()
            time.sleep(0.25)
            load = self.cores(before, self.sample())
            if load < threshold or time.perf_counter() >= deadline or not self.available:
                return load


FOREIGN = ForeignLoad()
SETTINGS = {"quiet_wait": 0.0, "busy": 0.25}  # set by bench.py: --quiet-wait, --busy


def interleave(contenders: Mapping[str, Callable[[], object]], repeats: int, device: torch.device,
               warmup: int = 1) -> tuple[dict[str, list[float]], dict]:
    """``warmup`` untimed rounds, then rounds running every contender once, the first one rotating, until every
    contender has ``repeats`` clean samples (at most ``2 * repeats`` rounds).

    A sample is clean when other processes used less than --busy cores while it ran; before each round we wait (up
    to --quiet-wait s) for them to leave the CPU. Only clean samples count when every contender has 3 or more;
    otherwise all do. Returns the samples and how clean they were.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    clean: dict[str, list[float]] = {name: [] for name in names}
    every: dict[str, list[float]] = {name: [] for name in names}
    foreign: list[float] = []
    rounds = 0
    while rounds < 2 * repeats and min(map(len, clean.values())) < repeats:
        if SETTINGS["quiet_wait"] > 0:
            FOREIGN.wait_until_quiet(SETTINGS["quiet_wait"], SETTINGS["busy"])
        for name in names[rounds % len(names):] + names[:rounds % len(names)]:
            before = FOREIGN.sample()
            elapsed = timed(contenders[name], device)
            load = FOREIGN.cores(before, FOREIGN.sample())
            foreign.append(load)
            every[name].append(elapsed)
            if load < SETTINGS["busy"] and len(clean[name]) < repeats:
                clean[name].append(elapsed)
        rounds += 1
    use_clean = min(map(len, clean.values())) >= min(3, repeats)
    info = {"rounds": rounds, "clean_samples": min(map(len, clean.values())), "used": "clean" if use_clean else "all",
            "foreign_cores_median": round(statistics.median(foreign), 2), "foreign_cores_max": round(max(foreign), 2)}
    return (clean if use_clean else every), info


def summary(samples: list[float]) -> dict[str, float | list[float]]:
    quartiles = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else [samples[0]] * 3
    return {"median": statistics.median(samples), "iqr": quartiles[2] - quartiles[0], "min": min(samples),
            "samples": samples}


def make_row(workload: str, times: Mapping[str, list[float]], reference: str, second: str | None = None,
             unit: str = "s", **notes: object) -> dict:
    """One table row per contender: median, IQR, ratio to ``reference`` and, when given, to ``second``."""
    stats = {name: summary(samples) for name, samples in times.items()}
    row = {"workload": workload, "unit": unit, "reference": reference, "second": second, "stats": stats,
           "ratios": {name: stat["median"] / stats[reference]["median"] for name, stat in stats.items()},
           "ratios_of_min": {name: stat["min"] / stats[reference]["min"] for name, stat in stats.items()},
           "loadavg_1min": round(os.getloadavg()[0], 2), **notes}
    if second is not None:
        row["ratios_second"] = {name: stat["median"] / stats[second]["median"] for name, stat in stats.items()}
    return row


def print_row(row: dict) -> None:
    """Print a row as soon as it is measured (a long run shows progress, and a killed run keeps its figures)."""
    second = row.get("second")
    for name, stat in row["stats"].items():
        mark = " (ref)" if name == row["reference"] else " (ref 2)" if name == second else ""
        noisy = "!" if stat["iqr"] > NOISY * stat["median"] else " "
        vs_second = f"{row['ratios_second'][name]:>8.3f}" if second else " " * 8
        print(f"{row['workload']:<34}{name + mark:<30}{stat['median']:>10.4f}{row['unit']:<3}{stat['iqr']:>9.4f}"
              f"{noisy}{stat['min']:>9.4f}{row['ratios'][name]:>7.3f}{row['ratios_of_min'][name]:>7.3f}{vs_second}",
              flush=True)
    extra = {key: value for key, value in row.items()
             if key not in ("workload", "unit", "reference", "second", "stats", "ratios", "ratios_of_min",
                            "ratios_second")}
    print(f"{'':<34}{json.dumps(extra, default=str)}", flush=True)


def print_header() -> None:
    print(f"{'workload':<34}{'contender':<30}{'median':>10}{'':<3}{'IQR':>9} {'min':>9}{'ratio':>7}{'r(min)':>7}"
          f"{'vs ref2':>8}", flush=True)


def matmul_rate(device: torch.device, dtype: torch.dtype, m: int, k: int, n: int, repeats: int = 10) -> float:
    """Measured GFLOP/s of an (m, k) @ (k, n) product: the rate the model's biggest linears can run at."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    count = 1  # products per timed call: enough for 20 ms, so that a GPU's launch latency does not count

    def products() -> None:
        for _ in range(count):
            a @ b

    while timed(products, device) < 0.02 and count < 2 ** 16:
        count *= 2
    seconds = statistics.median(timed(products, device) for _ in range(repeats)) / count
    return 2 * m * k * n / seconds / 1e9


def forward_flops(batch: int, tokens: int, hidden: int, ffn: int, layers: int) -> float:
    """Multiply-add FLOPs (x2) of one encoder forward: per layer q/k/v/out 8·B·T·C², FFN 4·B·T·C·F,
    attention scores and mixing 4·B·T²·C. Embeddings, heads and DeBERTa's relative terms are left out."""
    per_layer = 8 * batch * tokens * hidden ** 2 + 4 * batch * tokens * hidden * ffn + 4 * batch * tokens ** 2 * hidden
    return layers * per_layer


# ---- peak memory, one fresh process per contender -------------------------------------------------------------

def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+)", status.read(), re.MULTILINE).group(1))


def release_freed_memory() -> None:
    """Give freed heap pages back to the OS so that the RSS after building counts only what is held."""
    import gc

    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    """Set VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def measure_peak(run: Callable[[], None], device: torch.device) -> dict:
    """Peak memory of ``run`` above what the process holds before it: peak RSS on CPU, the allocator's peak on CUDA.

    Call this in a process that has built only the one model being measured.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return {"peak_mb": (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20,
                "before_mb": before / 2 ** 20, "method": "torch.cuda.max_memory_allocated"}
    release_freed_memory()
    before = proc_status_kib("VmRSS")
    exact = reset_peak_rss()
    run()
    peak = proc_status_kib("VmHWM")
    return {"peak_mb": (peak - before) / 1024, "before_mb": before / 1024,
            "method": "VmHWM after clear_refs" if exact else "VmHWM since start (clear_refs refused: an upper bound)"}


def run_child(arguments: list[str]) -> dict:
    """Run ``bench.py`` with ``arguments`` in a fresh interpreter; return the JSON object on its last stdout line."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py")
    done = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {arguments} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
