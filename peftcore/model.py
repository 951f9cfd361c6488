"""The adapter API every model inherits: add, delete, activate, train, freeze, inspect, summarise, heads, save/load.

It knows models only through the site protocol (``find_sites``) and a ``config`` with ``hidden_size``. Method
modules live in ``site.adapters[name]``; activation pushes each module's plugs into its site, so nothing is looked
up during forward. AdapterHub's ``ModelAdaptersMixin`` is the API being matched.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from peftcore import io
from peftcore.composition import BASE, BatchSplit, Block, Fuse, Parallel, Split, Stack, parse_setup, site_plugs, spans
from peftcore.configs import DEFAULT_ADAPTER_CONFIG, AdapterConfigBase, LoRAConfig, PrefixTuningConfig, members
from peftcore.fusion import AdapterFusion, AdapterFusionConfig, load_fusion, save_fusion
from peftcore.heads import build_head, head_config
from peftcore.interop import adapterhub, peft
from peftcore.methods import METHODS
from peftcore.methods.lora import LinearMethod
from peftcore.methods.prefix import PrefixPool
from peftcore.sites import EmbeddingSite, LMHead, ModelShape, ResidualSite, Site, find_sites

SUMMARY_HEADER = ("name", "architecture", "#param", "%param", "active", "train")
# AdapterHub's location keys, by site, for gating scores
LOCATION_KEYS = {"attn.residual": "mh_adapter", "ffn.residual": "output_adapter", "attn.q": "selfattn_lora",
                 "attn.k": "selfattn_lora", "attn.v": "selfattn_lora", "ffn.intermediate": "intermediate_lora",
                 "ffn.output": "output_lora", "attn.prefix": "self_prefix"}


class BuiltAdapter(NamedTuple):
    """An adapter's modules before they are attached: one per site, plus what its sites share."""

    placed: list[tuple[Site, nn.Module]]
    shared: nn.ModuleDict  # shared_key -> module

    def slots(self) -> dict[str, tuple[nn.Module, str]]:
        """Our key (adapter name left out) -> (module, key inside it), for every tensor of the adapter."""
        slots = {f"{site.path}.adapters.{key}": (module, key) for site, module in self.placed
                 for key in module.state_dict()}
        slots.update({f"shared_parameters.{key}": (self.shared, key) for key in self.shared.state_dict()})
        return slots


