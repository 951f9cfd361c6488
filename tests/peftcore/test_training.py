"""The training loop: learns, trains only the adapter, accumulates exactly, resumes exactly, and trains the same
under 2-process DistributedDataParallel as in one process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from peftcore import training
from peftcore.models import BertConfig, BertModel
from peftcore.training import Trainer, TrainingConfig, accuracy, collate

TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def toy_data(n: int = 64, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Label 1 when the sequence starts with token 7: a task a tiny model with an adapter learns in a few dozen
    steps."""
    generator = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n):
        ids = torch.randint(8, 40, (3 + i % 5,), generator=generator)
        if i % 2:
            ids[0] = 7
        data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor(i % 2)})
    return data


def fresh_model(config: str = "lora[r=4, alpha=8]") -> BertModel:
    torch.manual_seed(0)
    model = BertModel(BertConfig(**TINY))
    model.add_adapter("a", config)
    model.add_classification_head("a", num_labels=2)
    return model


def adapter_weights(model: BertModel) -> dict[str, torch.Tensor]:
    return {key: t.clone() for key, t in model.adapter_state("a").items()} | \
        {f"head.{key}": t.clone() for key, t in model.heads["a"].state_dict().items()}


def test_the_adapter_learns_and_the_base_model_stays_bit_identical():
    model = fresh_model("seq_bn[reduction_factor=2]")
    base = {name: p.clone() for name, p in model.named_parameters() if ".adapters." not in name
            and not name.startswith("heads.")}
    data = toy_data(128)
    before = accuracy(model.eval(), data)
    result = Trainer(model, "a", TrainingConfig(epochs=8, batch_size=16, learning_rate=1e-2), data,
                     progress=False).fit()
    assert result.losses[-1] < result.losses[0] and accuracy(model, data) > max(before, 0.9)
    assert all(torch.equal(p, base[name]) for name, p in model.named_parameters() if name in base)


def test_gradient_accumulation_equals_the_full_batch():
    trained = []
    for accumulation in (1, 4):
        model = fresh_model()
        config = TrainingConfig(epochs=1, batch_size=16, gradient_accumulation=accumulation, learning_rate=1e-2)
        Trainer(model, "a", config, toy_data(), progress=False).fit()
        trained.append(adapter_weights(model))
    for key, tensor in trained[0].items():
        torch.testing.assert_close(trained[1][key], tensor, atol=1e-6, rtol=0)


def test_gradient_checkpointing_trains_the_same_adapter():
    trained = []
    for checkpointing in (False, True):
        model = fresh_model("prefix_tuning[prefix_length=4]")
        config = TrainingConfig(epochs=1, batch_size=16, learning_rate=1e-2, gradient_checkpointing=checkpointing)
        Trainer(model, "a", config, toy_data(), progress=False).fit()
        assert model.is_gradient_checkpointing == checkpointing
        trained.append(adapter_weights(model))
    for key, tensor in trained[0].items():
        torch.testing.assert_close(trained[1][key], tensor, atol=1e-6, rtol=0)


@pytest.mark.parametrize("retain", [True, False])
def test_training_on_cpu_retains_freed_memory_unless_told_not_to(retain, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "retain_freed_memory", lambda: calls.append("retain"))
    config = TrainingConfig(epochs=1, batch_size=16, retain_cpu_memory=retain)
    Trainer(fresh_model(), "a", config, toy_data(), progress=False).fit()
    assert calls == (["retain"] if retain else [])


