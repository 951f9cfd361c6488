"""Every tensor that transformers' classes hold is named in our tables, and our keys map back one-to-one: all five
records, every transformers class each names, with every optional tensor of the architecture present."""

from __future__ import annotations

import pytest
import transformers as tf

from peftcore.models.convert.keymap import Split, to_template
from tests.archs import ARCHS

CONFIGS = {  # case -> (architecture, a transformers config that builds every tensor our table names for it)
    **{arch: (arch, ARCHS[arch].hf_config("every_tensor")) for arch in ARCHS},
    "deberta-v2-shared_keys": ("deberta-v2", ARCHS["deberta-v2"].hf_config("every_tensor", share_att_key=True)),
}
CLASSES = [(name, hf_class) for name, (arch, _) in CONFIGS.items()
           for hf_class in ARCHS[arch].model.architecture.hf_classes]
RECORDS = {arch.model.__name__: arch.model for arch in ARCHS.values()}


@pytest.mark.parametrize(("name", "hf_class"), CLASSES, ids=[f"{name}-{cls}" for name, cls in CLASSES])
def test_every_transformers_key_is_mapped_or_dropped_by_name(name, hf_class):
    arch, config = CONFIGS[name]
    ours = ARCHS[arch].model
    head = ours.architecture.hf_classes[hf_class][0]
    theirs = getattr(tf, hf_class)(config)
    keymap = ours.architecture.keymap
    table = keymap.table(head)
    for key in theirs.state_dict():
        template, _ = to_template(key.removeprefix(keymap.prefix))
        assert template in table or template in keymap.copies, f"{hf_class}: {key} is not in the table"


@pytest.mark.parametrize("ours", RECORDS.values(), ids=RECORDS)
def test_every_our_key_has_exactly_one_hf_name(ours):
    keymap = ours.architecture.keymap
    for head in (None, *keymap.heads):
        inverse = keymap.inverse(head)
        targets = [t for target in keymap.table(head).values() if target
                   for t in (target.targets if isinstance(target, Split) else (target,))]
        assert len(targets) == len(set(targets)) == len(inverse)


@pytest.mark.parametrize("ours", RECORDS.values(), ids=RECORDS)
def test_the_record_has_a_key_table_for_each_head_the_model_builds_and_no_other(ours):
    architecture = ours.architecture
    assert set(architecture.keymap.heads) == set(ours.head_classes)
    assert {head for head, _ in architecture.hf_classes.values()} == {None, *ours.head_classes}
