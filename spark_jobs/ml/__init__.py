"""Models: the torch architectures and their safe loader, feature extractors, the training loop,
MLlib helpers, inference on the executors, model cards and classification metrics."""
