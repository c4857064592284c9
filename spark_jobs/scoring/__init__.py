"""Scoring: the model a run scores with, the one scan that fetches, decodes and predicts on the
executors, the already-scored lookups, the prediction tables, the drift test, and the stream of micro-batches."""
