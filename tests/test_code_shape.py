"""What the code promises about its own shape: short functions, and a repository that explains
itself (no pointer to a document that is not in it)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80


def test_no_function_in_the_package_is_over_80_lines():
    long = []
    for path in sorted((ROOT / "sonossl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_no_file_points_to_documents_outside_the_repository():
    outside = ("PROTOCOL" + ".md", "STYLE" + ".md", "DESIGN" + ".md")  # spelt apart: this file must not match itself
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file
        tracked = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    hits = []
    for name in tracked:
        path = ROOT / name
        if not path.is_file() or path.suffix in (".png", ".pt", ".h5", ".ckpt"):
            continue
        text = path.read_text(errors="ignore")
        hits += [f"{name}: {d}" for d in outside if d in text]
    assert not hits, hits
    for doc in ("protocol.md", "methods.md", "architecture.md"):  # what the code cites instead
        assert (ROOT / "docs" / doc).is_file(), doc
