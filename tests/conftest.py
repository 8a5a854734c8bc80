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


@pytest.fixture
def generator(request):
    """A torch.Generator seeded from the test's id: fresh inputs per test, reproducible runs."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
