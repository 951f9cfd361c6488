"""The site protocol: every model exposes exactly SITE_NAMES, empty sites cost nothing and change nothing,
and a researcher's own model gets sites by building from the site classes."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peftcore.models.bert import BertConfig, BertModel
from peftcore.models.layers import Padding
from peftcore.sites import (
    SITE_NAMES,
    EmbeddingSite,
    OutputSite,
    PrefixSite,
    PromptSite,
    ResidualSite,
    SiteLinear,
    find_sites,
)
from tests.archs import ARCHS, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_every_model_exposes_exactly_the_site_names(arch):
    model = tiny_model(arch)
    counts = Counter(site.name for site in find_sites(model))
    assert set(counts) == set(SITE_NAMES)
    assert counts["embeddings"] == counts["prompt"] == 1
    assert all(counts[name] == len(model.layers) for name in SITE_NAMES if name not in ("embeddings", "prompt"))
    assert len(model.layers) == getattr(model.config, "num_distinct_layers", model.config.num_hidden_layers)


@pytest.mark.parametrize("arch", ARCHS)
def test_site_paths_are_the_site_names_so_base_keys_are_unchanged(arch):
    model = tiny_model(arch)
    for site in find_sites(model):
        if site.layer is not None:
            assert model.get_submodule(f"layers.{site.layer}.{site.name}") is site.module


def test_empty_site_linear_is_exactly_nn_linear():
    torch.manual_seed(0)
    site, x = SiteLinear(8, 5), torch.randn(3, 8)
    assert torch.equal(site(x), F.linear(x, site.weight, site.bias))
    assert list(site.state_dict()) == ["weight", "bias"]


def test_empty_residual_prefix_embedding_and_prompt_sites_are_identities():
    h, residual, norm = torch.randn(2, 3, 4), torch.randn(2, 3, 4), nn.LayerNorm(4)
    assert torch.equal(ResidualSite(norm)(h, residual), norm(h + residual))
    assert torch.equal(ResidualSite(None)(h, residual), h + residual)
    k, v, mask = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4), torch.zeros(2, 1, 1, 3)
    assert all(a is b for a, b in zip(PrefixSite()(k, v, mask, torch.randn(2, 3, 4)), (k, v, mask), strict=True))
    assert EmbeddingSite()(h) is h and EmbeddingSite().inverse(h) is h
    mask = torch.ones(2, 3)
    assert PromptSite()(h, mask) == (h, mask, None)


def test_a_plug_receives_input_and_base_output_and_is_not_registered():
    site, x = SiteLinear(4, 4), torch.randn(2, 4)
    site.plug = lambda x, y: y * 2
    assert torch.allclose(site(x), 2 * F.linear(x, site.weight, site.bias))
    assert list(site.state_dict()) == ["weight", "bias"]


class TinyBlock(nn.Module):
    """A researcher's own Transformer layer: the site classes under the site names are all it takes."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = nn.Module()
        self.attn.q, self.attn.k, self.attn.v = (SiteLinear(width, width) for _ in range(3))
        self.attn.prefix = PrefixSite()
        self.attn.out = SiteLinear(width, width)
        self.attn.residual = ResidualSite(nn.LayerNorm(width))
        self.ffn = nn.Module()
        self.ffn.intermediate, self.ffn.output = SiteLinear(width, 2 * width), SiteLinear(2 * width, width)
        self.ffn.residual = ResidualSite(nn.LayerNorm(width))
        self.output = OutputSite()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (proj(x)[:, None] for proj in (self.attn.q, self.attn.k, self.attn.v))
        k, v, mask = self.attn.prefix(k, v, torch.zeros(x.shape[0], 1, 1, x.shape[1]), x)
        x = self.attn.residual(self.attn.out(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)[:, 0]), x)
        x = self.ffn.residual(self.ffn.output(F.gelu(self.ffn.intermediate(x))), x)
        return self.output(x, Padding())  # no padding: every token is real


class TinyTransformer(nn.Module):
    def __init__(self, width: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, width)
        self.site = EmbeddingSite()
        self.prompt = PromptSite()
        self.layers = nn.ModuleList(TinyBlock(width) for _ in range(depth))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x, _, _ = self.prompt(self.site(self.embed(ids)), None)
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_custom_model_built_from_site_classes_has_every_site():
    model = TinyTransformer()
    counts = Counter(site.name for site in find_sites(model))
    assert counts == Counter({"embeddings": 1, "prompt": 1, **{name: 2 for name in SITE_NAMES[2:]}})
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 8)


def test_a_site_outside_the_layers_is_refused():
    model = TinyTransformer()
    model.stray = SiteLinear(2, 2)
    with pytest.raises(TypeError, match="outside model.layers"):
        list(find_sites(model))


def test_a_compiled_model_trains_step_after_step_in_a_fresh_thread():
    """The layer loop publishes its padding in a thread-local (peftcore/sites.py ``CURRENT_PADDING``): the compiled
    model's guards on it must hold from the first call in a thread on (a thread that never ran the model eagerly)."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=37))
    compiled, ids, errors = torch.compile(model, backend="eager"), torch.randint(1, 64, (2, 8)), []

    def train() -> None:
        try:
            for _ in range(3):
                compiled(input_ids=ids).last_hidden_state.sum().backward()
        except Exception as error:  # raised in this thread, asserted in the test's
            errors.append(error)

    thread = threading.Thread(target=train)
    thread.start()
    thread.join()
    assert not errors, errors
