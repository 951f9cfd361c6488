"""Bottleneck adapters: sequential (Houlsby et al., 2019, https://arxiv.org/abs/1902.00751; Pfeiffer et al., 2020,
https://arxiv.org/abs/2005.00247) and parallel (He et al., 2021, https://arxiv.org/abs/2110.04366).

Numerically equal to AdapterHub's ``adapters.methods.modeling.Adapter`` / ``ParallelAdapter`` and the
``pre_forward``/``post_forward`` logic of ``adapters.methods.bottleneck.BottleneckLayer``. A bottleneck plugs into a
residual site, which hands it the sub-layer output ``h``, the sub-layer input ``x`` and the layer's LayerNorm.

    sequential (SeqBn / Pfeiffer):          parallel (ParBn):
        x ──► sub-layer ──► h                   x ──┬─► sub-layer ──► h ──┐
                            │                       └─► f(x)·s ───────────┤
        LN(h + x) ──► f ──► + r                                          (+)──► LN(· + x)
                            │
                      LN(· + x)

The exact placement of the residual ``r`` and the LayerNorms follows the config's ``original_ln_before/after``,
``residual_before_ln``, ``adapter_residual_before_ln``, ``ln_before/after`` fields, as AdapterHub applies them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from peftcore.configs import BnConfig, has_shared_phm, reduced_width
from peftcore.methods.phm import PHMLinear, PHMShared
from peftcore.sites import ACTIVATIONS, Method, ModelShape, Site, init_generator


class Bottleneck(Method):
    """f(z) = gate(z) · dropout(s · up(act(down(ln_before(z))))), placed around a residual site.

    ``s`` is ``config.scaling``: a float, a learned scalar ("learned") or a learned vector ("channel").
    The UniPELT gate is ``mean_T(sigmoid(W_g z + b_g))``, one value per example.
    With ``phm_layer`` (Compacter) ``down`` and ``up`` are ``PHMLinear`` layers, and what they share across layers
    is the adapter's ``PHMShared`` (``shared_key`` "phm").
    """

    config_class = BnConfig
    shared_key = "phm"

    @classmethod
    def sites(cls, config: BnConfig, layer: int | None) -> tuple[str, ...]:
        """mh_adapter -> attn.residual; output_adapter -> ffn.residual; leave_out skips layers."""
        if layer is None or layer in config.leave_out:
            return ()
        return ("attn.residual",) * config.mh_adapter + ("ffn.residual",) * config.output_adapter

    @classmethod
    def build_shared(cls, config: BnConfig, shape: ModelShape) -> PHMShared | None:
        """Compacter's shared rule and/or W (one per adapter), else nothing."""
        if not has_shared_phm(config):
            return None
        widths = {bottleneck_width(config, shape.hidden_size, layer) for layer in range(shape.num_layers)
                  if layer not in config.leave_out}
        if config.shared_W_phm and len(widths) > 1:
            raise ValueError(f"shared_W_phm=True shares one W across layers, but reduction_factor "
                             f"{config.reduction_factor} gives widths {sorted(widths)}; use one reduction_factor.")
        width = widths.pop() if widths else 1
        check_phm_sizes(config, shape.hidden_size, width)
        return PHMShared(config, shape.hidden_size, width, init_generator(config.init_weights_seed),
                         zero_up=config.init_weights == "mam_adapter")

    @classmethod
    def build(cls, config: BnConfig, site: Site, shape: ModelShape, shared: PHMShared | None) -> Bottleneck:
        return cls(config, shape.hidden_size, site.layer, shared)

    @property
    def token_wise(self) -> bool:
        """Stochastic depth drops whole examples' updates, so it needs the batch rows too."""
        return super().token_wise and not self.config.stochastic_depth

    def __init__(self, config: BnConfig, hidden_size: int, layer: int, shared: PHMShared | None = None) -> None:
        super().__init__()
        self.config = config
        width = bottleneck_width(config, hidden_size, layer)
        self.norm_before = nn.LayerNorm(hidden_size) if config.ln_before else nn.Identity()
        if config.phm_layer:
            check_phm_sizes(config, hidden_size, width)
            self.down: nn.Linear | PHMLinear = PHMLinear(hidden_size, width, config, "down", shared)
            self.up: nn.Linear | PHMLinear = PHMLinear(width, hidden_size, config, "up", shared)
        else:
            self.down, self.up = nn.Linear(hidden_size, width), nn.Linear(width, hidden_size)
        self.act = ACTIVATIONS[config.non_linearity.lower()]
        if isinstance(config.scaling, float):
            self.scaling: float | nn.Parameter = config.scaling
        else:
            self.scaling = nn.Parameter(torch.ones(1 if config.scaling == "learned" else hidden_size))
        self.norm_after = nn.LayerNorm(hidden_size) if config.ln_after else nn.Identity()
        self.gate = nn.Linear(hidden_size, 1) if config.use_gating else None
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """AdapterHub's three initialisations; ``init_weights_seed`` seeds a private generator."""
        generator = init_generator(self.config.init_weights_seed)
        init = self.config.init_weights
        with torch.no_grad():
            for linear in (self.down, self.up):
                if isinstance(linear, PHMLinear):  # its own init; mam_adapter zeroes the up W: identity start
                    linear.reset_parameters(generator, zero_init=init == "mam_adapter" and linear is self.up)
                    continue
                if init == "bert" or (init == "mam_adapter" and linear is self.down):
                    if init == "bert":
                        nn.init.normal_(linear.weight, std=0.02, generator=generator)
                    else:
                        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
                elif init == "mam_adapter":  # zero up-projection: the adapter starts as the identity
                    nn.init.zeros_(linear.weight)
                else:  # houlsby
                    nn.init.trunc_normal_(linear.weight, std=1e-2, a=-2e-2, b=2e-2, generator=generator)
                nn.init.zeros_(linear.bias)
            if self.gate is not None and init != "houlsby":  # AdapterHub leaves a houlsby gate at PyTorch's init
                nn.init.normal_(self.gate.weight, std=0.02, generator=generator)
                nn.init.zeros_(self.gate.bias)

    def transform(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The scaled, dropped-out and gated bottleneck output f(z), without any residual, and the scaled
        up-projection before dropout and gate."""
        up = self.up(self.act(self.down(self.norm_before(z))))  # (B, T, C)
        if self.training and self.config.stochastic_depth > 0:
            up = drop_rows(up, self.config.stochastic_depth)
        up = up * self.scaling
        out = self.dropout(up)
        if self.gate is not None:
            gate = torch.sigmoid(self.gate(z)).mean(dim=1, keepdim=True)  # (B, 1, 1)
            if self.record is not None:
                self.record(gate)
            out = out * gate
        return out, up

    def pre(self, h: Tensor, x: Tensor, norm: nn.Module,
            query_before_ln: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """What the adapter reads, the fusion query and the adapter's residual: ``(z, query, residual)``.

        h is the sub-layer output, x its input, norm the layer's LayerNorm. A parallel adapter reads x.
        """
        config = self.config
        if config.is_parallel:
            return x, x, x
        residual = h
        query = h if query_before_ln else None
        if config.original_ln_before:
            h = h + x
            if config.residual_before_ln == "post_add":
                residual = h
            h = norm(h)
        if config.residual_before_ln is False:
            residual = h
        return h, h if query is None else query, residual

    def body(self, z: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """The adapter's output (with its own residual, unless parallel) and its scaled up-projection, which
        AdapterFusion attends over."""
        out, up = self.transform(z)
        if self.config.is_parallel:
            return self.norm_after(out), up
        if self.config.adapter_residual_before_ln:
            return self.norm_after(out + residual), up
        return self.norm_after(out) + residual, up

    def post(self, out: Tensor, h: Tensor, x: Tensor, norm: nn.Module) -> Tensor:
        """After the adapter(s): a parallel adapter's output joins the sub-layer output h, then the layer's residual
        x and LayerNorm follow if ``original_ln_after``."""
        if self.config.is_parallel:
            out = out + h
        return norm(out + x) if self.config.original_ln_after else out

    def forward(self, h: Tensor, x: Tensor, norm: nn.Module) -> Tensor:
        """Residual-site step: h is the sub-layer output, x its input, norm the layer's LayerNorm."""
        z, _, residual = self.pre(h, x, norm)
        return self.post(self.body(z, residual)[0], h, x, norm)


def bottleneck_width(config: BnConfig, hidden_size: int, layer: int) -> int:
    """hidden // reduction_factor; a factor that leaves no unit is refused (AdapterHub silently keeps one)."""
    return reduced_width(type(config).__name__, "reduction_factor", hidden_size, config.reduction_for(layer))


def check_phm_sizes(config: BnConfig, hidden_size: int, width: int) -> None:
    """Both PHM layers need phm_dim to divide the hidden size and the bottleneck width."""
    n = config.phm_dim
    if hidden_size % n:
        raise ValueError(f"phm_dim={n} does not divide the hidden size {hidden_size}; choose a phm_dim that does.")
    if width % n:
        raise ValueError(f"phm_dim={n} does not divide the bottleneck width {width} (hidden size {hidden_size} // "
                         f"reduction_factor {config.reduction_factor}); choose reduction_factor or phm_dim so it "
                         "does.")


def drop_rows(x: Tensor, p: float) -> Tensor:
    """Stochastic depth in "row" mode (Huang et al., 2016): drop each example's update with probability p."""
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)
