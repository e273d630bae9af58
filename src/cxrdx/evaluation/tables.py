"""Readable terminal tables (rich) for metrics dicts."""

from __future__ import annotations

from rich.table import Table


def _fmt(value: float | None, ci: list | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}"
    if ci and ci[0] is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def metrics_table(metrics: dict, title: str = "Held-out test metrics") -> Table:
    cis = metrics.get("ci", {})
    table = Table(title=f"{title}  (n={metrics['n']}, accuracy {_fmt(metrics['accuracy'], cis.get('accuracy'))})")
    for col in ("class", "sensitivity", "specificity", "precision", "F1", "ROC AUC", "n"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for name, row in metrics["per_class"].items():
        c = cis.get("per_class", {}).get(name, {})
        table.add_row(
            name, _fmt(row["sensitivity"], c.get("sensitivity")), _fmt(row["specificity"], c.get("specificity")),
            _fmt(row["precision"], c.get("precision")), _fmt(row["f1"], c.get("f1")), _fmt(row["auc"], c.get("auc")),
            str(row["support"]),
        )
    m = metrics["macro"]
    table.add_row("macro", _fmt(m["sensitivity"]), _fmt(m["specificity"]), _fmt(m["precision"]), _fmt(m["f1"]), _fmt(m["auc"]), "", style="bold")
    return table


def confusion_table(metrics: dict) -> Table:
    classes = metrics["classes"]
    table = Table(title="Confusion matrix (rows: true, columns: predicted)")
    table.add_column("true \\ pred")
    for c in classes:
        table.add_column(c, justify="right")
    for name, row in zip(classes, metrics["confusion_matrix"]):
        table.add_row(name, *[str(v) for v in row])
    return table


def macro_row_ci(metrics: dict) -> Table:
    """Headline numbers with their CIs (accuracy, macro averages, covid-vs-rest)."""
    cis = metrics.get("ci", {})
    table = Table(title="Headline numbers, 95% CI from a patient-level bootstrap")
    table.add_column("metric")
    table.add_column("value [95% CI]", justify="right")
    table.add_row("accuracy", _fmt(metrics["accuracy"], cis.get("accuracy")))
    for key in ("sensitivity", "specificity", "precision", "f1", "auc"):
        table.add_row(f"macro {key}", _fmt(metrics["macro"][key], cis.get("macro", {}).get(key)))
    cv = metrics.get("covid_vs_rest")
    if cv:
        c = cis.get("covid_vs_rest", {})
        for key in ("sensitivity", "specificity", "auc"):
            table.add_row(f"covid-vs-rest {key}", _fmt(cv[key], c.get(key)))
    return table


def comparison_table(rows: list[dict], title: str = "Model comparison") -> Table:
    """Ranked models (by validation macro-F1); skipped ones at the bottom with their reason."""
    table = Table(title=title)
    for col in ("#", "model", "accuracy [95% CI]", "macro-F1 [95% CI]", "covid sens. [95% CI]", "covid spec.", "macro AUC", "ECE", "val F1", "s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        if r.get("status") != "ok":
            table.add_row("-", r["name"], f"[yellow]{r['status']}[/]", "", "", "", "", "", "", "")
            continue
        table.add_row(
            str(r.get("rank", "")), r["name"], _fmt(r["accuracy"], r.get("accuracy_ci")), _fmt(r["macro_f1"], r.get("macro_f1_ci")),
            _fmt(r.get("covid_sensitivity"), r.get("covid_sensitivity_ci")), _fmt(r.get("covid_specificity")),
            _fmt(r.get("macro_auc")), _fmt(r.get("ece")), _fmt(r.get("val_macro_f1")), f"{r.get('seconds', 0):.0f}",
        )
    return table


def benchmark_table(bench: dict) -> Table:
    """Published (image-level) numbers beside ours: patient-level headline, image-level (leaky) for contrast."""
    table = Table(title=f"Benchmark {bench['name']}: {bench['folds']}-fold CV")
    for col in ("task", "published (image-level)", "cxrdx patient-level [95% CI]", "covid sens. [95% CI]",
                "cxrdx image-level, LEAKY [95% CI]", "leakage effect", "target", "reached"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in bench["rows"]:
        target = f"acc >= {r['target_accuracy']:.2f}" if r.get("target_accuracy") else "-"
        if r.get("target_covid_sensitivity"):
            target += f", sens >= {r['target_covid_sensitivity']:.2f}"
        table.add_row(
            r["task"], f"{r['published_accuracy']:.4f}", _fmt(r["patient_accuracy"], r.get("patient_accuracy_ci")),
            _fmt(r.get("patient_covid_sensitivity"), r.get("patient_covid_sensitivity_ci")),
            _fmt(r.get("image_level_accuracy"), r.get("image_level_accuracy_ci")),
            "-" if r.get("leakage_effect") is None else f"{r['leakage_effect']:+.3f}", target,
            "yes" if r.get("target_reached") else "[red]no[/]",
        )
    return table
