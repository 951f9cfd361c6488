"""Prefix tuning (Li & Liang, 2021, https://arxiv.org/abs/2101.00190): learned key/value vectors prepended in every
attention layer, at the ``attn.prefix`` site.

Numerically equal to AdapterHub's ``adapters.methods.prefix_tuning`` (``PrefixTuning``, ``FlatPrefixTuning``,
``PrefixTuningLayer``). The reparameterising MLP is one module per adapter shared by all layers
(``model.shared_parameters[adapter]["prefix"]``), stored once — AdapterHub registers it in every layer and saves
N + 1 copies. The MLP runs once per forward, for every layer at once.

    E = wte(0..P-1)                                  (P, C)
    KV = W2 tanh(W1 E + b1) + b2                     (P, L·2·H·D), or a flat learned vector of that size
    layer i: K_i, V_i = KV[:, i]                     (H, P, D) each, prepended to the layer's keys and values
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.configs import (
    AdapterConfigBase,
    check_leave_out,
    check_probability,
    check_seed,
    check_type,
)
from peftcore.methods.activations import check_activation, non_linearity
from peftcore.methods.base import Method, ModelShape, PeftFile, init_generator, register_method, shared_state_key
from peftcore.methods.gating import Gate, check_gate_option, without_default_gate_option
from peftcore.sites import Site


@dataclass(frozen=True, kw_only=True)
class PrefixTuningConfig(AdapterConfigBase):
    """Prefix tuning (Li & Liang, 2021, https://arxiv.org/abs/2101.00190): AdapterHub's PrefixTuningConfig.

    ``prefix_length`` key/value vectors per layer, produced by an MLP over ``prefix_length`` learned embeddings
    (``bottleneck_size`` wide) shared by all layers, or stored directly when ``flat``. ``encoder_prefix`` and
    ``cross_prefix`` are AdapterHub's encoder-decoder switches; an encoder's self-attention ignores them.
    """

    architecture: ClassVar[str | None] = "prefix_tuning"
    encoder_prefix: bool = True
    cross_prefix: bool = True
    leave_out: tuple[int, ...] = ()
    flat: bool = False
    prefix_length: int = 30
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    use_gating: bool = False
    gate_over_real_tokens: bool = False  # average gates over real tokens only (gating.py); not AdapterHub's
    shared_gating: bool = True
    init_weights_seed: int | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        for flag in ("encoder_prefix", "cross_prefix", "flat", "use_gating", "shared_gating"):
            check_type(name, flag, getattr(self, flag), bool, "True or False")
        for size in ("prefix_length", "bottleneck_size"):
            check_type(name, size, getattr(self, size), int, "a positive int")
            if getattr(self, size) <= 0:
                raise ValueError(f"{name}.{size} must be a positive int, got {getattr(self, size)}.")
        check_activation(name, "non_linearity", self.non_linearity)
        check_probability(name, "dropout", self.dropout)
        object.__setattr__(self, "leave_out", check_leave_out(name, self.leave_out))
        check_seed(name, self.init_weights_seed)
        check_gate_option(name, self)

    def to_dict(self) -> dict[str, Any]:
        return without_default_gate_option(super().to_dict())

    def union_conflict(self, other: AdapterConfigBase) -> str | None:
        """A union refuses ``other`` when it is a prefix-tuning config too, whatever either's ``leave_out``: an adapter
        has one prefix pool for all its layers (AdapterHub refuses the pair when adding the adapter)."""
        if not isinstance(other, PrefixTuningConfig):
            return None
        return ("ConfigUnion holds two prefix_tuning configs, but an adapter has one prefix pool for all its layers; "
                "use one PrefixTuningConfig (leave_out picks its layers), or two adapters in a Stack.")


class PrefixPool(nn.Module):
    """Every layer's prefixes for one adapter: the reparameterising MLP, or (``flat``) the vector itself.

    Parameter names are AdapterHub's (``wte``, ``control_trans``), so its files map onto ours by path alone.
    """

    def __init__(self, config: PrefixTuningConfig, num_layers: int, num_heads: int, head_dim: int,
                 hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.shape = (config.prefix_length, num_layers, 2, num_heads, head_dim)  # P, L, (k, v), H, D
        width = num_layers * 2 * num_heads * head_dim
        with torch.random.fork_rng(enabled=config.init_weights_seed is not None):  # seed without leaking it
            if config.init_weights_seed is not None:
                torch.manual_seed(config.init_weights_seed)
            if config.flat:
                self.control_trans = nn.Parameter(torch.randn(config.prefix_length * width))
            else:
                self.wte = nn.Embedding(config.prefix_length, hidden_size)
                self.control_trans = nn.Sequential(nn.Linear(hidden_size, config.bottleneck_size),
                                                   non_linearity(config.non_linearity),
                                                   nn.Linear(config.bottleneck_size, width))
        self.dropout = nn.Dropout(config.dropout)
        self.prefixes: tuple[Tensor, ...] | None = None  # this forward's, between its first and last layer

    def layer_prefix(self, layer: int, cached: bool = True) -> Tensor:
        """Keys and values of one layer, (2, H, P, D).

        The first layer of a forward runs the MLP once for every layer and the others read their slice; the last
        drops the result, so no graph outlives the forward. Slicing the MLP's weight per layer instead would
        make backward zero-fill a gradient of the whole weight in every layer. Not ``cached`` (a layer recomputed
        alone under gradient checkpointing) the layer runs the MLP itself.
        """
        if not cached:
            return self.every_layer()[layer]
        prefixes = self.prefixes
        if layer == 0 or prefixes is None:
            prefixes = self.prefixes = self.every_layer()
        if layer == len(prefixes) - 1:
            self.prefixes = None
        return prefixes[layer]

    def every_layer(self) -> tuple[Tensor, ...]:
        """Every layer's keys and values, L × (2, H, P, D)."""
        P, L, _, H, D = self.shape
        kv = self.control_trans if self.config.flat else self.control_trans(self.wte.weight)  # (P, L·2·H·D)
        return kv.view(P, L, 2, H, D).permute(1, 2, 3, 0, 4).unbind(0)

    def flattened(self) -> Tensor:
        """The whole prefix as the flat vector ``flat=True`` stores: what ``eject`` keeps."""
        if self.config.flat:
            return self.control_trans.detach().clone()
        return self.control_trans(self.wte.weight).detach().reshape(-1)  # (P · L · 2 · H · D,)


class PrefixTuning(Method):
    """Prepends this layer's prefix keys and values, scaled by the UniPELT gate when ``use_gating``.

    The gate is mean_T(sigmoid(W_g x)) over the attention input x: one output scales keys and values
    (``shared_gating``), or two scale them separately.
    """

    config_class = PrefixTuningConfig
    shared_key = "prefix"
    adapterhub_container = "prefix_gates"
    adapterhub_shared_path = "prefix_tuning.prefix_tunings.{name}.self_prefix"
    peft_type = "PREFIX_TUNING"

    @classmethod
    def sites(cls, config: PrefixTuningConfig, layer: int | None) -> tuple[str, ...]:
        return () if layer is None or layer in config.leave_out else ("attn.prefix",)

    @classmethod
    def build_shared(cls, config: PrefixTuningConfig, shape: ModelShape) -> PrefixPool:
        if shape.num_heads is None:
            raise ValueError("prefix tuning splits its prefixes into attention heads; give the model's config a "
                             "num_attention_heads.")
        kept = shape.num_layers - len({i for i in config.leave_out if i < shape.num_layers})
        return PrefixPool(config, kept, shape.num_heads, shape.hidden_size // shape.num_heads, shape.hidden_size)

    @classmethod
    def build(cls, config: PrefixTuningConfig, site: Site, shape: ModelShape, shared: PrefixPool) -> PrefixTuning:
        index = site.layer - sum(1 for i in config.leave_out if i < site.layer)  # AdapterHub counts kept layers
        return cls(config, shape.hidden_size, index, shared)

    def __init__(self, config: PrefixTuningConfig, hidden_size: int, index: int, pool: PrefixPool) -> None:
        super().__init__()
        self.index = index
        self.checkpointing = False  # while the layer runs under gradient checkpointing (``checkpointed``)
        self.share(pool)
        self.gate = (Gate(hidden_size, 1 if config.shared_gating else 2, config.gate_over_real_tokens)
                     if config.use_gating else None)
        if self.gate is not None:  # AdapterHub: N(0, 0.02) weight, PyTorch's default bias
            self.gate.reset_parameters_from(init_generator(config.init_weights_seed), zero_bias=False)

    @contextmanager
    def checkpointed(self) -> Iterator[None]:
        """Layer by layer, the pool's MLP runs in each layer: a layer recomputed alone finds no other's result."""
        self.checkpointing = True
        try:
            yield
        finally:
            self.checkpointing = False

    def forward(self, k: Tensor, v: Tensor, mask: Tensor | None, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        B = k.shape[0]
        prefix = self.shared.layer_prefix(self.index, cached=not self.checkpointing)
        prefix = self.shared.dropout(prefix.unsqueeze(1).expand(-1, B, -1, -1, -1))
        pk, pv = prefix.to(k.dtype)  # (B, H, P, D) each
        if self.gate is not None:
            gate = self.gate(x, per_row=True)[:, 0]  # (B, 1|2)
            pk, pv = pk * gate[:, 0, None, None, None], pv * gate[:, -1, None, None, None]
        if mask is not None:
            mask = F.pad(mask, (pk.shape[2], 0))  # prefix columns are always attended: additive 0
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), mask  # (B, H, P+T, D)

    @classmethod
    def ejected(cls, config: PrefixTuningConfig, shared: PrefixPool | None) -> tuple[PrefixTuningConfig, PrefixPool]:
        """The flat prefix the MLP computes: the same outputs, smaller, no longer trained through the MLP."""
        if config.flat:
            raise ValueError("this prefix-tuning adapter is flat already; there is no MLP to eject.")
        flat = PrefixPool(config.replace(flat=True), *shared.shape[1:2], *shared.shape[3:], shared.wte.embedding_dim)
        with torch.no_grad():
            flat.control_trans.copy_(shared.flattened())
        reference = shared.control_trans[0].weight
        return config.replace(flat=True), flat.to(device=reference.device, dtype=reference.dtype).train(shared.training)

    @classmethod
    def adapterhub_names(cls, config: PrefixTuningConfig, key: str) -> tuple[str, ...]:
        return (key.removeprefix("gate."),)  # the gate is the whole module in AdapterHub's prefix_gates

    @classmethod
    def is_adapterhub_copy(cls, key: str) -> bool:
        """AdapterHub saves the prefix pool once more in every layer; its base-model copy is the one read."""
        return ".prefix_tuning.pool." in key

    @classmethod
    def from_peft(cls, file: PeftFile) -> tuple[PrefixTuningConfig, dict[str, Tensor]]:
        """PEFT's ``prompt_embeddings`` (P, L·2·H·D) — the projected output when ``prefix_projection`` — viewed as
        (P, L, 2, H, D), exactly our flat pool's layout."""
        raw, shape = file.raw, (file.shape.num_layers, file.shape.num_heads, file.shape.hidden_size)
        theirs = (raw.get("num_layers"), raw.get("num_attention_heads"), raw.get("token_dim"))
        if theirs != shape or raw.get("num_transformer_submodules", 1) != 1:
            raise ValueError(f"{file.where}: prefix for (layers, heads, hidden) = {theirs} with "
                             f"{raw.get('num_transformer_submodules')} submodule(s); this model is {shape}.")
        embeddings = file.tensors.get("prompt_embeddings")
        length = raw.get("num_virtual_tokens")
        if embeddings is None or tuple(embeddings.shape) != (length, shape[0] * 2 * shape[2]):
            raise ValueError(f"{file.where}: expected prompt_embeddings of shape ({length}, "
                             f"{shape[0] * 2 * shape[2]}), got "
                             f"{None if embeddings is None else tuple(embeddings.shape)}.")
        warnings.warn(f"{file.where}: transformers shifts position ids by the prefix length under PEFT's prefix "
                      f"tuning; peftcore does not. Pass position_ids = {length} + arange(T) to reproduce PEFT's "
                      "outputs.", stacklevel=5)
        config = PrefixTuningConfig(flat=True, prefix_length=length)
        return config, {shared_state_key(cls.shared_key, "control_trans"): embeddings.reshape(-1)}


register_method(PrefixTuning, {"prefix_tuning": PrefixTuningConfig(),
                               "prefix_tuning_flat": PrefixTuningConfig(flat=True)})
