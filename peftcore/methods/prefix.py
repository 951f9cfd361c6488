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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.configs import PrefixTuningConfig
from peftcore.sites import Activation, Method, ModelShape, Site, init_generator


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
                                                   Activation(config.non_linearity),
                                                   nn.Linear(config.bottleneck_size, width))
        self.dropout = nn.Dropout(config.dropout)
        self.prefixes: tuple[Tensor, ...] | None = None  # this forward's, between its first and last layer

    def layer_prefix(self, layer: int) -> Tensor:
        """Keys and values of one layer, (2, H, P, D).

        The first layer of a forward runs the MLP once for every layer and the others read their slice; the last
        drops the result, so no graph outlives the forward. Slicing the MLP's weight per layer instead would
        make backward zero-fill a gradient of the whole weight in every layer.
        """
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
        self.share(pool)
        self.gate = nn.Linear(hidden_size, 1 if config.shared_gating else 2) if config.use_gating else None
        if self.gate is not None:  # AdapterHub: N(0, 0.02) weight, PyTorch's default bias
            nn.init.normal_(self.gate.weight, std=0.02, generator=init_generator(config.init_weights_seed))

    def forward(self, k: Tensor, v: Tensor, mask: Tensor | None, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        B = k.shape[0]
        prefix = self.shared.dropout(self.shared.layer_prefix(self.index).unsqueeze(1).expand(-1, B, -1, -1, -1))
        pk, pv = prefix.to(k.dtype)  # (B, H, P, D) each
        if self.gate is not None:
            gate = torch.sigmoid(self.gate(x)).mean(dim=1)  # (B, 1|2)
            if self.record is not None:
                self.record(gate)
            pk, pv = pk * gate[:, 0, None, None, None], pv * gate[:, -1, None, None, None]
        if mask is not None:
            mask = F.pad(mask, (pk.shape[2], 0))  # prefix columns are always attended: additive 0
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), mask  # (B, H, P+T, D)
