"""darkcovidnet: the DarkCovidNet repository (github.com/muhammedtalo/COVID-19).

Folders ``X-Ray Image DataSet/{Covid-19,No_findings,Pneumonia}``: Covid-19 ->
covid, No_findings -> normal, Pneumonia -> pneumonia; ``benchmark=darkcovidnet``.
NIH files (``00000013_005.png``) belong to patient ``nih-00000013``; a file whose
name is in the ieee8023 metadata takes that patient and metadata; any other file
is its own patient (``darkcovidnet-<name>``) until the same pixels turn up in
ieee8023.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Mapping

from ...tasks import COVID, NORMAL, PNEUMONIA
from ..paths import IMAGE_SUFFIXES
from .archive import Archive
from .base import Catalogue, FetchError, Item
from .ieee8023 import IEEE8023

FOLDERS = {"covid-19": COVID, "no_findings": NORMAL, "pneumonia": PNEUMONIA}
FINDING = {COVID: "COVID-19", NORMAL: "No Finding", PNEUMONIA: "Pneumonia"}
NIH_NAME = re.compile(r"^(\d{8})_\d{3}$")
NIH_LICENSE = "NIH ChestX-ray8 (public)"
_META_COLUMNS = ("view", "offset_days", "sex", "age", "survival", "location", "license", "doi")


class DarkCovidNet:
    name = "darkcovidnet"
    url = "https://github.com/muhammedtalo/COVID-19/archive/refs/heads/master.zip"
    homepage = "https://github.com/muhammedtalo/COVID-19"
    description = ("DarkCovidNet benchmark (Ozturk et al. 2020): 125 covid, 500 No_findings, "
                   "500 Pneumonia (NIH ChestX-ray8)")
    license = f"per image: covid images from ieee8023 (their licences), the others {NIH_LICENSE}"
    sha256: str | None = None
    benchmark = "darkcovidnet"
    reads: tuple[str, ...] = (IEEE8023.name,)

    def catalogue(self, archive: Archive, earlier: Mapping[str, Catalogue]) -> Catalogue:
        ieee = earlier.get(IEEE8023.name)
        ieee_by_name = ieee.index if ieee is not None else {}
        found = Catalogue()
        for member in sorted(archive.names()):
            path = PurePosixPath(member)
            label = FOLDERS.get(path.parent.name.lower()) if len(path.parts) >= 2 else None
            if label is None or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            meta = {c: "" for c in _META_COLUMNS}
            meta["finding"] = FINDING[label]
            nih = NIH_NAME.match(path.stem)
            match = ieee_by_name.get(path.name.lower()) or ieee_by_name.get(path.stem.lower())
            key = None
            if nih:
                meta.update(patient_id=f"nih-{nih.group(1)}", license=NIH_LICENSE)
            elif match is not None:
                key, ieee_meta = match
                meta.update(ieee_meta)
            else:
                meta["patient_id"] = f"darkcovidnet-{path.stem}"
            found.items.append(Item(self.name, member, label, meta, key=key,
                                    patient_known=bool(nih) or match is not None))
        if not found.items:
            raise FetchError(f"darkcovidnet: {archive.path} holds no Covid-19 / No_findings / Pneumonia image folders; "
                             "is it the muhammedtalo/COVID-19 archive?")
        if ieee is None:
            found.warnings.append(
                "without ieee8023 the DarkCovidNet covid images cannot be matched to their ieee8023 "
                "patients: each is its own patient (darkcovidnet-<name>), so follow-up images of one "
                "patient may fall on both sides of a split")
        return found
