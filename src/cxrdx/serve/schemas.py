"""Typed request / response bodies of the REST API (they also make the OpenAPI docs)."""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel, Field, field_validator

DISCLAIMER = "Research tool, not a diagnosis. Not validated for clinical use."


class PredictResponse(BaseModel):
    predicted: str = Field(description="Class with the highest probability.")
    probabilities: dict[str, float] = Field(description="Softmax probability per class; they sum to 1.")
    model_id: str = Field(examples=["tf_efficientnet_lite0+bilstm"])
    model_version: str = Field(description="sha256: prefix of the model files' hash.", examples=["sha256:0123456789abcdef"])
    runtime: str = Field(examples=["onnx"])
    input_sha256: str = Field(description="SHA-256 of the uploaded bytes (the audit log's key).")
    latency_ms: float = Field(description="Server time from receiving the upload to the answer.")
    roi: dict | None = Field(None, description="Region of interest the model saw (``data.roi`` it was trained "
                             "with): roi, applied, box [x0, y0, x1, y1], intensity, fallback; null for whole-image models.")
    roi_fallback: bool = Field(False, description="True when no lungs were found and the whole image was used.")
    disclaimer: str = DISCLAIMER


class ExplainResponse(PredictResponse):
    method: str = Field(examples=["gradcam"])
    overlay_png_base64: str = Field(description="Grad-CAM heat map over the image, PNG, base64.")


class ErrorBody(BaseModel):
    code: str = Field(examples=["not_an_image"])
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ModelDescription(BaseModel):
    id: str
    version: str
    run: str
    backbone: str
    head: str
    classes: list[str]
    image_size: int
    runtime: str
    explain: bool = Field(description="Whether /v1/explain (Grad-CAM) is available.")
    modality: str = Field("xray", description="What the model reads: xray, ct (xray+ct for a joint model).")
    guard: bool = Field(False, description="Whether an input guard refuses non-chest images (422 not_a_chest_image).")


class ModelsResponse(BaseModel):
    models: list[ModelDescription]


class HealthResponse(BaseModel):
    status: str = "ok"
    model_id: str
    model_version: str
    audit_backend: str


class AuditEntry(BaseModel):
    """One served prediction as the audit log stores it: no image, no file name, no patient data."""

    endpoint: str
    model_id: str
    model_version: str
    runtime: str
    input_sha256: str
    input_bytes: int
    predicted: str
    probabilities: dict[str, float]
    latency_ms: float
    client: str


class AuditRecord(AuditEntry):
    """An :class:`AuditEntry` as read back from the log (``GET /v1/predictions``)."""

    id: int
    created_at: datetime

    model_config = {"from_attributes": True}

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        """Times are stored in UTC; SQLite hands them back without a zone."""
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class PredictionsPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[AuditRecord]
