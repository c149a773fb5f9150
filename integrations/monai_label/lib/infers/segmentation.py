# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Organ label maps from a MONAI segmentation bundle, for requests that bring a CT but no label map.

The bundle is read like a model-zoo bundle: ``configs/inference.json`` (or ``.yaml``) with ``network_def``,
``preprocessing``, ``inferer`` and ``postprocessing``, weights in ``models/model.pt``. Its postprocessing must give
the label map back on the input CT's grid (``Invertd``, as model-zoo segmentation bundles do); ``SaveImaged`` steps
are skipped, the map is written here. Its label ids must follow the app's ``label_convention``.

A model-zoo bundle keeps its own code in a ``scripts`` package that its config imports; it is loaded here from the
bundle's directory under that name (the Med-SORA code is the ``medsora`` library, so the name is free), without
adding the bundle to ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import types

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, SaveImaged

CONFIG_NAMES = ("inference.json", "inference.yaml")
REQUIRED_KEYS = ("network_def", "preprocessing", "inferer", "postprocessing")


def load_bundle_scripts(bundle_dir: str) -> None:
    """Make ``bundle_dir/scripts`` the importable package ``scripts`` (replacing any earlier one), so the bundle's
    ``$import scripts`` and ``scripts.*`` targets resolve; a bundle without one leaves nothing behind."""
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]
    directory = os.path.join(bundle_dir, "scripts")
    if not os.path.isdir(directory):
        return
    init = os.path.join(directory, "__init__.py")
    if os.path.isfile(init):
        spec = importlib.util.spec_from_file_location("scripts", init, submodule_search_locations=[directory])
        module = importlib.util.module_from_spec(spec)
        sys.modules["scripts"] = module
        spec.loader.exec_module(module)
    else:  # a namespace package: its modules are found on __path__
        module = types.ModuleType("scripts")
        module.__path__ = [directory]
        sys.modules["scripts"] = module


class BundleSegmenter:
    """``segmenter(image, device) -> label map path`` (NIfTI on the image's grid) with a MONAI segmentation bundle.

    Args:
        bundle_dir: the segmentation bundle's directory.
        image_key: the key its preprocessing reads the CT from; ``pred_key``: the key its postprocessing writes.
    """

    def __init__(self, bundle_dir: str, image_key: str = "image", pred_key: str = "pred") -> None:
        bundle_dir = os.path.realpath(bundle_dir)
        configs = [os.path.join(bundle_dir, "configs", n) for n in CONFIG_NAMES]
        config = next((c for c in configs if os.path.isfile(c)), None)
        if config is None:
            raise FileNotFoundError(f"segmentation_bundle {bundle_dir} has none of {configs}.")
        weights = os.path.join(bundle_dir, "models", "model.pt")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"segmentation_bundle {bundle_dir} has no weights file {weights}.")
        load_bundle_scripts(bundle_dir)
        parser = ConfigParser()
        parser.read_config(config)
        parser["bundle_root"] = bundle_dir
        missing = [k for k in REQUIRED_KEYS if k not in parser]
        if missing:
            raise ValueError(f"segmentation_bundle config {config} lacks {missing}.")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state
        self.network = parser.get_parsed_content("network_def")
        self.network.load_state_dict(state)
        self.network.eval()
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        post = parser.get_parsed_content("postprocessing")
        post = list(post.transforms) if isinstance(post, Compose) else list(post)
        self.postprocessing = Compose([t for t in post if not isinstance(t, SaveImaged)])
        self.bundle_dir, self.image_key, self.pred_key = bundle_dir, image_key, pred_key

    @torch.no_grad()
    def __call__(self, image: str, device: str = "cpu") -> str:
        from medsora.image.datalist import image_grid  # the Med-SORA bundle's reader of grids

        grid = image_grid(image)
        if grid is None:
            raise ValueError(f"image {image}: the segmentation bundle needs a NIfTI CT or a DICOM series directory.")
        shape, affine = grid
        data = self.preprocessing({self.image_key: image})
        network = self.network.to(device)
        data[self.pred_key] = self.inferer(data[self.image_key][None].to(device), network)[0].cpu()
        data = self.postprocessing(data)
        label = np.asarray(torch.as_tensor(data[self.pred_key]).cpu())
        label = label[0] if label.ndim == 4 and label.shape[0] == 1 else label
        if label.shape != tuple(shape):
            raise ValueError(
                f"segmentation_bundle {self.bundle_dir} gave a label map of shape {label.shape} for CT {image} of "
                f"shape {tuple(shape)}: its postprocessing must invert the preprocessing (Invertd) to the CT's grid."
            )
        fd, path = tempfile.mkstemp(suffix=".nii.gz", prefix="med_sora_segmentation_")
        os.close(fd)
        nib.save(nib.Nifti1Image(np.rint(label).astype(np.int16), affine), path)
        return path
