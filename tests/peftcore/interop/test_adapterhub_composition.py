"""Composition blocks against live AdapterHub (``adapters`` 1.3.0): Stack, Fuse, Split, BatchSplit, Parallel,
Average and ``average_adapter``.

AdapterHub adds the adapters, moves every tensor off its initialisation (Gaussian noise, 0.1) and saves them; ours
loads the same files, both run the same composition (AdapterHub with its own block objects: given ours it would read
them as plain lists, a Stack) and agree within 1e-5. BERT and RoBERTa run every case; DeBERTa v2, ViT, XLM-RoBERTa
and ELECTRA a representative subset (AdapterHub refuses invertible adapters on ViT). MAD-X on XLM-RoBERTa is also run
as AdapterHub's tutorial trains it: language adapters by masked-LM, then a task adapter stacked on one.

Where we deliberately differ (peftcore/composition.py's docstring), a test pins AdapterHub's numbers next to ours,
so it fails if they change: stacked LoRAs multiply their low-rank maps there and add here; ``Average`` divides by N
twice there; a ``BatchSplit`` of LoRA adapters on different layers raises there (TypeError; same-layer LoRAs run)
and runs each slice as if alone here, as does a Stack inside a BatchSplit, whose numbers AdapterHub changes;
``lora_delta_w_svd`` with ``svd_rank != r`` keeps alpha / svd_rank there and so rescales the update, where ours keeps
the update's size (AdapterHub refuses ``lora_delta_w_svd`` on DeBERTa v2 altogether).
"""

from __future__ import annotations

from pathlib import Path

import adapters
import adapters.composition as ah
import pytest
import torch

from peftcore.composition import Average, BatchSplit, Block, Fuse, Parallel, Split, Stack
from tests.archs import ARCHS, BERT_FAMILY, reference
from tests.parity import assert_parity, real_tokens
from tests.peftcore.interop.test_adapterhub import adapterhub_model, assert_moved, hidden, inputs_for, ours_from


@pytest.fixture
def checkpoint(hf_checkpoint):
    """checkpoint(arch) -> the directory of a random-init transformers model written by save_pretrained, at the text
    models' width (the "wide" variant: ViT widens)."""
    return lambda arch: reference(hf_checkpoint, arch, variant="wide")[0]


class Pair:
    """AdapterHub and ours on one checkpoint, holding the same adapters (AdapterHub's, perturbed and saved)."""

    def __init__(self, arch: str, directory: Path, flex: bool = False) -> None:
        self.arch, self.directory, self.inputs = arch, directory, inputs_for(arch)
        self.theirs = adapterhub_model(arch, directory, flex=flex)
        self.ours = ours_from(arch, directory)

    def add(self, configs: dict[str, str], tmp_path: Path, heads: bool = False) -> Pair:
        """Add adapters (and classification heads named after them) in AdapterHub, move them off their
        initialisation, save them, and load the files into ours."""
        generator = torch.Generator().manual_seed(len(self.theirs.adapters_config.adapters))
        for name, config in configs.items():
            self.theirs.add_adapter(name, config=config)
            if heads:
                self.theirs.add_classification_head(name, num_labels=3)
        with torch.no_grad():
            for key, parameter in self.theirs.named_parameters():
                if any(f".{name}." in key for name in configs):
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
        for name in configs:
            self.theirs.save_adapter(str(tmp_path / name), name)
            assert self.ours.load_adapter(tmp_path / name) == name
        return self

    def outputs(self, ours_setup, theirs_setup, **kwargs):
        self.ours.set_active_adapters(ours_setup)
        self.theirs.set_active_adapters(theirs_setup)
        with torch.no_grad():
            return self.ours(**self.inputs, **kwargs), self.theirs(**self.inputs, **kwargs)

    def hidden(self, ours_setup, theirs_setup) -> tuple[torch.Tensor, torch.Tensor]:
        ours, theirs = self.outputs(ours_setup, theirs_setup)
        mask = self.inputs.get("attention_mask")
        return real_tokens(ours.last_hidden_state, mask), real_tokens(theirs.last_hidden_state, mask)

    def ours_hidden(self, setup) -> torch.Tensor:
        self.ours.set_active_adapters(setup)
        return hidden(self.ours, self.inputs)

    def plain(self) -> torch.Tensor:
        return self.ours_hidden(None)


