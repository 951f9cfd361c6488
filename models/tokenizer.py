"""Text to tensors: a checkpoint's ``tokenizer.json`` run by the ``tokenizers`` library.

Special tokens and the maximum length come from ``tokenizer_config.json`` (and ``special_tokens_map.json``)
when present, as transformers reads them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from tokenizers import Tokenizer as RustTokenizer
from torch import Tensor

from peftcore.io import read_json, resolve_directory

UNLIMITED = 10**9  # transformers writes a huge model_max_length when the checkpoint states none


class Tokenizer:
    """Batch-encodes text (or text pairs) into ``input_ids``, ``attention_mask`` and ``token_type_ids``."""

    def __init__(self, tokenizer: RustTokenizer, pad_token: str, model_max_length: int | None = None) -> None:
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"the pad token {pad_token!r} is not in the tokenizer's vocabulary.")
        self.backend = tokenizer
        self.pad_token, self.pad_token_id = pad_token, pad_id
        self.model_max_length = model_max_length

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Read ``tokenizer.json`` from a checkpoint directory, or from the snapshot of a Hugging Face Hub repo id
        ("org/name"; ``peftcore.io.resolve_directory``)."""
        directory = resolve_directory(path, "tokenizer")
        file = directory / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{str(directory)!r} has no tokenizer.json; save the tokenizer with "
                                    "transformers' tokenizer.save_pretrained (a fast tokenizer writes it).")
        try:
            backend = RustTokenizer.from_file(str(file))
        except Exception as error:  # the Rust library raises a bare Exception on malformed files
            raise ValueError(f"{file} could not be read as a tokenizers file: {error}") from error
        settings = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the later file wins, as in transformers
            if (directory / name).is_file():
                settings.update(read_json(directory / name))
        pad = settings.get("pad_token", "[PAD]")
        pad = pad["content"] if isinstance(pad, dict) else pad
        max_length = settings.get("model_max_length")
        return cls(backend, pad, max_length if isinstance(max_length, int) and max_length < UNLIMITED else None)

    def __call__(self, texts: str | Sequence[str], pairs: str | Sequence[str] | None = None, *,
                 padding: bool = True, truncation: bool = True, max_length: int | None = None) -> dict[str, Tensor]:
        """Encode a batch. ``pairs`` gives each text a second segment; ``max_length`` defaults to the model's."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if pairs is not None:
            pairs = [pairs] if isinstance(pairs, str) else list(pairs)
            if len(pairs) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs; pass one pair per text.")
        limit = max_length or self.model_max_length
        if truncation and limit:
            self.backend.enable_truncation(limit)
        else:
            self.backend.no_truncation()
        if padding:
            self.backend.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)
        else:
            self.backend.no_padding()
        encodings = self.backend.encode_batch(list(zip(texts, pairs, strict=True)) if pairs else texts)
        if not padding and len({len(e.ids) for e in encodings}) > 1:
            raise ValueError("texts of different lengths need padding=True to form one tensor.")
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
            "token_type_ids": torch.tensor([e.type_ids for e in encodings], dtype=torch.long),
        }

    def decode(self, ids: Sequence[int] | Tensor, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()
