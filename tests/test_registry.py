"""One registry type: register / get / names, one UnknownNameError, names checked before any data is read."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cxrdx.cli import app
from cxrdx.config import ConfigError, load_config
from cxrdx.registry import Registry, UnknownNameError, get_registry, kinds


def test_register_get_names_and_one_error_shape():
    reg = Registry("test-widgets")
    reg.register("a", 1)

    @reg.register("b")
    class B:
        """A widget called b."""

    assert reg.names() == ["a", "b"] and reg.get("b") is B and "a" in reg and len(reg) == 2
    assert reg.describe("b") == "A widget called b."
    with pytest.raises(UnknownNameError) as info:
        reg.get("zzz")
    assert str(info.value) == "unknown test-widget 'zzz'; choose one of: a, b"
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="twice"):
        reg.register("a", 2)


@pytest.mark.parametrize("kind", kinds())
def test_every_provider_fills_its_registry(kind):
    registry = get_registry(kind)
    assert registry.kind == kind and len(registry) >= 1


@pytest.mark.parametrize("override, message", [
    ("model.head=foo", "model.head: unknown head 'foo'"),
    ("model.backbone=resnet9000", "model.backbone: unknown backbone 'resnet9000'"),
    ("serve.runtime=bogus", "serve.runtime: unknown runtime 'bogus'"),
    ("explain.method=magic", "explain.method: unknown cam-method 'magic'"),
    ("evaluation.heads=lstm,nope", "evaluation.heads: unknown head 'nope'"),
    ("data.task=4class", "data.task: unknown task '4class'"),
])
def test_load_config_checks_every_registered_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_cli_rejects_an_unknown_head_in_one_line_before_reading_data(tmp_path):
    result = CliRunner().invoke(app, ["train", "--head", "foo", "--data", str(tmp_path / "no-such-folder")])
    assert result.exit_code == 2
    assert "unknown head 'foo'" in result.output and "Traceback" not in result.output
    assert "no-such-folder" not in result.output  # failed on the name, before looking for data


def test_cxrdx_list_comes_from_the_registries():
    result = CliRunner().invoke(app, ["list", "heads"])
    assert result.exit_code == 0
    for name in get_registry("heads").names():
        assert name in result.output
    bad = CliRunner().invoke(app, ["list", "bogus"])
    assert bad.exit_code == 2 and "unknown registry 'bogus'" in bad.output
