"""The one table and number formatter of gsanet (:mod:`gsanet.tables`): markdown, CSV, numbers."""

from __future__ import annotations

import math
from pathlib import Path

from gsanet.tables import compact, csv_text, fixed, markdown_table, mean_std, save_table, si, write_csv


def test_markdown_table_escapes_pipes() -> None:
    text = markdown_table(["a", "b"], [["1", "x|y"], [2, ""]])
    assert text == "| a | b |\n|---|---|\n| 1 | x/y |\n| 2 |  |"


def test_csv_leaves_none_and_missing_empty(tmp_path: Path) -> None:
    rows = [{"a": 1, "b": None, "extra": 3}, {"a": "x"}]
    assert csv_text(["a", "b"], rows) == "a,b\r\n1,\r\nx,\r\n"
    assert write_csv(tmp_path / "t.csv", ["a", "b"], rows).read_bytes() == b"a,b\r\n1,\r\nx,\r\n"


def test_numbers() -> None:
    assert fixed(550412, 2, scale=1e6, suffix="M") == "0.55M"
    assert (fixed(None, 3, missing="-"), fixed(12.345, 0)) == ("-", "12")
    assert (si(18284584), si(550412), si(3612345678), si(999), si(None)) == ("18.28M", "550.4K", "3.612G", "999.0", "-")
    assert [compact(v) for v in (None, True, 12345678, 999, 1.5e-4, 3.14159, 15.25, math.nan, 0.0)] == [
        "", "True", "12.3M", "999", "0.00015", "3.142", "15.2", "", "0.000",
    ]  # fmt: skip
    assert mean_std(82.1667, 2.2546, 3) == "82.17 ± 2.25 (n=3)"
    assert mean_std(70.0, None, 1, [1, 2]) == "70.00 (n=1), missing seeds [1, 2]"


def test_save_table_writes_markdown_with_its_command_and_csv(tmp_path: Path) -> None:
    rows = [{"a": 1, "b": "x|y"}, {"a": 2.5, "b": "z"}]
    text = save_table(tmp_path / "sub" / "t_1.2.3", "python make.py --n 2", "head line", ["a", "b"], rows)
    assert text == "head line\n\n| a | b |\n|---|---|\n| 1 | x/y |\n| 2.5 | z |"
    assert (tmp_path / "sub" / "t_1.2.3.md").read_text() == f"Command: python make.py --n 2\n\n{text}\n"
    assert (tmp_path / "sub" / "t_1.2.3.csv").read_text().splitlines() == ["a,b", "1,x|y", "2.5,z"]
