"""The README's Python API example runs as written (in a fresh folder, one torch thread)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch, capsys):
    [code] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    finally:
        torch.set_num_threads(n)
    assert (tmp_path / "runs" / "simclr" / "backbone.pt").is_file()
    assert (tmp_path / "evals" / "simclr" / "report.html").is_file()
    out = capsys.readouterr().out
    assert "simclr" in out and "linear" in out and "macro_f1" in out
