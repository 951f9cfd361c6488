"""DoRA: AdapterHub's numbers from its own files, PEFT's from its files (``dora_variant``), exact merge/reset where
AdapterHub's merge drops the scaling and the bias and its reset does nothing, and clear errors for misuse."""

from __future__ import annotations

import adapters
import peft
import pytest
import torch
import transformers as tf

from peftcore import DoRAConfig, LoRAConfig
from peftcore.methods import DoRA, LoRA
from peftcore.models import BertModel, RobertaModel
from tests.archs import BERT_FAMILY, reference, tiny_model
from tests.conftest import SMALL
from tests.parity import assert_adapterhub_round_trip, assert_parity, padded_batch

CONFIGS = ["dora", "dora[r=4, alpha=16, attn_matrices=['q', 'k', 'v'], intermediate_lora=True, output_lora=True]",
           "dora[use_gating=True]", "dora[init_weights='bert', leave_out=[0]]"]


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("config", CONFIGS)
def test_adapter_trained_by_adapterhub_gives_its_outputs_and_count_and_ours_saved_back_gives_them_in_adapterhub(
        adapterhub_trained, arch, config, tmp_path):
    ours = assert_adapterhub_round_trip(*adapterhub_trained(arch, config), tmp_path)
    assert ours.adapter_configs["a"].dora_variant == "adapterhub"


@pytest.mark.parametrize("config", ["dora[alpha=16]", "dora[alpha=4, dora_variant='peft', intermediate_lora=True]"])
def test_merge_equals_the_unmerged_forward_and_reset_restores_the_weights_bit_for_bit(adapterhub_trained, config,
                                                                                     tmp_path):
    directory, _, ids, mask = adapterhub_trained("roberta", "dora[alpha=16]")
    ours = RobertaModel.from_pretrained(directory).eval()
    base = {key: t.clone() for key, t in ours.base_state_dict().items()}
    ours.add_adapter("a", config, set_active=True)
    with torch.no_grad():
        for parameter in ours.adapter_parameters("a"):
            parameter.add_(torch.randn_like(parameter) * 0.1)
        unmerged = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        for _ in range(20):
            ours.merge_adapter("a")
            assert all(site.module.plug is None for site in ours.sites_found)
            assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state, unmerged, mask=mask)
            ours.reset_adapter("a")
    assert all(torch.equal(ours.base_state_dict()[key], t) for key, t in base.items())


def test_adapterhub_merge_drops_the_scaling_and_bias_and_its_reset_leaves_the_weights_merged(adapterhub_trained,
                                                                                            tmp_path):
    directory, theirs, ids, mask = adapterhub_trained("bert", "dora[alpha=16]")
    weight = theirs.encoder.layer[0].attention.self.query.weight.detach().clone()
    ours = BertModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs.merge_adapter("a")
        their_merged = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs.reset_adapter()
        ours.merge_adapter("a")
        assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state, expected, mask=mask)
    assert (their_merged - expected)[mask.bool()].abs().max() > 1e-3
    assert not torch.equal(theirs.encoder.layer[0].attention.self.query.weight, weight)  # still merged


def test_the_two_variants_differ_by_the_scaled_norm_and_the_bias_and_agree_without_them():
    model = tiny_model("bert")
    ids = torch.randint(0, 100, (2, 6))
    for variant in ("adapterhub", "peft"):
        for alpha in (8, 16):
            name = f"{variant}_{alpha}"
            model.add_adapter(name, DoRAConfig(alpha=alpha, dora_variant=variant))
            with torch.no_grad():
                for parameter in model.adapter_parameters(name):
                    parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)))

    def difference(alpha: int) -> float:
        with torch.no_grad():
            first, second = (model(input_ids=ids, adapter_names=[f"{variant}_{alpha}"] * 2).last_hidden_state
                             for variant in ("adapterhub", "peft"))
        return (first - second).abs().max().item()

    sites = [site for layer in model.layers for site in (layer.attn.q, layer.attn.v)]
    with torch.no_grad():
        for site in sites:
            site.bias.normal_(0.0, 0.5)
    assert difference(16) > 1e-3 and difference(8) > 1e-3  # s = 1 still rescales the bias or not
    with torch.no_grad():
        for site in sites:
            site.bias.zero_()
    assert difference(16) > 1e-3 and difference(8) < 1e-5


