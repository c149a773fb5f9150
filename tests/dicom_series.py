"""Phantom CTs and label maps written as DICOM series, for the tests that read DICOM input."""

import os

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM patient coordinates are LPS, NIfTI's are RAS


def write_dicom_series(
    array: np.ndarray, affine: np.ndarray, out_dir: str, intercept: float = -1024.0, compressed: bool = False
) -> None:
    """One CT Image Storage file per axial slice of ``array`` (X, Y, Z) placed by the RAS ``affine``; ``compressed``
    stores the pixel data RLE Lossless (smaller than the uncompressed pixels, as real scanners' JPEG files are).

    Files are named in reverse slice order, so a reader must sort the slices by ImagePositionPatient.
    """
    os.makedirs(out_dir)
    lps = LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    cosines = lps[:3, :3] / spacing
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    stored = np.round(array.astype(np.float64) - intercept).astype(np.int16)
    for k in range(array.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "phantom", "Phantom^Abdomen"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*cosines[:, 0], *cosines[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # between rows (y), between columns (x)
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", f"{intercept:g}", "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows run along y, columns along x
        if compressed:
            ds.compress(RLELossless)
        ds.save_as(os.path.join(out_dir, f"IM{array.shape[2] - k:04d}.dcm"), enforce_file_format=True)
