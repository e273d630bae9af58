"""``cxrdx dicom IMG.dcm``: the DICOM result objects (SR + Grad-CAM Secondary Capture) for one file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import console, err_console, friendly_errors


@friendly_errors
def dicom(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="A CR/DX chest X-ray DICOM file."),
    model_dir: Path = typer.Option(Path("runs/demo"), "--model", "-m", help="Run folder (default runs/demo)."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for <stem>_sr.dcm and <stem>_overlay.dcm."),
    runtime: str = typer.Option("torch", help="Runtime for the probabilities, from `cxrdx list runtimes` (Grad-CAM always runs on torch)."),
    covid_threshold: Optional[float] = typer.Option(None, "--covid-threshold",
                                                    help="Operating point: also flag covid when P(covid) >= this."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads (default: all cores; 1 on a busy CPU)."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Also write the Grad-CAM Secondary Capture."),
    force: bool = typer.Option(False, "--force", help="Analyse even if the header says it is not a CR/DX chest image."),
) -> None:
    """Write a Comprehensive SR (class, probabilities, model, disclaimer) and a Grad-CAM overlay for IMG.dcm.

    Both objects belong to IMG's study (patient and study attributes copied, new UIDs); send them to any PACS.
    """
    from ..pacs.analysis import Analyzer, read_header, skip_reason
    from ..pacs.results import OperatingPoint, to_bytes

    data = image.read_bytes()
    header = read_header(data)
    reason = skip_reason(header)
    if reason and not force:
        err_console.print(f"[bold red]error:[/] {image.name} not analysed: {reason} (--force to analyse anyway)")
        raise typer.Exit(2)
    analyzer = Analyzer(model_dir, runtime=runtime, overlay=overlay, threads=threads,
                        operating_point=OperatingPoint(covid_threshold=covid_threshold))
    result = analyzer.analyse(data, header)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, ds in (("sr", result.objects.report), ("overlay", result.objects.overlay)):
        if ds is not None:
            path = out / f"{image.stem}_{kind}.dcm"
            path.write_bytes(to_bytes(ds))
            written.append(path)
    probs = ", ".join(f"{c} {p:.3f}" for c, p in result.probabilities.items())
    console.print(f"[bold]{result.predicted}[/] ({probs}) by {analyzer.identity.id} {analyzer.identity.version}")
    for path in written:
        console.print(f"wrote {path}")
    console.print("[dim]Research tool, not a diagnosis.[/]")


def register(app: typer.Typer) -> None:
    app.command()(dicom)
