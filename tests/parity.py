"""One helper for every comparison against a reference: same weights in, same numbers out."""

from __future__ import annotations

import torch
from torch import Tensor

ATOL = 1e-5


def assert_parity(ours: Tensor, theirs: Tensor, atol: float = ATOL, mask: Tensor | None = None) -> None:
    """Assert two tensors agree elementwise within ``atol``; ``mask`` (B, T) restricts to real tokens."""
    assert ours.shape == theirs.shape, f"shape {tuple(ours.shape)} != reference {tuple(theirs.shape)}"
    ours, theirs = ours.detach().float(), theirs.detach().float()
    if mask is not None:
        keep = mask.bool()
        ours, theirs = ours[keep], theirs[keep]
    error = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    assert error <= atol, f"max abs difference {error:.3g} exceeds {atol:.1g}"


def real_tokens(x: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Per-token outputs (B, T, ...) with padded positions zeroed. A padded batch runs unpadded by default and leaves
    zeros there; transformers and AdapterHub leave values no loss reads (``unpad=False`` reproduces them)."""
    if attention_mask is None:
        return x
    return x * attention_mask.reshape(*attention_mask.shape, *(1,) * (x.dim() - 2)).to(x.dtype)


def padded_batch(vocab_size: int, pad_token_id: int, lengths: tuple[int, ...] = (12, 7, 3),
                 seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random token ids, right-padded to the longest length, and their 1/0 attention mask."""
    generator = torch.Generator().manual_seed(seed)
    T = max(lengths)
    low = max(pad_token_id, 2) + 1  # keep real tokens off the padding id
    ids = torch.randint(low, vocab_size, (len(lengths), T), generator=generator)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad_token_id), mask


def assert_outputs_parity(got, expected, head: str | None, mask: Tensor | None) -> None:
    """Our forward's outputs against a reference's for a model with ``head``: the last hidden state (and the pooled
    output where ours has one) of a bare encoder, else the head's logits; per-token tensors at real tokens only."""
    if head is None:
        assert_parity(got.last_hidden_state, expected.last_hidden_state, mask=mask)
        if got.pooler_output is not None:
            assert_parity(got.pooler_output, expected.pooler_output)
    elif head == "question_answering":
        assert_parity(got.start_logits, expected.start_logits, mask=mask)
        assert_parity(got.end_logits, expected.end_logits, mask=mask)
    else:
        assert_parity(got.logits, expected.logits, mask=mask if got.logits.dim() == 3 else None)


def assert_adapterhub_round_trip(directory, theirs, ids: Tensor, mask: Tensor, tmp_path):
    """Adapter 'a', trained by AdapterHub model ``theirs`` and saved to ``tmp_path / "a"``, gives its outputs (and
    parameter count) in ours, and ours saved back in AdapterHub's layout gives them again in AdapterHub; returns our
    model with the adapter active."""
    import adapters
    import transformers

    from peftcore.models import from_pretrained

    ours = from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        expected = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_parity(expected, theirs(input_ids=ids, attention_mask=mask).last_hidden_state, mask=mask)
    assert ours.adapter_summary(as_dict=True)[0]["#param"] == theirs.adapter_summary(as_dict=True)[0]["#param"]
    ours.save_adapter(tmp_path / "back", "a", format="adapterhub")
    again = transformers.AutoModel.from_pretrained(directory).eval()
    adapters.init(again)
    again.load_adapter(str(tmp_path / "back"))
    again.set_active_adapters("a")
    again.eval()  # adapters.init builds some layers (ReFT's) in training mode, whatever the model's mode
    with torch.no_grad():
        assert_parity(again(input_ids=ids, attention_mask=mask).last_hidden_state, expected, mask=mask)
    return ours
