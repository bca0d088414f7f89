"""The README's settings table is the settings: one row per ``Settings`` field, each with the field's default."""

import re
from pathlib import Path

from service.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def test_every_setting_has_a_readme_row_with_its_default():
    rows = {m.group(1): m.group(2).strip()
            for m in re.finditer(r"^\| `MAMTRA_([A-Z0-9_]+)` \| ([^|]*) \|", README.read_text(), re.M)}
    fields = {name.upper(): f.default if f.default_factory is None else f.default_factory()
              for name, f in Settings.model_fields.items()}
    assert set(rows) == set(fields)
    assert {k: rows[k] for k in fields} == {k: _shown(v) for k, v in fields.items()}
