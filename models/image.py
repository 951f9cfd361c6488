"""ViT image preprocessing in torch: resize, rescale, normalize — equal to transformers' ViTImageProcessor.

The preprocessing of ViT (Dosovitskiy et al., 2020, https://arxiv.org/abs/2010.11929) as transformers 4.57.6's
``ViTImageProcessor`` does it (transformers/models/vit/image_processing_vit.py). transformers resizes with Pillow,
uint8 in and uint8 out; ``resize_like_pillow`` reproduces Pillow's resampling (libImaging/Resample.c) with two float64
matrix products, so the pixel values equal transformers' bit for bit without Pillow installed. Measured in
tests/models/test_image.py: 0.0 difference with Pillow 12.3, with and without resizing. Pillow 13 runs the vertical
pass first for some shapes; with it, resized uint8 values differ by up to 1 level (bilinear) on those shapes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from peftcore.io import read_json

PRECISION_BITS = 22  # Pillow's fixed-point weights for 8-bit images: 32 - 8 - 2 bits (Resample.c)


def bilinear(x: Tensor) -> Tensor:
    """Pillow's triangle filter, support 1."""
    x = x.abs()
    return torch.where(x < 1.0, 1.0 - x, 0.0)


def bicubic(x: Tensor) -> Tensor:
    """Pillow's cubic convolution filter with a = -0.5, support 2 (the operation order is Pillow's)."""
    a, x = -0.5, x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, 0.0))


# PIL.Image.Resampling value -> (filter, support); 2 (BILINEAR) is ViTImageProcessor's default
FILTERS: dict[int, tuple[Callable[[Tensor], Tensor], float]] = {2: (bilinear, 1.0), 3: (bicubic, 2.0)}


def pillow_weights(in_size: int, out_size: int, resample: int, device: torch.device) -> Tensor:
    """(out, in) fixed-point weights of one Pillow resampling pass (precompute_coeffs + normalize_coeffs_8bpc).

    When shrinking, the filter is widened by the shrink factor (antialiasing). Each output's window is rounded as
    Pillow's ``(int)`` casts do, its weights normalised to sum 1, then rounded half away from zero to 22-bit integers.
    """
    kernel, support = FILTERS[resample]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support *= filter_scale
    center = (torch.arange(out_size, dtype=torch.float64, device=device) + 0.5) * scale  # (out,)
    first = (center - support + 0.5).trunc().clamp(min=0)[:, None]  # (out, 1)
    end = (center + support + 0.5).trunc().clamp(max=in_size)[:, None]
    x = torch.arange(in_size, dtype=torch.float64, device=device)  # (in,)
    weights = kernel((x - center[:, None] + 0.5) * (1.0 / filter_scale))  # (out, in)
    weights = torch.where((x >= first) & (x < end), weights, 0.0)
    total = weights.sum(dim=1, keepdim=True)
    weights = torch.where(total != 0.0, weights / total, weights)
    return (weights * (1 << PRECISION_BITS) + weights.sign() * 0.5).trunc()


def resample_last_axis(image: Tensor, weights: Tensor) -> Tensor:
    """One Pillow pass along the last axis: exact integer sums (float64), rounded and clipped to 0..255 as uint8."""
    sums = image @ weights.T  # (..., out)
    return torch.floor((sums + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp(0, 255)


def resize_like_pillow(image: Tensor, size: tuple[int, int], resample: int) -> Tensor:
    """(C, H, W) uint8 -> (C, h, w) float64 holding the uint8 values ``PIL.Image.resize`` gives.

    Pillow (up to 12) resizes width first, then height, rounding to uint8 after each pass, and skips a pass whose
    size is unchanged.
    """
    height, width = size
    x = image.to(torch.float64)
    if x.shape[-1] != width:
        x = resample_last_axis(x, pillow_weights(x.shape[-1], width, resample, x.device))  # (C, H, w)
    if x.shape[-2] != height:
        weights = pillow_weights(x.shape[-2], height, resample, x.device)
        x = resample_last_axis(x.transpose(-1, -2), weights).transpose(-1, -2)  # (C, h, w)
    return x


@dataclass(frozen=True, kw_only=True)
class ImageProcessor:
    """uint8 images -> normalised ``pixel_values`` (B, C, H, W) float32, as ViTImageProcessor computes them.

    Steps, each switchable: resize to ``size`` (height, width) with Pillow's ``resample`` filter (2 bilinear,
    3 bicubic); multiply by ``rescale_factor`` (in float64, then float32, as transformers does); subtract
    ``image_mean`` and divide by ``image_std`` per channel. Defaults are ViTImageProcessor's.
    """

    do_resize: bool = True
    size: tuple[int, int] = (224, 224)
    resample: int = 2
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if len(self.size) != 2 or not all(isinstance(s, int) and s > 0 for s in self.size):
            raise ValueError(f"ImageProcessor.size must be (height, width) positive ints, got {self.size!r}.")
        if self.resample not in FILTERS:
            raise ValueError(f"ImageProcessor.resample={self.resample!r} is not supported; use 2 (bilinear) or "
                             "3 (bicubic), as PIL.Image.Resampling numbers them.")
        if len(self.image_mean) != len(self.image_std):
            raise ValueError(f"image_mean has {len(self.image_mean)} values and image_std {len(self.image_std)}; "
                             "give one of each per channel.")
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"image_std={self.image_std} holds a zero; normalisation would divide by it.")

    @property
    def num_channels(self) -> int:
        return len(self.image_mean)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ImageProcessor:
        """Read a checkpoint directory's ``preprocessor_config.json``, as ViTImageProcessor.save_pretrained writes it.

        ``size`` may be ``{"height", "width"}`` or a single int (older files); a single mean or std applies to all
        three RGB channels. Fields that do not change the output for tensor input (``do_convert_rgb``, the class
        names) are ignored.
        """
        file = Path(path) / "preprocessor_config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{os.fspath(path)!r} has no preprocessor_config.json; pass the directory that "
                                    "ViTImageProcessor.save_pretrained wrote, or build ImageProcessor(...) directly.")
        return cls(**config_kwargs(read_json(file), file))

    def __call__(self, images: Tensor | np.ndarray | Sequence[Tensor | np.ndarray]) -> dict[str, Tensor]:
        """One image (H, W, C) or (C, H, W), a batch (B, ...) of them, or a list -> {"pixel_values": (B, C, H, W)}."""
        batch = [self.preprocess(image) for image in as_channels_first(images, self.num_channels)]
        shapes = sorted({tuple(x.shape[-2:]) for x in batch})
        if len(shapes) > 1:
            raise ValueError(f"the images have different sizes {shapes} and do_resize is off; resize them to one size "
                             "or use do_resize=True.")
        return {"pixel_values": torch.stack(batch)}

    def preprocess(self, image: Tensor) -> Tensor:
        """(C, H, W) uint8 -> (C, h, w) float32."""
        x = resize_like_pillow(image, self.size, self.resample) if self.do_resize else image
        x = (x.to(torch.float64) * self.rescale_factor).float() if self.do_rescale else x.float()
        if self.do_normalize:
            mean, std = (torch.tensor(v, dtype=torch.float32, device=x.device)[:, None, None]
                         for v in (self.image_mean, self.image_std))
            x = (x - mean) / std
        return x


