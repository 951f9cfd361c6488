"""Hook points ("sites") that models build in and PEFT methods plug into.

A site is a submodule whose attribute path inside a layer is its site name: ``layers.3.attn.q`` is
site ``attn.q`` of layer 3, and its state-dict keys are those of a plain model. Every site holds

- ``adapters``: an ``nn.ModuleDict`` of every method module attached there, by adapter name, and
- ``plug``: the active composition as a plain callable, or ``None``.

peftcore attaches modules to ``adapters`` and, whenever activation or composition changes, pushes a
closure into ``plug``. Nothing is looked up during forward: an empty site costs one ``is None`` check.
``plug`` is never an ``nn.Module`` (it would register its tensors a second time).

To give your own model sites, build it from these classes (``SiteLinear`` for q/k/v, the attention output and
the FFN linears, ``ResidualSite`` for each residual-plus-norm, ``PrefixSite`` in attention, ``OutputSite`` on each
layer's output, one ``EmbeddingSite`` after the embeddings and one ``PromptSite`` after that) under the attribute names
of ``SITE_NAMES``, with the layers in a ``layers`` ``nn.ModuleList``. ``find_sites`` then finds them.

| site | where | who plugs in |
| --- | --- | --- |
| ``embeddings`` | the embedding output, and its inverse before an LM head | invertible adapters |
| ``prompt`` | after the embeddings: inserts positions into the sequence | prompt tuning |
| ``attn.{q,k,v,out}``, ``ffn.{intermediate,output}`` | the linears (``out``: attention's output) | LoRA, (IA)^3 |
| ``attn.prefix`` | keys and values inside self-attention | prefix tuning |
| ``attn.residual``, ``ffn.residual`` | each residual-plus-norm | bottleneck adapters, AdapterFusion |
| ``output`` | the layer's output, with the batch's padding | ReFT |
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# transformers' activation names, shared by the models and by the adapters that name an activation in their config
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "leakyrelu": F.leaky_relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}


class PaddingHolder(threading.local):
    """The ``Padding`` (models/layers.py) of the batch whose layers run in this thread, None outside them. A model's
    layer loop publishes it (``padding`` set before the layers, the previous value restored after), so that a gate
    averaging over real tokens only (methods/gating.py) finds each row's tokens. A plain per-thread attribute, which
    torch.compile traces. It is set in ``__init__`` (which runs in each thread on its first use), never read from a
    class default: torch.compile guards on whether the thread's dict holds it, and the first call's write broke the
    guard of a thread's second call (an AssertionError from dynamo)."""

    def __init__(self) -> None:
        self.padding: Any = None


CURRENT_PADDING = PaddingHolder()


