"""The report page: which files it reads, what it shows, and the page itself in headless Chromium.

Run folders here are written by hand (config.json, metrics.jsonl, samples/<name>/...) in the
formats train / sample / evaluate / judge write, so these tests need no training; the sweep tests
build a report from real runs.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffscape.cli import main
from diffscape.core.errors import DiffscapeError
from diffscape.report import build_report, collect
from diffscape.settings import presets

CLASSES = ["Coast", "Desert", "Forest"]
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# ---- headless Chromium -------------------------------------------------------------------------


def find_chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def chromium_args(tmp: Path) -> list[str]:
    exe = find_chromium()
    if exe is None:
        pytest.skip("Chromium not found (CI installs it with `apt-get install chromium`)")
    return [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium-profile'}",
    ]  # fmt: skip


# Runs first in <head>: records script errors, failed resources and console.error calls; on
# load it clicks every header (the sort must not throw), then FID twice, measures what a reader
# sees (overflow, the plots' and the tables' text, the sample pictures), and posts it all to the
# page that frames it (HOST), which writes it into its DOM for --dump-dom to return.
PROBE = """<script>
window.__errors = [];
window.onerror = function (m) { window.__errors.push(String(m)); };
window.addEventListener("error", function (e) {
  if (e.target && e.target !== window) { window.__errors.push("resource " + (e.target.src || e.target.href)); }
}, true);
(function () { var orig = console.error; console.error = function () {
  window.__errors.push("console " + Array.prototype.join.call(arguments, " ")); orig.apply(console, arguments); }; })();
