"""The architecture holds: imports flow one way (import-linter), light entry points stay light."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", "--config", str(cwd / "pyproject.toml")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contract_is_kept():
    result = _lint(REPO / "src", REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, wrong_import", [
    ("data/manifest.py", "from cxrdx.training import pipeline"),   # a lower layer reaching up
    ("models/hybrid.py", "from cxrdx.serve import app"),
    ("stats/metrics.py", "import cxrdx.data.manifest"),
])
def test_import_contract_fails_on_a_wrong_import(tmp_path, module, wrong_import):
    shutil.copytree(REPO / "src" / "cxrdx", tmp_path / "src" / "cxrdx", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "src" / "cxrdx" / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # deliberately wrong\n")
    result = _lint(tmp_path / "src", tmp_path)
    assert result.returncode != 0
    assert "0 kept, 1 broken" in result.stdout
    assert f"cxrdx.{module[:-3].replace('/', '.')}" in result.stdout


def _loaded_modules(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(m for m in sys.modules if m.startswith('cxrdx') or m.startswith('sklearn')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_server_app_loads_no_training_code():
    loaded = _loaded_modules("import cxrdx.serve.app")
    assert "cxrdx.serve.app" in loaded
    assert not {m for m in loaded if m.startswith("cxrdx.training")}, sorted(loaded)
    assert not {m for m in loaded if m.startswith(("cxrdx.evaluation", "cxrdx.cli"))}, sorted(loaded)


def test_package_inits_are_light():
    loaded = _loaded_modules("import cxrdx, cxrdx.data, cxrdx.models, cxrdx.training, cxrdx.evaluation, cxrdx.explain, cxrdx.series, cxrdx.serve")
    heavy = {m for m in loaded if m.count(".") >= 2 or m.startswith("sklearn")}
    assert not heavy, sorted(heavy)