class Activation(nn.Module):
    """Activation ``name`` as a module, for use inside nn.Sequential: one of ``ACTIVATIONS``, or ``f`` where given (a
    function, or a module whose parameters it learns: the submodule ``f``, where AdapterHub keeps it)."""

    def __init__(self, name: str, f: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        if f is None and name.lower() not in ACTIVATIONS:
            raise ValueError(f"activation {name!r} is not known; use one of {sorted(ACTIVATIONS)}.")
        self.name = name
        self.f = f or ACTIVATIONS[name.lower()]

    def forward(self, x: Tensor) -> Tensor:
        return self.f(x)

    def extra_repr(self) -> str:
        return self.name


SITE_NAMES = (
    "embeddings",
    "prompt",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.prefix",
    "attn.out",
    "attn.residual",
    "ffn.intermediate",
    "ffn.output",
    "ffn.residual",
    "output",
)


class SiteLinear(nn.Linear):
    """``nn.Linear`` that LoRA and (IA)^3 plug into. Exactly ``nn.Linear`` while nothing is active.

    ``plug(x, y)`` receives the layer input and the base output ``W x + b`` and returns the adapted output.
    ``splits_rows`` says that the plug runs different adapters on different batch rows (BatchSplit, Parallel,
    MultiTask, mixed batches): a caller passing one row for the whole batch (DeBERTa's relative embeddings)
    expands it to the batch first. ``shared_parameters`` holds the tensors that adapters here share
    (``share_parameters``), by group name; it comes first, so that ``named_parameters`` names a shared tensor there,
    as AdapterHub's LoRA layers do.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.shared_parameters = nn.ModuleDict()
        self.adapters = nn.ModuleDict()
        self.plug: Callable[[Tensor, Tensor], Tensor] | None = None
        self.splits_rows = False

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y if self.plug is None else self.plug(x, y)


class ResidualSite(nn.Module):
    """``h, residual -> norm(h + residual)``. Bottleneck adapters replace this step and may use the norm.

    ``norm`` is ``None`` for pre-LN models (ViT), where the step is a plain ``h + residual``. ``fusions`` holds the
    AdapterFusion layers that fuse adapters here, by fusion name.
    """

    def __init__(self, norm: nn.Module | None) -> None:
        super().__init__()
        self.norm = norm if norm is not None else nn.Identity()
        self.adapters = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        self.plug: Callable[[Tensor, Tensor, nn.Module], Tensor] | None = None

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.norm(h + residual) if self.plug is None else self.plug(h, residual, self.norm)


class PrefixSite(nn.Module):
    """``k, v, mask, x -> k, v, mask`` inside self-attention; prefix tuning prepends key/value vectors here.

    k and v are ``(B, H, T, D)``; mask is the additive attention mask ``(B, 1, 1|T, T)`` or None; x is the
    attention block's input ``(B, T, C)`` (a gate reads it). When the batch runs unpadded (setups whose gates, if
    any, average over real tokens only), x is the packed real tokens ``(1, N, C)``, also with ``(B, H, 0, D)`` keys
    and values when attention asks for each row's prefix alone. When active the plug returns ``(B, H, P+T, D)`` keys
    and values and a mask padded by ``P`` attendable columns.
    """

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.plug: Callable[..., tuple[Tensor, Tensor, Tensor | None]] | None = None

    def forward(self, k: Tensor, v: Tensor, mask: Tensor | None, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        return (k, v, mask) if self.plug is None else self.plug(k, v, mask, x)


class OutputSite(nn.Module):
    """``x, padding -> x`` on a layer's output, the identity while empty; ReFT intervenes here on chosen positions.

    x is ``(B, T, C)``, or the packed real tokens ``(1, N, C)`` when the batch runs unpadded; ``padding`` is the
    layers' ``Padding`` (models/layers.py), from which a plug reads each row's real tokens: its ``attention_mask``
    ``(B, T)`` (None: every token is real) and, packed, each row's count of tokens, ``lengths``, in a run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.plug: Callable[[Tensor, Any], Tensor] | None = None

    def forward(self, x: Tensor, padding: Any) -> Tensor:
        return x if self.plug is None else self.plug(x, padding)


