"""Training engine: the explicit loop (fit.py) and safe checkpoints (checkpoint.py)."""
