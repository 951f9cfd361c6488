"""The adapter API every model inherits: add, delete, activate, train, freeze, inspect, summarise, heads, save/load.

It knows models only through the site protocol (``find_sites``) and a ``config`` with ``hidden_size``. Method
modules live in ``site.adapters[name]``; activation pushes each module's plugs into its site, so nothing is looked
up during forward. AdapterHub's ``ModelAdaptersMixin`` is the API being matched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from peftcore import io
from peftcore.configs import DEFAULT_ADAPTER_CONFIG, AdapterConfigBase, PrefixTuningConfig, members
from peftcore.heads import build_head, head_config
from peftcore.interop import adapterhub, peft
from peftcore.methods import METHODS
from peftcore.methods.lora import LinearMethod
from peftcore.methods.prefix import PrefixPool
from peftcore.sites import EmbeddingSite, LMHead, ModelShape, Site, find_sites

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
        self.active_setup: tuple[str, ...] = ()
        self.heads = nn.ModuleDict()
        self.shared_parameters = nn.ModuleDict()
        self.active_head: str | None = None

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
        elif name in self.active_setup:  # replaced while active: its sites must run the new modules
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
        if name in self.active_setup:
            raise ValueError(f"adapter {name!r} is active; deactivate it first with set_active_adapters(None) or "
                             "another setup.")
        if name in self.merged_adapters():
            raise ValueError(f"adapter {name!r} is merged into the weights; reset_adapter({name!r}) first.")
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
    def active_adapters(self) -> tuple[str, ...]:
        return self.active_setup

    def set_active_adapters(self, setup: str | Sequence[str] | None) -> None:
        """Activate one adapter, several (at different sites), or none; a head of the same name becomes active.

        Nothing changes when the setup is invalid.
        """
        names = () if setup is None else (setup,) if isinstance(setup, str) else tuple(setup)
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"set_active_adapters takes adapter names, got {name!r}.")
            self.check_known(name)
        plugs = []
        merged = self.merged_adapters()
        for site in self.sites_found:
            present = [name for name in names if name in site.module.adapters and name not in merged]
            if len(present) > 1:
                raise ValueError(f"adapters {present} both sit at {site.name} of layer {site.layer}; composing "
                                 "several adapters at one site (Stack, Fuse, ...) is not available yet.")
            plugs.append((site, site.module.adapters[present[0]].plugs() if present else {}))
        for site, site_plugs in plugs:
            site.module.plug = site_plugs.get("plug")
            if isinstance(site.module, EmbeddingSite):
                site.module.inverse_plug = site_plugs.get("inverse_plug")
        self.active_setup = names
        head = next((name for name in reversed(names) if name in self.heads), None)
        if head is not None or not names:
            self.active_head = head

    def freeze_model(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) every parameter of the model, adapters and heads included."""
        for parameter in self.parameters():
            parameter.requires_grad_(not freeze)
        self.model_frozen = freeze

    def train_adapter(self, setup: str | Sequence[str]) -> None:
        """Train mode, everything frozen but the named adapters and their heads, and those adapters active."""
        names = (setup,) if isinstance(setup, str) else tuple(setup)
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
        self.set_active_adapters(names)

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
        flat.to(device=pool.control_trans[0].weight.device).train(pool.training)
        self.shared_parameters[name]["prefix"] = flat
        for _, _, _, module in self.iter_adapters(name):
            module.share(flat)
        self.adapter_configs[name] = config.replace(flat=True)

    # ---- summary ----------------------------------------------------------------------------------------------

    def base_parameter_count(self) -> int:
        """Parameters of the encoder alone: no adapters, no heads (AdapterHub's base_model count)."""
        excluded = {id(p) for name in self.adapter_configs for p in self.adapter_parameters(name)}
        excluded |= {id(p) for p in self.heads.parameters()}
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
                         "%param": count / base * 100, "active": name in self.active_setup,
                         "train": all(p.requires_grad for p in parameters)})
        rows.append({"name": "Full model", "#param": base, "%param": 100.0,
                     "train": not getattr(self, "model_frozen", False)})
        if as_dict:
            return rows
        header, line = "{:<25}{:<15}{:>12}{:>12}{:>8}{:>8}", "{:<25}{:<15}{:>12,}{:>12.3f}{:>8}{:>8}"
        table = ["=" * 80, header.format(*(h.title() for h in SUMMARY_HEADER)), "-" * 80]
        table += [line.format(*(row.get(h, "") for h in SUMMARY_HEADER)) for row in rows]
        table.insert(len(table) - 1, "-" * 80)
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
        """The active adapter head if one is active, else the model's own head (or None)."""
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
