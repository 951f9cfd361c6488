"""DistilBERT equals transformers' DistilBertModel and DistilBertFor* on the same weights, both ways; its config.json
names round trip; AdapterHub's and PEFT's adapters on it give their outputs, and where AdapterHub is wrong on it a test
says so.

The registry-wide tests (sites, unpadded execution, every method and composition, files, numerics, AdapterHub and PEFT
interop, the CLI) run DistilBERT too; this file holds what is DistilBERT's own.
"""

from __future__ import annotations

import json
import warnings

import adapters
import pytest
import torch
import transformers as tf

from peftcore.cli import main
from peftcore.models import DistilBertConfig, DistilBertModel
from peftcore.models.distilbert import sinusoidal_positions
from tests.archs import ARCHS, inputs
from tests.models import families
from tests.parity import assert_parity, real_tokens

DISTILBERT = ARCHS["distilbert"]
HEADS = tuple(DISTILBERT.hf)  # None (the bare encoder: DistilBERT has no pooler), then every head


def checkpoint(hf_checkpoint, head: str | None = None, **fields):
    """(directory, transformers model) of a random-init DistilBERT with ``head``; biases and norms randomised."""
    return families.checkpoint(hf_checkpoint, "distilbert", head, **fields)


def run(model, batch, **kwargs):
    with torch.no_grad():
        return model(**batch, **kwargs)


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
@pytest.mark.parametrize("head", HEADS)
def test_every_head_equals_transformers_on_a_padded_batch(hf_checkpoint, head, unpad):
    assert families.check_every_head(hf_checkpoint, "distilbert", head, unpad).pooler is None


def test_hidden_states_attentions_and_embedding_inputs_equal_transformers(hf_checkpoint):
    directory, theirs = checkpoint(hf_checkpoint, activation="gelu_new", n_layers=3)
    ours = DistilBertModel.from_pretrained(directory).eval()
    batch = inputs(theirs.config)
    mask = batch["attention_mask"]
    expected = run(theirs, batch, output_hidden_states=True, output_attentions=True)
    got = run(ours, batch, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == len(expected.hidden_states) == 4
    for mine, hers in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_parity(mine, hers, mask=mask)
    for mine, hers in zip(got.attentions, expected.attentions, strict=True):  # the rows of real query tokens
        assert_parity(mine.transpose(1, 2), hers.transpose(1, 2), mask=mask)
    embeds = theirs.embeddings.word_embeddings(batch["input_ids"])
    by_embeds = {"inputs_embeds": embeds, "attention_mask": mask}
    assert_parity(run(ours, by_embeds).last_hidden_state, run(theirs, by_embeds).last_hidden_state, mask=mask)


def test_token_type_ids_are_accepted_and_ignored_as_distilbert_has_none(hf_checkpoint):
    """Our Tokenizer returns token_type_ids for every model; DistilBERT separates a pair by [SEP] alone."""
    directory, theirs = checkpoint(hf_checkpoint)
    ours = DistilBertModel.from_pretrained(directory).eval()
    batch = inputs(theirs.config)
    types = (torch.arange(batch["input_ids"].shape[1]) >= 4).long().expand_as(batch["input_ids"])
    assert torch.equal(run(ours, {**batch, "token_type_ids": types}).last_hidden_state,
                       run(ours, batch).last_hidden_state)
    assert "token_type" not in " ".join(ours.state_dict())


def test_sinusoidal_positions_are_transformers_table_and_stay_fixed(hf_checkpoint):
    directory, theirs = checkpoint(hf_checkpoint, sinusoidal_pos_embds=True)
    ours = DistilBertModel.from_pretrained(directory).eval()
    batch = inputs(theirs.config)
    mask = batch["attention_mask"]
    assert_parity(run(ours, batch).last_hidden_state, run(theirs, batch).last_hidden_state, mask=mask)
    fresh_theirs = tf.DistilBertModel(DISTILBERT.hf_config(sinusoidal_pos_embds=True))
    fresh = DistilBertModel(DISTILBERT.config(sinusoidal_pos_embds=True))
    table = fresh_theirs.embeddings.position_embeddings.weight
    assert_parity(fresh.embeddings.position.weight, table, atol=1e-7)
    assert_parity(sinusoidal_positions(*table.shape), table, atol=1e-7)
    assert not fresh.embeddings.position.weight.requires_grad and not table.requires_grad  # not trained, as theirs
    assert not ours.embeddings.position.weight.requires_grad


@pytest.mark.parametrize("head", HEADS)
def test_an_exported_checkpoint_loads_in_transformers_with_our_outputs(hf_checkpoint, head, tmp_path):
    again = families.check_export(hf_checkpoint, "distilbert", head, tmp_path)
    if head == "masked_lm":
        assert again.vocab_projector.weight is again.distilbert.embeddings.word_embeddings.weight


def test_config_json_names_round_trip_through_the_records_renames(hf_checkpoint, tmp_path):
    """config.json says dim, n_layers, n_heads, hidden_dim, activation, dropout, attention_dropout,
    seq_classif_dropout; our config has the names every config has, and exports transformers' names back."""
    directory, theirs = checkpoint(hf_checkpoint, activation="gelu_new", dropout=0.2, attention_dropout=0.3,
                                   hidden_dim=80, seq_classif_dropout=0.25)
    raw = json.loads((directory / "config.json").read_text())
    names = ("dim", "n_layers", "n_heads", "hidden_dim", "activation", "dropout", "attention_dropout",
             "seq_classif_dropout")
    assert set(names) <= set(raw)
    raw["tie_weights_"] = True  # in distilbert-base-*'s config.json; transformers never reads it
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "config.json").write_text(json.dumps(raw))
    (tmp_path / "in" / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every field known or knowingly ignored: no "not used" warning
        ours = DistilBertModel.from_pretrained(tmp_path / "in")
    config = ours.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
            config.hidden_act, config.hidden_dropout_prob, config.attention_probs_dropout_prob,
            config.classifier_dropout) == (theirs.config.dim, theirs.config.n_layers, theirs.config.n_heads, 80,
                                           "gelu_new", 0.2, 0.3, 0.25)
    ours.save_pretrained(tmp_path / "out")
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {key: exported[key] for key in names} == {key: raw[key] for key in names}
    # none of our names: transformers would keep them as attributes, and AdapterHub maps classifier_dropout onto
    # seq_classif_dropout in every DistilBertConfig once it has wrapped one (adapters/wrappers/configuration.py)
    assert not {"hidden_size", "num_hidden_layers", "intermediate_size", "hidden_act", "classifier_dropout"} & set(
        exported)
    assert tf.DistilBertConfig.from_pretrained(tmp_path / "out").to_diff_dict().items() >= {
        key: raw[key] for key in ("dim", "n_layers", "hidden_dim", "activation")}.items()
    assert DistilBertModel.from_pretrained(tmp_path / "out").config == config


