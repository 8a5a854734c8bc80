"""bench/common.py's machine names: a CPU's results folder names its cores, model and widest
matrix extension, so that two CPUs sold under one model name do not share a folder. And its
attribute swap, which benchmarks use to vary a module constant."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from common import attributes_set, cpu_machine_name  # noqa: E402

XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC_BF16 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n"


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        (XEON, "cpu-2core-Intel-Xeon-Platinum-8481C-amx"),
        (EPYC_BF16, "cpu-2core-AMD-EPYC-avx512bf16"),
        (EPYC_AVX2, "cpu-2core-AMD-EPYC-avx2"),
        ("", "cpu-2core-x86-64"),
    ],
)
def test_cpu_machine_names(cpuinfo, expected):
    assert cpu_machine_name(cpuinfo, 2, "x86_64") == expected


def test_only_the_first_processor_is_read():
    two = EPYC_AVX2 + "\n" + EPYC_BF16.replace("AMD EPYC", "Other")
    assert cpu_machine_name(two, 4, "x86_64") == "cpu-4core-AMD-EPYC-avx2"


def test_attributes_set_holds_the_values_in_the_block_and_restores_them():
    class Target:
        a, b = 1, "two"

    with attributes_set(Target, a=10, b=None):
        assert (Target.a, Target.b) == (10, None)
    assert (Target.a, Target.b) == (1, "two")
    with pytest.raises(RuntimeError, match="inside"), attributes_set(Target, a=-1):
        assert Target.a == -1
        raise RuntimeError("inside")
    assert Target.a == 1
    with attributes_set(Target):  # nothing to set: a no-op block
        assert (Target.a, Target.b) == (1, "two")
