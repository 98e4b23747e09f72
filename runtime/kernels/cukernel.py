"""Opt-in: load Triton kernels as context-independent CUkernels (cuLibraryLoadData) instead of CUfunctions.

Why: a CUfunction belongs to the context that loaded it (the primary context); a CUkernel launches in the context of
the stream it is launched on, which is what a green-context stream needs if a driver refuses (or does not confine)
plain Triton launches there. `partitions.check_disjoint` tells whether this is needed; enable it with the
environment variable NANOFLOW_TRITON_CUKERNEL=1 (read when `runtime.kernels` is imported) or `enable()` before the
first launch of each kernel.
"""

from __future__ import annotations

import ctypes

_MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_libraries: list = []  # loaded libraries live as long as the process


def enable() -> None:
    """Make every Triton kernel loaded from now on a CUkernel (idempotent)."""
    from triton.runtime import driver

    utils = driver.active.utils
    if getattr(utils, "_nanoflow_cukernel", False):
        return
    cu = ctypes.CDLL("libcuda.so.1")
    original = utils.load_binary

    def check(ret: int, what: str) -> None:
        if ret != 0:
            raise RuntimeError(f"{what} failed with CUresult {ret}")

    def load_binary(name, kernel, shared, device):
        module, _, n_regs, n_spills, n_max_threads = original(name, kernel, shared, device)
        image = ctypes.create_string_buffer(bytes(kernel), len(kernel))
        lib, kern = ctypes.c_void_p(), ctypes.c_void_p()
        check(cu.cuLibraryLoadData(ctypes.byref(lib), image, None, None, 0, None, None, 0), "cuLibraryLoadData")
        check(cu.cuLibraryGetKernel(ctypes.byref(kern), lib, name.encode()), "cuLibraryGetKernel")
        if shared > 49152:
            dev = ctypes.c_int()
            check(cu.cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
            check(cu.cuKernelSetAttribute(_MAX_DYNAMIC_SHARED, shared, kern, dev), "cuKernelSetAttribute")
        _libraries.append((image, lib))
        return module, kern.value, n_regs, n_spills, n_max_threads

    utils.load_binary = load_binary
    utils._nanoflow_cukernel = True