@pytest.mark.parametrize(("field", "value", "message"), [
    ("type_vocab_size", 2, "no token-type embeddings"),
    ("add_pooling_layer", True, "no pooler"),
    ("layer_norm_eps", 1e-5, "fixes it at 1e-12"),
    ("qa_dropout", 1.0, "must lie in"),
])
def test_what_distilbert_does_not_have_is_refused_by_its_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        DistilBertConfig(**{field: value})


def test_cli_info_names_distilbert_and_convert_round_trips(hf_checkpoint, tmp_path, capsys):
    directory, theirs = checkpoint(hf_checkpoint, "sequence_classification")
    assert main(["convert", str(directory), str(tmp_path / "ours")]) == 0
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    assert main(["info", str(tmp_path / "back")]) == 0
    printed = capsys.readouterr().out
    assert "distilbert (DistilBertModel), head: sequence_classification" in printed
    assert "2 layers, hidden 64, 4 heads" in printed
    again = tf.DistilBertForSequenceClassification.from_pretrained(tmp_path / "back")
    assert all(torch.equal(again.state_dict()[key], t) for key, t in theirs.state_dict().items())


# ---- AdapterHub ---------------------------------------------------------------------------------------------------

SUMMARY_CONFIGS = ["seq_bn", "double_seq_bn", "par_bn", "seq_bn_inv", "compacter", "compacter++", "prefix_tuning",
                   "lora", "ia3", "mam", "unipelt", "double_seq_bn[reduction_factor={'0': 4, 'default': 16}, "
                   "leave_out=[5]]"]


@pytest.mark.parametrize("config", SUMMARY_CONFIGS)
def test_adapter_parameter_counts_equal_adapterhubs_at_distilbert_base_size(config):
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        theirs, ours = tf.DistilBertModel(tf.DistilBertConfig()), DistilBertModel(DistilBertConfig())
        adapters.init(theirs)
        theirs.add_adapter("a", config=config)
        ours.add_adapter("a", config)
    assert ours.adapter_summary(as_dict=True) == theirs.adapter_summary(as_dict=True)