class EmbeddingSite(nn.Module):
    """Identity on the embedding output while empty; invertible adapters plug in here.

    ``forward`` runs after the embedding block; ``inverse`` runs before a language-model head. ``width`` is that of
    the embeddings it sees (None: the model's hidden size), narrower in models that project their embeddings up
    after the site (ELECTRA, ALBERT).
    """

    def __init__(self, width: int | None = None) -> None:
        super().__init__()
        self.width = width
        self.adapters = nn.ModuleDict()
        self.plug: Callable[[Tensor], Tensor] | None = None
        self.inverse_plug: Callable[[Tensor], Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.plug is None else self.plug(x)

    def inverse(self, x: Tensor) -> Tensor:
        return x if self.inverse_plug is None else self.inverse_plug(x)


class PromptSite(nn.Module):
    """``x, attention_mask -> x, attention_mask, positions`` after the embeddings; prompt tuning inserts its soft
    prompt vectors into the sequence here. The identity (positions None) while empty.

    x (B, T, C) becomes (B, T', C) with T' > T, the (B, T) 1/0 ``attention_mask`` (None: every token attended)
    becomes (B, T') and ``positions`` (B, T) says where each input token went, so that the model returns per-token
    outputs at the input's positions. The model calls it before it builds its padding, so attention, unpadded
    execution and position biases all see the longer sequence. ``width`` is that of the vectors inserted (None: the
    model's hidden size); models that project narrower embeddings up after the embeddings site (ELECTRA, ALBERT)
    give ``project``, which the inserted vectors go through as the embeddings do. ``embed_text(text)`` gives the
    (n, width) token embeddings of a text, which a prompt may start from (None: the model embeds no text).
    """

    def __init__(self, width: int | None = None, project: Callable[[Tensor], Tensor] | None = None,
                 embed_text: Callable[[str], Tensor] | None = None) -> None:
        super().__init__()
        self.width = width
        self.project = project  # plain functions (bound methods): a module here would be registered twice
        self.embed_text = embed_text or refuse_text
        self.adapters = nn.ModuleDict()
        self.plug: Callable[..., tuple[Tensor, Tensor | None, Tensor]] | None = None

    def forward(self, x: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        return (x, attention_mask, None) if self.plug is None else self.plug(x, attention_mask, self.project)


def refuse_text(text: str) -> Tensor:
    raise ValueError("this model embeds no text, so a prompt cannot start from prompt_init_text; use "
                     "prompt_init='random_uniform'.")


class MaskedLMHead(nn.Module):
    """BERT's language-model head: dense -> activation -> LayerNorm -> decoder onto the vocabulary, (B, T, C) ->
    (B, T, V). The model runs its embedding site's inverse between ``transform`` and ``decoder``, where invertible
    adapters undo their embedding transform.

    Its parts are named as transformers names a model's own head (``dense, act, norm, decoder``) or, ``numbered``,
    as AdapterHub numbers its flex heads (``0, 1, 2, 3``: ``BertStyleMaskedLMHead``), so either's files load key for
    key.
    """

    NAMES = ("dense", "act", "norm", "decoder")
    decoder: nn.Linear

    def __init__(self, hidden_size: int, width: int, vocab_size: int, activation: str, eps: float, bias: bool = True,
                 numbered: bool = False) -> None:
        super().__init__()
        parts = (nn.Linear(hidden_size, width), Activation(activation), nn.LayerNorm(width, eps=eps),
                 nn.Linear(width, vocab_size, bias=bias))
        self.names = tuple(map(str, range(4))) if numbered else self.NAMES
        for name, part in zip(self.names, parts, strict=True):
            self.add_module(name, part)
        if numbered:  # `decoder` names the last part either way; a plain reference, not a second registration
            object.__setattr__(self, "decoder", parts[3])

    def parts(self) -> tuple[nn.Module, ...]:
        """(dense, act, norm, decoder), whatever their names."""
        return tuple(self._modules[name] for name in self.names)

    def transform(self, x: Tensor) -> Tensor:
        dense, act, norm, _ = self.parts()
        return norm(act(dense(x)))  # (B, T, C); the decoder makes it (B, T, V)

    def forward(self, x: Tensor, pooled: Tensor | None = None) -> Tensor:
        return self.decoder(self.transform(x))

    def loss(self, logits: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Cross-entropy of the (B, T, V) ``logits`` against the token ids ``labels`` (B, T), -100 ignored, as
        transformers' masked-LM classes compute it; ``attention_mask`` is not used (mask with -100)."""
        return task_loss("single_label_classification", logits, labels)


PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def task_loss(problem: str, logits: Tensor, labels: Tensor) -> Tensor:
    """The loss of a task head's ``logits`` against ``labels``, by ``problem`` (transformers' ``problem_type`` names,
    plus ``"span"``), shared by the models' own heads and the adapter heads so that each rule exists once.

    regression: MSE (one output: logits (..., 1) against labels (...)); single_label_classification: cross-entropy
    over the last axis, labels -100 ignored; multi_label_classification: BCE with logits; span: question answering's
    logits (B, T, 2) against (start, end) positions (B, 2), clamped to T and ignored there, start and end averaged.
    """
    if problem == "regression":
        if logits.shape[-1] == 1:
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).reshape(logits.shape[:-1]))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if problem == "span":
        start, end = (t.squeeze(-1) for t in logits.split(1, dim=-1))  # (B, T) each
        ignored = start.shape[1]
        start_positions, end_positions = (p.clamp(0, ignored) for p in labels.unbind(-1))
        return (F.cross_entropy(start, start_positions, ignore_index=ignored)
                + F.cross_entropy(end, end_positions, ignore_index=ignored)) / 2
    if problem != "single_label_classification":
        raise ValueError(f"problem type {problem!r} is not known; use one of {[*PROBLEM_TYPES, 'span']}.")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def flatten_choices(args: tuple, kwargs: dict[str, Any], choices: int | None) -> tuple[tuple, dict[str, Any], int]:
    """A multiple-choice forward's inputs (B, choices, ...) flattened to (B·choices, ...), as the encoder takes them,
    and the number of choices; ``choices`` (None: any) is what the head was built for. Another rank, number of
    choices or leading shape is refused, as it would pair scores with the wrong examples. Shared by the models' own
    multiple-choice heads and the adapter heads."""
    named = {**{f"argument {i}": value for i, value in enumerate(args)}, **kwargs}
    tensors = {name: value for name, value in named.items() if isinstance(value, Tensor)}
    ids = next((name for name in ("input_ids", "inputs_embeds", "argument 0") if name in tensors), None)
    if ids is None:
        raise ValueError("multiple choice takes input_ids (or inputs_embeds) of shape (batch, choices, tokens); none "
                         "was given.")
    shape, rank = tuple(tensors[ids].shape), 4 if ids == "inputs_embeds" else 3
    expected = f"(batch, {choices or 'choices'}, tokens{', width' if rank == 4 else ''})"
    if len(shape) != rank or (choices is not None and shape[1] != choices):
        built = "" if choices is None else f" with num_choices={choices}"
        raise ValueError(f"a multiple_choice head{built} takes {ids} of shape {expected}, got {shape}; stack each "
                         "example's choices along dimension 1.")
    for name, value in tensors.items():
        if value.dim() < 3 or tuple(value.shape[:2]) != shape[:2]:
            raise ValueError(f"{name} has shape {tuple(value.shape)}; with a multiple_choice head every input is "
                             f"(batch, choices, ...) as {ids}: {shape[:3]}.")

    def flat(value: Any) -> Any:
        return value.flatten(0, 1) if isinstance(value, Tensor) else value

    return tuple(flat(value) for value in args), {key: flat(value) for key, value in kwargs.items()}, shape[1]


SITE_CLASSES = (SiteLinear, ResidualSite, PrefixSite, OutputSite, EmbeddingSite, PromptSite)
OUTER_SITES = {EmbeddingSite: "embeddings", PromptSite: "prompt"}  # the sites outside the layers, once per model


class Site(NamedTuple):
    """One site of a model: layer index (``None`` for ``embeddings``), site name, module, and path in the model."""

    layer: int | None
    name: str
    module: nn.Module
    path: str


def find_sites(model: nn.Module) -> Iterator[Site]:
    """Every site of ``model``: the embedding and prompt sites, then each layer's sites in attribute order.

    Sites are found by type, never by matching names; a layer site's name is its path inside the layer.
    """
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no `layers` nn.ModuleList; sites live in model.layers[i].")
    in_layers = {id(module) for layer in layers for module in layer.modules()}
    for path, module in model.named_modules():
        if type(module) in OUTER_SITES:
            yield Site(None, OUTER_SITES[type(module)], module, path)
        elif isinstance(module, SITE_CLASSES) and id(module) not in in_layers:
            raise TypeError(f"{type(module).__name__} found outside model.layers; only EmbeddingSite and PromptSite "
                            "may live there.")
    for index, layer in enumerate(layers):
        for path, module in layer.named_modules():
            if type(module) in OUTER_SITES:
                raise TypeError(f"{type(module).__name__} inside layer {index} at {path!r}; it belongs after the "
                                "embeddings.")
            if isinstance(module, SITE_CLASSES):
                yield Site(index, path, module, f"layers.{index}.{path}")