def test_training_resumes_after_an_interruption_with_the_same_result(tmp_path):
    config = TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-2, checkpoint_every=1, eval_every=1,
                            checkpoint_dir=str(tmp_path / "run"))
    straight = fresh_model()
    Trainer(straight, "a", TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-2), toy_data(),
            progress=False).fit()

    def crash_at_step_5(model):
        if trainer.step == 5:
            raise KeyboardInterrupt
        return {}

    interrupted = fresh_model()
    trainer = Trainer(interrupted, "a", config, toy_data(), evaluate=crash_at_step_5, progress=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    resumed = fresh_model()
    trainer = Trainer(resumed, "a", config, toy_data(), progress=False)
    assert trainer.fit().steps == 8
    expected = adapter_weights(straight)
    for key, tensor in adapter_weights(resumed).items():
        torch.testing.assert_close(tensor, expected[key], atol=1e-6, rtol=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_distributed(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = fresh_model()
    Trainer(model, "a", TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-2), toy_data(), progress=False).fit()
    if rank == 0:
        torch.save(adapter_weights(model), out)
    shut_down()


def shut_down() -> None:
    """Both ranks finish every collective before either tears the group down: gloo aborts a process (a C++
    terminate, no Python error) whose peer left while work of its own was still pending."""
    dist.barrier()
    dist.destroy_process_group()


def test_two_process_ddp_trains_the_same_adapter_as_one_process(tmp_path):
    single = fresh_model()
    Trainer(single, "a", TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-2), toy_data(),
            progress=False).fit()
    mp.spawn(train_distributed, args=(2, free_port(), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for key, tensor in adapter_weights(single).items():
        torch.testing.assert_close(distributed[key], tensor, atol=1e-5, rtol=0)


def train_sharded(rank: int, world: int, port: int, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = fresh_model()
    model.train_adapter("a")  # FSDP2 takes requires_grad as set before sharding
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    Trainer(model, "a", TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-2), toy_data(), progress=False).fit()
    weights = {key: t.full_tensor() if hasattr(t, "full_tensor") else t for key, t in adapter_weights(model).items()}
    if rank == 0:
        torch.save(weights, out)
    shut_down()


def test_two_process_fsdp_on_cpu_trains_the_same_adapter_as_one_process(tmp_path):
    single = fresh_model()
    Trainer(single, "a", TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-2), toy_data(),
            progress=False).fit()
    mp.spawn(train_sharded, args=(2, free_port(), str(tmp_path / "fsdp.pt")), nprocs=2, join=True)
    sharded = torch.load(tmp_path / "fsdp.pt", weights_only=True)
    for key, tensor in adapter_weights(single).items():
        torch.testing.assert_close(sharded[key], tensor, atol=1e-5, rtol=0)


def test_adapter_drop_skips_a_random_run_of_first_layers_per_step_and_ends_with_every_layer(monkeypatch):
    def skips_while_fitting() -> tuple[BertModel, list[list[int]]]:
        """The layers skipped at each activation during fit: 8 steps, evaluation, 8 steps, evaluation, the end."""
        model = fresh_model("seq_bn[reduction_factor=2]")
        config = TrainingConfig(epochs=2, batch_size=4, learning_rate=1e-2, adapter_drop=True)
        trainer = Trainer(model, "a", config, toy_data(32), progress=False)
        skips, activate = [], model.set_active_adapters

        def recording(setup, skip_layers=None):
            skips.append(list(skip_layers))
            activate(setup, skip_layers)

        monkeypatch.setattr(model, "set_active_adapters", recording)
        trainer.fit()
        return model, skips

    model, skips = skips_while_fitting()
    steps = skips[:8] + skips[9:17]
    assert len(skips) == 19 and skips[8] == skips[17] == skips[18] == []  # evaluations and the end: every layer
    assert all(layers == list(range(len(layers))) for layers in steps)  # always a run of first layers
    assert {len(layers) for layers in steps} == {0, 1}  # k drawn from 0 .. layers - 1 (TINY has 2 layers)
    assert not model.plan.skip_layers
    assert skips_while_fitting()[1] == skips  # drawn by the seed and the step: a rerun (or resume) draws the same


def test_batch_size_that_does_not_split_over_accumulation_is_refused():
    with pytest.raises(ValueError, match="divide evenly"):
        Trainer(fresh_model(), "a", TrainingConfig(batch_size=10, gradient_accumulation=4), toy_data(),
                progress=False)


def test_collate_pads_to_the_longest_example():
    batch = collate(toy_data(3), pad_values={"input_ids": 0})
    assert batch["input_ids"].shape == (3, 5) and batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]


def test_evaluations_are_shown_as_training_goes(capsys):
    """Issue 16 item 2: each evaluation's line comes when it is made, between the progress lines, not after fit."""
    config = TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-2, eval_every=2)
    Trainer(fresh_model(), "a", config, toy_data(), evaluate=lambda m: {"validation accuracy": 0.5}).fit()
    lines = capsys.readouterr().err.splitlines()
    assert lines.index("step 2/8  validation accuracy 0.5000") == lines.index(next(
        line for line in lines if line.startswith("step 2/8  loss"))) + 1
    assert lines.index("step 2/8  validation accuracy 0.5000") < lines.index(next(
        line for line in lines if line.startswith("step 3/8  loss")))


