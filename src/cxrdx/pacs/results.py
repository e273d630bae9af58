"""The DICOM objects a result goes back to the PACS as: a Comprehensive SR and a Grad-CAM Secondary Capture.

Both are built with highdicom, which copies the patient and study attributes
from the source image, checks the IOD's required attributes while it builds,
and gives every object new Series / SOP Instance UIDs. Both carry the
research-use disclaimer; neither holds anything the source did not.

Why a Secondary Capture and not a Grayscale Softcopy Presentation State: a
GSPS can only draw 1-bit overlays and vector graphics on top of the image in
grey, so a continuous colour heatmap cannot be expressed in it; an RGB SC is
shown by every viewer and PACS (including Orthanc Explorer's preview) with no
support for presentation states needed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from PIL import Image
from pydicom.dataset import Dataset

DISCLAIMER = "cxrdx research use only - not a medical device, not for diagnosis"
MANUFACTURER = "cxrdx"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
SR_SERIES_DESCRIPTION = "cxrdx AI result (research use only)"
SC_SERIES_DESCRIPTION = "cxrdx Grad-CAM overlay (research use only)"

# The classes as SNOMED CT concepts where one exists; anything else gets a code in cxrdx's private scheme.
CLASS_CODES = {
    "covid": CodedConcept("840539006", "SCT", "COVID-19"),
    "pneumonia": CodedConcept("233604007", "SCT", "Pneumonia"),
    "normal": CodedConcept("17621005", "SCT", "Normal"),
}
PRIVATE_SCHEME = "99CXRDX"


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


def class_code(name: str) -> CodedConcept:
    return CLASS_CODES.get(name) or _private(f"CLASS-{name}"[:16], name)


ROOT = CodedConcept("18748-4", "LN", "Diagnostic imaging report")
FINDING = CodedConcept("121071", "DCM", "Finding")
ALGORITHM_NAME = CodedConcept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = CodedConcept("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = CodedConcept("111002", "DCM", "Algorithm Parameters")
SOURCE_IMAGE = CodedConcept("121112", "DCM", "Source of Measurement")
OPERATING_POINT = _private("OPERATING-POINT", "Operating point")
DISCLAIMER_CONCEPT = _private("DISCLAIMER", "Disclaimer")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
CODING_SCHEME = {"CodingSchemeDesignator": PRIVATE_SCHEME, "CodingSchemeName": "cxrdx result codes",
                 "CodingSchemeResponsibleOrganization": "cxrdx"}


@dataclass(frozen=True)
class OperatingPoint:
    """How the predicted class is chosen: the highest probability, plus an optional covid flag threshold."""

    covid_threshold: float | None = None

    def describe(self) -> str:
        rule = "predicted class = highest probability"
        if self.covid_threshold is None:
            return rule
        return f"{rule}; covid flagged when P(covid) >= {self.covid_threshold:.4f}"


@dataclass
class ResultObjects:
    """What one source image produces (``datasets`` in the order they are stored)."""

    report: Dataset
    overlay: Dataset | None = None
    files: dict[str, object] = field(default_factory=dict)

    @property
    def datasets(self) -> list[Dataset]:
        return [self.report] + ([self.overlay] if self.overlay is not None else [])


def derived_uid(source: Dataset, level: str, kind: str, model_version: str) -> str:
    """A UID that is the same every time this model makes this ``kind`` of object for this source.

    ``level`` is ``"series"`` (one result series per source series) or ``"instance"``.
    Re-sending an object after a crash then stores nothing new (``AlreadyStored``).
    """
    key = source.SeriesInstanceUID if level == "series" else source.SOPInstanceUID
    return pydicom.uid.generate_uid(entropy_srcs=["cxrdx", kind, level, str(key), model_version])


def _item_with_scheme(ds: Dataset) -> None:
    item = Dataset()
    for k, v in CODING_SCHEME.items():
        setattr(item, k, v)
    ds.CodingSchemeIdentificationSequence = [item]


def _instance_number(source: Dataset) -> int:
    try:
        return max(1, int(source.get("InstanceNumber") or 1))
    except (TypeError, ValueError):
        return 1


def build_report(
    source: Dataset,
    probabilities: dict[str, float],
    *,
    model_id: str,
    model_version: str,
    run_name: str = "",
    operating_point: OperatingPoint = OperatingPoint(),
) -> hd.sr.ComprehensiveSR:
    """Comprehensive SR: finding (predicted class), one probability per class, model, operating point, disclaimer.

    ``source`` is the analysed image's dataset (pixel data not needed); the SR
    references it as evidence and as an IMAGE content item.
    """
    if not probabilities:
        raise ValueError("no probabilities to report")
    predicted = max(probabilities, key=probabilities.get)
    root = hd.sr.ContainerContentItem(name=ROOT)
    items = [
        hd.sr.TextContentItem(DISCLAIMER_CONCEPT, DISCLAIMER, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(ALGORITHM_NAME, model_id, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(ALGORITHM_VERSION, model_version, relationship_type="CONTAINS"),
    ]
    if run_name:
        items.append(hd.sr.TextContentItem(ALGORITHM_PARAMETERS, f"run {run_name}", relationship_type="CONTAINS"))
    items.append(hd.sr.TextContentItem(OPERATING_POINT, operating_point.describe(), relationship_type="CONTAINS"))
    items.append(hd.sr.ImageContentItem(SOURCE_IMAGE, source.SOPClassUID, source.SOPInstanceUID, relationship_type="CONTAINS"))
    items.append(hd.sr.CodeContentItem(FINDING, class_code(predicted), relationship_type="CONTAINS"))
    for name, p in probabilities.items():
        items.append(hd.sr.NumContentItem(_private(f"PROB-{name}"[:16], f"Probability of {name}"), float(p), NO_UNITS,
                                          relationship_type="CONTAINS"))
    if operating_point.covid_threshold is not None and "covid" in probabilities:
        flagged = probabilities["covid"] >= operating_point.covid_threshold
        flag = CodedConcept("373066001", "SCT", "Yes") if flagged else CodedConcept("373067005", "SCT", "No")
        items.append(hd.sr.CodeContentItem(_private("COVID-FLAG", "Covid flagged at operating point"), flag,
                                           relationship_type="CONTAINS"))
    root.ContentSequence = hd.sr.ContentSequence(items, is_root=False)
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=root, series_instance_uid=derived_uid(source, "series", "sr", model_version),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=derived_uid(source, "instance", "sr", model_version),
        instance_number=_instance_number(source), manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False, series_description=SR_SERIES_DESCRIPTION,
    )
    _item_with_scheme(sr)
    return sr


def build_overlay(
    source: Dataset, overlay: Image.Image, *, model_version: str,
) -> hd.sc.SCImage:
    """RGB Secondary Capture of the overlay (heatmap over the X-ray, caption with the disclaimer burned in)."""
    pixels = np.ascontiguousarray(np.asarray(overlay.convert("RGB"), dtype=np.uint8))
    orientation = source.get("PatientOrientation")
    valid = orientation is not None and len(orientation) == 2 and all(orientation)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=derived_uid(source, "series", "sc", model_version),
        series_number=SC_SERIES_NUMBER, sop_instance_uid=derived_uid(source, "instance", "sc", model_version),
        instance_number=_instance_number(source), manufacturer=MANUFACTURER,
        patient_orientation=tuple(orientation) if valid else ("L", "F"),
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
    )
    if not valid:
        sc.PatientOrientation = ""  # type 2: unknown rather than invented
    sc.Laterality = source.get("Laterality", "")  # type 2C; empty = not a paired structure / unknown
    sc.SeriesDescription = SC_SERIES_DESCRIPTION
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = f"Grad-CAM heatmap over the source image; {DISCLAIMER}"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def report_values(sr: Dataset) -> dict:
    """Read back what :func:`build_report` wrote: ``{"predicted", "probabilities", "model_id", ...}``."""
    out: dict = {"probabilities": {}}
    for item in sr.ContentSequence:
        meaning = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "NUM":
            value = float(item.MeasuredValueSequence[0].NumericValue)
            out["probabilities"][meaning.removeprefix("Probability of ")] = value
        elif item.ValueType == "TEXT":
            out[meaning] = item.TextValue
        elif item.ValueType == "CODE":
            code = item.ConceptCodeSequence[0]
            out[meaning] = code.CodeMeaning
            if meaning == FINDING.meaning:
                out["predicted"] = next((k for k, c in CLASS_CODES.items() if c.value == code.CodeValue), code.CodeMeaning)
        elif item.ValueType == "IMAGE":
            out["source_sop_instance_uid"] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return out


__all__ = ["DISCLAIMER", "OperatingPoint", "ResultObjects", "build_overlay", "build_report", "class_code", "derived_uid",
           "report_values", "to_bytes"]
