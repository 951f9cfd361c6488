"""The adapter API every model inherits, under AdapterHub's names and signatures (its ``ModelAdaptersMixin``), so an
AdapterHub user changes imports only.

This class holds the adapter state of a model and is a thin facade: each call that changes the model is
all-or-nothing and runs alone (``@mutation``, changes.py), checks its arguments, does its work in the module whose
job it is — placement.py (adding, deleting, reading adapters), setup.py (activating), forward.py (running),
merging.py (merge, reset, average, eject), fusion.py, summary.py, interop/ (files) — and re-plugs the sites when it
changed what they run; the head calls come from model_heads.py, AdapterHub's read-only views of the state from
views.py, PEFT's weighted merging and ``merge_and_unload`` from weighted.py. It knows models only through the site
protocol (``find_sites``) and a ``config`` with ``hidden_size``; models/ uses ``init_adapters``, ``run_adapters``,
``unpadded`` and ``apply_active_head``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from peftcore import forward, fusion, heads, interop, merging, placement, summary
from peftcore.changes import mutation
from peftcore.composition import Block, Fuse, Parallel, Stack, as_fuse, fusion_names, head_setup, parse_setup
from peftcore.configs import DEFAULT_ADAPTER_CONFIG, AdapterConfigBase
from peftcore.context import as_head_setup, head_names
from peftcore.fusion import AdapterFusionConfig
from peftcore.interop import setups
from peftcore.methods.base import Method
from peftcore.model_heads import HeadsMixin
from peftcore.recording import Recorder
from peftcore.setup import Plan, compile_plan, guard
from peftcore.sharing import SharingMixin, check_unshared
from peftcore.sites import Site, find_sites
from peftcore.views import ViewsMixin
from peftcore.weighted import WeightedMixin


class AdapterModelMixin(HeadsMixin, ViewsMixin, SharingMixin, WeightedMixin):
    """Adapter methods for an ``nn.Module`` built with sites; call ``init_adapters()`` in its ``__init__``."""

    adapter_file_format: ClassVar[str] = "peftcore"  # what save_adapter, save_head, ... write unless told

    def init_adapters(self) -> None:
        """Empty adapter state; call before the model builds its modules."""
        self.adapter_configs: dict[str, AdapterConfigBase] = {}
        self.fusion_configs: dict[str, AdapterFusionConfig] = {}
        self.fused_adapters: dict[str, tuple[str, ...]] = {}  # fusion name -> the adapters it fuses
        self.heads = nn.ModuleDict()
        self.shared_parameters = nn.ModuleDict()
        self._active_head: str | None = None  # the one head of the output (per-slice heads: plan.branch_heads)
        self.head: nn.Module | None = None  # the model's own task head, if it builds one
        self.model_frozen = False
        self.unpad = True  # run padded batches on their real tokens only (see peftcore.models.layers.Padding)
        self.plan = Plan(None, ())  # the active setup, compiled; forward.py and setup.py say how it runs
        self.recorder = Recorder()

    @property
    def sites_found(self) -> tuple[Site, ...]:
        """The model's sites, found once on first use (the model is fully built by then)."""
        if "_sites" not in self.__dict__:
            self.__dict__["_sites"] = tuple(find_sites(self))
        return self.__dict__["_sites"]

    # ---- adding, deleting, inspecting -----------------------------------------------------------------------

    @mutation
    def add_adapter(self, name: str, config: str | dict | AdapterConfigBase | None = None, overwrite_ok: bool = False,
                    set_active: bool = False) -> None:
        """Attach a new adapter ``name`` at the sites its ``config`` names: a registry name (``"lora"``,
        ``"seq_bn[reduction_factor=8]"``), a dict or a config object (default: ``seq_bn``). Replacing an existing
        adapter needs ``overwrite_ok`` (a merged one must be reset first); ``set_active`` activates it alone."""
        config = AdapterConfigBase.load(config if config is not None else DEFAULT_ADAPTER_CONFIG)
        placement.check_name(name)
        if name in self.adapter_configs and not overwrite_ok:
            raise ValueError(f"an adapter named {name!r} exists; pass overwrite_ok=True to replace it.")
        if name in self.merged_adapters():
            raise ValueError(f"adapter {name!r} is merged into the weights; reset_adapter({name!r}) before "
                             "replacing it.")
        check_unshared(self, name)
        built = placement.build(self, config)
        placement.initialise(built)
        fusion.check_replacement(self, name, built.placed)
        if name in self.adapter_configs:
            placement.remove(self, name)
        placement.attach(self, name, config, built)
        self._replug_or_activate(name if set_active else None)

    @mutation
    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` and its modules. Where it is the whole active setup, the model is left with none
        active, as in AdapterHub; where it is part of a larger setup, or merged or fused, it must be released first."""
        placement.check_known(self, name)
        alone = self.active_adapters == Stack(name)
        if name in self._active_names() and not alone:
            raise ValueError(f"adapter {name!r} is part of the active setup {self.active_adapters!r}; activate a "
                             "setup without it first (set_active_adapters).")
        if name in self.merged_adapters():
            raise ValueError(f"adapter {name!r} is merged into the weights; reset_adapter({name!r}) first.")
        fused = [fusion_name for fusion_name, names in self.fused_adapters.items() if name in names]
        if fused:
            raise ValueError(f"adapter {name!r} is fused in {fused}; delete_adapter_fusion({fused[0]!r}) first.")
        check_unshared(self, name)
        if alone:
            self.set_active_adapters(None)
        placement.remove(self, name)
        self._replug()

    def iter_adapters(self, name: str | None = None) -> Iterator[tuple[str, int, str, Method]]:
        """(adapter, layer, site, module) for every attached module, or only adapter ``name``'s; layer -1 is the
        embeddings (AdapterHub's)."""
        return placement.iter_adapters(self, name)

    def adapter_state(self, name: str) -> dict[str, Tensor]:
        """Adapter ``name``'s tensors keyed by their path in the model with the adapter name left out."""
        return placement.state(self, name)

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        """Adapter ``name``'s parameters, those its modules share included: what ``train_adapter`` unfreezes, but
        for shared modules that stay fixed (VeRA's random projections)."""
        return placement.parameters(self, name)

    def get_input_embeddings(self) -> nn.Module:
        """The module embedding the input tokens (transformers' name), to which a masked-LM head's decoder is tied;
        a model with such heads defines it."""
        raise TypeError(f"{type(self).__name__} does not say which module embeds its tokens; define "
                        "get_input_embeddings() to use masked-LM heads.")

    def embedding_site(self) -> nn.Module:
        """The site after the embeddings (``EmbeddingSite``), where invertible adapters sit."""
        return placement.embedding_site(self)

    def merged_adapters(self) -> set[str]:
        """The adapters folded into the model's weights by ``merge_adapter``."""
        return placement.merged(self)

    # ---- activation and training ----------------------------------------------------------------------------

    @property
    def active_adapters(self) -> Block | None:
        """The active setup as a composition block (a single adapter ``"a"`` is ``Stack("a")``), or None; assigning
        to it is ``set_active_adapters``."""
        return self.plan.setup

    @active_adapters.setter
    def active_adapters(self, setup: str | Block | Sequence | None) -> None:
        self.set_active_adapters(setup)

    @mutation
    def set_active_adapters(self, setup: str | Block | Sequence | None,
                            skip_layers: Sequence[int] | None = None) -> None:
        """Activate ``setup``: an adapter or a composition of adapters (``Stack``, ``Fuse``, ``Split``, ``BatchSplit``,
        ``Parallel``, ``Average``; ``"a,b"`` and ``["a", "b"]`` mean ``Stack("a", "b")``), or none (None).

        ``skip_layers`` (AdapterDrop, as AdapterHub) lists layers whose adapters do not run, until the next call;
        training with a fresh random choice per step is AdapterDrop's robust training. The head named after the
        setup's last adapter becomes active; for ``Parallel`` (and a ``BatchSplit`` whose every branch has a head)
        each branch gets its own head. Nothing changes when the setup is invalid.
        """
        block = parse_setup(setup)
        skipped = self._layer_indices(skip_layers or (), "skip_layers")
        heads_of = None if block is None else head_setup(block)
        branch_heads = heads_of if isinstance(heads_of, Block) and all(h in self.heads for h in heads_of) else None
        self._install(compile_plan(self, block, branch_heads, skip_layers=skipped))
        if not isinstance(heads_of, Block) and (heads_of in self.heads or block is None):
            self._active_head = heads_of

    @property
    def active_head(self) -> str | list[str] | Block | None:
        """The head the output goes through: a head name, the list of a ``Parallel`` setup's heads (one per branch),
        a ``BatchSplit`` of head names (one per slice of the batch), or None, as AdapterHub gives it; assigning to it
        is ``set_active_head``."""
        heads_of = self.plan.branch_heads
        return self._active_head if heads_of is None else list(heads_of) if isinstance(heads_of, Parallel) else heads_of

    @active_head.setter
    def active_head(self, setup: str | Sequence[str] | Block | None) -> None:
        self.set_active_head(setup)

    @mutation
    def set_active_head(self, setup: str | Sequence[str] | Block | None) -> None:
        """Make ``setup`` the active head: a head name (None or ``""``: no head), a ``Parallel`` or ``BatchSplit`` of
        head names, or a list of them (one name: that head; several: ``Parallel``), as AdapterHub's ``active_head``.
        The adapter setup stays; a setup whose branches disagree with the heads is refused at the forward."""
        setup = as_head_setup(setup)
        for head in head_names(setup):
            if head:
                heads.check_known(self, head)
        if isinstance(setup, Block):
            self._install(compile_plan(self, self.plan.setup, setup))
        else:
            if self.plan.branch_heads is not None:
                self._install(compile_plan(self, self.plan.setup))
            self._active_head = setup

    @mutation
    def freeze_model(self, freeze: bool = True) -> None:
        """Freeze every parameter of the model, adapters and heads included; ``freeze`` False unfreezes them all."""
        for parameter in self.parameters():
            parameter.requires_grad_(not freeze)
        self.model_frozen = freeze

    @mutation
    def train_adapter(self, setup: str | Block | Sequence, train_embeddings: bool = False) -> None:
        """Train mode, everything frozen but the adapters of ``setup`` (as ``set_active_adapters`` takes it) and
        their heads (a decoder tied to the word embeddings stays frozen with them), and ``setup`` active; merged
        adapters are refused. ``train_embeddings`` trains the word embeddings too (AdapterHub's)."""
        block = parse_setup(setup)
        names = () if block is None else block.flatten()
        for name in names:
            placement.check_known(self, name)
        merged = sorted(set(names) & self.merged_adapters())
        if merged:
            raise ValueError(f"adapters {merged} are merged into the weights; training them would train the base "
                             "weights. reset_adapter() first.")
        self.set_active_adapters(block)
        self.train()
        self.freeze_model(True)
        for name in names:
            for parameter in placement.trainable(self, name):
                parameter.requires_grad_(True)
            if name in self.heads:
                heads.train(self, name)
        if train_embeddings:
            self.get_input_embeddings().requires_grad_(True)

    def _active_names(self) -> tuple[str, ...]:
        return () if self.plan.setup is None else self.plan.setup.flatten()

    def _layer_indices(self, layers: Sequence[int], argument: str) -> frozenset[int]:
        """``layers`` as a set of this model's layer indices, or a ValueError naming those that are not."""
        count = len(self.layers)
        wrong = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count]
        if wrong:
            raise ValueError(f"{argument} holds {wrong}, which are not layer indices of this model (0...{count - 1}).")
        return frozenset(layers)

    def _install(self, plan: Plan, change: Callable[[], None] | None = None) -> None:
        """Make ``plan`` the one forwards run, once no forward is running; ``change`` (rewriting weights the plan
        accounts for) runs in the same moment, so no forward sees one without the other."""
        with guard(self).changing():
            if change is not None:
                change()
            plan.install()
            self.plan = plan

    def _replug_or_activate(self, setup: str | Block | None) -> None:
        """After attaching something: activate ``setup`` if given, else compile the active setup again."""
        if setup is not None:
            self.set_active_adapters(setup)
        else:
            self._replug()

    def _replug(self) -> None:
        """Compile the active setup again: the adapters, merges or fusions its sites run have changed."""
        self._install(compile_plan(self, self.plan.setup, self.plan.branch_heads))

    # ---- running (what models/ calls) -----------------------------------------------------------------------

    def run_adapters(self, encode: Callable[..., Any], args: tuple, kwargs: dict[str, Any],
                     output_adapter_gating_scores: bool = False, output_adapter_fusion_attentions: bool = False,
                     adapter_names: Sequence[str | None] | None = None,
                     task_ids: Tensor | Sequence[int | str] | None = None) -> Any:
        """Run the model's ``encode`` on ``args`` and ``kwargs`` under the active setup, or with one adapter per example
        (``adapter_names``, None: the plain model; ``task_ids``: each example's task in a MultiTask setup), attaching
        gate values (``output_adapter_gating_scores``) and fusion attentions (``output_adapter_fusion_attentions``) to
        the output when asked (forward.py)."""
        return forward.run(self, encode, args, kwargs, output_adapter_gating_scores,
                           output_adapter_fusion_attentions, adapter_names, task_ids)

    def unpadded(self) -> bool:
        """Whether this forward may run a padded batch on its real tokens only: ``unpad`` is on, the running setup
        acts on each token alone, and no fusion attentions are being recorded. Outputs are then zeros at padded
        positions (transformers' are not)."""
        return self.unpad and self.plan.token_wise and not self.recorder.keeps_padding

    def apply_active_head(self, out: Any, model_head: nn.Module | None) -> Any:
        """``out`` with the logits of the active adapter head, else of the model's own head (``model_head``); a head
        that reads forward inputs of its own runs after the encoder instead (forward.py)."""
        head = forward.current_head(self, model_head)
        return out if head is None or forward.reads_inputs(head) else forward.apply_head(self, out, head)

    # ---- fusion -----------------------------------------------------------------------------------------------

    @mutation
    def add_adapter_fusion(self, adapter_names: Fuse | Sequence[str] | str,
                           config: str | dict | AdapterFusionConfig | None = None, name: str | None = None,
                           overwrite_ok: bool = False, set_active: bool = False) -> None:
        """Add AdapterFusion layers over the bottleneck adapters ``adapter_names`` (a ``Fuse``, a list or ``"a,b"``)
        at every residual site where they all sit; ``config`` is ``"dynamic"`` (default), ``"static"``, a dict of
        AdapterFusionConfig fields or a config. ``name`` names the fusion (default: the adapter names joined by
        commas); replacing a fusion needs ``overwrite_ok``; ``set_active`` activates it."""
        fuse = as_fuse(adapter_names, name)
        config = AdapterFusionConfig.load(config)
        for adapter in fuse.flatten():
            placement.check_known(self, adapter)
        if fuse.name in self.fusion_configs and not overwrite_ok:
            raise ValueError(f"a fusion named {fuse.name!r} exists; pass overwrite_ok=True to replace it.")
        fusion.attach(self, fuse, config, fusion.build(self, fuse, config))
        self._replug_or_activate(fuse if set_active else None)

    @mutation
    def delete_adapter_fusion(self, adapter_names: Fuse | Sequence[str] | str) -> None:
        """Remove the layers of the fusion ``adapter_names`` names (as ``add_adapter_fusion`` takes them); an active
        fusion must be deactivated first."""
        name = as_fuse(adapter_names).name
        fusion.check(self, name)
        if name in fusion_names(self.active_adapters):
            raise ValueError(f"fusion {name!r} is active ({self.active_adapters!r}); deactivate it first.")
        fusion.remove(self, name)
        self._replug()

    def fusion_layers(self, name: str) -> Iterator[tuple[Site, nn.Module]]:
        """(site, fusion layer) for every layer of fusion ``name``."""
        return fusion.layers(self, name)

    def fusion_state(self, name: str) -> dict[str, Tensor]:
        """Fusion ``name``'s tensors keyed by path in the model with the fusion name left out."""
        return fusion.state(self, name)

    @mutation
    def train_adapter_fusion(self, setup: Fuse | Block | Sequence | str, unfreeze_adapters: bool = False) -> None:
        """Train mode, everything frozen but the fusion layers of ``setup`` (a composition holding a ``Fuse``;
        ``"a,b"`` is ``Fuse("a", "b")``), its adapters with ``unfreeze_adapters``, and the active heads; the setup
        becomes active."""
        block = parse_setup(as_fuse(setup) if isinstance(setup, str) else setup)
        fusions = fusion_names(block)
        if not fusions:
            raise ValueError(f"{block!r} holds no Fuse block; train_adapter_fusion trains fusion layers.")
        for name in fusions:
            fusion.check(self, name)
        self.set_active_adapters(block)
        self.train()
        self.freeze_model(True)
        fusion.train(self, block, unfreeze_adapters)
        for head in (*(self.plan.branch_heads or ()), self._active_head):
            if head is not None:
                heads.train(self, head)

    def fusion_regularization_loss(self) -> Tensor | None:
        """AdapterHub's fusion regulariser summed over every trainable fusion layer that asks for it, or None."""
        return fusion.regularization_loss(self)

    def save_adapter_fusion(self, directory: str | os.PathLike, adapter_names: Fuse | Sequence[str] | str,
                            with_head: bool | str = False, format: str | None = None,
                            use_safetensors: bool = False) -> None:
        """Write fusion ``adapter_names``'s layers (and the head named after it, or ``with_head``) into ``directory``
        atomically in ``format`` ``"peftcore"`` or ``"adapterhub"`` (safetensors with ``use_safetensors``; default:
        the class's ``adapter_file_format``)."""
        name = as_fuse(adapter_names).name
        fusion.check(self, name)
        interop.save_fusion(self, directory, name, with_head, format or self.adapter_file_format, use_safetensors)

    @mutation
    def load_adapter_fusion(self, directory: str | os.PathLike, load_as: str | None = None,
                            set_active: bool = False, with_head: bool = True) -> str:
        """Load the fusion in ``directory`` (ours or AdapterHub's; with ``with_head`` its head) over adapters loaded,
        both named ``load_as`` if given, activated with ``set_active``; returns the fusion's name."""
        fuse = interop.load_fusion(self, directory, load_as, with_head, set_active)
        self._replug_or_activate(fuse if set_active else None)
        return fuse.name

    # ---- merging, averaging, ejecting ---------------------------------------------------------------------------

    @mutation
    def merge_adapter(self, name: str) -> None:
        """Fold LoRA or (IA)^3 adapter ``name`` into the weights it adapts: inference at the plain model's speed.

        The merged adapter acts whether or not it is active; ``reset_adapter`` restores the weights exactly.
        """
        placed = merging.check_merge(self, name)
        merged = self.merged_adapters() | {name}
        self._install(compile_plan(self, self.plan.setup, self.plan.branch_heads, merged=merged),
                      lambda: merging.merge(placed))

    @mutation
    def reset_adapter(self, name: str | None = None) -> None:
        """Undo ``merge_adapter`` for one adapter, or for every merged adapter when ``name`` is None."""
        names = merging.check_reset(self, name)
        merged = self.merged_adapters() - names
        self._install(compile_plan(self, self.plan.setup, self.plan.branch_heads, merged=merged),
                      lambda: merging.reset(self, names))

    @mutation
    def average_adapter(self, adapter_name: str, adapter_list: Sequence[str], weights: Sequence[float] | None = None,
                        normalize_weights: bool = True, overwrite_ok: bool = False, set_active: bool = False,
                        combine_strategy: str = "linear", svd_rank: int | None = None) -> None:
        """A new adapter ``adapter_name``: the weighted average of the adapters ``adapter_list``, of one config.

        ``weights`` (default: equal) are divided by their sum unless ``normalize_weights`` is False.
        ``combine_strategy``: ``"linear"`` averages every tensor; for LoRA also ``"lora_linear_only_negate_b"``
        (A by |w|, B by w; Zhang et al., 2023) and ``"lora_delta_w_svd"`` (the weighted sum of the updates
        s·B·A, cut to rank ``svd_rank`` by SVD). ``overwrite_ok`` and ``set_active`` as in ``add_adapter``.
        """
        check_unshared(self, adapter_name)
        merging.average(self, adapter_name, adapter_list, weights, normalize_weights, overwrite_ok, combine_strategy,
                        svd_rank)
        self._replug_or_activate(adapter_name if set_active else None)

    @mutation
    def eject_prefix_tuning(self, name: str) -> None:
        """Replace prefix-tuning adapter ``name``'s reparameterising MLP by the prefixes it computes (``flat=True``).

        Outputs stay the same; the adapter gets smaller and no longer trains through the MLP. Saving afterwards
        writes a flat adapter that reloads as one.
        """
        merging.eject(self, name)
        self._replug()

    # ---- summary ------------------------------------------------------------------------------------------------

    def base_parameter_count(self) -> int:
        """Parameters of the encoder alone: no adapters, no heads (AdapterHub's base_model count)."""
        return summary.base_parameter_count(self)

    def adapter_summary(self, as_dict: bool = False) -> str | list[dict[str, Any]]:
        """AdapterHub's table: name, architecture, #param, %param (of the base model), active, train; one dict per
        row with ``as_dict``."""
        return summary.rows(self) if as_dict else summary.table(self)

    # ---- save and load ------------------------------------------------------------------------------------------

    def save_adapter(self, directory: str | os.PathLike, name: str, with_head: bool = True,
                     format: str | None = None, use_safetensors: bool = False) -> None:
        """Write adapter ``name`` (and with ``with_head`` the head of the same name) into ``directory`` atomically in
        a ``format``: ``"peftcore"`` writes ``adapter_config.json`` + ``adapter_model.safetensors``; ``"adapterhub"``
        AdapterHub's layout (its safetensors files with ``use_safetensors``, else its pickles); ``"peft"`` HF PEFT's
        (LoRA and (IA)^3), which ``peft.PeftModel.from_pretrained`` loads. Default: the class's
        ``adapter_file_format`` (ours; ``peftcore.adapters``' classes: AdapterHub's)."""
        placement.check_known(self, name)
        interop.save_adapter(self, directory, name, with_head, format or self.adapter_file_format, use_safetensors)

    def save_all_adapters(self, directory: str | os.PathLike, with_head: bool = True, format: str | None = None,
                          use_safetensors: bool = False) -> None:
        """``save_adapter`` for every adapter, each into the subdirectory of ``directory`` named after it, with its
        head when ``with_head``, in ``format`` (with ``use_safetensors``) as ``save_adapter`` takes them."""
        for name in self.adapter_configs:
            self.save_adapter(os.path.join(directory, name), name, with_head, format, use_safetensors)

    def save_adapter_setup(self, directory: str | os.PathLike, adapter_setup: str | Block | Sequence,
                           head_setup: str | Sequence[str] | Block | None = None, use_safetensors: bool = False,
                           format: str | None = None) -> None:
        """AdapterHub's setup directory ``directory``: every adapter of ``adapter_setup`` (with its head), its fusions
        and the heads of ``head_setup``, each in a subdirectory named after it, and ``adapter_setup.json``;
        ``format`` and ``use_safetensors`` as ``save_adapter`` takes them."""
        setups.save(self, directory, parse_setup(adapter_setup), as_head_setup(head_setup),
                    format or self.adapter_file_format, use_safetensors)

    @mutation
    def load_adapter_setup(self, directory: str | os.PathLike, set_active: bool = False,
                           use_safetensors: bool = False) -> tuple[Block, str | Block | list | None]:
        """Load what ``save_adapter_setup`` (ours or AdapterHub's) wrote into ``directory``, all of it or nothing;
        with ``set_active`` the setup and its heads become active. Returns (setup, head setup). ``use_safetensors``
        is AdapterHub's: a directory holds one form of each file, which is read."""
        setup, head_setup = setups.load(self, directory)
        self._replug_or_activate(setup if set_active else None)
        if set_active and head_setup is not None:
            self.active_head = head_setup
        return setup, head_setup

    def write_adapters_into(self, directory: Path, merged: set[str]) -> None:
        """Every adapter, head and fusion attached, which adapters are ``merged`` (the merges may be undone while
        the weights are written) and the active setup, into ``directory``: what a full-model save in our format
        writes beside the model; ``read_adapters_from`` brings them back."""
        interop.write_setup(self, directory, merged)

    @mutation
    def read_adapters_from(self, directory: Path) -> None:
        """Attach what ``write_adapters_into`` wrote into ``directory``, merge what was merged and activate what was
        active."""
        interop.restore_setup(self, directory)

    def merges_undone(self) -> AbstractContextManager[None]:
        """The base weights as they were before any ``merge_adapter``, for the span of the block (a full-model save
        writes them so, and the merges beside them); the merges are redone, bit for bit, afterwards."""
        return merging.undone(self)

    @mutation
    def load_adapter(self, directory: str | os.PathLike, load_as: str | None = None, set_active: bool = False,
                     with_head: bool = True, loading_info: dict | None = None, strict: bool = True) -> str:
        """Load the adapter in ``directory`` (ours, AdapterHub's or HF PEFT's), named ``load_as`` if given, with the
        head saved beside it when ``with_head``, activated with ``set_active``; everything is checked before the model
        changes, and a file that does not fit exactly is refused. Returns the adapter's name.

        ``strict`` False is AdapterHub's loading, the default of ``peftcore.adapters``' classes: tensors the file
        lacks keep their fresh values and tensors the adapter lacks are ignored (shapes must still fit), both listed
        in ``loading_info`` (a dict: ``missing_keys``, ``unexpected_keys``, which a strict load leaves empty)."""
        name = interop.load_adapter(self, directory, load_as, with_head, strict, loading_info)
        self._replug_or_activate(name if set_active else None)
        return name
