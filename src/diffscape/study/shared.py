"""A study's shared pieces, made once (:func:`prepare_study`): data, judges, the floor. Each is
made again only when its settings changed; numpy and the networks are imported only when one is
made (as in :mod:`.stages`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffscape.core import layout
from diffscape.core.errors import DiffscapeError
from diffscape.study import results, stages
from diffscape.study.narrate import Tools, pct
from diffscape.study.spec import Study, StudySpec, judge_identity


def ensure_data(spec: StudySpec, tools: Tools) -> Path:
    """The given dataset, or the synthetic one made once into ``out/data_dir`` (made again only
    when its count, size or seed changed)."""
    from diffscape.data.dataset import load_dataset
    from diffscape.data.synth import synthesize

    nar = tools.narrator
    if spec.dataset is not None:
        ds = load_dataset(spec.dataset)
        nar.skip("data", f"using {ds.root}")
        return ds.root.resolve()
    path = spec.out / spec.data_dir
    if layout.is_dataset_dir(path):
        made = load_dataset(path)
        synth = made.manifest.get("synth") or {}
        if (synth.get("n"), synth.get("seed"), made.size) == (
            spec.synth_images, spec.seed, spec.synth_size
        ):  # fmt: skip
            nar.skip("data", f"made before: {path}")
            return made.root.resolve()
    nar.start(
        "data", f"{spec.synth_images} procedural landscapes at {spec.synth_size} px into {path}",
        eta=spec.synth_images / 1000,
    )  # fmt: skip
    ds = synthesize(
        spec.synth_images, spec.synth_size, path, seed=spec.seed, progress=tools.progress,
        overwrite=True,  # the study's own data folder, made for other settings before
    )  # fmt: skip
    nar.done(f"{ds.count('train')} train / {ds.count('test')} test")
    return ds.root.resolve()


def ensure_judge(spec: StudySpec, ds: Any, needed: bool, tools: Tools) -> Path | None:
    """The judge folder: ``judge.path``, or one trained once into ``out/judge_dir``. None when
    judging is off or there is nothing to judge (no conditional run, unlabelled data)."""
    j, nar = spec.judge, tools.narrator
    if not j.enabled or not needed:
        return None
    if not ds.labelled:
        nar.note("no judge: the dataset has no classes")
        return None
    if j.path is not None:
        if not layout.is_judge_dir(j.path):
            raise DiffscapeError(f"judge path {j.path} is not a judge folder (no judge.json)")
        nar.skip("judge", f"using {j.path}")
        return Path(j.path)
    return _judge_of_kind(spec, ds, j.kind, spec.judge_dir, tools)


def _judge_of_kind(spec: StudySpec, ds: Any, kind: str, folder: str, tools: Tools) -> Path:
    """A ``kind`` judge of the real training images in the study's ``folder``, trained once."""
    from diffscape.judge.train import train_judge
    from diffscape.settings.sections import CNNSettings

    nar, path = tools.narrator, spec.out / folder
    if layout.is_judge_dir(path):
        nar.skip("judge", f"trained before: {path}")
        return path
    cnn = CNNSettings.parse(spec.judge_cnn)
    # ~400 img/s per epoch on 2 cores (29 epochs of 3,900 photos in 287 s, docs/real-photos.md);
    # an upper bound: early stopping usually ends it sooner
    eta = ds.count("train") * cnn.max_epochs / 400 if kind == "cnn" else 40
    nar.start("judge", f"a {kind} classifier of the real training images into {path}", eta=eta)
    made = train_judge(
        ds, kind, path, seed=spec.seed, cnn=cnn, progress=tools.progress, log=nar.note,
    )  # fmt: skip
    nar.done(f"accuracy on real test images {pct(made.accuracy.get('test'))}")
    return path


def ensure_also_judges(spec: StudySpec, ds: Any, main: Path | None, tools: Tools) -> dict[str, str]:
    """The study's further judges (``[judge] also``), each trained once into ``_judge-<kind>``;
    a kind the main judge already is, is the main judge. None when the main one is off."""
    if main is None or not spec.judge.also:
        return {}
    main_kind = judge_identity(main).get("kind")
    kinds = [kind for kind in dict.fromkeys(spec.judge.also) if kind != main_kind]
    folders = {kind: layout.SWEEP_JUDGE_ALSO.format(kind=kind) for kind in kinds}
    return {kind: str(_judge_of_kind(spec, ds, kind, f, tools)) for kind, f in folders.items()}


def ensure_floor(study: Study, tools: Tools) -> dict[str, Any] | None:
    """Real vs real at the study's sizes, computed once into ``_floor/floor.json``: the other
    real split (n images, as many as the runs generate) against the reference split (n_real, the
    same seeded subset the runs' real side uses, so its features come from the cache). Optional:
    a failure is reported and the study goes on."""
    from diffscape.data.dataset import load_dataset

    e, nar = study.spec.evaluate, tools.narrator
    if not (e.enabled and e.floor):
        return None
    ds = load_dataset(study.data)
    other = "test" if e.split != "test" else "train"
    if other not in ds.splits or e.split not in ds.splits:
        nar.note(f"no real-vs-real floor: the dataset has no {other} split beside {e.split}")
        return None
    n_other = ds.count(other) if e.n is None else min(e.n, ds.count(other))
    n_ref = min(e.n_real or e.n or ds.count(e.split), ds.count(e.split))
    wanted = results.plain(
        {
            "dataset": study.dataset_hash,
            "reference": [e.split, n_ref],
            "other": [other, n_other],
            "resize": e.resize,
            "fid64": e.fid64,
        }
    )
    done = results.read_floor(study.out)
    if done is not None and done.get("settings") == wanted:
        fid = done.get("fid")
        nar.skip("floor", f"FID {fid:.2f} (computed before)" if fid else "computed before")
        return done
    nar.start("floor", f"real {other} ({n_other}) vs {e.split} ({n_ref})", eta=(n_other + n_ref) / stages.INCEPTION_IMAGES_PER_SECOND + 30)  # fmt: skip
    try:
        metrics = stages.fid_kid(
            (ds, other), (ds, e.split), n_ref, n_other, f"{ds.root}:{e.split}", tools,
            e.with_changes(memorisation=False, bootstrap=0),  # the train split against itself
        )  # fmt: skip
    except Exception as err:  # optional: the runs are still worth doing
        nar.done(f"failed ({type(err).__name__}: {err}); going on without a floor")
        return None
    results.write_json(results.floor_path(study.out), {**metrics, "settings": wanted})
    nar.done(f"FID {metrics['fid']:.2f}, KID {metrics['kid']['mean']:.4f}")
    return results.read_floor(study.out)


def prepare_study(
    spec: StudySpec, data: Path, tools: Tools, *, judge_needed: bool, floor: bool = True
) -> Study:
    """The judge and the floor of a study over ``data`` (from :func:`ensure_data`)."""
    from diffscape.data.dataset import load_dataset

    ds = load_dataset(data)
    judge = ensure_judge(spec, ds, judge_needed, tools)
    study = Study(spec, data, ds.content_hash, judge, ensure_also_judges(spec, ds, judge, tools))
    if floor:
        ensure_floor(study, tools)
    return study
