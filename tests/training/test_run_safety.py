"""Nothing of a run is lost or overwritten: lineage-aware pruning (a resumed older checkpoint
starts a branch whose checkpoints survive, other branches are kept), checkpoints without a
lineage record (an older version's) still resume bit for bit, resuming another run's checkpoint
into a folder holding a run is refused, a diverged run stops and keeps its last finite
checkpoint, killed writes' temporary files are cleaned, a corrupt latest checkpoint names the
newest readable one, the loss plot of d_steps_per_g > 1 and the time-budget progress bar."""

import json
import math
import os
import re
import time

import numpy as np
import pytest
import torch
from tiny_data import TinyPairs, tiny_config

from asapnet_triton.cli import main
from asapnet_triton.fileio import locked, remove_stale_temp_files
from asapnet_triton.training import Trainer, latest_checkpoint, list_checkpoints, load_checkpoint
from asapnet_triton.training import trainer as trainer_module
from asapnet_triton.training.trainer import TrainingDiverged
from asapnet_triton.training.visuals import loss_curves, plot_losses


def _names(out):
    return sorted(path.name for _, path in list_checkpoints(out))


def _state(trainer):
    return {
        **{f"G.{k}": v for k, v in trainer.generator.state_dict().items()},
        **{f"D.{k}": v for k, v in trainer.discriminator.state_dict().items()},
    }


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- lineage-aware pruning


def test_resuming_an_older_checkpoint_keeps_this_sessions_checkpoints_and_the_other_branch(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(out, checkpoint_every=1, keep_last=5, max_steps=5, sample_every=1), TinyPairs(6)).fit()
    assert _names(out) == [f"step_{s:08d}.pt" for s in range(1, 6)]
    originals = {name: (out / "checkpoints" / name).read_bytes() for name in _names(out)}
    samples = {path.name: path.read_bytes() for path in (out / "samples").iterdir()}
    log = (out / "log.jsonl").read_text().splitlines()

    # back to step 2 (say, before something went wrong), keeping one checkpoint
    branch = Trainer(
        tiny_config(out, resume=str(out / "checkpoints" / "step_00000002.pt"), keep_last=1, checkpoint_every=1),
        TinyPairs(6),
    )
    branch.config.max_steps = 4
    branch.fit()
    session = branch.lineage.session[:8]
    # the branch keeps its newest checkpoint (written beside the old branch's step 4, not over
    # it); its ancestors 1-2 and its own step 3 are pruned; the other branch's 3-5 are untouched
    assert _names(out) == sorted(
        ["step_00000003.pt", "step_00000004.pt", f"step_00000004-{session}.pt", "step_00000005.pt"]
    )
    for name in ("step_00000003.pt", "step_00000004.pt", "step_00000005.pt"):
        assert (out / "checkpoints" / name).read_bytes() == originals[name]
    # so are its sample grids and log records (the log holds this branch's steps)
    assert all((out / "samples" / name).read_bytes() == data for name, data in samples.items())
    assert sorted(p.name for p in (out / "samples").iterdir()) == sorted([*samples, f"step_00000004-{session}.png"])
    assert (out / f"log.other-branch-{session}.jsonl").read_text().splitlines() == log[2:]
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert (out / "log.jsonl").read_text().splitlines()[:2] == log[:2]
    newest = out / "checkpoints" / f"step_00000004-{session}.pt"
    assert latest_checkpoint(out) == newest
    assert _same_state(
        {f"G.{k}": v for k, v in load_checkpoint(newest)["generator"].items()},
        {f"G.{k}": v for k, v in branch.generator.state_dict().items()},
    )
    # --resume latest continues the branch trained last
    again = Trainer(tiny_config(out, resume="latest", keep_last=1, max_steps=6), TinyPairs(6))
    assert again.step == 4 and again.last_checkpoint == newest
    again.fit()
    assert _names(out) == ["step_00000003.pt", "step_00000004.pt", "step_00000005.pt", "step_00000006.pt"]


def _write_without_lineage(monkeypatch):
    """Make the trainer write checkpoints as the version before lineages did."""
    original = Trainer.state_dict

    def state_dict(self):
        state = original(self)
        del state["lineage"], state["saved_at"]
        return state

    monkeypatch.setattr(Trainer, "state_dict", state_dict)
    return original


