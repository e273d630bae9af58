"""`cxrdx data fetch` on small local archives that mimic the two public repositories (no internet)."""

from __future__ import annotations

import csv
import functools
import http.server
import io
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_xray
from cxrdx.cli import app
from cxrdx.data.fetch import COLUMNS, FetchError, download, fetch, label_from_finding, resized_size
from cxrdx.data.manifest import load_manifest

DCN = "COVID-19-master/X-Ray Image DataSet"
IEEE = "covid-chestxray-dataset-master"
IEEE_HEADER = (
    "patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,view,modality,date,location,"
    "folder,filename,doi,url,license,clinical_notes,other_notes"
)


def _encode(arr: np.ndarray, fmt: str, mode: str = "L") -> bytes:
    img = Image.fromarray(arr, "L")
    if mode != "L":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    shared = _encode(make_xray((300, 360), seed=1), "JPEG", "RGB")  # in both repos, same name
    twin = _encode(make_xray((280, 280), seed=2), "PNG", "RGB")  # in both repos, other name
    dcn = {
        f"{DCN}/Covid-19/shared-a.jpeg": shared,
        f"{DCN}/Covid-19/renamed-twin.png": twin,
        f"{DCN}/Covid-19/only-dcn.png": _encode(make_xray((512, 400), seed=3), "PNG", "RGBA"),
        f"{DCN}/No_findings/00000013_005.png": _encode(make_xray((320, 320), seed=4), "PNG"),
        f"{DCN}/No_findings/00000013_006.png": _encode(make_xray((320, 320), seed=5), "PNG"),
        f"{DCN}/Pneumonia/00000061_012.png": _encode(make_xray((300, 300), seed=6), "PNG"),
        f"{DCN}/Pneumonia/broken.png": _encode(make_xray((300, 300), seed=13), "PNG")[:300],  # truncated
        "COVID-19-master/README.md": b"# DarkCovidNet\n",
        f"{DCN}/Pneumonia/.DS_Store": b"junk",
    }
    rows = [
        # patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,view,modality,date,location,folder,filename,doi,url,license,notes
        ["1", "0", "F", "55", "Pneumonia/Viral/COVID-19", "Y", "", "N", "PA", "X-ray", "2020", "Italy", "images", "shared-a.jpeg", "", "", "", "", ""],
        ["1", "3", "F", "55", "Pneumonia/Viral/COVID-19", "Y", "", "N", "AP Supine", "X-ray", "2020", "Italy", "images", "day3.png", "10.1/x", "", "CC BY 4.0", "", ""],
        ["2", "", "M", "40", "Pneumonia/Viral/COVID-19", "Y", "", "", "L", "X-ray", "2020", "", "images", "lateral.jpg", "", "", "", "", ""],
        ["3", "2", "M", "61", "Pneumonia/Viral/COVID-19", "Y", "", "", "Axial", "CT", "2020", "", "images", "ct.jpg", "", "", "", "", ""],
        ["4", "", "F", "30", "No Finding", "", "", "", "PA", "X-ray", "2019", "Spain", "images", "normal1.png", "", "", "CC BY-NC-SA 4.0", "", ""],
        ["5", "1", "M", "70", "Pneumonia/Bacterial/Streptococcus", "", "N", "", "AP", "X-ray", "2019", "", "images", "strep.jpg", "", "", "", "", ""],
        ["6", "", "", "", "todo", "", "", "", "PA", "X-ray", "", "", "images", "todo.jpg", "", "", "", "", ""],
        ["7", "5", "M", "48", "Pneumonia/Viral/COVID-19", "Y", "Y", "", "PA", "X-ray", "2020", "Wuhan, China", "images", "content-twin.png", "", "", "", "", ""],
        ["8", "", "", "", "Pneumonia/Viral/COVID-19", "", "", "", "PA", "X-ray", "", "", "images", "missing.jpg", "", "", "", "", ""],
    ]
    meta = io.StringIO()
    writer = csv.writer(meta, lineterminator="\n")
    writer.writerow(IEEE_HEADER.split(","))
    writer.writerows(rows)
    ieee = {
        f"{IEEE}/metadata.csv": meta.getvalue().encode(),
        f"{IEEE}/images/shared-a.jpeg": shared,
        f"{IEEE}/images/day3.png": _encode(make_xray((80, 100), seed=7), "PNG", "RGBA"),  # small: upscaled
        f"{IEEE}/images/lateral.jpg": _encode(make_xray((300, 200), seed=8), "JPEG"),
        f"{IEEE}/images/ct.jpg": _encode(make_xray((300, 300), seed=9), "JPEG"),
        f"{IEEE}/images/normal1.png": _encode(make_xray((400, 300), seed=10), "PNG"),
        f"{IEEE}/images/strep.jpg": _encode(make_xray((600, 500), seed=11), "JPEG", "RGB"),
        f"{IEEE}/images/todo.jpg": _encode(make_xray((300, 300), seed=12), "JPEG"),
        f"{IEEE}/images/content-twin.png": twin,
        f"{IEEE}/annotations/metadata.csv": b"not,the,one\n",  # a deeper metadata.csv is ignored
    }
    out = {}
    for name, files in (("darkcovidnet", dcn), ("ieee8023", ieee)):
        path = root / f"{name}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for member, data in files.items():
                zf.writestr(member, data)
        out[name] = path
    return out


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "metadata.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        return {r["original_name"]: r for r in reader}


