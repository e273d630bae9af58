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