def test_checkpoints_without_a_lineage_record_resume_bit_for_bit_and_prune(tmp_path, monkeypatch):
    straight = Trainer(tiny_config(tmp_path / "straight", max_steps=5), TinyPairs(6, global_noise=True))
    straight.fit()

    out = tmp_path / "old"
    original = _write_without_lineage(monkeypatch)
    Trainer(tiny_config(out, checkpoint_every=1, max_steps=3), TinyPairs(6, global_noise=True)).fit()
    assert all("lineage" not in load_checkpoint(path) for _, path in list_checkpoints(out))
    monkeypatch.setattr(Trainer, "state_dict", original)

    resumed = Trainer(
        tiny_config(out, resume="latest", checkpoint_every=1, keep_last=2, max_steps=5),
        TinyPairs(6, global_noise=True),
    )
    assert resumed.step == 3
    resumed.fit()
    assert _same_state(_state(straight), _state(resumed))
    # the old checkpoints 1-3 are this run's ancestors: pruned to the newest two of the lineage
    assert _names(out) == ["step_00000004.pt", "step_00000005.pt"]
    assert load_checkpoint(out / "checkpoints" / "step_00000005.pt")["lineage"]["ancestors"] == [["", 3]]


def test_resuming_an_old_unrecorded_checkpoint_keeps_the_newer_unrecorded_ones(tmp_path, monkeypatch):
    out = tmp_path / "old"
    original = _write_without_lineage(monkeypatch)
    Trainer(tiny_config(out, checkpoint_every=1, keep_last=5, max_steps=4), TinyPairs(6)).fit()
    monkeypatch.setattr(Trainer, "state_dict", original)
    assert _names(out) == [f"step_{s:08d}.pt" for s in range(1, 5)]
    branch = Trainer(tiny_config(out, resume=str(out / "checkpoints" / "step_00000002.pt"), keep_last=1), TinyPairs(6))
    branch.config.max_steps = 3
    branch.fit()
    # 1 and 2 are the branch's ancestors (pruned to keep-last 1); 3 and 4 come after the step
    # resumed, so they are not: kept
    assert _names(out) == sorted(
        ["step_00000003.pt", f"step_00000003-{branch.lineage.session[:8]}.pt", "step_00000004.pt"]
    )


# ---------------------------------------------------------------- another run's folder


def test_resuming_into_a_folder_that_holds_another_run_is_refused(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    Trainer(tiny_config(first, checkpoint_every=1, max_steps=2), TinyPairs(6)).fit()
    Trainer(tiny_config(second, checkpoint_every=1, max_steps=3, seed=1), TinyPairs(6)).fit()
    before = {path: path.read_bytes() for path in second.rglob("*") if path.is_file()}
    foreign = first / "checkpoints" / "step_00000002.pt"
    with pytest.raises(FileExistsError) as error:
        Trainer(tiny_config(second, resume=str(foreign), max_steps=4), TinyPairs(6))
    message = str(error.value)
    assert str(foreign) in message and repr(str(first)) in message and repr(str(second)) in message
    assert "another run" in message
    after = {path: path.read_bytes() for path in second.rglob("*") if path.is_file()}
    assert after == before

    # the command line says so in one line, and leaves the folder alone too
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(second), "--resume", str(foreign), "--no-progress"])
    assert exit_info.value.code == 2 and re.search(
        r"asapnet train: error: --resume .*another run", capsys.readouterr().err
    )
    assert {path: path.read_bytes() for path in second.rglob("*") if path.is_file()} == before

    # allowed: into a new folder (a fork), or a copy of the run's own checkpoint back into it
    Trainer(tiny_config(tmp_path / "fork", resume=str(foreign), max_steps=3), TinyPairs(6)).fit()
    copy = tmp_path / "elsewhere" / "saved.pt"
    copy.parent.mkdir()
    copy.write_bytes(foreign.read_bytes())
    assert Trainer(tiny_config(first, resume=str(copy), max_steps=3), TinyPairs(6)).step == 2


# ---------------------------------------------------------------- divergence


class PoisonedFrom(TinyPairs):
    """Images turn NaN from epoch ``epoch`` on (3 steps per epoch with 6 samples, batch 2)."""

    def __init__(self, count, epoch):
        super().__init__(count)
        self.poison_epoch = epoch

    def __getitem__(self, index):
        item = super().__getitem__(index)
        if self.epoch >= self.poison_epoch:
            item["image"] = torch.full_like(item["image"], math.nan)
        return item


