# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Med-SORA's part of the MONAI Deploy application: the symptom query on the selected CT, and its probability map
as a DICOM SEG.

Everything else (reading the DICOM study, picking the series, writing the SR) is done by the SDK's own operators in
``app.py``. The scoring is the library's ``medsora.query.run_query``, given the CT as a DICOM series directory and the
organ label map as NIfTI, exactly as ``python -m monai.bundle run query --image DIR --label FILE`` gets them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.core import AppContext, Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from monai.deploy.operators.dicom_seg_writer_operator import SegmentDescription
from monai.deploy.operators.dicom_utils import ModelInfo

__all__ = [
    "CT_SELECTION",
    "INFERENCE_CONFIG",
    "LABEL_CONVENTION_ENV",
    "SEG_SELECTION",
    "SELECTION_RULES",
    "SYMPTOMS_FILE",
    "OrganProbabilitySegWriterOperator",
    "OrganQueryOperator",
    "check_label_convention",
    "find_bundle",
    "model_info",
    "ranking_report",
    "read_symptom_text",
]

SYMPTOMS_FILE = "symptoms.txt"  # the symptom text, UTF-8, at the top of the input folder
LABEL_CONVENTION_ENV = "MEDSORA_LABEL_CONVENTION"  # btcv (default) or totalsegmentator
INFERENCE_CONFIG = Path("configs") / "inference.yaml"
REPO_BUNDLE = Path(__file__).resolve().parent.parent.parent / "bundle"  # used when no model path holds a bundle
NIFTI_SUFFIXES = (".nii", ".nii.gz")
CT_SELECTION, SEG_SELECTION = "CT", "Organ segmentation"
# DICOMSeriesSelectorOperator rules: every CT series and every DICOM SEG of the study (largest CT series first)
SELECTION_RULES = json.dumps(
    {
        "selections": [
            {"name": CT_SELECTION, "conditions": {"Modality": "(?i)^CT$"}},
            {"name": SEG_SELECTION, "conditions": {"Modality": "(?i)^SEG$"}},
        ]
    }
)
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MAX_FRACTIONAL_VALUE = 255  # a score s is stored as round(255 * s) in the SEG

_logger = logging.getLogger(__name__)


def find_bundle(model_path: str | os.PathLike | None) -> Path:
    """The Med-SORA bundle directory: ``model_path`` itself, its one subfolder holding a bundle (the layout
    ``monai-deploy package -m`` gives), or the repository's ``bundle/`` when ``model_path`` does not exist."""
    path = Path(model_path) if model_path else None
    if path is not None and path.exists():
        candidates = [path] + (sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else [])
        bundles = [c for c in candidates if (c / INFERENCE_CONFIG).is_file()]
        if bundles:
            return bundles[0].resolve()
        raise FileNotFoundError(
            f"model path {path} holds no Med-SORA bundle: expected {INFERENCE_CONFIG} in it or in one of its "
            "subfolders (pass the repository's bundle/ directory with -m)."
        )
    if (REPO_BUNDLE / INFERENCE_CONFIG).is_file():
        return REPO_BUNDLE
    raise FileNotFoundError(
        f"no Med-SORA bundle found: model path {model_path!r} does not exist and {REPO_BUNDLE} holds no "
        f"{INFERENCE_CONFIG}; pass the bundle directory with -m or HOLOSCAN_MODEL_PATH."
    )


def check_label_convention(bundle_root: Path, name: str) -> str:
    """``name`` if the bundle's inference config defines that label convention, else a clear error."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_root / INFERENCE_CONFIG))
    available = list(parser.get("label_conventions") or {})
    if name not in available:
        raise ValueError(
            f"{LABEL_CONVENTION_ENV}={name!r} is not a label convention of the bundle {bundle_root}; available: "
            f"{', '.join(available)}."
        )
    return name


def model_info(bundle_root: Path) -> ModelInfo:
    """The bundle's name and version for the Contributing Equipment Sequence of the outputs."""
    with open(bundle_root / "configs" / "metadata.json", encoding="utf-8") as f:
        metadata = json.load(f)
    return ModelInfo(str(metadata.get("authors", "")), "Med-SORA", str(metadata.get("version", "")), "")


