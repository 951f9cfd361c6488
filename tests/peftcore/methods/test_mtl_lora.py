"""MTL-LoRA, the MultiTask block and share_parameters: AdapterHub's numbers both ways, each row through its task's
adapter, exact merge/reset, and clear errors that leave the model as it was."""

from __future__ import annotations

import warnings

import adapters
import pytest
import torch
import transformers as tf

from peftcore import BatchSplit, MultiTask, Parallel, Stack
from peftcore.models import BertConfig, BertModel, from_pretrained
from tests.archs import reference
from tests.conftest import SMALL
from tests.parity import assert_adapterhub_round_trip, assert_parity, padded_batch

TASKS = ("a", "b", "c")
MTL = "mtl_lora[n_up_projection=3, init_weights='bert', intermediate_lora=True, output_lora=True]"


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("config", ["mtl_lora", MTL, "mtl_lora[use_gating=True, r=4, alpha=16]"])
def test_adapter_trained_by_adapterhub_gives_its_outputs_both_ways(adapterhub_trained, arch, config, tmp_path):
    assert_adapterhub_round_trip(*adapterhub_trained(arch, config), tmp_path)


def train_task_set_in_adapterhub(model, ids, mask, task_ids):
    """AdapterHub's multi-task training: adapters a, b, c sharing A and B, 3 AdamW steps on a batch of mixed
    tasks, each adapter then saved."""
    adapters.init(model)
    for task in TASKS:
        model.add_adapter(task, config=adapters.AdapterConfig.load(MTL))
    model.share_parameters(adapter_names=adapters.MultiTask(*TASKS), name="shared")
    model.train_adapter(adapters.MultiTask(*TASKS))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(input_ids=ids, attention_mask=mask, task_ids=task_ids).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_task_set_trained_by_adapterhub_gives_its_outputs_on_a_mixed_batch_both_ways(hf_checkpoint, arch, tmp_path):
    directory, _ = reference(hf_checkpoint, arch)
    ids, mask = padded_batch(SMALL["vocab_size"], 1, lengths=(12, 7, 3, 9, 5))
    task_ids = torch.tensor([2, 0, 1, 0, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = train_task_set_in_adapterhub(tf.AutoModel.from_pretrained(directory), ids, mask, task_ids)
        for task in TASKS:
            theirs.save_adapter(str(tmp_path / task), task)
        with torch.no_grad():
            expected = theirs(input_ids=ids, attention_mask=mask, task_ids=task_ids).last_hidden_state
    ours = from_pretrained(directory).eval()
    for task in TASKS:
        ours.load_adapter(tmp_path / task)
    ours.share_parameters(MultiTask(*TASKS), name="shared")
    ours.set_active_adapters(MultiTask(*TASKS))
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask, task_ids=task_ids).last_hidden_state
        assert_parity(got, expected, mask=mask)
        by_name = ours(input_ids=ids, attention_mask=mask, task_ids=[TASKS[i] for i in task_ids]).last_hidden_state
        assert_parity(by_name, got, atol=0)
    their_rows, our_rows = theirs.adapter_summary(as_dict=True), ours.adapter_summary(as_dict=True)
    assert [row["#param"] for row in our_rows[:-1]] == [row["#param"] for row in their_rows[:-1]]
    # the full model's row: AdapterHub subtracts the shared A and B once per adapter that shares them
    shared = sum(p.numel() for site in ours.sites_found if hasattr(site.module, "shared_parameters")
                 for p in site.module.shared_parameters.parameters())
    assert our_rows[-1]["#param"] == ours.base_parameter_count() == their_rows[-1]["#param"] + 2 * shared

    again = tf.AutoModel.from_pretrained(directory).eval()
    adapters.init(again)
    for task in TASKS:
        ours.save_adapter(tmp_path / "back" / task, task, format="adapterhub")
        again.load_adapter(str(tmp_path / "back" / task))
    again.share_parameters(adapter_names=adapters.MultiTask(*TASKS), name="shared")
    again.set_active_adapters(adapters.MultiTask(*TASKS))
    with torch.no_grad():
        assert_parity(again(input_ids=ids, attention_mask=mask, task_ids=task_ids).last_hidden_state, got, mask=mask)


def tiny_with_tasks(config: str = MTL, unpad: bool = True) -> BertModel:
    torch.manual_seed(0)
    model = BertModel(BertConfig(**SMALL)).eval()
    model.unpad = unpad
    for task in (*TASKS, "x"):
        model.add_adapter(task, config)
    return model


@pytest.mark.parametrize("setup, alone", [
    (MultiTask(*TASKS), TASKS),
    (Stack("x", MultiTask(*TASKS)), [Stack("x", task) for task in TASKS]),
    (MultiTask("a", Stack("x", "b"), "c"), ["a", Stack("x", "b"), "c"]),
])
def test_each_row_runs_its_tasks_adapter_exactly_as_alone(setup, alone):
    model = tiny_with_tasks()
    ids, mask = padded_batch(SMALL["vocab_size"], 0, lengths=(12, 7, 3, 9))
    task_ids = torch.tensor([1, 2, 1, 0])
    model.set_active_adapters(setup)
    with torch.no_grad():
        together = model(input_ids=ids, attention_mask=mask, task_ids=task_ids).last_hidden_state
        for row, task in enumerate(task_ids.tolist()):
            model.set_active_adapters(alone[task])
            rows = slice(row, row + 1)
            assert_parity(together[rows], model(input_ids=ids[rows], attention_mask=mask[rows]).last_hidden_state,
                          mask=mask[rows])


def test_an_adapter_runs_unpadded_with_the_padded_outputs():
    ids, mask = padded_batch(SMALL["vocab_size"], 0)
    outputs = []
    for unpad in (True, False):
        model = tiny_with_tasks(unpad=unpad)
        model.set_active_adapters("a")
        assert model.plan.token_wise
        with torch.no_grad():
            outputs.append(model(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert_parity(*outputs, mask=mask)


def test_shared_tasks_train_one_set_of_a_and_b_and_their_own_task_matrices():
    model = tiny_with_tasks()
    model.share_parameters(MultiTask(*TASKS), name="shared", reference_adapter_name="b")
    q = model.layers[0].attn.q
    assert q.adapters["a"].lora_A is q.adapters["c"].lora_A is q.shared_parameters["shared"]["lora_A"]
    assert q.adapters["a"].task_specific.values is not q.adapters["b"].task_specific.values
    model.train_adapter(MultiTask(*TASKS))
    ids, mask = padded_batch(SMALL["vocab_size"], 0)
    model(input_ids=ids, attention_mask=mask, task_ids=[0, 1, 2]).last_hidden_state.sum().backward()
    assert q.shared_parameters["shared"]["lora_A"].grad is not None
    assert not q.adapters["x"].lora_A.requires_grad


def test_unsharing_gives_each_adapter_its_own_copy_where_adapterhub_keeps_them_tied(hf_checkpoint):
    directory, _ = reference(hf_checkpoint, "bert")
    theirs = tf.BertModel.from_pretrained(directory)
    adapters.init(theirs)
    for task in TASKS:
        theirs.add_adapter(task, config=adapters.MTLLoRAConfig())
    theirs.share_parameters(adapter_names=adapters.MultiTask(*TASKS))
    theirs.unshare_parameters(adapter_names=adapters.MultiTask(*TASKS))
    their_q = theirs.encoder.layer[0].attention.self.query
    assert their_q.loras["a"].lora_A is their_q.loras["b"].lora_A  # AdapterHub: still one tensor after unsharing

    model = tiny_with_tasks()
    model.share_parameters(MultiTask(*TASKS))
    model.unshare_parameters(MultiTask(*TASKS))
    q = model.layers[0].attn.q
    assert q.adapters["a"].lora_A is not q.adapters["b"].lora_A
    assert torch.equal(q.adapters["a"].lora_A, q.adapters["b"].lora_A)
    assert len(q.shared_parameters) == 0


def test_adapterhubs_full_task_matrix_cannot_be_built_and_ours_is_linear_and_merges_exactly():
    with pytest.raises(AttributeError, match="Module.__init__"):
        adapters.methods.lora.TaskSpecificLinear(4)
    model = tiny_with_tasks("mtl_lora[task_specific_matrix_type='linear', n_up_projection=2, init_weights='bert']")
    with torch.no_grad():
        for parameter in model.adapter_parameters("a"):
            parameter.add_(torch.randn_like(parameter) * 0.1)
    assert model.layers[0].attn.q.adapters["a"].task_specific.values.shape == (8, 8)
    model.set_active_adapters("a")
    base = {key: tensor.clone() for key, tensor in model.base_state_dict().items()}
    ids, mask = padded_batch(SMALL["vocab_size"], 0)
    with torch.no_grad():
        unmerged = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.merge_adapter("a")
        assert_parity(model(input_ids=ids, attention_mask=mask).last_hidden_state, unmerged, mask=mask)
        model.reset_adapter("a")
    assert all(torch.equal(model.base_state_dict()[key], tensor) for key, tensor in base.items())


def test_a_merged_task_adapter_is_refused_in_a_multitask_setup():
    model = tiny_with_tasks()
    model.merge_adapter("a")
    with pytest.raises(ValueError, match="merged into the weights"):
        model.set_active_adapters(MultiTask(*TASKS))


@pytest.mark.parametrize("task_ids, error", [
    (torch.tensor([0, 1, 3]), "out of range"),
    (torch.tensor([0, -1, 2]), "out of range"),
    (torch.tensor([0.0, 1.0, 2.0]), "integer"),
    (torch.tensor([0, 1]), "shape"),
    (torch.tensor([[0, 1, 2]]), "shape"),
    (["a", "z", "b"], "does not hold"),
    ("abc", "must be a tensor"),
    (None, "needs each example's task"),
])
def test_bad_task_ids_are_refused_before_anything_runs(task_ids, error):
    model = tiny_with_tasks()
    model.set_active_adapters(MultiTask(*TASKS))
    ids, mask = padded_batch(SMALL["vocab_size"], 0)
    with pytest.raises((ValueError, TypeError), match=error):
        model(input_ids=ids, attention_mask=mask, task_ids=task_ids)
    assert model.active_adapters == MultiTask(*TASKS)


@pytest.mark.parametrize("setup", [Parallel("x", MultiTask("a", "b")), BatchSplit(MultiTask("a", "b"), "x",
                                                                                    batch_sizes=1),
                                   MultiTask(MultiTask("a", "b"), "c"), MultiTask(Parallel("a", "b"), "c"),
                                   Stack("x", MultiTask("a", Stack("b", MultiTask("c", "x"))))])
def test_multitask_nests_only_where_adapterhub_allows(setup):
    model = tiny_with_tasks()
    with pytest.raises(ValueError, match="cannot be nested|too deeply"):
        model.set_active_adapters(setup)
    assert model.active_adapters is None


def test_sharing_is_validated_first_and_refuses_what_adapterhub_refuses():
    model = tiny_with_tasks()
    model.add_adapter("plain", "lora")
    state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    with pytest.raises(TypeError, match="MultiTaskConfig"):
        model.share_parameters(["a", "b", "plain"])
    with pytest.raises(ValueError, match="reference adapter"):
        model.share_parameters(["a", "b"], reference_adapter_name="c")
    with pytest.raises(ValueError, match="No configuration"):
        model.share_parameters(["a", "nope"])
    with pytest.raises(ValueError, match="at least one"):
        model.share_parameters([])
    assert model.state_dict().keys() == state.keys()
    assert all(len(site.module.shared_parameters) == 0 for site in model.sites_found if hasattr(site.module,
                                                                                                 "shared_parameters"))
    model.share_parameters(["a", "b"])
    for replace in (lambda: model.delete_adapter("a"), lambda: model.add_adapter("a", MTL, overwrite_ok=True),
                    lambda: model.average_adapter("a", ["c", "x"], overwrite_ok=True)):
        with pytest.raises(ValueError, match="unshare_parameters first"):
            replace()
    with pytest.raises(ValueError, match="exists"):
        model.share_parameters(["c", "x"], name="a,b")
    with pytest.raises(ValueError, match="no sharing group"):
        model.unshare_parameters(["a", "c"])


def test_adapterhubs_merge_breaks_the_weight_and_ours_equals_the_unmerged_forward(adapterhub_trained, tmp_path):
    directory, theirs, ids, mask = adapterhub_trained("bert", MTL)
    ours = from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        unmerged = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        ours.merge_adapter("a")
        assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state, unmerged, mask=mask)
        theirs.merge_adapter("a")  # AdapterHub folds the (n, out, r) up-projections in as they are
        assert theirs.encoder.layer[0].attention.self.query.weight.dim() == 3
        with pytest.raises(RuntimeError, match="2 dimensions"):
            theirs(input_ids=ids, attention_mask=mask)


def test_a_multitask_setup_saves_and_loads_in_adapterhubs_setup_files_both_ways(hf_checkpoint, tmp_path):
    directory, _ = reference(hf_checkpoint, "bert")
    ours = from_pretrained(directory)
    for task in TASKS:
        ours.add_adapter(task, "mtl_lora")
    ours.save_adapter_setup(tmp_path / "ours", MultiTask(*TASKS), format="adapterhub")
    theirs = tf.BertModel.from_pretrained(directory)
    adapters.init(theirs)
    assert theirs.load_adapter_setup(str(tmp_path / "ours"), set_active=True)[0] == adapters.MultiTask(*TASKS)
    theirs.save_adapter_setup(str(tmp_path / "theirs"), adapters.MultiTask(*TASKS))
    again = from_pretrained(directory)
    assert again.load_adapter_setup(tmp_path / "theirs", set_active=True)[0] == MultiTask(*TASKS)
    assert again.active_adapters == MultiTask(*TASKS)
