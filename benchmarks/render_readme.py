"""Render the README's performance section from ``benchmarks/results/*.json`` (never typed by hand).

The section lies between ``<!-- perf:begin -->`` and ``<!-- perf:end -->`` in
README.md. ``throughput.py`` and ``gpu.py`` write the JSON files; this script
rewrites the section from all of them (sorted by file name).

    python benchmarks/render_readme.py           # rewrite README.md
    python benchmarks/render_readme.py --check   # exit 1 when README.md is not the rendering of the JSON files
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"


def _load(kind: str, results: Path) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(results.glob("*.json")):
        report = json.loads(path.read_text())
        if report.get("benchmark") == kind:
            out.append((path.name, report))
    return out


def _loads(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _model(r: dict) -> str:
    """`` (model X)`` when the results name the model they measured (``model``; ``model_note`` when added later)."""
    if not r.get("model"):
        return ""
    return f" (model `{r['model']}`" + (f"; {r['model_note']}" if r.get("model_note") else "") + ")"


def throughput_section(name: str, r: dict) -> list[str]:
    dev = r["device"]
    lines = [
        f"**{dev['model']}, {r['threads']} threads** ({dev['cores']} cores visible; bf16: {dev['bf16']}; "
        f"{', '.join(dev['flags'])}), batch {r['batch_size']}, end to end from file bytes (decode -> probabilities), "
        f"{r['timed_images']} held-out images of `{r['run']}`{_model(r)} x {r['rounds']} rounds, median; agreement and max "
        f"|probability difference| against {r['reference']} over all {r['held_out_images']} held-out images; "
        f"batch-1 latency through the server's path. Load average {_loads(r['load_average_start'])} at start, "
        f"{_loads(r['load_average_end'])} at end; {r['generated_at']}; `{r['command']}` ([{name}](benchmarks/results/{name})).",
        "",
        "| runtime | precision | img/s | x torch eager | class agreement vs fp32 | max abs prob diff | p50 ms (batch 1) | p95 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        p50 = f"{row['latency_ms_p50']:.1f}" if "latency_ms_p50" in row else "-"
        p95 = f"{row['latency_ms_p95']:.1f}" if "latency_ms_p95" in row else "-"
        lines.append(f"| {row['variant']} | {row['precision']} | {row['median_img_s']:.1f} | {row['speedup_vs_eager']:.2f} | "
                     f"{row['class_agreement_vs_fp32']:.4f} | {row['max_abs_prob_diff_vs_fp32']:.1e} | {p50} | {p95} |")
    lines.append("")
    lines.append(f"Decode + preprocess alone (one thread): {r['decode_preprocess_only_img_s']:.0f} img/s.")
    stable = r.get("fp32_stability")
    if stable:
        kept = "; ".join(f"{s['description']}: **{s['class_agreement']:.3f}** [{s['class_agreement_ci'][0]:.3f}, "
                         f"{s['class_agreement_ci'][1]:.3f}] ({s['flips']} flips)"
                         for s in stable["perturbations"].values())
        lines += ["", f"For scale, fp32 itself ({stable['runtime']}) keeps its class on these "
                      f"{stable['images']} images after changes no reader can see: {kept} "
                      "(patient-bootstrap 95% CIs; `cxrdx evaluate --stability`). An approximate runtime's agreement "
                      "with fp32 is judged against that."]
    return lines


def _gpu_versions(r: dict) -> str:
    v = r.get("versions") or {}
    parts = [f"torch {v['torch']}" if v.get("torch") else "", f"CUDA {v['cuda']}" if v.get("cuda") else "",
             f"{r['cpu_cores']} CPU cores" if r.get("cpu_cores") else ""]
    parts = [x for x in parts if x]
    return f"; {', '.join(parts)}" if parts else ""


def gpu_section(name: str, r: dict) -> list[str]:
    if r.get("gpu") is None:
        return [f"**GPU:** none. {r['note']} ({r['generated_at']}, `{r['command']}`, [{name}](benchmarks/results/{name}))."]
    lines = [f"**GPU: {r['gpu']}** ({r['generated_at']}, `{r['command']}`, [{name}](benchmarks/results/{name})); "
             f"inference model-only, batch {r['batch_size']}, {r['images']} images ({r['inputs']}{_model(r)}){_gpu_versions(r)}.", "",
             "| variant | img/s | class agreement vs fp32 | max abs prob diff |", "|---|---|---|---|"]
    for row in r["inference"]:
        if "skipped" in row:
            lines.append(f"| {row['variant']} | skipped: {row['skipped']} | | |")
        else:
            lines.append(f"| {row['variant']} | {row['img_s']:.0f} | {row['class_agreement_vs_fp32']:.4f} | "
                         f"{row['max_abs_prob_diff_vs_fp32']:.1e} |")
    if r.get("end_to_end"):
        lines.append(f"| end to end from file bytes, batch 16 (CPU decode, `--runtime torch-cuda`) | "
                     f"{r['end_to_end']['img_s']:.0f} | | |")
    if r.get("latency"):
        lat = r["latency"]
        lines += ["", f"Batch-1 latency through the server's path (`torch-cuda`, file bytes -> probabilities, "
                      f"{lat['requests']} requests): p50 {lat['latency_ms_p50']:.1f} ms, p95 {lat['latency_ms_p95']:.1f} ms."]
    lines += ["", "| full fine-tuning | batch | precision | train img/s | peak GPU memory |", "|---|---|---|---|---|"]
    for row in r["finetune"]:
        if "skipped" in row:
            lines.append(f"| {row['backbone']} | skipped: {row['skipped']} | | | |")
            continue
        mem = f"{row['peak_memory_gb']:.1f} GB" if row.get("peak_memory_gb") is not None else "-"
        lines.append(f"| {row['backbone']} | {row['batch']} | {row['precision']} | {row['train_img_s']:.0f} | {mem} |")
    return lines


def render(results: Path = RESULTS) -> str:
    """The section's text (between the markers, markers excluded)."""
    lines = ["", "<!-- generated by benchmarks/render_readme.py from benchmarks/results/*.json; do not edit by hand -->", ""]
    for name, r in _load("throughput", results):
        lines += throughput_section(name, r) + [""]
    gpu = _load("gpu", results)
    for name, r in gpu:
        lines += gpu_section(name, r) + [""]
    if not gpu:
        lines += ["**GPU:** no GPU result recorded yet (`python benchmarks/gpu.py`).", ""]
    return "\n".join(lines)


def readme_section(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} section")
    return text.split(BEGIN, 1)[1].split(END, 1)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true")
    p.add_argument("--readme", type=Path, default=README)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    text = args.readme.read_text()
    new = render(args.results)
    if args.check:
        same = readme_section(text) == new
        print("README performance section is up to date" if same else "README performance section differs: run "
              "python benchmarks/render_readme.py")
        return 0 if same else 1
    old = readme_section(text)
    args.readme.write_text(text.replace(BEGIN + old + END, BEGIN + new + END, 1))
    print(f"rewrote the performance section of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
