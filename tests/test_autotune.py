"""Autotuning: the configuration space, the cache (persisted, loaded, corrupt or stale files
ignored with a warning), the switch that pins defaults, and tuned launches staying correct."""

import json

import pytest
import torch

import asapnet_triton as at
from asapnet_triton import tuning
from asapnet_triton.kernels.launch_config import LaunchConfig, default_config
from asapnet_triton.reference import pixelwise_mlp_einsum
from asapnet_triton.testing import kernel_backends, random_inputs, relative_error

needs_interpreter = pytest.mark.skipif("interpret" not in kernel_backends(), reason="needs Triton's interpreter")
SHAPE = at.MLPShape(5, 16, 3, 16, 3)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "tuned.json"
    monkeypatch.setenv(tuning.CACHE_ENV, str(path))
    monkeypatch.delenv(tuning.DISABLE_ENV, raising=False)
    monkeypatch.setattr(tuning, "_loaded", None)
    return path


def choose(kernel="forward", pixels=2 * 40 * 33, labels=True, interpret=True):
    return tuning.chosen_config(
        kernel,
        SHAPE,
        labels=labels,
        precision="fp32",
        params_dtype=torch.float32,
        pixels=pixels,
        device="cpu",
        interpret=interpret,
    )


@pytest.mark.parametrize("kernel", tuning.KERNELS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("hidden", [16, 64, 128])
def test_config_space_is_valid_and_holds_the_default(kernel, precision, hidden):
    shape = at.MLPShape(35, 64, hidden_width=hidden)
    space = tuning.config_space(kernel, shape, precision)
    default = default_config(kernel, shape, labels=True, precision=precision)
    assert default in space and len(space) == len(set(space))
    for config in space:
        assert config == config.fitted(shape.cell_size)
        assert config.block_pixels <= config.pixels_per_program <= 4096
        if config != default:  # the pruning estimates hold for every candidate it kept
            assert tuning._estimated_registers(kernel, shape, config) <= 255


def test_space_is_pruned():
    shape = at.MLPShape(35, 64, hidden_width=128)
    forward = tuning.config_space("forward", shape, "bf16")
    backward = tuning.config_space("backward", shape, "bf16")
    assert len(backward) < len(forward) < 4 * 3 * 2 * 2  # all blocks x programs x warps x stages


def test_key_holds_everything_that_matters():
    base = dict(labels=True, precision="bf16", params_dtype=torch.float32, pixels=1024 * 2048, device="H100")
    key = tuning.tuning_key("forward", at.MLPShape(35, 64), **base)
    variants = [
        tuning.tuning_key("backward", at.MLPShape(35, 64), **base),
        tuning.tuning_key("forward", at.MLPShape(34, 64), **base),
        tuning.tuning_key("forward", at.MLPShape(35, 32), **base),
        tuning.tuning_key("forward", at.MLPShape(35, 64, hidden_width=32), **base),
        tuning.tuning_key("forward", at.MLPShape(35, 64, depth=4), **base),
        tuning.tuning_key("forward", at.MLPShape(35, 64, out_channels=1), **base),
        tuning.tuning_key("forward", at.MLPShape(35, 64), **(base | dict(labels=False))),
        tuning.tuning_key("forward", at.MLPShape(35, 64), **(base | dict(precision="fp16"))),
        tuning.tuning_key("forward", at.MLPShape(35, 64), **(base | dict(params_dtype=torch.bfloat16))),
        tuning.tuning_key("forward", at.MLPShape(35, 64), **(base | dict(pixels=512 * 512))),
        tuning.tuning_key("forward", at.MLPShape(35, 64), **(base | dict(device="A100"))),
    ]
    assert len({key, *variants}) == len(variants) + 1
    # the pixel count is bucketed: a slightly different size reuses the tuning
    assert key == tuning.tuning_key("forward", at.MLPShape(35, 64), **(base | dict(pixels=1000 * 2048)))


@needs_interpreter
def test_autotune_persists_and_launches_use_it(cache, generator):
    lines = []
    rows = tuning.autotune(
        40,
        33,
        cell_size=16,
        num_classes=5,
        hidden_width=16,
        depth=3,
        precision="fp32",
        batch=2,
        repeats=1,
        progress=False,
        printer=lines.append,
    )
    assert cache.exists()
    stored = json.loads(cache.read_text())["entries"]
    assert {row["kernel"] for row in rows} == {"forward", "backward"} and len(stored) == 2
    assert any("vs best" in line for line in lines)
    for kernel in tuning.KERNELS:
        best = min((r for r in rows if r["kernel"] == kernel), key=lambda r: r["seconds"])
        assert min(r["relative"] for r in rows if r["kernel"] == kernel) == 1.0
        # a fresh process state reads the file back
        tuning._loaded = None
        config, source = choose(kernel)
        assert source == "tuned" and config == LaunchConfig(**best["config"])
    # and a launch without config uses it and stays correct
    x, params = random_inputs(SHAPE, 2, 40, 33, labels=True, generator=generator)
    out = at.pixelwise_mlp(x, params, cell_size=16, hidden_width=16, depth=3, num_classes=5, backend="interpret")
    ref = pixelwise_mlp_einsum(x, params.double(), cell_size=16, hidden_width=16, depth=3, num_classes=5)
    assert relative_error(out, ref) <= at.TOLERANCES["fp32"]


def test_missing_cache_means_defaults(cache):
    config, source = choose()
    assert source == "default" and config == default_config(
        "forward", SHAPE, labels=True, precision="fp32", interpret=True
    )


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 0, "entries": {}}), json.dumps([1, 2])])
def test_corrupt_or_stale_cache_is_reported_and_ignored(cache, content):
    cache.write_text(content)
    with pytest.warns(RuntimeWarning, match="ignoring the autotuning cache"):
        config, source = choose()
    assert source == "default"


