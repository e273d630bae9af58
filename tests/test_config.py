import pytest

from cxrdx.config import Config, ConfigError, load_config


def test_defaults_yaml_and_overrides(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("model:\n  head: gru\ntrain:\n  epochs: 7\ndata:\n  task: binary\n")
    cfg = load_config(yml, ["train.lr=0.01", "model.weights=none", "data.cache_dir=none", "train.augment=false"])
    assert cfg.model.head == "gru"
    assert cfg.train.epochs == 7
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.model.weights == "none"
    assert cfg.data.cache_dir is None
    assert cfg.train.augment == "none"  # false of older configs still works: no augmentation
    assert cfg.data.classes == ("covid", "non-covid")


def test_round_trip_through_json(tmp_path):
    cfg = load_config(overrides=["model.head=attention", "train.threads=2"])
    cfg.save(tmp_path / "config.json")
    import json

    again = Config.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert again == cfg


@pytest.mark.parametrize(
    "override, message",
    [("model.colour=red", "unknown config key"), ("train.epochs=many", "expected int"), ("nonsense", "section.key=value")],
)
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])
