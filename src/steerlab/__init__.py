"""steerlab: build steering vectors from contrastive examples, steer generation, compare with the original."""

__version__ = "0.1.0"