def test_stale_entry_is_reported_and_ignored(cache):
    key = tuning.tuning_key(
        "forward",
        SHAPE,
        labels=True,
        precision="fp32",
        params_dtype=torch.float32,
        pixels=2 * 40 * 33,
        device="interpreter",
    )
    cache.write_text(json.dumps({"version": 1, "entries": {key: {"config": {"block_pixels": 24}}}}))
    with pytest.warns(RuntimeWarning, match="stale autotuning entry"):
        config, source = choose()
    assert source == "default"


def test_environment_variable_pins_defaults(cache, monkeypatch):
    key = tuning.tuning_key(
        "forward",
        SHAPE,
        labels=True,
        precision="fp32",
        params_dtype=torch.float32,
        pixels=2 * 40 * 33,
        device="interpreter",
    )
    cache.write_text(
        json.dumps(
            {
                "version": 1,
                "entries": {
                    key: {"config": {"block_pixels": 16, "pixels_per_program": 16, "num_warps": 1, "num_stages": 1}}
                },
            }
        )
    )
    assert choose()[1] == "tuned"
    monkeypatch.setenv(tuning.DISABLE_ENV, "0")
    config, source = choose()
    assert source.startswith("default") and config == default_config(
        "forward", SHAPE, labels=True, precision="fp32", interpret=True
    )
    with pytest.raises(RuntimeError, match="disabled"):
        tuning.autotune(16, 16, cell_size=16, num_classes=5, hidden_width=16, depth=3, progress=False)


# ---- keys that follow Triton and the kernels; concurrent tuning ------------------------------


def _key(**overrides):
    values = (
        dict(labels=True, precision="fp32", params_dtype=torch.float32, pixels=2 * 40 * 33, device="interpreter")
        | overrides
    )
    return tuning.tuning_key("forward", SHAPE, **values)


def _entry(block=16):
    return {"config": {"block_pixels": block, "pixels_per_program": 16, "num_warps": 1, "num_stages": 1}}


def test_key_holds_the_triton_version_and_the_kernel_source(cache, monkeypatch):
    key = _key()
    assert f"|triton={tuning.triton_version()}|" in key and key.endswith(f"|kernels={tuning.kernel_source_hash()}")
    assert tuning.triton_version() != "none"  # read from the installed package's metadata
    # an entry tuned with another Triton, or another kernel source, is never used
    for name, value in (("triton_version", "2.0.0"), ("kernel_source_hash", "0123456789abcdef")):
        with monkeypatch.context() as patch:
            patch.setattr(tuning, name, lambda value=value: value)
            foreign = _key()
        assert foreign != key
        cache.write_text(json.dumps({"version": 1, "entries": {foreign: _entry()}}))
        tuning._loaded = None
        assert choose()[1] == "default"
    cache.write_text(json.dumps({"version": 1, "entries": {key: _entry()}}))
    tuning._loaded = None
    assert choose()[1] == "tuned"


