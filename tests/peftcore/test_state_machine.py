"""Random sequences of the calls that change a model, on tiny models of every architecture, many of them calls
that must fail, with the model checked against what the sequence did after every step:

- a call that raised changed nothing (every tensor, the adapters, heads, setup and plugs are as before);
- the adapters, merged adapters, sharing group, active setup and head, and adapter_summary()'s rows are what the
  sequence made;
- with nothing merged, the base weights are the original ones, bit for bit (reset undoes any merge sequence);
- at the end of each sequence, the model's output equals that of a fresh model rebuilt from its full save
  (format="peftcore").

The "ci" profile runs a fixed, short search; HYPOTHESIS_PROFILE=long searches wider (tests/conftest.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from peftcore import sharing
from peftcore.composition import Stack
from tests.archs import ARCHS, inputs, tiny_model
from tests.peftcore.test_io import assert_unchanged, fingerprint

NAMES = st.sampled_from(["a", "b", "x.y"])  # few names, so calls meet the same adapters; the last is never valid
CONFIGS = st.sampled_from(["seq_bn", "double_seq_bn", "par_bn", "lora", "lora[output_lora=True]", "ia3",
                           "prefix_tuning[prefix_length=2, bottleneck_size=8]", "compacter[reduction_factor=8]",
                           "seq_bn_inv", "unipelt", "mtl_lora",
                           "loreft[suffix_positions=1]"])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
EXAMPLES, STEPS = {"ci": (30, 20), "long": (300, 60)}[PROFILE]  # sequences, calls per sequence


class ModelCalls(RuleBasedStateMachine):
    """One tiny model, the calls that change it, and what they should have left."""

    @initialize(arch=st.sampled_from(sorted(ARCHS)))
    def build(self, arch: str) -> None:
        torch.manual_seed(0)
        self.model = tiny_model(arch)
        self.batch = inputs(self.model.config, lengths=(5, 3))
        self.original = {key: t.clone() for key, t in self.model.base_state_dict().items()}
        self.adapters: dict[str, str] = {}
        self.heads: set[str] = set()
        self.merged: set[str] = set()
        self.active = None
        self.shared: set[str] = set()  # the adapters of sharing group "g"
        self.directory = Path(tempfile.mkdtemp())

    def attempt(self, call) -> bool:
        """Run a call; if it raises, it must have changed nothing. Returns whether it succeeded."""
        before = fingerprint(self.model)
        try:
            call()
        except (ValueError, KeyError, TypeError):
            assert_unchanged(self.model, before)
            return False
        return True

    @rule(name=NAMES, config=CONFIGS, overwrite=st.booleans())
    def add_adapter(self, name: str, config: str, overwrite: bool) -> None:
        if self.attempt(lambda: self.model.add_adapter(name, config, overwrite_ok=overwrite)):
            assert (name not in self.adapters or overwrite) and name not in self.shared
            self.adapters[name] = config

    @rule(name=NAMES)
    def delete_adapter(self, name: str) -> None:
        alone = self.active == Stack(name)
        if self.attempt(lambda: self.model.delete_adapter(name)):
            assert name not in self.merged and (alone or name not in (self.active.flatten() if self.active else ()))
            assert name not in self.shared
            del self.adapters[name]
            self.active = None if alone else self.active

    @rule(names=st.lists(NAMES, min_size=0, max_size=3, unique=True))
    def set_active_adapters(self, names: list[str]) -> None:
        setup = Stack(*names) if names else None
        if self.attempt(lambda: self.model.set_active_adapters(setup)):
            assert set(names) <= set(self.adapters)
            self.active = setup

    @rule(name=NAMES)
    def merge_adapter(self, name: str) -> None:
        if self.attempt(lambda: self.model.merge_adapter(name)):
            assert name in self.adapters and name not in self.merged
            self.merged.add(name)

    @rule(name=st.one_of(st.none(), NAMES))
    def reset_adapter(self, name: str | None) -> None:
        if self.attempt(lambda: self.model.reset_adapter(name)):
            self.merged = set() if name is None else self.merged - {name}

    @rule(name=NAMES, sources=st.lists(NAMES, min_size=1, max_size=2))
    def average_adapter(self, name: str, sources: list[str]) -> None:
        if self.attempt(lambda: self.model.average_adapter(name, sources, overwrite_ok=True)):
            assert name not in self.shared
            self.adapters[name] = self.adapters[sources[0]]

    @rule(extra=st.one_of(st.none(), NAMES))
    def share_parameters(self, extra: str | None) -> None:
        """The MTL-LoRA adapters the model has (the group AdapterHub's users make), and another name or none."""
        names = [name for name, config in self.adapters.items() if config == "mtl_lora"]
        names += [extra] if extra is not None and extra not in names else []
        if self.attempt(lambda: self.model.share_parameters(names, name="g")):
            assert not self.shared and all(self.adapters[name] == "mtl_lora" for name in names)
            assert not set(names) & self.merged
            self.shared = set(names)

    @rule()
    def unshare_parameters(self) -> None:
        if self.attempt(lambda: self.model.unshare_parameters([], name="g")):
            assert self.shared
            self.shared = set()

    @rule(name=NAMES, labels=st.integers(min_value=-1, max_value=3))
    def add_head(self, name: str, labels: int) -> None:
        if self.attempt(lambda: self.model.add_classification_head(name, num_labels=labels, overwrite_ok=True)):
            assert labels >= 1
            self.heads.add(name)

    @rule(name=NAMES)
    def delete_head(self, name: str) -> None:
        if self.attempt(lambda: self.model.delete_head(name)):
            self.heads.discard(name)

    @rule(name=NAMES, load_as=NAMES)
    def save_and_load(self, name: str, load_as: str) -> None:
        if not self.attempt(lambda: self.model.save_adapter(self.directory / "saved", name, with_head=False)):
            return
        if self.attempt(lambda: self.model.load_adapter(self.directory / "saved", load_as=load_as, with_head=False)):
            assert load_as not in self.adapters
            self.adapters[load_as] = self.adapters[name]

    @invariant()
    def agrees_with_the_sequence(self) -> None:
        if not hasattr(self, "model"):
            return
        assert dict(sorted(self.model.adapter_configs.items())).keys() == dict(sorted(self.adapters.items())).keys()
        assert set(self.model.heads) == self.heads
        assert self.model.merged_adapters() == self.merged
        assert {name for name in self.adapters if sharing.groups_of(self.model, name)} == self.shared
        assert self.model.active_adapters == self.active
        rows = [row["name"] for row in self.model.adapter_summary(as_dict=True)]
        assert set(rows) - {"Full model"} >= set(self.adapters)

    @invariant()
    def resets_restore_the_base_weights(self) -> None:
        if hasattr(self, "model") and not self.merged:
            base = self.model.base_state_dict()
            assert all(torch.equal(base[key], t) for key, t in self.original.items())

    def teardown(self) -> None:
        """At the end of each sequence: a rebuild from the model's full save gives its outputs."""
        if not hasattr(self, "model"):
            return
        path = self.directory / "model"
        self.model.save_pretrained(path, format="peftcore")
        again = type(self.model).from_pretrained(path)
        with torch.no_grad():
            expected, got = self.model(**self.batch), again(**self.batch)
        assert torch.equal(expected.last_hidden_state, got.last_hidden_state)


ModelCalls.TestCase.settings = settings(settings.default, max_examples=EXAMPLES, stateful_step_count=STEPS)
test_model_calls = ModelCalls.TestCase
