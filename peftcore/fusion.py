"""AdapterFusion (Pfeiffer et al., 2021, https://arxiv.org/abs/2005.00247): attention over the outputs of several
bottleneck adapters at a residual site, learning how much of each task adapter a new task uses.

Numerically equal to AdapterHub's ``BertFusion`` with its ``AdapterFusionConfig`` fields and presets. Per token:

    Q = W_q query + b_q                      query: the last adapter's pre-processed input
    K_i = W_k V_i + b_k                      V_i: adapter i's scaled up-projection (B, T, N, C)
    p = softmax(<Q, K_i> / T)                dropout on the scores; T anneals from 50 to 1 when ``temperature``
    out = sum_i p_i W_v V_i + residual       W_v has no bias and starts at the identity when ``value_initialized``
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from peftcore import placement
from peftcore.composition import Block, Fuse, fusion_names
from peftcore.host import AdapterHost
from peftcore.sites import ResidualSite, Site


@dataclass(frozen=True)
class AdapterFusionConfig:
    """AdapterHub's fusion fields; ``"dynamic"`` (the default) and ``"static"`` are its presets."""

    key: bool = True
    query: bool = True
    value: bool = True
    query_before_ln: bool = False
    regularization: bool = True
    residual_before: bool = False
    temperature: bool = False
    value_before_softmax: bool = True
    value_initialized: bool = True
    dropout_prob: float | None = None

    @classmethod
    def load(cls, config: str | dict[str, Any] | AdapterFusionConfig | None, **overrides: Any) -> AdapterFusionConfig:
        """A preset name, a dict of fields (unknown fields are an error) or a config, with the fields ``overrides``
        on top (AdapterHub's ``AdapterFusionConfig.load("dynamic", temperature=True)``)."""
        if overrides:
            return cls.load({**cls.load(config).to_dict(), **overrides})
        if config is None:
            return FUSION_CONFIG_MAP["dynamic"]
        if isinstance(config, AdapterFusionConfig):
            return config
        if isinstance(config, str):
            if config not in FUSION_CONFIG_MAP:
                raise ValueError(f"fusion config {config!r} is not known; use one of {sorted(FUSION_CONFIG_MAP)} or "
                                 "a dict of AdapterFusionConfig fields.")
            return FUSION_CONFIG_MAP[config]
        if not isinstance(config, dict):
            raise TypeError(f"a fusion config is a name, a dict or an AdapterFusionConfig, got {config!r}.")
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"fusion config fields {unknown} are not known; AdapterFusionConfig has {sorted(fields)}.")
        loaded = cls(**config)
        for field in sorted(fields - {"dropout_prob"}):
            if not isinstance(getattr(loaded, field), bool):
                raise ValueError(f"fusion config field {field} must be true or false, got {getattr(loaded, field)!r}.")
        if loaded.dropout_prob is not None and not 0 <= loaded.dropout_prob < 1:
            raise ValueError(f"fusion config field dropout_prob must be in [0, 1), got {loaded.dropout_prob!r}.")
        return loaded

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FUSION_CONFIG_MAP = {
    "dynamic": AdapterFusionConfig(),
    "static": AdapterFusionConfig(value=False, regularization=False, value_initialized=False),
}


