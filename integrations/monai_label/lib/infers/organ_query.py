# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The Med-SORA infer task: a CT, its organ label map and a symptom text in; the organ probability map and the
ranking out.

The bundle's own objects do the work (``query_model``, ``network_def`` with ``models/model.pt``, ``preprocessing``
and ``organ_labels`` of ``configs/inference.yaml``); they are built once, when the app starts, and reused by every
request. Per request the patient's organ features replace the reference organs where the image network reads the
organ (the bundle's image gate), exactly as the bundle's ``query`` workflow does with ``--image`` and ``--label``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import LoadImage
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from medsora.image.gate import load_image_gate
from medsora.literal_options import literal_overrides
from medsora.stages import load_weights

logger = logging.getLogger(__name__)

#: ``result_map`` values: the first is the default.
RESULT_MAPS = ("probability", "ranking")
LABEL_HELP = (
    "upload the organ label map as the multipart field 'label', put it in the datastore as the image's label "
    "with tag 'organs' (STUDIES/labels/organs/<CT file name>), or start the server with --conf segmentation_bundle "
    "<MONAI segmentation bundle directory>"
)


def invalid(message: str) -> MONAILabelException:
    """An error the client caused; the app answers it with HTTP 422 and ``message`` as the detail."""
    return MONAILabelException(MONAILabelError.INVALID_INPUT, message)


def bundle_objects(bundle_root: str, label_convention: str) -> dict[str, Any]:
    """Build the bundle's query model, image network (trained weights loaded), preprocessing and organ labels.

    Args:
        bundle_root: the Med-SORA bundle directory (holding ``configs/inference.yaml`` and ``models/``).
        label_convention: a name under ``label_conventions`` of the config (``btcv``, ``totalsegmentator``, ...).
    """
    config_file = os.path.join(bundle_root, "configs", "inference.yaml")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"bundle_root {bundle_root} holds no configs/inference.yaml: pass the Med-SORA bundle directory with "
            "--conf bundle_root <path>."
        )
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(literal_overrides(bundle_root=bundle_root, label_convention=label_convention))

    weights = os.path.join(bundle_root, "models", "model.pt")
    network = load_weights(parser.get_parsed_content("network_def"), weights)
    organ_labels = parser.get_parsed_content("organ_labels")
    return {
        "query": parser.get_parsed_content("query_model"),
        "network": network,
        "weights": weights,
        "gate": load_image_gate(parser.get_parsed_content("image_gate")),
        "preprocessing": parser.get_parsed_content("preprocessing"),
        "organ_labels": {organ: [int(i) for i in ids] for organ, ids in organ_labels.items()},
        "version": ConfigParser.load_config_file(os.path.join(bundle_root, "configs", "metadata.json")).get("version"),
    }


def rank_map(label: np.ndarray, organ_labels: Mapping[str, Sequence[int]], ranking: Sequence[str]) -> np.ndarray:
    """uint8 map of ``label``'s shape: each organ's voxels carry the organ's rank (1 = most likely), 0 elsewhere."""
    ids = np.rint(np.asarray(label)).astype(np.int64)
    ranks = np.zeros(ids.shape, dtype=np.uint8)
    for rank, organ in enumerate(ranking, 1):
        ranks[np.isin(ids, organ_labels[organ])] = rank
    return ranks


