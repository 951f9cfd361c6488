"""VeRA (Kopiczko et al., 2024, https://arxiv.org/abs/2310.11454) on the attention linears: one pair of frozen random
projections A (r, hidden) and B (hidden, r) per adapter, shared by every layer, and per site a trainable scaling of
the rank dimension (d) and of the output (b): ΔW = diag(b) B diag(d) A, added as s · ΔW x with s = alpha / r.

The scalings: AdapterHub 1.3.0 stores them as dense trainable matrices, ``vera_D`` (r, r) and ``vera_B`` (out, out),
initialised to d·I and b·I, and training fills their off-diagonal entries (measured on its 3-step trained files: 98%
of vera_B's and 88% of vera_D's non-zero), so it trains r² + out² parameters per linear (14.2M at roberta-base, where
LoRA trains 295k) and is not VeRA as published. Ours trains the published vectors, d (r,) and b (out,): r + out per
linear. ``vera_dense=True`` keeps AdapterHub's matrices, so that its files keep its outputs: an AdapterHub file whose
matrices are diagonal loads as vectors, one with any non-zero off-diagonal entry (every file AdapterHub has trained)
loads with ``vera_dense=True``, exactly, with AdapterHub's parameter count; saving for AdapterHub writes vectors as
diagonal matrices.

A and B are drawn as AdapterHub draws them for ``init_weights`` ("vera": Kaiming-uniform with a = 0) from
``init_weights_seed`` (none: the global RNG), and stay frozen: ``train_adapter`` leaves them out (``trains_shared``).
AdapterHub's files do not hold them: loading one draws them again from its seed, as AdapterHub does; an unseeded
file has lost them (AdapterHub reloads it with new random ones), so a strict load refuses it, naming them. Ours
saves them in every format.
HuggingFace PEFT's VeRA files (``VeraConfig``: ``vera_lambda_d``/``vera_lambda_b`` per module, the projections as
``base_model.vera_A``/``vera_B``, or drawn from ``projection_prng_key`` when not saved) read and write exactly: PEFT
has no alpha / r, so its adapters load with alpha = r and ours save with s folded into b.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.methods.base import Method, ModelShape, PeftFile, init_generator, register_method, shared_state_key
from peftcore.methods.lora import LoRAConfig, LowRankUpdate, check_peft_options, config_for_sites, refuse_gated_peft
from peftcore.sites import Site


@dataclass(frozen=True, kw_only=True)
class VeraConfig(LoRAConfig):
    """VeRA as AdapterHub 1.3.0 configures it: rank 8 on queries and values, d = 0.1, b = 0 (so it starts as the
    identity), alpha 8."""

    vera_d: float | None = 0.1
    vera_b: float | None = 0.0
    init_weights: str = "vera"


class VeraProjections(nn.Module):
    """One VeRA adapter's frozen random projections, shared by all its sites, under AdapterHub's names."""

    def __init__(self, config: LoRAConfig, hidden_size: int) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.zeros(config.r, hidden_size), requires_grad=False)  # (R, C)
        self.lora_B = nn.Parameter(torch.zeros(hidden_size, config.r), requires_grad=False)  # (C, R)
        generator = init_generator(config.init_weights_seed)
        with torch.no_grad():
            if config.init_weights == "vera":
                nn.init.kaiming_uniform_(self.lora_A, generator=generator)
                nn.init.kaiming_uniform_(self.lora_B, generator=generator)
            elif config.init_weights == "lora":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
            elif config.init_weights == "bert":
                nn.init.normal_(self.lora_A, std=0.02, generator=generator)
                nn.init.normal_(self.lora_B, std=0.02, generator=generator)
            else:  # "ia3": ones, as AdapterHub allows
                nn.init.ones_(self.lora_A)
                nn.init.ones_(self.lora_B)


class Vera(LowRankUpdate):
    """ΔW x = b ⊙ B (d ⊙ A x); with ``vera_dense``, ΔW = vera_B B vera_D A (AdapterHub's matrices)."""

    title = "VeRA"
    shared_key = "vera"
    trains_shared = False
    adapterhub_shared_path = "shared_parameters.{name}"
    peft_type = "VERA"
    peft_suffixes = (".vera_lambda_d", ".vera_lambda_b")
    peft_shared = ("base_model.vera_A", "base_model.vera_B")

    @classmethod
    def serves(cls, config: LoRAConfig) -> bool:
        return config.is_vera and not config.use_dora

    @classmethod
    def build_shared(cls, config: LoRAConfig, shape: ModelShape) -> nn.Module | None:
        return VeraProjections(config, shape.hidden_size) if cls.serves(config) else None

    @classmethod
    def build(cls, config: LoRAConfig, site: Site, shape: ModelShape, shared: nn.Module | None) -> Vera:
        return cls(config, site.module.in_features, site.module.out_features, shared)

    def __init__(self, config: LoRAConfig, in_features: int, out_features: int, shared: VeraProjections) -> None:
        super().__init__(config, in_features)
        self.share(shared)
        d, b = torch.full((config.r,), config.vera_d), torch.full((out_features,), config.vera_b)
        self.vera_d = nn.Parameter(torch.diag(d) if config.vera_dense else d)  # (R,) or (R, R)
        self.vera_b = nn.Parameter(torch.diag(b) if config.vera_dense else b)  # (out,) or (out, out)

    def update(self, x: Tensor) -> Tensor:
        A, B = self.shared.lora_A, self.shared.lora_B
        if self.config.vera_dense:
            return F.linear(F.linear(F.linear(F.linear(x, A), self.vera_d), B), self.vera_b)
        return self.vera_b * F.linear(self.vera_d * F.linear(x, A), B)  # (B, T, R) -> (B, T, out)

    def delta_weight(self) -> Tensor:
        A, B = self.shared.lora_A, self.shared.lora_B
        if self.config.vera_dense:
            return self.vera_b @ B @ self.vera_d @ A
        return self.vera_b[:, None] * (B @ (self.vera_d[:, None] * A))

    # ---- AdapterHub's files: dense matrices named vera_D and vera_B ----------------------------------------------

    @classmethod
    def adapterhub_names(cls, config: LoRAConfig, key: str) -> tuple[str, ...]:
        return (ADAPTERHUB_NAMES.get(key, key),)

    @classmethod
    def from_adapterhub(cls, config: LoRAConfig, state: dict[str, Tensor]) -> LoRAConfig:
        scalings = [key for key in state if key.endswith(SCALINGS)]
        if not cls.serves(config) or not scalings:
            return config
        projections = {local: shared_state_key(cls.shared_key, local) for local in ("lora_A", "lora_B")}
        if config.init_weights_seed and not any(key in state for key in projections.values()):
            # AdapterHub saves no projections; its seeded draw (a seed of 0 does not seed there) gives them back
            drawn = VeraProjections(config, state[next(key for key in scalings if key.endswith("vera_b"))].shape[0])
            state.update({key: getattr(drawn, local).detach() for local, key in projections.items()})
        if config.vera_dense or any(state[key].dim() != 2 for key in scalings):
            return config  # not AdapterHub's square matrices: loading reports the shapes
        if any(torch.count_nonzero(state[key] - torch.diag_embed(state[key].diagonal())) for key in scalings):
            return config.replace(vera_dense=True)
        for key in scalings:
            state[key] = state[key].diagonal().clone()
        return config

    @classmethod
    def to_adapterhub(cls, config: LoRAConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
        if not cls.serves(config) or config.vera_dense:
            return state
        return {key: torch.diag(t) if key.endswith(SCALINGS) else t for key, t in state.items()}

    # ---- HuggingFace PEFT's files ----------------------------------------------------------------------------------

    @classmethod
    def from_peft(cls, file: PeftFile) -> tuple[LoRAConfig, dict[str, Tensor]]:
        """PEFT's λd, λb and shared projections are ours with alpha = r (PEFT does not scale)."""
        check_peft_options(file)
        refused = sorted(path for path, module in file.targeted.items()
                         if module.split or not all(site.startswith("attn.") for site in module.sites))
        if refused:
            raise ValueError(f"{file.where}: VeRA on {refused[0]}: peftcore's VeRA shares (hidden)-sized projections "
                             "and adapts separate query, key and value linears only.")
        raw, r, hidden = file.raw, file.raw["r"], file.shape.hidden_size
        config = config_for_sites(file, VeraConfig, r=r, alpha=r, dropout=raw.get("vera_dropout", 0.0),
                                  vera_d=raw.get("d_initial", 0.1))
        A, B = (file.tensors.get(key) for key in cls.peft_shared)
        if A is None and B is None and raw.get("save_projection") is False:  # PEFT's draw from projection_prng_key
            generator = torch.Generator().manual_seed(raw.get("projection_prng_key", 0))
            A = nn.init.kaiming_uniform_(torch.empty(r, hidden), generator=generator)
            B = nn.init.kaiming_uniform_(torch.empty(hidden, r), generator=generator)
        if A is None or B is None or A.shape != (r, hidden) or B.shape != (hidden, r):
            raise ValueError(f"{file.where}: VeRA needs base_model.vera_A ({r}, {hidden}) and base_model.vera_B "
                             f"({hidden}, {r}), got {None if A is None else tuple(A.shape)} and "
                             f"{None if B is None else tuple(B.shape)}.")
        state = {shared_state_key(cls.shared_key, "lora_A"): A, shared_state_key(cls.shared_key, "lora_B"): B}
        for path, module in file.targeted.items():
            site = module.sites[0]
            d, b = file.tensors.get(f"{path}.vera_lambda_d"), file.tensors.get(f"{path}.vera_lambda_b")
            if d is None or b is None or d.shape != (r,) or b.dim() != 1:
                raise ValueError(f"{file.where}: {path} needs vera_lambda_d ({r},) and vera_lambda_b (out,), got "
                                 f"{None if d is None else tuple(d.shape)} and "
                                 f"{None if b is None else tuple(b.shape)}.")
            state[file.key(module.layer, site, "vera_d")] = d
            state[file.key(module.layer, site, "vera_b")] = b
        return config, state

    @classmethod
    def to_peft(cls, config: LoRAConfig, placed: Mapping[str, Mapping[str, Method]], modules: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        refuse_gated_peft(config)
        if config.vera_dense:
            raise ValueError("its scalings are AdapterHub's dense matrices (vera_dense=True); PEFT's VeRA holds "
                             "vectors.")
        state = {}
        for path, ours in placed.items():
            (vera,) = ours.values()
            state[f"{path}.vera_lambda_d"] = vera.vera_d.detach()
            state[f"{path}.vera_lambda_b"] = vera.vera_b.detach() * vera.scaling
            state["base_model.vera_A"], state["base_model.vera_B"] = vera.shared.lora_A, vera.shared.lora_B
        fields = {"peft_type": "VERA", "r": config.r, "d_initial": config.vera_d, "vera_dropout": config.dropout,
                  "projection_prng_key": 0, "save_projection": True, "init_weights": True, "bias": "none",
                  "layers_pattern": None, "layers_to_transform": None}
        return fields, state


ADAPTERHUB_NAMES = {"vera_d": "vera_D", "vera_b": "vera_B"}
SCALINGS = tuple(f"adapters.{key}" for key in ADAPTERHUB_NAMES)  # our keys' endings for the scalings

register_method(Vera, {"vera": VeraConfig()})
