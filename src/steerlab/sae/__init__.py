"""Sparse autoencoders (SAEs) on the residual stream: read and write published formats, train one, find
features from contrastive pairs, and steer with a feature (its decoder row as a vector, or a clamp of its
activation). One module per job; each sits on its own floor (tests/test_architecture.py)."""
