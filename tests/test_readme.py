"""Every command the README shows works: its Python example runs as written (in a fresh folder,
one torch thread), every `sonossl ...` line parses with the command line's own parser, every
`make TARGET` is a target of the Makefile, its study file is a valid study, and the links of the
README and of benchmarks/README.md name files in the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def _shell_lines() -> list[str]:
    lines = []
    for block in _blocks(""):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(("sonossl ", "make ")):
                lines.append(line)
    return lines


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch, capsys):
    [code] = _blocks("python")
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


def test_the_readme_shows_its_two_commands():
    lines = _shell_lines()
    assert "make demo" in lines and "make test" in lines
    assert sum(line.startswith("sonossl ") for line in lines) >= 5


@pytest.mark.parametrize("line", [x for x in _shell_lines() if x.startswith("sonossl ")])
def test_every_sonossl_line_of_the_readme_parses(line: str):
    from sonossl.cli import build_parser

    args = build_parser().parse_args(shlex.split(line)[1:])  # a bad flag or value exits 2
    assert args.command == shlex.split(line)[1]


def test_every_make_target_of_the_readme_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    shown = {line.split()[1] for line in _shell_lines() if line.startswith("make ")}
    shown |= set(re.findall(r"`make ([\w-]+)`", README.read_text()))
    assert shown and shown <= targets, shown - targets


def test_the_readme_study_file_is_a_valid_study(tmp_path: Path):
    from sonossl.study.grid import load_study

    [text] = _blocks("yaml")
    (tmp_path / "scans").mkdir()
    (tmp_path / "planes").mkdir()
    study = tmp_path / "study.yaml"
    study.write_text(text)
    plan = load_study(study)
    assert plan.pretrains and plan.evals


@pytest.mark.parametrize("doc", ["README.md", "benchmarks/README.md"])
def test_the_links_name_files_in_the_repository(doc: str):
    path = ROOT / doc
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    links = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if not t.startswith("http")]
    assert links
    missing = [t for t in links if not (path.parent / t).exists()]
    assert not missing, missing
