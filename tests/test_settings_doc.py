"""docs/settings.md is generated from the settings classes and must not drift from them."""

import subprocess
import sys
from pathlib import Path

from diffscape.settings.docs import settings_markdown
from diffscape.settings.engine import bounds_text, rows
from diffscape.settings.sections import ALL_SECTIONS

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def test_docs_settings_md_is_up_to_date():
    assert DOC.read_text() == settings_markdown(), (
        "docs/settings.md is out of date: run `.venv/bin/python -m diffscape.settings > "
        "docs/settings.md` and commit it"
    )


def test_every_setting_is_documented_with_its_bounds():
    text = DOC.read_text()
    for section, cls in ALL_SECTIONS.items():
        assert f"## {section}\n" in text
        for row in rows(cls):
            if row.key.count(".") > 1:  # a nested section's (demo.sample.n): where it differs
                continue
            line = next(ln for ln in text.splitlines() if ln.startswith(f"| `{row.key}` |"))
            assert row.field.description in line and bounds_text(row.field) in line


def test_module_entry_point_prints_the_same_page():
    out = subprocess.run(
        [sys.executable, "-m", "diffscape.settings"], capture_output=True, text=True, check=True
    ).stdout
    assert out == settings_markdown()
