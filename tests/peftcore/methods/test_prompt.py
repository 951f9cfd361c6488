"""Prompt tuning: AdapterHub's config, numbers, files and parameter count; per-token outputs at the input's positions;
first-token readers on the first prompt vector as in AdapterHub; unpadded and mixed batches; composition refusals."""

from __future__ import annotations

import warnings

import adapters
import pytest
import torch
import transformers as tf

from peftcore import LoRAConfig, PromptTuningConfig
from peftcore.composition import Average, BatchSplit, Fuse, MultiTask, Split, Stack
from peftcore.models import BertModel, Tokenizer
from tests.archs import ADAPTERHUB_ARCHS, ARCHS, BERT_FAMILY, inputs, reference, tiny_model
from tests.parity import assert_parity, padded_batch

P = 10  # the default prompt_length, what adapterhub_trained's adapters have


def run(model, batch, **kwargs):
    return model(**batch, **kwargs)


def adapterhub_model(directory, eager: bool = True):
    """AdapterHub over a fresh transformers model of ``directory``; eager attention unless told (see
    test_adapterhub_sdpa_lets_its_prompt_attend_padding for why its default is not the reference on padded rows)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.AutoModel.from_pretrained(directory, **({"attn_implementation": "eager"} if eager else {})).eval()
    adapters.init(model)
    return model


def alone(model, ids, mask, row):
    """Row ``row`` of a padded batch run without its padding."""
    n = int(mask[row].sum())
    return model(input_ids=ids[row:row + 1, :n], attention_mask=mask[row:row + 1, :n])


@pytest.mark.parametrize("config", [{}, dict(prompt_length=4, combine="prefix_after_bos", init_weights_seed=3),
                                    dict(prompt_init="from_string", prompt_init_text="hello")])
def test_config_fields_defaults_and_file_dict_are_adapterhubs(config):
    ours, theirs = PromptTuningConfig(**config), adapters.PromptTuningConfig(**config)
    assert ours.to_dict() == theirs.to_dict()
    assert PromptTuningConfig.from_dict(theirs.to_dict()) == ours
    assert ours.random_uniform_scale == theirs.random_uniform_scale == 0.5  # a class attribute there, never saved


@pytest.mark.parametrize("bad, match", [(dict(prompt_length=0), "positive"), (dict(combine="suffix"), "combine"),
                                        (dict(prompt_init="zeros"), "prompt_init"),
                                        (dict(prompt_init="from_string"), "prompt_init_text"),
                                        (dict(random_uniform_scale=-1.0), "positive")])
def test_bad_fields_are_refused_with_the_field_named(bad, match):
    with pytest.raises(ValueError, match=match):
        PromptTuningConfig(**bad)


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_prompt_trained_by_adapterhub_gives_its_outputs_count_and_reloads_there(adapterhub_trained, arch, tmp_path):
    directory, theirs, ids, mask = adapterhub_trained(arch, "prompt_tuning")
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    assert ours.adapter_summary(as_dict=True)[0]["#param"] == theirs.adapter_summary(as_dict=True)[0]["#param"]
    ours.save_adapter(tmp_path / "back", "a", format="adapterhub")
    again = adapterhub_model(directory)
    again.load_adapter(str(tmp_path / "back"))
    again.set_active_adapters("a")
    batch = dict(input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        got = run(ours, batch)
        assert got.last_hidden_state.shape == (*ids.shape, ours.config.hidden_size)  # the prompt positions cut
        expected = run(again, batch)  # T + P positions, the prompt first
        assert_parity(got.last_hidden_state, expected.last_hidden_state[:, P:], mask=mask)
        assert_parity(got.pooler_output, expected.pooler_output)  # both pool the first prompt vector
        for row in range(len(ids)):  # AdapterHub's own (SDPA) model, each row without padding
            n = int(mask[row].sum())
            assert_parity(got.last_hidden_state[row, :n], alone(theirs, ids, mask, row).last_hidden_state[0, P:])


def test_adapterhub_sdpa_lets_its_prompt_attend_padding(adapterhub_trained, tmp_path):
    """AdapterHub pads its SDPA mask with attended rows for the prompt (``prefix_attention_mask(mask, [2, 3])``), so its
    prompt positions attend the padding and a padded row's outputs depend on how much padding the batch has (its eager
    attention does not). Ours give each row what it gives alone."""
    directory, theirs, ids, mask = adapterhub_trained("bert", "prompt_tuning")
    ours = BertModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        padded = theirs(input_ids=ids, attention_mask=mask).last_hidden_state[2, P:P + 3]
        single = alone(theirs, ids, mask, 2).last_hidden_state[0, P:]
        assert (padded - single).abs().max() > 1e-4  # AdapterHub's defect
        assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state[2, :3], single)


def input_positions(tokens: int, combine: str, length: int = 3) -> list[int]:
    """Where AdapterHub's outputs hold the input's ``tokens`` tokens, a prompt of ``length`` inserted by ``combine``."""
    if combine == "prefix_after_bos":
        return [0, *range(length + 1, tokens + length)]
    return list(range(length, tokens + length))


# every architecture AdapterHub is a reference for, and the two whose embeddings project up after the prompt
CASES = [*((arch, "default") for arch in ADAPTERHUB_ARCHS), ("electra", "every_tensor"), ("albert", "every_tensor")]


@pytest.mark.parametrize(("arch", "variant"), CASES)
@pytest.mark.parametrize("combine", ["prefix", "prefix_after_bos"])
def test_every_adapterhub_architecture_gives_its_outputs_at_the_input_positions(hf_checkpoint, arch, variant,
                                                                               combine, tmp_path):
    """Each row against AdapterHub's (default attention) run of that row alone, without padding; images have none."""
    directory, _ = reference(hf_checkpoint, arch, variant=variant)
    theirs = adapterhub_model(directory, eager=False)
    theirs.add_adapter("a", config=adapters.PromptTuningConfig(prompt_length=3, combine=combine))
    theirs.set_active_adapters("a")
    theirs.save_adapter(str(tmp_path / "a"), "a")
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    if combine == "prefix":  # the count is combine's either way; AdapterHub's summary takes most of a second
        assert ours.adapter_summary(as_dict=True)[0]["#param"] == theirs.adapter_summary(as_dict=True)[0]["#param"]
    batch = inputs(ours.config)
    with torch.no_grad():
        got = run(ours, batch, output_hidden_states=True)
        assert all(h.shape == got.last_hidden_state.shape for h in got.hidden_states)
        if "attention_mask" not in batch:
            expected = run(theirs, batch).last_hidden_state
            assert_parity(got.last_hidden_state, expected[:, input_positions(expected.shape[1] - 3, combine)])
            return
        ids, mask = batch["input_ids"], batch["attention_mask"]
        for row in range(len(ids)):
            n = int(mask[row].sum())
            expected = alone(theirs, ids, mask, row).last_hidden_state[0]
            assert_parity(got.last_hidden_state[row, :n], expected[input_positions(n, combine)])


