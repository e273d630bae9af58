"""A gallery of overlays per true class, the correct and the wrong predictions, lungs outlined."""

from __future__ import annotations

from pathlib import Path

from .cam import Explanation
from .methods import CAM_METHODS
from .overlay import make_overlay

LUNG_COLOUR = (0, 255, 0)
LESION_COLOUR = (255, 0, 255)


def write_gallery(
    items: list[dict], out_dir: str | Path, *, per_group: int = 3, image_weight: float = 0.6, max_side: int = 1024,
) -> list[dict]:
    """Write ``<out_dir>/<class>_<correct|wrong>_<n>.png``; return one record per file written.

    ``items``: dicts with ``explanation`` (:class:`Explanation`), ``label``, ``image`` (relative path),
    ``lung`` / ``lesion`` (bool masks or None) and ``lung_energy``. In each group the most
    confident predictions come first.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*_*_*.png"):  # a re-run must not leave stale pictures behind
        old.unlink()
    groups: dict[tuple[str, str], list[dict]] = {}
    for item in items:
        exp: Explanation = item["explanation"]
        key = (item["label"], "correct" if exp.predicted == item["label"] else "wrong")
        groups.setdefault(key, []).append(item)
    written = []
    for (label, verdict), members in sorted(groups.items()):
        members.sort(key=lambda it: -it["explanation"].probabilities[it["explanation"].predicted])
        for n, item in enumerate(members[:per_group], start=1):
            exp = item["explanation"]
            energy = item.get("lung_energy")
            caption = (
                f"true {label} | predicted {exp.predicted} {exp.probabilities[exp.predicted]:.0%} | "
                f"{CAM_METHODS.describe(exp.method)} lung energy {energy:.2f}" if energy is not None and energy == energy
                else f"true {label} | predicted {exp.predicted} {exp.probabilities[exp.predicted]:.0%}"
            )
            outlines = [(m, c) for m, c in ((item.get("lung"), LUNG_COLOUR), (item.get("lesion"), LESION_COLOUR)) if m is not None]
            picture = make_overlay(exp.image, exp.heatmap, caption, image_weight=image_weight, max_side=max_side, outlines=outlines)
            name = f"{label}_{verdict}_{n}.png"
            picture.save(out / name)
            written.append({
                "file": f"{out.name}/{name}", "image": item["image"], "label": label, "predicted": exp.predicted,
                "correct": verdict == "correct", "lung_energy": energy,
            })
    return written
