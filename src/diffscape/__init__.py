"""diffscape: train, sample and judge small-image diffusion models."""

__version__ = "0.1.0"
