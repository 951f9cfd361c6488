"""AdaLoRA against HF PEFT 0.21.2: the same run trained by PEFT's loop with ``update_and_allocate`` and by our Trainer
gives the same ranks and outputs; PEFT's files (pruned, with ``rank_pattern``) load with its outputs and ours load in
PEFT with ours; merge/reset is exact; bad options are refused."""

from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
import transformers as tf

from peftcore import AdaLoraConfig
from peftcore.methods.adalora import PEFT_NAMES
from peftcore.training import Trainer, TrainingConfig
from tests import archs
from tests.archs import ARCHS
from tests.parity import assert_parity
from tests.peftcore.interop.test_peft import inputs, reference
from tests.peftcore.methods.test_loha import assert_round_trip_and_exact_merge

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
STEPS, BATCH = 6, 4


def examples(vocab_size: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab_size, (STEPS * BATCH, 8), generator=generator)
    labels = torch.randint(0, 2, (STEPS * BATCH,), generator=generator)
    return [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y}
            for i, y in zip(ids, labels, strict=True)]


def train_peft_as_our_trainer(model, data) -> None:
    """PEFT's documented loop, with our Trainer's settings: AdamW (decay on matrices only), linear decay, clipping,
    the same data order; ``update_and_allocate(step)`` after each optimizer step."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() > 1], "weight_decay": 0.01},
                                   {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, (STEPS - step) / STEPS))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
    model.train()
    for step in range(STEPS):
        batch = {key: torch.stack([data[i][key] for i in order[step * BATCH:(step + 1) * BATCH]]) for key in data[0]}
        model(**batch).loss.backward()  # PEFT adds the orthogonality regulariser to the loss
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    model.eval()


def test_peft_allocator_and_our_trainer_train_to_the_same_ranks_and_outputs(hf_checkpoint, tmp_path):
    directory, _ = archs.reference(hf_checkpoint, "bert", None, **NO_DROPOUT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classifier is new
        hf = tf.BertForSequenceClassification.from_pretrained(directory)
    classifier = {key: t.clone() for key, t in hf.classifier.state_dict().items()}
    config = peft.AdaLoraConfig(init_r=4, target_r=2, tinit=1, tfinal=2, total_step=STEPS, lora_alpha=6,
                                target_modules=["query", "value", "intermediate.dense"], task_type="SEQ_CLS")
    theirs = peft.get_peft_model(hf, config)
    theirs.save_pretrained(tmp_path / "start")
    ours = ARCHS["bert"].model.from_pretrained(directory)
    ours.load_adapter(tmp_path / "start", load_as="a", with_head=False)
    ours.add_classification_head("a", layers=1, use_pooler=True)  # = HF's pooler, dropout, classifier
    ours.heads["a"][-1].load_state_dict(classifier)
    data = examples(ours.config.vocab_size)

    train_peft_as_our_trainer(theirs, data)
    settings = TrainingConfig(epochs=1, batch_size=BATCH, learning_rate=1e-2, warmup_ratio=0.0)
    Trainer(ours, "a", settings, data, progress=False).fit()

    pattern = theirs.peft_config["default"].rank_pattern
    placed = sorted(((site.layer, site.name), site.module.adapters["a"]) for site in ours.sites_found
                    if "a" in site.module.adapters)  # PEFT's order: layer by layer, query, value, intermediate
    masks = [module.rank_mask.tolist() for _, module in placed]
    assert masks == list(pattern.values())
    assert sum(map(sum, masks)) == 2 * len(masks)  # the budget fell from init_r = 4 to target_r = 2 per module
    batch = {key: torch.stack([example[key] for example in data[:5]]) for key in ("input_ids", "attention_mask")}
    with torch.no_grad():
        assert_parity(ours(**batch).logits, theirs(**batch).logits)


def train_and_save_in_peft(model, config, batch, directory):
    """3 AdamW steps with PEFT's allocator (tinit 0, so it masks from the first step), the loss with PEFT's
    regulariser; then save_pretrained, which prunes the masked triplets. The triplets start random
    (init_lora_weights=False): PEFT's default N(0, 0.02) vectors leave the update too small to tell apart."""
    model = peft.get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 1, 1])
    for step in range(3):
        model.train()(**batch, labels=labels).loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    model.save_pretrained(directory)
    return model.eval()


