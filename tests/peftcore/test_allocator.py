"""peftcore/allocator.py: ``retain_freed_memory`` sets glibc's mmap threshold to its maximum and stops heap
trimming, so that train steps reuse the pages of the previous step's activations instead of faulting them in.

Its effect on page faults and step times is measured, not asserted (docs/performance.md): how many pages a process
faults in depends on its allocation history and, on this VM, on the kernel reclaiming idle pages."""

from __future__ import annotations

from peftcore import allocator


def test_it_raises_the_mmap_threshold_to_glibcs_maximum_and_stops_trimming(monkeypatch):
    calls = []

    class Libc:
        def mallopt(self, parameter: int, value: int) -> int:
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: Libc())
    allocator.retain_freed_memory.cache_clear()
    try:
        assert allocator.retain_freed_memory() is True
    finally:
        allocator.retain_freed_memory.cache_clear()
    assert calls == [(-3, 32 * 2**20), (-1, 2**31 - 1)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def test_without_glibc_nothing_changes(monkeypatch):
    def no_glibc(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(allocator.ctypes, "CDLL", no_glibc)
    allocator.retain_freed_memory.cache_clear()
    try:
        assert allocator.retain_freed_memory() is False
    finally:
        allocator.retain_freed_memory.cache_clear()
