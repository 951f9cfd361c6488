"""AdapterHub's ``adapter_summary()`` table: every adapter and fusion with its method, parameter count, share of
the base model, whether it is active and whether it trains."""

from __future__ import annotations

from typing import Any

from peftcore import fusion, placement
from peftcore.composition import Stack, fusion_names
from peftcore.host import AdapterHost

SUMMARY_HEADER = ("name", "architecture", "#param", "%param", "active", "train")


def base_parameter_count(host: AdapterHost) -> int:
    """Parameters of the encoder alone: no adapters, no heads (AdapterHub's base_model count)."""
    excluded = {id(p) for name in host.adapter_configs for p in placement.parameters(host, name)}
    excluded |= {id(p) for p in host.heads.parameters()}
    excluded |= {id(p) for name in host.fusion_configs for _, layer in fusion.layers(host, name)
                 for p in layer.parameters()}
    if host.head is not None:
        excluded |= {id(p) for p in host.head.parameters()} - {id(p) for p in host.get_input_embeddings().parameters()}
    return sum(p.numel() for p in host.parameters() if id(p) not in excluded)


def rows(host: AdapterHost) -> list[dict[str, Any]]:
    """One row per adapter and fusion, then the full model's."""
    base = base_parameter_count(host)
    setup = host.active_adapters
    active = setup.flatten() if setup is not None else ()
    table: list[dict[str, Any]] = []
    for name, config in host.adapter_configs.items():
        parameters = list(placement.parameters(host, name))
        count = sum(p.numel() for p in parameters)
        table.append({"name": name, "architecture": config.architecture or "bottleneck", "#param": count,
                      "%param": count / base * 100, "active": name in active,
                      "train": all(p.requires_grad for p in parameters)})
    active_fusions = fusion_names(setup)
    for name in host.fusion_configs:
        parameters = [p for _, layer in fusion.layers(host, name) for p in layer.parameters()]
        count = sum(p.numel() for p in parameters)
        table.append({"name": f"Fuse[{name}]", "architecture": "fusion", "#param": count,
                      "%param": count / base * 100, "active": name in active_fusions,
                      "train": all(p.requires_grad for p in parameters)})
    table.append({"name": "Full model", "#param": base, "%param": 100.0,
                  "train": not getattr(host, "model_frozen", False)})
    return table


def table(host: AdapterHost) -> str:
    """The rows as AdapterHub prints them, and the active setup when it is more than one adapter."""
    header, line = "{:<25}{:<15}{:>12}{:>12}{:>8}{:>8}", "{:<25}{:<15}{:>12,}{:>12.3f}{:>8}{:>8}"
    lines = ["=" * 80, header.format(*(h.title() for h in SUMMARY_HEADER)), "-" * 80]
    lines += [line.format(*(row.get(h, "") for h in SUMMARY_HEADER)) for row in rows(host)]
    lines.insert(len(lines) - 1, "-" * 80)
    setup = host.active_adapters
    if setup is not None and not (isinstance(setup, Stack) and len(setup) == 1 and isinstance(setup[0], str)):
        lines += ["-" * 80, f"Active setup: {setup!r}"]
    return "\n".join([*lines, "=" * 80])
