"""benchmarks/: the README's performance section is the rendering of the committed JSON; gpu.py exits cleanly without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import render_readme  # noqa: E402


def test_readme_performance_section_is_rendered_from_the_committed_json():
    text = render_readme.README.read_text()
    assert render_readme.readme_section(text) == render_readme.render(), "run: python benchmarks/render_readme.py"


def test_render_names_the_gpu_or_says_there_was_none(tmp_path):
    (tmp_path / "gpu.json").write_text(json.dumps({"benchmark": "gpu", "gpu": None, "note": "no CUDA GPU was available",
                                                   "generated_at": "t", "command": "c"}))
    assert "**GPU:** none. no CUDA GPU was available" in render_readme.render(tmp_path)


def test_gpu_script_without_a_gpu_exits_0_and_says_so(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--json", str(out)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["gpu"] is None and "no CUDA GPU" in report["note"] and "no CUDA GPU" in res.stdout
