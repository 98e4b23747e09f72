"""Running a schedule: executors, kernels, the paged KV cache and the serving engine."""

from . import attention  # registers the nanoflow:: custom ops
