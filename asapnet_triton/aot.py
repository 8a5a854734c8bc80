"""Ahead-of-time compilation of the Triton kernels for GPUs this machine does not have.

``triton.compile`` with a ``GPUTarget`` runs without a GPU, and the triton wheel ships ptxas,
cuobjdump and nvdisasm, so the registers, spills, shared memory and tensor-core instructions of
every kernel can be measured anywhere. Needs Triton's compiler: run it in a process where
TRITON_INTERPRET is not set.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import torch
import triton

from .layout import MLPShape

__all__ = ["SUPPORTED_ARCHS", "KernelResources", "compile_kernel", "kernel_resources", "measure", "occupancy"]

# Per-SM limits used for the theoretical occupancy: registers, shared memory (bytes), threads.
_SM_LIMITS = {
    80: (65536, 164 * 1024, 2048),
    86: (65536, 100 * 1024, 1536),
    89: (65536, 100 * 1024, 1536),
    90: (65536, 228 * 1024, 2048),
}
SUPPORTED_ARCHS = tuple(_SM_LIMITS)  # the compute capabilities whose limits are known here


@dataclass(frozen=True)
class KernelResources:
    """What one compiled kernel uses on one architecture."""

    kernel: str
    arch: int
    precision: str
    labels: bool
    block_pixels: int
    pixels_per_program: int
    num_warps: int
    num_stages: int
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_frame_bytes: int
    shared_memory_bytes: int
    hmma: int
    hgmma: int
    occupancy: float  # resident warps / max warps per SM, from registers, shared memory, threads

    def as_dict(self) -> dict:
        return asdict(self)


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _ptxas(arch: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def compile_kernel(
    kernel: str,
    shape: MLPShape,
    *,
    labels: bool,
    precision: str,
    config,
    arch: int,
    params_dtype: torch.dtype = torch.float32,
    need_grad_x: bool = True,
):
    """Compile the forward or backward kernel for ``arch`` (e.g. 80, 90) exactly as the launchers
    build it (``kernels.launch_config.kernel_build``: constants, argument types, launch options);
    labels are uint8, float input and gradients have params' dtype. Returns Triton's
    CompiledKernel (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata``)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .kernels.launch_config import kernel_build
    from .kernels.pixelwise_mlp import kernel_function

    fn = kernel_function(kernel)
    if not isinstance(fn, triton.runtime.jit.JITFunction):
        raise RuntimeError(
            "ahead-of-time compilation needs Triton's compiler: unset TRITON_INTERPRET before triton is imported"
        )
    build = kernel_build(
        kernel,
        shape,
        labels=labels,
        precision=precision,
        config=config,
        interpret=False,
        x_dtype=torch.uint8 if labels else params_dtype,
        params_dtype=params_dtype,
        need_grad_x=need_grad_x,
        arch=arch,
    )
    source = ASTSource(fn=fn, signature=build.signature(fn.arg_names), constexprs=build.constexprs)
    return triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": build.num_warps, "num_stages": build.num_stages},
    )


def measure(compiled, arch: int) -> dict:
    """Registers, spills and stack (ptxas -v), shared memory (Triton's allocation) and tensor-core
    instruction counts (nvdisasm) of a compiled kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        gpu = "sm_90a" if arch == 90 else f"sm_{arch}"
        report = subprocess.run(
            [_ptxas(arch), "-v", f"--gpu-name={gpu}", ptx, "-o", os.devnull], capture_output=True, text=True, check=True
        ).stderr
        sass = subprocess.run([_tool("nvdisasm"), cubin], capture_output=True, text=True, check=True).stdout

    def number(pattern):
        match = re.search(pattern, report)
        return int(match.group(1)) if match else 0

    return dict(
        registers=number(r"Used (\d+) registers"),
        spill_store_bytes=number(r"(\d+) bytes spill stores"),
        spill_load_bytes=number(r"(\d+) bytes spill loads"),
        stack_frame_bytes=number(r"(\d+) bytes stack frame"),
        shared_memory_bytes=int(compiled.metadata.shared) + number(r"(\d+) bytes smem"),
        hmma=len(re.findall(r"\bHMMA\.", sass)),
        hgmma=len(re.findall(r"\bHGMMA\.", sass)),
    )


def occupancy(registers: int, shared_bytes: int, num_warps: int, arch: int) -> float:
    """Theoretical occupancy: resident warps per SM over the maximum, limited by registers
    (allocated per warp in units of 256), shared memory and threads."""
    max_regs, max_shared, max_threads = _SM_LIMITS.get(arch, _SM_LIMITS[80])
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    blocks = min(
        max_regs // (regs_per_warp * num_warps),
        max_shared // shared_bytes if shared_bytes else 32,
        max_threads // (32 * num_warps),
        32,
    )
    return blocks * num_warps * 32 / max_threads


def kernel_resources(
    kernel: str, shape: MLPShape, *, labels: bool, precision: str, config, arch: int, need_grad_x: bool = True
) -> KernelResources:
    """Compile one kernel and measure it."""
    compiled = compile_kernel(
        kernel, shape, labels=labels, precision=precision, config=config, arch=arch, need_grad_x=need_grad_x
    )
    usage = measure(compiled, arch)
    return KernelResources(
        kernel=kernel,
        arch=arch,
        precision=precision,
        labels=labels,
        block_pixels=config.block_pixels,
        pixels_per_program=config.pixels_per_program,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **usage,
        occupancy=occupancy(usage["registers"], usage["shared_memory_bytes"], config.num_warps, arch),
    )