def read_symptom_text(input_folder: Path) -> str:
    """The symptom text in ``<input>/symptoms.txt``; a clear error when it is missing, empty or not UTF-8."""
    path = Path(input_folder) / SYMPTOMS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no symptom text: put the patient's symptoms, as UTF-8 text, in {path} (the input folder's "
            f"{SYMPTOMS_FILE})."
        )
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}).") from e
    if not text:
        raise ValueError(f"no symptom text: {path} is empty.")
    return text


def ranking_report(
    answer: Mapping[str, Any],
    text: str,
    threshold: float,
    ct_series_uid: str,
    segmentation: str,
    label_convention: str,
) -> str:
    """The SR's text: the symptom text, whether it is abdominal, every organ's score by rank, the corpus texts
    behind the top organs, and the sources.

    One ``<rank>. <organ>: <score>`` line per organ, best first; scores are the query's, in [0, 1]. Each evidence
    line is ``- <organ>: "<corpus text>" (similarity, lexical similarity, source and identifier)``.
    """
    from medsora.query.printout import format_evidence

    verdict = "yes" if answer["in_domain"] else "no (no abdominal organ is indicated)"
    lines = [
        "Med-SORA symptom-to-organ ranking. Research use only; not for diagnostic use.",
        f"Symptoms: {text}",
        f"Abdominal (in domain): {verdict}; P(abdominal) {answer['p_abdominal']:.3f}, threshold {threshold:.3f}",
        "Organ ranking (score in [0, 1], higher is more likely):",
    ]
    lines += [f"{rank}. {organ}: {answer['scores'][organ]:.6f}" for rank, organ in enumerate(answer["ranking"], 1)]
    evidence = answer.get("evidence") or []
    if evidence:
        lines.append("Evidence (symptom corpus texts most like these symptoms, for the top organs):")
        lines += [f"- {item['organ']}: {format_evidence(item, width=None)}" for item in evidence]
    absent = answer.get("absent_organs") or []
    cut = answer.get("cut_organs") or []
    misread = [
        f"{organ} (read as {seen['predicted']}, {seen['confidence']:.2f})"
        for organ, seen in (answer.get("image_features") or {}).items()
        if seen["source"] == "reference" and seen["predicted"] is not None
    ]
    lines += [
        f"Organs absent from the segmentation (reference score): {', '.join(absent) if absent else 'none'}",
        "Organs the image network does not recognise on this CT (reference score): "
        + (", ".join(misread) if misread else "none"),
        f"Organs cut by the edge of the scan: {', '.join(cut) if cut else 'none'}",
        f"CT series: {ct_series_uid}",
        f"Organ segmentation: {segmentation} (label convention {label_convention})",
    ]
    return "\n".join(lines)


def _selected(study_selected_series_list: Sequence[StudySelectedSeries], name: str) -> list[DICOMSeries]:
    if not study_selected_series_list:
        return []
    return [s.series for s in study_selected_series_list[0].selected_series if s.selection_name == name]


def _datasets(series: DICOMSeries) -> list[Any]:
    return [sop.get_native_sop_instance() for sop in series.get_sop_instances()]


def _referenced_series(seg: Any) -> set[str]:
    return {str(item.SeriesInstanceUID) for item in getattr(seg, "ReferencedSeriesSequence", [])}


