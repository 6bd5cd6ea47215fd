"""The settings engine (diffscape.settings): presets, overrides, bounds, one-line errors, flags
and help generated from the settings, and files written by earlier versions read back."""

import argparse
import json
from pathlib import Path

import pytest

from diffscape.cli import main
from diffscape.settings import presets
from diffscape.settings.docs import describe_settings
from diffscape.settings.engine import ConfigError, bounds_text, rows, type_text
from diffscape.settings.flags import Flags
from diffscape.settings.sections import (
    ALL_SECTIONS,
    RUN_SECTIONS,
    SAMPLERS,
    CNNSettings,
    DemoSettings,
    EvaluateSettings,
    JudgeSettings,
    SampleSettings,
    SVCSettings,
)

DATA = Path(__file__).parent / "data" / "fee4ff8"  # written by diffscape at commit fee4ff8


def test_presets_resolve_and_differ():
    names = presets.preset_names()
    assert {"tiny", "small", "base", "base64"} <= set(names)
    tiny, base64 = presets.resolve("tiny"), presets.resolve("base64")
    assert tiny.model.image_size == 32 and base64.model.image_size == 64
    assert tiny.model.channels != base64.model.channels
    assert tiny.preset == "tiny"
    # the CPU presets carry the CPU recipe (docs/real-photos.md); the GPU ones do not (yet)
    for cpu in (tiny, presets.resolve("small")):
        assert cpu.diffusion.prediction == "v_prediction"
        assert cpu.diffusion.loss_weighting == "min_snr" and cpu.train.lr >= 1e-3
    assert (tiny.train.lr, tiny.train.lr_schedule) == (2e-3, "cosine")  # issue 26's sweep
    assert base64.diffusion.prediction == "epsilon"


def test_overrides_are_typed():
    cfg = presets.resolve(
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
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        presets.resolve("tiny", [override])


def test_json_round_trip(tmp_path):
    cfg = presets.resolve("small", ["model.conditional=true", "model.num_classes=5"])
    (tmp_path / "config.json").write_text(cfg.to_json())  # as train and checkpoints write it
    assert presets.load_config_json(tmp_path / "config.json") == cfg


def test_shape_changes_and_diff():
    a = presets.resolve("tiny")
    b = presets.resolve("tiny", ["model.channels=[32, 64, 128]", "train.lr=5e-4"])
    changes = presets.shape_changes(a, b)
    assert len(changes) == 1 and changes[0].startswith("model.channels")
    assert presets.diff(a, b) == {"model.channels": (32, 64, 128), "train.lr": 5e-4}


def test_preset_from_toml_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        "[model]\nchannels = [16, 32]\nattention_resolutions = []\n[train]\nsteps = 7\n"
    )
    cfg = presets.resolve(str(path))
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
    with pytest.raises(ConfigError) as caught:
        presets.resolve("tiny", [override])
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
    value = presets.get_field(presets.resolve("tiny", overrides), key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("model", "image_size", 4096), ("model", "num_classes", 10**9), ("model", "channels", [10**6]),
     ("model", "attention_resolutions", [8] * 100), ("diffusion", "timesteps", 10**9),
     ("train", "lr", "nan"), ("train", "batch_size", -3)],
)  # fmt: skip
def test_hostile_config_json_is_refused_before_anything_is_built(tmp_path, section, key, value):
    data = presets.resolve("tiny", ["model.conditional=true", "model.num_classes=3"]).to_dict()
    data[section][key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=rf"{section}\.{key}") as caught:
        presets.load_config_json(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"model": 3}', '{"train": {"x": 1}}'])
