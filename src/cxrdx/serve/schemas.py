"""Typed request / response bodies of the REST API (they also make the OpenAPI docs)."""

from __future__ import annotations

from datetime import datetime, timezone

from typing import Literal

from pydantic import BaseModel, Field, field_validator

DISCLAIMER = "Research tool, not a diagnosis. Not validated for clinical use."


class RoutingInfo(BaseModel):
    """Why this model answered (``cxrdx serve`` with several models routes each upload by the input guard)."""

    by: Literal["guard", "request", "only_model"] = Field(
        description="guard: the input guard's verdict chose the model; request: the request named it (model=); "
                    "only_model: the server holds one model and no guard.")
    modality: str | None = Field(None, description="The modality the input guard read the upload as (null: no guard asked).")
    scores: dict[str, float] | None = Field(None, description="Guard distance / threshold per modality (<= 1: accepted).")


class PredictResponse(BaseModel):
    predicted: str = Field(description="Class with the highest probability.")
    probabilities: dict[str, float] = Field(description="Softmax probability per class; they sum to 1.")
    model_id: str = Field(examples=["tf_efficientnet_lite0+bilstm"])
    model_version: str = Field(description="sha256: prefix of the model files' hash.", examples=["sha256:0123456789abcdef"])
    model_run: str = Field(description="The answering model's run name (what model= selects).", examples=["xray-v3"])
    modality: str = Field(description="What the answering model reads: xray, ct (xray+ct for a joint model).", examples=["xray"])
    routing: RoutingInfo
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
    id: str = Field(description="backbone+head (two served models may share it; ``run`` tells them apart).")
    version: str
    run: str = Field(description="The run folder's name: what a request's model= selects.")
    backbone: str
    head: str
    classes: list[str]
    image_size: int
    runtime: str
    explain: bool = Field(description="Whether /v1/explain (Grad-CAM) is available.")
    modality: str = Field("xray", description="What the model reads: xray, ct (xray+ct for a joint model).")
    guard: bool = Field(False, description="Whether an input guard refuses non-chest images (422 not_a_chest_image).")
    guard_modalities: list[str] = Field(default_factory=list, description="The modalities this run's guard knows.")
    routes: bool = Field(False, description="Whether this run's guard routes uploads between the served models.")
    roi: dict | None = Field(None, description="Region of interest the model was trained with (roi, intensity, "
                             "margin, fit); null: the whole image.")


class ModelsResponse(BaseModel):
    models: list[ModelDescription]
    routing: Literal["guard", "request", "only_model"] = Field(
        "only_model", description="How an upload finds its model: guard (the input guard's verdict; a request may "
                                  "still name one with model=), request (model= is needed), only_model.")


class HealthResponse(BaseModel):
    status: str = "ok"
    model_id: str = Field(description="The first served model's id (see ``models`` and /v1/models for all).")
    model_version: str
    audit_backend: str
    models: list[str] = Field(default_factory=list, description="Run names of all served models.")


class AuditEntry(BaseModel):
    """One served prediction as the audit log stores it: no image, no file name, no patient data."""

    endpoint: str
    model_id: str
    model_version: str
    model_run: str | None = Field(None, description="The answering model's run name (null in rows written before it was logged).")
    modality: str | None = Field(None, description="What the answering model reads (null in older rows).")
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
