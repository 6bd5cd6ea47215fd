import json

import pytest

from diffscape import config
from diffscape.cli import main


def test_presets_resolve_and_differ():
    names = config.preset_names()
    assert {"tiny", "small", "base", "base64"} <= set(names)
    tiny, base64 = config.resolve("tiny"), config.resolve("base64")
    assert tiny.model.image_size == 32 and base64.model.image_size == 64
    assert tiny.model.channels != base64.model.channels
    assert tiny.preset == "tiny"


def test_overrides_are_typed():
    cfg = config.resolve(
        "tiny",
        ["train.lr=1e-4", "model.channels=[16, 32]", "model.attention_resolutions=[16]",
         "train.hflip=false", "model.activation=gelu", "train.steps=10"],
    )  # fmt: skip
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.channels == (16, 32)
    assert cfg.train.hflip is False
    assert cfg.model.activation == "gelu"
    assert cfg.train.steps == 10 and isinstance(cfg.train.steps, int)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.lrr=1", "train.lrr"),
        ("train.lr=fast", "train.lr"),
        ("train.steps=1.5", "train.steps"),
        ("model.activation=tanh", "model.activation"),
        ("model.attention_resolutions=[7]", "model.attention_resolutions"),
        ("model.norm_groups=5", "model.norm_groups"),
        ("train.ema_decay=1.5", "train.ema_decay"),
        ("nosuch.x=1", "nosuch.x"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(config.ConfigError, match=field.replace(".", r"\.")):
        config.resolve("tiny", [override])


def test_json_round_trip(tmp_path):
    cfg = config.resolve("small", ["model.conditional=true", "model.num_classes=5"])
    cfg.save(tmp_path / "config.json")
    assert config.load_config_json(tmp_path / "config.json") == cfg


def test_shape_changes_and_diff():
    a = config.resolve("tiny")
    b = config.resolve("tiny", ["model.channels=[32, 64, 128]", "train.lr=1e-3"])
    changes = config.shape_changes(a, b)
    assert len(changes) == 1 and changes[0].startswith("model.channels")
    assert config.diff(a, b) == {"model.channels": (32, 64, 128), "train.lr": 1e-3}


def test_preset_from_toml_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        "[model]\nchannels = [16, 32]\nattention_resolutions = []\n[train]\nsteps = 7\n"
    )
    cfg = config.resolve(str(path))
    assert cfg.model.channels == (16, 32) and cfg.train.steps == 7


def test_cli_dry_run_prints_resolved_config(tmp_path, capsys):
    from fixtures_data import colour_dataset

    colour_dataset(tmp_path / "ds")
    rc = main(["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--dry-run",
               "--conditional", "--set", "train.lr=3e-4"])  # fmt: skip
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["lr"] == 3e-4
    assert printed["model"]["num_classes"] == 3  # filled in from the dataset
    assert not (tmp_path / "run").exists()


def test_cli_reports_bad_override(tmp_path, capsys):
    from fixtures_data import colour_dataset

    colour_dataset(tmp_path / "ds")
    rc = main(["train", str(tmp_path / "ds"), "--out", str(tmp_path / "r"), "--set", "train.x=1"])
    assert rc == 2
    assert "train.x" in capsys.readouterr().err
