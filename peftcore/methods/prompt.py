"""Prompt tuning (Lester et al., 2021, https://arxiv.org/abs/2104.08691): ``prompt_length`` learned vectors inserted
into the embedded sequence, at the ``prompt`` site right after the embeddings.

Numerically equal to AdapterHub's ``adapters.methods.prompt_tuning`` (``PromptTuning``, ``PromptTuningLayer``):

    E = prompt_embedding.weight                               (P, E)
    combine="prefix":            x' = [E, x]                  (B, P+T, C)
    combine="prefix_after_bos":  x' = [x_0, E, x_1..x_T-1]
    attention mask: the prompt positions are attended

The prompt is inserted after the embedding block, so the real tokens keep their position embeddings and the prompt
has none; models that project their embeddings up after it (ELECTRA, ALBERT) project the prompt too, as AdapterHub's
hook on the embedding module does. The layers and the pooler see the longer sequence (a first-token head reads the
first prompt vector under "prefix", as in AdapterHub and PEFT); the model returns its per-token outputs at the input's
positions, the prompt positions left out (AdapterHub returns them, T + P long).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from peftcore.configs import AdapterConfigBase, check_in, check_positive_number, check_seed, check_type
from peftcore.methods.base import Method, ModelShape, init_generator, register_method
from peftcore.sites import Site

COMBINES = ("prefix", "prefix_after_bos")
INITS = ("random_uniform", "from_string")


@dataclass(frozen=True, kw_only=True)
class PromptTuningConfig(AdapterConfigBase):
    """Prompt tuning (Lester et al., 2021, https://arxiv.org/abs/2104.08691): AdapterHub's PromptTuningConfig.

    ``prompt_length`` vectors, initialised U(-``random_uniform_scale``, ``random_uniform_scale``) (the paper's 0.5) or,
    with ``prompt_init="from_string"``, from the token embeddings of ``prompt_init_text`` (its token ids repeated or cut
    to ``prompt_length``; the model's ``tokenizer`` tokenizes it, special tokens included, as AdapterHub's does).
    ``combine`` puts them before the first token ("prefix") or right after it ("prefix_after_bos").
    ``random_uniform_scale`` decides the initialisation only, and is not written to files: AdapterHub's is a class
    attribute that its files never hold and its loader refuses.
    """

    architecture: ClassVar[str | None] = "prompt_tuning"
    prompt_length: int = 10
    prompt_init: str = "random_uniform"
    prompt_init_text: str | None = None
    random_uniform_scale: float = 0.5
    combine: str = "prefix"
    init_weights_seed: int | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_type(name, "prompt_length", self.prompt_length, int, "a positive int")
        if self.prompt_length <= 0:
            raise ValueError(f"{name}.prompt_length must be a positive int, got {self.prompt_length}.")
        check_in(name, "prompt_init", self.prompt_init, INITS)
        check_in(name, "combine", self.combine, COMBINES)
        check_positive_number(name, "random_uniform_scale", self.random_uniform_scale)
        if self.prompt_init_text is not None:
            check_type(name, "prompt_init_text", self.prompt_init_text, str, "a string or None")
        if self.prompt_init == "from_string" and not self.prompt_init_text:
            raise ValueError(f"{name}: prompt_init='from_string' initialises the prompt from the token embeddings of "
                             "prompt_init_text; give that text.")
        check_seed(name, self.init_weights_seed)

    def to_dict(self) -> dict[str, Any]:
        """AdapterHub's fields, without ``random_uniform_scale`` (see the class docstring)."""
        data = super().to_dict()
        del data["random_uniform_scale"]
        return data

    def union_conflict(self, other: AdapterConfigBase) -> str | None:
        if not isinstance(other, PromptTuningConfig):
            return None
        return "ConfigUnion holds two prompt_tuning configs; an adapter has one prompt. Use one, or two adapters."


class PromptTuning(Method):
    """The prompt vectors of one adapter, and their insertion into a batch (AdapterHub's ``PromptTuning``; its
    parameter name ``prompt_embedding``, so its files map onto ours by path)."""

    config_class = PromptTuningConfig
    adapterhub_container = "prompt_tunings"

    @classmethod
    def sites(cls, config: PromptTuningConfig, layer: int | None) -> tuple[str, ...]:
        return ("prompt",) if layer is None else ()

    @classmethod
    def build(cls, config: PromptTuningConfig, site: Site, shape: ModelShape, shared: nn.Module | None
              ) -> PromptTuning:
        return cls(config, site.module.width or shape.hidden_size)

    def __init__(self, config: PromptTuningConfig, width: int) -> None:
        super().__init__()
        self.config = config
        self.length, self.after_bos = config.prompt_length, config.combine == "prefix_after_bos"
        self.prompt_embedding = nn.Embedding(config.prompt_length, width)
        scale = config.random_uniform_scale
        with torch.no_grad():
            self.prompt_embedding.weight.uniform_(-scale, scale, generator=init_generator(config.init_weights_seed))

    def initialise(self, site: Site) -> None:
        """``from_string``: the prompt := the token embeddings of ``prompt_init_text`` (n, E), the rows repeated or cut
        to the prompt's length (AdapterHub's); only on adding, so loading a trained prompt needs no tokenizer."""
        if self.config.prompt_init != "from_string":
            return
        embedded = site.module.embed_text(self.config.prompt_init_text)
        if embedded.shape[0] == 0:
            raise ValueError("prompt_init_text gives no tokens; give a text that tokenizes to at least one token.")
        repeated = embedded.repeat(math.ceil(self.length / embedded.shape[0]), 1)[:self.length]
        with torch.no_grad():
            self.prompt_embedding.weight.copy_(repeated)

    def forward(self, x: Tensor, attention_mask: Tensor | None, project: Callable[[Tensor], Tensor] | None = None
                ) -> tuple[Tensor, Tensor | None, Tensor]:
        """x (B, T, C), mask (B, T) -> (B, P+T, C), (B, P+T), and each input token's position (B, T)."""
        B, T, P = x.shape[0], x.shape[1], self.length
        prompt = self.prompt_embedding.weight.to(x.dtype)  # (P, E)
        prompt = (prompt if project is None else project(prompt)).expand(B, -1, -1)  # (B, P, C)
        split = 1 if self.after_bos else 0
        x = torch.cat([x[:, :split], prompt, x[:, split:]], dim=1)  # (B, P+T, C)
        if attention_mask is not None:
            ones = attention_mask.new_ones(B, P)
            attention_mask = torch.cat([attention_mask[:, :split], ones, attention_mask[:, split:]], dim=1)
        positions = torch.arange(T, device=x.device)
        positions = (positions + P * (positions >= split)).expand(B, T)  # (B, T)
        return x, attention_mask, positions


register_method(PromptTuning, {"prompt_tuning": PromptTuningConfig()})