def test_heads_read_the_prompted_sequence_as_adapterhubs_and_tagging_logits_align_with_tokens(hf_checkpoint,
                                                                                               tmp_path):
    """A first-token classifier reads the first prompt vector under "prefix" (AdapterHub's and PEFT's choice, kept so
    their trained heads give their predictions); tagging logits come back one per input token."""
    directory, _ = reference(hf_checkpoint, "roberta")
    theirs = adapters.RobertaAdapterModel.from_pretrained(directory, attn_implementation="eager").eval()
    theirs.add_adapter("a", config="prompt_tuning[prompt_length=3]")
    theirs.add_classification_head("a", num_labels=3)
    theirs.add_tagging_head("t", num_labels=2)
    theirs.set_active_adapters("a")
    theirs.save_adapter(str(tmp_path / "a"), "a")
    theirs.save_head(str(tmp_path / "t"), "t")
    ours = ARCHS["roberta"].model.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    ours.load_head(tmp_path / "t")
    batch = inputs(ours.config)
    with torch.no_grad():
        ours.active_head = "a"
        assert_parity(run(ours, batch).logits, theirs(**batch, head="a").logits)
        ours.active_head = "t"
        tags = run(ours, batch).logits
        assert tags.shape[:2] == batch["input_ids"].shape
        assert_parity(tags, theirs(**batch, head="t").logits[:, 3:], mask=batch["attention_mask"])
        labels = torch.randint(0, 2, batch["input_ids"].shape).masked_fill(batch["attention_mask"] == 0, -100)
        assert torch.isclose(run(ours, batch, labels=labels).loss, theirs(**batch, head="t", labels=labels).loss,
                             atol=1e-5)


def test_from_string_starts_from_the_token_embeddings_as_adapterhubs(minilm_checkpoint, tmp_path):
    config = dict(prompt_length=7, prompt_init="from_string", prompt_init_text="great movie")  # 4 tokens, repeated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = tf.AutoModel.from_pretrained(minilm_checkpoint)
    theirs.config.tokenizer_name_or_path = str(minilm_checkpoint)  # what AdapterHub reads its tokenizer from
    adapters.init(theirs)
    theirs.add_adapter("a", config=adapters.PromptTuningConfig(**config))
    ours = BertModel.from_pretrained(minilm_checkpoint)
    with pytest.raises(ValueError, match="model.tokenizer"):
        ours.add_adapter("a", PromptTuningConfig(**config))
    assert not ours.adapter_configs  # the refusal left nothing behind
    ours.tokenizer = Tokenizer.from_pretrained(minilm_checkpoint)
    ours.add_adapter("a", PromptTuningConfig(**config))
    expected = theirs.prompt_tuning.prompt_tunings["a"].prompt_embedding.weight
    assert_parity(ours.get_adapter("a")[-1]["prompt"].prompt_embedding.weight, expected)
    ours.save_adapter(tmp_path / "a", "a")
    fresh = BertModel.from_pretrained(minilm_checkpoint)  # no tokenizer: a saved prompt needs none to load
    fresh.load_adapter(tmp_path / "a")
    assert_parity(fresh.get_adapter("a")[-1]["prompt"].prompt_embedding.weight, expected)