def test_garbage_config_json_is_a_config_error(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="config.json"):
        presets.load_config_json(path)


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
    with pytest.raises(ConfigError) as caught:
        ALL_SECTIONS[section].parse(values)
    assert str(caught.value).startswith(field + ":") and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("make", "field"),
    [(lambda: SampleSettings(n=0), "sample.n"), (lambda: EvaluateSettings(batch=True), "evaluate.batch"),
     (lambda: CNNSettings(widths=(0,)), "cnn.widths"), (lambda: CNNSettings(lr=float("nan")), "cnn.lr"),
     (lambda: CNNSettings(shift=0.5), "cnn.shift"), (lambda: SVCSettings(gamma="wide"), "svc.gamma"),
     (lambda: SVCSettings(grid_C=()), "svc.grid_C"), (lambda: DemoSettings(minutes=0), "demo.minutes"),
     (lambda: DemoSettings(sample={"steps": 0}), "demo.sample.steps"),
     (lambda: JudgeSettings(also=("cnn", "svc", "cnn")), "judge.also")],
)  # fmt: skip
def test_settings_built_directly_are_checked_too(make, field):
    with pytest.raises(ConfigError) as caught:
        make()
    assert str(caught.value).startswith(field + ":") and "\n" not in str(caught.value)


def test_one_coercion_for_cli_text_and_native_values():
    from_text = SampleSettings.parse({"n": "16", "guidance": "2.5", "sampler": "dpm"})
    native = SampleSettings.parse({"n": 16, "guidance": 2.5, "sampler": "dpm"})
    assert from_text == native == SampleSettings(n=16, sampler="dpm", guidance=2.5)
    assert EvaluateSettings.parse({"n": None, "floor": "false"}).floor is False
    assert JudgeSettings.parse({}) == JudgeSettings()
    assert SVCSettings(gamma="scale").gamma == "scale" and SVCSettings(gamma="0.5").gamma == 0.5
    # a sweep's mapping of dotted keys and the CLI's texts resolve alike
    texts = presets.resolve("tiny", ["train.lr=1e-3", "model.attention_resolutions=[16]"])
    mapping = presets.resolve("tiny", {"train.lr": 1e-3, "model.attention_resolutions": [16]})
    assert texts == mapping and mapping.model.attention_resolutions == (16,)
    assert presets.resolve(
        "tiny", ["model.channels=16,32", "model.attention_resolutions=[]"]
    ).model.channels == (16, 32)


def test_with_changes_is_validated_and_merges_sections():
    cfg = presets.resolve("tiny")
    changed = cfg.with_changes(train={"steps": 7}, model={"conditional": True})
    assert (
        changed.train.steps == 7 and changed.train.lr == cfg.train.lr and changed.model.conditional
    )
    with pytest.raises(ConfigError, match=r"^train\.steps: 0 is out of range"):
        cfg.with_changes(train={"steps": 0})
    with pytest.raises(ConfigError, match=r"^model\.num_classes"):
        cfg.with_changes(model={"num_classes": 3})  # only for conditional models
    assert SampleSettings().with_changes(n=3) == SampleSettings(n=3)


def test_sweep_spec_uses_the_settings_engine(tmp_path):
    from diffscape.sweep import spec
    from diffscape.sweep.plan import plan

    assert not hasattr(spec, "_coerce")
    assert presets.resolve("tiny", {"train.steps": 7}) == presets.resolve("tiny", ["train.steps=7"])
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


def test_sampler_names_come_from_one_place():
    import typing

    from diffscape.model import diffusion

    assert (
        typing.get_args(SampleSettings.model_fields["sampler"].annotation)
        == SAMPLERS
        == ("ddpm", "ddim", "dpm", "dpm3", "dpm-karras", "unipc", "heun")
    )
    assert tuple(diffusion.SAMPLERS) == SAMPLERS
    assert typing.get_args(diffusion.Sampler) == SAMPLERS


# ---- the settings rendered: --help text and command-line flags ---------------------------------


def test_every_setting_has_help_and_every_number_has_bounds():
    for cls in ALL_SECTIONS.values():
        for row in rows(cls):
            assert row.field.description and "\n" not in row.field.description, row.key
            kind = type_text(row.field.annotation)
            if kind.split(" ")[-1] in ("int", "float"):
                assert bounds_text(row.field), f"{row.key} has no bounds"