CONFIG_IGNORED = frozenset({"do_convert_rgb", "image_processor_type", "feature_extractor_type", "processor_class"})


def config_kwargs(raw: Mapping[str, Any], file: Path) -> dict[str, Any]:
    """preprocessor_config.json -> ImageProcessor keyword arguments; an unknown field is an error naming it."""
    valid = {f.name for f in fields(ImageProcessor)}
    unknown = sorted(set(raw) - valid - CONFIG_IGNORED)
    if unknown:
        raise ValueError(f"{file} has fields {unknown} that ImageProcessor does not implement; it reads "
                         f"{sorted(valid)}.")
    kwargs = {key: value for key, value in raw.items() if key in valid}
    size = kwargs.get("size", {"height": 224, "width": 224})
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if not isinstance(size, Mapping) or set(size) != {"height", "width"}:
        raise ValueError(f"{file} sets size={size!r}; ImageProcessor resizes to a fixed {{'height', 'width'}} only.")
    kwargs["size"] = (size["height"], size["width"])
    for key in ("image_mean", "image_std"):
        if key in kwargs:
            value = kwargs[key]
            kwargs[key] = tuple(value) if isinstance(value, Sequence) else (value,) * 3
    return kwargs


def as_channels_first(images: Any, num_channels: int) -> list[Tensor]:
    """The input as a list of (C, H, W) uint8 tensors, with an error saying what to pass when it is not images."""
    items = list(images) if isinstance(images, (list, tuple)) else None
    if items is None:
        batch = as_tensor(images)
        if batch.dim() not in (3, 4):
            raise ValueError(f"an image must be (H, W, C) or (C, H, W), or a batch (B, ...) of them; got shape "
                             f"{tuple(batch.shape)}. Grayscale images need a channel axis.")
        items = [batch] if batch.dim() == 3 else list(batch)
    if not items:
        raise ValueError("no images were given.")
    return [channels_first(as_tensor(image), num_channels) for image in items]


def as_tensor(image: Any) -> Tensor:
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, Tensor):
        raise TypeError(f"images must be uint8 torch tensors or numpy arrays (or a list of them), got "
                        f"{type(image).__name__}; convert a PIL image with numpy.asarray(image).")
    if image.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (0-255), got {image.dtype}; for floats in [0, 1] pass "
                        "(x * 255).round().to(torch.uint8).")
    return image


def channels_first(image: Tensor, num_channels: int) -> Tensor:
    """(C, H, W) or (H, W, C) -> (C, H, W); the channel axis is the first one of size C, as transformers infers it."""
    if image.dim() != 3:
        raise ValueError(f"each image must be (H, W, C) or (C, H, W), got shape {tuple(image.shape)}.")
    if image.shape[0] == num_channels:
        return image
    if image.shape[-1] == num_channels:
        return image.permute(2, 0, 1)  # (C, H, W)
    raise ValueError(f"image of shape {tuple(image.shape)} has no axis of {num_channels} channels (one per image_mean "
                     "value) first or last; convert grayscale or RGBA images to RGB first.")


__all__ = ["ImageProcessor", "resize_like_pillow"]