@pytest.fixture
def pair(checkpoint, tmp_path):
    """pair(arch, {name: config}, flex=False, heads=False) -> a Pair holding those adapters."""
    def make(arch: str, configs: dict[str, str], flex: bool = False, heads: bool = False) -> Pair:
        return Pair(arch, checkpoint(arch), flex).add(configs, tmp_path, heads)

    return make


def theirs_of(block: Block | str):
    """The same setup built from AdapterHub's own blocks."""
    if isinstance(block, str):
        return block
    children = [theirs_of(child) for child in block]
    if isinstance(block, Fuse):
        return ah.Fuse(*children)
    if isinstance(block, Split):
        return ah.Split(*children, splits=list(block.splits))
    if isinstance(block, BatchSplit):
        return ah.BatchSplit(*children, batch_sizes=list(block.batch_sizes))
    if isinstance(block, Average):
        return ah.Average(*children, weights=list(block.weights), normalize_weights=False)
    return {Stack: ah.Stack, Parallel: ah.Parallel}[type(block)](*children)


def rows(inputs: dict[str, torch.Tensor], span: slice) -> dict[str, torch.Tensor]:
    return {key: value[span] for key, value in inputs.items()}


def sliced_alone(model, inputs: dict, setups: list, sizes: list[int]) -> torch.Tensor:
    """Each slice of the batch run alone under its own setup, joined again."""
    outs, start = [], 0
    for setup, size in zip(setups, sizes, strict=True):
        model.set_active_adapters(setup)
        outs.append(hidden(model, rows(inputs, slice(start, start + size))))
        start += size
    return torch.cat(outs)


def cases(table: dict[str, list[str]]) -> list:
    return [pytest.param(arch, case, id=f"{arch}-{case}") for arch, names in table.items() for case in names]


# ---- Stack ---------------------------------------------------------------------------------------------------

STACKS = {
    "seq_bn+seq_bn": ("seq_bn", "seq_bn"),
    "madx": ("seq_bn_inv", "seq_bn"),  # the language adapter (with its invertible adapter) then the task adapter
    "par_bn+seq_bn": ("par_bn", "seq_bn"),  # a parallel adapter reads the sub-layer input: it goes first
    "prefix+prefix": ("prefix_tuning[prefix_length=4]", "prefix_tuning[prefix_length=6]"),
    "ia3+ia3": ("ia3", "ia3"),
    # AdapterHub drops a shared phm rule when it saves from a bare model (tests/peftcore/methods/test_phm.py)
    "compacter+compacter++": ("compacter[reduction_factor=8, shared_phm_rule=False]",
                              "compacter++[reduction_factor=8, shared_phm_rule=False]"),
}
STACK_CASES = cases({"bert": list(STACKS), "roberta": list(STACKS),
                     "deberta-v2": ["seq_bn+seq_bn", "madx", "prefix+prefix", "ia3+ia3"],
                     "vit": ["par_bn+seq_bn", "prefix+prefix", "compacter+compacter++"],
                     "xlm-roberta": ["madx", "prefix+prefix", "ia3+ia3"], "electra": ["madx", "par_bn+seq_bn"]})


@pytest.mark.parametrize(("arch", "case"), STACK_CASES)
def test_stack_gives_adapterhubs_outputs(pair, arch, case):
    first, second = STACKS[case]
    models = pair(arch, {"a": first, "b": second})
    ours, theirs = models.hidden(Stack("a", "b"), ah.Stack("a", "b"))
    assert_parity(ours, theirs)
    assert_moved(ours, models.ours_hidden("b"))  # the first adapter of the stack takes part


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_parallel_adapter_stacked_after_another_reads_the_sub_layer_input_as_in_adapterhub(pair, arch):
    """A parallel adapter computes from the sub-layer's input and adds the sub-layer's output, so in
    Stack(seq_bn, par_bn) the sequential adapter's output is not used: AdapterHub's semantics, kept."""
    models = pair(arch, {"a": "seq_bn", "b": "par_bn"})
    ours, theirs = models.hidden(Stack("a", "b"), ah.Stack("a", "b"))
    assert_parity(ours, theirs)
    assert_parity(ours, models.ours_hidden("b"))


