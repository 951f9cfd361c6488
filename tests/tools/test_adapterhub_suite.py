"""tools/adapterhub_suite.py: AdapterHub's tests see peftcore.adapters under the name ``adapters`` (its submodules
too, with placeholders that fail when used for what peftcore lacks) and transformers' task classes as ours. Run in a
subprocess: the swap must not leak into this test session, whose references import the real ``adapters``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = """
import sys
sys.path.insert(0, "tools")
import adapterhub_suite as suite
suite.install()
suite.swap_task_classes()
import adapters, peftcore.adapters as ours
from adapters.composition import Stack
from adapters.utils import WEIGHTS_NAME
from adapters.models.auto.adapter_model import AutoAdapterModel
from adapters import AdapterTrainer, MTLLoRAConfig
from transformers import BertForSequenceClassification
assert adapters.AutoAdapterModel is ours.AutoAdapterModel is AutoAdapterModel and Stack is ours.Stack
assert WEIGHTS_NAME == "pytorch_adapter.bin" and adapters.__version__ == ours.__version__
assert BertForSequenceClassification is ours.BertForSequenceClassification
assert MTLLoRAConfig is ours.MTLLoRAConfig  # issue 19's methods are ours now
trainer = AdapterTrainer(model=None)
try:
    trainer.train()
except NotImplementedError as error:
    assert "peftcore.training.Trainer" in str(error)
else:
    raise AssertionError("a placeholder answered")
print("ok")
"""


def test_adapters_resolves_to_peftcore_adapters_with_failing_placeholders_for_what_is_missing():
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