class AdapterFusion(nn.Module):
    """One fusion layer at one residual site; parameter names are AdapterHub's (``query``, ``key``, ``value``)."""

    record: Callable[[Tensor], None] | None = None  # set when attached: keeps attentions while the model records

    def __init__(self, config: AdapterFusionConfig, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.config = config
        self.query = nn.Linear(hidden_size, hidden_size) if config.query else None
        self.key = nn.Linear(hidden_size, hidden_size) if config.key else None
        self.value = nn.Linear(hidden_size, hidden_size, bias=False) if config.value else None
        self.dropout = nn.Dropout(config.dropout_prob if config.dropout_prob is not None else dropout)
        self.temperature = 50.0 if config.temperature else 1.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) weights and zero biases; the value projection starts at I (+1e-6 off the diagonal)."""
        with torch.no_grad():
            for linear in (self.query, self.key, self.value):
                if linear is not None:
                    nn.init.normal_(linear.weight, std=0.02)
                    if linear.bias is not None:
                        nn.init.zeros_(linear.bias)
            if self.value is not None and self.config.value_initialized:
                self.value.weight.fill_(1e-6).fill_diagonal_(1.0)

    def forward(self, query: Tensor, values: Tensor, residual: Tensor) -> Tensor:
        """query (B, T, C), values (B, T, N, C) (the N adapters' up-projections), residual (B, T, C) -> (B, T, C)."""
        config = self.config
        if config.residual_before:
            values = values + residual.unsqueeze(2)
        q = self.query(query) if self.query is not None else query
        k = self.key(values) if self.key is not None else values
        v = self.value(values) if self.value is not None and config.value_before_softmax else values
        scores = self.dropout(torch.einsum("btc,btnc->btn", q, k))
        probs = torch.softmax(scores / self.temperature, dim=-1)  # (B, T, N)
        if self.training and config.temperature:
            self.temperature = max(self.temperature - 50.0 / 1000, 1.0)
        if self.record is not None:
            self.record(probs)
        out = torch.einsum("btn,btnc->btc", probs, v)
        if self.value is not None and not config.value_before_softmax:
            out = self.value(out)
        return out if config.residual_before else out + residual

    def regularization_loss(self) -> Tensor | None:
        """0.01 · ||I - W_v||²: keeps the value projection near the identity (AdapterHub's fusion regulariser)."""
        if self.value is None or not self.config.regularization:
            return None
        weight = self.value.weight
        return 0.01 * (torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device) - weight).pow(2).sum()


# ---- the calls on a model -----------------------------------------------------------------------------------------


def check(host: AdapterHost, name: str) -> None:
    if name not in host.fusion_configs:
        raise KeyError(f"no fusion named {name!r}; this model has {sorted(host.fusion_configs) or 'none'}.")


def children_names(fuse: Fuse) -> list[tuple[str, ...]]:
    return [(child,) if isinstance(child, str) else child.flatten() for child in fuse]


def sites(host: AdapterHost, fuse: Fuse) -> list[Site]:
    """Residual sites where every child of the Fuse has a module."""
    return [site for site in host.sites_found if isinstance(site.module, ResidualSite)
            and all(any(name in site.module.adapters for name in names) for names in children_names(fuse))]


def check_placed_alike(host: AdapterHost, fuse: Fuse) -> None:
    """The children of a Fuse must sit at the same kinds of residual site (AdapterHub refuses a fusion of adapters
    whose ``mh_adapter`` or ``output_adapter`` differ); their sizes, layers and other options may differ."""
    placed = {child: sorted({site.name for site in host.sites_found if isinstance(site.module, ResidualSite)
                             and any(name in site.module.adapters for name in names)})
              for child, names in zip(fuse, children_names(fuse), strict=True)}
    if len({tuple(kinds) for kinds in placed.values()}) > 1:
        where = "; ".join(f"{child}: {', '.join(kinds) or 'no residual site'}" for child, kinds in placed.items())
        raise ValueError(f"{fuse!r} fuses adapters placed at different sub-layers ({where}); AdapterFusion fuses "
                         "bottleneck adapters of one placement (their sizes may differ): add adapters with the same "
                         "mh_adapter and output_adapter.")


