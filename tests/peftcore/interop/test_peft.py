"""HF PEFT adapter directories, both ways: adapters trained by ``peft`` load into ours with its outputs, ours saved with
format="peft" load in ``peft.PeftModel.from_pretrained`` with ours, and what cannot convert exactly is refused."""

from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

from peftcore import IA3Config, LoRAConfig
from peftcore.models import BertModel
from tests import archs
from tests.archs import ARCHS
from tests.parity import assert_parity

SEQ_CLS = dict(task_type="SEQ_CLS")
VIT_HEAD = dict(modules_to_save=["classifier"])


def reference(hf_checkpoint, arch: str):
    """(directory, a fresh transformers classifier from it): DeBERTa's relative distances clamped at 8."""
    head = "sequence_classification" if ARCHS[arch].is_text else "image_classification"
    directory, _ = archs.reference(hf_checkpoint, arch, head, variant="clamped")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return directory, ARCHS[arch].hf[head].from_pretrained(directory)


def inputs(arch: str) -> dict[str, torch.Tensor]:
    return archs.inputs(ARCHS[arch].hf_config("clamped"))


def train_in_peft(model, config, batch, directory):
    """Wrap with peft, train 3 AdamW steps (LoRA's B starts at zero), save_pretrained; the model in eval mode."""
    model = peft.get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model.train()(**batch).logits.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(directory)
    return model.eval()


def assert_same_outputs(ours, theirs, batch) -> None:
    with torch.no_grad():
        expected = theirs(**batch, output_hidden_states=True)
        out = ours(**batch, output_hidden_states=True)
    mask = batch.get("attention_mask")
    assert_parity(out.hidden_states[-1], expected.hidden_states[-1], mask=mask)
    assert_parity(out.logits, expected.logits)
    active = ours.active_adapters
    ours.set_active_adapters(None)
    with torch.no_grad():  # and the adapter matters: without it the encoder's output is another
        assert (ours(**batch).last_hidden_state - out.last_hidden_state).abs().max() > 1e-3
    ours.set_active_adapters(active)


