"""Sampling a trained network: :mod:`.load` -> :mod:`.generate` -> :mod:`.folder`; :mod:`.export`."""

from diffscape.sample.export import export_diffusers, interpolate
from diffscape.sample.folder import sample_to_folder
from diffscape.sample.generate import denoise, generate_images, image_generator, model_output, slerp
from diffscape.sample.load import class_names, load_for_sampling

__all__ = [
    "class_names",
    "denoise",
    "export_diffusers",
    "generate_images",
    "image_generator",
    "interpolate",
    "load_for_sampling",
    "model_output",
    "sample_to_folder",
    "slerp",
]