def build(host: AdapterHost, fuse: Fuse, config: AdapterFusionConfig,
          meta: bool = False) -> list[tuple[Site, AdapterFusion]]:
    """One fusion layer per residual site where the Fuse's children all sit; attaches nothing. ``meta`` builds them
    on the meta device, to learn their shapes without allocating."""
    if fuse.custom_name is not None:
        placement.check_name(fuse.custom_name, "fusion names")
    for adapter in fuse.flatten():
        placement.check_known(host, adapter)
    check_placed_alike(host, fuse)
    dropout = getattr(host.config, "attention_probs_dropout_prob", 0.0)
    with torch.device("meta") if meta else nullcontext():
        placed = [(site, placement.like_model(host, AdapterFusion(config, host.config.hidden_size, dropout), meta))
                  for site in sites(host, fuse)]
    if not placed:
        raise ValueError(f"the adapters of {fuse!r} share no residual site (fusion fuses bottleneck adapters "
                         "placed at the same sub-layers).")
    return placed


def check_replacement(host: AdapterHost, name: str, placed: list[tuple[Site, nn.Module]]) -> None:
    """An adapter that fusions fuse may be replaced only by one with a module at every site where they have layers:
    else the fusions could no longer run."""
    sites = {site.path for site, _ in placed}
    for fusion_name, fused in host.fused_adapters.items():
        lacking = [site.path for site, _ in layers(host, fusion_name) if name in fused and site.path not in sites]
        if lacking:
            raise ValueError(f"adapter {name!r} is fused in {fusion_name!r}, whose layers sit at {lacking}, where the "
                             "replacement has no module; replace it with an adapter at the same sites, or "
                             f"delete_adapter_fusion({fusion_name!r}) first.")


def attach(host: AdapterHost, fuse: Fuse, config: AdapterFusionConfig,
           placed: list[tuple[Site, AdapterFusion]]) -> None:
    """Put built fusion layers into their sites (replacing a fusion of that name), their attentions' sinks into
    the recorder."""
    remove(host, fuse.name)
    for site, fusion in placed:
        site.module.fusions[fuse.name] = fusion.train(host.training)
        fusion.record = host.recorder.fusion_sink(fuse.name, site.layer, site.name)
    host.fusion_configs[fuse.name] = config
    host.fused_adapters[fuse.name] = fuse.flatten()


def remove(host: AdapterHost, name: str) -> None:
    for site in host.sites_found:
        if isinstance(site.module, ResidualSite) and name in site.module.fusions:
            del site.module.fusions[name]
    host.fusion_configs.pop(name, None)
    host.fused_adapters.pop(name, None)


def layers(host: AdapterHost, name: str) -> Iterator[tuple[Site, AdapterFusion]]:
    for site in host.sites_found:
        if isinstance(site.module, ResidualSite) and name in site.module.fusions:
            yield site, site.module.fusions[name]


def train(host: AdapterHost, block: Block, unfreeze_adapters: bool) -> None:
    """Everything frozen but the setup's fusion layers (and its adapters with ``unfreeze_adapters``)."""
    for name in fusion_names(block):
        for _, fusion in layers(host, name):
            fusion.requires_grad_(True)
    if unfreeze_adapters:
        for name in block.flatten():
            for parameter in placement.trainable(host, name):
                parameter.requires_grad_(True)


def regularization_loss(host: AdapterHost) -> Tensor | None:
    """AdapterHub's fusion regulariser summed over every trainable fusion layer that asks for it, or None."""
    losses = [fusion.regularization_loss() for site in host.sites_found if isinstance(site.module, ResidualSite)
              for fusion in site.module.fusions.values() if fusion.value is not None
              and fusion.value.weight.requires_grad]
    losses = [loss for loss in losses if loss is not None]
    return sum(losses) if losses else None


def state(host: AdapterHost, name: str) -> dict[str, Tensor]:
    """A fusion's tensors keyed by path in the model with the fusion name left out."""
    check(host, name)
    return {f"{site.path}.fusions.{key}": tensor for site, fusion in layers(host, name)
            for key, tensor in fusion.state_dict().items()}


def slots(placed: list[tuple[Site, AdapterFusion]]) -> dict[str, tuple[nn.Module, str]]:
    """Our file key (fusion name left out) -> (module, key inside it), for every tensor of a fusion's layers."""
    return {f"{site.path}.fusions.{key}": (fusion, key) for site, fusion in placed for key in fusion.state_dict()}