@pytest.mark.parametrize("arch, targets", [("bert", ["query", "value"]), ("roberta", r".*\.(key|\d\.output\.dense)")])
def test_peft_files_load_with_peft_outputs_both_ways_and_merge_exactly(hf_checkpoint, arch, targets, tmp_path):
    directory, model = reference(hf_checkpoint, arch)
    batch = inputs(arch)
    config = peft.AdaLoraConfig(init_r=4, target_r=2, tinit=0, tfinal=1, total_step=4, lora_alpha=4,
                                target_modules=targets, init_lora_weights=False, task_type="SEQ_CLS")
    theirs = train_and_save_in_peft(model, config, batch, tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["rank_pattern"] and not all(map(all, saved["rank_pattern"].values()))  # triplets were pruned
    assert_round_trip_and_exact_merge(arch, theirs, directory, batch, tmp_path)
    assert json.loads((tmp_path / "back" / "adapter_config.json").read_text())["rank_pattern"] == saved["rank_pattern"]


def test_defaults_are_pefts():
    theirs = peft.AdaLoraConfig(total_step=1)
    assert {field: getattr(AdaLoraConfig(), field) for field in PEFT_NAMES if field != "total_step"} == \
        {field: getattr(theirs, peft_field) for field, peft_field in PEFT_NAMES.items() if field != "total_step"}


@pytest.mark.parametrize("fields, message", [
    (dict(target_r=6, init_r=4), "exceeds init_r"),
    (dict(tinit=3, tfinal=2, total_step=5), "leaves no step"),
    (dict(beta1=0.0), "beta1"),
    (dict(orth_reg_weight=-1), "orth_reg_weight"),
    (dict(attn_matrices=("q", "x")), "attn_matrices"),
])
def test_bad_options_are_refused_naming_them(fields, message):
    with pytest.raises(ValueError, match=message):
        AdaLoraConfig(**fields)


def test_saving_for_peft_needs_total_step_and_averaging_is_refused(tmp_path):
    model = archs.tiny_model("bert")
    model.add_adapter("a", "adalora[init_r=2, target_r=1]")
    with pytest.raises(ValueError, match="total_step"):
        model.save_adapter(tmp_path / "a", "a", format="peft")
    assert not (tmp_path / "a").exists()
    model.add_adapter("b", "adalora[init_r=2, target_r=1]")
    with pytest.raises(ValueError, match="not averaged"):
        model.average_adapter("c", ["a", "b"])


def test_a_resumed_run_allocates_as_an_uninterrupted_one(tmp_path):
    """The allocator's smoothed scores travel in the Trainer's checkpoints, so an interrupted run resumes to the same
    scores, ranks and weights."""
    from tests.peftcore.test_training import adapter_weights, fresh_model, toy_data

    adalora = "adalora[init_r=4, target_r=2, tinit=1]"  # 8 steps, masks from step 2 on
    config = TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-2, checkpoint_every=1, eval_every=1,
                            checkpoint_dir=str(tmp_path / "run"))
    straight = fresh_model(adalora)
    uninterrupted = Trainer(straight, "a", TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-2), toy_data(),
                            progress=False)
    uninterrupted.fit()

    def crash_at_step_5(model):
        if trainer.step == 5:
            raise KeyboardInterrupt
        return {}

    trainer = Trainer(fresh_model(adalora), "a", config, toy_data(), evaluate=crash_at_step_5, progress=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    resumed = fresh_model(adalora)
    trainer = Trainer(resumed, "a", config, toy_data(), progress=False)
    assert trainer.fit().steps == 8
    expected = adapter_weights(straight)
    for key, tensor in adapter_weights(resumed).items():
        torch.testing.assert_close(tensor, expected[key], atol=1e-6, rtol=0)
    (theirs,), (ours,) = uninterrupted.callbacks, trainer.callbacks
    for then, now in zip(theirs.uncertainties, ours.uncertainties, strict=True):
        for name, tensor in now.items():
            torch.testing.assert_close(tensor, then[name], atol=1e-9, rtol=1e-5)