CASES = [  # (arch, peft config)
    ("bert", peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["query", "value"], **SEQ_CLS)),
    ("bert", peft.LoraConfig(r=4, lora_alpha=6, use_rslora=True, target_modules=r".*\.(key|intermediate\.dense)",
                             **SEQ_CLS)),
    ("bert", peft.LoraConfig(r=4, lora_alpha=8, target_modules=r".*(query|\d\.output\.dense)",
                             rank_pattern={"query": 2}, alpha_pattern={"dense": 3}, **SEQ_CLS)),
    ("roberta", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "key", "value"], layers_to_transform=[1],
                                **SEQ_CLS)),
    ("deberta", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["in_proj"], **SEQ_CLS)),
    ("deberta-v2", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query_proj", "value_proj"], **SEQ_CLS)),
    ("vit", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], **VIT_HEAD)),
    ("bert", peft.IA3Config(target_modules=["key", "value", "intermediate.dense"], feedforward_modules=[], **SEQ_CLS)),
    ("roberta", peft.IA3Config(target_modules=r".*\.(query|\d\.output\.dense)", feedforward_modules=[], **SEQ_CLS)),
    ("vit", peft.IA3Config(target_modules=["key", "value"], feedforward_modules=[], **VIT_HEAD)),
    ("xlm-roberta", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value", "intermediate.dense"],
                                    **SEQ_CLS)),
    ("xlm-roberta", peft.IA3Config(target_modules=["key", "value"], feedforward_modules=[], **SEQ_CLS)),
    ("camembert", peft.LoraConfig(r=2, lora_alpha=4, target_modules=r".*\.(query|key|\d\.output\.dense)", **SEQ_CLS)),
    ("camembert", peft.IA3Config(target_modules=["value", "intermediate.dense"], feedforward_modules=[], **SEQ_CLS)),
    ("electra", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "key", "value"], **SEQ_CLS)),
    ("electra", peft.IA3Config(target_modules=["key", "value", "intermediate.dense"], feedforward_modules=[],
                               **SEQ_CLS)),
    ("distilbert", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_lin", "v_lin", "lin1"])),
    ("distilbert", peft.IA3Config(target_modules=["k_lin", "v_lin"], feedforward_modules=[])),
    # SEQ_CLS's modules_to_save "classifier" makes PEFT train and save pre_classifier too
    # (peft.utils.other._set_trainable matches module names by plain suffix)
    ("distilbert", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_lin", "v_lin"], **SEQ_CLS)),
    # ALBERT: PEFT wraps each shared linear once, as our sites sit in each distinct layer once (models/albert.py)
    ("albert", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value", "ffn_output"], **SEQ_CLS)),
    ("albert", peft.IA3Config(target_modules=["key", "value", "ffn"], feedforward_modules=[], **SEQ_CLS)),
    # all-linear (the pooler excluded: it has no site), rsLoRA, per-module ranks and alphas, the gaussian init
    ("bert", peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", exclude_modules=["pooler.dense"],
                             use_rslora=True, rank_pattern={"attention.output.dense": 2}, alpha_pattern={"query": 3},
                             init_lora_weights="gaussian", **SEQ_CLS)),
    ("roberta", peft.LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", **SEQ_CLS)),  # classifier: saved
    ("roberta", peft.LoraConfig(r=4, lora_alpha=4, target_modules=["query", "dense"], use_rslora=True,
                                rank_pattern={r"layer\.1\.output\.dense": 2}, **SEQ_CLS)),
    # PEFT's default (IA)^3: key and value outputs, and the inputs of attention.output.dense and output.dense
    ("bert", peft.IA3Config(**SEQ_CLS)),
    ("roberta", peft.IA3Config(**SEQ_CLS)),
    # ModernBERT's fused Wqkv: one LoRA whose B rows split into q/k/v thirds sharing A; the gated Wi whole
    ("modernbert", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["Wqkv", "Wo", "Wi"], **SEQ_CLS)),  # Wo: both
    ("modernbert", peft.IA3Config(target_modules=["Wqkv", "Wi", "mlp.Wo"], feedforward_modules=[])),
]


@pytest.mark.parametrize("arch, config", CASES, ids=lambda c: c if isinstance(c, str) else type(c).__name__)
def test_adapter_trained_by_peft_loads_with_its_outputs(hf_checkpoint, arch, config, tmp_path):
    directory, model = reference(hf_checkpoint, arch)
    batch = inputs(arch)
    theirs = train_in_peft(model, config, batch, tmp_path / "a")
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rank_pattern case warns that it pads ranks
        assert ours.load_adapter(tmp_path / "a", set_active=True) == "a"
    assert_same_outputs(ours, theirs, batch)


OURS = [  # (arch, our config)
    ("bert", "lora[r=4, alpha=16]"),
    ("roberta", "lora[r=2, alpha=5, attn_matrices=['q', 'k', 'v'], output_lora=True, leave_out=[0]]"),
    ("deberta", "lora[attn_matrices=['q', 'k', 'v'], intermediate_lora=True]"),
    ("deberta-v2", "lora[intermediate_lora=True]"),
    ("vit", "lora"),
    ("bert", "ia3[output_lora=True, alpha=2]"),
    ("roberta", "ia3"),
    ("xlm-roberta", "lora[r=2, alpha=4, intermediate_lora=True]"),
    ("camembert", "ia3"),
    ("electra", "lora[attn_matrices=['q', 'k', 'v'], output_lora=True]"),
    ("distilbert", "lora[attn_matrices=['q', 'k', 'v'], intermediate_lora=True]"),
    ("albert", "lora[r=4, output_lora=True]"),
    ("albert", "ia3"),
    ("bert", LoRAConfig(r=4, alpha=6, target="all-linear", use_rslora=True, alpha_pattern={"attn.q": 3},
                        rank_pattern={"attn.out": 2, r"layers\.1\.ffn\.output": 3})),
    ("roberta", LoRAConfig(r=2, alpha=4, attn_matrices=("q", "v", "o"), init_weights="pissa")),
    ("bert", LoRAConfig(r=2, alpha=4, attn_matrices=("q", "o"), output_lora=True, init_weights="olora")),
    ("deberta", LoRAConfig(attn_matrices=("q", "k", "v", "o"), use_rslora=True, rank_pattern={"attn.k": 4})),
    ("bert", IA3Config(attn_matrices=("k", "v", "o"), intermediate_lora=False, output_lora=True,
                       input_scaled=("attn.out", "ffn.output"))),  # PEFT's default (IA)^3
    ("roberta", IA3Config(attn_matrices=("k", "v", "o"), intermediate_lora=False, output_lora=True,
                          input_scaled=("attn.out", "ffn.output"))),
    ("modernbert", "lora[r=2, attn_matrices=['q', 'k', 'v', 'o'], intermediate_lora=True, output_lora=True]"),
    ("modernbert", "ia3"),
]


@pytest.mark.parametrize("arch, config", OURS, ids=lambda c: c if isinstance(c, str) else type(c).__name__)
def test_ours_saved_in_peft_format_loads_in_peft_with_our_outputs(hf_checkpoint, arch, config, tmp_path):
    directory, model = reference(hf_checkpoint, arch)
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ours.add_adapter("a", config, set_active=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in [*ours.adapter_parameters("a"), *ours.head.parameters()]:
            parameter.add_(torch.randn_like(parameter) * 0.1)
    ours.save_adapter(tmp_path / "a", "a", format="peft")
    theirs = peft.PeftModel.from_pretrained(model, tmp_path / "a").eval()
    assert_same_outputs(ours, theirs, inputs(arch))
    again = ARCHS[arch].model.from_pretrained(directory).eval()  # and back: PEFT's file loads into ours as well
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DeBERTa v1: the joined in_proj rank is padded
        again.load_adapter(tmp_path / "a", set_active=True)
    assert_same_outputs(again, theirs, inputs(arch))


def test_peft_prefix_tuning_loads_and_matches_with_shifted_positions(hf_checkpoint, tmp_path):
    directory, model = reference(hf_checkpoint, "bert")
    batch = inputs("bert")
    theirs = train_in_peft(model, peft.PrefixTuningConfig(num_virtual_tokens=3, **SEQ_CLS), batch, tmp_path / "a")
    ours = BertModel.from_pretrained(directory).eval()
    with pytest.warns(UserWarning, match="position ids"):
        ours.load_adapter(tmp_path / "a", set_active=True)
    positions = 3 + torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    with torch.no_grad():
        assert_parity(ours(**batch, position_ids=positions).logits, theirs(**batch).logits)


@pytest.fixture(scope="module")
def saved_lora(tmp_path_factory):
    """A BERT LoRA on query/value saved by peft (untrained: B = 0 is enough to test refusals), and its model."""
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(ARCHS["bert"].hf_config())
    directory = tmp_path_factory.mktemp("peft") / "a"
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query", "value"], **SEQ_CLS)).save_pretrained(
        directory)
    return directory


def edited(source, target, config_changes=None, drop=()):
    target.mkdir()
    raw = json.loads((source / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(json.dumps({**raw, **(config_changes or {})}))
    tensors = load_file(source / "adapter_model.safetensors")
    save_file({k: t for k, t in tensors.items() if not any(d in k for d in drop)}, target / "adapter_model.safetensors")
    return target


REFUSALS = [  # (config changes, tensors dropped, message)
    (dict(bias="all"), (), "bias='all'"),
    (dict(bias="lora_only"), (), "bias='lora_only'"),
    (dict(use_dora=True), (), "needs lora_magnitude_vector"),
    (dict(fan_in_fan_out=True), (), "fan_in_fan_out"),
    (dict(init_lora_weights="pissa"), (), "rewrites the base weights"),
    (dict(peft_type="OFT"), (), "'OFT' is not available"),
    (dict(target_modules="all-linear"), (), "without tensors: bert.encoder.layer.0.attention.output.dense"),
    (dict(target_modules=["query", "value", "dense"]), (), "no LoRA/.IA.\\^3 site.*bert.pooler.dense"),
    (dict(target_modules=["query", "value", "key"]), (), "targeted modules without tensors"),
    (dict(target_modules=r".*0\.attention\.self\.query|.*1\.attention\.self\.value"),
     ("0.attention.self.value", "1.attention.self.query"), "differ between layers"),
    ({}, ("layer.1.attention.self.value",), "without tensors: bert.encoder.layer.1.attention.self.value"),
    (dict(modules_to_save=None), (), "neither LORA weights nor in modules_to_save.*classifier"),
]


@pytest.mark.parametrize("changes, drop, message", REFUSALS)
def test_unsupported_or_incomplete_files_are_refused_clearly_and_change_nothing(hf_checkpoint, saved_lora, changes,
                                                                                drop, message, tmp_path):
    directory, _ = reference(hf_checkpoint, "bert")
    ours = BertModel.from_pretrained(directory).eval()
    before = {key: t.clone() for key, t in ours.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        ours.load_adapter(edited(saved_lora, tmp_path / "a", changes, drop))  # PEFT would only warn if a key is missing
    assert ours.adapter_configs == {}
    assert ours.state_dict().keys() == before.keys()
    assert all(torch.equal(ours.state_dict()[key], t) for key, t in before.items())


@pytest.mark.parametrize("arch, init", [("bert", "pissa"), ("roberta", "olora"), ("bert", "pissa_niter_4")])
def test_pissa_and_olora_trained_by_peft_load_converted_with_its_outputs(hf_checkpoint, arch, init, tmp_path):
    """PEFT's recipe: save the initial adapter (init_lora_weights=True), train, save converted to a plain LoRA of
    rank 2r on the original weights; ours loads that and gives the outputs of PEFT's model on its residual weights.
    No task_type: peft 0.21.2's conversion (LoraModel.subtract_mutated_init) keeps only lora_A/lora_B and drops the
    modules_to_save, so a converted SEQ_CLS file lacks its trained classifier (PEFT itself cannot load it)."""
    directory, model = reference(hf_checkpoint, arch)
    batch = inputs(arch)
    config = peft.LoraConfig(r=2, lora_alpha=4, init_lora_weights=init,
                             target_modules=["query", "value", "attention.output.dense"])
    theirs = peft.get_peft_model(model, config)
    theirs.peft_config["default"].init_lora_weights = True
    theirs.save_pretrained(tmp_path / "init")
    theirs.peft_config["default"].init_lora_weights = init
    optimizer = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        theirs.train()(**batch).logits.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    theirs.save_pretrained(tmp_path / "a", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["r"] == 4
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    assert_same_outputs(ours, theirs.eval(), batch)


@pytest.mark.parametrize("arch, config, message", [
    ("bert", "seq_bn", "LoRA or VeRA or DoRA or .IA.\\^3"),
    ("bert", "lora[use_gating=True]", "gated"),
    ("deberta", "ia3", "q_bias/v_bias"),  # PEFT's vector on the fused in_proj would not scale DeBERTa's q/v biases
])
def test_saving_what_peft_cannot_hold_is_refused(hf_checkpoint, arch, config, message, tmp_path):
    directory, _ = reference(hf_checkpoint, arch)
    ours = ARCHS[arch].model.from_pretrained(directory)
    ours.add_adapter("a", config)
    with pytest.raises(ValueError, match=message):
        ours.save_adapter(tmp_path / "a", "a", format="peft")
    assert not (tmp_path / "a" / "adapter_config.json").exists()


def test_pickled_adapter_model_bin_loads_like_safetensors(hf_checkpoint, saved_lora, tmp_path):
    directory, _ = reference(hf_checkpoint, "bert")
    tensors = {k: t + torch.randn_like(t) for k, t in load_file(saved_lora / "adapter_model.safetensors").items()}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text((saved_lora / "adapter_config.json").read_text())
    torch.save(tensors, tmp_path / "a" / "adapter_model.bin")  # older PEFT files; read with weights_only=True
    save_file(tensors, tmp_path / "b" / "adapter_model.safetensors")
    ours = BertModel.from_pretrained(directory)
    ours.load_adapter(tmp_path / "a")
    ours.load_adapter(tmp_path / "b")
    a, b = ours.adapter_state("a"), ours.adapter_state("b")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