class AdapterModelMixin:
    """Adapter methods for an ``nn.Module`` built with sites; call ``init_adapters()`` in its ``__init__``."""

    def init_adapters(self) -> None:
        """Empty adapter state; call before the model builds its modules."""
        self.adapter_configs: dict[str, AdapterConfigBase] = {}
        self.fusion_configs: dict[str, AdapterFusionConfig] = {}
        self.fused_adapters: dict[str, tuple[str, ...]] = {}  # fusion name -> the adapters it fuses
        self.active_setup: Block | None = None
        self.heads = nn.ModuleDict()
        self.shared_parameters = nn.ModuleDict()
        self.active_head: str | None = None
        self.branch_heads: Block | None = None  # Parallel/BatchSplit of head names: one head per slice of the batch
        self.unpad = True  # run padded batches on their real tokens only (see models.layers.Padding)
        self.setup_token_wise = True  # whether the active setup acts on each token alone

    @property
    def sites_found(self) -> tuple[Site, ...]:
        """The model's sites, found once on first use (the model is fully built by then)."""
        if "_sites" not in self.__dict__:
            self.__dict__["_sites"] = tuple(find_sites(self))
        return self.__dict__["_sites"]

    # ---- adding, deleting, inspecting -------------------------------------------------------------------------

    def add_adapter(self, name: str, config: str | dict | AdapterConfigBase | None = None, overwrite_ok: bool = False,
                    set_active: bool = False) -> None:
        """Attach a new adapter at the sites its config names; ``config`` is a registry name, dict or config."""
        config = AdapterConfigBase.load(config if config is not None else DEFAULT_ADAPTER_CONFIG)
        check_name(name)
        if name in self.adapter_configs and not overwrite_ok:
            raise ValueError(f"an adapter named {name!r} exists; pass overwrite_ok=True to replace it.")
        if name in self.merged_adapters():
            raise ValueError(f"adapter {name!r} is merged into the weights; reset_adapter({name!r}) before "
                             "replacing it.")
        modules = self.build_adapter(config)
        if name in self.adapter_configs:
            self.remove_adapter(name)
        self.attach_adapter(name, config, modules)
        if set_active:
            self.set_active_adapters(name)
        elif name in self.active_names():  # replaced while active: its sites must run the new modules
            self.set_active_adapters(self.active_setup)

    def attach_adapter(self, name: str, config: AdapterConfigBase, built: BuiltAdapter) -> None:
        """Put built modules into their sites; the last step of adding or loading an adapter."""
        for site, module in built.placed:
            site.module.adapters[name] = module.train(self.training)
        if len(built.shared):
            self.shared_parameters[name] = built.shared.train(self.training)
        self.adapter_configs[name] = config

    def build_adapter(self, config: AdapterConfigBase) -> BuiltAdapter:
        """The method modules ``config`` (or each member of a union) places, on the model's device and dtype;
        attaches nothing."""
        shape = ModelShape(self.config.hidden_size, sum(1 for site in self.sites_found if site.name == "ffn.residual"),
                           getattr(self.config, "num_attention_heads", None))  # only prefix tuning needs heads
        reference = next(p for p in self.parameters() if p.is_floating_point())
        shared: dict[str, nn.Module] = {}
        placed: dict[str, tuple[Site, nn.Module]] = {}
        for member in members(config):
            too_deep = [i for i in getattr(member, "leave_out", ()) if i >= shape.num_layers]
            if too_deep:
                raise ValueError(f"leave_out holds layer(s) {too_deep}, but the model has {shape.num_layers} layers "
                                 f"(0...{shape.num_layers - 1}).")
            methods = [method for method in METHODS if isinstance(member, method.config_class)]
            for method in methods:
                module = method.build_shared(member, shape)
                if module is not None:
                    shared[method.shared_key] = module.to(device=reference.device, dtype=reference.dtype)
            for site in self.sites_found:
                for method in methods:
                    if site.name in method.sites(member, site.layer):
                        if site.path in placed:
                            raise ValueError(f"{type(config).__name__} places two modules at {site.path}; a union "
                                             "must combine methods that sit at different sites.")
                        module = method.build(member, site, shape, shared.get(method.shared_key))
                        placed[site.path] = (site, module.to(device=reference.device, dtype=reference.dtype))
        if not placed:
            raise ValueError(f"{type(config).__name__} places no module on this model (all layers left out?).")
        return BuiltAdapter(list(placed.values()), nn.ModuleDict(shared))

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter and its modules; an active adapter must be deactivated first."""
        self.check_known(name)
        if name in self.active_names():
            raise ValueError(f"adapter {name!r} is active ({self.active_setup!r}); deactivate it first with "
                             "set_active_adapters(None) or another setup.")
        if name in self.merged_adapters():
            raise ValueError(f"adapter {name!r} is merged into the weights; reset_adapter({name!r}) first.")
        fused = [fusion for fusion, names in self.fused_adapters.items() if name in names]
        if fused:
            raise ValueError(f"adapter {name!r} is fused in {fused}; delete_adapter_fusion({fused[0]!r}) first.")
        self.remove_adapter(name)

    def remove_adapter(self, name: str) -> None:
        for site in self.sites_found:
            if name in site.module.adapters:
                del site.module.adapters[name]
        if name in self.shared_parameters:
            del self.shared_parameters[name]
        del self.adapter_configs[name]

    def check_known(self, name: str) -> None:
        if name not in self.adapter_configs:
            raise KeyError(f"no adapter named {name!r}; this model has {sorted(self.adapter_configs) or 'none'}.")

    def iter_adapters(self, name: str | None = None) -> Iterator[tuple[str, int, str, nn.Module]]:
        """(adapter, layer, site, module) for every attached module; layer -1 is the embeddings (AdapterHub's)."""
        for site in self.sites_found:
            for adapter, module in site.module.adapters.items():
                if name is None or adapter == name:
                    yield adapter, -1 if site.layer is None else site.layer, site.name, module

    def get_adapter(self, name: str) -> dict[int, dict[str, nn.Module]]:
        """``{layer: {site: module}}`` of one adapter, as AdapterHub's ``get_adapter`` (layer -1: embeddings)."""
        self.check_known(name)
        layers: dict[int, dict[str, nn.Module]] = {}
        for _, layer, site, module in self.iter_adapters(name):
            layers.setdefault(layer, {})[site] = module
        return layers

    def adapter_state(self, name: str) -> dict[str, Tensor]:
        """An adapter's tensors keyed by their path in the model with the adapter name left out."""
        self.check_known(name)
        state = {f"{site.path}.adapters.{key}": tensor for site in self.sites_found if name in site.module.adapters
                 for key, tensor in site.module.adapters[name].state_dict().items()}
        if name in self.shared_parameters:
            shared = self.shared_parameters[name].state_dict()
            state.update({f"shared_parameters.{key}": tensor for key, tensor in shared.items()})
        return state

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        for _, _, _, module in self.iter_adapters(name):
            yield from module.parameters()
        if name in self.shared_parameters:
            yield from self.shared_parameters[name].parameters()

    # ---- activation and training ------------------------------------------------------------------------------

    @property
    def active_adapters(self) -> Block | None:
        """The active setup as a composition block (a single adapter ``"a"`` is ``Stack("a")``), or None."""
        return self.active_setup

    def active_names(self) -> tuple[str, ...]:
        return () if self.active_setup is None else self.active_setup.flatten()

    def set_active_adapters(self, setup: str | Block | Sequence | None) -> None:
        """Activate an adapter or a composition of adapters (``Stack``, ``Fuse``, ``Split``, ``BatchSplit``,
        ``Parallel``, ``Average``; ``"a,b"`` and ``["a", "b"]`` mean ``Stack("a", "b")``), or none.

        The head named after the setup's last adapter becomes active; for ``Parallel`` (and a ``BatchSplit`` whose
        every branch has a head) each branch gets its own head. Nothing changes when the setup is invalid.
        """
        block = parse_setup(setup)
        plugs = self.setup_plugs(block)
        with setup_guard(self).changing():
            self.push_plugs(plugs)
            self.active_setup = block
            self.setup_token_wise = self.token_wise(block)
        self.branch_heads = None
        heads = None if block is None else head_setup(block)
        if isinstance(heads, Block):
            if all(head in self.heads for head in heads):
                self.branch_heads = heads
        elif heads in self.heads or block is None:
            self.active_head = heads

    def setup_plugs(self, block: Block | None) -> list[tuple[Site, dict[str, Callable | None]]]:
        """Every site's plugs for a setup; raises, before anything changes, when the setup cannot run."""
        if block is not None:
            for name in block.flatten():
                if name != BASE:
                    self.check_known(name)
            merged = sorted(set(block.flatten()) & self.merged_adapters())
            if merged and not all(isinstance(b, Stack) for b in walk(block)):
                raise ValueError(f"adapters {merged} are merged into the weights and act on every row alike; "
                                 f"reset_adapter() before composing them with {block!r}.")
        skip = self.merged_adapters()
        return [(site, site_plugs(site.module, block, skip, site.path)) for site in self.sites_found]

    def token_wise(self, block: Block | None) -> bool:
        """Whether a setup acts on each token alone, so that padded batches may run unpadded: every module is
        token-wise (``Method.token_wise``) and no block splits by position or batch row."""
        if block is None:
            return True
        if any(isinstance(b, (Split, BatchSplit, Parallel)) for b in walk(block)):
            return False
        return all(module.token_wise for name in block.flatten() if name != BASE
                   for *_, module in self.iter_adapters(name))

    def unpadded(self) -> bool:
        """Whether this forward may run a padded batch on its real tokens only: ``unpad`` is on and the running
        setup acts on each token alone. Outputs are then zeros at padded positions (transformers' are not)."""
        return self.unpad and self.setup_token_wise

    @staticmethod
    def push_plugs(plugs: list[tuple[Site, dict[str, Callable | None]]]) -> None:
        for site, site_plug in plugs:
            for attribute, plug in site_plug.items():
                setattr(site.module, attribute, plug)

    def current_plugs(self) -> list[tuple[Site, dict[str, Callable | None]]]:
        return [(site, {attr: getattr(site.module, attr) for attr in ("plug", "inverse_plug")
                        if hasattr(site.module, attr)}) for site in self.sites_found]

    def freeze_model(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) every parameter of the model, adapters and heads included."""
        for parameter in self.parameters():
            parameter.requires_grad_(not freeze)
        self.model_frozen = freeze

    def train_adapter(self, setup: str | Block | Sequence) -> None:
        """Train mode, everything frozen but the setup's adapters and their heads, and the setup active."""
        block = parse_setup(setup)
        names = () if block is None else block.flatten()
        for name in names:
            self.check_known(name)
        merged = sorted(set(names) & self.merged_adapters())
        if merged:
            raise ValueError(f"adapters {merged} are merged into the weights; training them would train the base "
                             "weights. reset_adapter() first.")
        self.train()
        self.freeze_model(True)
        for name in names:
            for parameter in self.adapter_parameters(name):
                parameter.requires_grad_(True)
            if name in self.heads:
                self.heads[name].requires_grad_(True)
        self.set_active_adapters(block)

    @contextmanager
    def recording_gates(self, enabled: bool) -> Iterator[dict | None]:
        """While active, every gated module of an active adapter stores its gate values (AdapterHub's layout:
        ``{adapter: {layer: {location: array}}}``; two gates at one location are stacked as columns).

        The recorders live on the modules for one forward; forwards that record must not run concurrently.
        """
        if not enabled:
            yield None
            return
        scores: dict[str, dict[int, dict[str, np.ndarray]]] = {}
        gated = [(name, layer, site, module) for name, layer, site, module in self.iter_adapters()
                 if getattr(module, "gate", None) is not None]
        for name, layer, site, module in gated:
            module.record = partial(store_score, scores.setdefault(name, {}), layer, LOCATION_KEYS[site])
        try:
            yield scores
        finally:
            for *_, module in gated:
                module.record = None

    @contextmanager
    def recording_fusions(self, enabled: bool) -> Iterator[dict | None]:
        """While active, every fusion layer stores its attention probabilities (B, T, N) as numpy arrays, in
        AdapterHub's layout ``{fusion: {layer: {location: array}}}``."""
        if not enabled:
            yield None
            return
        attentions: dict[str, dict[int, dict[str, np.ndarray]]] = {}
        layers = [(name, site, fusion) for name in self.fusion_configs for site, fusion in self.fusion_layers(name)]
        for name, site, fusion in layers:
            fusion.record = partial(store_attention, attentions.setdefault(name, {}), site.layer,
                                    LOCATION_KEYS[site.name])
        token_wise, self.setup_token_wise = self.setup_token_wise, False  # records are (B, T, N): keep the padding
        try:
            yield attentions
        finally:
            self.setup_token_wise = token_wise
            for *_, fusion in layers:
                fusion.record = None

    # ---- forward with a setup -----------------------------------------------------------------------------------

    def run_adapters(self, encode: Callable[..., Any], args: tuple, kwargs: dict[str, Any],
                     output_adapter_gating_scores: bool = False, output_adapter_fusion_attentions: bool = False,
                     adapter_names: Sequence[str | None] | None = None) -> Any:
        """Run ``encode`` under the active setup, or under a per-example setup (``adapter_names``): replicate the
        batch for Parallel, give each slice its head, and attach gate and fusion records.

        Returns one output, or for ``Parallel`` (and a ``BatchSplit`` whose branches have heads) one per branch.
        """
        with self.recording_gates(output_adapter_gating_scores) as scores, \
                self.recording_fusions(output_adapter_fusion_attentions) as attentions:
            if adapter_names is not None:
                outputs = self.mixed_batch(encode, args, kwargs, adapter_names)
            else:
                with nullcontext() if torch.compiler.is_compiling() else setup_guard(self).running():
                    outputs = self.run_setup(encode, args, kwargs, self.active_setup, self.branch_heads)
        for out in outputs if isinstance(outputs, list) else (outputs,):
            out.adapter_gating_scores = scores
            out.adapter_fusion_attentions = attentions
        return outputs

    def run_setup(self, encode: Callable[..., Any], args: tuple, kwargs: dict[str, Any], setup: Block | None,
                  branch_heads: Block | None) -> Any:
        channels = 1 if setup is None else setup.parallel_channels
        if channels > 1:
            args, kwargs = replicate_batch(args, kwargs, channels)
        out = encode(*args, **kwargs)
        if channels == 1 and branch_heads is None:
            return out
        rows = batch_rows(out)
        branch = branch_heads or next(b for b in walk(setup) if isinstance(b, Parallel))
        parts = spans(branch, rows)
        outputs = [slice_output(out, span) for span in parts]
        if branch_heads is not None:
            for output, head in zip(outputs, branch_heads, strict=True):
                self.apply_head(output, self.heads[head])
        return outputs

    def mixed_batch(self, encode: Callable[..., Any], args: tuple, kwargs: dict[str, Any],
                    adapter_names: Sequence[str | None]) -> Any:
        """One forward in which example i runs adapter ``adapter_names[i]`` (None or ``"__base__"``: no adapter).

        The batch is grouped by adapter, each site runs every adapter on its rows only (a BatchSplit), and the
        output comes back in the caller's order; each row gets its adapter's head when every named adapter has one.
        """
        names = [BASE if name is None else name for name in adapter_names]
        rows = batch_rows_of(args, kwargs)
        if len(names) != rows:
            raise ValueError(f"adapter_names has {len(names)} entries, the batch has {rows} rows; name one adapter "
                             "(or None) per example.")
        merged = sorted(self.merged_adapters())
        if merged:
            raise ValueError(f"adapters {merged} are merged into the weights and would act on every row; "
                             "reset_adapter() before running mixed batches.")
        groups = list(dict.fromkeys(names))
        index = torch.tensor([groups.index(name) for name in names])
        order = torch.argsort(index, stable=True)
        permuted = bool((order != torch.arange(rows)).any())
        setup = BatchSplit(*groups, batch_sizes=torch.bincount(index, minlength=len(groups)).tolist())
        plugs = self.setup_plugs(setup)
        named = [name for name in groups if name != BASE]
        heads = named and all(name in self.heads for name in named)
        if permuted:
            args, kwargs = reorder_batch(args, kwargs, order)
        with setup_guard(self).changing():
            previous, previous_heads, token_wise = self.current_plugs(), self.branch_heads, self.setup_token_wise
            self.push_plugs(plugs)
            self.branch_heads = setup if heads else None  # the encoder leaves the heads to mixed_heads
            self.setup_token_wise = False  # the groups are batch rows, which packing would merge
            try:
                out = encode(*args, **kwargs)
            finally:
                self.push_plugs(previous)
                self.branch_heads, self.setup_token_wise = previous_heads, token_wise
        if heads:
            self.mixed_heads(out, setup)
        return slice_output(out, torch.argsort(order)) if permuted else out

    def mixed_heads(self, out: Any, setup: BatchSplit) -> None:
        """Each group's rows through its adapter's head (the model's own head for rows without adapter)."""
        parts = spans(setup, batch_rows(out))
        pieces = []
        for name, span in zip(setup, parts, strict=True):
            head = self.heads[name] if name != BASE else getattr(self, "head", None)
            if head is None:
                raise ValueError("rows without adapter need the model's own head, and this model has none; name an "
                                 "adapter for every row, or run those rows separately.")
            pieces.append(self.apply_head(slice_output(out, span), head))
        shapes = {tuple(piece.logits.shape[1:]) for piece in pieces}
        if len(shapes) > 1:
            raise ValueError(f"the adapters' heads give outputs of different shapes {sorted(shapes)}; run "
                             "adapters whose heads differ in separate batches.")
        for field in ("logits", "start_logits", "end_logits"):
            values = [getattr(piece, field) for piece in pieces]
            setattr(out, field, None if values[0] is None else torch.cat(values))

    def apply_head(self, out: Any, head: nn.Module) -> Any:
        """Logits of ``head`` on an output's last hidden state (span logits split for question answering)."""
        out.logits = self.run_head(head, out.last_hidden_state, out.pooler_output)
        if getattr(head, "predicts_spans", False):
            out.start_logits, out.end_logits = (t.squeeze(-1).contiguous() for t in out.logits.split(1, dim=-1))
        return out

    # ---- fusion ---------------------------------------------------------------------------------------------------

    def add_adapter_fusion(self, adapter_names: Fuse | Sequence[str] | str,
                           config: str | dict | AdapterFusionConfig | None = None, name: str | None = None,
                           overwrite_ok: bool = False, set_active: bool = False) -> None:
        """Add AdapterFusion layers over bottleneck adapters at every residual site where they all sit;
        ``config`` is ``"dynamic"`` (default), ``"static"`` or AdapterFusionConfig fields."""
        fuse = as_fuse(adapter_names, name)
        config = AdapterFusionConfig.load(config)
        for adapter in fuse.flatten():
            self.check_known(adapter)
        if fuse.name in self.fusion_configs and not overwrite_ok:
            raise ValueError(f"a fusion named {fuse.name!r} exists; pass overwrite_ok=True to replace it.")
        self.attach_fusion(fuse, config, self.build_fusion(fuse, config))
        if set_active:
            self.set_active_adapters(fuse)

    def build_fusion(self, fuse: Fuse, config: AdapterFusionConfig) -> list[tuple[Site, nn.Module]]:
        """One fusion layer per residual site where the Fuse's children all sit; attaches nothing."""
        dropout = getattr(self.config, "attention_probs_dropout_prob", 0.0)
        reference = next(p for p in self.parameters() if p.is_floating_point())
        placed = [(site, AdapterFusion(config, self.config.hidden_size, dropout).to(reference.device, reference.dtype))
                  for site in self.fusion_sites(fuse)]
        if not placed:
            raise ValueError(f"the adapters of {fuse!r} share no residual site (fusion fuses bottleneck adapters "
                             "placed at the same sub-layers).")
        return placed

    def fusion_sites(self, fuse: Fuse) -> list[Site]:
        """Residual sites where every child of the Fuse has a module."""
        children = [(child,) if isinstance(child, str) else child.flatten() for child in fuse]
        return [site for site in self.sites_found if isinstance(site.module, ResidualSite)
                and all(any(name in site.module.adapters for name in names) for names in children)]

    def attach_fusion(self, fuse: Fuse, config: AdapterFusionConfig, placed: list[tuple[Site, nn.Module]]) -> None:
        name = fuse.name
        self.remove_fusion(name)
        for site, fusion in placed:
            site.module.fusions[name] = fusion.train(self.training)
        self.fusion_configs[name] = config
        self.fused_adapters[name] = fuse.flatten()
        if name in fusion_names(self.active_setup):
            self.set_active_adapters(self.active_setup)

    def remove_fusion(self, name: str) -> None:
        for site in self.sites_found:
            if isinstance(site.module, ResidualSite) and name in site.module.fusions:
                del site.module.fusions[name]
        self.fusion_configs.pop(name, None)
        self.fused_adapters.pop(name, None)

    def delete_adapter_fusion(self, adapter_names: Fuse | Sequence[str] | str) -> None:
        """Remove a fusion's layers; an active fusion must be deactivated first."""
        name = as_fuse(adapter_names).name
        self.check_fusion(name)
        if name in fusion_names(self.active_setup):
            raise ValueError(f"fusion {name!r} is active ({self.active_setup!r}); deactivate it first.")
        self.remove_fusion(name)

    def check_fusion(self, name: str) -> None:
        if name not in self.fusion_configs:
            raise KeyError(f"no fusion named {name!r}; this model has {sorted(self.fusion_configs) or 'none'}.")

    def fusion_layers(self, name: str) -> Iterator[tuple[Site, nn.Module]]:
        for site in self.sites_found:
            if isinstance(site.module, ResidualSite) and name in site.module.fusions:
                yield site, site.module.fusions[name]

    def train_adapter_fusion(self, setup: Fuse | Block | Sequence | str, unfreeze_adapters: bool = False) -> None:
        """Train mode, everything frozen but the setup's fusion layers (and its adapters with
        ``unfreeze_adapters``) and the active heads; the setup becomes active."""
        block = parse_setup(as_fuse(setup) if isinstance(setup, str) else setup)
        fusions = fusion_names(block)
        if not fusions:
            raise ValueError(f"{block!r} holds no Fuse block; train_adapter_fusion trains fusion layers.")
        for name in fusions:
            self.check_fusion(name)
        self.set_active_adapters(block)
        self.train()
        self.freeze_model(True)
        for name in fusions:
            for _, fusion in self.fusion_layers(name):
                fusion.requires_grad_(True)
        if unfreeze_adapters:
            for name in block.flatten():
                for parameter in self.adapter_parameters(name):
                    parameter.requires_grad_(True)
        for head in (*(self.branch_heads or ()), self.active_head):
            if head is not None:
                self.heads[head].requires_grad_(True)

    def fusion_regularization_loss(self) -> Tensor | None:
        """AdapterHub's fusion regulariser summed over every trainable fusion layer that asks for it, or None."""
        losses = [fusion.regularization_loss() for site in self.sites_found if isinstance(site.module, ResidualSite)
                  for fusion in site.module.fusions.values() if fusion.value is not None
                  and fusion.value.weight.requires_grad]
        losses = [loss for loss in losses if loss is not None]
        return sum(losses) if losses else None

    def fusion_state(self, name: str) -> dict[str, Tensor]:
        """A fusion's tensors keyed by path in the model with the fusion name left out."""
        self.check_fusion(name)
        return {f"{site.path}.fusions.{key}": tensor for site, fusion in self.fusion_layers(name)
                for key, tensor in fusion.state_dict().items()}

    def save_adapter_fusion(self, directory: str | os.PathLike, adapter_names: Fuse | Sequence[str] | str,
                            with_head: bool = False, format: str = "peftcore") -> None:
        """Write a fusion's layers atomically, in our format or (``format="adapterhub"``) AdapterHub's."""
        name = as_fuse(adapter_names).name
        self.check_fusion(name)
        if format == "peftcore":
            save_fusion(self, directory, name)
        elif format == "adapterhub":
            adapterhub.save_fusion(self, directory, name)
        else:
            raise ValueError(f"format={format!r} is not known; use 'peftcore' or 'adapterhub'.")

    def load_adapter_fusion(self, directory: str | os.PathLike, load_as: str | None = None,
                            set_active: bool = False) -> str:
        """Load fusion layers (ours or AdapterHub's) over adapters already loaded; returns the fusion's name."""
        fuse = load_fusion(self, directory, load_as)
        if set_active:
            self.set_active_adapters(fuse)
        return fuse.name

    # ---- averaging ------------------------------------------------------------------------------------------------

    def average_adapter(self, adapter_name: str, adapter_list: Sequence[str], weights: Sequence[float] | None = None,
                        normalize_weights: bool = True, overwrite_ok: bool = False, set_active: bool = False,
                        combine_strategy: str = "linear", svd_rank: int | None = None) -> None:
        """A new adapter whose weights are the weighted average of adapters of one config.

        ``combine_strategy``: ``"linear"`` averages every tensor; for LoRA also ``"lora_linear_only_negate_b"``
        (A by |w|, B by w; Zhang et al., 2023) and ``"lora_delta_w_svd"`` (the weighted sum of the updates
        s·B·A, cut to rank ``svd_rank`` by SVD).
        """
        adapter_list = list(adapter_list)
        if not adapter_list:
            raise ValueError("average_adapter needs at least one adapter to average.")
        for name in adapter_list:
            self.check_known(name)
        weights = [1.0] * len(adapter_list) if weights is None else [float(w) for w in weights]
        if len(weights) != len(adapter_list):
            raise ValueError(f"{len(adapter_list)} adapters but {len(weights)} weights; give one weight per adapter.")
        total = sum(weights) if normalize_weights else 1.0
        if total == 0:
            raise ValueError(f"weights {weights} sum to 0 and cannot be normalised; pass normalize_weights=False.")
        weights = [w / total for w in weights]
        config = self.adapter_configs[adapter_list[0]]
        def essential(name: str) -> dict[str, Any]:  # AdapterHub ignores these two when comparing configs
            config = self.adapter_configs[name].to_dict()
            return {key: value for key, value in config.items() if key not in ("dropout", "init_weights")}

        if any(essential(name) != essential(adapter_list[0]) for name in adapter_list):
            raise ValueError(f"adapters {adapter_list} have different configs; only adapters of one config (up to "
                             "dropout and initialisation) can be averaged.")
        strategies = ("linear", "lora_linear_only_negate_b", "lora_delta_w_svd")
        is_lora = isinstance(config, LoRAConfig) and config.composition_mode == "add"
        if combine_strategy not in strategies or (combine_strategy != "linear" and not is_lora):
            raise ValueError(f"combine_strategy={combine_strategy!r} is not available for "
                             f"{type(config).__name__}; use {'one of ' + str(strategies) if is_lora else 'linear'}.")
        if combine_strategy == "lora_delta_w_svd":
            if not isinstance(svd_rank, int) or svd_rank < 1:
                raise ValueError(f"lora_delta_w_svd needs svd_rank, a positive int; got {svd_rank!r}.")
            config = config.replace(r=svd_rank)
        elif svd_rank is not None:
            raise ValueError("svd_rank applies to combine_strategy='lora_delta_w_svd' only.")
        check_name(adapter_name)
        if adapter_name in self.adapter_configs and not overwrite_ok:
            raise ValueError(f"an adapter named {adapter_name!r} exists; pass overwrite_ok=True to replace it.")
        built = self.build_adapter(config)
        averaged = average_states([self.adapter_state(name) for name in adapter_list], weights, combine_strategy,
                                  self.adapter_configs[adapter_list[0]], config)
        with torch.no_grad():
            for key, (module, inner) in built.slots().items():
                module.state_dict()[inner].copy_(averaged[key])
        if adapter_name in self.adapter_configs:
            self.remove_adapter(adapter_name)
        self.attach_adapter(adapter_name, config, built)
        if set_active:
            self.set_active_adapters(adapter_name)

    # ---- merging ----------------------------------------------------------------------------------------------

    def merged_adapters(self) -> set[str]:
        return {name for name, _, _, module in self.iter_adapters() if getattr(module, "is_merged", False)}

    def merge_adapter(self, name: str) -> None:
        """Fold a LoRA or (IA)^3 adapter into the weights it adapts: inference at the plain model's speed.

        The merged adapter acts whether or not it is active; ``reset_adapter`` restores the weights exactly.
        """
        self.check_known(name)
        placed = [(site, site.module.adapters[name]) for site in self.sites_found if name in site.module.adapters]
        for site, module in placed:
            if not isinstance(module, LinearMethod):
                raise ValueError(f"adapter {name!r} is a {type(module).__name__}; only LoRA and (IA)^3 adapters merge.")
            if module.is_merged:
                raise ValueError(f"adapter {name!r} is merged already; reset_adapter({name!r}) before merging again.")
            if module.gate is not None:
                raise ValueError(f"adapter {name!r} is gated (use_gating=True): its output depends on the input, so "
                                 "it cannot be folded into a weight.")
            others = [other for other, mod in site.module.adapters.items() if getattr(mod, "is_merged", False)]
            if others:
                raise ValueError(f"adapter {others[0]!r} is merged into {site.path} already; one merged adapter per "
                                 f"weight: reset_adapter({others[0]!r}) first.")
        for site, module in placed:
            module.merge_into(site.module)
        self.set_active_adapters(self.active_setup)

    def reset_adapter(self, name: str | None = None) -> None:
        """Undo ``merge_adapter`` for one adapter, or for every merged adapter when ``name`` is None."""
        merged = self.merged_adapters()
        if name is not None:
            self.check_known(name)
            if name not in merged:
                raise ValueError(f"adapter {name!r} is not merged; there is nothing to reset.")
        for site in self.sites_found:
            for adapter, module in site.module.adapters.items():
                if adapter in merged and (name is None or adapter == name):
                    module.unmerge_from(site.module)
        self.set_active_adapters(self.active_setup)

    def eject_prefix_tuning(self, name: str) -> None:
        """Replace a prefix-tuning adapter's reparameterising MLP by the prefixes it computes (``flat=True``).

        Outputs stay the same; the adapter gets smaller and no longer trains through the MLP. Saving afterwards
        writes a flat adapter that reloads as one.
        """
        self.check_known(name)
        config = self.adapter_configs[name]
        if not isinstance(config, PrefixTuningConfig):
            raise ValueError(f"adapter {name!r} is {type(config).__name__}; only prefix tuning can be ejected.")
        if config.flat:
            raise ValueError(f"adapter {name!r} is flat already.")
        pool = self.shared_parameters[name]["prefix"]
        flat = PrefixPool(config.replace(flat=True), *pool.shape[1:2], *pool.shape[3:], self.config.hidden_size)
        with torch.no_grad():
            flat.control_trans.copy_(pool.flattened())
        reference = pool.control_trans[0].weight
        flat.to(device=reference.device, dtype=reference.dtype).train(pool.training)
        self.shared_parameters[name]["prefix"] = flat
        for _, _, _, module in self.iter_adapters(name):
            module.share(flat)
        self.adapter_configs[name] = config.replace(flat=True)

    # ---- summary ----------------------------------------------------------------------------------------------

    def base_parameter_count(self) -> int:
        """Parameters of the encoder alone: no adapters, no heads (AdapterHub's base_model count)."""
        excluded = {id(p) for name in self.adapter_configs for p in self.adapter_parameters(name)}
        excluded |= {id(p) for p in self.heads.parameters()}
        excluded |= {id(p) for name in self.fusion_configs for _, fusion in self.fusion_layers(name)
                     for p in fusion.parameters()}
        if getattr(self, "head", None) is not None:
            excluded |= {id(p) for p in self.head.parameters()} - {id(p) for p in self.embeddings.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in excluded)

    def adapter_summary(self, as_dict: bool = False) -> str | list[dict[str, Any]]:
        """AdapterHub's table: name, architecture, #param, %param (of the base model), active, train."""
        base = self.base_parameter_count()
        rows: list[dict[str, Any]] = []
        for name, config in self.adapter_configs.items():
            parameters = list(self.adapter_parameters(name))
            count = sum(p.numel() for p in parameters)
            rows.append({"name": name, "architecture": config.architecture or "bottleneck", "#param": count,
                         "%param": count / base * 100, "active": name in self.active_names(),
                         "train": all(p.requires_grad for p in parameters)})
        active_fusions = fusion_names(self.active_setup)
        for name in self.fusion_configs:
            parameters = [p for _, fusion in self.fusion_layers(name) for p in fusion.parameters()]
            count = sum(p.numel() for p in parameters)
            rows.append({"name": f"Fuse[{name}]", "architecture": "fusion", "#param": count,
                         "%param": count / base * 100, "active": name in active_fusions,
                         "train": all(p.requires_grad for p in parameters)})
        rows.append({"name": "Full model", "#param": base, "%param": 100.0,
                     "train": not getattr(self, "model_frozen", False)})
        if as_dict:
            return rows
        header, line = "{:<25}{:<15}{:>12}{:>12}{:>8}{:>8}", "{:<25}{:<15}{:>12,}{:>12.3f}{:>8}{:>8}"
        table = ["=" * 80, header.format(*(h.title() for h in SUMMARY_HEADER)), "-" * 80]
        table += [line.format(*(row.get(h, "") for h in SUMMARY_HEADER)) for row in rows]
        table.insert(len(table) - 1, "-" * 80)
        if self.active_setup is not None and not (isinstance(self.active_setup, Stack) and len(self.active_setup) == 1
                                                  and isinstance(self.active_setup[0], str)):
            table += ["-" * 80, f"Active setup: {self.active_setup!r}"]
        return "\n".join([*table, "=" * 80])

    # ---- heads ------------------------------------------------------------------------------------------------

    def add_head(self, name: str, config: dict[str, Any], overwrite_ok: bool = False, set_active: bool = True) -> None:
        """Add a head from an AdapterHub head config dict; it becomes the active head by default."""
        check_name(name)
        if name in self.heads and not overwrite_ok:
            raise ValueError(f"a head named {name!r} exists; pass overwrite_ok=True to replace it.")
        self.attach_head(name, self.build_head_module(config))
        if set_active:
            self.active_head = name

    def build_head_module(self, config: dict[str, Any]) -> nn.Module:
        """A head from its config dict, on the model's device and dtype; attaches nothing."""
        config = head_config(**config)
        model = self.config
        dropout = model.classifier_dropout_prob if hasattr(model, "classifier_dropout_prob") else 0.1
        head = build_head(config, model.hidden_size, getattr(model, "vocab_size", 0), dropout, model.layer_norm_eps,
                          getattr(model, "initializer_range", 0.02))
        if config["head_type"] == "masked_lm":
            self.tie_lm_head(head)
        reference = next(p for p in self.parameters() if p.is_floating_point())
        return head.to(device=reference.device, dtype=reference.dtype)

    def attach_head(self, name: str, head: nn.Module) -> None:
        self.heads[name] = head.train(self.training)

    def tie_lm_head(self, head: LMHead) -> None:
        """Tie a new masked-LM head's decoder to the word embeddings and start it from the converted LM head."""
        head.decoder.weight = self.embeddings.word.weight
        if isinstance(getattr(self, "head", None), LMHead):
            with torch.no_grad():
                head.decoder.bias.copy_(self.head.decoder.bias)
                for mine, theirs in ((getattr(head, "0"), self.head.dense), (getattr(head, "2"), self.head.norm)):
                    mine.load_state_dict(theirs.state_dict())

    def add_classification_head(self, name: str, num_labels: int = 2, layers: int = 2,
                                activation_function: str = "tanh", overwrite_ok: bool = False,
                                multilabel: bool = False, id2label: dict[int, str] | None = None,
                                use_pooler: bool = False) -> None:
        """Sequence classification on the first token; num_labels=1 is regression, multilabel uses BCE."""
        self.add_head(name, dict(head_type="multilabel_classification" if multilabel else "classification",
                                 num_labels=num_labels, layers=layers, activation_function=activation_function,
                                 use_pooler=use_pooler, bias=True, label2id=label2id(id2label, num_labels)),
                      overwrite_ok)

    def add_image_classification_head(self, name: str, num_labels: int = 2, layers: int = 1,
                                      activation_function: str = "tanh", overwrite_ok: bool = False,
                                      multilabel: bool = False, id2label: dict[int, str] | None = None,
                                      use_pooler: bool = False) -> None:
        self.add_head(name, dict(head_type="image_classification", num_labels=num_labels, layers=layers,
                                 activation_function=activation_function, use_pooler=use_pooler, bias=True,
                                 multilabel=multilabel, label2id=label2id(id2label, num_labels)), overwrite_ok)

    def add_tagging_head(self, name: str, num_labels: int = 2, layers: int = 1, activation_function: str = "tanh",
                         overwrite_ok: bool = False, id2label: dict[int, str] | None = None) -> None:
        """Token classification: one prediction per token."""
        self.add_head(name, dict(head_type="tagging", num_labels=num_labels, layers=layers,
                                 activation_function=activation_function, label2id=label2id(id2label, num_labels)),
                      overwrite_ok)

    def add_qa_head(self, name: str, num_labels: int = 2, layers: int = 1, activation_function: str = "tanh",
                    overwrite_ok: bool = False) -> None:
        """Extractive question answering: span-start and span-end logits per token."""
        self.add_head(name, dict(head_type="question_answering", num_labels=num_labels, layers=layers,
                                 activation_function=activation_function), overwrite_ok)

    def add_masked_lm_head(self, name: str, activation_function: str = "gelu", layers: int = 2,
                           overwrite_ok: bool = False) -> None:
        """BERT-style LM head tied to the word embeddings, starting from the checkpoint's LM head when it has one."""
        self.add_head(name, dict(head_type="masked_lm", vocab_size=self.config.vocab_size, layers=layers,
                                 activation_function=activation_function, layer_norm=True, bias=True,
                                 shift_labels=False, label2id=None), overwrite_ok)

    def delete_head(self, name: str) -> None:
        if name not in self.heads:
            raise KeyError(f"no head named {name!r}; this model has {sorted(self.heads) or 'none'}.")
        del self.heads[name]
        if self.active_head == name:
            self.active_head = None

    def current_head(self, model_head: nn.Module | None) -> nn.Module | None:
        """The active adapter head if one is active, else the model's own head (or None); None too while each
        slice of the batch has its own head (they run after the encoder)."""
        if self.branch_heads is not None:
            return None
        return self.heads[self.active_head] if self.active_head is not None else model_head

    def run_head(self, head: nn.Module | None, x: Tensor, pooled: Tensor | None) -> Tensor | None:
        """A head's logits; a language-model head decodes through the embedding site's inverse."""
        if head is None:
            return None
        if isinstance(head, LMHead):
            return head.decoder(self.embedding_site().inverse(head.transform(x)))
        return head(x, pooled)

    def embedding_site(self) -> EmbeddingSite:
        return next(site.module for site in self.sites_found if site.layer is None)

    # ---- save and load ----------------------------------------------------------------------------------------

    def save_adapter(self, directory: str | os.PathLike, name: str, with_head: bool = True,
                     format: str = "peftcore") -> None:
        """Write an adapter (and the head of the same name) atomically: ``format="peftcore"`` writes
        ``adapter_config.json`` + ``adapter_model.safetensors``; ``"adapterhub"`` writes AdapterHub's layout;
        ``"peft"`` HF PEFT's (LoRA and (IA)^3), which ``peft.PeftModel.from_pretrained`` loads."""
        if format == "peftcore":
            io.save_adapter(self, directory, name, with_head)
        elif format == "adapterhub":
            adapterhub.save(self, directory, name, with_head)
        elif format == "peft":
            peft.save(self, directory, name, with_head)
        else:
            raise ValueError(f"format={format!r} is not known; use 'peftcore', 'adapterhub' or 'peft'.")

    def save_all_adapters(self, directory: str | os.PathLike, with_head: bool = True) -> None:
        """One subdirectory per adapter."""
        for name in self.adapter_configs:
            io.save_adapter(self, os.path.join(directory, name), name, with_head)

    def load_adapter(self, directory: str | os.PathLike, load_as: str | None = None, set_active: bool = False,
                     with_head: bool = True) -> str:
        """Load an adapter directory (ours, AdapterHub's or HF PEFT's); everything is checked before the model changes.

        Returns the adapter's name.
        """
        name = io.load_adapter(self, directory, load_as, with_head)
        if set_active:
            self.set_active_adapters(name)
        return name


def store_score(scores: dict[int, dict[str, np.ndarray]], layer: int, location: str, gate: Tensor) -> None:
    value = np.atleast_1d(gate.detach().squeeze().float().cpu().numpy())
    layer_scores = scores.setdefault(layer, {})
    layer_scores[location] = value if location not in layer_scores else np.column_stack((layer_scores[location], value))


def check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or "." in name or "," in name:
        raise ValueError(f"adapter and head names are non-empty strings without '.' or ',', got {name!r}.")


def label2id(id2label: dict[int, str] | None, num_labels: int) -> dict[str, int] | None:
    """AdapterHub's head config keeps label2id; checked here, where id2label still shows every label."""
    if id2label is not None and len(id2label) != num_labels:
        raise ValueError(f"id2label has {len(id2label)} labels, num_labels is {num_labels}.")
    return None if id2label is None else {label: int(i) for i, label in id2label.items()}


def store_attention(attentions: dict[int, dict[str, np.ndarray]], layer: int, location: str, probs: Tensor) -> None:
    attentions.setdefault(layer, {})[location] = probs.detach().float().cpu().numpy()


def walk(block: Block | str | None) -> Iterator[Block]:
    """Every block of a setup tree, the root first."""
    if isinstance(block, Block):
        yield block
        for child in block:
            yield from walk(child)


def fusion_names(block: Block | None) -> list[str]:
    """The fusion layers a setup runs: the name of every Fuse in it."""
    return [b.name for b in walk(block) if isinstance(b, Fuse)]


def head_setup(block: Block) -> str | Block | None:
    """The heads a setup activates (AdapterHub's parse_heads_from_composition): the last adapter of the final Stack
    element, one head per branch of a Parallel, one per slice of a BatchSplit."""
    final = block[-1] if isinstance(block, Stack) else block
    if isinstance(final, str):
        return final
    lasts = [child if isinstance(child, str) else child.last() for child in final]
    if isinstance(final, Parallel):
        return Parallel(*lasts)
    if isinstance(final, BatchSplit):
        return BatchSplit(*lasts, batch_sizes=final.batch_sizes)
    return None


def as_fuse(adapter_names: Fuse | Sequence[str] | str, name: str | None = None) -> Fuse:
    """``Fuse("a", "b")``, ``["a", "b"]`` and ``"a,b"`` all name the fusion of a and b."""
    if isinstance(adapter_names, Fuse):
        return adapter_names if name is None else Fuse(*adapter_names, name=name)
    names = adapter_names.split(",") if isinstance(adapter_names, str) else list(adapter_names)
    return Fuse(*names, name=name)


def batch_rows(out: Any) -> int:
    return out.last_hidden_state.shape[0]


def batch_rows_of(args: tuple, kwargs: dict[str, Any]) -> int:
    """The batch size of a forward's inputs: the first dimension of its first tensor."""
    tensor = next((value for value in (*args, *kwargs.values()) if isinstance(value, Tensor)), None)
    if tensor is None:
        raise ValueError("the forward has no tensor input to take a batch from.")
    return tensor.shape[0]


def map_batch(args: tuple, kwargs: dict[str, Any], fn: Callable[[Tensor], Tensor]) -> tuple[tuple, dict[str, Any]]:
    """Apply ``fn`` to every input tensor whose first dimension is the batch (broadcast ones stay as they are)."""
    rows = batch_rows_of(args, kwargs)

    def apply(value: Any) -> Any:
        return fn(value) if isinstance(value, Tensor) and value.dim() and value.shape[0] == rows else value

    return tuple(apply(value) for value in args), {key: apply(value) for key, value in kwargs.items()}


def replicate_batch(args: tuple, kwargs: dict[str, Any], copies: int) -> tuple[tuple, dict[str, Any]]:
    return map_batch(args, kwargs, lambda t: t.repeat(copies, *(1,) * (t.dim() - 1)))


def reorder_batch(args: tuple, kwargs: dict[str, Any], order: Tensor) -> tuple[tuple, dict[str, Any]]:
    return map_batch(args, kwargs, lambda t: t[order.to(t.device)])


def slice_output(out: Any, rows: slice | Tensor) -> Any:
    """An output dataclass with every per-example tensor cut to ``rows`` (a slice or an index tensor)."""
    def cut(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value[rows if isinstance(rows, slice) else rows.to(value.device)]
        if isinstance(value, tuple):
            return tuple(cut(item) for item in value)
        return value

    return dataclasses.replace(out, **{field.name: cut(getattr(out, field.name)) for field in dataclasses.fields(out)})


def average_states(states: list[dict[str, Tensor]], weights: list[float], strategy: str, source: AdapterConfigBase,
                   config: AdapterConfigBase) -> dict[str, Tensor]:
    """The weighted combination of adapters' tensors (same keys) by ``strategy`` (see ``average_adapter``)."""
    averaged = {key: sum(w * state[key] for w, state in zip(weights, states, strict=True)) for key in states[0]}
    if strategy == "lora_linear_only_negate_b":
        for key in averaged:
            if key.endswith("lora_A"):
                averaged[key] = sum(abs(w) * state[key] for w, state in zip(weights, states, strict=True))
    elif strategy == "lora_delta_w_svd":
        for key in [key for key in averaged if key.endswith("lora_A")]:
            prefix = key[: -len("lora_A")]
            delta = sum(w * state[prefix + "lora_B"].double() @ state[key].double()
                        for w, state in zip(weights, states, strict=True))
            if config.r > min(delta.shape):
                raise ValueError(f"svd_rank={config.r} exceeds the rank {min(delta.shape)} a {tuple(delta.shape)} "
                                 "weight update can have; choose a smaller svd_rank.")
            u, singular, v = torch.linalg.svd(delta, full_matrices=False)
            source_scaling, scaling = lora_scaling(source), lora_scaling(config)
            dtype = states[0][key].dtype
            averaged[key] = v[: config.r].to(dtype)
            averaged[prefix + "lora_B"] = (u[:, : config.r] * singular[: config.r] * source_scaling / scaling).to(dtype)
    return averaged


def lora_scaling(config: LoRAConfig) -> float:
    """The factor on B·A: alpha / r, or 1 when a gate scales the update instead."""
    return 1.0 if config.use_gating else config.alpha / config.r


class SetupGuard:
    """Forwards read the active setup; changing it (``set_active_adapters``, a mixed batch) waits until running
    forwards end and holds new ones off. So a forward never sees half of one setup and half of another, and two
    threads may run forwards on one model — each under the setup active when it started."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.readers = 0
        self.writer: int | None = None  # the thread changing the setup
        self.local = threading.local()

    @contextmanager
    def running(self) -> Iterator[None]:
        me = threading.get_ident()
        with self.condition:
            while self.writer is not None and self.writer != me:
                self.condition.wait()
            self.readers += 1
        self.local.depth = getattr(self.local, "depth", 0) + 1
        try:
            yield
        finally:
            self.local.depth -= 1
            with self.condition:
                self.readers -= 1
                self.condition.notify_all()

    @contextmanager
    def changing(self) -> Iterator[None]:
        me = threading.get_ident()
        if getattr(self.local, "depth", 0):
            raise RuntimeError("the active setup cannot change inside a forward of the same model; change it "
                               "before or after the forward.")
        with self.condition:
            if self.writer == me:  # nested change on the same thread
                yield
                return
            while self.writer is not None or self.readers:
                self.condition.wait()
            self.writer = me
        try:
            yield
        finally:
            with self.condition:
                self.writer = None
                self.condition.notify_all()


GUARDS: weakref.WeakKeyDictionary[nn.Module, SetupGuard] = weakref.WeakKeyDictionary()
GUARDS_LOCK = threading.Lock()


def setup_guard(model: nn.Module) -> SetupGuard:
    """The model's guard, made on first use; kept outside the model so copies and pickles of it need none."""
    with GUARDS_LOCK:
        if model not in GUARDS:
            GUARDS[model] = SetupGuard()
        return GUARDS[model]
