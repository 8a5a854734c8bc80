"""bench/common.py's machine names: a CPU's results folder names its cores, model and widest
matrix extension, so that two CPUs sold under one model name do not share a folder."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from common import cpu_machine_name  # noqa: E402

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