def adapterhub_trained(hf_checkpoint, tmp_path, config: str, eager: bool = False):
    """(checkpoint dir, AdapterHub DistilBertAdapterModel with adapter 'a' trained 3 AdamW steps and saved to
    tmp_path / "a", batch). A flex model: a bare one drops Compacter's shared parameters when saving."""
    directory, theirs = checkpoint(hf_checkpoint)
    batch = inputs(theirs.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = adapters.DistilBertAdapterModel.from_pretrained(
            directory, **({"attn_implementation": "eager"} if eager else {}))
    model.add_adapter("a", config=config)
    model.train_adapter("a")
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(**batch).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_adapter(str(tmp_path / "a"), "a")
    return directory, model, batch


def hidden(model, batch):
    return real_tokens(run(model, batch).last_hidden_state, batch["attention_mask"])


def test_compacter_trained_by_adapterhub_gives_its_outputs(hf_checkpoint, tmp_path):
    directory, theirs, batch = adapterhub_trained(hf_checkpoint, tmp_path,
                                                  "compacter[reduction_factor=8, phm_c_init='uniform']")
    ours = DistilBertModel.from_pretrained(directory).eval()
    plain = hidden(ours, batch)
    ours.load_adapter(tmp_path / "a", set_active=True)
    expected = hidden(theirs, batch)
    assert_parity(hidden(ours, batch), expected)
    assert (expected - plain).abs().max() > 1e-3


PREFIX = "prefix_tuning[prefix_length=4, bottleneck_size=16]"


def test_adapterhub_prefix_tuning_under_sdpa_mis_masks_padded_batches_and_ours_gives_its_eager_outputs(
        hf_checkpoint, tmp_path):
    """AdapterHub 1.3.0's DistilBERT attention calls its prefix layer with ``invert_mask=False``, so the mask columns
    of the prefix are 1 (methods/prefix_tuning.py:593): right for the eager path's 1/0 keep-mask, wrong for the additive
    mask (0 keep, dtype minimum masked) of transformers' default SDPA path, where every prefix score is raised by 1 on a
    padded batch. Without padding (no mask), and on the eager path, its outputs are ours."""
    directory, theirs, batch = adapterhub_trained(hf_checkpoint, tmp_path, PREFIX, eager=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdpa = adapters.DistilBertAdapterModel.from_pretrained(directory, attn_implementation="sdpa").eval()
    sdpa.load_adapter(str(tmp_path / "a"), set_active=True)
    ours = DistilBertModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    assert_parity(hidden(ours, batch), hidden(theirs, batch))  # eager: equal
    assert (hidden(sdpa, batch) - hidden(theirs, batch)).abs().max() > 1e-2  # padded: SDPA differs
    unpadded = {"input_ids": batch["input_ids"][:1]}  # the longest row, no padding: no mask
    assert_parity(run(sdpa, unpadded).last_hidden_state, run(ours, unpadded).last_hidden_state)


def test_adapterhub_prefix_tuning_files_move_both_ways_under_its_prefix_pool_name(hf_checkpoint, tmp_path):
    """AdapterHub's DistilBERT names its prefix pool ``prefix_tunings.{name}.self`` (BERT's: ``self_prefix``)."""
    directory, theirs, batch = adapterhub_trained(hf_checkpoint, tmp_path, PREFIX, eager=True)
    ours = DistilBertModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    ours.save_adapter(tmp_path / "ours", "a", format="adapterhub")
    theirs_keys = torch.load(tmp_path / "a" / "pytorch_adapter.bin", weights_only=True).keys()  # from a flex model
    ours_keys = torch.load(tmp_path / "ours" / "pytorch_adapter.bin", weights_only=True).keys()
    assert "prefix_tuning.prefix_tunings.a.self.wte.weight" in ours_keys  # not also each layer's copy of the pool
    assert set(ours_keys) <= {key.removeprefix("distilbert.") for key in theirs_keys}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = adapters.DistilBertAdapterModel.from_pretrained(directory, attn_implementation="eager").eval()
    again.load_adapter(str(tmp_path / "ours"), set_active=True)
    assert_parity(hidden(again, batch), hidden(theirs, batch))
