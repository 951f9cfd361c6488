"""ImageProcessor against transformers' ViTImageProcessor (which resizes with Pillow): equal bit for bit.

Measured with Pillow 12.3: 0.0 difference in pixel_values, with and without resizing, for bilinear and bicubic,
shrinking and enlarging, on uniform-noise images (the worst case for rounding: every pixel is an edge).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from peftcore.models.image import ImageProcessor, resize_like_pillow
from tests.parity import assert_parity


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A (H, W, 3) uint8 image of uniform noise."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def both(tmp_path, images, **settings):
    """Our pixel_values and transformers', from one preprocessor_config.json written by transformers."""
    transformers.ViTImageProcessor(**settings).save_pretrained(tmp_path)
    reference = transformers.ViTImageProcessor.from_pretrained(tmp_path)
    ours = ImageProcessor.from_pretrained(tmp_path)
    return ours(images)["pixel_values"], reference(images, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("resample", [2, 3], ids=["bilinear", "bicubic"])
@pytest.mark.parametrize("height, width", [(224, 224), (500, 375), (37, 53), (300, 120), (120, 300), (7, 400)])
def test_resize_matches_pillow_exactly(tmp_path, resample, height, width):
    ours, theirs = both(tmp_path, noise(height, width), resample=resample)
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    assert_parity(ours, theirs, atol=0.0)


@pytest.mark.parametrize("size", [{"height": 32, "width": 48}, {"height": 384, "width": 384}])
def test_other_target_sizes_match_exactly(tmp_path, size):
    ours, theirs = both(tmp_path, noise(100, 90), size=size)
    assert ours.shape == theirs.shape == (1, 3, size["height"], size["width"])
    assert_parity(ours, theirs, atol=0.0)


@pytest.mark.parametrize("settings", [
    dict(do_resize=False),
    dict(do_resize=False, do_normalize=False),
    dict(do_resize=False, do_rescale=False),
    dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], rescale_factor=1 / 127.5),
], ids=["rescale_normalize", "rescale_only", "normalize_only", "imagenet_stats"])
def test_rescale_and_normalize_match_exactly(tmp_path, settings):
    ours, theirs = both(tmp_path, noise(64, 64), **settings)
    assert_parity(ours, theirs.float(), atol=0.0)


@pytest.mark.parametrize("layout", ["numpy_hwc", "numpy_chw", "torch_hwc", "torch_chw", "batch_bhwc", "batch_bchw",
                                    "list_of_sizes"])
def test_every_input_layout_gives_transformers_pixels(tmp_path, layout):
    first, second = noise(40, 60, seed=1), noise(40, 60, seed=2)
    images = {
        "numpy_hwc": first,
        "numpy_chw": first.transpose(2, 0, 1),
        "torch_hwc": torch.from_numpy(first),
        "torch_chw": torch.from_numpy(first).permute(2, 0, 1),
        "batch_bhwc": np.stack([first, second]),
        "batch_bchw": torch.from_numpy(np.stack([first, second])).permute(0, 3, 1, 2),
        "list_of_sizes": [first, noise(90, 33, seed=3)],
    }[layout]
    ours, theirs = both(tmp_path, images, size={"height": 32, "width": 32})
    assert_parity(ours, theirs, atol=0.0)


def test_resize_to_the_same_size_is_the_identity():
    image = torch.from_numpy(noise(30, 20)).permute(2, 0, 1)
    assert torch.equal(resize_like_pillow(image, (30, 20), 3), image.double())


def test_old_config_with_int_size_and_scalar_mean(tmp_path):
    config = {"feature_extractor_type": "ViTFeatureExtractor", "size": 48, "image_mean": 0.5, "image_std": 0.25,
              "resample": 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    processor = ImageProcessor.from_pretrained(tmp_path)
    assert processor.size == (48, 48) and processor.image_mean == (0.5,) * 3 and processor.image_std == (0.25,) * 3


def test_pixels_feed_the_model(tmp_path):
    from peftcore.models.vit import ViTConfig, ViTModel

    model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                               image_size=32, patch_size=8)).eval()
    pixels = ImageProcessor(size=(32, 32))([noise(50, 70), noise(20, 20)])["pixel_values"]
    with torch.no_grad():
        assert model(pixels).last_hidden_state.shape == (2, 1 + 16, 32)


@pytest.mark.parametrize("images, error, match", [
    (noise(8, 8).astype(np.float32), TypeError, "uint8"),
    (torch.rand(3, 8, 8), TypeError, "uint8"),
    ("image.png", TypeError, "numpy.asarray"),
    (np.zeros((8, 8), np.uint8), ValueError, "channel axis"),
    (np.zeros((1, 1, 8, 8, 3), np.uint8), ValueError, "got shape"),
    (np.zeros((8, 8, 4), np.uint8), ValueError, "no axis of 3 channels"),
    ([], ValueError, "no images"),
])
def test_bad_images_are_refused_saying_what_to_pass(images, error, match):
    with pytest.raises(error, match=match):
        ImageProcessor()(images)


def test_different_sizes_without_resize_are_refused():
    with pytest.raises(ValueError, match="do_resize=True"):
        ImageProcessor(do_resize=False)([noise(8, 8), noise(9, 8)])


@pytest.mark.parametrize("settings, match", [
    (dict(resample=0), "2 \\(bilinear\\) or 3 \\(bicubic\\)"),
    (dict(size=(0, 224)), "positive ints"),
    (dict(image_mean=(0.5,), image_std=(0.5, 0.5)), "one of each per channel"),
    (dict(image_std=(0.5, 0.0, 0.5)), "zero"),
])
def test_bad_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        ImageProcessor(**settings)


@pytest.mark.parametrize("config, match", [
    ({"size": {"shortest_edge": 224}}, "fixed"),
    ({"do_center_crop": True}, "do_center_crop"),
])
def test_configs_we_cannot_honour_are_refused(tmp_path, config, match):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        ImageProcessor.from_pretrained(tmp_path)


def test_missing_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ImageProcessor.from_pretrained(tmp_path)
