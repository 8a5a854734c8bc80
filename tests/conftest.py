"""Test configuration: Triton kernels run under Triton's CPU interpreter unless asked otherwise.

TRITON_INTERPRET must be set before triton is first imported (``@triton.jit`` chooses between the
interpreter and the compiler at decoration time), so it is set here, before any test module
imports the package. On a machine with a CUDA GPU, ``ASAPNET_TEST_COMPILED=1 pytest`` runs the
same tests on the compiled kernels (backend "triton") instead.
"""

import os
import zlib

if os.environ.get("ASAPNET_TEST_COMPILED", "0") in ("", "0"):
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property-based tests: "ci" (the default) is fixed-seed and sized for CI; "long" draws fresh random
# cases, thousands per test (HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz.py; the case
# counts per test are in tests/test_fuzz.py and the README).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("long", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def generator(request):
    """A torch.Generator seeded from the test's id: fresh inputs per test, reproducible runs."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
