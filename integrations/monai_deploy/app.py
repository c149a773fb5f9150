# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Med-SORA as a MONAI Deploy application: a symptom text and an abdominal CT with its organ segmentation in, the
organ ranking as a DICOM SR and the organ scores on the CT as a DICOM SEG (and NIfTI) out.

    python integrations/monai_deploy -i INPUT_DIR -o OUTPUT_DIR [-m bundle]

INPUT_DIR holds the CT series (DICOM), its organ segmentation (a DICOM SEG or one NIfTI label map) and
``symptoms.txt``; see README.md next to this file.
"""

import logging
import os
from pathlib import Path

from medsora_operators import (
    LABEL_CONVENTION_ENV,
    SELECTION_RULES,
    OrganProbabilitySegWriterOperator,
    OrganQueryOperator,
    check_label_convention,
    find_bundle,
    model_info,
)
from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_text_sr_writer_operator import DICOMTextSRWriterOperator, EquipmentInfo


class MedSoraApp(Application):
    """DICOM study -> CT and organ segmentation -> Med-SORA query -> DICOM SR + DICOM SEG (+ NIfTI, PNG, JSON)."""

    def compose(self):
        logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        app_context: AppContext = Application.init_app_context(self.argv)  # -i/-o/-m over HOLOSCAN_* variables
        input_path, output_path = Path(app_context.input_path), Path(app_context.output_path)
        bundle_root = find_bundle(app_context.model_path)
        convention = os.environ.get(LABEL_CONVENTION_ENV, "").strip() or "btcv"
        label_convention = check_label_convention(bundle_root, convention)
        info = model_info(bundle_root)
        logger.info(f"input {input_path}, output {output_path}, bundle {bundle_root}, labels {label_convention}")

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=input_path, name="study_loader")
        selector = DICOMSeriesSelectorOperator(
            self, rules=SELECTION_RULES, all_matched=True, sort_by_sop_instance_count=True, name="series_selector"
        )
        query = OrganQueryOperator(
            self,
            app_context=app_context,
            bundle_root=bundle_root,
            input_folder=input_path,
            output_folder=output_path,
            label_convention=label_convention,
            name="organ_query",
        )
        sr_writer = DICOMTextSRWriterOperator(
            self,
            copy_tags=True,  # Patient and Study modules of the CT: the SR joins the CT's study
            model_info=info,
            equipment_info=EquipmentInfo(manufacturer="Med-SORA", manufacturer_model="Med-SORA MONAI Deploy app"),
            custom_tags={"SeriesDescription": "Med-SORA organ ranking; research use only"},
            output_folder=output_path,
            name="sr_writer",
        )
        seg_writer = OrganProbabilitySegWriterOperator(
            self, output_folder=output_path, model_info=info, name="seg_writer"
        )

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, query, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(query, sr_writer, {("result_text", "text")})
        # the CT series comes first in the selection, so the SR copies the CT's study
        self.add_flow(selector, sr_writer, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(query, seg_writer, {("probability", "probability")})


if __name__ == "__main__":
    MedSoraApp().run()
