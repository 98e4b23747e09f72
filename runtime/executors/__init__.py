"""Executors of the Schedule IR: sequential reference, multi-stream SM-partitioned, CUDA-graph replay."""