def test_describe_settings_lists_every_key_with_default_and_bounds():
    text = describe_settings("model", "diffusion", "train")
    keys = [r.key for cls in RUN_SECTIONS.values() for r in rows(cls)]
    assert len(text.splitlines()) == len(keys)
    for key in keys:
        assert f"  {key}=" in text
    assert (
        "diffusion.timesteps=1000  T, number of noise levels (int; at least 2, at most 10_000)"
        in text
    )
    assert "model.channels=[32, 64, 64]" in text
    everything = describe_settings()
    assert "sample.eta=0" in everything and "judge.kind=cnn" in everything
    assert "cnn.max_epochs=40" in everything and "demo.sample.n=40" in everything


def test_flags_are_typed_bounded_and_name_the_flag(capsys):
    parser = argparse.ArgumentParser(prog="throwaway")
    flags = Flags(SampleSettings, ["n", "sampler", "steps", "guidance", "eta", "seed"])
    flags.add_to(parser)
    Flags(EvaluateSettings, ["enabled", "n_real"]).add_to(parser)
    assert flags.build(parser.parse_args([])) == SampleSettings()  # the settings' defaults
    args = parser.parse_args(["--n", "3", "--sampler", "dpm", "--eta", "0.5", "--no-enabled"])
    s = flags.build(args)
    assert (s.n, s.sampler, s.eta) == (3, "dpm", 0.5)
    assert isinstance(s.n, int) and isinstance(s.eta, float)
    assert Flags(EvaluateSettings, ["enabled"]).build(args).enabled is False
    for argv, shown in [(["--n", "0"], "--n 0 is out of range"), (["--eta", "nan"], "--eta nan"),
                        (["--seed", "-1"], "--seed -1"), (["--guidance", "inf"], "--guidance inf"),
                        (["--n", "abc"], "--n abc is not an integer")]:  # fmt: skip
        with pytest.raises(ConfigError) as caught:
            flags.build(parser.parse_args(argv))
        assert str(caught.value).startswith(shown) and "see throwaway --help" in str(caught.value)
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--sampler", "euler"])
    assert caught.value.code == 2 and "--sampler" in capsys.readouterr().err
    helptext = " ".join(parser.format_help().split())
    assert "at least 1, at most 1_000_000); default: 50" in helptext
    assert "at least 0, at most 1); default: 0" in helptext  # eta


def test_one_default_for_the_cli_and_the_library():
    """sample --n, evaluate --fid64: the command's default is the setting's (issue 25)."""
    import inspect

    from diffscape.sample import sample_to_folder
    from diffscape.sample.generate import sample_settings

    # the library samples with SampleSettings() when given none, the CLI without flags too
    assert inspect.signature(sample_to_folder).parameters["settings"].default is None
    assert sample_settings(None, {}) == SampleSettings()
    parser = argparse.ArgumentParser(prog="x")
    Flags(SampleSettings).add_to(parser)
    assert Flags(SampleSettings).build(parser.parse_args([])) == SampleSettings()
    assert Flags(SampleSettings).build(parser.parse_args(["--n", "16"])).n == 16
    parser = argparse.ArgumentParser(prog="x")
    Flags(EvaluateSettings).add_to(parser)
    assert Flags(EvaluateSettings).build(parser.parse_args([])).fid64 is True


