"""ALBERT equals transformers' AlbertModel and AlbertFor* on the same weights, both ways, with factorised embeddings
and layers shared across groups; an adapter has one module per distinct layer, as AdapterHub's and PEFT's do
(models/albert.py says why), merges exactly into the shared weights, and AdapterHub's files on ALBERT give its
outputs — but where AdapterHub is wrong on ALBERT, which a test here pins.

The registry-wide tests (sites, unpadded execution, every method and composition, files, numerics, AdapterHub and PEFT
interop, the CLI) run ALBERT too, with two distinct layers run twice each and embeddings as wide as the layers; this
file runs the factorised model (``FACTORISED``: embeddings 32 wide under 64, five passes over two groups of two).
"""

from __future__ import annotations

import json
import warnings

import adapters
import pytest
import torch
import transformers as tf

from peftcore.cli import main
from peftcore.models import AlbertConfig, AlbertModel
from peftcore.models.albert import AlbertLayer
from peftcore.models.convert.keymap import ConversionError
from tests.archs import ARCHS, inputs, reference, tiny_model
from tests.models import families
from tests.parity import assert_parity, real_tokens

ALBERT = ARCHS["albert"]
HEADS = tuple(ALBERT.hf)  # None (the bare encoder, with its pooler), then every head
# pass i runs group ⌊i / 2.5⌋: groups 0, 0, 0, 1, 1, each of two layers; embeddings narrower than the layers
FACTORISED = dict(embedding_size=32, num_hidden_layers=5, num_hidden_groups=2, inner_group_num=2)
ALBERT_BASE = dict(vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072)  # albert-base-v2: one group of one layer, run 12 times


def checkpoint(hf_checkpoint, head: str | None = None, **fields):
    """(directory, transformers model) of a random-init factorised ALBERT with ``head``; biases and norms randomised."""
    return families.checkpoint(hf_checkpoint, "albert", head, **{**FACTORISED, **fields})


def run(model, batch, **kwargs):
    with torch.no_grad():
        return model(**batch, **kwargs)


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
@pytest.mark.parametrize("head", HEADS)
def test_every_head_equals_transformers_on_a_padded_batch(hf_checkpoint, head, unpad):
    ours = families.check_every_head(hf_checkpoint, "albert", head, unpad, **FACTORISED)
    assert (ours.pooler is not None) == (head in (None, "sequence_classification"))


