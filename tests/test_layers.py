"""The import layers of docs/architecture.md hold: `lint-imports` keeps the contracts of
pyproject.toml, every module sits in a layer, and a broken layer is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def layer_modules() -> list[str]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    return [m.strip() for line in layers for m in line.split("|")]


def test_contracts_are_kept():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_every_module_sits_in_a_layer():
    layers = layer_modules()
    outside = []
    for path in sorted((ROOT / "sonossl").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        if name in ("sonossl", "sonossl.__main__", "sonossl.select"):  # the root re-exports api lazily; __main__ is cli
            continue
        if not any(name == m or name.startswith(m + ".") for m in layers):
            outside.append(name)
    assert not outside, f"modules in no layer of pyproject.toml's contract: {outside}"


def test_an_upward_import_breaks_the_suite(tmp_path):
    shutil.copytree(ROOT / "sonossl", tmp_path / "sonossl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    config = tmp_path / "sonossl" / "config.py"
    config.write_text(config.read_text().replace("from __future__ import annotations\n",
                                                 "from __future__ import annotations\n\nimport sonossl.demo  # noqa\n", 1))
    run = lint_imports(tmp_path)
    assert run.returncode != 0
    assert "sonossl.config is not allowed to import sonossl.demo" in run.stdout