def test_train_help_lists_every_setting_from_the_table(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for line in describe_settings("model", "diffusion", "train").splitlines():
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


# ---- files written by earlier versions (tests/data/fee4ff8: diffscape at commit fee4ff8) ----------


def test_old_config_json_reads_back_and_writes_the_same_json():
    """A run's config.json (also every checkpoint's) of the hand-written engine: the same
    settings, and written again byte for byte (keys, nesting, value types)."""
    path = DATA / "run-config.json"
    cfg = presets.load_config_json(path)
    assert cfg == presets.resolve(
        "tiny",
        ["model.conditional=true", "model.num_classes=3", "model.image_size=16",
         "model.channels=[16,32]", "model.attention_resolutions=[8]", "train.batch_size=4",
         "train.sample_every_steps=0", "train.lr=3e-4", "diffusion.timesteps=50",
         "train.checkpoint_every_steps=0", "train.steps=2", "train.minutes=5",
         "train.precision=fp32", "train.lr_schedule=constant"],  # tiny before issue 26
    )  # fmt: skip
    # written again the same, plus only the settings added since, at their defaults
    written, old = json.loads(cfg.to_json()), json.loads(path.read_text())
    # added by issues 26 and 27
    added = {"log_with": "tensorboard", "threads": 0, "processes": 0, "allocator": "auto"}
    assert written == old | {"train": old["train"] | added}
    without = {**written, "train": {k: v for k, v in written["train"].items() if k not in added}}
    assert json.dumps(without, indent=2) + "\n" == path.read_text()  # keys, nesting, types
    assert isinstance(cfg.train.minutes, float) and isinstance(cfg.model.channels, tuple)


def test_old_judge_json_settings_read_back():
    cnn = json.loads((DATA / "judge-cnn.json").read_text())
    assert CNNSettings.parse(cnn["settings"]) == CNNSettings(
        widths=(8, 16), max_epochs=2, patience_epochs=1, lr=0.001
    )
    assert CNNSettings.parse(cnn["settings"]).to_dict() | {"widths": [8, 16]} == cnn["settings"]
    svc = json.loads((DATA / "judge-svc.json").read_text())
    assert SVCSettings.parse(svc["settings"]) == SVCSettings(C=10.0, gamma="scale")


TINY_BEFORE_ISSUE_26 = ["train.precision=fp32", "train.lr=1e-3", "train.lr_schedule=constant"]


def test_old_study_records_read_back_and_still_match():
    """The settings a study and the demo recorded (result.json, metrics.json, demo.json): they
    parse into equal settings, and a re-run of the same study finds them done."""
    from diffscape.study import results
    from diffscape.study.spec import upgraded

    old = json.loads((DATA / "records.json").read_text())
    e = EvaluateSettings(n=250, n_real=250, split="test", bootstrap=5)
    s = SampleSettings(n=20, sampler="dpm", steps=10, guidance=2.0, seed=3)
    assert EvaluateSettings.parse(old["metrics_settings"]["evaluate"]) == e
    assert EvaluateSettings.parse(old["evaluate_default"]) == EvaluateSettings()
    assert SampleSettings.parse(old["result_settings"]["sample"]) == s
    assert JudgeSettings.parse(old["judge"]) == JudgeSettings(also=("svc",))
    # the tiny preset as it was when these were written (issue 26 changed its precision and LR)
    was_tiny = presets.resolve("tiny", TINY_BEFORE_ISSUE_26)
    assert presets.from_dict(old["result_settings"]["config"]) == was_tiny
    # the demo's sampling before issue 26 (w=1 at every step)
    was_sample = SampleSettings(n=40, sampler="dpm", steps=20)
    was_evaluate = EvaluateSettings(split="test", n=200, n_real=200)
    was = DemoSettings(sample=was_sample, evaluate=was_evaluate)
    assert DemoSettings.parse(old["demo_json"]["settings"]) == was
    # what evaluate_stage and is_finished compare: the old record reads as the new one
    wanted = results.plain({"evaluate": e.to_dict(), "dataset": "abc", "made": 60})
    assert upgraded(old["metrics_settings"]) == wanted
    record = {"config": was_tiny.to_dict(), "sample": s.to_dict(),
              "evaluate": e.to_dict(), "judge": None, "dataset": "abc"}  # fmt: skip
    assert upgraded(old["result_settings"]) == results.plain(record)
