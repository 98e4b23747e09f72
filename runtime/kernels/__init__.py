"""Triton kernels that stay efficient on a partition of the GPU."""

import os

if os.environ.get("NANOFLOW_TRITON_CUKERNEL") == "1":
    from .cukernel import enable

    enable()
