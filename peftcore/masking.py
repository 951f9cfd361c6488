"""Masked-language-model batches: BERT's masking rule (Devlin et al., 2019, https://arxiv.org/abs/1810.04805, §3.1)
as transformers' ``DataCollatorForLanguageModeling`` applies it, with whole-word masking as an option — the first step
of MAD-X (Pfeiffer et al., 2020, https://arxiv.org/abs/2005.00052): a language adapter trained with a masked-LM head.

Each real token is chosen with probability ``probability`` (15%); special tokens and padding never are. A chosen
token becomes the mask token (80%), a random token of the vocabulary (10%) or stays (10%); ``labels`` hold the
original id at chosen positions and -100 elsewhere, so the loss counts only them. With ``whole_word`` the choice is
made per word (a word and its continuation pieces together) and the 80/10/10 rule then applies per token, as in
transformers' ``DataCollatorForWholeWordMask``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from peftcore.training import Batch, collate


def continuation_ids(vocab: Mapping[str, int], prefix: str = "##") -> frozenset[int]:
    """The ids of the vocabulary's word pieces that continue a word: WordPiece writes them with a ``##`` prefix
    (``tokenizers``' ``Tokenizer.get_vocab()`` gives ``vocab``)."""
    return frozenset(i for token, i in vocab.items() if token.startswith(prefix))


def word_starts(input_ids: Tensor, continuations: Tensor) -> Tensor:
    """(B, T) True where a token starts a word: it is not a continuation piece (``continuations``: a bool table over
    the vocabulary)."""
    return ~continuations[input_ids]


@dataclass
class MaskingCollator:
    """Pads examples (``collate``) and masks their ``input_ids`` for a masked-LM loss, adding ``labels``.

    Args:
        mask_token_id: the id that replaces 80% of the chosen tokens.
        pad_token_id: the padding id (padding is never chosen).
        vocab_size: random replacements are drawn from 0 to ``vocab_size`` - 1, as transformers draws them.
        special_ids: ids never chosen ([CLS], [SEP], ...).
        continuations: ids that continue a word (``continuation_ids``); needed for ``whole_word``.
        generator: the random source (None: torch's global one, which the Trainer seeds).
    """

    mask_token_id: int
    pad_token_id: int
    vocab_size: int
    special_ids: Collection[int] = ()
    probability: float = 0.15
    whole_word: bool = False
    continuations: Collection[int] = ()
    generator: torch.Generator | None = None
    never: Tensor = field(init=False, repr=False)
    continues: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.probability < 1.0:
            raise ValueError(f"the masking probability must lie in (0, 1), got {self.probability!r}.")
        if self.whole_word and not self.continuations:
            raise ValueError("whole-word masking needs the vocabulary's continuation pieces: pass continuations="
                             "continuation_ids(tokenizer.backend.get_vocab()).")
        ids = [self.mask_token_id, self.pad_token_id, *self.special_ids, *self.continuations]
        if not all(0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got {sorted(set(ids))[-1]}.")
        self.never = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.never[[self.pad_token_id, *self.special_ids]] = True
        self.continues = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.continues[list(self.continuations)] = True

    def __call__(self, examples: Sequence[Batch]) -> Batch:
        batch = collate([{key: t for key, t in example.items() if key != "labels"} for example in examples],
                        {"input_ids": self.pad_token_id})
        ids = batch["input_ids"]
        real = ~self.never[ids] & batch.get("attention_mask", torch.ones_like(ids)).bool()  # (B, T) choosable
        chosen = self.choose(ids, real)
        batch["labels"] = ids.masked_fill(~chosen, -100)
        draw = torch.rand(ids.shape, generator=self.generator)
        masked = chosen & (draw < 0.8)
        randomised = chosen & (draw >= 0.8) & (draw < 0.9)
        random_ids = torch.randint(self.vocab_size, ids.shape, generator=self.generator)
        batch["input_ids"] = torch.where(masked, self.mask_token_id, torch.where(randomised, random_ids, ids))
        return batch

    def choose(self, ids: Tensor, real: Tensor) -> Tensor:
        """(B, T) the tokens to predict: each real token with ``probability``, or with ``whole_word`` each word (a
        start and the continuation pieces after it) with ``probability``."""
        draw = torch.rand(ids.shape, generator=self.generator) < self.probability
        if not self.whole_word:
            return draw & real
        starts = word_starts(ids, self.continues) | ~real  # a special token or padding ends the word before it
        return torch.gather(draw & starts, 1, first_of_word(starts)) & real

def first_of_word(starts: Tensor) -> Tensor:
    """(B, T) the position of the word start each token belongs to (its own where it starts one)."""
    positions = torch.arange(starts.shape[1]).expand_as(starts)
    return torch.where(starts, positions, 0).cummax(1).values


__all__ = ["MaskingCollator", "continuation_ids", "word_starts"]
