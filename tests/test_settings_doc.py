"""docs/settings.md is generated from config.py's field table and must not drift from it."""

import subprocess
import sys
from pathlib import Path

from diffscape import config

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def test_docs_settings_md_is_up_to_date():
    assert DOC.read_text() == config.settings_markdown(), (
        "docs/settings.md is out of date: run `.venv/bin/python -m diffscape.config > "
        "docs/settings.md` and commit it"
    )


def test_every_setting_is_documented_with_its_bounds():
    text = DOC.read_text()
    for section in config.ALL_SECTIONS:
        assert f"## {section}\n" in text
        for row in config.table(section):
            line = next(ln for ln in text.splitlines() if ln.startswith(f"| `{row.key}` |"))
            assert row.help in line and config.bounds_text(row.meta) in line


def test_module_entry_point_prints_the_same_page():
    out = subprocess.run(
        [sys.executable, "-m", "diffscape.config"], capture_output=True, text=True, check=True
    ).stdout
    assert out == config.settings_markdown()
