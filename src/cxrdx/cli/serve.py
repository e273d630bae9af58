"""``cxrdx serve`` (REST API + web page) and ``cxrdx export --onnx``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import ConfigOpt, SetOpt, build_config, console, friendly_errors


@friendly_errors
def serve(
    model_dirs: Optional[list[Path]] = typer.Option(
        None, "--model", "-m", metavar="RUN_DIR",
        help="Run folder (default runs/demo). Repeat for one model per modality (--model runs/xray --model runs/ct): "
             "the input guard (guard.json) routes each upload to the model of its modality."),
    host: Optional[str] = typer.Option(None, help="Interface to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)."),
    runtime: Optional[str] = typer.Option(None, help="A runtime from `cxrdx list runtimes` (onnx needs `cxrdx export --onnx RUN_DIR`)."),
    database_url: Optional[str] = typer.Option(None, "--database-url", help="Audit log SQLAlchemy URL (default: SQLite under $CXRDX_HOME)."),
    max_upload_mb: Optional[float] = typer.Option(None, "--max-upload-mb", help="Larger uploads get 413 (default 20)."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads (default: all cores)."),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth",
                                          help="Allow a non-loopback --host without CXRDX_API_TOKEN (anyone who can connect reads the audit log)."),
    trusted_proxy: Optional[list[str]] = typer.Option(None, "--trusted-proxy",
                                                      help="IP or CIDR of a reverse proxy whose X-Forwarded-For is believed (repeatable)."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Serve the model(s): POST /v1/predict, /v1/explain, GET /v1/models, /v1/predictions, /healthz, web page at /.

    With several --model runs (one per modality: xray, ct), the input guard of a run that has one routes each
    upload to the model of its modality; neither is 422 not_a_chest_image, a modality no served model reads is
    422 no_model_for_modality. A request may name the model with model=<run name or modality>.

    Set CXRDX_API_TOKEN to require `Authorization: Bearer <token>` on every /v1 route (required, unless
    --insecure-no-auth, when --host is not a loopback address).
    """
    from ..config import ConfigError
    from ..serve.app import create_app
    from ..serve.server import check_exposure, run_server

    if max_upload_mb is not None and not 1 <= max_upload_mb * 1024 * 1024 < 2**62:
        raise ConfigError(f"--max-upload-mb: {max_upload_mb:g} is out of range; it must be positive")
    if any("," in str(d) for d in model_dirs or []):
        raise ConfigError("--model: a run folder's path must not contain a comma (rename or link it)")

    cfg = build_config(config, overrides, **{
        "serve.model_dir": ",".join(map(str, model_dirs)) if model_dirs else None, "serve.host": host, "serve.port": port, "serve.runtime": runtime,
        "serve.database_url": database_url, "serve.threads": threads,
        "serve.max_upload_bytes": int(max_upload_mb * 1024 * 1024) if max_upload_mb is not None else None,
        "serve.insecure_no_auth": True if insecure_no_auth else None,
        "serve.trusted_proxies": ",".join(trusted_proxy) if trusted_proxy else None,
    })
    s = cfg.serve
    check_exposure(s)  # before the model is loaded
    app = create_app(s, data_cfg=cfg.data)
    pool, audit = app.state.pool, app.state.audit
    for service in pool:
        guard = f"guard: {'+'.join(service.screen.guard.modalities)}" if service.screen else "no guard"
        console.print(f"serving [bold]{service.name}[/] ({service.modality}; {service.identity.id} {service.identity.version}, "
                      f"{s.runtime}, {guard}) from {service.run_dir}")
    if len(pool) > 1:
        console.print(f"routing: {pool.routing}" + (f" by the guard of {', '.join(r.name for r in pool.routers)}" if pool.routers else ""))
    for note in pool.notes():
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"audit log: {audit.engine.url.render_as_string(hide_password=True)}; "
                  f"token: {'required' if s.api_token() else 'not required (set ' + s.token_env + ')'}")
    console.print(f"web page http://{s.host}:{s.port}/  docs http://{s.host}:{s.port}/docs")
    console.print("[dim]Research tool, not a diagnosis.[/]")
    run_server(app, s)


@friendly_errors
def export(
    run_dir: Path = typer.Argument(..., help="Run folder from `cxrdx train`."),
    onnx: bool = typer.Option(False, "--onnx", help="Export to ONNX (the only format so far)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default RUN_DIR/model.onnx)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: also write RUN_DIR/model.int8.onnx (static QDQ, "
                                           "calibrated on the run's training images) for `--runtime onnx-int8`."),
    calibration_images: int = typer.Option(128, "--calibration-images", help="Training images to calibrate int8 ranges on."),
) -> None:
    """Export the whole model (backbone + head + softmax) for fast CPU serving; checks it against PyTorch."""
    from ..inference.onnx_export import export_run

    if not onnx:
        raise typer.BadParameter("choose a format: --onnx")
    if quantize not in (None, "int8"):
        raise typer.BadParameter(f"--quantize: only int8 is supported, not {quantize!r}")
    if quantize and out:
        raise typer.BadParameter("--quantize needs the run folder's own model.onnx: leave out --out")
    result = export_run(run_dir, out)
    size_mb = result.path.stat().st_size / 1e6
    console.print(f"wrote {result.path} ({size_mb:.1f} MB); max |ONNX Runtime - PyTorch| probability "
                  f"on a check batch: {result.max_abs_diff:.1e}")
    if quantize:
        from ..inference.quantize import quantize_run

        q = quantize_run(run_dir, images=calibration_images)
        check, cal = q.info["check_vs_fp32_on_val"], q.info["calibration"]
        console.print(f"wrote {q.path} ({q.path.stat().st_size / 1e6:.1f} MB), calibrated on {cal['images']} training "
                      f"images; vs fp32 on {check['images']} validation images: class agreement "
                      f"{check['class_agreement']:.3f}, max |dp| {check['max_abs_prob_diff']:.1e} (approximate: "
                      f"score it before use, e.g. benchmarks/throughput.py)")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(export)
