"""nanoflow: NanoFlow's intra-device parallelism as a torch.compile backend and a serving runtime."""

__version__ = "0.1.0"