def test_rerunning_a_finished_run_reports_it_and_returns_its_history(tmp_path, capsys):
    """Issue 16 item 6: the rerun of a finished run used to train nothing and return no evaluations, so
    ``result.evaluations[-1]`` raised IndexError."""
    config = TrainingConfig(epochs=2, batch_size=16, learning_rate=1e-2, checkpoint_dir=str(tmp_path / "run"))
    first = Trainer(fresh_model(), "a", config, toy_data(), evaluate=lambda m: {"accuracy": accuracy(m, toy_data())},
                    progress=False).fit()
    trained = fresh_model()
    again = Trainer(trained, "a", config, toy_data(), evaluate=lambda m: {"accuracy": 0.0}).fit()
    assert again.was_finished and not first.was_finished and again.steps == first.steps == 8
    assert again.evaluations == first.evaluations and again.losses == first.losses
    assert again.evaluations[-1]["accuracy"] == accuracy(trained, toy_data())  # the trained weights came back
    assert f"step 8/8  the checkpoint in {tmp_path / 'run'} is a finished run: nothing to train" in \
        capsys.readouterr().err


@pytest.mark.parametrize(("change", "message"), [
    ({"adapter": "lora[r=2, alpha=8]"}, "adapter config: r: 4 then, 2 now"),
    ({"adapter": "seq_bn"}, "adapter config: a lora adapter then, a bottleneck adapter now"),
    ({"data": toy_data(48)}, "training data: 64 examples then, 48 now"),
    ({"data": toy_data(64, seed=1)}, "training data: 64 examples then and now, but other ones"),
    ({"config": {"learning_rate": 5e-3, "epochs": 3}}, "training settings: epochs: 2 then, 3 now; learning_rate: "
                                                       "0.01 then, 0.005 now"),
    ({"labels": 3}, "head config: num_labels: 2 then, 3 now"),
])
def test_resuming_another_runs_checkpoint_is_refused_naming_the_difference(tmp_path, change, message):
    """Issue 16 item 6: it used to fail with a raw tensor-size RuntimeError (or resume silently on other data)."""
    settings = dict(epochs=2, batch_size=16, learning_rate=1e-2, checkpoint_every=3, checkpoint_dir=str(tmp_path))
    Trainer(fresh_model(), "a", TrainingConfig(**settings), toy_data(), progress=False).fit()
    model = fresh_model(change.get("adapter", "lora[r=4, alpha=8]"))
    if "labels" in change:
        model.add_classification_head("a", num_labels=change["labels"], overwrite_ok=True)
    config = TrainingConfig(**(settings | change.get("config", {})))
    before = adapter_weights(model)
    with pytest.raises(ValueError, match="was made by another run") as refused:
        Trainer(model, "a", config, change.get("data", toy_data()), progress=False).fit()
    assert message in str(refused.value) and "Delete it, or choose another checkpoint_dir" in str(refused.value)
    assert all(torch.equal(t, before[key]) for key, t in adapter_weights(model).items())  # nothing was loaded


def test_how_often_to_evaluate_and_checkpoint_may_change_on_resume(tmp_path):
    settings = dict(epochs=2, batch_size=16, learning_rate=1e-2, checkpoint_every=2, checkpoint_dir=str(tmp_path))

    def crash_at_step_5(model):  # evaluations come before the checkpoint of their step: the last one is step 4's
        if trainer.step == 5:
            raise KeyboardInterrupt
        return {}

    trainer = Trainer(fresh_model(), "a", TrainingConfig(**settings, eval_every=1), toy_data(),
                      evaluate=crash_at_step_5, progress=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    result = Trainer(fresh_model(), "a", TrainingConfig(**(settings | {"checkpoint_every": 3})), toy_data(),
                     progress=False).fit()
    assert result.resumed_from == 4 and result.steps == 8 and not result.was_finished
