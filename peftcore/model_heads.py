"""The head calls of the adapter API (AdapterHub's ``ModelWithFlexibleHeadsAdaptersMixin``): adding, averaging,
deleting, saving and loading prediction heads named after adapters, and their label names. ``AdapterModelMixin``
(model.py) inherits them; the work is done in heads.py and interop/."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

from peftcore import heads, interop
from peftcore.changes import mutation


class HeadsMixin:
    """Prediction heads of a model with adapter state (``AdapterModelMixin``)."""

    head_types: ClassVar[tuple[str, ...]] = heads.HEAD_TYPES  # what add_head builds (AdapterHub's head_types)

    @mutation
    def add_head(self, name: str, config: dict[str, Any], overwrite_ok: bool = False, set_active: bool = True) -> None:
        """Add head ``name`` from an AdapterHub head ``config`` dict; it becomes the active head unless ``set_active``
        is False. Replacing a head needs ``overwrite_ok``."""
        heads.add(self, name, config, overwrite_ok, set_active)

    def add_classification_head(self, name: str, num_labels: int = 2, layers: int = 2,
                                activation_function: str = "tanh", overwrite_ok: bool = False,
                                multilabel: bool = False, id2label: dict[int, str] | None = None,
                                use_pooler: bool = False) -> None:
        """Active head ``name`` for sequence classification on the first token (the pooler output with
        ``use_pooler``): ``layers`` linear layers with ``activation_function`` between them, ``num_labels`` outputs
        (1: regression), BCE loss with ``multilabel``, label names ``id2label``; replacing needs ``overwrite_ok``."""
        self.add_head(name, dict(head_type="multilabel_classification" if multilabel else "classification",
                                 num_labels=num_labels, layers=layers, activation_function=activation_function,
                                 use_pooler=use_pooler, bias=True, label2id=heads.label2id(id2label, num_labels)),
                      overwrite_ok)

    def add_image_classification_head(self, name: str, num_labels: int = 2, layers: int = 1,
                                      activation_function: str = "tanh", overwrite_ok: bool = False,
                                      multilabel: bool = False, id2label: dict[int, str] | None = None,
                                      use_pooler: bool = False) -> None:
        """Active head ``name`` for image classification on the first (CLS) token; ``num_labels``, ``layers``,
        ``activation_function``, ``overwrite_ok``, ``multilabel``, ``id2label`` and ``use_pooler`` as in
        ``add_classification_head``."""
        self.add_head(name, dict(head_type="image_classification", num_labels=num_labels, layers=layers,
                                 activation_function=activation_function, use_pooler=use_pooler, bias=True,
                                 multilabel=multilabel, label2id=heads.label2id(id2label, num_labels)), overwrite_ok)

    def add_multiple_choice_head(self, name: str, num_choices: int = 2, layers: int = 2,
                                 activation_function: str = "tanh", overwrite_ok: bool = False,
                                 id2label: dict[int, str] | None = None, use_pooler: bool = False) -> None:
        """Active head ``name`` for multiple choice: the forward takes (batch, ``num_choices``, tokens) inputs and
        gives logits (batch, ``num_choices``), one score per choice from its first token (pooler output with
        ``use_pooler``); ``layers``, ``activation_function``, ``overwrite_ok``, ``id2label`` as in
        ``add_classification_head``."""
        self.add_head(name, dict(head_type="multiple_choice", num_choices=num_choices, layers=layers,
                                 activation_function=activation_function,
                                 label2id=heads.label2id(id2label, num_choices), use_pooler=use_pooler,
                                 dropout_prob=None), overwrite_ok)

    def add_dependency_parsing_head(self, name: str, num_labels: int = 2, overwrite_ok: bool = False,
                                    id2label: dict[int, str] | None = None) -> None:
        """Active biaffine dependency-parsing head ``name`` over ``num_labels`` relations (AdapterHub's, after Glavaš
        & Vulić 2021): the forward takes ``word_starts`` (and ``labels_arcs``, ``labels_rels`` for a loss) and gives
        ``arc_preds`` (B, T, T+1) and ``logits`` = ``rel_preds`` (B, T, T+1, num_labels); ``overwrite_ok`` and
        ``id2label`` as in ``add_classification_head``."""
        self.add_head(name, dict(head_type="dependency_parsing", num_labels=num_labels,
                                 label2id=heads.label2id(id2label, num_labels)), overwrite_ok)

    def add_tagging_head(self, name: str, num_labels: int = 2, layers: int = 1, activation_function: str = "tanh",
                         overwrite_ok: bool = False, id2label: dict[int, str] | None = None) -> None:
        """Active head ``name`` for token classification: one prediction per token; ``num_labels``, ``layers``,
        ``activation_function``, ``overwrite_ok`` and ``id2label`` as in ``add_classification_head``."""
        self.add_head(name, dict(head_type="tagging", num_labels=num_labels, layers=layers,
                                 activation_function=activation_function,
                                 label2id=heads.label2id(id2label, num_labels)), overwrite_ok)

    def add_qa_head(self, name: str, num_labels: int = 2, layers: int = 1, activation_function: str = "tanh",
                    overwrite_ok: bool = False) -> None:
        """Active head ``name`` for extractive question answering: span-start and span-end logits per token
        (``num_labels`` must be 2); ``layers``, ``activation_function``, ``overwrite_ok`` as in
        ``add_classification_head``."""
        self.add_head(name, dict(head_type="question_answering", num_labels=num_labels, layers=layers,
                                 activation_function=activation_function), overwrite_ok)

    def add_masked_lm_head(self, name: str, activation_function: str = "gelu", layers: int = 2,
                           overwrite_ok: bool = False) -> None:
        """Active BERT-style LM head ``name`` tied to the word embeddings, starting from the checkpoint's LM head when
        it has one; ``activation_function`` and ``overwrite_ok`` as in ``add_classification_head``, ``layers`` must
        be 2."""
        vocab_size, width = heads.tied_embeddings(self)
        self.add_head(name, dict(head_type="masked_lm", vocab_size=vocab_size, embedding_size=width, layers=layers,
                                 activation_function=activation_function, layer_norm=True, bias=True,
                                 shift_labels=False, label2id=None), overwrite_ok)

    def add_embedding_head(self, name: str, pooling_mode: str = "mean", normalize: bool = False,
                           overwrite_ok: bool = False) -> None:
        """Active head ``name`` giving sentence embeddings as ``logits`` (B, C): the hidden states of the real tokens
        pooled by ``pooling_mode`` (``mean``, ``cls``, ``max`` or ``lasttoken``), L2-normalised with ``normalize``, as
        sentence-transformers computes them (``peftcore.embeddings``); ``overwrite_ok`` as in
        ``add_classification_head``."""
        self.add_head(name, dict(head_type="sentence_embedding", pooling_mode=pooling_mode, normalize=normalize),
                      overwrite_ok)

    @mutation
    def delete_head(self, name: str) -> None:
        """Remove head ``name``; when it was the active head, no head is active."""
        heads.delete(self, name)

    @mutation
    def average_head(self, head_name: str, head_list: Sequence[str] | dict[str, float],
                     weights: Sequence[float] | None = None, normalize_weights: bool = True,
                     overwrite_ok: bool = False, set_active: bool = False) -> None:
        """New head ``head_name``: the average of heads ``head_list`` (or ``{head: weight}``) of one class and config;
        ``weights``, ``normalize_weights``, ``overwrite_ok``, ``set_active`` as in ``average_adapter``."""
        heads.average(self, head_name, head_list, weights, normalize_weights, overwrite_ok, set_active)

    def get_prediction_heads_config(self) -> dict[str, dict[str, Any]]:
        """Every head's config dict by head name (AdapterHub's)."""
        return {name: dict(head.config) for name, head in self.heads.items()}

    def get_labels_dict(self, head_name: str | None = None) -> dict[int, str] | None:
        """Head ``head_name``'s (default: the active head's) label names by id; None for a head without labels."""
        return heads.labels(self, head_name)

    def get_labels(self, head_name: str | None = None) -> list[str] | None:
        """Head ``head_name``'s (default: the active head's) label names in id order; None as ``get_labels_dict``."""
        return None if (labels := heads.labels(self, head_name)) is None else list(labels.values())

    def save_head(self, directory: str | os.PathLike, head_name: str | None = None, format: str | None = None,
                  use_safetensors: bool = False) -> None:
        """Write head ``head_name`` (None: the only head) into ``directory`` atomically in ``format`` ``"peftcore"``
        or ``"adapterhub"`` (safetensors with ``use_safetensors``; default: the class's ``adapter_file_format``)."""
        interop.save_head(self, directory, head_name, format or self.adapter_file_format, use_safetensors)

    @mutation
    def load_head(self, directory: str | os.PathLike, load_as: str | None = None,
                  id2label: dict[int, str] | None = None, set_active: bool = True,
                  loading_info: dict | None = None, overwrite_ok: bool = False) -> str:
        """Load the head in ``directory`` (``save_head``'s, ours or AdapterHub's) named ``load_as`` if given, with the
        label names ``id2label`` if given, the active head unless ``set_active`` is False; returns its name. A head
        of that name is refused unless ``overwrite_ok`` (AdapterHub replaces it: the default of
        ``peftcore.adapters``' classes). ``loading_info`` (a dict) gets AdapterHub's ``missing_keys`` and
        ``unexpected_keys``: empty, as a load that is not exact raises."""
        name = interop.load_head(self, directory, load_as, id2label, set_active, overwrite_ok)
        interop.report_exact(loading_info)
        return name