def test_hidden_states_attentions_and_embedding_inputs_equal_transformers(hf_checkpoint):
    """One hidden state per pass (its group's last layer), one attention map per layer run."""
    directory, theirs = checkpoint(hf_checkpoint, type_vocab_size=3)
    ours = AlbertModel.from_pretrained(directory).eval()
    batch = inputs(theirs.config)
    mask = batch["attention_mask"]
    batch["token_type_ids"] = (torch.arange(mask.shape[1]) >= 4).long().expand_as(mask) * 2
    expected = run(theirs, batch, output_hidden_states=True, output_attentions=True)
    got = run(ours, batch, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == len(expected.hidden_states) == 6
    assert len(got.attentions) == len(expected.attentions) == 10
    for mine, hers in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_parity(mine, hers, mask=mask)
    for mine, hers in zip(got.attentions, expected.attentions, strict=True):  # the rows of real query tokens
        assert_parity(mine.transpose(1, 2), hers.transpose(1, 2), mask=mask)
    assert_parity(got.pooler_output, expected.pooler_output)
    embeds = theirs.embeddings.word_embeddings(batch["input_ids"])  # (B, T, E): before the mapping to C
    by_embeds = {"inputs_embeds": embeds, "attention_mask": mask}
    assert_parity(run(ours, by_embeds).last_hidden_state, run(theirs, by_embeds).last_hidden_state, mask=mask)


def test_each_distinct_layer_is_stored_once_and_runs_in_transformers_order(hf_checkpoint):
    directory, theirs = checkpoint(hf_checkpoint)
    ours = AlbertModel.from_pretrained(directory)
    assert len(ours.layers) == 4 and ours.aliases() == set()  # one tensor per weight: no aliases to track
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    order = [next(i for i, mine in enumerate(ours.layers) if mine is layer) for layer, _ in ours.layer_schedule()]
    assert order == [0, 1, 0, 1, 0, 1, 2, 3, 2, 3]
    assert [returned for _, returned in ours.layer_schedule()] == [False, True] * 5
    hf_layer = theirs.encoder.albert_layer_groups[1].albert_layers[0].attention.query.weight
    assert torch.equal(ours.layers[2].attn.q.weight, hf_layer)  # group 1, layer 0: our layer 1 · 2 + 0


def test_the_mapping_to_the_hidden_size_is_there_even_when_the_widths_agree(hf_checkpoint):
    directory, theirs = reference(hf_checkpoint, "albert")  # the registry's: embedding_size == hidden_size
    ours = AlbertModel.from_pretrained(directory)
    assert torch.equal(ours.embeddings.proj.weight, theirs.encoder.embedding_hidden_mapping_in.weight)


@pytest.mark.parametrize("head", HEADS)
def test_an_exported_checkpoint_loads_in_transformers_with_our_outputs(hf_checkpoint, head, tmp_path):
    again = families.check_export(hf_checkpoint, "albert", head, tmp_path, **FACTORISED)
    if head == "masked_lm":
        assert again.predictions.decoder.weight is again.albert.embeddings.word_embeddings.weight


def test_a_pretraining_checkpoint_loads_as_masked_lm_without_its_sentence_order_head(hf_checkpoint, tmp_path):
    """AlbertForPreTraining's sentence-order classifier is not implemented: its keys are dropped, the LM head kept."""
    _, theirs = checkpoint(hf_checkpoint, "masked_lm")
    pretraining = tf.AlbertForPreTraining(theirs.config).eval()
    pretraining.load_state_dict(theirs.state_dict(), strict=False)  # its pooler and SOP head stay random
    pretraining.save_pretrained(tmp_path)
    ours = AlbertModel.from_pretrained(tmp_path).eval()
    assert ours.config.head == "masked_lm" and ours.pooler is not None
    batch = inputs(theirs.config)
    assert_parity(run(ours, batch).logits, run(pretraining, batch).prediction_logits, mask=batch["attention_mask"])


def test_config_json_names_round_trip_and_legacy_fields_are_ignored_quietly(hf_checkpoint, tmp_path):
    directory, _ = checkpoint(hf_checkpoint, classifier_dropout_prob=0.25)
    raw = json.loads((directory / "config.json").read_text())
    assert raw["classifier_dropout_prob"] == 0.25 and "classifier_dropout" not in raw
    # albert-*-v2's config.json carries Google's original fields, which transformers never reads
    raw.update(down_scale_factor=1, gap_size=0, net_structure_type=0, num_memory_blocks=0, layers_to_keep=[])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "config.json").write_text(json.dumps(raw))
    (tmp_path / "in" / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = AlbertModel.from_pretrained(tmp_path / "in")
    assert ours.config.classifier_dropout == ours.config.classifier_dropout_prob == 0.25
    assert (ours.config.embedding_size, ours.config.num_hidden_groups, ours.config.inner_group_num) == (32, 2, 2)
    ours.save_pretrained(tmp_path / "out")
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["classifier_dropout_prob"] == 0.25 and "classifier_dropout" not in exported
    assert tf.AlbertConfig.from_pretrained(tmp_path / "out").classifier_dropout_prob == 0.25
    assert AlbertModel.from_pretrained(tmp_path / "out").config == ours.config


def test_weights_of_more_layers_per_group_than_the_config_says_are_refused(hf_checkpoint):
    directory, _ = checkpoint(hf_checkpoint)  # two layers per group
    with pytest.raises(ConversionError, match="albert_layers.1 in a group, but its config has inner_group_num=1"):
        AlbertModel.from_pretrained(directory, inner_group_num=1)


def test_relative_positions_are_refused_naming_the_field(hf_checkpoint, tmp_path):
    directory, _ = checkpoint(hf_checkpoint)
    raw = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "position_embedding_type": "relative_key"}))
    (tmp_path / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'; AlbertConfig implements only"):
        AlbertModel.from_pretrained(tmp_path)


def test_cli_info_names_albert_and_convert_round_trips(hf_checkpoint, tmp_path, capsys):
    directory, theirs = checkpoint(hf_checkpoint, "masked_lm")
    assert main(["convert", str(directory), str(tmp_path / "ours")]) == 0
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    assert main(["info", str(tmp_path / "back")]) == 0
    printed = capsys.readouterr().out
    assert "albert (AlbertModel), head: masked_lm" in printed and "5 layers, hidden 64, 4 heads" in printed
    again = tf.AlbertForMaskedLM.from_pretrained(tmp_path / "back")
    assert all(torch.equal(again.state_dict()[key], t) for key, t in theirs.state_dict().items())


# ---- adapters on shared layers --------------------------------------------------------------------------------


def shared_model(**fields) -> AlbertModel:
    """Tiny ALBERT: two distinct layers, each run twice."""
    return tiny_model("albert", **fields)


def batch_for(model) -> dict[str, torch.Tensor]:
    return inputs(model.config)


def test_an_adapter_has_one_module_per_distinct_layer_and_it_runs_in_each_of_its_layers_passes():
    model = shared_model()
    model.add_adapter("a", "seq_bn", set_active=True)
    placed = [(layer, site) for _, layer, site, _ in model.iter_adapters("a")]
    assert placed == [(0, "ffn.residual"), (1, "ffn.residual")]
    runs = []
    for _, layer, _, module in model.iter_adapters("a"):  # plugs call forward itself (no hooks): wrap it
        module.forward = lambda *args, layer=layer, forward=module.forward: runs.append(layer) or forward(*args)
    model.set_active_adapters("a")  # re-plug the wrapped forwards
    run(model, batch_for(model))
    assert runs == [0, 0, 1, 1]


SUMMARY_CONFIGS = ["seq_bn", "double_seq_bn", "par_bn[mh_adapter=True]", "compacter++[reduction_factor=8]",
                   "compacter[reduction_factor=8]", "prefix_tuning", "lora[intermediate_lora=True, output_lora=True]",
                   "ia3", "mam", "unipelt"]
SUMMARY_CASES = [*(("albert-base", config) for config in SUMMARY_CONFIGS),
                 *(("grouped", config) for config in (*SUMMARY_CONFIGS, "double_seq_bn[leave_out=[1, 2]]",
                                                      "prefix_tuning[leave_out=[3]]"))]


@pytest.mark.parametrize(("shape", "config"), SUMMARY_CASES)
def test_adapter_parameter_counts_equal_adapterhubs(shape, config):
    """At albert-base-v2's shapes (one layer run 12 times: one module per site) and at two groups of two layers."""
    sizes = ALBERT_BASE if shape == "albert-base" else dict(ALBERT.size, **FACTORISED)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        theirs, ours = tf.AlbertModel(tf.AlbertConfig(**sizes)), AlbertModel(AlbertConfig(**sizes))
        adapters.init(theirs)
        theirs.add_adapter("a", config=config)
        ours.add_adapter("a", config)
    assert ours.adapter_summary(as_dict=True) == theirs.adapter_summary(as_dict=True)


@pytest.mark.parametrize("config", ["lora[r=4, attn_matrices=['q', 'k', 'v'], intermediate_lora=True, "
                                    "output_lora=True]", "ia3[intermediate_lora=True]"])
def test_merging_into_a_shared_weight_is_exact_and_reset_restores_it_bit_for_bit(config):
    """A merged weight serves every pass of its layer, and so does the adapter merged into it: merging changes no
    output. The weights stay one tensor each, under their own keys."""
    model = shared_model()
    model.add_adapter("a", config, set_active=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.adapter_parameters("a"):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    batch = batch_for(model)
    before = {key: t.clone() for key, t in model.base_state_dict().items()}
    unmerged = run(model, batch).last_hidden_state
    assert (unmerged - run(shared_model(), batch).last_hidden_state).abs().max() > 1e-3
    model.merge_adapter("a")
    assert_parity(run(model, batch).last_hidden_state, unmerged)
    assert model.aliases() == set() and model.base_state_dict().keys() == before.keys()
    assert not torch.equal(model.layers[0].attn.v.weight if "lora" in config else model.layers[0].attn.v.bias,
                           before["layers.0.attn.v.weight" if "lora" in config else "layers.0.attn.v.bias"])
    model.reset_adapter("a")
    assert all(torch.equal(model.base_state_dict()[key], t) for key, t in before.items())


# ---- AdapterHub -------------------------------------------------------------------------------------------------


def adapterhub_model(directory, flex: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if flex:
            return adapters.AlbertAdapterModel.from_pretrained(directory).eval()
        model = tf.AlbertModel.from_pretrained(directory).eval()
    adapters.init(model)
    return model


def train(model, batch, output: str = "last_hidden_state"):
    """3 AdamW steps on adapter 'a' (the mean square of the ``output`` field), so its weights are far from their
    initialisation."""
    model.train_adapter("a")
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        getattr(model(**batch), output).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def hidden(model, batch):
    return real_tokens(run(model, batch).last_hidden_state, batch["attention_mask"])


@pytest.mark.parametrize("config", ["seq_bn[reduction_factor={'3': 4, 'default': 16}, leave_out=[1]]",
                                    "lora[attn_matrices=['q', 'k', 'v'], intermediate_lora=True, output_lora=True]",
                                    "prefix_tuning[prefix_length=4, bottleneck_size=16]", "unipelt"])
def test_adapters_trained_by_adapterhub_on_factorised_grouped_albert_give_its_outputs_both_ways(hf_checkpoint, config,
                                                                                               tmp_path):
    """Its files name our layer 3 albert_layer_groups.1.albert_layers.1: the record's layer numbering, both ways."""
    directory, reference_model = checkpoint(hf_checkpoint)
    batch = inputs(reference_model.config)
    theirs = adapterhub_model(directory)
    theirs.add_adapter("a", config=config)
    train(theirs, batch).save_adapter(str(tmp_path / "theirs"), "a")
    ours = AlbertModel.from_pretrained(directory).eval()
    plain = hidden(ours, batch)
    ours.load_adapter(tmp_path / "theirs", set_active=True)
    expected = hidden(theirs, batch)
    assert_parity(hidden(ours, batch), expected)
    assert (expected - plain).abs().max() > 1e-3
    ours.save_adapter(tmp_path / "ours", "a", format="adapterhub")
    again = adapterhub_model(directory)
    again.load_adapter(str(tmp_path / "ours"), set_active=True)
    assert_parity(hidden(again, batch), expected)


def test_gate_values_are_recorded_once_per_pass_in_columns_as_adapterhub_records_them(hf_checkpoint, tmp_path):
    directory, reference_model = reference(hf_checkpoint, "albert")  # two layers, each run twice
    batch = inputs(reference_model.config)
    theirs = adapterhub_model(directory)
    theirs.add_adapter("a", config="unipelt")
    train(theirs, batch).save_adapter(str(tmp_path / "a"), "a")
    ours = AlbertModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    expected = run(theirs, batch, output_adapter_gating_scores=True).adapter_gating_scores["a"]
    got = run(ours, batch, output_adapter_gating_scores=True).adapter_gating_scores["a"]
    assert got.keys() == expected.keys() == {0, 1}
    for layer, locations in expected.items():
        assert got[layer].keys() == locations.keys()
        for location, values in locations.items():
            assert values.shape == got[layer][location].shape  # (B, passes), or (B, 2 · passes) for q and v
            assert_parity(torch.from_numpy(got[layer][location]), torch.from_numpy(values))
    assert got[0]["output_adapter"].shape == (3, 2)


def test_compacter_trained_by_adapterhub_gives_its_outputs(hf_checkpoint, tmp_path):
    """Saved from AdapterHub's flex model (a bare one drops Compacter's shared parameters). Compacter++: the
    Houlsby-placed Compacter meets AdapterHub's swapped attention adapters (below)."""
    directory, reference_model = checkpoint(hf_checkpoint)
    batch = inputs(reference_model.config)
    theirs = adapterhub_model(directory, flex=True)
    theirs.add_adapter("a", config="compacter++[reduction_factor=8, phm_c_init='uniform']")
    train(theirs, batch).save_adapter(str(tmp_path / "a"), "a")
    ours = AlbertModel.from_pretrained(directory).eval()
    plain = hidden(ours, batch)
    ours.load_adapter(tmp_path / "a", set_active=True)
    expected = hidden(theirs, batch)
    assert_parity(hidden(ours, batch), expected)
    assert (expected - plain).abs().max() > 1e-3


def test_adapterhub_hands_albert_attention_adapters_the_attention_input_where_the_output_belongs(hf_checkpoint):
    """AdapterHub 1.3.0's AlbertAttention calls ``attention_adapters(hidden_states, projected_context, LayerNorm)``:
    the attention's input in the slot of the tensor to adapt, and its output as the residual — the reverse of its own
    ALBERT output adapters, ``output_adapters(ffn_output, attention_output, LayerNorm)``, and of its BERT."""
    seen = {}

    def keep(name):
        def hook(module, args, *output):
            seen[name] = output[0] if output else args  # returns None: the call goes on unchanged
        return hook

    directory, reference_model = reference(hf_checkpoint, "albert")
    theirs = adapterhub_model(directory)
    layer = theirs.encoder.albert_layer_groups[0].albert_layers[0]
    layer.attention.register_forward_pre_hook(keep("attention input"))
    layer.attention.register_forward_hook(keep("attention output"))
    layer.attention.attention_adapters.register_forward_pre_hook(keep("attention adapters"))
    layer.output_adapters.register_forward_pre_hook(keep("output adapters"))
    run(theirs, inputs(reference_model.config))
    layer_input, attention_output = seen["attention input"][0], seen["attention output"][0]
    assert torch.equal(seen["attention adapters"][0], layer_input)  # the input, in the slot of the tensor adapted
    assert torch.equal(seen["output adapters"][1], attention_output)  # the sub-layer's input, as the residual


@pytest.mark.parametrize("config", ["double_seq_bn", "par_bn[mh_adapter=True, output_adapter=False]"])
def test_adapterhub_attention_adapters_on_albert_differ_from_ours_by_that_swap_alone(hf_checkpoint, config, tmp_path,
                                                                                     monkeypatch):
    """Ours adapts the attention output, as every model does (AlbertLayer.forward: ``attn.residual(h, x)``); loaded
    into ours, AdapterHub's Houlsby and parallel attention adapters give other outputs than in AdapterHub, and give
    AdapterHub's only when our site is handed the two tensors swapped as AdapterHub hands them. (Pfeiffer-placed ones,
    which add the two before the adapter reads them, agree: the registry-wide tests run them.)"""
    directory, reference_model = reference(hf_checkpoint, "albert")
    batch = inputs(reference_model.config)
    theirs = adapterhub_model(directory)
    theirs.add_adapter("a", config=config)
    train(theirs, batch).save_adapter(str(tmp_path / "a"), "a")
    ours = AlbertModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    expected = hidden(theirs, batch)
    assert (hidden(ours, batch) - expected).abs().max() > 1e-2

    def swapped(self, x, padding, output_attentions=False):  # AdapterHub's order at the attention residual site
        h, probs = self.attn(x, padding, output_attentions)
        x = self.attn.residual(x, self.dropout(h))
        return self.ffn.residual(self.ffn(x), x), probs

    monkeypatch.setattr(AlbertLayer, "forward", swapped)
    assert_parity(hidden(ours, batch), expected)


def test_madx_language_adapter_on_factorised_embeddings_gives_adapterhubs_logits(hf_checkpoint, tmp_path):
    """An invertible adapter and a masked-LM adapter head are as wide as the embeddings (32), as AdapterHub's are."""
    directory, reference_model = checkpoint(hf_checkpoint)
    batch = inputs(reference_model.config)
    theirs = adapterhub_model(directory, flex=True)
    theirs.add_adapter("a", config="seq_bn_inv")
    theirs.add_masked_lm_head("a")
    train(theirs, batch, "logits").save_adapter(str(tmp_path / "a"), "a")
    ours = AlbertModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    assert ours.embedding_site().adapters["a"].F[0].in_features == FACTORISED["embedding_size"] // 2
    mask = batch["attention_mask"]
    assert_parity(real_tokens(run(ours, batch).logits, mask), real_tokens(run(theirs, batch).logits, mask))
