"""Every tensor that transformers' classes hold is named in our tables, and our keys map back one-to-one."""

from __future__ import annotations

import pytest

from models.convert.keymap import Split, to_template
from tests.conftest import SMALL
from tests.models.test_bert import ARCHS


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head", [None, "masked_lm", "sequence_classification", "token_classification",
                                  "question_answering"])
def test_every_transformers_key_is_mapped_or_dropped_by_name(arch, head):
    config_class, ours, classes = ARCHS[arch]
    theirs = classes[head](config_class(**SMALL))
    table = ours.keymap.table(head)
    for key in theirs.state_dict():
        template, _ = to_template(key.removeprefix(ours.keymap.prefix))
        assert template in table or template in ours.keymap.copies, f"{arch}/{head}: {key} is not in the table"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_our_key_has_exactly_one_hf_name(arch):
    _, ours, _ = ARCHS[arch]
    for head in (None, *ours.keymap.heads):
        inverse = ours.keymap.inverse(head)
        targets = [t for target in ours.keymap.table(head).values() if target
                   for t in (target.targets if isinstance(target, Split) else (target,))]
        assert len(targets) == len(set(targets)) == len(inverse)