function px(el) { return parseFloat(getComputedStyle(el).fontSize); }
window.addEventListener("load", function () {
  var out = {width: window.innerWidth, scrollWidth: document.documentElement.scrollWidth};
  try {
    var ths = Array.prototype.slice.call(document.querySelectorAll("#runs thead th"));
    ths.forEach(function (th) { th.click(); });
    var fid = ths.filter(function (th) { return th.textContent.trim().indexOf("FID") === 0; })[0];
    fid.click(); fid.click();
    out.sort = fid.getAttribute("aria-sort");
    out.order = Array.prototype.map.call(document.querySelectorAll("#runs tbody tr"), function (tr) {
      return tr.cells[0].getAttribute("data-sort"); });
    out.svgs = document.querySelectorAll("svg.plot").length;
    out.images = Array.prototype.filter.call(document.images, function (i) {
      return i.complete && i.naturalWidth > 0; }).length;
    out.allImages = document.images.length;
    out.tableFont = px(document.querySelector("#runs tbody td"));
    // the largest text of each plot (axis labels, tick labels) in CSS px as drawn
    out.plotFonts = Array.prototype.map.call(document.querySelectorAll("svg.plot"), function (svg) {
      return Math.max.apply(null, Array.prototype.map.call(svg.querySelectorAll("text"), function (t) {
        var m = t.getScreenCTM(); return px(t) * Math.hypot(m.a, m.b); })); });
    out.pictures = Array.prototype.map.call(document.querySelectorAll(".card img"), function (i) {
      return {width: i.getBoundingClientRect().width, box: i.parentNode.getBoundingClientRect().width,
              rendering: getComputedStyle(i).imageRendering}; });
  } catch (err) { window.__errors.push("probe " + err); }
  out.errors = window.__errors;
  parent.postMessage(JSON.stringify(out), "*");
});
</script>"""

# The page framed at a phone's width and a desktop's, side by side (a headless window is at
# least 500 px wide; a frame can be narrower).
WIDTHS = (390, 1280)
HOST = """<!doctype html><html><body style="margin:0; display:flex; align-items:flex-start">
{frames}<script>window.addEventListener("message", function (e) {{
  var pre = document.createElement("pre"); pre.className = "probe-result";
  pre.textContent = e.data; document.body.appendChild(pre); }});</script></body></html>"""


def check_page(html_path: Path, tmp: Path, screenshot: Path | None = None) -> dict:
    """Open the page in headless Chromium at each of WIDTHS: no script errors, no console
    output, no failed resources, and readable: nothing wider than the screen, the plots' text as
    large as the tables' on a desktop and not tiny on a phone, sample pictures large (as wide as
    the screen on a phone), the same plots and decoded images at each width. Returns what the
    probe saw on the desktop (sort state, row order, plots, decoded images, sizes)."""
    args = chromium_args(tmp)
    probe = html_path.with_name("probe-" + html_path.name)
    probe.write_text(html_path.read_text().replace("<head>", "<head>" + PROBE, 1))
    frame = '<iframe src="{}" style="border:0; flex:none; width:{}px; height:2000px"></iframe>'
    host = html_path.with_name("host-" + html_path.name)
    host.write_text(HOST.format(frames="".join(frame.format(probe.name, w) for w in WIDTHS)))
    window = f"--window-size={sum(WIDTHS) + 20},2000"
    proc = subprocess.run(
        [*args, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
         "--hide-scrollbars", window, "--dump-dom", host.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.findall(r'<pre class="probe-result">(.*?)</pre>', proc.stdout, re.S)
    assert len(found) == len(WIDTHS), f"the probe did not run; stderr:\n{proc.stderr[-2000:]}"
    seen = [json.loads(f.replace("&quot;", '"').replace("&amp;", "&")) for f in found]
    by_width = {s["width"]: s for s in seen}
    assert sorted(by_width) == sorted(WIDTHS)
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == [], console
    for width, s in by_width.items():
        assert s["errors"] == [], (width, s["errors"])
        assert_readable(s, phone=width < 600)
    assert len({(s["svgs"], s["images"], s["allImages"]) for s in by_width.values()}) == 1
    if screenshot is not None:
        subprocess.run(
            [*args, "--hide-scrollbars", f"--screenshot={screenshot}", window, host.as_uri()],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
        with Image.open(screenshot) as shot:
            pixels = np.asarray(shot.convert("L"), dtype=float)
        x = 0
        for w in WIDTHS:  # each frame drew a page: not blank
            assert pixels[:, x : x + w].std() > 10, f"the page at {w} px looks blank"
            x += w
    return by_width[max(WIDTHS)]


def assert_readable(seen: dict, phone: bool) -> None:
    """What a reader sees at one width (the probe's measurements, CSS px)."""
    width = seen["width"]
    assert seen["scrollWidth"] <= width, f"the page is {seen['scrollWidth']} px wide at {width}"
    table = seen["tableFont"]
    for font in seen["plotFonts"]:
        if phone:  # shrunk to the screen; two panels scroll sideways rather than shrink more
            assert font >= 9, f"plot text {font:.1f} px on a {width}-px screen"
        else:
            assert abs(font / table - 1) < 0.1, f"plot text {font:.1f} px, tables {table} px"
    for p in seen["pictures"]:
        assert p["rendering"] == "pixelated"
        if phone:
            assert abs(p["width"] - p["box"]) <= 1, p  # the screen's width
        else:
            assert p["width"] >= min(480, p["box"]), p  # no thumbnail


def assert_self_contained(text: str) -> None:
    """Nothing is fetched: no external src/href/url(), only data: URIs and in-page links."""
    refs = re.findall(r'(?:src|href)="([^"]*)"', text) + re.findall(r"url\(([^)]*)\)", text)
    external = [r for r in refs if not r.startswith(("data:", "#")) and r != "results.csv"]
    assert external == [], external
    assert "http://" not in text.replace("http://www.w3.org", "")
    assert "https://" not in text


# ---- run folders by hand -----------------------------------------------------------------------


def _grid(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (3 * 36, 4 * 36, 3), dtype=np.uint8)).save(path)


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def metrics_json(fid: float, n: int = 40, kind: str = "samples") -> dict:
    kid = {"mean": fid / 1000, "std": fid / 20000, "subset_size": n, "subsets": 100}
    return {
        "real": {"dataset": "/data/synth", "split": "train"},
        "fake": {"source": "x", "kind": kind},
        "n_real": n,
        "n_fake": n,
        "fid": fid,
        "kid": kid,
        "per_class": {
            c: {"n_real": 10, "n_fake": 10, "fid": fid + i, "kid": kid}
            for i, c in enumerate(CLASSES)
        },
        "warnings": ["n < 2048: FID is biased"],
    }


