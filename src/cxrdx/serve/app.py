"""The REST API and web page: ``create_app(settings)`` builds the FastAPI application.

Routes: ``POST /v1/predict``, ``POST /v1/explain``, ``GET /v1/models``,
``GET /v1/predictions`` (the audit log), ``GET /healthz``, the web page at
``/`` and OpenAPI docs at ``/docs`` (served locally, no CDN).
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
from pathlib import Path
from typing import Literal

import anyio
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from .. import __version__ as cxrdx_version
from ..config import DataConfig, ServeConfig
from .audit import AuditLog
from .auth import TokenAuth, token_guard
from .errors import install_error_handlers
from .limits import MULTIPART_SLACK, BodySizeLimit
from .schemas import (
    AuditEntry, AuditRecord, ErrorResponse, ExplainResponse, HealthResponse, ModelDescription, ModelsResponse,
    PredictionsPage, PredictResponse,
)
from .server import client_address
from .service import ModelService

STATIC_DIR = Path(__file__).parent / "static"
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 408, 413, 415, 422, 500, 503)}
MAX_OFFSET = 10**9
"""``GET /v1/predictions?offset=`` above this is a 422 (a database cannot take any integer)."""


def create_app(
    settings: ServeConfig | None = None,
    *,
    service: ModelService | None = None,
    audit: AuditLog | None = None,
    data_cfg: DataConfig | None = None,
) -> FastAPI:
    settings = settings or ServeConfig()
    settings.check()
    token = settings.api_token()
    service = service or ModelService(settings, data_cfg)
    audit = audit or AuditLog(settings.resolved_database_url())
    require_token = token_guard(token)
    decode_slots = anyio.Semaphore(settings.max_concurrent_decodes)
    model_turn = anyio.Lock()

    app = FastAPIOffline(
        title="cxrdx", version=cxrdx_version,
        description="COVID-19 / pneumonia / normal on chest X-rays (hybrid CNN -> RNN). "
                    "Research tool, not a diagnosis. Every prediction is recorded in an audit log.",
    )
    app.state.service, app.state.audit, app.state.settings = service, audit, settings
    max_body = settings.max_upload_bytes + MULTIPART_SLACK
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body, body_timeout_s=settings.body_timeout_s,
                       idle_timeout_s=settings.body_idle_timeout_s)
    app.add_middleware(TokenAuth, expected=token, max_drain_bytes=max_body, drain_timeout_s=settings.body_timeout_s)  # outermost
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def describe() -> ModelDescription:
        info = service.model.info
        return ModelDescription(
            id=service.identity.id, version=service.identity.version, run=service.identity.run,
            backbone=info.backbone, head=info.head, classes=service.classes, image_size=info.image_size,
            runtime=service.runtime, explain=service.can_explain, modality=info.modality,
            guard=service.predictor.screen is not None,
        )

    async def read_upload(file: UploadFile) -> bytes:
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, detail={"code": "upload_too_large",
                                             "message": f"upload exceeds the limit of {settings.max_upload_bytes} bytes"})
        return data

    async def record(endpoint: str, request: Request, data: bytes, probabilities: dict, predicted: str,
                     latency_ms: float) -> None:
        entry = AuditEntry(
            endpoint=endpoint, model_id=service.identity.id, model_version=service.identity.version,
            runtime=service.runtime if endpoint == "predict" else "torch",
            input_sha256=hashlib.sha256(data).hexdigest(), input_bytes=len(data), predicted=predicted,
            probabilities=probabilities, latency_ms=latency_ms,
            client=client_address(request.client.host if request.client else None,
                                  request.headers.get("x-forwarded-for"), settings.trusted_proxies),
        )
        try:
            await run_in_threadpool(audit.record, entry)
        except Exception as exc:  # noqa: BLE001 - an unrecorded prediction must not be served
            raise HTTPException(503, detail={"code": "audit_unavailable",
                                             "message": f"the audit log could not record this prediction ({type(exc).__name__})"}) from None

    async def prepared(fn, data: bytes):
        """``fn(data)`` (decode + preprocess) in a worker thread once one of the decode slots is free."""
        try:
            with anyio.fail_after(settings.decode_wait_s):
                await decode_slots.acquire()
        except TimeoutError:
            raise HTTPException(503, detail={"code": "server_busy", "message": "too many uploads are being decoded; retry shortly"},
                                headers={"Retry-After": "2"}) from None
        try:
            return await run_in_threadpool(fn, data)
        finally:
            decode_slots.release()

    async def in_model_turn(fn, *args):
        """The model call, one at a time; waiting for it holds no worker thread."""
        async with model_turn:
            return await run_in_threadpool(fn, *args)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz", response_model=HealthResponse, tags=["service"])
    async def healthz() -> HealthResponse:
        """Liveness: the model is loaded (no token needed)."""
        return HealthResponse(model_id=service.identity.id, model_version=service.identity.version,
                              audit_backend=audit.backend)

    v1 = dict(dependencies=[Depends(require_token)], responses=ERRORS)

    @app.get("/v1/models", response_model=ModelsResponse, tags=["models"], **v1)
    async def models() -> ModelsResponse:
        """The model this server runs."""
        return ModelsResponse(models=[describe()])

    @app.post("/v1/predict", response_model=PredictResponse, tags=["predict"], **v1)
    async def predict(request: Request, file: UploadFile = File(..., description="PNG, JPEG or DICOM chest X-ray")) -> PredictResponse:
        """Class probabilities for one uploaded X-ray."""
        start = time.perf_counter()
        data = await read_upload(file)
        x = await prepared(service.prepare, data)
        scored = await in_model_turn(service.score, x)
        latency_ms = (time.perf_counter() - start) * 1000
        await record("predict", request, data, scored.probabilities, scored.predicted, latency_ms)
        return PredictResponse(
            predicted=scored.predicted, probabilities=scored.probabilities, model_id=service.identity.id,
            model_version=service.identity.version, runtime=service.runtime,
            input_sha256=hashlib.sha256(data).hexdigest(), latency_ms=latency_ms,
            roi=scored.roi, roi_fallback=bool(scored.roi and scored.roi["fallback"]),
        )

    @app.post("/v1/explain", response_model=ExplainResponse, tags=["predict"], **v1)
    async def explain(
        request: Request,
        file: UploadFile = File(..., description="PNG, JPEG or DICOM chest X-ray"),
        method: Literal["gradcam", "gradcam++"] = Query("gradcam"),
    ) -> ExplainResponse:
        """Probabilities plus a Grad-CAM overlay (PNG, base64) computed on the PyTorch model."""
        if not service.can_explain:
            raise HTTPException(501, detail={"code": "explain_unavailable", "message": "Grad-CAM is not installed"})
        start = time.perf_counter()
        data = await read_upload(file)
        grey = await prepared(service.prepare_for_explain, data)
        exp = await in_model_turn(service.explain, grey, method)
        buf = io.BytesIO()
        exp.overlay.save(buf, format="PNG")
        latency_ms = (time.perf_counter() - start) * 1000
        await record("explain", request, data, exp.probabilities, exp.predicted, latency_ms)
        return ExplainResponse(
            predicted=exp.predicted, probabilities=exp.probabilities, model_id=service.identity.id,
            model_version=service.identity.version, runtime="torch", input_sha256=hashlib.sha256(data).hexdigest(),
            latency_ms=latency_ms, method=method, overlay_png_base64=base64.b64encode(buf.getvalue()).decode(),
            roi=exp.roi.to_dict() if exp.roi is not None else None, roi_fallback=bool(exp.roi and exp.roi.fallback),
        )

    @app.get("/v1/predictions", response_model=PredictionsPage, tags=["audit"], **v1)
    async def predictions(limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> PredictionsPage:
        """The audit log, newest first: time, model, input SHA-256, probabilities, latency, client."""
        rows = await run_in_threadpool(audit.latest, limit, offset)
        total = await run_in_threadpool(audit.count)
        return PredictionsPage(total=total, limit=limit, offset=offset,
                               items=[AuditRecord.model_validate(r) for r in rows])

    return app