def test_a_diverged_run_stops_naming_the_step_and_keeps_the_last_finite_checkpoint(tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(out, checkpoint_every=1, keep_last=1, max_steps=6), PoisonedFrom(6, epoch=1))
    with pytest.raises(TrainingDiverged, match=r"diverged at step 4: loss D_real = nan.*step_00000003\.pt.*kept"):
        trainer.fit()
    assert _names(out) == ["step_00000003.pt"]
    state = load_checkpoint(out / "checkpoints" / "step_00000003.pt")
    assert all(torch.isfinite(v).all() for v in state["generator"].values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in state["discriminator"].values() if v.is_floating_point())
    logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]  # the diverged step is logged, nothing after it
    # and the kept checkpoint resumes
    assert Trainer(tiny_config(out, resume="latest", max_steps=3), TinyPairs(6)).step == 3


def test_resuming_a_diverged_checkpoint_names_the_newest_finite_one(tmp_path):
    # a run of an older version that kept checkpointing after diverging
    out = tmp_path / "run"
    Trainer(tiny_config(out, checkpoint_every=1, keep_last=3, max_steps=2), TinyPairs(6)).fit()
    state = load_checkpoint(out / "checkpoints" / "step_00000002.pt")
    for step in (3, 4):
        state["step"], state["batch_in_epoch"], state["epoch"] = step, step % 3, step // 3
        weight = next(v for v in state["generator"].values() if v.is_floating_point())
        weight[(0,) * weight.dim()] = math.nan
        torch.save(state, out / "checkpoints" / f"step_{step:08d}.pt")
    finite = str(out / "checkpoints" / "step_00000002.pt")
    with pytest.raises(
        ValueError,
        match=rf"step_00000004\.pt' holds NaN.*newest finite checkpoint there is '{re.escape(finite)}' \(step 2\)",
    ):
        Trainer(tiny_config(out, resume="latest", max_steps=5), TinyPairs(6))
    assert Trainer(tiny_config(out, resume=finite, max_steps=5), TinyPairs(6)).step == 2


def test_non_finite_parameters_with_finite_losses_stop_the_run(tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(out, checkpoint_every=1, keep_last=1, max_steps=5), TinyPairs(6))
    step = trainer.optimizer_d.step

    def poisoning_step(*args, **kwargs):
        result = step(*args, **kwargs)
        if trainer.step == 1:  # the update of step 2 (counted after it)
            next(trainer.discriminator.parameters()).data.view(-1)[3] = math.inf
        return result

    trainer.optimizer_d.step = poisoning_step
    with pytest.raises(TrainingDiverged, match=r"step 2: discriminator parameters not finite.*step_00000001\.pt"):
        trainer.fit()
    assert _names(out) == ["step_00000001.pt"]


def test_a_diverged_cli_run_exits_1_with_one_line(tmp_path, capsys):
    from test_command import TINY_FLAGS

    out = tmp_path / "run"
    status = main(["train", *TINY_FLAGS, "--out", str(out), "--lr", "1e38", "--checkpoint-every", "1"])
    err = capsys.readouterr().err
    assert status == 1
    (line,) = [line for line in err.splitlines() if "diverged" in line]
    assert re.match(r"asapnet train: training diverged at step \d+: ", line)
    for _, path in list_checkpoints(out):
        state = load_checkpoint(path)
        assert all(torch.isfinite(v).all() for v in state["generator"].values() if v.is_floating_point())


# ---------------------------------------------------------------- leftovers and corrupt files


