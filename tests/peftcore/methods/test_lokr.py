"""LoKr against HF PEFT 0.21.2: PEFT's factorisation, adapters PEFT trained and saved load with its outputs, ours
saved for PEFT load in it with ours, merge/reset is exact, and what one rank per adapter cannot hold is refused."""

from __future__ import annotations

import peft
import pytest
from peft.tuners.lokr.layer import factorization as peft_factorization

from peftcore import LoKrConfig
from peftcore.methods.lokr import factorization
from tests.archs import ARCHS
from tests.peftcore.interop.test_peft import SEQ_CLS, inputs, reference, train_in_peft
from tests.peftcore.methods.test_loha import assert_round_trip_and_exact_merge


def test_factorization_is_peft_s():
    assert all(factorization(n, f) == peft_factorization(n, f) for n in range(1, 200) for f in (-1, 1, 2, 3, 4, 16))


CASES = [  # full factors (r large); W2 low-rank, W1 too (decompose_both); LyCORIS's init with a factor of 4
    ("bert", peft.LoKrConfig(r=8, alpha=4, target_modules=["query", "value"], **SEQ_CLS)),
    ("bert", peft.LoKrConfig(r=2, alpha=6, target_modules=["key", "intermediate.dense"], decompose_both=True,
                             alpha_pattern={"key": 3}, **SEQ_CLS)),
    ("roberta", peft.LoKrConfig(r=2, alpha=3, target_modules=r".*\.(query|\d\.output\.dense)", init_weights="lycoris",
                                decompose_factor=4, **SEQ_CLS)),
]


@pytest.mark.parametrize("arch, config", CASES, ids=["bert-full", "bert-decomposed", "roberta-lycoris"])
def test_peft_trained_lokr_loads_with_its_outputs_and_ours_loads_in_peft(hf_checkpoint, arch, config, tmp_path):
    directory, model = reference(hf_checkpoint, arch)
    batch = inputs(arch)
    theirs = train_in_peft(model, config, batch, tmp_path / "a")
    assert_round_trip_and_exact_merge(arch, theirs, directory, batch, tmp_path)


def test_ranks_that_change_the_factors_between_modules_are_refused(hf_checkpoint, tmp_path):
    directory, model = reference(hf_checkpoint, "bert")
    config = peft.LoKrConfig(r=2, target_modules=["query", "value"], rank_pattern={"value": 8}, **SEQ_CLS)
    peft.get_peft_model(model, config).save_pretrained(tmp_path / "a")
    ours = ARCHS["bert"].model.from_pretrained(directory)
    with pytest.raises(ValueError, match="one rank per adapter"):
        ours.load_adapter(tmp_path / "a")
    assert not ours.adapter_configs


def test_defaults_are_pefts():
    fields = ("r", "alpha", "rank_dropout", "module_dropout", "init_weights", "use_effective_conv2d",
              "decompose_both", "decompose_factor", "rank_dropout_scale")
    assert {field: getattr(LoKrConfig(), field) for field in fields} == \
        {field: getattr(peft.LoKrConfig(), field) for field in fields}


@pytest.mark.parametrize("fields, message", [
    (dict(decompose_factor=0), "decompose_factor"),
    (dict(init_weights="gaussian"), "init_weights"),
    (dict(use_effective_conv2d=True), "convolutions"),
])
def test_bad_options_are_refused_naming_them(fields, message):
    with pytest.raises(ValueError, match=message):
        LoKrConfig(**fields)
