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
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from peftcore import io
from peftcore.composition import Fuse
from peftcore.sites import Site

if TYPE_CHECKING:
    from peftcore.model import AdapterModelMixin


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
    def load(cls, config: str | dict[str, Any] | AdapterFusionConfig | None) -> AdapterFusionConfig:
        """A preset name, a dict of fields (unknown fields are an error) or a config."""
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

    record: Callable[[Tensor], None] | None = None  # set while a forward records the fusion attentions

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


# ---- files ---------------------------------------------------------------------------------------------------------

FUSION_CONFIG_FILE, FUSION_WEIGHTS_FILE = "fusion_config.json", "fusion_model.safetensors"
FUSION_FORMAT, FUSION_FORMAT_VERSION = "peftcore-fusion", 1


def fusion_slots(model: AdapterModelMixin, placed: list[tuple[Site, nn.Module]]) -> dict[str, tuple[nn.Module, str]]:
    """Our key (fusion name left out) -> (module, key inside it), for every tensor of a fusion's layers."""
    return {f"{site.path}.fusions.{key}": (fusion, key) for site, fusion in placed for key in fusion.state_dict()}


def save_fusion(model: AdapterModelMixin, directory: str | os.PathLike, name: str) -> None:
    """``fusion_config.json`` + ``fusion_model.safetensors``, written atomically."""
    with io.atomic_directory_write(directory) as scratch:
        io.write_json(scratch / FUSION_CONFIG_FILE, {
            "format": FUSION_FORMAT, "format_version": FUSION_FORMAT_VERSION, "name": name,
            "adapters": list(model.fused_adapters[name]),
            "config": model.fusion_configs[name].to_dict(), "model_type": model.config.model_type,
            "hidden_size": model.config.hidden_size, "library": io.LIBRARY_VERSION})
        io.write_safetensors(scratch / FUSION_WEIGHTS_FILE, model.fusion_state(name))


def load_fusion(model: AdapterModelMixin, directory: str | os.PathLike, load_as: str | None) -> Fuse:
    """Read a fusion directory (ours or AdapterHub's), check it against the model off the model, then attach it."""
    from peftcore.interop import adapterhub

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"fusion directory {str(directory)!r} does not exist.")
    if (directory / FUSION_CONFIG_FILE).is_file():
        raw = io.read_json(directory / FUSION_CONFIG_FILE)
        if raw.get("format") != FUSION_FORMAT or raw.get("format_version") != FUSION_FORMAT_VERSION:
            raise ValueError(f"{directory / FUSION_CONFIG_FILE} is not a peftcore fusion of format version "
                             f"{FUSION_FORMAT_VERSION}.")
        name, config, adapters = raw.get("name"), raw.get("config"), raw.get("adapters")
        state = io.read_safetensors(io.require(directory / FUSION_WEIGHTS_FILE))
        model_type, hidden_size = raw.get("model_type"), raw.get("hidden_size")
    else:
        name, config, state, model_type, hidden_size = adapterhub.read_fusion(model, directory)
        adapters = None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{directory} names no fusion (its config has no 'name').")
    if model_type is not None and model_type != model.config.model_type:
        raise ValueError(f"{directory} holds a fusion for a {model_type!r} model; this model is "
                         f"{model.config.model_type!r}.")
    if hidden_size is not None and hidden_size != model.config.hidden_size:
        raise ValueError(f"{directory} holds a fusion for hidden size {hidden_size}; this model's is "
                         f"{model.config.hidden_size}.")
    config = AdapterFusionConfig.load(config)
    adapters = adapters if isinstance(adapters, list) and adapters else name.split(",")
    custom = load_as or (name if name != ",".join(adapters) else None)
    fuse = Fuse(*adapters, name=custom)
    for adapter in fuse.flatten():
        if adapter not in model.adapter_configs:
            raise ValueError(f"{directory} fuses adapters {list(fuse.flatten())}; load adapter {adapter!r} first.")
    if fuse.name in model.fusion_configs:
        raise ValueError(f"the model already has a fusion {fuse.name!r}; delete it first or pass load_as.")
    placed = model.build_fusion(fuse, config)
    io.fill(fusion_slots(model, placed), state, f"{directory}: fusion {name!r}")
    model.attach_fusion(fuse, config, placed)
    return fuse
