"""Checkpoints: atomic writes, keep-last, exact resumption (mid-epoch and across an epoch
boundary), refusal to overwrite a previous run, and rebuilding the generator."""

import json
import os
import random

import numpy as np
import pytest
import torch
from tiny_data import NUM_CLASSES, TinyPairs, tiny_config

from asapnet_triton import ASAPNetGenerator
from asapnet_triton.checkpoints import load_model
from asapnet_triton.training import (
    Trainer,
    atomic_write,
    list_checkpoints,
    load_checkpoint,
    load_generator,
    prune_checkpoints,
    save_checkpoint,
)


def _leftovers(folder):
    return [name for name in os.listdir(folder) if name.startswith(".tmp-")]


def test_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch, generator):
    path = tmp_path / "checkpoints" / "step_00000001.pt"
    save_checkpoint({"weights": torch.randn(64, generator=generator)}, path)
    before = path.read_bytes()

    def failing_save(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"weights": torch.randn(64, generator=generator)}, path)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"weights": torch.randn(64, generator=generator)}, path.with_name("step_00000002.pt"))
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["step_00000001.pt"] and not _leftovers(path.parent)


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write(target, lambda f: f.write(b"first"))
    atomic_write(target, lambda f: f.write(b"second"))
    assert target.read_bytes() == b"second" and not _leftovers(tmp_path)


def test_keep_last(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "run", checkpoint_every=1, keep_last=2, max_steps=4)
    Trainer(config, tiny_dataset).fit()
    assert [step for step, _ in list_checkpoints(config.out_dir)] == [3, 4]
    assert not _leftovers(tmp_path / "run" / "checkpoints")
    removed = prune_checkpoints(config.out_dir, 1)
    assert [p.name for p in removed] == ["step_00000003.pt"]


def _final_state(trainer):
    return {
        **{f"G.{k}": v for k, v in trainer.generator.state_dict().items()},
        **{f"D.{k}": v for k, v in trainer.discriminator.state_dict().items()},
    }


def _optimizer_tensors(trainer):
    return [
        t
        for opt in (trainer.optimizer_g, trainer.optimizer_d)
        for state in opt.state_dict()["state"].values()
        for t in state.values()
        if torch.is_tensor(t)
    ]


@pytest.mark.parametrize("stop_at", [2, 3])  # mid-epoch, and right at an epoch boundary
def test_resume_continues_bit_for_bit(tmp_path, stop_at):
    # 3 steps per epoch (6 samples, batch 2): the resumed part crosses epochs and learning-rate changes
    total = 7
    straight = Trainer(tiny_config(tmp_path / "straight", max_steps=total), TinyPairs(6, global_noise=True))
    straight_history = straight.fit()
    straight_rng = torch.get_rng_state()

    first = Trainer(tiny_config(tmp_path / "split", max_steps=stop_at), TinyPairs(6, global_noise=True))
    first.fit()
    torch.manual_seed(999)  # whatever happens in between must not matter
    np.random.seed(999)
    random.seed(999)
    resumed = Trainer(
        tiny_config(tmp_path / "split", max_steps=total, resume="latest"), TinyPairs(6, global_noise=True)
    )
    assert resumed.step == stop_at
    resumed_history = resumed.fit()

    a, b = _final_state(straight), _final_state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert all(torch.equal(x, y) for x, y in zip(_optimizer_tensors(straight), _optimizer_tensors(resumed)))
    assert torch.equal(torch.get_rng_state(), straight_rng)
    keys = ("G_GAN", "G_feat", "D_fake", "D_real", "lr_G", "lr_D", "epoch")
    assert [[r[k] for k in keys] for r in straight_history[stop_at:]] == [[r[k] for k in keys] for r in resumed_history]
    logged = [json.loads(line)["step"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, total + 1))


def test_log_steps_after_the_last_checkpoint_are_not_duplicated(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    Trainer(tiny_config(out, max_steps=2), tiny_dataset).fit()
    with open(out / "log.jsonl", "a") as log:  # a crash after step 2's checkpoint had logged step 3
        log.write(json.dumps({"step": 3, "G_GAN": 0.0}) + "\n")
    Trainer(tiny_config(out, max_steps=4, resume="latest"), tiny_dataset).fit()
    logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


def test_refuses_a_non_empty_out_dir_without_resume(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("a previous run")
    with pytest.raises(FileExistsError, match=r"not empty.*--resume latest"):
        Trainer(tiny_config(out), tiny_dataset)
    assert (out / "precious.txt").read_text() == "a previous run" and sorted(os.listdir(out)) == ["precious.txt"]


def test_resume_errors(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(tiny_config(out, resume="latest"), tiny_dataset)
    Trainer(tiny_config(out, max_steps=1), tiny_dataset).fit()
    with pytest.raises(ValueError, match=r"hidden_width: checkpoint 16, now 32"):
        Trainer(tiny_config(out, resume="latest", hidden_width=32), tiny_dataset)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Trainer(tiny_config(out, resume=str(out / "missing.pt")), tiny_dataset)
    # run-control fields may change
    Trainer(tiny_config(out, resume="latest", max_steps=2, keep_last=1), tiny_dataset).fit()
    assert [step for step, _ in list_checkpoints(out)] == [2]


def test_checkpoint_contents_and_load_generator(tmp_path, tiny_dataset, generator):
    trainer = Trainer(tiny_config(tmp_path / "run", max_steps=2), tiny_dataset)
    trainer.fit()
    (path,) = [p for _, p in list_checkpoints(tmp_path / "run")]
    state = load_checkpoint(path)
    for key in (
        "generator",
        "discriminator",
        "optimizer_g",
        "optimizer_d",
        "scheduler_g",
        "scheduler_d",
        "step",
        "epoch",
        "batch_in_epoch",
        "rng",
        "config",
        "data_order",
        "model",
    ):
        assert key in state
    # the checkpoint records how to rebuild the generator and which label convention feeds it
    assert state["model"]["labels"] == trainer.label_convention.to_dict()
    model = load_model(path)
    assert model.labels == trainer.label_convention and model.card["step"] == 2
    assert set(state["rng"]) == {"torch", "numpy", "python", "cuda"}
    loaded = load_generator(path)
    assert isinstance(loaded, ASAPNetGenerator) and not loaded.training
    labels = torch.randint(0, NUM_CLASSES, (1, 32, 48), generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(loaded(labels), trainer.generator(labels), rtol=0, atol=0)
    not_a_checkpoint = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, not_a_checkpoint)
    with pytest.raises(ValueError, match="other.pt.*not an asapnet-triton model file .* or training checkpoint"):
        load_generator(not_a_checkpoint)


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "run", niter=1000, niter_decay=0, time_budget_s=1.0)
    trainer = Trainer(config, tiny_dataset)
    history = trainer.fit()
    assert 1 <= len(history) < trainer.final_step
    assert [step for step, _ in list_checkpoints(config.out_dir)] == [history[-1]["step"]]
    assert (tmp_path / "run" / "samples" / f"step_{history[-1]['step']:08d}.png").is_file()