def _check_dataset(out: Path) -> None:
    rows = _rows(out)
    assert set(rows) == {
        "shared-a.jpeg", "renamed-twin.png", "only-dcn.png", "00000013_005.png", "00000013_006.png",
        "00000061_012.png", "day3.png", "normal1.png", "strep.jpg",
    }
    expect = {  # original name: (label, patient, source, benchmark)
        "shared-a.jpeg": ("covid", "ieee8023-1", "darkcovidnet", "darkcovidnet"),  # matched by name
        "renamed-twin.png": ("covid", "ieee8023-7", "darkcovidnet", "darkcovidnet"),  # matched by content
        "only-dcn.png": ("covid", "darkcovidnet-only-dcn", "darkcovidnet", "darkcovidnet"),
        "00000013_005.png": ("normal", "nih-00000013", "darkcovidnet", "darkcovidnet"),
        "00000013_006.png": ("normal", "nih-00000013", "darkcovidnet", "darkcovidnet"),
        "00000061_012.png": ("pneumonia", "nih-00000061", "darkcovidnet", "darkcovidnet"),
        "day3.png": ("covid", "ieee8023-1", "ieee8023", ""),
        "normal1.png": ("normal", "ieee8023-4", "ieee8023", ""),
        "strep.jpg": ("pneumonia", "ieee8023-5", "ieee8023", ""),
    }
    for name, (label, patient, source, benchmark) in expect.items():
        r = rows[name]
        assert (r["label"], r["patient_id"], r["source"], r["benchmark"]) == (label, patient, source, benchmark), name
        assert r["image"].startswith(f"images/{label}/") and r["image"].endswith(".png")
        with Image.open(out / r["image"]) as img:
            assert img.mode == "L" and img.format == "PNG"
            assert min(img.size) == 256
            w, h = int(r["original_width"]), int(r["original_height"])
            assert img.size == resized_size(w, h)  # aspect kept
    # metadata carried over from ieee8023
    assert rows["shared-a.jpeg"]["offset_days"] == "0" and rows["shared-a.jpeg"]["location"] == "Italy"
    assert rows["renamed-twin.png"]["offset_days"] == "5" and rows["renamed-twin.png"]["location"] == "Wuhan, China"
    day3 = rows["day3.png"]
    assert (day3["view"], day3["offset_days"], day3["sex"], day3["age"], day3["license"], day3["doi"]) == (
        "AP Supine", "3", "F", "55", "CC BY 4.0", "10.1/x")
    assert (day3["original_width"], day3["original_height"], day3["original_mode"]) == ("100", "80", "RGBA")
    assert rows["only-dcn.png"]["original_mode"] == "RGBA"
    assert rows["strep.jpg"]["original_mode"] == "RGB"
    assert rows["00000013_005.png"]["license"] == "NIH ChestX-ray8 (public)"
    assert rows["00000013_005.png"]["finding"] == "No Finding"
    # every written image is listed, nothing else
    written = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert written == {r["image"] for r in rows.values()}
    # the project's loader reads it
    df = load_manifest(out)
    assert len(df) == 9
    assert df["label"].value_counts().to_dict() == {"covid": 4, "normal": 3, "pneumonia": 2}
    assert len(load_manifest(out, benchmark="darkcovidnet")) == 6


