"""Where a prediction came from: the chain from a scored image (or a model version) back to its
model, training, features and ingest runs, read from the platform's own records (trace.py)."""