@pytest.mark.parametrize("arch", ["bert", "deberta-v2", "albert"])
def test_unpadded_execution_gives_the_padded_numbers(arch):
    model = tiny_model(arch, "attention" if arch == "deberta-v2" else "every_tensor")
    model.add_adapter("p", "prompt_tuning[prompt_length=3, combine=prefix_after_bos]", set_active=True)
    batch = inputs(model.config, (6, 4, 2))
    with torch.no_grad():
        packed = run(model, batch)
        model.unpad = False
        padded = run(model, batch)
    assert_parity(packed.last_hidden_state, padded.last_hidden_state, mask=batch["attention_mask"])


@pytest.mark.parametrize("arch", ["bert", "deberta-v2", "vit"])
def test_mixed_batch_rows_give_what_each_gives_alone(arch):
    model = tiny_model(arch, "default")
    model.add_adapter("long", "prompt_tuning[prompt_length=4]")
    model.add_adapter("short", "prompt_tuning[prompt_length=2, combine=prefix_after_bos]")
    model.add_adapter("lora", LoRAConfig(r=2))
    names = ["short", None, "long", "lora"]
    batch = inputs(model.config, (5, 3, 4, 5))
    with torch.no_grad():
        mixed = run(model, batch, adapter_names=names).last_hidden_state
        for row, name in enumerate(names):
            model.set_active_adapters(name)
            single = run(model, {key: t[row:row + 1] for key, t in batch.items()}).last_hidden_state
            mask = batch.get("attention_mask")
            assert_parity(mixed[row:row + 1], single, mask=None if mask is None else mask[row:row + 1])


def test_a_stack_with_other_methods_runs_both_and_unsupported_blocks_are_refused():
    model = tiny_model("bert")
    model.add_adapter("p", "prompt_tuning[prompt_length=2]")
    model.add_adapter("q", "prompt_tuning[prompt_length=3]")
    model.add_adapter("lora", LoRAConfig(r=2))
    batch = inputs(model.config, (4, 2))
    with torch.no_grad():
        for parameter in model.adapter_parameters("lora"):  # LoRA starts as the identity
            parameter.normal_()
        model.set_active_adapters(Stack("lora", "p"))  # AdapterHub would ignore "p" here: it reads setup.first()
        both = run(model, batch).last_hidden_state
        model.set_active_adapters("p")
        assert not torch.allclose(both, run(model, batch).last_hidden_state)
    for setup, match in [(Stack("p", "q"), "one prompt"), (Average("p", "q"), "whole sequence"),
                         (Split("p", "q", splits=2), "whole sequence"), (Fuse("p", "q"), "whole sequence")]:
        with pytest.raises(ValueError, match=match):
            model.set_active_adapters(setup)
        assert model.active_adapters == Stack("p")  # the refusal left the setup as it was
    model.set_active_adapters(BatchSplit("p", "q", batch_sizes=[1, 1]))
    with pytest.raises(ValueError, match="no weight can hold"):
        model.merge_adapter("p")


def test_only_the_prompt_trains_and_the_base_stays_bit_identical():
    model = tiny_model("roberta")
    model.add_adapter("p", "prompt_tuning[prompt_length=2]")
    base = {name: p.clone() for name, p in model.named_parameters()}
    model.train_adapter("p")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = padded_batch(model.config.vocab_size, model.config.pad_token_id, (5, 3))
    for _ in range(2):
        model(input_ids=ids, attention_mask=mask).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, base[name])}
    assert changed == {"prompt.adapters.p.prompt_embedding.weight"}


def test_a_model_without_the_prompt_site_says_so():
    model = tiny_model("bert")
    model.prompt = torch.nn.Identity()  # a researcher's model built without one
    with pytest.raises(ValueError, match=r"no \['prompt'\] site"):
        model.add_adapter("p", "prompt_tuning")


def test_a_multitask_block_gives_each_row_its_tasks_prompt_as_alone():
    model = tiny_model("bert")
    for name, config in (("p", "prompt_tuning[prompt_length=3]"), ("q", "prompt_tuning[prompt_length=5]"),
                         ("l", "lora")):
        model.add_adapter(name, config)
    with torch.no_grad():
        for parameter in model.adapter_parameters("l"):
            parameter.normal_(0.0, 0.3)
    ids, mask = padded_batch(model.config.vocab_size, 0, lengths=(6, 4, 6, 5))
    model.set_active_adapters(MultiTask("p", "q", "l"))
    with torch.no_grad():
        together = model(input_ids=ids, attention_mask=mask, task_ids=["q", "p", "l", "q"]).last_hidden_state
        for row, task in enumerate(["q", "p", "l", "q"]):
            model.set_active_adapters(task)
            alone = model(input_ids=ids[row:row + 1], attention_mask=mask[row:row + 1]).last_hidden_state
            assert_parity(together[row:row + 1], alone, mask=mask[row:row + 1])