def test_fetch_api_builds_a_cxr3_like_dataset(archives, tmp_path):
    out = tmp_path / "ds"
    result = fetch(
        out,
        source_urls={"darkcovidnet": str(archives["darkcovidnet"]), "ieee8023": archives["ieee8023"].as_uri()},
        progress=False, workers=2,
    )
    _check_dataset(out)
    assert result.counts == {"covid": 4, "pneumonia": 2, "normal": 3}
    assert result.per_source == {"darkcovidnet": 6, "ieee8023": 3}
    assert result.duplicates == 2  # shared-a.jpeg by name, content-twin.png by content
    skipped = {(s.source, s.file): s.reason for s in result.skipped}
    assert set(skipped) == {("darkcovidnet", "broken.png"), ("ieee8023", "missing.jpg")}
    assert "corrupt" in skipped[("darkcovidnet", "broken.png")]
    excluded = " | ".join(result.excluded)
    assert "CT" in excluded and "view L" in excluded and "todo" in excluded
    assert sum(result.excluded.values()) == 3
    assert (out / "fetch_report.json").is_file()

    # a second run refuses to overwrite without being asked, then rebuilds the same thing
    with pytest.raises(FetchError, match="--overwrite"):
        fetch(out, source_urls={"darkcovidnet": str(archives["darkcovidnet"]), "ieee8023": str(archives["ieee8023"])},
              progress=False)
    fetch(out, source_urls={"darkcovidnet": str(archives["darkcovidnet"]), "ieee8023": str(archives["ieee8023"])},
          progress=False, workers=1, overwrite=True)
    _check_dataset(out)


def test_fetch_cli(archives, tmp_path):
    out = tmp_path / "cli-ds"
    result = CliRunner().invoke(app, [
        "data", "fetch", "--out", str(out), "--no-progress",
        "--source-url", f"darkcovidnet={archives['darkcovidnet']}",
        "--source-url", f"ieee8023={archives['ieee8023'].as_uri()}",
    ])
    assert result.exit_code == 0, result.output
    _check_dataset(out)
    text = " ".join(result.output.split())
    assert "broken.png" in text and "skipped" in text
    assert "covid" in text and "pneumonia" in text and "normal" in text
    assert "2 image(s) found in both sources" in text


def test_fetch_only_one_source_from_an_extracted_folder(archives, tmp_path):
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(archives["darkcovidnet"]) as zf:
        zf.extractall(folder)
    out = tmp_path / "dcn"
    result = fetch(out, only="darkcovidnet", source_urls={"darkcovidnet": str(folder)}, progress=False)
    rows = _rows(out)
    assert len(rows) == 6 and {r["benchmark"] for r in rows.values()} == {"darkcovidnet"}
    # without ieee8023 metadata the covid images are their own patients, and the user is told
    assert rows["shared-a.jpeg"]["patient_id"] == "darkcovidnet-shared-a"
    assert any("ieee8023" in w for w in result.warnings)
    assert list(result.per_source) == ["darkcovidnet"]


