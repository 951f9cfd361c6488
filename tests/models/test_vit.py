"""ViTModel against transformers' ViTModel / ViTForImageClassification on random-init checkpoints, at 1e-5 (fp32)."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

from peftcore.models.convert.keymap import ConversionError
from peftcore.models.vit import ViTModel
from peftcore.sites import SITE_NAMES, ResidualSite, find_sites
from tests.archs import ARCHS
from tests.parity import assert_parity

VIT = ARCHS["vit"]


def reference(hf_checkpoint, model_class=transformers.ViTModel, **fields):
    """(directory, transformers model) for a small random ViT; eager attention so it can return probabilities."""
    return hf_checkpoint(model_class, VIT.hf_config(**fields, attn_implementation="eager"))


def images(height: int, width: int, batch: int = 2, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def run_both(ours, theirs, pixels, **kwargs):
    with torch.no_grad():
        return ours(pixels, **kwargs), theirs(pixels, **kwargs)


@pytest.mark.parametrize("image_size, patch_size", [(224, 16), (64, 8), (96, 32)])
@pytest.mark.parametrize("explicit_attention", [False, True], ids=["sdpa", "with_attentions"])
def test_matches_transformers_vit_model(hf_checkpoint, image_size, patch_size, explicit_attention):
    path, theirs = reference(hf_checkpoint, image_size=image_size, patch_size=patch_size)
    ours = ViTModel.from_pretrained(path).eval()
    kwargs = dict(output_hidden_states=True, output_attentions=explicit_attention)
    out, ref = run_both(ours, theirs, images(image_size, image_size), **kwargs)
    assert_parity(out.last_hidden_state, ref.last_hidden_state)
    assert_parity(out.pooler_output, ref.pooler_output)
    assert len(out.hidden_states) == len(ref.hidden_states) == VIT.size["num_hidden_layers"] + 1
    for mine, theirs_state in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert_parity(mine, theirs_state)
    if explicit_attention:
        for mine, theirs_probs in zip(out.attentions, ref.attentions, strict=True):
            assert_parity(mine, theirs_probs)


@pytest.mark.parametrize("image_size, patch_size, height, width", [
    (224, 16, 160, 256),  # fewer rows, more columns
    (64, 8, 96, 96),  # larger, square
    (64, 8, 35, 41),  # not a multiple of the patch size: the convolution drops the remainder
    (64, 8, 64, 72),  # one side unchanged
])
def test_interpolated_positions_match_transformers(hf_checkpoint, image_size, patch_size, height, width):
    path, theirs = reference(hf_checkpoint, image_size=image_size, patch_size=patch_size)
    ours = ViTModel.from_pretrained(path).eval()
    out, ref = run_both(ours, theirs, images(height, width), interpolate_pos_encoding=True, output_hidden_states=True)
    assert_parity(out.last_hidden_state, ref.last_hidden_state)
    assert_parity(out.pooler_output, ref.pooler_output)
    grid = ours.embeddings.positions(height // patch_size, width // patch_size)
    with torch.no_grad():
        reference_grid = theirs.embeddings.interpolate_pos_encoding(ref.hidden_states[0], height, width)
    assert torch.equal(grid, reference_grid)  # the same bicubic call on the same layout: bit for bit


def test_interpolation_at_the_trained_size_changes_nothing(hf_checkpoint):
    path, _ = reference(hf_checkpoint, image_size=64, patch_size=8)
    ours = ViTModel.from_pretrained(path).eval()
    pixels = images(64, 64)
    with torch.no_grad():
        interpolated = ours(pixels, interpolate_pos_encoding=True).last_hidden_state
        assert torch.equal(ours(pixels).last_hidden_state, interpolated)


@pytest.mark.parametrize("num_labels", [3, 10])
@pytest.mark.parametrize("size, interpolate", [(64, False), (80, True)])
def test_image_classification_logits_match_transformers(hf_checkpoint, num_labels, size, interpolate):
    path, theirs = reference(hf_checkpoint, transformers.ViTForImageClassification, image_size=64, patch_size=8,
                             num_labels=num_labels)
    ours = ViTModel.from_pretrained(path).eval()
    assert ours.config.head == "image_classification" and ours.pooler is None
    out, ref = run_both(ours, theirs, images(size, size), interpolate_pos_encoding=interpolate)
    assert out.logits.shape == (2, num_labels)
    assert_parity(out.logits, ref.logits)


def test_qkv_without_bias_matches_transformers(hf_checkpoint):
    path, theirs = reference(hf_checkpoint, image_size=64, patch_size=8, qkv_bias=False)
    ours = ViTModel.from_pretrained(path).eval()
    assert ours.layers[0].attn.q.bias is None and ours.layers[0].attn.out.bias is not None
    out, ref = run_both(ours, theirs, images(64, 64))
    assert_parity(out.last_hidden_state, ref.last_hidden_state)


def test_classification_checkpoint_loads_as_encoder_without_pooler(hf_checkpoint):
    path, theirs = reference(hf_checkpoint, transformers.ViTForImageClassification, image_size=64, patch_size=8)
    ours = ViTModel.from_pretrained(path, head=None, add_pooling_layer=False).eval()
    assert ours.head is None and ours.pooler is None
    out, ref = run_both(ours, theirs.vit, images(64, 64))
    assert out.pooler_output is None and out.logits is None
    assert_parity(out.last_hidden_state, ref.last_hidden_state)


def test_base_checkpoint_starts_a_classifier_with_a_fresh_head(hf_checkpoint):
    path, theirs = reference(hf_checkpoint, image_size=64, patch_size=8)
    with pytest.warns(UserWarning, match="head.classifier"):
        ours = ViTModel.from_pretrained(path, head="image_classification", num_labels=4).eval()
    out, ref = run_both(ours, theirs, images(64, 64))
    assert ours.pooler is None and out.logits.shape == (2, 4)
    assert_parity(out.last_hidden_state, ref.last_hidden_state)


@pytest.mark.parametrize("model_class", [transformers.ViTModel, transformers.ViTForImageClassification])
def test_hf_export_loads_in_transformers_with_the_same_outputs(hf_checkpoint, tmp_path, model_class):
    path, theirs = reference(hf_checkpoint, model_class, image_size=64, patch_size=8)
    ViTModel.from_pretrained(path).save_pretrained(tmp_path, format="hf")
    reloaded, info = model_class.from_pretrained(tmp_path, output_loading_info=True, attn_implementation="eager")
    assert not any(info.values()), info
    out, ref = run_both(reloaded.eval(), theirs, images(64, 64))
    for field in ("last_hidden_state", "pooler_output", "logits"):
        if getattr(ref, field, None) is not None:
            assert torch.equal(getattr(out, field), getattr(ref, field)), field


def test_native_checkpoint_round_trips(hf_checkpoint, tmp_path):
    path, _ = reference(hf_checkpoint, image_size=64, patch_size=8, qkv_bias=False)
    ours = ViTModel.from_pretrained(path).eval()
    ours.save_pretrained(tmp_path, format="peftcore")
    reloaded = ViTModel.from_pretrained(tmp_path).eval()
    assert reloaded.config == ours.config
    pixels = images(64, 64)
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).last_hidden_state, ours(pixels).last_hidden_state)


def test_hf_config_loads_without_warnings(hf_checkpoint):
    path, _ = reference(hf_checkpoint, image_size=64, patch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ViTModel.from_pretrained(path)


def test_sites_are_the_site_names_embeddings_once_the_rest_per_layer():
    model = ViTModel(VIT.config(image_size=32))
    found = [(site.layer, site.name) for site in find_sites(model)]
    layers = range(model.config.num_hidden_layers)
    assert found == [(None, "embeddings"), (None, "prompt")] + [(i, name) for i in layers for name in SITE_NAMES[2:]]
    assert model.embeddings.site is next(find_sites(model)).module


def test_residual_sites_are_plain_adds_in_a_pre_ln_layer():
    layer = ViTModel(VIT.config(image_size=32)).layers[0]
    h, residual = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    for site in (layer.attn.residual, layer.ffn.residual):
        assert isinstance(site, ResidualSite) and isinstance(site.norm, torch.nn.Identity)
        assert torch.equal(site(h, residual), h + residual)


@pytest.fixture(scope="module")
def tiny_vit() -> ViTModel:
    torch.manual_seed(0)
    return ViTModel(VIT.config(image_size=32)).eval()


@pytest.mark.parametrize("pixels, match", [
    (torch.randn(2, 3, 48, 48), "interpolate_pos_encoding=True"),
    (torch.randn(2, 1, 32, 32), "3 \\(config.num_channels\\)"),
    (torch.randn(2, 32, 32, 3), "permute"),
    (torch.randn(3, 32, 32), "unsqueeze\\(0\\)"),
    (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), "ImageProcessor"),
])
def test_bad_pixels_raise_value_error_saying_what_to_pass(tiny_vit, pixels, match):
    with pytest.raises(ValueError, match=match):
        tiny_vit(pixels)


def test_images_smaller_than_a_patch_are_refused(tiny_vit):
    with pytest.raises(ValueError, match="smaller than one 8x8 patch"):
        tiny_vit(torch.randn(1, 3, 4, 40), interpolate_pos_encoding=True)


def test_bert_checkpoint_is_refused_naming_both_types(hf_checkpoint):
    bert = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                                   vocab_size=50)
    path, _ = hf_checkpoint(transformers.BertModel, bert)
    with pytest.raises(ConversionError, match="model_type 'bert'.*'vit'"):
        ViTModel.from_pretrained(path)


@pytest.mark.parametrize("fields, match", [
    (dict(patch_size=0), "patch_size must be a positive int"),
    (dict(image_size=16, patch_size=32), "exceeds image_size"),
    (dict(pooler_output_size=64), "pooler_output_size"),
])
def test_bad_config_is_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        VIT.config(**fields)


def test_unsupported_pooler_activation_is_refused(hf_checkpoint):
    path, _ = reference(hf_checkpoint, image_size=32, patch_size=8, pooler_act="relu")
    with pytest.raises(ValueError, match="pooler_act='relu'"):
        ViTModel.from_pretrained(path)


def test_bfloat16_forward_is_finite_and_close(tiny_vit):
    pixels = images(32, 32)
    model = ViTModel(tiny_vit.config).eval()
    model.load_state_dict(tiny_vit.state_dict())
    with torch.no_grad():
        low = model.to(torch.bfloat16)(pixels).last_hidden_state
        full = tiny_vit(pixels).last_hidden_state
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert_parity(low, full, atol=0.1)


def test_torch_compile_matches_eager(tiny_vit):
    pixels = images(32, 32)
    compiled = torch.compile(tiny_vit, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert_parity(compiled(pixels).last_hidden_state, tiny_vit(pixels).last_hidden_state)