@pytest.mark.parametrize("arch", ["bert", "roberta", "deberta-v2", "xlm-roberta"])
def test_madx_swapping_the_language_adapter_gives_adapterhubs_outputs(pair, arch):
    models = pair(arch, {"en": "seq_bn_inv", "de": "seq_bn_inv", "task": "seq_bn"})
    english, _ = models.hidden(Stack("en", "task"), ah.Stack("en", "task"))
    ours, theirs = models.hidden(Stack("de", "task"), ah.Stack("de", "task"))
    assert_parity(ours, theirs)
    assert_moved(ours, english)


def train_setup(model, trained: str, active, inputs: dict, output, steps: int = 3) -> None:
    """``steps`` AdamW steps on adapter ``trained`` and its head (AdapterHub's ``train_adapter``), all else frozen,
    with the setup ``active`` running."""
    model.train_adapter(trained)
    model.set_active_adapters(active)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        output(model(**inputs)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def test_madx_trained_by_adapterhub_on_xlm_roberta_gives_its_outputs_in_ours(checkpoint, tmp_path):
    """MAD-X (Pfeiffer et al., 2020, https://arxiv.org/abs/2005.00052) as AdapterHub's tutorial runs it on XLM-R: a
    language adapter per language with its invertible adapter, trained by masked-LM through the inverse; a task adapter
    and classification head trained on top of the frozen English adapter; zero-shot transfer swaps in German."""
    arch = "xlm-roberta"
    directory, inputs = checkpoint(arch), inputs_for(arch)
    mask = inputs["attention_mask"]
    theirs = adapterhub_model(arch, directory, flex=True)
    for language in ("en", "de"):
        theirs.add_adapter(language, config="seq_bn_inv")
        theirs.add_masked_lm_head(language)
        train_setup(theirs, language, language, inputs, lambda out: real_tokens(out.logits, mask))
    english = {key: t.clone() for key, t in theirs.state_dict().items() if ".en." in key}
    theirs.add_adapter("task", config="seq_bn")
    theirs.add_classification_head("task", num_labels=3)
    train_setup(theirs, "task", ah.Stack("en", "task"), inputs, lambda out: out.logits)
    assert theirs.active_adapters == ah.Stack("en", "task")
    assert english and all(torch.equal(theirs.state_dict()[key], t) for key, t in english.items())  # frozen
    theirs.eval()
    ours = ours_from(arch, directory)
    for name in ("en", "de", "task"):
        theirs.save_adapter(str(tmp_path / name), name)
        assert ours.load_adapter(tmp_path / name) == name
    for language in ("en", "de"):
        ours.set_active_adapters(language)
        theirs.set_active_adapters(language)
        with torch.no_grad():
            assert_parity(real_tokens(ours(**inputs).logits, mask), real_tokens(theirs(**inputs).logits, mask))
    outputs = {}
    for language in ("en", "de"):
        ours.set_active_adapters(Stack(language, "task"))
        theirs.set_active_adapters(ah.Stack(language, "task"))
        assert ours.active_head == theirs.active_head == "task"
        with torch.no_grad():
            mine, expected = ours(**inputs, output_hidden_states=True), theirs(**inputs, output_hidden_states=True)
        assert_parity(real_tokens(mine.hidden_states[-1], mask), real_tokens(expected.hidden_states[-1], mask))
        assert_parity(mine.logits, expected.logits)
        outputs[language] = mine.logits
    assert_moved(outputs["de"], outputs["en"])


# ---- LoRA Stack: the updates add up here, the low-rank maps multiply in AdapterHub ----------------------------

LORA = "lora[r=4, alpha=8]"  # q and v only: square, so AdapterHub's product of maps runs at all


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_stacked_lora_adds_the_updates_where_adapterhub_multiplies_the_low_rank_maps(pair, arch):
    models = pair(arch, {"a": LORA, "b": LORA})
    ours, theirs = models.hidden(Stack("a", "b"), ah.Stack("a", "b"))
    assert (ours - theirs).abs().max() > 1e-3
    models.ours.merge_adapter("a")  # W + s_a B_a A_a, then b's update on top: the sum of the two updates
    models.ours.set_active_adapters("b")
    assert_parity(hidden(models.ours, models.inputs), ours)
    models.ours.reset_adapter("a")
    assert_moved(ours, hidden(models.ours, models.inputs))


# ---- Fuse -----------------------------------------------------------------------------------------------------

FUSE_CASES = cases({"bert": ["dynamic", "static"], "roberta": ["dynamic", "static"], "deberta-v2": ["dynamic"],
                    "vit": ["static"]})
FUSE_SETUPS = {"fuse": Fuse("a", "b"), "stack-fuse": Stack("lang", Fuse("a", "b"))}


@pytest.fixture
def fused(pair, tmp_path):
    """fused(arch, config) -> a Pair with adapters lang, a, b and a fusion of a and b that AdapterHub trained a few
    steps and saved, loaded into ours."""
    def make(arch: str, config: str) -> Pair:
        models = pair(arch, {"lang": "seq_bn", "a": "seq_bn", "b": "seq_bn"})
        theirs = models.theirs
        theirs.add_adapter_fusion(ah.Fuse("a", "b"), config)
        theirs.train_adapter_fusion(ah.Fuse("a", "b"))
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(3):
            loss = theirs(**models.inputs).last_hidden_state.pow(2).mean()
            regularization = theirs.get_fusion_regularization_loss()
            (loss if regularization is None else loss + regularization).backward()
            optimizer.step()
            optimizer.zero_grad()
        theirs.eval()
        theirs.save_adapter_fusion(str(tmp_path / "fusion"), "a,b")
        assert models.ours.load_adapter_fusion(tmp_path / "fusion", set_active=True) == "a,b"
        return models

    return make


@pytest.mark.parametrize("setup", FUSE_SETUPS)
@pytest.mark.parametrize(("arch", "config"), FUSE_CASES)
def test_fusion_trained_by_adapterhub_gives_its_outputs_in_ours(fused, arch, config, setup):
    models = fused(arch, config)
    block = FUSE_SETUPS[setup]
    ours, theirs = models.hidden(block, theirs_of(block))
    assert_parity(ours, theirs)
    assert_moved(ours, models.ours_hidden(Stack(*block.flatten()[:-2], "b")))  # the fusion, not adapter b alone


@pytest.mark.parametrize(("arch", "config"), FUSE_CASES)
def test_fusion_attentions_equal_adapterhubs(fused, arch, config):
    models = fused(arch, config)
    ours, theirs = models.outputs(Fuse("a", "b"), ah.Fuse("a", "b"), output_adapter_fusion_attentions=True)
    expected = theirs.adapter_fusion_attentions
    mine = ours.adapter_fusion_attentions
    assert {name: {layer: set(sites) for layer, sites in layers.items()} for name, layers in mine.items()} == {
        name: {layer: set(sites) for layer, sites in layers.items()} for name, layers in expected.items()}
    for name, layers in expected.items():
        for layer, sites in layers.items():
            for site, attention in sites.items():
                assert_parity(torch.as_tensor(mine[name][layer][site]), torch.as_tensor(attention))


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_fusion_regularization_loss_equals_adapterhubs(fused, arch):
    models = fused(arch, "dynamic")
    models.ours.train_adapter_fusion(Fuse("a", "b"))
    models.theirs.train_adapter_fusion(ah.Fuse("a", "b"))
    expected = models.theirs.get_fusion_regularization_loss()
    assert expected > 0
    assert_parity(models.ours.fusion_regularization_loss(), expected)


@pytest.mark.parametrize(("arch", "config"), FUSE_CASES)
def test_fusion_saved_by_ours_in_adapterhub_layout_gives_our_outputs_in_adapterhub(pair, arch, config, tmp_path):
    models = pair(arch, {"a": "seq_bn", "b": "seq_bn"})
    models.ours.add_adapter_fusion(Fuse("a", "b"), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, fusion in models.ours.fusion_layers("a,b"):
            for parameter in fusion.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    models.ours.save_adapter_fusion(tmp_path / "fusion", Fuse("a", "b"), format="adapterhub")
    models.theirs.load_adapter_fusion(str(tmp_path / "fusion"))
    ours, theirs = models.hidden(Fuse("a", "b"), ah.Fuse("a", "b"))
    assert_parity(theirs, ours)


# ---- Split, BatchSplit, Parallel --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "roberta", "vit"])
def test_split_gives_adapterhubs_outputs(pair, arch):
    models = pair(arch, {"a": "seq_bn", "b": "seq_bn"})
    length = models.plain().shape[1]
    block = Split("a", "b", splits=[length // 2, length - length // 2])
    ours, theirs = models.hidden(block, theirs_of(block))
    assert_parity(ours, theirs)
    assert_moved(ours, models.ours_hidden("a"))


BATCH_SPLITS = {"seq_bn": "seq_bn", "double_seq_bn": "double_seq_bn[reduction_factor=8]",
                "prefix": "prefix_tuning[prefix_length=5]", "lora": "lora[intermediate_lora=True]"}
BATCH_SPLIT_CASES = cases({"bert": list(BATCH_SPLITS), "roberta": list(BATCH_SPLITS),
                           "deberta-v2": ["seq_bn", "prefix"], "vit": ["double_seq_bn", "lora"]})


@pytest.mark.parametrize(("arch", "case"), BATCH_SPLIT_CASES)
def test_batch_split_of_same_config_adapters_gives_adapterhubs_outputs(pair, arch, case):
    models = pair(arch, {"a": BATCH_SPLITS[case], "b": BATCH_SPLITS[case]})
    block = BatchSplit("a", "b", batch_sizes=[1, 2])
    ours, theirs = models.hidden(block, theirs_of(block))
    assert_parity(ours, theirs)
    assert_parity(theirs, sliced_alone(models.theirs, models.inputs, ["a", "b"], [1, 2]))


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_batch_split_holding_a_stack_runs_each_slice_as_if_alone_where_adapterhub_does_not(pair, arch):
    """Deliberate difference: ours gives AdapterHub's outputs for each slice run alone; AdapterHub's own BatchSplit
    gives other numbers (even with seq_bn adapters only) and pins that here."""
    models = pair(arch, {"lang": "seq_bn", "a": "seq_bn", "b": "seq_bn"})
    block = BatchSplit(Stack("lang", "a"), "b", batch_sizes=[2, 1])
    ours, theirs = models.hidden(block, theirs_of(block))
    alone = sliced_alone(models.theirs, models.inputs, [ah.Stack("lang", "a"), "b"], [2, 1])
    assert_parity(ours, alone)
    assert (theirs - alone).abs().max() > 1e-3


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_batch_split_of_lora_at_different_layers_raises_in_adapterhub_and_runs_each_slice_as_if_alone_in_ours(
        pair, arch):
    """Where one child has no LoRA at a layer, AdapterHub's slice carries no update (None) into its sum."""
    models = pair(arch, {"a": "lora", "b": "lora[r=4, alpha=16, intermediate_lora=True]"})
    models.theirs.set_active_adapters(ah.BatchSplit("a", "b", batch_sizes=[1, 2]))
    with pytest.raises(TypeError, match="NoneType"):
        hidden(models.theirs, models.inputs)
    models.ours.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
    ours = hidden(models.ours, models.inputs)
    assert_parity(ours, sliced_alone(models.theirs, models.inputs, ["a", "b"], [1, 2]))


@pytest.mark.parametrize(("arch", "config"), [("bert", "seq_bn"), ("roberta", "lora"), ("roberta", "prefix_tuning"),
                                              ("deberta-v2", "seq_bn")])
def test_parallel_with_flex_heads_gives_adapterhubs_logits_per_branch(pair, arch, config):
    models = pair(arch, {"a": config, "b": config}, flex=True, heads=True)
    ours, theirs = models.outputs(Parallel("a", "b"), ah.Parallel("a", "b"))
    assert isinstance(ours, list) and len(ours) == len(theirs) == 2
    for mine, expected in zip(ours, theirs, strict=True):
        assert_parity(mine.logits, expected.logits)
    assert (ours[0].logits - ours[1].logits).abs().max() > 1e-3


def test_parallel_with_a_head_count_unlike_its_branches_is_refused_at_the_forward_as_in_adapterhub(pair):
    """AdapterHub activates the setup and refuses the forward while one head is active for two branches; with no
    head active both return the branches' hidden states as one batch, branch after branch."""
    models = pair("bert", {"a": "seq_bn", "b": "seq_bn"}, flex=True)
    for model in (models.theirs, models.ours):
        model.add_classification_head("a", num_labels=2)
    models.ours.set_active_adapters(Parallel("a", "b"))
    models.theirs.set_active_adapters(ah.Parallel("a", "b"))
    assert models.ours.active_head == models.theirs.active_head == "a"
    with pytest.raises(ValueError, match="number of parallel adapters and the number of active heads must match"):
        models.theirs(**models.inputs)
    with pytest.raises(ValueError, match=r"runs 2 copies of the batch, but one head is active \('a'\)"):
        models.ours(**models.inputs)
    models.ours.active_head = models.theirs.active_head = None
    ours, theirs = models.outputs(Parallel("a", "b"), ah.Parallel("a", "b"))
    mask = models.inputs["attention_mask"].repeat(2, 1)
    assert_parity(real_tokens(ours.last_hidden_state, mask), real_tokens(theirs.last_hidden_state, mask))


@pytest.mark.parametrize("sizes", [[0, 3], [3, 0]])
def test_batch_split_with_a_slice_of_size_zero_gives_adapterhubs_outputs(pair, sizes):
    models = pair("bert", {"a": "seq_bn", "b": "seq_bn[reduction_factor=8]"})
    block = BatchSplit("a", "b", batch_sizes=sizes)
    ours, theirs = models.hidden(block, theirs_of(block))
    assert_parity(ours, theirs)
    assert_parity(theirs, models.ours_hidden("a" if sizes[0] else "b"))


def test_adapterhub_crashes_on_an_empty_batch_split_slice_with_heads_and_ours_gives_it_empty_logits(pair):
    """AdapterHub's heads index the first row of every slice (IndexError on an empty one)."""
    models = pair("bert", {"a": "seq_bn", "b": "seq_bn"}, flex=True, heads=True)
    models.theirs.set_active_adapters(ah.BatchSplit("a", "b", batch_sizes=[0, 3]))
    with pytest.raises(IndexError):
        models.theirs(**models.inputs)
    (empty, full), alone = models.outputs(BatchSplit("a", "b", batch_sizes=[0, 3]), "b")
    assert empty.logits.shape == (0, 3)
    assert_parity(full.logits, alone.logits)


# ---- Average ----------------------------------------------------------------------------------------------------

AVERAGE_CASES = cases({"bert": ["seq_bn", "lora", "ia3"], "roberta": ["seq_bn", "lora", "ia3"],
                       "deberta-v2": ["lora"], "vit": ["seq_bn"]})


@pytest.mark.parametrize(("arch", "config"), AVERAGE_CASES)
def test_average_weighs_once_where_adapterhub_divides_by_n_again(pair, arch, config):
    """Ours with weights w equals AdapterHub's with N·w unnormalised; AdapterHub's own Average(w) is off."""
    models = pair(arch, {"a": config, "b": config})
    ours, theirs = models.hidden(Average("a", "b", weights=[0.3, 0.7]),
                                 ah.Average("a", "b", weights=[0.6, 1.4], normalize_weights=False))
    assert_parity(ours, theirs)
    models.theirs.set_active_adapters(ah.Average("a", "b", weights=[0.3, 0.7]))
    assert (hidden(models.theirs, models.inputs) - ours).abs().max() > 1e-3


# ---- average_adapter --------------------------------------------------------------------------------------------

AVERAGING = {
    "seq_bn-linear": ("seq_bn", "linear", [0.3, 0.7], None),
    "lora-linear": ("lora[intermediate_lora=True]", "linear", [0.3, 0.7], None),
    "prefix-linear": ("prefix_tuning[prefix_length=4]", "linear", [0.3, 0.7], None),
    "lora-negate_b": ("lora", "lora_linear_only_negate_b", [1.0, -0.4], None),
    "lora-svd": ("lora[r=4, alpha=8]", "lora_delta_w_svd", [0.3, 0.7], 4),
    "dora-linear": ("dora[alpha=16]", "linear", [0.3, 0.7], None),
}
AVERAGING_CASES = cases({"bert": list(AVERAGING), "roberta": list(AVERAGING),
                         "deberta-v2": ["prefix-linear", "lora-negate_b"], "vit": ["seq_bn-linear", "lora-negate_b"]})


@pytest.mark.parametrize(("arch", "case"), AVERAGING_CASES)
def test_average_adapter_gives_adapterhubs_averaged_adapter(pair, arch, case):
    config, strategy, weights, svd_rank = AVERAGING[case]
    models = pair(arch, {"a": config, "b": config})
    for model in (models.ours, models.theirs):
        model.average_adapter("avg", ["a", "b"], weights=weights, combine_strategy=strategy, svd_rank=svd_rank)
    ours, theirs = models.hidden(Stack("avg"), "avg")
    assert_parity(ours, theirs)
    assert_moved(ours, models.plain())


@pytest.mark.parametrize("arch", BERT_FAMILY)
def test_svd_average_keeps_the_update_where_adapterhub_rescales_it_by_the_new_rank(pair, arch):
    """AdapterHub gives the averaged adapter r = svd_rank and keeps alpha, so its update is scaled by alpha / svd_rank
    instead of the sources' alpha / r. Ours keeps the update's size: at full rank (svd_rank = min(shape)) the averaged
    adapter is exactly the weighted sum of the sources' updates, which Average gives in both (AdapterHub with N·w)."""
    models = pair(arch, {"a": LORA, "b": LORA})
    full = ARCHS[arch].hf_config("wide").hidden_size  # q and v are square: min(shape) = hidden size
    for model in (models.ours, models.theirs):
        model.average_adapter("avg", ["a", "b"], weights=[0.3, 0.7], combine_strategy="lora_delta_w_svd",
                              svd_rank=full)
    query = models.theirs.encoder.layer[0].attention.self.query
    assert query.loras["avg"].scaling == 8 / full  # LoRA's alpha over the new rank, not 8 / 4
    weighted_sum, theirs_weighted_sum = models.hidden(Average("a", "b", weights=[0.3, 0.7]),
                                                      ah.Average("a", "b", weights=[0.6, 1.4], normalize_weights=False))
    assert_parity(weighted_sum, theirs_weighted_sum)
    ours, theirs = models.hidden(Stack("avg"), "avg")
    assert_parity(ours, weighted_sum)
    assert (theirs - weighted_sum).abs().max() > 1e-3


def test_adapterhub_refuses_svd_averaging_on_deberta_v2_and_ours_gives_the_weighted_sum(pair):
    models = pair("deberta-v2", {"a": LORA, "b": LORA})
    with pytest.raises(ValueError, match="does not support 'lora_delta_w_svd'"):
        models.theirs.average_adapter("avg", ["a", "b"], weights=[0.3, 0.7], combine_strategy="lora_delta_w_svd",
                                      svd_rank=4)
    models.ours.average_adapter("avg", ["a", "b"], weights=[0.3, 0.7], combine_strategy="lora_delta_w_svd",
                                svd_rank=ARCHS["deberta-v2"].hf_config("wide").hidden_size)
    weighted_sum, theirs_weighted_sum = models.hidden(Average("a", "b", weights=[0.3, 0.7]),
                                                      ah.Average("a", "b", weights=[0.6, 1.4], normalize_weights=False))
    assert_parity(weighted_sum, theirs_weighted_sum)
    assert_parity(models.ours_hidden("avg"), weighted_sum)


def test_adapterhub_is_imported_at_the_version_these_tests_pin():
    assert adapters.__version__ == "1.3.0"


def test_dora_batch_split_of_adapterhub_rescales_every_row_by_the_last_adapter_and_ours_runs_each_slice_alone(pair):
    """AdapterHub composes the low-rank updates, then applies the *last* adapter's magnitude and norm to the whole
    batch, so the rows of "a" get b's rescaling; ours runs each slice as if alone."""
    models = pair("bert", {"a": "dora[alpha=16]", "b": "dora[alpha=16]"})
    block = BatchSplit("a", "b", batch_sizes=[1, 2])
    ours, theirs = models.hidden(block, theirs_of(block))
    alone = sliced_alone(models.ours, models.inputs, ["a", "b"], [1, 2])
    assert_parity(ours, alone)
    assert_parity(sliced_alone(models.theirs, models.inputs, ["a", "b"], [1, 2]), alone)
    assert (theirs - alone)[:1].abs().max() > 1e-3 and (theirs - alone)[1:].abs().max() < 1e-5
