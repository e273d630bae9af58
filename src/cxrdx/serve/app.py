"""The REST API and web page: ``create_app(settings)`` builds the FastAPI application.

Routes: ``POST /v1/predict``, ``POST /v1/explain``, ``GET /v1/models``,
``GET /v1/predictions`` (the audit log), ``GET /healthz``, the web page at
``/`` and OpenAPI docs at ``/docs`` (served locally, no CDN).

The server may hold several models (one per modality); which one answers an upload is decided in
:mod:`cxrdx.serve.routing` (the input guard, or the request's ``model=``). Each model has its own lock;
the decode slots are shared.
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
from pathlib import Path
from typing import Literal

import anyio
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
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
from .routing import ModelPool, Routed, combine
from .schemas import (
    AuditEntry, AuditRecord, ErrorResponse, ExplainResponse, HealthResponse, ModelDescription, ModelsResponse,
    PredictionsPage, PredictResponse, RoutingInfo,
)
from .server import client_address
from .service import ModelService

STATIC_DIR = Path(__file__).parent / "static"
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 415, 422, 500, 503)}
MODEL_HELP = ("Which served model answers: its run name or modality (see /v1/models). "
              "Default: the input guard routes the upload to the model of its modality.")
MAX_OFFSET = 10**9
"""``GET /v1/predictions?offset=`` above this is a 422 (a database cannot take any integer)."""


def create_app(
    settings: ServeConfig | None = None,
    *,
    service: ModelService | None = None,
    pool: ModelPool | None = None,
    audit: AuditLog | None = None,
    data_cfg: DataConfig | None = None,
) -> FastAPI:
    settings = settings or ServeConfig()
    settings.check()
    token = settings.api_token()
    pool = pool or (ModelPool([service]) if service is not None else ModelPool.load(settings, data_cfg))
    audit = audit or AuditLog(settings.resolved_database_url())
    require_token = token_guard(token)
    decode_slots = anyio.Semaphore(settings.max_concurrent_decodes)
    turns = {s.name: anyio.Lock() for s in pool}  # one model call at a time per model; models do not wait for each other

    app = FastAPIOffline(
        title="cxrdx", version=cxrdx_version,
        description="COVID-19 / pneumonia / normal on chest X-rays, COVID-19 / non-COVID on CT slices (hybrid CNN -> RNN); "
                    "with several models, the input guard routes each upload to the model of its modality. "
                    "Research tool, not a diagnosis. Every prediction is recorded in an audit log.",
    )
    app.state.pool, app.state.service, app.state.audit, app.state.settings = pool, pool.primary, audit, settings
    max_body = settings.max_upload_bytes + MULTIPART_SLACK
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body, body_timeout_s=settings.body_timeout_s,
                       idle_timeout_s=settings.body_idle_timeout_s)
    app.add_middleware(TokenAuth, expected=token, max_drain_bytes=max_body, drain_timeout_s=settings.body_timeout_s)  # outermost
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def describe(service: ModelService) -> ModelDescription:
        info = service.model.info
        return ModelDescription(
            id=service.identity.id, version=service.identity.version, run=service.identity.run,
            backbone=info.backbone, head=info.head, classes=service.classes, image_size=info.image_size,
            runtime=service.runtime, explain=service.can_explain, modality=info.modality,
            guard=service.screen is not None, guard_modalities=service.screen.guard.modalities if service.screen else [],
            routes=service in pool.routers, roi=service.roi,
        )

    async def read_upload(file: UploadFile) -> bytes:
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, detail={"code": "upload_too_large",
                                             "message": f"upload exceeds the limit of {settings.max_upload_bytes} bytes"})
        return data

    async def record(endpoint: str, request: Request, service: ModelService, data: bytes, probabilities: dict,
                     predicted: str, latency_ms: float) -> None:
        entry = AuditEntry(
            endpoint=endpoint, model_id=service.identity.id, model_version=service.identity.version,
            model_run=service.name, modality=service.modality,
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

    async def prepared(fn, *args):
        """``fn(*args)`` (decode, preprocess) in a worker thread once one of the shared decode slots is free."""
        try:
            with anyio.fail_after(settings.decode_wait_s):
                await decode_slots.acquire()
        except TimeoutError:
            raise HTTPException(503, detail={"code": "server_busy", "message": "too many uploads are being decoded; retry shortly"},
                                headers={"Retry-After": "2"}) from None
        try:
            return await run_in_threadpool(fn, *args)
        finally:
            decode_slots.release()

    async def in_model_turn(service: ModelService, fn, *args):
        """A call on ``service``'s model, one at a time per model; waiting for it holds no worker thread."""
        async with turns[service.name]:
            return await run_in_threadpool(fn, *args)

    def chosen_model(query: str | None, form: str | None) -> ModelService | None:
        if query and form and query.strip() != form.strip():
            raise HTTPException(422, detail={"code": "invalid_request",
                                             "message": f"model is given twice and differs ({query[:64]!r} / {form[:64]!r})"})
        return pool.choose(query or form)

    async def route(grey, chosen: ModelService | None, prepare: bool) -> Routed:
        """Which model answers ``grey`` (decoded upload); ``prepare``: also its prepared input (predict)."""
        if not pool.routers:
            routed = pool.without_guard(chosen)
        else:
            verdicts, inputs = {}, {}
            # a named model with its own guard is screened by that guard alone (no other model's lock is taken)
            for router in ([chosen] if chosen is not None and chosen.screen is not None else pool.routers):
                inputs[router.name] = await prepared(router.prepare_grey, grey)
                verdicts[router.name] = await in_model_turn(router, router.examine, inputs[router.name])
            verdict = combine([v for v, _ in verdicts.values()])
            target = pool.target(verdict, chosen)
            # the answering model's map: its own, or an examined model's with the same frozen backbone and input
            same = next((n for n in verdicts if n == target.name), None) or next(
                (n for n in verdicts if target.feature_key is not None and pool.services[n].feature_key == target.feature_key), None)
            routed = Routed(target, "request" if chosen is not None else "guard", verdict,
                            inputs.get(same), verdicts[same][1] if same else None, target.name in verdicts)
        if prepare and routed.x is None:
            routed.x = await prepared(routed.service.prepare_grey, grey)
        return routed

    def routing_info(routed: Routed) -> RoutingInfo:
        v = routed.verdict
        return RoutingInfo(by=routed.by, modality=v.modality if v else None,
                           scores={k: round(x, 4) for k, x in v.scores.items()} if v else None)

    def answered(routed: Routed) -> dict:
        s = routed.service
        return dict(model_id=s.identity.id, model_version=s.identity.version, model_run=s.name, modality=s.modality,
                    routing=routing_info(routed))

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz", response_model=HealthResponse, tags=["service"])
    async def healthz() -> HealthResponse:
        """Liveness: the models are loaded (no token needed)."""
        return HealthResponse(model_id=pool.primary.identity.id, model_version=pool.primary.identity.version,
                              audit_backend=audit.backend, models=[s.name for s in pool])

    v1 = dict(dependencies=[Depends(require_token)], responses=ERRORS)

    @app.get("/v1/models", response_model=ModelsResponse, tags=["models"], **v1)
    async def models() -> ModelsResponse:
        """The models this server runs (one per modality) and how an upload finds its model."""
        return ModelsResponse(models=[describe(s) for s in pool], routing=pool.routing)

    @app.post("/v1/predict", response_model=PredictResponse, tags=["predict"], **v1)
    async def predict(
        request: Request,
        file: UploadFile = File(..., description="PNG, JPEG or DICOM chest X-ray or CT slice"),
        model: str | None = Query(None, description=MODEL_HELP),
        model_form: str | None = Form(None, alias="model", description=MODEL_HELP),
    ) -> PredictResponse:
        """Class probabilities for one uploaded image, from the model of its modality."""
        start = time.perf_counter()
        chosen = chosen_model(model, model_form)
        data = await read_upload(file)
        if len(pool) == 1 and not pool.routers:  # one model, no guard: decode + preprocess in one step, as before
            routed = Routed(pool.primary, "only_model", x=await prepared(pool.primary.prepare, data))
        else:
            routed = await route(await prepared(pool.primary.decode, data), chosen, prepare=True)
        service = routed.service
        scored = await in_model_turn(service, service.score, routed.x, routed.fmap)
        latency_ms = (time.perf_counter() - start) * 1000
        await record("predict", request, service, data, scored.probabilities, scored.predicted, latency_ms)
        return PredictResponse(
            predicted=scored.predicted, probabilities=scored.probabilities, runtime=service.runtime,
            input_sha256=hashlib.sha256(data).hexdigest(), latency_ms=latency_ms,
            roi=scored.roi, roi_fallback=bool(scored.roi and scored.roi["fallback"]), **answered(routed),
        )

    @app.post("/v1/explain", response_model=ExplainResponse, tags=["predict"], **v1)
    async def explain(
        request: Request,
        file: UploadFile = File(..., description="PNG, JPEG or DICOM chest X-ray or CT slice"),
        method: Literal["gradcam", "gradcam++"] = Query("gradcam"),
        model: str | None = Query(None, description=MODEL_HELP),
        model_form: str | None = Form(None, alias="model", description=MODEL_HELP),
    ) -> ExplainResponse:
        """Probabilities plus a Grad-CAM overlay (PNG, base64) computed on the PyTorch model of the upload's modality."""
        if not pool.primary.can_explain:
            raise HTTPException(501, detail={"code": "explain_unavailable", "message": "Grad-CAM is not installed"})
        start = time.perf_counter()
        chosen = chosen_model(model, model_form)
        data = await read_upload(file)
        grey = await prepared(pool.primary.prepare_for_explain, data)
        routed = await route(grey, chosen, prepare=False)
        service = routed.service
        exp = await in_model_turn(service, service.explain, grey, method, routed.screened)
        buf = io.BytesIO()
        exp.overlay.save(buf, format="PNG")
        latency_ms = (time.perf_counter() - start) * 1000
        await record("explain", request, service, data, exp.probabilities, exp.predicted, latency_ms)
        return ExplainResponse(
            predicted=exp.predicted, probabilities=exp.probabilities, runtime="torch", input_sha256=hashlib.sha256(data).hexdigest(),
            latency_ms=latency_ms, method=method, overlay_png_base64=base64.b64encode(buf.getvalue()).decode(),
            roi=exp.roi.to_dict() if exp.roi is not None else None, roi_fallback=bool(exp.roi and exp.roi.fallback),
            **answered(routed),
        )

    @app.get("/v1/predictions", response_model=PredictionsPage, tags=["audit"], **v1)
    async def predictions(limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> PredictionsPage:
        """The audit log, newest first: time, model (id, version, run, modality), input SHA-256, probabilities, latency, client."""
        rows = await run_in_threadpool(audit.latest, limit, offset)
        total = await run_in_threadpool(audit.count)
        return PredictionsPage(total=total, limit=limit, offset=offset,
                               items=[AuditRecord.model_validate(r) for r in rows])

    return app
