"""The bf16 generator keeps a trained model's picture: the shipped model in bf16 against itself in
float64 (and fp32), on fresh random procedural label maps, on the ``torch`` backend (bf16 products
are wrong under the Triton interpreter: triton #11584, see TRITON-ON-CPU.md).

Tolerances, from measurements. ``bench/bf16_quality.py`` on the shipped model (4 held-out maps,
256x256; ``bench/results/cpu-2core-Intel-Xeon/bf16/bf16_quality.json``, step 1800): both streams
in bf16 66 dB PSNR against fp32 (output relative L2 2.4e-3), the LR stream alone 74 dB (1.0e-3)
with its parameter head in fp32 and 68 dB (2.0e-3) with a bf16 head. On this test's smaller
100x137 maps (step 2400, three seeds): both 56-57 dB (3.5e-3 - 4.0e-3), the LR stream alone
61.5-64.4 dB (1.6e-3 - 2.0e-3). Held to 50 dB / 8e-3 and 55 dB / 4e-3: about 6 dB of margin,
still far above the issue's 40 dB and far below what an error in the streams would give. The
shipped model is now step 9000 (``bf16_quality_shipped_step9000.json``: both streams 59 dB, the LR
stream alone 62 dB at 256x256); it passes these tolerances, but its margins on this test's maps
have not been measured separately.
"""

import pytest
import torch

from asapnet_triton.checkpoints import load_model, shipped_model_path
from asapnet_triton.data import build_dataset
from asapnet_triton.generator import ASAPNetGenerator
from asapnet_triton.metrics import psnr

BOTH_BF16_MIN_DB, BOTH_BF16_MAX_REL_L2 = 50.0, 8e-3
LR_BF16_MIN_DB, LR_BF16_MAX_REL_L2 = 55.0, 4e-3


@pytest.fixture(scope="module")
def shipped():
    return load_model(shipped_model_path())


def _as(generator: ASAPNetGenerator, **kwargs) -> ASAPNetGenerator:
    model = ASAPNetGenerator(**(dict(generator.init_kwargs, backend="torch") | kwargs))
    model.load_state_dict(generator.state_dict())
    return model.eval()


def _fresh_maps(generator: torch.Generator) -> torch.Tensor:
    # 2 maps of 100 x 137: not whole 16-pixel cells; a seed no other test uses
    seed = int(torch.randint(1000, 2**30, (), generator=generator))
    maps = build_dataset("procedural", split="val", crop_size=100, aspect_ratio=1.37, num_samples=2, seed=seed)
    return torch.stack([maps[i]["label"] for i in range(2)])


def _image(output: torch.Tensor) -> torch.Tensor:
    return (output.double().clamp(-1, 1) + 1) / 2


def _rel_l2(output: torch.Tensor, reference: torch.Tensor) -> float:
    return ((output.double() - reference).norm() / reference.norm()).item()


def _head_dtypes(model: ASAPNetGenerator) -> list:
    dtypes = []
    model.lowres.to_params.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    return dtypes


@pytest.fixture(scope="module")
def reference(shipped):
    """The float64 generator: every operation of both streams in float64."""
    return _as(shipped.generator, precision="fp64", lr_precision="fp32").double()


def test_the_bf16_generator_keeps_the_picture(shipped, reference, generator):
    labels = _fresh_maps(generator)
    fp32 = _as(shipped.generator)
    bf16 = _as(shipped.generator, precision="bf16", lr_precision="bf16")
    head = _head_dtypes(bf16)
    with torch.no_grad():
        expected = reference(labels)
        out_fp32, out_bf16 = fp32(labels), bf16(labels)
    assert out_bf16.dtype == torch.float32 and out_bf16.shape == (2, 3, 100, 137)
    # the reference is meaningful: fp32 agrees with it to fp32 accuracy
    assert _rel_l2(out_fp32, expected) < 1e-5
    error = _rel_l2(out_bf16, expected)
    assert 1e-5 < error <= BOTH_BF16_MAX_REL_L2  # bf16 really ran, and stayed close
    assert psnr(_image(out_bf16), _image(expected)).min().item() >= BOTH_BF16_MIN_DB
    # both streams in bf16: the head in bf16 as well (the HR stream rounds the grid to bf16 anyway)
    assert head == [torch.bfloat16]


def test_lr_stream_alone_in_bf16_keeps_its_parameter_head_in_fp32(shipped, reference, generator):
    labels = _fresh_maps(generator)
    lr_bf16 = _as(shipped.generator, precision="fp32", lr_precision="bf16")
    head = _head_dtypes(lr_bf16)
    with torch.no_grad():
        expected = reference(labels)
        grid_reference = reference.lowres_params(labels)
        out = lr_bf16(labels)
        grid = lr_bf16.lowres_params(labels)
        # the same LR stream with its head under bf16 autocast: the grid loses 8-bit rounding on every weight
        with torch.autocast("cpu", dtype=torch.bfloat16):
            grid_bf16_head = lr_bf16.lowres(lr_bf16.lowres_input(labels)).float()
    assert head == [torch.float32, torch.float32, torch.bfloat16]  # ours twice, then the bf16-head comparison
    assert 1e-5 < _rel_l2(out, expected) <= LR_BF16_MAX_REL_L2
    assert psnr(_image(out), _image(expected)).min().item() >= LR_BF16_MIN_DB
    assert _rel_l2(grid, grid_reference) < 0.5 * _rel_l2(grid_bf16_head, grid_reference)
