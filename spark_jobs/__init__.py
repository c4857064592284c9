"""Spark jobs of the image-recognition platform: one module per pipeline stage plus shared parts."""

__version__ = "0.1.0"
