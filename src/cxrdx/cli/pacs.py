"""``cxrdx pacs --orthanc URL``: the PACS node (Orthanc change feed in, SR + Grad-CAM overlay back)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from .common import ConfigOpt, SetOpt, build_config, console, err_console, friendly_errors


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpcore", "highdicom", "pydicom"):  # their records may quote DICOM values
        logging.getLogger(name).setLevel(logging.WARNING)


@friendly_errors
def pacs(
    orthanc: str = typer.Option("http://127.0.0.1:8042", "--orthanc", help="Orthanc REST URL "
                                "(credentials: $CXRDX_ORTHANC_USER / $CXRDX_ORTHANC_PASSWORD)."),
    model_dir: Optional[Path] = typer.Option(None, "--model", "-m", help="Run folder (default runs/demo)."),
    database_url: Optional[str] = typer.Option(None, "--database-url",
                                               help="Where the node keeps its state: the audit log's SQLAlchemy URL "
                                                    "(default: $CXRDX_DATABASE_URL or SQLite under $CXRDX_HOME)."),
    runtime: str = typer.Option("torch", help="Runtime for the probabilities, from `cxrdx list runtimes` (Grad-CAM always runs on torch)."),
    once: bool = typer.Option(False, "--once", help="Handle what is in the feed now, then exit."),
    from_start: bool = typer.Option(False, "--from-start",
                                    help="On first start, work through Orthanc's whole change log (default: new images only)."),
    poll_interval: float = typer.Option(2.0, "--poll-interval", help="Seconds between polls of /changes."),
    give_up_after: Optional[float] = typer.Option(None, "--give-up-after",
                                                  help="Exit (code 1) after Orthanc is unreachable this many seconds "
                                                       "(default: keep retrying)."),
    covid_threshold: Optional[float] = typer.Option(None, "--covid-threshold",
                                                    help="Operating point: also flag covid when P(covid) >= this."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads (default: all cores; 1 on a busy CPU)."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Also store the Grad-CAM Secondary Capture."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Watch an Orthanc server for new CR/DX chest images; store a Structured Report and a Grad-CAM overlay in each study.

    Restart-safe (state in the audit database), waits for Orthanc when it is down, never logs patient data.
    """
    from ..pacs.analysis import Analyzer
    from ..pacs.node import PacsNode
    from ..pacs.orthanc import OrthancClient, OrthancUnavailable
    from ..pacs.results import OperatingPoint
    from ..pacs.state import NodeState

    cfg = build_config(config, overrides, **{"serve.model_dir": model_dir, "serve.database_url": database_url})
    _logging(verbose)
    analyzer = Analyzer(cfg.serve.model_dir, runtime=runtime, overlay=overlay, threads=threads or cfg.serve.threads,
                        operating_point=OperatingPoint(covid_threshold=covid_threshold))
    client = OrthancClient(orthanc)
    state = NodeState(cfg.serve.resolved_database_url(), client.url)
    node = PacsNode(client, analyzer, state, poll_interval=poll_interval, from_start=from_start)
    console.print(f"cxrdx PACS node: {analyzer.identity.id} {analyzer.identity.version} on {client.url}; "
                  f"state in {state.engine.url.render_as_string(hide_password=True)}")
    console.print("[dim]Research tool, not a diagnosis.[/]")
    try:
        stats = node.run(once=once, give_up_after=give_up_after)
    except KeyboardInterrupt:
        node.stop()
        stats = None
    except OrthancUnavailable as exc:
        err_console.print(f"[bold red]error:[/] {exc}; gave up after {give_up_after:.0f} s")
        raise typer.Exit(1) from None
    finally:
        client.close()
        state.close()
    if stats is not None:
        console.print(f"analysed {stats.done}, skipped {stats.skipped}, failed {stats.failed}")


def register(app: typer.Typer) -> None:
    app.command()(pacs)
