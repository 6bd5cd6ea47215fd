"""Classification Accuracy Score: train on generated images, test on real ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import assert_refused, colour_dataset

from diffscape.cli import main
from diffscape.core.errors import DiffscapeError
from diffscape.data.dataset import Dataset
from diffscape.data.synth import synthesize
from diffscape.judge.cas import cas, format_cas, matched_real_subset
from diffscape.sample.folder import save_png_atomically as save_png
from diffscape.settings.sections import CNNSettings

FAST_CNN = CNNSettings(widths=(16, 32, 64), convs_per_block=1, max_epochs=12, patience_epochs=4)


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return synthesize(1500, 32, tmp_path_factory.mktemp("synth") / "ds", seed=0, progress=False)


def test_cas_of_noise_is_chance_while_real_images_teach_the_classes(
    synth: Dataset, tmp_path: Path
) -> None:
    # A "broken generator": uniform noise, 80 images filed under each class.
    rng = np.random.default_rng(0)
    samples = tmp_path / "noise"
    for i in range(400):
        save_png(
            samples / synth.classes[i % 5] / f"{i}.png", rng.integers(0, 256, (3, 32, 32), np.uint8)
        )

    result = cas(samples, synth, settings=FAST_CNN, progress=False, log=lambda _: None)
    # Noise teaches nothing about real landscapes: a net trained on it maps each real class to
    # some arbitrary output, which is about chance (20%) on a balanced test split.
    assert result["cas"] < 0.4
    # The same net trained on as many real training images recognises the real test images.
    assert result["real_baseline"] >= 0.9
    assert result["chance"] == 0.2 and result["n_test"] == 300 and result["test_split"] == "test"
    gen, real = result["generated"], result["real"]
    assert gen["n_train"] + gen["n_val"] == real["n_train"] + real["n_val"] == 400
    assert result["real_shortfall"] == []
    assert np.asarray(gen["confusion"]).sum() == 300
    assert json.loads((samples / "cas.json").read_text())["cas"] == result["cas"]
    table = format_cas(result)
    assert "all (CAS)" in table and "Coast" in table


def test_matched_real_subset_takes_the_same_count_per_class() -> None:
    y = np.array([0] * 10 + [1] * 3 + [2] * 5)
    idx, short = matched_real_subset(
        y, np.array([4, 5, 0]), ["a", "b", "c"], np.random.default_rng(0)
    )
    assert np.bincount(y[idx], minlength=3).tolist() == [4, 3, 0]
    assert short == ["b: 3 real images for 5 generated"]


def test_cas_refuses_unknown_classes_before_training(
    synth: Dataset, tmp_path: Path, capsys
) -> None:
    save_png(tmp_path / "s" / "Volcano" / "0.png", np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(DiffscapeError, match="Volcano"):
        cas(tmp_path / "s", synth, progress=False, log=lambda _: None)
    assert main(["judge", "cas", str(tmp_path / "s"), f"{synth.root}:test"]) == 2
    assert "Volcano" in capsys.readouterr().err
    with pytest.raises(DiffscapeError, match="held-out"):
        cas(tmp_path / "s", f"{synth.root}:train", progress=False, log=lambda _: None)


def _labels_out_of_range(root: Path) -> None:
    np.save(root / "test_labels.npy", np.full(len(np.load(root / "test_labels.npy")), 9))


@pytest.mark.parametrize(
    "args, damage, message",
    [
        (["--val-fraction", "0"], None, "--val-fraction"),
        (["--epochs", "0"], None, "epochs"),
        ([], _labels_out_of_range, "labels range"),
        ([], lambda root: (root / "manifest.json").write_text("{"), "not valid JSON"),
    ],
    ids=["val-fraction 0", "epochs 0", "labels out of range", "manifest not JSON"],
)
def test_cas_careless_input_is_one_line(args, damage, message, tmp_path: Path, capsys) -> None:
    ds = colour_dataset(tmp_path / "ds", n_train=12, n_test=6, size=8)
    samples = tmp_path / "s"
    for i, name in enumerate(ds.classes):
        save_png(samples / name / "0.png", np.full((3, 8, 8), 40 * i, np.uint8))
    if damage:
        damage(ds.root)
    argv = ["judge", "cas", str(samples), str(ds.root), "--no-progress", *args]
    assert message in assert_refused(capsys, argv, tmp_path)
