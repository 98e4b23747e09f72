"""Triton kernels that stay efficient on a partition of the GPU."""
