"""Issue 11, findings 9 and 10: every user error is one line and exit 2; `predict` is honest about what it skipped.

A tiny untrained run folder (EfficientNet-Lite0 without pretrained weights + pool head) and
every broken input are made here.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrdx.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    from cxrdx.models.factory import create_model
    from cxrdx.models.run import save_run

    run = tmp_path_factory.mktemp("run") / "good"
    save_run(create_model("tf_efficientnet_lite0", "pool", weights="none"), run)
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(6):
        coarse = rng.integers(0, 256, (8, 8)).astype(np.uint8)
        Image.fromarray(coarse).resize((64, 64), Image.BICUBIC).save(folder / f"x{i}.png")
    return folder


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


def _broken_run(good: Path, tmp_path: Path, info=None, weights: bytes | None = None) -> Path:
    run = tmp_path / "run"
    shutil.copytree(good, run)
    if info is not None:
        (run / "model.json").write_text(info if isinstance(info, str) else json.dumps(info))
    if weights is not None:
        (run / "model.safetensors").write_bytes(weights)
    return run


# --------------------------------------------------------------------- finding 9: run folders


def _info(good: Path) -> dict:
    return json.loads((good / "model.json").read_text())


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("list", "must hold a JSON object, not a list"),
        ("not-json", "is not valid JSON"),
        ("unknown-key", "unknown key(s) ['colour']"),
        ("missing-key", "missing key(s) ['classes']"),
        ("bad-type", "'hidden' must be a non-negative integer"),
        ("bad-classes", "'classes' must be a list of class names"),
    ],
)
def test_malformed_model_json_is_one_line(good_run, images, tmp_path, case, fragment):
    info = _info(good_run)
    edits = {
        "list": "[1, 2, 3]",
        "not-json": "{not json",
        "unknown-key": {**info, "colour": "red"},
        "missing-key": {k: v for k, v in info.items() if k != "classes"},
        "bad-type": {**info, "hidden": "lots"},
        "bad-classes": {**info, "classes": "covid"},
    }
    run = _broken_run(good_run, tmp_path, info=edits[case])
    assert_one_line_error(invoke("predict", images / "x0.png", "--model", run), "model.json", fragment)


@pytest.mark.parametrize("case", ["truncated", "empty", "pickle"])
def test_broken_weights_are_one_line(good_run, images, tmp_path, case):
    data = (good_run / "model.safetensors").read_bytes()
    weights = {"truncated": data[: len(data) // 2], "empty": b"", "pickle": pickle.dumps({"head.fc.weight": [1.0]})}[case]
    run = _broken_run(good_run, tmp_path, weights=weights)
    assert_one_line_error(invoke("predict", images / "x0.png", "--model", run), "not a readable safetensors file")


def test_wrong_class_count_is_one_line(good_run, images, tmp_path):
    run = _broken_run(good_run, tmp_path, info={**_info(good_run), "classes": ["covid", "non-covid"]})
    assert_one_line_error(invoke("predict", images / "x0.png", "--model", run), "does not match model.json", "2 classes")


# --------------------------------------------------------------------- finding 9: options and data


def test_serve_bad_options_are_one_line(good_run):
    assert_one_line_error(invoke("serve", "--model", good_run, "--runtime", "bogus"), "unknown runtime 'bogus'")
    assert_one_line_error(invoke("serve", "--model", good_run, "--port", "99999"), "serve.port", "65535")
    assert_one_line_error(invoke("serve", "--model", good_run, "--database-url", "notadb://x"), "notadb")


def _manifest(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = folder / f"m{len(rows)}-{abs(hash(tuple(rows))) % 10**8}.csv"
    path.write_text("image,label,patient_id\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    return path


def test_train_with_three_rows_is_one_line(images, tmp_path):
    csv = _manifest(images, [(f"x{i}.png", lab, f"p{i}") for i, lab in enumerate(("covid", "pneumonia", "normal"))])
    result = invoke("train", "--manifest", csv, "--head", "pool", "--weights", "none", "--epochs", "1",
                    "--out", tmp_path / "out", "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert_one_line_error(result, "cannot split 3 image(s)")


def test_train_unknown_head_fails_before_reading_data(tmp_path):
    missing = tmp_path / "no-such-manifest.csv"  # the name check must come first
    assert_one_line_error(invoke("train", "--manifest", missing, "--head", "foo"), "unknown head 'foo'")


def test_evaluate_single_class_and_unknown_labels(good_run, images, tmp_path):
    single = _manifest(images, [(f"x{i}.png", "covid", f"p{i}") for i in range(4)])
    assert_one_line_error(invoke("evaluate", good_run, "--manifest", single), "one label 'covid'")
    unknown = _manifest(images, [(f"x{i}.png", "covid-ish", f"p{i}") for i in range(4)])
    assert_one_line_error(invoke("evaluate", good_run, "--manifest", unknown), "unknown labels", "covid-ish")


def test_evaluate_bad_part_and_bad_split_labels(good_run, images, tmp_path):
    run = _broken_run(good_run, tmp_path)
    rows = [f"{images / f'x{i}.png'},{lab},p{i},test\n" for i, lab in enumerate(("covid", "pneumonia", "normal", "covid"))]
    (run / "split.csv").write_text("image,label,patient_id,part\n" + "".join(rows))
    assert_one_line_error(invoke("evaluate", run, "--part", "bogus"), "bogus", "test")
    (run / "split.csv").write_text("image,label,patient_id,part\n" + "".join(rows).replace(",normal,", ",covid-ish,"))
    assert_one_line_error(invoke("evaluate", run), "covid-ish")


# --------------------------------------------------------------------- finding 10: predict


def test_predict_exits_nonzero_when_nothing_was_predicted(good_run, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    result = invoke("predict", bad, "--model", good_run)
    assert result.exit_code == 1 and "bad.png" in result.output and "0 predicted, 1 skipped" in result.output
    missing = invoke("predict", tmp_path / "nope.png", "--model", good_run)
    assert missing.exit_code == 1 and "nope.png: file does not exist" in missing.output
    (tmp_path / "empty").mkdir()
    empty = invoke("predict", tmp_path / "empty", "--model", good_run)
    assert empty.exit_code == 1 and "no images" in empty.output


def test_predict_lists_every_skipped_entry_and_goes_on(good_run, images, tmp_path, monkeypatch):
    folder = tmp_path / "weird"
    folder.mkdir()
    shutil.copy(images / "x0.png", folder / "ok.png")
    os.symlink("loop.png", folder / "loop.png")
    os.symlink("nowhere.png", folder / "dangling.png")
    os.mkfifo(folder / "pipe.png")
    # a file we may not even stat (its folder is mode 0700 of another user): simulated, as root reads anything
    secret = tmp_path / "locked" / "secret.png"
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if self.name == "secret.png":
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    out = tmp_path / "pred.csv"
    result = invoke("predict", folder, tmp_path / "nope.png", secret, images / "x2.png", "--model", good_run, "--out", out)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "loop.png: is a symbolic link loop" in text
    assert "dangling.png: is a broken symbolic link" in text
    assert "pipe.png: is not a regular file" in text
    assert "nope.png: file does not exist" in text
    assert "secret.png: file cannot be read (Permission denied)" in text
    assert "2 predicted, 5 skipped" in text
    predicted = out.read_text()
    assert "ok.png" in predicted and "x2.png" in predicted
