"""``asapnet train`` end to end on the procedural data set, and the trainer's options (bf16,
perceptual loss, instance edges)."""

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_data import TinyPairs, tiny_config

from asapnet_triton.cli import main
from asapnet_triton.training import Trainer, VGG19Features

TINY_FLAGS = [
    "--dataset",
    "procedural",
    "--crop-size",
    "32",
    "--num-samples",
    "4",
    "--batch-size",
    "2",
    "--niter",
    "1",
    "--niter-decay",
    "1",
    "--cell-size",
    "16",
    "--hidden-width",
    "16",
    "--depth",
    "3",
    "--lr-width",
    "8",
    "--lr-max-width",
    "16",
    "--lr-depth",
    "1",
    "--ndf",
    "8",
    "--no-progress",
    "--device",
    "cpu",
]


def test_help_says_how_to_enable_the_perceptual_loss(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--vgg-weights" in text and "vgg19" in text and "--resume" in text


def test_cli_trains_writes_outputs_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *TINY_FLAGS,
                "--out",
                str(out),
                "--max-steps",
                "3",
                "--sample-every",
                "2",
                "--checkpoint-every",
                "2",
                "--keep-last",
                "2",
            ]
        )
        == 0
    )
    assert "perceptual (VGG19) loss is off: pass --vgg-weights PATH" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002.pt", "step_00000003.pt"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_00000002.png", "step_00000003.png"]
    sample = np.asarray(Image.open(out / "samples" / "step_00000003.png"))
    assert sample.ndim == 3 and sample.shape[2] == 3 and sample.shape[1] > 3 * 32
    assert sample.std() > 0  # not a blank image
    plot = Image.open(out / "losses.png")
    assert plot.size[0] > 200 and plot.size[1] > 200
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r[k]) for r in records for k in ("G_GAN", "G_feat", "D_fake", "D_real"))
    assert json.loads((out / "config.json").read_text())["cell_size"] == 16

    # an occupied --out is refused without --resume ...
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY_FLAGS, "--out", str(out)])
    assert exit_info.value.code == 2 and re.search("not empty", capsys.readouterr().err)
    # files get the mode a plain open() would give them, not mkstemp's owner-only 0600
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask
    # a crash mid-write can leave a torn last log line: resuming drops it
    with open(out / "log.jsonl", "a") as log:
        log.write('{"step": 4, "G_GA')
    # ... and with it the run continues from its checkpoint, taking its settings from there,
    # run-control ones included: --keep-last 2 still holds (the default would keep 3)
    assert main(["train", "--out", str(out), "--resume", "latest", "--max-steps", "4", "--no-progress"]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000003.pt", "step_00000004.pt"]
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(out), "--resume", "latest", "--hidden-width", "32"])
    assert exit_info.value.code == 2 and re.search("hidden_width", capsys.readouterr().err)


def test_cli_reports_a_missing_vgg_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY_FLAGS, "--out", str(tmp_path / "run"), "--vgg-weights", str(tmp_path / "nowhere.pth")])
    assert exit_info.value.code == 2 and re.search("nowhere.pth", capsys.readouterr().err)


def test_bf16_perceptual_loss_and_instance_edges(tmp_path, capsys):
    torch.manual_seed(0)
    vgg_path = tmp_path / "vgg19.pth"
    torch.save(VGG19Features().state_dict(), vgg_path)
    fp32 = Trainer(
        tiny_config(tmp_path / "fp32", max_steps=1, vgg_weights=str(vgg_path), instance=True),
        TinyPairs(4, instance=True),
    ).fit()
    assert "perceptual (VGG19) loss is off" not in capsys.readouterr().err
    bf16 = Trainer(
        tiny_config(tmp_path / "bf16", max_steps=1, vgg_weights=str(vgg_path), instance=True, precision="bf16"),
        TinyPairs(4, instance=True),
    ).fit()
    assert "G_VGG" in fp32[0] and "G_VGG" in bf16[0]
    for name in ("G_GAN", "G_feat", "G_VGG", "D_fake", "D_real"):
        assert np.isfinite(bf16[0][name])
        # same parameters, same batch: bf16 rounding changes the losses only slightly, but does change them
        assert bf16[0][name] == pytest.approx(fp32[0][name], rel=5e-2, abs=5e-3)
    assert any(bf16[0][name] != fp32[0][name] for name in ("G_feat", "G_VGG"))


def test_bad_batches_are_reported(tmp_path):
    class NoImage(TinyPairs):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            del item["image"]
            return item

    with pytest.raises(KeyError, match="'image'"):
        Trainer(tiny_config(tmp_path / "run", max_steps=1), NoImage(4)).fit()
    with pytest.raises(ValueError, match="fewer than one global batch"):
        Trainer(tiny_config(tmp_path / "run2", batch_size=8), TinyPairs(4))


def test_d_steps_per_g_skips_generator_steps_and_on_step_sees_every_step(tmp_path):
    snapshots = []
    trainer = Trainer(tiny_config(tmp_path / "run", max_steps=3, d_steps_per_g=2), TinyPairs(6))
    trainer.on_step = lambda record: snapshots.append(
        (
            record["step"],
            [p.detach().clone() for p in trainer.generator.parameters()],
            [p.detach().clone() for p in trainer.discriminator.parameters()],
        )
    )
    history = trainer.fit()
    assert [("G_GAN" in r, "D_real" in r) for r in history] == [(True, True), (False, True), (True, True)]
    assert [s[0] for s in snapshots] == [1, 2, 3]
    unchanged = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
    assert unchanged(snapshots[0][1], snapshots[1][1])  # no generator step at step 2
    assert not unchanged(snapshots[1][1], snapshots[2][1]) and not unchanged(snapshots[0][2], snapshots[1][2])
    assert (tmp_path / "run" / "losses.png").is_file()


def test_a_stored_config_of_another_version_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--out", str(out), "--max-steps", "1"]) == 0
    (path,) = (out / "checkpoints").glob("step_*.pt")
    state = torch.load(path, weights_only=True)
    state["config"]["a_future_option"] = 3
    torch.save(state, path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(out), "--resume", str(path), "--max-steps", "2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "a_future_option" in err and "Traceback" not in err, err