def _age(path, seconds):
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_remove_stale_temp_files_only_removes_old_files_of_our_pattern(tmp_path):
    old_ours = tmp_path / ".tmp-k3x_9qz1.part"
    fresh_ours = tmp_path / ".tmp-a1b2c3d4.part"
    lookalikes = [tmp_path / n for n in (".tmp-a1b2c3d4.txt", "x.tmp-a1b2c3d4.part", ".tmp-A1B2C3D4.part", "a.part")]
    for path in [old_ours, fresh_ours, *lookalikes]:
        path.write_bytes(b"partial")
        _age(path, 3600)
    _age(fresh_ours, 10)
    folder_named_like_ours = tmp_path / ".tmp-zzzzzzzz.part"
    folder_named_like_ours.mkdir()
    _age(folder_named_like_ours, 3600)
    assert remove_stale_temp_files(tmp_path, older_than_s=600) == [old_ours]
    assert not old_ours.exists() and fresh_ours.exists() and folder_named_like_ours.is_dir()
    assert all(path.exists() for path in lookalikes)
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_resume_removes_stale_temp_files_of_killed_writes(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(tiny_config(out, max_steps=1), TinyPairs(6)).fit()
    stale = [out / "checkpoints" / ".tmp-dead0001.part", out / ".tmp-dead0002.part"]
    live = out / "checkpoints" / ".tmp-live0001.part"
    for path in [*stale, live]:
        path.write_bytes(b"half a checkpoint")
    for path in stale:
        _age(path, 2 * 3600)
    Trainer(tiny_config(out, resume="latest", max_steps=2), TinyPairs(6)).fit()
    assert not any(path.exists() for path in stale) and live.exists()
    assert "removed 2 temporary file(s)" in capsys.readouterr().err


def test_a_corrupt_latest_checkpoint_names_the_newest_readable_one(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(tiny_config(out, checkpoint_every=1, keep_last=3, max_steps=3), TinyPairs(6)).fit()
    latest = out / "checkpoints" / "step_00000003.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated
    readable = str(out / "checkpoints" / "step_00000002.pt")
    expected = (
        rf"step_00000003\.pt.*cannot be read.*newest readable checkpoint .* is '{re.escape(readable)}' \(step 2\)"
    )
    with pytest.raises(ValueError, match=expected):
        Trainer(tiny_config(out, resume="latest", max_steps=4), TinyPairs(6))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(out), "--resume", "latest", "--no-progress"])
    assert exit_info.value.code == 2 and re.search(rf"asapnet train: error: .*{expected}", capsys.readouterr().err)
    # the way on works
    assert Trainer(tiny_config(out, resume=readable, max_steps=3), TinyPairs(6)).step == 2
    for name in ("step_00000001.pt", "step_00000002.pt"):
        (out / "checkpoints" / name).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no other readable checkpoint"):
        Trainer(tiny_config(out, resume="latest", max_steps=4), TinyPairs(6))


# ---------------------------------------------------------------- plot and progress


def test_loss_plot_of_d_steps_per_g_has_finite_generator_curves(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    records = [
        {"step": s, "D_fake": float(rng.random()), "D_real": float(rng.random())}
        | ({"G_GAN": float(rng.random()), "G_feat": float(rng.random())} if s % 2 == 1 else {})
        for s in range(1, 301)
    ]
    curves = loss_curves(records)
    assert list(curves["G_GAN"][0]) == list(range(1, 301, 2)) and np.isfinite(curves["G_GAN"][1]).all()

    drawn = {}
    savefig = Figure.savefig

    def recording_savefig(self, *args, **kwargs):
        for axis in self.axes:
            drawn[axis.get_ylabel()] = [np.asarray(line.get_ydata(), dtype=float) for line in axis.lines]
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    plot_losses(records, tmp_path / "losses.png")
    assert len(drawn["generator"]) == 4 and len(drawn["discriminator"]) == 4  # raw + smoothed per loss
    for lines in drawn.values():
        assert all(np.isfinite(values).all() and len(values) > 0 for values in lines)


def test_progress_bar_with_a_time_budget_shows_the_budget(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainer_module, "PLOT_INTERVAL_S", 1e9)
    config = tiny_config(tmp_path / "run", niter=1000, niter_decay=0, time_budget_s=2.0, progress=True)
    trainer = Trainer(config, TinyPairs(6))
    history = trainer.fit()
    err = capsys.readouterr().err
    assert trainer.final_step == 3000 and len(history) < 3000
    assert re.search(r"\b[0-3]/2 s of the time budget", err), err[-500:]
    assert f"step={history[-1]['step']}/3000" in err
    assert not re.search(r"/3000 \[", err)  # the steps are not the bar's total
    # without a budget the bar counts steps
    Trainer(tiny_config(tmp_path / "steps", max_steps=4, progress=True), TinyPairs(6)).fit()
    assert re.search(r"\b4/4 \[", capsys.readouterr().err)


# ---------------------------------------------------------------- one process per out_dir


def test_a_second_process_training_into_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(out, max_steps=1), TinyPairs(6)).fit()
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    second = Trainer(tiny_config(out, resume="latest", max_steps=2), TinyPairs(6))
    with locked(out / ".train.lock", wait=False):  # the first process, still training
        with pytest.raises(FileExistsError, match=r"is in use: another process is training there"):
            second.fit()
        assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    # once it ends, the folder is free again
    assert Trainer(tiny_config(out, resume="latest", max_steps=2), TinyPairs(6)).fit()[-1]["step"] == 2
