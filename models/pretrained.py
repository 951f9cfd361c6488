"""``PretrainedEncoder``: what every architecture shares — the layer loop and the pooler/head step of its forward,
loading HF or peftcore checkpoints and exporting to either, answering HF-layout questions from its ``Architecture``
record, weight initialisation and input checks."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from peftcore.io import resolve_directory
from peftcore.model import AdapterModelMixin
from peftcore.models import convert
from peftcore.models.compiled import compiles, run_compiled
from peftcore.models.convert.architecture import Architecture, HFModule
from peftcore.models.convert.keymap import ConversionError, check_fit, hf_to_ours, ours_to_hf
from peftcore.models.layers import EncoderConfig, EncoderOutput, Padding
from peftcore.sites import CURRENT_PADDING, MaskedLMHead, SiteLinear, task_loss

Model = TypeVar("Model", bound="PretrainedEncoder")


class PretrainedEncoder(AdapterModelMixin, nn.Module):
    """Base class of every model: subclasses set the class attributes and build their modules from ``config``, an
    instance of their ``config_class``.

    Subclasses define ``embeddings`` (ending in an EmbeddingSite), ``prompt`` (the PromptSite after them,
    ``layers.prompt_site``), ``layers`` (each called as ``layer(x, padding, output_attentions, **context)``),
    ``pooler`` (or None) and ``head`` (or None), and an ``encode`` (their forward) that computes the embeddings, runs
    the prompt site, builds the padding from the mask it returns, then ends in ``self.run_layers``.
    """

    config_class: ClassVar[type[EncoderConfig]]
    architecture: ClassVar[Architecture]  # the HF side: key table, transformers classes, config renames, site paths
    head_classes: ClassVar[Mapping[str, type[nn.Module]]]
    checkpoint_format: ClassVar[str] = "hf"  # what save_pretrained writes unless told
    tokenizer: Callable[[str], Mapping[str, Any]] | None = None  # text -> {"input_ids": ...}; read by embed_text

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}.")
        self.config = config
        self.norm: nn.Module | None = None  # a final LayerNorm on the last hidden state: pre-LN models (ViT) set one
        self.gradient_checkpointing = False  # recompute each layer in the backward pass (gradient_checkpointing_enable)
        self.compile_packed = False  # run the layers of packed batches under torch.compile (models/compiled.py)
        self.init_adapters()

    def forward(self, *args: Any, output_adapter_gating_scores: bool = False,
                output_adapter_fusion_attentions: bool = False, adapter_names: list[str | None] | None = None,
                task_ids: Tensor | list[int | str] | None = None, **kwargs: Any) -> EncoderOutput | list[EncoderOutput]:
        """The model's ``encode`` (see there for the inputs) under the active adapter setup.

        ``adapter_names`` names one adapter per example (None: the plain model) for a mixed batch; ``task_ids``
        gives each example's task (index or adapter name) for a MultiTask setup;
        ``output_adapter_gating_scores`` / ``output_adapter_fusion_attentions`` also return UniPELT gate values and
        AdapterFusion attentions. A Parallel setup whose branches have heads returns one output per branch (without:
        one output, the batch's copies one after the other, as AdapterHub).
        ``labels`` (question answering: ``start_positions`` and ``end_positions``) among the keyword arguments set
        the output's ``loss``: that of the head whose logits it carries (``head_loss`` for the model's own head).
        """
        return self.run_adapters(self.encode, args, kwargs, output_adapter_gating_scores,
                                 output_adapter_fusion_attentions, adapter_names, task_ids)

    def build_head(self) -> nn.Module | None:
        """The configured head, tied to the word embeddings when it is a masked-LM head and the config says so."""
        head = self.head_classes[self.config.head](self.config) if self.config.head else None
        self.tie_weights(head)
        return head

    def head_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The loss of the model's own head's ``logits`` against ``labels``, as its transformers task class computes
        it: the span loss for question answering, cross-entropy (-100 ignored) for token classification and masked
        LM, and for sequence and image classification by ``config.problem_type`` or, when None, regression for one
        label, single-label classification for integer ``labels``, multi-label classification otherwise."""
        head, problem = self.config.head, self.config.problem_type
        if head == "question_answering":
            problem = "span"
        elif head in ("token_classification", "masked_lm", "multiple_choice"):
            problem = "single_label_classification"
        elif problem is None:
            problem = ("regression" if self.config.num_labels == 1 else "single_label_classification"
                       if labels.dtype in (torch.long, torch.int) else "multi_label_classification")
        return task_loss(problem, logits, labels)

    def embed_text(self, text: str) -> Tensor:
        """The word embeddings (n, E) of ``text``'s tokens, special tokens included, by the model's ``tokenizer``
        (set it: ``model.tokenizer = Tokenizer.from_pretrained(checkpoint_dir)``): where prompt tuning's
        ``prompt_init="from_string"`` starts (AdapterHub's reads ``config.tokenizer_name_or_path``)."""
        if self.tokenizer is None:
            raise ValueError("prompt_init='from_string' tokenizes prompt_init_text with the model's tokenizer, and "
                             "the model has none; set model.tokenizer = Tokenizer.from_pretrained(checkpoint_dir) "
                             "(peftcore.models.Tokenizer, or a transformers tokenizer) first.")
        embeddings = self.get_input_embeddings()
        ids = torch.as_tensor(self.tokenizer(text)["input_ids"]).reshape(-1)  # (n,)
        with torch.no_grad():
            return embeddings(ids.to(embeddings.weight.device)).float()  # (n, E)

    def get_input_embeddings(self) -> nn.Module:
        """The module that embeds the input tokens (transformers' name): the word embeddings of a text model."""
        return self.embeddings.word

    def tie_weights(self, head: nn.Module | None) -> None:
        """Make a masked-LM ``head``'s decoder weight the word embeddings' own parameter, when the config ties them;
        any other ``head`` (or None) is left as it is."""
        if isinstance(head, MaskedLMHead) and self.config.tie_word_embeddings:
            head.decoder.weight = self.get_input_embeddings().weight

    def init_weights(self, module: nn.Module) -> None:
        """transformers' initialisation of one ``module`` (for ``self.apply``): N(0, initializer_range) weights of
        Linear and Embedding (padding row zero), zero biases, unit LayerNorms; other modules are left as they are."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def run_layers(self, x: Tensor, padding: Padding, output_hidden_states: bool, output_attentions: bool,
                   token_positions: Tensor | None = None, **layer_context: Any) -> EncoderOutput:
        """The layers on the embeddings ``x`` (B, T, C), then ``norm`` if any and ``finish``: every model's loop.

        A padded batch runs packed, as ``padding`` says; with ``output_hidden_states`` the hidden states are returned,
        padded back to (B, T, C), and with ``output_attentions`` each layer's attention probabilities.
        ``token_positions`` (from the prompt site) go into the output, which ``forward`` cuts back to the input's
        tokens; ``layer_context`` goes to every layer (DeBERTa's relative positions).
        """
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        h = padding.pack(x)  # (1, N, C) when unpadded
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        previous, CURRENT_PADDING.padding = CURRENT_PADDING.padding, padding  # for gates over real tokens
        try:
            for index, (layer, returned) in enumerate(self.layer_schedule()):
                run = partial(self.run_checkpointed, layer) if checkpointing else layer
                if self.compile_packed and not checkpointing and compiles(layer, padding, output_attentions):
                    run = partial(run_compiled, layer)
                h, probs = run(h, padding, output_attentions, **layer_context)
                if index == 0:
                    h = self.first_layer_output(x, h, padding)
                if output_hidden_states and returned:
                    hidden_states.append(padding.pad(h))
                if output_attentions:
                    attentions.append(probs)
        finally:
            CURRENT_PADDING.padding = previous
        last = padding.pad(h)  # (B, T, C)
        out = self.finish(last if self.norm is None else self.norm(last), hidden_states, attentions, padding)
        out.token_positions = token_positions
        return out

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Mapping[str, Any] | None = None) -> None:
        """Keep only each layer's input in training forwards and recompute the layer in the backward pass: activation
        memory of one layer instead of all, for about one more forward of time (transformers' method of that name).

        The recomputation runs ``torch.utils.checkpoint`` without reentrance, with the RNG state of the forward (the
        same dropout masks) and under the adapter setup that forward ran (``run_checkpointed``), so the gradients are
        those without checkpointing. ``gradient_checkpointing_kwargs`` is transformers' argument: only
        ``use_reentrant=False`` (or nothing) is accepted.
        """
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False) or kwargs:
            raise ValueError(f"gradient_checkpointing_kwargs={gradient_checkpointing_kwargs!r}: peftcore checkpoints "
                             "without reentrance always (use_reentrant=False); pass nothing.")
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Keep every layer's activations for the backward pass again (the default)."""
        self.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether training forwards recompute each layer in the backward pass (transformers' name)."""
        return self.gradient_checkpointing

    def layer_schedule(self) -> Iterable[tuple[nn.Module, bool]]:
        """The layers in the order they run, each with whether its output is one of the hidden states a forward
        returns: each layer once, every output returned, but in ALBERT, which runs its shared layers several times."""
        return [(layer, True) for layer in self.layers]

    def first_layer_output(self, embedded: Tensor, h: Tensor, padding: Padding) -> Tensor:
        """The first layer's output ``h`` (packed as ``padding`` says) as the second layer reads it: unchanged but in
        DeBERTa v2, which joins a convolution over the ``embedded`` input (B, T, C) to it."""
        return h

    def finish(self, x: Tensor, hidden_states: list[Tensor] | None, attentions: list[Tensor] | None,
               padding: Padding | None = None) -> EncoderOutput:
        """Pooling and head on the last hidden state ``x`` (B, T, C) of a batch with ``padding``: the active adapter
        head if any, else the model's own head; the output carries ``hidden_states`` and ``attentions`` as tuples
        (None: not asked for)."""
        pooled = self.pool(x, padding)
        out = EncoderOutput(x, pooled, tuple(hidden_states) if hidden_states is not None else None,
                            tuple(attentions) if attentions is not None else None)
        return self.apply_active_head(out, self.head)

    def pool(self, x: Tensor, padding: Padding | None) -> Tensor | None:
        """The pooled output (B, C) of the last hidden state ``x``: the pooler's (None without one). ModernBERT pools
        as its sequence classifier says, over the real tokens ``padding`` names."""
        return self.pooler(x) if self.pooler is not None else None

    def check_ids(self, input_ids: Tensor | None, inputs_embeds: Tensor | None, attention_mask: Tensor | None,
                  token_type_ids: Tensor | None, max_length: int, position_ids: Tensor | None = None
                  ) -> tuple[int, int]:
        """Validate the text inputs of a forward and return (B, T); every message says what to pass instead.

        Exactly one of ``input_ids`` (B, T) and ``inputs_embeds`` (B, T, C); ``attention_mask`` (0/1) and
        ``token_type_ids`` of the same (B, T); at most ``max_length`` tokens; ids, ``position_ids`` included, within
        the model's tables.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds.")
        shape = tuple(input_ids.shape) if input_ids is not None else tuple(inputs_embeds.shape[:-1])
        if len(shape) != 2:
            raise ValueError(f"input_ids must be (batch, tokens), got shape {shape}; add a batch dimension with "
                             "unsqueeze(0) for a single sequence.")
        if inputs_embeds is not None and inputs_embeds.shape[-1] != self.config.embedding_width:
            raise ValueError(f"inputs_embeds has width {inputs_embeds.shape[-1]}, the model's embeddings have "
                             f"{self.config.embedding_width}.")
        for name, tensor in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, input_ids has {shape}; they must match.")
        if 0 in shape:
            raise ValueError(f"the input is empty (shape {shape}): pass at least one sequence of at least one token.")
        if shape[1] > max_length:
            raise ValueError(f"sequence length {shape[1]} exceeds the {max_length} positions this model has "
                             f"(max_position_embeddings={self.config.max_position_embeddings}); truncate the input.")
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing()):  # each check reads a value back from the
            # device; a trace (ONNX export) would record the values of its example
            config = self.config
            for name, tensor, size, hint in (
                    ("input_ids", input_ids, config.vocab_size, "was the text tokenized for another model?"),
                    ("token_type_ids", token_type_ids, config.type_vocab_size, "the model's token types"),
                    ("position_ids", position_ids, config.max_position_embeddings, "the model's positions"),
                    ("attention_mask", attention_mask, 2, "use 1 for real tokens and 0 for padding")):
                check_values(name, tensor, size, hint)
        return shape

    @classmethod
    def from_config(cls: type[Model], config: EncoderConfig | Mapping[str, Any] | Any, **overrides: Any) -> Model:
        """A freshly initialised model from ``config`` (as ``config_from`` takes it) with ``overrides`` on top."""
        return cls(cls.config_from(config, **overrides))

    @classmethod
    def config_from(cls, config: EncoderConfig | Mapping[str, Any] | Any, **overrides: Any) -> EncoderConfig:
        """Our config from ``config``: one of ours, a transformers config.json dict, or an object whose
        ``to_diff_dict()`` or ``to_dict()`` gives one (a transformers config object, read without importing
        transformers). ``overrides`` replace fields, e.g. ``head="sequence_classification"`` (the pooler then
        follows that head's transformers class)."""
        if "head" in overrides and "add_pooling_layer" not in overrides:
            overrides["add_pooling_layer"] = cls.architecture.pooler_for(overrides["head"])
        if isinstance(config, cls.config_class):
            return dataclasses.replace(config, **overrides)
        to_dict = getattr(config, "to_diff_dict", None) or getattr(config, "to_dict", None)  # the first is what
        # transformers writes into config.json: the generic fields it leaves out would not fit ours (pad_token_id None)
        raw = dict(config) if isinstance(config, Mapping) else None if to_dict is None else to_dict()
        if raw is None:
            raise TypeError(f"{cls.__name__} takes a {cls.config_class.__name__}, a config.json dict or a transformers "
                            f"config, got {type(config).__name__}.")
        convert.check_model_type(raw, cls.config_class.model_type, cls.__name__)
        return config_from_dict(cls.config_class, convert.config_kwargs_from_hf(raw, cls.config_class,
                                                                                cls.architecture), overrides)

    @classmethod
    def from_pretrained(cls: type[Model], path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                        on_file: Callable[[Path], None] | None = None, **overrides: Any) -> Model:
        """Load the transformers checkpoint directory ``path``, or one in our format (with the adapters, heads and
        fusions saved beside it), into this model class, in ``dtype`` (default float32) and eval mode. A Hugging Face
        Hub repo id ("org/name") that is no local path loads the repo's snapshot (``peftcore.io.resolve_directory``).

        ``overrides`` replace config fields, e.g. ``head="sequence_classification", num_labels=3`` to start a
        classifier from a base checkpoint (the pooler follows what that head's transformers class has): weights
        the checkpoint lacks (head, pooler) keep their fresh initialisation and a warning names them. Any other
        missing, unexpected or mis-shaped tensor is an error.
        ``on_file`` is called with each weights file before it is read.
        """
        path = resolve_directory(path, "checkpoint")
        raw = convert.read_config(path)
        convert.check_model_type(raw, cls.config_class.model_type, cls.__name__)
        if "head" in overrides and "add_pooling_layer" not in overrides:
            overrides["add_pooling_layer"] = cls.architecture.pooler_for(overrides["head"])
        if convert.is_native(raw):
            config = config_from_dict(cls.config_class, raw["config"], overrides)
        else:
            kwargs = convert.config_kwargs_from_hf(raw, cls.config_class, cls.architecture)
            config = config_from_dict(cls.config_class, kwargs, overrides)
        weights = convert.read_weights(path, on_file)
        broken = sorted(key for key, t in weights.items() if t.is_floating_point() and not t.isfinite().all())
        if broken:
            raise ConversionError(f"{os.fspath(path)!r} holds tensors with NaN or infinite values: {broken[:10]}; the "
                                  "checkpoint is damaged (or was saved mid-divergence).")
        with torch.device("meta"):  # shapes only: random init of what the checkpoint overwrites would dominate
            model = cls(config)
        expected = {key: tuple(t.shape) for key, t in model.base_state_dict().items()}
        if convert.is_native(raw):
            state = check_native(weights, expected, cls.__name__)
        else:
            converted = hf_to_ours(cls.architecture.keymap, weights, expected, model.aliases(), config, cls.__name__)
            state = converted.state
            if converted.newly_initialized:
                warnings.warn(f"{cls.__name__}: the checkpoint has no {converted.newly_initialized}; they are freshly "
                              "initialised and need training.", stacklevel=2)
        model.materialize(state, dtype)
        model.to(dtype).eval()  # as transformers returns it; training code calls .train()
        if convert.is_native(raw):
            model.read_adapters_from(Path(path))
        return model

    def materialize(self, state: Mapping[str, Tensor], dtype: torch.dtype) -> None:
        """Fill a model built on the meta device, which skips initialising what the checkpoint overwrites:
        ``state``'s tensors become its parameters, and the modules of the keys ``state`` lacks (head, pooler) get
        fresh tensors from ``init_weights`` (the distributions of ``cls(config)``, not its draws for a given seed).

        Those modules are initialised first, so a checkpoint tensor always wins, as with ``load_state_dict`` into a
        built model. Checkpoint tensors are copied into contiguous ``dtype`` memory of their own: parameters never
        alias the file's memory map or each other, so in-place updates (merging LoRA) are safe.
        """
        lacking = {key.rpartition(".")[0] for key in self.base_state_dict() if key not in state}
        for name, module in self.named_modules():
            if name in lacking:
                module.to_empty(device="cpu", recurse=False)
                self.init_weights(module)
        self.load_state_dict({key: t.to(dtype, copy=True, memory_format=torch.contiguous_format)
                              for key, t in state.items()}, strict=False, assign=True)
        self.tie_weights(self.head)  # assign=True replaced the word embeddings' parameter the decoder shared
        left = [name for name, t in [*self.named_parameters(), *self.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"{type(self).__name__} has tensors that neither the checkpoint nor init_weights "
                               f"fill: {left}.")

    def head_state_from_hf(self, hf_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """An HF task head's tensors ``hf_state`` (e.g. AdapterHub's static head file) in our ``head.*`` key names;
        refused when this model has no head of its own."""
        if self.head is None:
            raise ValueError(f"the file holds a {self.config.model_type} task head but this model has none; load the "
                             "checkpoint with head=... first.")
        expected = {key: tuple(t.shape) for key, t in self.base_state_dict().items() if key.startswith("head.")}
        converted = hf_to_ours(self.architecture.keymap, hf_state, expected, self.aliases(), self.config,
                               type(self).__name__)
        if converted.newly_initialized:
            raise ConversionError(f"the head file lacks {converted.newly_initialized}.")
        return converted.state

    @property
    def hf_prefix(self) -> str:
        """The base model's key prefix in HF task checkpoints (``"bert."``); head keys sit at the top level."""
        return self.architecture.keymap.prefix

    @property
    def hf_base_class(self) -> str:
        """transformers' class of the base model (``"BertModel"``): the first the architecture record names."""
        return next(iter(self.architecture.hf_classes))

    def hf_site_path(self, site: str, layer: int | None) -> str | None:
        """Where AdapterHub attaches the method modules of ``site`` in ``layer``; None where this model has no place."""
        return self.architecture.site_path(site, layer, self.config)

    def hf_shared_path(self, shared_key: str) -> str | None:
        """Where AdapterHub keeps shared module ``shared_key`` on this architecture; None: the method's own path."""
        return self.architecture.shared_paths.get(shared_key)

    def hf_modules(self, with_prefix: bool) -> dict[str, HFModule]:
        """Every HF module with a weight (base under ``hf_prefix`` when ``with_prefix``, own head at the top level)."""
        linear_sites = {site.path: site.name for site in self.sites_found if isinstance(site.module, SiteLinear)}
        weights = set(self.state_dict(keep_vars=True))
        return self.architecture.hf_modules(self.config, len(self.layers), linear_sites, with_prefix,
                                            weights.__contains__)

    def hf_head_keys(self) -> dict[str, str | None]:
        """The HF key table of the model's own task head: HF key -> our ``head.*`` key or None; {} without a head."""
        return self.architecture.head_keys(self.config.head)

    def aliases(self) -> set[str]:
        """State-dict keys that name a parameter already listed under another key (tied weights)."""
        unique = {name for name, _ in self.named_parameters()} | {name for name, _ in self.named_buffers()}
        return set(self.state_dict(keep_vars=True)) - unique

    def base_state_dict(self) -> dict[str, Tensor]:
        """The model's own tensors, each once: no tied aliases, nothing of adapters, fusions or adapter heads."""
        aliases = self.aliases()
        return {key: t for key, t in self.state_dict().items() if key not in aliases and not is_adapter_key(key)}

    def save_pretrained(self, path: str | os.PathLike, *, format: str | None = None) -> None:
        """Write the model as checkpoint directory ``path`` in a ``format``: ``"peftcore"`` (ours) writes everything:
        the model, and beside it every adapter, head and fusion attached, the merges and the active setup, which
        ``from_pretrained`` brings back. ``"hf"`` writes what transformers loads: the model with merged adapters
        baked into its weights, and a warning naming what it leaves out. Default: the class's ``checkpoint_format``
        (``"hf"``; ``peftcore.adapters``' classes: ``"peftcore"``, as AdapterHub saves adapters with the model)."""
        model_type = self.config_class.model_type
        format = format or self.checkpoint_format
        if format == "hf":
            config = convert.config_to_hf(self.config, model_type, self.architecture)
            state = ours_to_hf(self.architecture.keymap, self.base_state_dict(), self.config)
            left_out = {"adapters": sorted(self.adapter_configs), "heads": sorted(self.heads),
                        "fusions": sorted(self.fusion_configs)}
            if any(left_out.values()):
                baked = sorted(self.merged_adapters())
                warnings.warn(f"format='hf' writes the base model only (merged adapters {baked} baked in); left out: "
                              f"{left_out}. Save with format='peftcore' to keep them, or save each with save_adapter.",
                              stacklevel=2)
            convert.write_checkpoint(path, config, state)
        elif format == "peftcore":
            merged = self.merged_adapters()
            with self.merges_undone():
                convert.write_checkpoint(path, convert.native_config(self.config, model_type),
                                         self.base_state_dict(), partial(self.write_adapters_into, merged=merged))
        else:
            raise ValueError(f"format={format!r} is not known; use 'hf' or 'peftcore'.")


def is_adapter_key(key: str) -> bool:
    """Whether state-dict key ``key`` belongs to an adapter, a fusion, an adapter head or what adapters share."""
    return any(part in f".{key}" for part in (".adapters.", ".fusions.", ".heads.", ".shared_parameters."))


def check_values(name: str, tensor: Tensor | None, size: int, hint: str) -> None:
    """Integer ids in ``tensor`` (None: nothing to check) inside [0, ``size``), or a 0/1 mask when ``name`` is
    ``"attention_mask"``; else a ValueError naming ``name``, the value found and ``hint``. ``size`` 0: a table the
    model does not have, whose ids it ignores (DeBERTa without token types)."""
    if tensor is None or size == 0:
        return
    if name != "attention_mask" and (tensor.is_floating_point() or tensor.dtype == torch.bool):
        raise ValueError(f"{name} are {tensor.dtype}; pass integer ids (torch.long).")
    values = tensor if name != "attention_mask" else tensor.to(torch.float32)
    low, high = values.min().item(), values.max().item()
    if name == "attention_mask" and not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f"attention_mask holds values other than 0 and 1 (from {low} to {high}); {hint}.")
    if low < 0 or high >= size:
        where = "the vocabulary " if name == "input_ids" else ""
        raise ValueError(f"{name} hold {int(low) if low < 0 else int(high)}, outside {where}[0, {size}); {hint}.")


def config_from_dict(config_class: type[EncoderConfig], values: Mapping[str, Any],
                     overrides: Mapping[str, Any]) -> EncoderConfig:
    """A ``config_class`` from the fields ``values`` with ``overrides`` on top; an unknown field is an error that
    lists the valid ones."""
    valid = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - valid) + sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"{config_class.__name__} has no field(s) {unknown}; valid fields: {sorted(valid)}.")
    return config_class(**{**values, **overrides})


def check_native(state: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], architecture: str
                 ) -> Mapping[str, Tensor]:
    """A peftcore-format ``state`` dict, which must hold exactly the ``expected`` keys with their shapes (errors name
    ``architecture``)."""
    check_fit(state, expected, architecture, sorted(set(state) - set(expected)), sorted(set(expected) - set(state)))
    return state
