"""ViT (Dosovitskiy et al., 2020, "An Image is Worth 16x16 Words", https://arxiv.org/abs/2010.11929), numerically
equal to transformers' ViTModel and ViTForImageClassification.

Pre-LN encoder over image patches: a CLS token and one token per patch, plus learned positions (bicubically
interpolated for other image sizes). Attention and feed-forward blocks and their sites come from layers.py; their
residual sites have no norm, so an empty one is the plain ``h + residual`` of a pre-LN layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from peftcore.models.convert.tables import VIT
from peftcore.models.dropout import Dropout
from peftcore.models.layers import (
    EncoderConfig,
    EncoderOutput,
    Padding,
    Pooler,
    PreNormLayer,
    additive_mask,
    check_positive,
    prompt_site,
)
from peftcore.models.pretrained import PretrainedEncoder
from peftcore.sites import EmbeddingSite


@dataclass(frozen=True, kw_only=True)
class ViTConfig(EncoderConfig):
    """vit-base-patch16-224 defaults; field names and defaults are those of transformers' ViTConfig.

    ``vocab_size`` and EncoderConfig's other text fields (max_position_embeddings, type_vocab_size, pad_token_id,
    tie_word_embeddings) are unused: ViT reads pixels, and its positions follow ``image_size // patch_size``.
    ``encoder_stride`` is read only by transformers' masked-image-modeling decoder; it is kept so exports
    round-trip. The pooler is ``tanh(dense(x[:, 0]))`` over ``hidden_size``; ``pooler_output_size`` accepts
    None or ``hidden_size`` only.
    """

    model_type: ClassVar[str] = "vit"
    vocab_size: int = 1
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    encoder_stride: int = 16
    pooler_output_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, image_size=self.image_size, patch_size=self.patch_size, num_channels=self.num_channels)
        if self.patch_size > self.image_size:
            raise ValueError(f"{name}.patch_size={self.patch_size} exceeds image_size={self.image_size}.")
        if self.pooler_output_size not in (None, self.hidden_size):
            raise ValueError(f"{name}.pooler_output_size={self.pooler_output_size} differs from hidden_size="
                             f"{self.hidden_size}; only a pooler over hidden_size is implemented.")


class PatchEmbeddings(nn.Module):
    """Image -> CLS token + one token per patch (a strided convolution), plus learned positions; dropout; site.

    ``position`` is trained for a ``grid x grid`` patch grid; other grids interpolate it bicubically, as
    transformers' ``ViTEmbeddings.interpolate_pos_encoding`` does (the DINO recipe).
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        C, p = config.hidden_size, config.patch_size
        self.patch_size = p
        self.grid = config.image_size // p
        self.patch = nn.Conv2d(config.num_channels, C, kernel_size=p, stride=p)
        self.cls = nn.Parameter(torch.zeros(1, 1, C))
        self.position = nn.Parameter(torch.zeros(1, 1 + self.grid**2, C))
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.site = EmbeddingSite()  # site embeddings

    def forward(self, pixel_values: Tensor) -> Tensor:
        patches = self.patch(pixel_values)  # (B, C, h, w): an h x w grid of patches
        h, w = patches.shape[-2:]
        x = rearrange(patches, "B C h w -> B (h w) C")  # row-major patch order, as transformers' flatten(2)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), dim=1)  # (B, T, C), T = 1 + h w
        return self.site(self.dropout(x + self.positions(h, w)))

    def positions(self, h: int, w: int) -> Tensor:
        """(1, 1 + h w, C) position table for an h x w patch grid; the CLS position is never interpolated."""
        if (h, w) == (self.grid, self.grid):
            return self.position
        cls, grid = self.position[:, :1], self.position[:, 1:]
        grid = rearrange(grid, "1 (h w) C -> 1 C h w", h=self.grid)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)  # (1, C, h, w)
        return torch.cat((cls, rearrange(grid, "1 C h w -> 1 (h w) C")), dim=1)


class ImageClassificationHead(nn.Module):
    """ViTForImageClassification's classifier: a linear layer on the final-normed CLS token, no dropout."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, x: Tensor, pooled: Tensor | None) -> Tensor:
        return self.classifier(x[:, 0])  # (B, L)


class ViTModel(PretrainedEncoder):
    """ViT encoder with optional pooler and image-classification head (``config.head``)."""

    config_class = ViTConfig
    architecture = VIT
    head_classes: ClassVar = {"image_classification": ImageClassificationHead}

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        self.embeddings = PatchEmbeddings(config)  # ends in site embeddings
        self.prompt = prompt_site(self.embeddings)  # site prompt (a prompt cannot start from text here)
        self.layers = nn.ModuleList(PreNormLayer(config, config.qkv_bias) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # on the last hidden state
        self.pooler = Pooler(config.hidden_size) if config.add_pooling_layer else None
        self.head = self.build_head()
        self.apply(self.init_weights)

    def get_input_embeddings(self) -> nn.Module:
        """The patch projection: ViT embeds pixels, not tokens (transformers' ViTModel returns its patch embedding)."""
        return self.embeddings.patch

    def init_weights(self, module: nn.Module) -> None:
        """transformers' ViT initialisation: truncated N(0, initializer_range) for the linears, the patch
        projection, the CLS token and the positions; zero biases; unit LayerNorms."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, PatchEmbeddings):
            nn.init.trunc_normal_(module.cls, std=std)
            nn.init.trunc_normal_(module.position, std=std)
        else:
            super().init_weights(module)

    def encode(
        self,
        pixel_values: Tensor,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> EncoderOutput:
        """pixel_values (B, C, H, W), normalised as peftcore.models.image.ImageProcessor makes them -> EncoderOutput.

        Images of another size than ``config.image_size`` need ``interpolate_pos_encoding=True``.
        """
        self.check_pixels(pixel_values, interpolate_pos_encoding)
        x = self.embeddings(pixel_values.to(self.embeddings.patch.weight.dtype))  # (B, T, C)
        x, attention_mask, positions = self.prompt(x, None)  # site prompt: (B, P+T, C) when active; a mixed batch's
        # rows with shorter prompts are padded
        padding = Padding.of(attention_mask, additive_mask(attention_mask, x.dtype), self.unpadded())
        return self.run_layers(x, padding, output_hidden_states, output_attentions, positions)

    def check_pixels(self, pixel_values: Tensor, interpolate_pos_encoding: bool) -> None:
        """Validate a forward's images; every message says what to pass instead."""
        shape, config = tuple(pixel_values.shape), self.config
        if len(shape) != 4:
            raise ValueError(f"pixel_values must be (batch, channels, height, width), got shape {shape}; add a batch "
                             "dimension with unsqueeze(0) for a single image.")
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values are {pixel_values.dtype}; pass normalised floats, e.g. from "
                             "peftcore.models.image.ImageProcessor, not raw image bytes.")
        _, channels, height, width = shape
        if channels != config.num_channels:
            raise ValueError(f"pixel_values have {channels} channels, the model takes {config.num_channels} "
                             "(config.num_channels); channels-last images need permute(0, 3, 1, 2).")
        size, p = config.image_size, config.patch_size
        if not interpolate_pos_encoding and (height, width) != (size, size):
            raise ValueError(f"the images are {height}x{width}, the model's are {size}x{size}; resize them (e.g. "
                             "ImageProcessor) or pass interpolate_pos_encoding=True to interpolate the positions.")
        if height < p or width < p:
            raise ValueError(f"the images are {height}x{width}, smaller than one {p}x{p} patch.")


__all__ = ["ImageClassificationHead", "PatchEmbeddings", "ViTConfig", "ViTModel"]
