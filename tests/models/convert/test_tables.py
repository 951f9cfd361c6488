"""Every tensor that transformers' classes hold is named in our tables, and our keys map back one-to-one: all five
records, every transformers class each names, with every optional tensor of the architecture present."""

from __future__ import annotations

import pytest
import transformers as tf

from models import BertModel, DebertaModel, DebertaV2Model, RobertaModel, ViTModel
from models.convert.keymap import Split, to_template
from tests.conftest import SMALL

DEBERTA_V2 = dict(SMALL, relative_attention=True, pos_att_type=["c2p", "p2c"], position_buckets=8,
                  max_relative_positions=32, norm_rel_ebd="layer_norm", conv_kernel_size=3, type_vocab_size=2,
                  embedding_size=48)
CONFIGS = {  # model -> (our class, a transformers config that builds every tensor our table names for it)
    "bert": (BertModel, tf.BertConfig(**SMALL)),
    "roberta": (RobertaModel, tf.RobertaConfig(**SMALL)),
    "deberta": (DebertaModel, tf.DebertaConfig(**SMALL, relative_attention=True, pos_att_type=["c2p", "p2c"],
                                               talking_head=True, type_vocab_size=2, embedding_size=48)),
    "deberta_v2": (DebertaV2Model, tf.DebertaV2Config(**DEBERTA_V2)),  # own position projections
    "deberta_v2_shared_keys": (DebertaV2Model, tf.DebertaV2Config(**DEBERTA_V2, share_att_key=True)),
    "vit": (ViTModel, tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                                   image_size=32, patch_size=8)),
}
CLASSES = [(name, hf_class) for name, (ours, _) in CONFIGS.items() for hf_class in ours.architecture.hf_classes]
RECORDS = {cls.__name__: cls for cls in (BertModel, RobertaModel, DebertaModel, DebertaV2Model, ViTModel)}


@pytest.mark.parametrize(("name", "hf_class"), CLASSES, ids=[f"{name}-{cls}" for name, cls in CLASSES])
def test_every_transformers_key_is_mapped_or_dropped_by_name(name, hf_class):
    ours, config = CONFIGS[name]
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