def test_unreachable_url_fails_fast_with_a_clear_message(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch(tmp_path / "x", only="darkcovidnet", source_urls={"darkcovidnet": "http://127.0.0.1:9/x.zip"},
              timeout=5, progress=False)
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert "http://127.0.0.1:9/x.zip" in msg and "--source-url darkcovidnet=" in msg and "\n" not in msg
    assert not (tmp_path / "x" / "metadata.csv").exists()

    t0 = time.monotonic()
    result = CliRunner().invoke(app, [
        "data", "fetch", "--out", str(tmp_path / "y"), "--only", "darkcovidnet", "--timeout", "5",
        "--source-url", "darkcovidnet=http://127.0.0.1:9/x.zip",
    ])
    assert time.monotonic() - t0 < 10
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "error:" in text and "http://127.0.0.1:9/x.zip" in text and "--source-url" in text
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, match", [
    (["--only", "kaggle"], "unknown source 'kaggle'"),
    (["--source-url", "darkcovidnet"], "NAME=VALUE"),
    (["--source-url", "nih=/tmp/x.zip"], "unknown source 'nih'"),
    (["--only", "darkcovidnet", "--source-url", "darkcovidnet=/nonexistent/COVID-19-master.zip"], "does not exist"),
])
def test_cli_user_errors_exit_2(tmp_path, args, match):
    result = CliRunner().invoke(app, ["data", "fetch", "--out", str(tmp_path / "o"), "--no-progress", *args])
    assert result.exit_code == 2, result.output
    assert match in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_not_a_zip_is_a_clear_error(tmp_path):
    bad = tmp_path / "page.zip"
    bad.write_text("<html>rate limited</html>")
    with pytest.raises(FetchError, match="not a readable zip"):
        fetch(tmp_path / "o", only="ieee8023", source_urls={"ieee8023": str(bad)}, progress=False)


@pytest.fixture()
def http_server(archives):
    """A local HTTP server (127.0.0.1 only) serving the test archives."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archives["ieee8023"].parent))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_is_atomic_verified_and_cached(archives, http_server, tmp_path):
    import hashlib

    good = hashlib.sha256(archives["ieee8023"].read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "ieee8023.zip"
    # a stale partial file from an interrupted run is replaced (this server ignores Range)
    dest.parent.mkdir(parents=True)
    (dest.parent / "ieee8023.zip.part").write_bytes(b"stale")
    download(f"{http_server}/ieee8023.zip", dest, sha256=good, progress=False, name="ieee8023")
    assert dest.read_bytes() == archives["ieee8023"].read_bytes()
    assert not (dest.parent / "ieee8023.zip.part").exists()

    # a wrong checksum leaves nothing behind
    other = tmp_path / "other.zip"
    with pytest.raises(FetchError, match="SHA-256"):
        download(f"{http_server}/ieee8023.zip", other, sha256="0" * 64, progress=False)
    assert not other.exists() and not other.with_name("other.zip.part").exists()

    # HTTP errors name the URL
    with pytest.raises(FetchError, match="HTTP 404.*nope.zip|nope.zip.*HTTP 404"):
        download(f"{http_server}/nope.zip", tmp_path / "nope.zip", progress=False, name="ieee8023")

    # fetch over HTTP, with the expected hash; the second run uses the cache (server gone is fine)
    out = tmp_path / "ds"
    result = fetch(out, only="ieee8023", source_urls={"ieee8023": f"{http_server}/ieee8023.zip"},
                   sha256={"ieee8023": good}, progress=False)
    assert result.counts == {"covid": 3, "pneumonia": 1, "normal": 1}
    assert (out / ".cache" / "ieee8023.zip").is_file()
    messages: list[str] = []
    fetch(out, only="ieee8023", source_urls={"ieee8023": "http://127.0.0.1:9/ieee8023.zip"}, overwrite=True,
          progress=False, echo=messages.append)
    assert any("cached" in m for m in messages)


@pytest.mark.parametrize("finding, label", [
    ("Pneumonia/Viral/COVID-19", "covid"), ("COVID-19, ARDS", "covid"), ("No Finding", "normal"),
    ("Pneumonia/Bacterial/Streptococcus", "pneumonia"), ("SARS", "pneumonia"), ("Pneumocystis", "pneumonia"),
    ("Pneumonia", "pneumonia"), ("todo", None), ("Unknown", None), ("Tuberculosis", None), ("", None),
])
def test_label_from_finding(finding, label):
    assert label_from_finding(finding) == label


def test_resized_size_keeps_aspect_and_short_side():
    assert resized_size(1024, 1024) == (256, 256)
    assert resized_size(2000, 1000) == (512, 256)
    assert resized_size(80, 100) == (256, 320)