def test_kernel_source_hash_follows_the_files_contents(tmp_path):
    copies = []
    for source in tuning.KERNEL_SOURCES:
        copy = tmp_path / source.name
        copy.write_bytes(source.read_bytes())
        copies.append(copy)
    assert {path.name for path in tuning.KERNEL_SOURCES} == {"pixelwise_mlp.py", "launch_config.py"}
    assert tuning.kernel_source_hash(tuple(copies)) == tuning.kernel_source_hash()
    for copy in copies:
        original = copy.read_bytes()
        copy.write_bytes(original.replace(b"def ", b"def  ", 1))
        tuning.kernel_source_hash.cache_clear()
        assert tuning.kernel_source_hash(tuple(copies)) != tuning.kernel_source_hash()
        copy.write_bytes(original)
    tuning.kernel_source_hash.cache_clear()


def test_storing_merges_with_entries_other_processes_wrote_meanwhile(cache):
    mine, theirs, new = _key(pixels=64), _key(pixels=4096), _key(pixels=2**20)
    cache.write_text(json.dumps({"version": 1, "entries": {mine: _entry(16)}}))
    assert tuning._entries() == {mine: _entry(16)}  # loaded by this process
    # another process adds an entry after this one loaded the file
    cache.write_text(json.dumps({"version": 1, "entries": {mine: _entry(16), theirs: _entry(32)}}))
    tuning._store_best({new: _entry(64)})
    stored = json.loads(cache.read_text())["entries"]
    assert stored == {mine: _entry(16), theirs: _entry(32), new: _entry(64)}
    assert tuning._entries() == stored
    assert (cache.parent / (cache.name + ".lock")).is_file()


def test_storing_removes_stale_temp_files_of_killed_writes(cache):
    import os
    import time

    cache.parent.mkdir(parents=True, exist_ok=True)
    stale, live = cache.parent / ".tmp-killed01.part", cache.parent / ".tmp-writing1.part"
    for path in (stale, live):
        path.write_text('{"version": 1, "entr')
    past = time.time() - 3600
    os.utime(stale, (past, past))
    tuning._store_best({_key(): _entry()})
    assert not stale.exists() and live.exists()


TUNING_PROCESS = """
import os, sys, time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
from asapnet_triton import tuning

meeting, name, classes = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])


def time_configs(kernel, space, launch, timer, *, progress, printer):
    # both processes have loaded the cache before either times (and then writes) anything
    (meeting / f"{name}-{kernel}").touch()
    deadline = time.monotonic() + 120
    while len(list(meeting.glob(f"*-{kernel}"))) < 2:
        if time.monotonic() > deadline:
            sys.exit("the other tuning process never arrived")
        time.sleep(0.01)
    return [(1e-3 * classes, space[-1])]


tuning._time_configs = time_configs
tuning.autotune(
    24, 20, cell_size=16, num_classes=classes, hidden_width=16, depth=3, precision="fp32",
    repeats=1, progress=False, printer=lambda *args: None, device="cpu",
)
"""


@needs_interpreter
def test_two_processes_tuning_at_once_keep_each_others_entries(cache, tmp_path):
    import os
    import subprocess
    import sys

    meeting = tmp_path / "meeting"
    meeting.mkdir()
    script = tmp_path / "tune.py"
    script.write_text(TUNING_PROCESS)
    environment = {**os.environ, tuning.CACHE_ENV: str(cache), "TRITON_INTERPRET": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(meeting), name, str(classes)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, classes in (("first", 5), ("second", 7))
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    stored = json.loads(cache.read_text())["entries"]
    # two kernels from each process, none lost
    assert sorted(key.split("|")[:2] for key in stored) == [
        ["backward", "classes=5"],
        ["backward", "classes=7"],
        ["forward", "classes=5"],
        ["forward", "classes=7"],
    ]


@needs_interpreter
def test_autotune_times_exactly_the_configs_given(cache):
    configs = [LaunchConfig(64, 256, 4), LaunchConfig(16, 256, 4), LaunchConfig(64, 256, 4)]
    rows = tuning.autotune(
        20,
        24,
        cell_size=16,
        num_classes=5,
        hidden_width=16,
        depth=3,
        precision="fp32",
        kernels=("backward",),
        configs=configs,
        repeats=1,
        progress=False,
        printer=lambda line: None,
    )
    assert [row["kernel"] for row in rows] == ["backward", "backward"]  # the duplicate timed once
    assert {LaunchConfig(**row["config"]) for row in rows} == {LaunchConfig(64, 256, 4), LaunchConfig(16, 256, 4)}
    for bad in ([], [dict(block_pixels=16)]):
        with pytest.raises(ValueError, match="configs must be a non-empty list of LaunchConfig"):
            tuning.autotune(20, 24, cell_size=16, num_classes=5, configs=bad, progress=False)
