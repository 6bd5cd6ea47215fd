"""Sampling a trained network: :mod:`.load` (a run or checkpoint folder -> the network),
:mod:`.generate` (images for (class, index) pairs, each from its own seed), :mod:`.folder`
(samples folders, made resumably), :mod:`.export` (interpolation rows, a diffusers folder)."""

from diffscape.sample.export import MAX_FRAMES, export_diffusers, interpolate
from diffscape.sample.folder import Plan, chosen_classes, make_plan, sample_to_folder
from diffscape.sample.generate import (
    check_settings,
    default_device,
    denoise,
    generate_images,
    grid_image,
    image_generator,
    iter_images,
    model_output,
    slerp,
    to_uint8,
)
from diffscape.sample.load import LoadedModel, class_names, load_for_sampling

__all__ = [
    "MAX_FRAMES",
    "LoadedModel",
    "Plan",
    "check_settings",
    "chosen_classes",
    "class_names",
    "default_device",
    "denoise",
    "export_diffusers",
    "generate_images",
    "grid_image",
    "image_generator",
    "interpolate",
    "iter_images",
    "load_for_sampling",
    "make_plan",
    "model_output",
    "sample_to_folder",
    "slerp",
    "to_uint8",
]
