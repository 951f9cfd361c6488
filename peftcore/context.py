"""``AdapterSetup``: the forwards run inside a ``with`` block use another adapter setup (and heads) than the model's
active one, as with AdapterHub's context manager of that name. The setting is per thread (and per asyncio task):
other threads' forwards keep the active setup. forward.py reads ``current_setup``; the model's state never changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar, Token
from typing import Any

from peftcore.composition import Block, Parallel, parse_setup
from peftcore.composition import head_setup as default_heads

CURRENT: ContextVar[AdapterSetup | None] = ContextVar("peftcore_adapter_setup", default=None)


class AdapterSetup:
    """``with AdapterSetup(Stack("a", "b")): model(**batch)`` runs the batch through a and b whatever is active.

    ``adapter_setup`` is what ``set_active_adapters`` takes (None: no adapter); ``head_setup`` names the heads (a
    name, a list of names or a ``Parallel``/``BatchSplit`` of them), by default those named after the setup's last
    adapters, as ``set_active_adapters`` picks them. Models without adapter heads keep their own head. With
    ``ignore_empty``, a setup of no adapters and no heads leaves the active one in force. A forward compiled with
    ``torch.compile`` runs the active setup (the compiler cannot read the context): activate the setup instead.
    """

    def __init__(self, adapter_setup: str | Block | Sequence | None, head_setup: Any = None,
                 ignore_empty: bool = False) -> None:
        self.adapter_setup = parse_setup(adapter_setup)
        self.head_setup = (as_head_setup(head_setup) if head_setup
                           else None if self.adapter_setup is None else default_heads(self.adapter_setup))
        self.empty = ignore_empty and self.adapter_setup is None and self.head_setup is None
        self.tokens: list[Token] = []

    def __enter__(self) -> AdapterSetup:
        if not self.empty:
            self.tokens.append(CURRENT.set(self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.empty:
            CURRENT.reset(self.tokens.pop())

    def __repr__(self) -> str:
        return f"AdapterSetup({self.adapter_setup!r}, head_setup={self.head_setup!r})"


def current_setup() -> AdapterSetup | None:
    """The innermost ``AdapterSetup`` this thread is inside, or None."""
    return CURRENT.get()


def as_head_setup(heads: str | Sequence[str] | Block | None) -> str | Block | None:
    """A head setup as AdapterHub takes it: a name, a block of names, or a list (one name: that head; several: a
    ``Parallel`` of them)."""
    if isinstance(heads, Sequence) and not isinstance(heads, str | Block):
        return heads[0] if len(heads) == 1 else Parallel(*heads)
    return heads or None


def head_names(heads: str | Sequence[str] | Block | None) -> list[str]:
    """The head names a head setup (as ``as_head_setup`` takes it) holds, in order."""
    if heads is None:
        return []
    if isinstance(heads, str):
        return [heads]
    return list(heads.flatten() if isinstance(heads, Block) else heads)
