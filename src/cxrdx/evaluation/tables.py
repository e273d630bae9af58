"""Readable terminal tables (rich) for metrics (:class:`~cxrdx.evaluation.results.PooledMetrics` or plain
:func:`cxrdx.stats.metrics_with_ci` dicts) and comparison / benchmark rows."""

from __future__ import annotations

from rich.table import Table

from .results import MetricWithCI, PooledMetrics, headline

PER_CLASS_KEYS = ("sensitivity", "specificity", "precision", "f1", "auc")


def _fmt(value: float | None, ci: list | None = None) -> str:
    return MetricWithCI(value, ci).text()


def metrics_table(metrics: PooledMetrics | dict, title: str = "Held-out test metrics") -> Table:
    m = PooledMetrics.of(metrics)
    table = Table(title=f"{title}  (n={m.n}, accuracy {m.accuracy.text()})")
    for col in ("class", "sensitivity", "specificity", "precision", "F1", "ROC AUC", "n"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for name in m.class_names:
        # a class absent from the truth has no sensitivity / F1 / AUC: "undefined", never 0.000 [0, 0]
        table.add_row(name, *[m.per_class(name, key).text(missing="undefined") for key in PER_CLASS_KEYS],
                      str(m.support(name)))
    table.add_row("macro", *[MetricWithCI(m.macro(key).value).text(missing="undefined") for key in PER_CLASS_KEYS], "",
                  style="bold")
    return table


def confusion_table(metrics: PooledMetrics | dict) -> Table:
    m = PooledMetrics.of(metrics)
    table = Table(title="Confusion matrix (rows: true, columns: predicted)")
    table.add_column("true \\ pred")
    for c in m.classes:
        table.add_column(c, justify="right")
    for name, row in zip(m.classes, m.confusion_matrix):
        table.add_row(name, *[str(v) for v in row])
    return table


def macro_row_ci(metrics: PooledMetrics | dict) -> Table:
    """Headline numbers with their CIs (accuracy, macro averages, covid-vs-rest)."""
    m = PooledMetrics.of(metrics)
    table = Table(title="Headline numbers, 95% CI from a patient-level bootstrap")
    table.add_column("metric")
    table.add_column("value [95% CI]", justify="right")
    table.add_row("accuracy", m.accuracy.text())
    for key in PER_CLASS_KEYS:
        table.add_row(f"macro {key}", m.macro(key).text())
    if m.covid_vs_rest:
        for key in ("sensitivity", "specificity", "auc"):
            table.add_row(f"covid-vs-rest {key}", m.metric("covid_vs_rest", key).text())
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


def loso_table(loso: dict, candidate: str | None = None, title: str | None = None) -> Table:
    """Leave-one-source-out rows of one candidate (default: the selected one): unseen (held out) beside seen
    (random patient split, same images); classes absent from a source print "undefined"."""
    name = candidate or loso["selected"]
    rows = [r for r in loso["rows"] if r["candidate"] == name]
    classes = list(rows[0]["labels"]) if rows else []
    table = Table(title=title or f"Unseen hospitals (leave-one-source-out): {name}, roi {loso.get('roi', 'full')}")
    cols = ["held-out source", "images / patients", "labels", "headline [95% CI]", "accuracy UNSEEN [95% CI]",
            "accuracy seen (random split)", "gap"]
    cols += [f"{c} sens." for c in classes] + [f"{c} spec." for c in classes] + ["covid-vs-rest AUC"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("held-out source", "labels") else "right")
    for r in rows:
        u, s = PooledMetrics(r["unseen"]), PooledMetrics(r["seen"]) if r.get("seen") else None
        what, value = headline(r["unseen"])
        labels = ", ".join(f"{k} {v}" for k, v in r["labels"].items() if v)
        table.add_row(
            r["source"], f"{r['n_images']} / {r['n_patients']}", labels, f"{what}: {value.text(missing='undefined')}",
            u.accuracy.text(), s.accuracy.text() if s else "-", "-" if r.get("accuracy_gap") is None else f"{r['accuracy_gap']:+.3f}",
            *[u.per_class(c, "sensitivity").text(missing="undefined") for c in classes],
            *[u.per_class(c, "specificity").text(missing="undefined") for c in classes],
            u.metric("covid_vs_rest", "auc").text(missing="undefined"),
            style="bold" if r.get("pooled") else None,
        )
    return table


def loso_overview(loso: dict) -> Table:
    """Every candidate (ranked by validation) x held-out source: accuracy unseen vs seen."""
    sources = [*loso["sources"], "all held-out sources"]
    table = Table(title="Leave-one-source-out accuracy per candidate: UNSEEN (seen = random patient split, same images)")
    table.add_column("#", justify="right")
    table.add_column("candidate")
    for s in sources:
        table.add_column(s, justify="right")
    by = {(r["candidate"], r["source"]): r for r in loso["rows"]}
    for c in loso["candidates"]:
        cells = []
        for s in sources:
            r = by.get((c["name"], s))
            seen = r and r.get("seen")
            cells.append("-" if r is None else f"{r['unseen']['accuracy']:.3f}" + (f" ({seen['accuracy']:.3f})" if seen else ""))
        table.add_row(str(c["rank"]), c["name"], *cells)
    return table


def unseen_selection_text(selection: dict) -> str:
    """One paragraph: :func:`cxrdx.evaluation.loso.unseen_selection` (chosen by unseen sources, honestly estimated)."""
    est = selection["estimate"]
    lo, hi = est["ci"]["accuracy"]
    means = ", ".join(f"{n} {v:.3f}" for n, v in sorted(selection["mean_source_accuracy"].items(), key=lambda kv: -kv[1]))
    chosen = "; ".join(f"{r['source']}: {r['chosen']} {r['accuracy']:.3f} (validation's choice {r['validation_choice_accuracy']:.3f})"
                       for r in selection["per_source"])
    return (f"Chosen by unseen sources: {selection['choice']} (validation chose {selection['validation_choice']}); mean "
            f"accuracy over the held-out sources: {means}. Honest estimate of choosing this way (each source scored by the "
            f"candidate the other sources chose): {est['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] over all held-out images; {chosen}. "
            f"Caveat: {selection['caveat']}.")


def architecture_table(section: dict, title: str = "The design's four architectures") -> Table:
    """:func:`cxrdx.evaluation.architectures.architecture_section`: one row per (architecture, backbone), the
    candidate chosen by validation, every metric with its patient-bootstrap CI."""
    classes = section["classes"]
    table = Table(title=f"{title} (best by validation per cell)")
    for col in ("architecture", "backbone (px)", "model (val F1)", "accuracy [95% CI]"):
        table.add_column(col, justify="right" if col.startswith("accuracy") else "left")
    for c in classes:
        table.add_column(f"{c}: sens. / spec. / prec. / F1 / AUC", justify="right")
    table.add_column("macro AUC", justify="right")
    for r in section["rows"]:
        per_class = ["\n".join(_fmt(r["per_class"][c][k][0], r["per_class"][c][k][1:3])
                               for k in ("sensitivity", "specificity", "precision", "f1", "auc")) for c in classes]
        table.add_row(r["architecture"], f"{r['backbone']} ({r['image_size']})", f"{r['head']} ({r['val_macro_f1']:.3f})",
                      _fmt(r["accuracy"][0], r["accuracy"][1:3]), *per_class, _fmt(r["macro_auc"][0], r["macro_auc"][1:3]))
    return table


def stability_table(stability: dict) -> Table:
    """:func:`cxrdx.evaluation.stability.prediction_stability`: one row per perturbation."""
    table = Table(title=f"Prediction stability ({stability.get('runtime', 'torch')}, {stability['images']} images): "
                        "same class after a change no reader can see")
    for col in ("perturbation", "class kept", "flips", "flips from", "max |dp|", "mean max |dp|"):
        table.add_column(col, justify="left" if col in ("perturbation", "flips from") else "right")
    for name, row in stability["perturbations"].items():
        flips_from = ", ".join(f"{c} {k}" for c, k in row["flips_from"].items() if k) or "-"
        table.add_row(f"{name} ({row['description']})", _fmt(row["class_agreement"], row["class_agreement_ci"]),
                      str(row["flips"]), flips_from, _fmt(row["max_abs_prob_diff"]), _fmt(row["mean_max_abs_prob_diff"]))
    return table