def test_dora_starts_as_the_identity_with_its_magnitude_at_the_row_norms():
    model = tiny_model("bert")
    ids = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        plain = model(input_ids=ids).last_hidden_state
        model.add_adapter("a", "dora", set_active=True)
        assert_parity(model(input_ids=ids).last_hidden_state, plain)
    query = model.layers[0].attn.q
    assert torch.equal(query.adapters["a"].m.view(-1), torch.linalg.norm(query.weight, dim=1))
    assert DoRA.sites(DoRAConfig(), 0) == ("attn.q", "attn.v") and LoRA.sites(DoRAConfig(), 0) == ()
    assert DoRAConfig().to_dict() == adapters.DoRAConfig().to_dict()


@pytest.mark.parametrize(("fields", "message"), [
    (dict(dora_variant="paper"), "dora_variant"),
    (dict(dora_variant="peft"), "applies to DoRA"),
    (dict(use_dora=True, dora_variant="peft", use_gating=True), "no gate"),
])
def test_bad_dora_configs_are_refused_clearly(fields, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**fields)


def test_dora_averages_linearly_only():
    model = tiny_model("bert")
    model.add_adapter("a", "dora")
    model.add_adapter("b", "dora")
    with torch.no_grad():
        for parameter in model.adapter_parameters("b"):
            parameter.add_(torch.randn_like(parameter) * 0.1)
    with pytest.raises(ValueError, match="combine_strategy='lora_delta_w_svd' is not available"):
        model.average_adapter("c", ["a", "b"], combine_strategy="lora_delta_w_svd", svd_rank=2)
    model.average_adapter("c", ["a", "b"], weights=[0.3, 0.7])
    query = model.layers[0].attn.q.adapters
    assert torch.allclose(query["c"].m, 0.3 * query["a"].m + 0.7 * query["b"].m)


# ---- HuggingFace PEFT's DoRA files -------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [dict(r=4, lora_alpha=16, target_modules=["query", "value"]),
                                    dict(r=4, lora_alpha=8, target_modules=["key", "intermediate.dense"],
                                         rank_pattern={"key": 2}, alpha_pattern={"key": 4})])
def test_peft_dora_file_gives_peft_outputs_in_ours_and_ours_saved_for_peft_gives_them_back(hf_checkpoint, fields,
                                                                                           tmp_path):
    directory, _ = reference(hf_checkpoint, "bert")
    theirs = peft.get_peft_model(tf.BertModel.from_pretrained(directory),
                                 peft.LoraConfig(use_dora=True, **fields)).eval()
    with torch.no_grad():
        for name, parameter in theirs.named_parameters():
            if "lora_" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    theirs.save_pretrained(tmp_path / "peft")
    ours = BertModel.from_pretrained(directory).eval()
    name = ours.load_adapter(tmp_path / "peft", set_active=True)
    assert ours.adapter_configs[name].use_dora and ours.adapter_configs[name].dora_variant == "peft"
    ids, mask = padded_batch(SMALL["vocab_size"], 0)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state, expected, mask=mask)
    ours.save_adapter(tmp_path / "back", name, format="peft")
    again = peft.PeftModel.from_pretrained(tf.BertModel.from_pretrained(directory), tmp_path / "back").eval()
    with torch.no_grad():
        assert_parity(again(input_ids=ids, attention_mask=mask).last_hidden_state, expected, mask=mask)


def test_adapterhubs_dora_is_refused_for_peft_naming_the_variant(tmp_path):
    model = tiny_model("bert")
    model.add_adapter("a", "dora")
    with pytest.raises(ValueError, match="dora_variant='peft'"):
        model.save_adapter(tmp_path / "a", "a", format="peft")
    assert not (tmp_path / "a").exists()
