"""rlft.utils: the console width used when output goes to a file."""

import io
import sys

from rich.table import Table

from rlft.utils import make_console


def _render(monkeypatch, columns: str | None) -> str:
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    c = make_console()
    t = Table("stage", "algo", "success_once", "95% interval", "success_at_end", "return", "wall (s)", "deployed")
    t.add_row("online", "iql", "0.87", "[0.79, 0.92]", "0.87", "-83.5", "503", "deployed")
    c.print(t)
    return sys.stdout.getvalue()


def test_console_to_a_file_keeps_table_rows_on_one_line(monkeypatch):
    out = _render(monkeypatch, None)
    row = [line for line in out.splitlines() if "online" in line]
    assert len(row) == 1 and "[0.79, 0.92]" in row[0] and "deployed" in row[0]


def test_console_respects_columns(monkeypatch):
    out = _render(monkeypatch, "60")
    assert max(len(line) for line in out.splitlines()) <= 60