def accuracy_json(acc: float, n: int = 30) -> dict:
    return {
        "accuracy": acc,
        "n": n,
        "per_class": {
            c: {"n": n // 3, "correct": 0, "accuracy": min(1.0, acc + 0.1 * i)}
            for i, c in enumerate(CLASSES)
        },
        "real": {"accuracy": 0.93, "n": 120, "source": "judge.json"},
        "warning": None,
    }


def make_run(
    root: Path,
    name: str,
    overrides: list[str],
    samplings: dict[str, dict],
    steps: int = 40,
    resumed: bool = False,
) -> Path:
    """A run folder as train() + sample_to_folder + evaluate + judge score leave it."""
    run = root / name
    cfg = presets.resolve("tiny", ["model.conditional=true", *overrides]).to_dict()
    cfg["model"]["num_classes"] = len(CLASSES)
    _write(run / "config.json", cfg)
    _write(run / "run.json", {"classes": CLASSES})
    lines = []
    for i, step in enumerate(range(5, steps + 1, 5)):
        seconds = step * 0.5 - (10 if resumed and step > steps // 2 else 0)
        lines.append(
            {"step": step, "loss": 1.0 / (1 + i) + 0.01 * len(name), "lr": 2e-4,
             "grad_norm": 1.0, "images_per_second": 60.0 + i, "seconds": seconds}
        )  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / "checkpoints").mkdir()
    (run / "samples").mkdir()
    _grid(run / "samples" / f"step-{steps:07d}.png", 0)
    for i, (variant, s) in enumerate(samplings.items()):
        d = run / "samples" / variant
        samples = {"sampler": s.get("sampler", "ddim"), "steps": s.get("steps", 50)}
        samples |= {"guidance": s.get("guidance", 1.0), "n": 30, "eta": 0.0, "seed": 0}
        _write(d / "samples.json", samples)
        if s.get("failed"):
            _write(d / "result.json", {"name": s.get("name", variant), "status": "failed",
                   "stage": "sample", "error": "RuntimeError: out of memory",
                   "traceback": "Traceback (most recent call last):\n  ...\nRuntimeError: out of memory"})  # fmt: skip
            continue
        _grid(d / "grid.png", i + 1)
        _write(d / "metrics.json", metrics_json(s["fid"]))
        if "acc" in s:
            _write(d / "accuracy.json", accuracy_json(s["acc"]))
        if "name" in s:
            _write(d / "result.json", {"name": s["name"], "status": "ok", "changes": {}})
    return run


def make_sweep(root: Path) -> Path:
    """A sampling sweep (guidance and steps on one model) plus a second model, one failure."""
    sweep = root / "sweep"
    guid = {
        f"ddim-50-w{w}": {
            "guidance": w,
            "fid": 30 + 5 * abs(w - 1.5),
            "acc": min(0.95, 0.3 + 0.2 * w),
            "name": f"w={w}",
        }
        for w in (0, 1, 2, 3)
    }
    steps = {
        f"ddim-{k}-w1": {"steps": k, "fid": 20 + 200 / k, "acc": 0.7, "name": f"steps={k}"}
        for k in (10, 100)
    }
    make_run(sweep, "model", [], {**guid, **steps}, resumed=True)
    make_run(sweep, "cosine", ["diffusion.schedule=cosine"],
             {"ddim-50-w1": {"fid": 25.0, "acc": 0.6, "name": "cosine"},
              "ddim-20-w1": {"failed": True, "name": "cosine-20"}})  # fmt: skip
    _write(sweep / "_floor" / "floor.json", metrics_json(4.2, kind="dataset"))
    return sweep


# ---- tests ---------------------------------------------------------------------------------------


def test_folder_of_runs_gives_every_row_plot_and_csv(tmp_path):
    sweep = make_sweep(tmp_path)
    page = build_report(sweep, tmp_path / "out" / "report.html")
    text = page.read_text()
    assert_self_contained(text)
    coll = collect(sweep)
    assert len(coll.rows) == 8
    assert coll.floor is not None and coll.floor["fid"] == 4.2
    # four plots drawn, none "not drawn"
    assert text.count("<svg") == 4 and "Not drawn" not in text
    for key in ("loss", "steps", "guidance", "tradeoff"):
        assert f'id="plot-{key}"' in text
    # the failure shows with its error and traceback; the floor row is there
    assert "RuntimeError: out of memory" in text and "<summary>traceback</summary>" in text
    assert 'class="floor"' in text and "4.20" in text
    # config as a diff from what all runs share; numbers with their n
    assert "diffusion.schedule=cosine" in text
    assert "n 40 / 40" in text and "n 30" in text
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert len(rows) == 8
    by_name = {r["name"]: r for r in rows}
    assert by_name["cosine-20"]["status"] == "failed"
    assert "out of memory" in by_name["cosine-20"]["error"]
    assert float(by_name["w=2"]["accuracy"]) == pytest.approx(0.7)
    assert float(by_name["w=2"]["accuracy_Forest"]) == pytest.approx(0.9)
    assert by_name["cosine"]["diffusion.schedule"] == "cosine"
    # training time sums the segments of a resumed log (seconds restart at each train call)
    assert float(by_name["w=0"]["train_seconds"]) == pytest.approx(10.0 + 10.0)


def test_user_text_is_drawn_literally_and_never_a_spreadsheet_formula(tmp_path):
    from diffscape.report.table import csv_cell

    root = tmp_path / "runs"
    names = ["$x^$", "=1+2", "@SUM(A1)", "-2+3"]  # mathtext; formulas a spreadsheet would run
    for i, name in enumerate(names):
        make_run(root, name, [f"train.lr={i + 1}e-4"],
                 {"ddim-50-w1": {"fid": 20.0 + i, "acc": 0.5 + i / 10}})  # fmt: skip
    text = build_report(root, tmp_path / "out" / "report.html").read_text()
    assert 'id="plot-loss"' in text and 'id="plot-tradeoff"' in text
    assert "$x^$" in text.split('id="plot-loss"')[1]  # the legend, as written
    with (tmp_path / "out" / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["name"] for r in rows) == ["$x^$", "'-2+3", "'=1+2", "'@SUM(A1)"]
    assert csv_cell(-1.5) == -1.5 and csv_cell(None) is None and csv_cell("\tx") == "'\tx"


def test_numbers_read_as_a_person_reads_them_and_the_csv_keeps_them_whole(tmp_path):
    """A computed setting (a time budget) shows 3 significant digits, one as typed stays as
    typed, counts get thousands separators; results.csv keeps every digit."""
    root = tmp_path / "runs"
    budget = ["train.minutes=4.933329535049999", "train.ema_decay=0.9999"]
    for name, lr in (("a", "1e-4"), ("b", "0.00016666666666666666")):
        run = make_run(root, name, [*budget, f"train.lr={lr}"], {"s": {"fid": 20.0}}, steps=12000)
        d = run / "samples" / "s"
        _write(d / "samples.json", {**json.loads((d / "samples.json").read_text()), "n": 10000})
        _write(d / "metrics.json", metrics_json(20.0, n=10000))
    text = build_report(root, tmp_path / "out" / "report.html").read_text()
    assert "4.933" not in text and "0.000166" not in text
    assert "train.minutes = 4.93\n" in text and "train.ema_decay = 0.9999\n" in text  # base
    assert ">train.lr=0.000167</code>" in text and ">train.lr=0.0001</code>" in text  # chips
    assert "n 10,000 / 10,000" in text and "10,000 images" in text and "step 12,000" in text
    with (tmp_path / "out" / "results.csv").open(newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["b"]["train.lr"] == "0.00016666666666666666"


def test_single_run_folder_as_the_demo_leaves_it(tmp_path):
    """One run, its samples in a subfolder, the scores beside them: at the run's top level
    (metrics.json) or in a folder of their own (eval/accuracy.json)."""
    run = make_run(tmp_path, "demo", ["train.steps=300"], {"final": {"fid": 50.0}})
    metrics = json.loads((run / "samples" / "final" / "metrics.json").read_text())
    (run / "samples" / "final" / "metrics.json").unlink()
    _write(tmp_path / "_floor" / "floor.json", metrics_json(7.5, kind="dataset"))
    _write(run / "metrics.json", metrics)
    _write(run / "eval" / "accuracy.json", accuracy_json(0.8))
    page = build_report([run], tmp_path / "report.html", title="Demo")
    text = page.read_text()
    assert "<title>Demo</title>" in text
    (row,) = collect(run).rows
    assert row.metrics["fid"] == 50.0 and row.accuracy["accuracy"] == 0.8
    assert 'class="floor"' in text and "7.50" in text  # the real-vs-real floor of its study
    assert row.changes == {"model.conditional": True, "train.steps": 300}  # against the preset
    assert "Not drawn" in text and "needs judge accuracy at two or more guidance" in text
    assert text.count("<svg") == 1  # the loss curve only
    # its one plot is drawn at the size of the page's text, not stretched to the page's width
    check_page(page, tmp_path, screenshot=tmp_path / "shot.png")


def test_run_without_samples_and_list_of_runs(tmp_path):
    a = make_run(tmp_path, "a", ["model.activation=gelu"], {})
    b = make_run(tmp_path, "b", ["model.activation=relu"], {"s": {"fid": 10.0}})
    coll = collect([a, b])
    assert [r.name for r in coll.rows] == ["a", "b"]
    assert coll.rows[0].grid.name.startswith("step-")  # the training grid stands in
    assert coll.rows[0].changes == {"model.activation": "gelu"}  # against what both share
    page = build_report([a, b], tmp_path / "r.html")
    assert "training grid" in page.read_text()


def test_nothing_to_report_says_what_it_expected(tmp_path):
    with pytest.raises(DiffscapeError, match="holds no runs"):
        build_report(tmp_path, tmp_path / "r.html")


def test_report_command(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    assert main(["report", str(sweep), "--out", str(tmp_path / "r" / "x.html")]) == 0
    assert (tmp_path / "r" / "x.html").is_file() and (tmp_path / "r" / "results.csv").is_file()
    assert "wrote" in capsys.readouterr().out


def test_page_in_headless_chromium(tmp_path):
    sweep = make_sweep(tmp_path)
    page = build_report(sweep, tmp_path / "report.html")
    seen = check_page(page, tmp_path, screenshot=tmp_path / "shot.png")
    assert seen["svgs"] == 4
    assert seen["images"] == seen["allImages"] == 7  # every grid decodes; the failed run has none
    # sorted by FID, descending after the second click, missing values last
    assert seen["sort"] == "descending"
    names = seen["order"]
    assert names[0] == "steps=10" and names[-1] == "cosine-20"


# ---- found through the layout ------------------------------------------------------------------


def test_sweep_json_lists_the_rows_even_those_not_run(tmp_path):
    sweep = make_sweep(tmp_path)
    planned = [
        {"name": "w=2", "training": "model", "sample_dir": "model/samples/ddim-50-w2",
         "changes": {}},
        {"name": "cosine", "training": "cosine", "sample_dir": "cosine/samples/ddim-50-w1",
         "changes": {"diffusion.schedule": "cosine"}},
        {"name": "later", "training": "later", "sample_dir": "later/samples/ddim-50-w1",
         "changes": {"train.lr": 1e-3}},
    ]  # fmt: skip
    _write(sweep / "sweep.json", {"name": "mini", "description": "three rows", "runs": planned})
    coll = collect(sweep)
    assert [r.name for r in coll.rows] == ["w=2", "cosine", "later"]
    assert [r.status for r in coll.rows] == ["ok", "ok", "not run"]
    assert coll.rows[0].metrics["fid"] == pytest.approx(32.5)
    assert coll.title == "Sweep: mini" and coll.floor["fid"] == 4.2


@pytest.mark.parametrize(
    "bad",
    [{"training": "../outside", "sample_dir": "x"}, {"training": "m", "sample_dir": "m/../../x"},
     {"training": "/etc", "sample_dir": "x"}],
)  # fmt: skip
def test_sweep_json_paths_outside_the_sweep_are_refused(tmp_path, bad):
    sweep = tmp_path / "sweep"
    _write(sweep / "sweep.json", {"name": "x", "runs": [{"name": "r", **bad}]})
    with pytest.raises(DiffscapeError, match="sweep.json"):
        collect(sweep)


def make_demo(root: Path) -> Path:
    """A demo folder: run/ with samples-final/, scores at the run level, and the floor in
    _floor/floor.json."""
    demo = root / "demo"
    run = make_run(demo, "run", ["train.steps=300"], {"final": {"fid": 50.0}})
    (run / "samples" / "final").rename(run / "samples-final")
    metrics = json.loads((run / "samples-final" / "metrics.json").read_text())
    (run / "samples-final" / "metrics.json").unlink()
    floor = metrics_json(7.5, kind="dataset")
    _write(demo / "_floor" / "floor.json", {**floor, "settings": {"n": 40}})
    _write(demo / "demo.json", {"version": 1})
    _write(run / "metrics.json", metrics)
    _write(run / "accuracy.json", accuracy_json(0.8))
    return demo


def test_demo_floor_found_from_the_demo_or_its_run(tmp_path):
    demo = make_demo(tmp_path)
    for where in (demo, demo / "run"):
        coll = collect(where)
        (row,) = coll.rows
        assert row.sample_dir == demo / "run" / "samples-final"
        assert row.metrics["fid"] == 50.0 and row.accuracy["accuracy"] == 0.8
        assert coll.floor is not None and coll.floor["fid"] == 7.5
    page = build_report(demo / "run", tmp_path / "r.html").read_text()
    assert 'class="floor"' in page and "7.50" in page


def test_report_into_a_folder_path_is_one_clear_error(tmp_path):
    sweep = make_sweep(tmp_path)
    with pytest.raises(DiffscapeError, match="is a folder"):
        build_report(sweep, tmp_path)


# ---- seed replicates: the settings table and its verdicts -----------------------------------------

REPLICATED = {  # setting: (FID, judge accuracy, overrides); FID and accuracy vary by seed
    "linear": (30.0, 0.60, []),
    "cosine": (20.0, 0.85, ["diffusion.schedule=cosine"]),
    "relu": (30.3, 0.61, ["model.activation=relu"]),
}


def make_replicated(root: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> Path:
    """A sweep with seeds as the runner leaves it: <setting>-seed<k> folders, sweep.json with
    settings, seeds and baseline; the metrics carry precision/recall, fid64, memorisation and a
    FID bootstrap; a second judge's accuracy-svc.json and closest-pairs.png beside them."""
    sweep = root / "rep"
    planned = []
    for setting, (fid, acc, overrides) in REPLICATED.items():
        for seed in seeds:
            folder, name = f"{setting}-seed{seed}", f"{setting} (seed {seed})"
            wobble = (0.4, -0.3, 0.1, 0.2)[seed % 4]
            make_run(sweep, folder, [*overrides, f"train.seed={seed}"],
                     {"ddim-50-w1": {"fid": fid + wobble, "acc": acc + 0.01 * seed, "name": name}})  # fmt: skip
            d = sweep / folder / "samples" / "ddim-50-w1"
            m = json.loads((d / "metrics.json").read_text())
            m |= {"precision": 0.7 + 0.01 * seed, "recall": 0.4, "fid64": fid / 10 + wobble,
                  "fid64_n": [40, 40], "fid_bootstrap": {"low": fid - 1, "high": fid + 1, "std": 0.5},
                  "memorisation": {"share": 0.05 * seed, "n_fake": 40, "threshold": 0.5}}  # fmt: skip
            _write(d / "metrics.json", m)
            _write(d / "accuracy-svc.json", {"accuracy": acc - 0.1, "n": 30, "judge_kind": "svc"})
            _grid(d / "closest-pairs.png", 10 + seed)
            changes = {o.split("=")[0]: o.split("=")[1] for o in overrides}
            planned.append({"name": name, "setting": setting, "seed": seed, "training": folder,
                            "sample_dir": f"{folder}/samples/ddim-50-w1", "changes": changes})  # fmt: skip
    base = presets.resolve("tiny", ["model.conditional=true"]).to_dict()
    _write(sweep / "sweep.json", {"name": "schedule, replicated", "seeds": list(seeds),
           "baseline": "linear", "runs": planned, "base_config": base,
           "description": "Three settings, each trained and sampled with every seed."})  # fmt: skip
    _write(sweep / "_floor" / "floor.json", metrics_json(4.2, kind="dataset"))
    return sweep


def test_replicated_sweep_shows_settings_with_intervals_and_verdicts(tmp_path):
    from diffscape.report.verdicts import settings

    sweep = make_replicated(tmp_path)
    coll = collect(sweep)
    assert coll.seeds == [0, 1, 2] and coll.baseline == "linear"
    assert {r.setting for r in coll.rows} == set(REPLICATED) and coll.rows[0].seed == 0
    assert all("train.seed" not in r.changes for r in coll.rows)  # the seed is not a change
    sets = {s.name: s for s in settings(coll)}
    assert sets["linear"].is_baseline and sets["linear"].comparisons == {}
    cosine, relu = sets["cosine"], sets["relu"]
    assert cosine.k == 3 and cosine.estimates["fid"].mean == pytest.approx(20.0 + 0.2 / 3)
    verdict = {k: c.verdict for k, c in cosine.comparisons.items() if c is not None}
    assert verdict["fid"] == verdict["kid"] == "better" and verdict["accuracy"] == "better"
    assert verdict["accuracy_svc_judge"] == "better"  # the pixel SVC judge: a column of its own
    assert relu.comparisons["fid"].verdict == "no difference found at this n and these seeds"
    assert relu.comparisons["memorisation"].verdict.startswith("no difference")
    assert cosine.estimates["accuracy_Forest"].low is not None  # per class, with an interval
    assert (
        cosine.estimates["fid64"].between is not None and cosine.estimates["fid64"].within is None
    )

    page = build_report(sweep, tmp_path / "report.html")
    text = page.read_text()
    assert_self_contained(text)
    assert 'id="settings"' in text and text.count('class="verdict v-better"') == 3
    assert "v-none" in text and "at this n and these seeds" in text
    headers = ("Precision", "Recall", "FID-64", "Near-copies", "Accuracy (SVC judge)")
    for header in (*headers, "FID vs baseline"):
        assert f">{header}</th>" in text, header
    assert "3 seeds" in text and "closest to the training set" in text
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 9
    seen = check_page(page, tmp_path, screenshot=tmp_path / "shot.png")
    assert seen["images"] == seen["allImages"] == 18  # a grid and the closest pairs per run


def test_one_seed_keeps_the_run_table_with_new_columns_and_within_run_verdicts(tmp_path):
    sweep = make_replicated(tmp_path, seeds=(0,))
    text = build_report(sweep, tmp_path / "r.html").read_text()
    assert 'id="settings"' in text  # sweep.json says seeds: still a settings table
    sweep_json = json.loads((sweep / "sweep.json").read_text())
    sweep_json["seeds"] = None  # a sweep without seeds
    _write(sweep / "sweep.json", sweep_json)
    text = build_report(sweep, tmp_path / "r.html", overwrite=True).read_text()
    assert 'id="settings"' not in text and 'id="runs"' in text
    assert ">Precision</th>" in text and ">FID vs baseline</th>" in text
    assert "v-better" in text  # one seed: the verdict rests on each run's own sampling noise
