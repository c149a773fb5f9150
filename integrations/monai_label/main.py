# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""MONAI Label app serving the Med-SORA bundle: CT + organ label map + symptom text -> organ probability map + ranking.

    monailabel start_server --app integrations/monai_label --studies STUDIES_DIR \\
        [--conf bundle_root BUNDLE_DIR] [--conf label_convention btcv|totalsegmentator] \\
        [--conf segmentation_bundle SEGMENTATION_BUNDLE_DIR]

See README.md next to this file for the requests and for 3D Slicer.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import HTTPException
from lib.infers.organ_query import OrganQueryInfer
from lib.infers.segmentation import BundleSegmenter
from monai.bundle import ConfigParser
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask

logger = logging.getLogger(__name__)

#: the name of the infer task: POST /infer/med_sora
MODEL = "med_sora"
#: datastore label tag of the organ label maps (STUDIES/labels/organs/<CT file name>); not "final", which marks an
#: image as annotated and hides it from "Next Sample"
ORGAN_LABEL_TAG = "organs"


class MedSoraApp(MONAILabelApp):
    """The app: one infer task, ``med_sora``; the bundle's models are loaded once, here.

    ``--conf`` keys: ``bundle_root`` (default: the repository's ``bundle/``, two directories above this app),
    ``label_convention`` (default ``btcv``), ``segmentation_bundle`` (optional: segments the organs of CTs that come
    without a label map).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        default_bundle = os.path.join(app_dir, os.pardir, os.pardir, "bundle")
        self.bundle_root = os.path.realpath(conf.get("bundle_root") or default_bundle)
        self.label_convention = conf.get("label_convention") or "btcv"
        self.segmentation_bundle = conf.get("segmentation_bundle") or None
        metadata = os.path.join(self.bundle_root, "configs", "metadata.json")
        version = ConfigParser.load_config_file(metadata).get("version") if os.path.isfile(metadata) else None
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="Med-SORA",
            description="Symptom-to-organ reasoning on abdominal CT: organ probability map and ranking for a symptom "
            "text",
            version=version or "unknown",
        )

    def init_infers(self) -> dict[str, InferTask]:
        segmenter = BundleSegmenter(self.segmentation_bundle) if self.segmentation_bundle else None
        task = OrganQueryInfer(self.bundle_root, self.label_convention, segmenter)
        logger.info(
            f"Med-SORA bundle {self.bundle_root} (version {task.version}), label convention "
            f"{self.label_convention}, segmentation bundle {self.segmentation_bundle}"
        )
        return {MODEL: task}

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """MONAI Label's infer, plus: a datastore image's label with tag ``organs`` is its organ label map, and a
        request the task refuses is answered with HTTP 422 and the reason (MONAI Label would answer 500)."""
        request = dict(request)
        if request.get("label"):
            request.setdefault("label_source", "request")
        else:
            datastore = datastore if datastore else self.datastore()
            image = request.get("image")
            label_id = (
                datastore.get_label_by_image_id(image, ORGAN_LABEL_TAG)
                if isinstance(image, str) and image and not os.path.exists(image)
                else ""
            )
            if label_id:
                request["label"] = datastore.get_label_uri(label_id, ORGAN_LABEL_TAG)
                request["label_source"] = "datastore"
        try:
            return super().infer(request, datastore)
        except MONAILabelException as e:
            if e.error == MONAILabelError.INVALID_INPUT:
                raise HTTPException(status_code=422, detail=e.msg) from e
            raise