class OrganQueryOperator(Operator):
    """Scores the seven organs for the symptom text on the selected CT and its organ segmentation.

    Named input:
        study_selected_series_list: from ``DICOMSeriesSelectorOperator`` with :data:`SELECTION_RULES`; the first
            CT series is queried, with the DICOM SEG among the selected ones that references it (or the one NIfTI
            label map in the input folder).

    Named outputs:
        result_text: the ranking as text (:func:`ranking_report`), for ``DICOMTextSRWriterOperator``.
        probability: the label map and affine on the CT's grid, the scores and the CT's datasets, for
            :class:`OrganProbabilitySegWriterOperator`.

    File outputs (``output_folder``): ``organ_probability.nii.gz`` (each organ's voxels carry its score, on the
    CT's grid and affine), ``organ_probability.png``, the 3D view ``organ_probability_3d.png`` and
    ``organ_probability_3d.html``, and ``ranking.json`` (the query's answer and its sources).
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        app_context: AppContext,
        bundle_root: Path,
        input_folder: Path,
        output_folder: Path,
        label_convention: str = "btcv",
        **kwargs: Any,
    ) -> None:
        self.app_context = app_context
        self.bundle_root = Path(bundle_root)
        self.input_folder, self.output_folder = Path(input_folder), Path(output_folder)
        self.label_convention = label_convention
        self._models: dict[str, Any] | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study_selected_series_list")
        spec.output("result_text")
        spec.output("probability")

    def models(self) -> dict[str, Any]:
        """The bundle's query model, image network and preprocessing, parsed from its inference config once."""
        if self._models is None:
            from monai.bundle import ConfigParser

            from medsora.literal_options import literal_overrides

            parser = ConfigParser()
            parser.read_config(str(self.bundle_root / INFERENCE_CONFIG))
            parser.update(literal_overrides(bundle_root=str(self.bundle_root), label_convention=self.label_convention))
            names = ("query_model", "network_def", "preprocessing", "organ_labels", "ckpt_dir", "device", "image_gate")
            self._models = {name: parser.get_parsed_content(name) for name in names}
            _logger.info(f"Med-SORA bundle {self.bundle_root} loaded (label convention {self.label_convention}).")
        return self._models

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        selected = op_input.receive("study_selected_series_list")
        text = read_symptom_text(self.input_folder)
        ct_series = _selected(selected, CT_SELECTION)
        if not ct_series:
            raise ValueError(f"no CT series (Modality CT) among the DICOM files in {self.input_folder}.")
        ct = ct_series[0]
        ct_datasets = sorted(_datasets(ct), key=lambda ds: int(ds.get("InstanceNumber", 0) or 0))
        seg = self._segmentation(_selected(selected, SEG_SELECTION), ct)
        models = self.models()  # inputs are checked: load the bundle once
        with tempfile.TemporaryDirectory(prefix="medsora_", dir=self.app_context.workdir or None) as work:
            work_dir = Path(work)
            ct_dir = self._series_directory(ct_datasets, work_dir / "ct")
            label_path, source = self._label_map(seg, ct, ct_dir, work_dir)
            answer = self._query(text, ct_dir, label_path, work_dir / "maps")
            label, affine = self._load_label(label_path)
            self._write_files(answer, text, ct, source)
        report = ranking_report(
            answer, text, models["query_model"].threshold, str(ct.SeriesInstanceUID), source, self.label_convention
        )
        op_output.emit(report, "result_text")
        op_output.emit(
            {
                "label": label,
                "affine": affine,
                "scores": answer["scores"],
                "organ_labels": dict(models["organ_labels"]),
                "ct_datasets": ct_datasets,
            },
            "probability",
        )

    def _segmentation(self, seg_series: list[DICOMSeries], ct: DICOMSeries) -> Any:
        """The organ segmentation: the DICOM SEG referencing the CT, or the one NIfTI label map of the input."""
        segs = [ds for series in seg_series for ds in _datasets(series)]
        segs = [ds for ds in segs if ds.get("SOPClassUID") == SEGMENTATION_STORAGE]
        if len(segs) > 1:
            segs = [ds for ds in segs if str(ct.SeriesInstanceUID) in _referenced_series(ds)] or segs
        niftis = sorted(p for p in self.input_folder.rglob("*") if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
        if segs and niftis:
            raise ValueError(
                f"{self.input_folder} holds both a DICOM SEG and NIfTI label map(s) ({', '.join(map(str, niftis))}); "
                "keep one organ segmentation."
            )
        if len(segs) > 1:
            raise ValueError(
                f"{self.input_folder} holds {len(segs)} DICOM SEG instances and none, or several, reference CT series "
                f"{ct.SeriesInstanceUID}; keep one."
            )
        if len(niftis) > 1:
            raise ValueError(
                f"{self.input_folder} holds {len(niftis)} NIfTI files ({', '.join(map(str, niftis))}); keep the one "
                "organ label map."
            )
        if not segs and not niftis:
            raise FileNotFoundError(
                f"no organ segmentation in {self.input_folder}: add a DICOM SEG of the CT's organs (segment numbers "
                f"are label ids) or one NIfTI label map (*.nii.gz) on the CT's grid, with {self.label_convention} "
                f"label ids (set {LABEL_CONVENTION_ENV}=totalsegmentator for TotalSegmentator ids)."
            )
        return segs[0] if segs else niftis[0]

    @staticmethod
    def _series_directory(datasets: list[Any], out_dir: Path) -> Path:
        """A directory holding only the CT's files (links), so ITK reads exactly this series."""
        out_dir.mkdir(parents=True)
        for index, ds in enumerate(datasets):
            target, link = Path(ds.filename).resolve(), out_dir / f"{index:05d}.dcm"
            try:
                link.symlink_to(target)
            except OSError:
                shutil.copyfile(target, link)
        return out_dir

    def _label_map(self, seg: Any, ct: DICOMSeries, ct_dir: Path, work_dir: Path) -> tuple[Path, str]:
        """The label map as a file ``run_query`` reads, and how the SR names its source."""
        if isinstance(seg, Path):
            return seg, f"NIfTI label map {seg.name}"
        import highdicom as hd
        import nibabel as nib

        from medsora.image.datalist import image_grid

        if seg.get("FrameOfReferenceUID") != ct.get_sop_instances()[0].get_native_sop_instance().get(
            "FrameOfReferenceUID"
        ):
            raise ValueError("the DICOM SEG is not in the CT's frame of reference (FrameOfReferenceUID differs).")
        shape, affine = image_grid(str(ct_dir))  # the grid and RAS affine LoadImage gives the CT
        geometry = hd.VolumeGeometry(affine, shape, "PATIENT", from_reference_convention="RAS")
        try:
            volume = hd.seg.Segmentation.from_dataset(seg).get_volume(combine_segments=True, relabel=False)
            label = volume.match_geometry(geometry).array
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"the DICOM SEG {seg.SOPInstanceUID} cannot be read as a label map on the CT's grid (segments must "
                f"not overlap and frames must lie on CT slices): {e}"
            ) from e
        path = work_dir / "labels_from_seg.nii.gz"
        image = nib.Nifti1Image(np.asarray(label, dtype=np.int16), affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        nib.save(image, path)
        return path, f"DICOM SEG {seg.SOPInstanceUID}"

    def _query(self, text: str, ct_dir: Path, label_path: Path, maps_dir: Path) -> dict[str, Any]:
        from monai.utils import set_determinism

        from medsora.query import run_query

        models = self.models()
        set_determinism(seed=0)  # as the bundle's `query` workflow does
        (answer,) = run_query(
            models["query_model"],
            text=text,
            image=str(ct_dir),
            label=str(label_path),
            maps_dir=str(maps_dir),
            organ_labels=models["organ_labels"],
            image_network=models["network_def"],
            image_weights=os.path.join(models["ckpt_dir"], "model.pt"),
            preprocessing=models["preprocessing"],
            device=models["device"],
            image_gate=models["image_gate"],
        )
        return answer

    @staticmethod
    def _load_label(label_path: Path) -> tuple[np.ndarray, np.ndarray]:
        """The label map and its RAS affine as ``run_query`` reads them for the probability map."""
        from monai.transforms import LoadImage

        label = LoadImage(image_only=True)(str(label_path))
        return np.asarray(label), np.asarray(label.affine, dtype=np.float64)

    def _write_files(self, answer: dict[str, Any], text: str, ct: DICOMSeries, source: str) -> None:
        """Copy the probability map and picture into the output folder and write the answer as ``ranking.json``, each
        atomically: a rerun into the same folder never leaves a half-written file beside complete ones."""
        from medsora.atomic_io import atomic_write, write_json_atomic

        files = {
            "probability_map": "organ_probability.nii.gz",
            "figure": "organ_probability.png",
            "figure_3d": "organ_probability_3d.png",
            "view_3d": "organ_probability_3d.html",
        }
        for key, name in files.items():
            atomic_write(str(self.output_folder / name), lambda tmp, source=answer[key]: shutil.copyfile(source, tmp))
            answer[key] = name
        native = ct.get_sop_instances()[0].get_native_sop_instance()
        record = {
            **answer,
            "text": text,
            "study_instance_uid": str(native.StudyInstanceUID),
            "ct_series_instance_uid": str(ct.SeriesInstanceUID),
            "segmentation": source,
            "label_convention": self.label_convention,
            "bundle": str(self.bundle_root),
        }
        write_json_atomic(str(self.output_folder / "ranking.json"), record)


# SNOMED CT codes of the seven organs, in the bundle's class order
ORGAN_CODES = {
    "liver": ("10200004", "Liver"),
    "pancreas": ("15776009", "Pancreas"),
    "kidney": ("64033007", "Kidney"),
    "gallbladder": ("28231008", "Gallbladder"),
    "spleen": ("78961009", "Spleen"),
    "stomach": ("69695003", "Stomach"),
    "adrenal_gland": ("23451007", "Adrenal gland"),
}


class OrganProbabilitySegWriterOperator(Operator):
    """Writes the organ scores on the CT as a FRACTIONAL (probability) DICOM SEG, one segment per organ.

    Segment ``i`` is organ ``i`` of the bundle (liver, pancreas, kidney, gallbladder, spleen, stomach,
    adrenal_gland); its pixels hold the organ's score on the organ's voxels and 0 elsewhere, stored as
    ``round(255 * score)`` (``MaximumFractionalValue`` 255). The SEG references the CT's instances and shares
    its study and frame of reference.

    Named input:
        probability: from :class:`OrganQueryOperator`.
    """

    DCM_EXTENSION = ".dcm"

    def __init__(self, fragment: Fragment, *args: Any, output_folder: Path, model_info: ModelInfo, **kwargs: Any):
        self.output_folder = Path(output_folder)
        self.model_info = model_info
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("probability")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        path = self.write(op_input.receive("probability"))
        _logger.info(f"Organ probability SEG saved in {path}")

    def write(self, probability: Mapping[str, Any]) -> Path:
        import highdicom as hd
        from pydicom.sr.codedict import codes
        from pydicom.sr.coding import Code
        from pydicom.uid import JPEGLSLossless

        from medsora.display import organ_probability_map

        organ_labels, scores = probability["organ_labels"], probability["scores"]
        ct_datasets = probability["ct_datasets"]
        label = np.asarray(probability["label"])
        channels = [
            organ_probability_map(label, {organ: organ_labels[organ]}, {organ: scores[organ]}) for organ in organ_labels
        ]
        # LoadImage's (x, y, z) order with a RAS affine; as (z, y, x) the frames are the CT's slices, rows and columns
        volume = hd.Volume(
            np.stack(channels, axis=-1),
            np.asarray(probability["affine"], dtype=np.float64),
            "PATIENT",
            frame_of_reference_uid=ct_datasets[0].FrameOfReferenceUID,
            channels={"SegmentNumber": list(range(1, len(channels) + 1))},
            from_reference_convention="RAS",
        ).permute_spatial_axes([2, 1, 0])
        descriptions = []
        for number, organ in enumerate(organ_labels, 1):
            value, meaning = ORGAN_CODES.get(organ, ("91772007", "Organ"))
            descriptions.append(
                SegmentDescription(
                    segment_label=organ,
                    segmented_property_category=codes.SCT.Organ,
                    segmented_property_type=Code(value, "SCT", meaning),
                    algorithm_name="Med-SORA",
                    algorithm_version=self.model_info.version or "0",
                ).to_segment_description(number)
            )
        uid = hd.UID()
        seg = hd.seg.Segmentation(
            source_images=[_source_metadata(ds) for ds in ct_datasets],
            pixel_array=volume,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=9901,
            sop_instance_uid=uid,
            instance_number=1,
            manufacturer=self.model_info.creator or "Med-SORA",
            manufacturer_model_name="Med-SORA",
            software_versions=self.model_info.version or "0",
            device_serial_number="0000",
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=MAX_FRACTIONAL_VALUE,
            content_label="ORGAN_SCORES",
            transfer_syntax_uid=JPEGLSLossless,  # lossless, several times smaller than native for these sparse maps
            content_description="Med-SORA organ scores for the symptom text",
            series_description="Med-SORA organ scores; research use only",
        )
        self.output_folder.mkdir(parents=True, exist_ok=True)
        path = self.output_folder / f"{uid}{self.DCM_EXTENSION}"
        seg.save_as(path)
        return path


# Type 2 Patient and Study attributes highdicom copies from the source images; a CT may lack them
TYPE2_SOURCE_ATTRIBUTES = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _source_metadata(ds: Any) -> Any:
    """A CT instance's attributes without its pixel data (all a SEG needs from it), Type 2 ones present."""
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    meta = Dataset()
    pixel_data = Tag("PixelData")
    for element in ds:
        if element.tag != pixel_data:
            meta.add(element)
    if hasattr(ds, "file_meta"):
        meta.file_meta = ds.file_meta
    for keyword in TYPE2_SOURCE_ATTRIBUTES:
        if keyword not in meta:
            setattr(meta, keyword, "")
    return meta
