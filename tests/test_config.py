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
    # the CPU presets carry the CPU recipe (docs/real-photos.md); the GPU ones do not (yet)
    for cpu in (tiny, config.resolve("small")):
        assert cpu.diffusion.prediction == "v_prediction"
        assert cpu.diffusion.loss_weighting == "min_snr" and cpu.train.lr == 1e-3
    assert base64.diffusion.prediction == "epsilon"


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
    b = config.resolve("tiny", ["model.channels=[32, 64, 128]", "train.lr=5e-4"])
    changes = config.shape_changes(a, b)
    assert len(changes) == 1 and changes[0].startswith("model.channels")
    assert config.diff(a, b) == {"model.channels": (32, 64, 128), "train.lr": 5e-4}


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


# ---- bounds: every numeric value, read from the one field table (issue 13) ----------------------

REFUSED = [
    ("diffusion.timesteps=1e9", "diffusion.timesteps"),
    ("diffusion.timesteps=1", "diffusion.timesteps"),
    ("train.lr=nan", "train.lr"),
    ("train.lr=inf", "train.lr"),
    ("train.lr=-inf", "train.lr"),
    ("train.lr=0", "train.lr"),
    ("train.weight_decay=nan", "train.weight_decay"),
    ("model.channels=[1000000]", "model.channels"),
    ("model.channels=[8, 8, 8, 8, 8, 8, 8]", "model.channels"),
    ("model.channels=[]", "model.channels"),
    ("model.image_size=4096", "model.image_size"),
    ("model.image_size=4", "model.image_size"),
    ("model.attention_head_dim=0", "model.attention_head_dim"),
    ("model.attention_head_dim=100000", "model.attention_head_dim"),
    ("model.layers_per_block=0", "model.layers_per_block"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=100000", "train.batch_size"),
    ("train.steps=0", "train.steps"),
    ("train.steps=1e10", "train.steps"),
    ("train.steps=inf", "train.steps"),
    ("train.minutes=-1", "train.minutes"),
    ("train.minutes=inf", "train.minutes"),
    ("train.seed=-1", "train.seed"),
    (f"train.seed={2**63}", "train.seed"),
    ("train.ema_decay=1", "train.ema_decay"),
    ("train.sample_steps=0", "train.sample_steps"),
    ("diffusion.beta_start=0", "diffusion.beta_start"),
    ("diffusion.min_snr_gamma=nan", "diffusion.min_snr_gamma"),
]


@pytest.mark.parametrize(("override", "field"), REFUSED)
def test_out_of_bounds_values_are_refused_in_one_line(override, field):
    with pytest.raises(config.ConfigError) as caught:
        config.resolve("tiny", [override])
    message = str(caught.value)
    assert message.startswith(field + ":") and "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [(["diffusion.timesteps=2"], "diffusion.timesteps", 2),
     (["diffusion.timesteps=10000"], "diffusion.timesteps", 10_000),
     ([f"train.seed={2**63 - 1}"], "train.seed", 2**63 - 1),
     (["train.minutes=0"], "train.minutes", 0.0),
     (["train.steps=1e3"], "train.steps", 1000),
     (["model.channels=[8, 8, 8, 8, 8, 8]"], "model.channels", (8,) * 6),
     (["model.image_size=512", "model.attention_resolutions=[]"], "model.image_size", 512),
     (["train.batch_size=65536"], "train.batch_size", 65_536),
     (["train.ema_decay=0"], "train.ema_decay", 0.0)],
)  # fmt: skip
def test_values_at_the_bounds_are_accepted(overrides, key, expected):
    value = config.get_field(config.resolve("tiny", overrides), key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("model", "image_size", 4096), ("model", "num_classes", 10**9), ("model", "channels", [10**6]),
     ("model", "attention_resolutions", [8] * 100), ("diffusion", "timesteps", 10**9),
     ("train", "lr", "nan"), ("train", "batch_size", -3)],
)  # fmt: skip
def test_hostile_config_json_is_refused_before_anything_is_built(tmp_path, section, key, value):
    data = config.resolve("tiny", ["model.conditional=true", "model.num_classes=3"]).to_dict()
    data[section][key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(config.ConfigError, match=rf"{section}\.{key}") as caught:
        config.load_config_json(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"model": 3}', '{"train": {"x": 1}}'])
def test_garbage_config_json_is_a_config_error(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match="config.json"):
        config.load_config_json(path)


# ---- one engine for sampling, evaluation and judging (issue 15) ---------------------------------

SECTION_REFUSED = [
    ("sample", {"n": 0}, "sample.n"),
    ("sample", {"n": -1}, "sample.n"),
    ("sample", {"steps": 0}, "sample.steps"),
    ("sample", {"guidance": float("nan")}, "sample.guidance"),
    ("sample", {"guidance": float("inf")}, "sample.guidance"),
    ("sample", {"guidance": -1}, "sample.guidance"),
    ("sample", {"eta": float("nan")}, "sample.eta"),
    ("sample", {"eta": 1.5}, "sample.eta"),
    ("sample", {"seed": -1}, "sample.seed"),
    ("sample", {"sampler": "euler"}, "sample.sampler"),
    ("sample", {"n": 2.5}, "sample.n"),
    ("sample", {"nn": 2}, "sample.nn"),
    ("evaluate", {"n": 1}, "evaluate.n"),
    ("evaluate", {"n_real": 10**12}, "evaluate.n_real"),
    ("evaluate", {"split": 3}, "evaluate.split"),
    ("judge", {"kind": "resnet"}, "judge.kind"),
    ("judge", {"enabled": "maybe"}, "judge.enabled"),
]


@pytest.mark.parametrize(("section", "values", "field"), SECTION_REFUSED)
def test_sample_evaluate_judge_settings_are_checked(section, values, field):
    with pytest.raises(config.ConfigError) as caught:
        config.parse_section(section, values)
    assert str(caught.value).startswith(field + ":") and "\n" not in str(caught.value)


def test_one_coercion_for_cli_text_and_native_values():
    from_text = config.parse_section("sample", {"n": "16", "guidance": "2.5", "sampler": "dpm"})
    native = config.parse_section("sample", {"n": 16, "guidance": 2.5, "sampler": "dpm"})
    assert from_text == native == config.SampleSettings(n=16, sampler="dpm", guidance=2.5)
    assert config.parse_section("evaluate", {"n": None, "floor": "false"}).floor is False
    assert config.parse_section("judge", {}) == config.JudgeSettings()
    with pytest.raises(config.ConfigError, match="sample.n"):
        config.check_settings(config.SampleSettings(n=0))
    # a sweep's mapping of dotted keys and the CLI's texts resolve alike
    texts = config.resolve("tiny", ["train.lr=1e-3", "model.attention_resolutions=[16]"])
    mapping = config.resolve("tiny", {"train.lr": 1e-3, "model.attention_resolutions": [16]})
    assert texts == mapping and mapping.model.attention_resolutions == (16,)


def test_sweep_spec_uses_the_config_engine(tmp_path):
    from diffscape.sweep import spec
    from diffscape.sweep.plan import plan, resolve_config

    assert spec.SampleSettings is config.SampleSettings  # re-exported under the old names
    assert spec.EvaluateSettings is config.EvaluateSettings
    assert spec.JudgeSettings is config.JudgeSettings
    assert not hasattr(spec, "_coerce")
    assert resolve_config("tiny", {"train.steps": 7}) == config.resolve("tiny", ["train.steps=7"])
    path = tmp_path / "s.toml"
    for body, field in [
        ("[sample]\neta = nan\n", "sample.eta"),
        ("[sample]\nsteps = 0\n", "sample.steps"),
        ("[sample.grid]\nguidance = [1, inf]\n", "sample.guidance"),
        ("[evaluate]\nn_real = -5\n", "evaluate.n_real"),
    ]:
        path.write_text('preset = "tiny"\n' + body)
        with pytest.raises(spec.SweepError, match=field.replace(".", r"\.")):
            spec.load_sweep(path)
    path.write_text('preset = "tiny"\n[base]\ndiffusion.timesteps = 1000000000\n')
    with pytest.raises(spec.SweepError, match=r"diffusion\.timesteps: 1_000_000_000"):
        plan(spec.load_sweep(path))
    with pytest.raises(spec.SweepError, match=r"sample\.n"):
        spec.check_sample(config.SampleSettings(n=0), "here")


def test_sampler_names_come_from_one_place():
    import typing

    from diffscape.model import diffusion

    hints = typing.get_type_hints(config.SampleSettings)
    assert (
        typing.get_args(hints["sampler"])
        == config.SAMPLERS
        == ("ddpm", "ddim", "dpm", "dpm3", "dpm-karras", "unipc", "heun")
    )
    assert tuple(diffusion.SAMPLERS) == config.SAMPLERS
    assert typing.get_args(diffusion.Sampler) == config.SAMPLERS


# ---- the field table rendered: --help text and argparse options ---------------------------------


def test_every_field_has_help_and_every_number_has_bounds():
    for section in config.ALL_SECTIONS:
        for row in config.table(section):
            assert row.help and "\n" not in row.help, row.key
            base = typing_base(row.hint)
            if base in (int, float):
                assert config.bounds_text(row.meta), f"{row.key} has no bounds"


def typing_base(hint):
    import types
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(hint) in (tuple, types.UnionType):
        return args[0]
    return hint


def test_describe_settings_lists_every_key_with_default_and_bounds():
    text = config.describe_settings("model", "diffusion", "train")
    keys = [r.key for s in config.SECTIONS for r in config.table(s)]
    assert len(text.splitlines()) == len(keys)
    for key in keys:
        assert f"  {key}=" in text
    assert (
        "diffusion.timesteps=1000  T, number of noise levels (int; at least 2, at most 10_000)"
        in text
    )
    assert "model.channels=[32, 64, 64]" in text
    everything = config.describe_settings()
    assert "sample.eta=0" in everything and "judge.kind=cnn" in everything


def test_add_setting_arguments_builds_typed_bounded_options(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="throwaway")
    config.add_setting_arguments(
        parser, "sample", ["n", "sampler", "steps", "guidance", "eta", "seed"], defaults={"n": 16}
    )
    config.add_setting_arguments(parser, "evaluate", ["enabled", "n_real"])
    args = parser.parse_args([])
    assert (args.n, args.sampler, args.steps, args.eta, args.enabled, args.n_real) == (
        16, "ddim", 50, 0.0, True, None,
    )  # fmt: skip
    args = parser.parse_args(["--n", "3", "--sampler", "dpm", "--eta", "0.5", "--no-enabled"])
    assert (args.n, args.sampler, args.eta, args.enabled) == (3, "dpm", 0.5, False)
    assert isinstance(args.n, int) and isinstance(args.eta, float)
    for argv, field in [(["--n", "0"], "sample.n"), (["--eta", "nan"], "sample.eta"),
                        (["--seed", "-1"], "sample.seed"), (["--sampler", "euler"], "sampler"),
                        (["--guidance", "inf"], "sample.guidance")]:  # fmt: skip
        with pytest.raises(SystemExit) as caught:
            parser.parse_args(argv)
        assert caught.value.code == 2
        assert field in capsys.readouterr().err
    helptext = " ".join(parser.format_help().split())
    assert "at least 1, at most 1_000_000" in helptext and "default: 16" in helptext
    assert "at least 0, at most 1" in helptext  # eta


def test_train_help_lists_every_setting_from_the_table(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for line in config.describe_settings("model", "diffusion", "train").splitlines():
        assert line in out


@pytest.mark.parametrize(
    "override",
    ["diffusion.timesteps=1e9", "train.lr=nan", "model.channels=[1000000]", "train.seed=-1"],
)
def test_cli_dry_run_refuses_out_of_bounds_in_one_line(tmp_path, capsys, override):
    from fixtures_data import colour_dataset

    colour_dataset(tmp_path / "ds")
    argv = ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--dry-run"]
    assert main([*argv, "--set", override]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert override.partition("=")[0] in err and captured.out == ""
    assert not (tmp_path / "run").exists()
