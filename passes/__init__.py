"""FX graph passes over the ATen inference graph, one pass per file; `pipeline.py` lists them in order."""