class OrganQueryInfer(BasicInferTask):
    """Rank the seven organs for a symptom text on the patient's own CT.

    Request keys (MONAI Label ``params``): ``text`` (required), ``result_map`` (``probability``: float32 map, each
    organ's voxels carry its score; ``ranking``: uint8 map, each organ's voxels carry its rank, for viewers that
    read the result as a label map). The image is the uploaded ``file`` or a datastore image; the label map is the
    uploaded ``label``, the image's datastore label with tag ``organs``, or the output of the segmentation bundle.

    Args:
        bundle_root: the Med-SORA bundle directory.
        label_convention: label ids of the label maps (a name under the config's ``label_conventions``).
        segmenter: ``image path -> label map path`` used when a request brings no label map; ``None``: none.
    """

    def __init__(
        self, bundle_root: str, label_convention: str = "btcv", segmenter: Callable[[str, str], str] | None = None
    ) -> None:
        objects = bundle_objects(bundle_root, label_convention)
        self.query = objects["query"]
        self.image_network = objects["network"]
        self.gate = objects["gate"]
        self.preprocessing = objects["preprocessing"]
        self.organ_labels = objects["organ_labels"]
        self.label_convention = label_convention
        self.segmenter = segmenter
        self.version = objects["version"]
        super().__init__(
            path=objects["weights"],
            network=None,  # run_inferer below uses the bundle's network, loaded once here
            type=InferType.SEGMENTATION,
            labels=list(self.organ_labels),
            dimension=3,
            description="Med-SORA: rank the abdominal organs for a symptom text (params 'text') on this CT; returns "
            "the organ probability map and the ranking",
            config={"text": "", "result_map": list(RESULT_MAPS)},
        )

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "version": self.version,
            "label_convention": self.label_convention,
            "organ_labels": self.organ_labels,
        }

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return []  # the bundle's preprocessing runs per organ inside run_inferer

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    def __call__(self, request, callbacks=None):
        request = {**request, "result_extension": ".nii.gz"}  # also for DICOM series inputs, which have no suffix
        result_file, result = super().__call__(request, callbacks)
        if result.get("result_map") == "ranking":  # viewers name the label values after label_names
            result["label_names"] = {
                f"{organ} {result['scores'][organ]:.3f}": rank for organ, rank in result["rank_values"].items()
            }
        return result_file, result

    @staticmethod
    def _text(data: Mapping[str, Any]) -> str:
        from medsora.query import parse_query_lines

        ((_, error),) = parse_query_lines(json.dumps({"text": data.get("text")}).encode("utf-8"))
        if error is not None:
            raise invalid(f'params must hold "text": the symptom text to rank the organs for ({error}).')
        return data["text"]

    @staticmethod
    def _result_map(data: Mapping[str, Any]) -> str:
        value = data.get("result_map") or RESULT_MAPS[0]
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if value not in RESULT_MAPS:
            raise invalid(f'params "result_map" must be one of {list(RESULT_MAPS)}, got {value!r}.')
        return value

    def _label(self, data: dict[str, Any], device: str) -> str:
        label = data.get("label")
        if label:
            if not isinstance(label, str) or not os.path.exists(label):
                raise invalid(f"label map {label!r} does not exist on the server; {LABEL_HELP}.")
            data.setdefault("label_source", "request")
            return label
        if self.segmenter is None:
            raise invalid(f"no organ label map for image {data.get('image_path')!r}: {LABEL_HELP}.")
        data["label_source"] = "segmentation_bundle"
        try:
            return self.segmenter(data["image"], device)
        except (ValueError, FileNotFoundError) as e:
            raise invalid(f"segmentation of {data.get('image_path')!r} failed: {e}") from e

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        from medsora.display import organ_probability_map
        from medsora.image.datalist import image_grid
        from medsora.query import answer_queries, patient_organ_features

        text, result_map = self._text(data), self._result_map(data)
        image = data.get("image")
        if not isinstance(image, str) or not os.path.exists(image):
            raise invalid(
                f"image {image!r} not found: upload the CT as the multipart field 'file' or name a datastore image."
            )
        label = self._label(data, device)
        try:
            try:  # the patient's organs where the network reads them, the reference organs elsewhere
                patient = patient_organ_features(
                    self.query, self.image_network, self.preprocessing, image, label, self.gate, device
                )
            except (ValueError, FileNotFoundError) as e:
                raise invalid(f"CT {image} with label map {label}: {e}") from e
            label_image = LoadImage(image_only=True)(label)
        finally:
            if data["label_source"] == "segmentation_bundle":
                os.remove(label)
        (answer,) = answer_queries(self.query, [({"text": text}, None)], patient.features)
        patient.note(answer)

        labels, grid = np.asarray(label_image), image_grid(image)
        # the CT's voxel-to-RAS matrix (check_pair made the label map's equal); other formats: the label map's
        affine = grid[1] if grid is not None else np.asarray(label_image.affine, dtype=np.float64)
        if result_map == "probability":
            volume = organ_probability_map(labels, self.organ_labels, answer["scores"])
        else:
            volume = rank_map(labels, self.organ_labels, answer["ranking"])
        data["pred"] = MetaTensor(torch.as_tensor(volume), affine=torch.as_tensor(affine, dtype=torch.float64))
        data["result"] = {
            "text": text,
            "scores": answer["scores"],
            "ranking": answer["ranking"],
            "in_domain": answer["in_domain"],
            "p_abdominal": answer["p_abdominal"],
            "evidence": answer["evidence"],
            "image_features": answer["image_features"],
            "absent_organs": answer["absent_organs"],
            "cut_organs": answer["cut_organs"],
            "result_map": result_map,
            "label_source": data["label_source"],
            "label_convention": self.label_convention,
            "organ_labels": self.organ_labels,
        }
        if result_map == "ranking":
            data["result"]["rank_values"] = {organ: rank for rank, organ in enumerate(answer["ranking"], 1)}
        logger.info(f"Med-SORA ranking for {text[:80]!r}: {answer['ranking']}")
        return data
