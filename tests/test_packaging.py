"""What `pip install .` and `pip install '.[asr]'` promise: memsim with only what it imports, the recipe with
its extra, and nothing declared that nothing imports."""

import ast
import re
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPORT_TO_DISTRIBUTION = {"hydra": "hydra-core", "flashlight": "flashlight-text"}
CORE = {"torch", "numpy", "synaptogen", "numba"}


def imported_modules(folder: Path) -> set[str]:
    """Top-level modules imported anywhere under `folder` (absolute imports only)."""
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names)


def requirements() -> dict[str | None, set[str]]:
    """Declared distributions by extra (None: the core), from the installed metadata."""
    by_extra: dict[str | None, set[str]] = {}
    for line in metadata.requires("memristor-asr") or []:
        name = re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower()
        extra = re.search(r'extra == "([^"]+)"', line)
        by_extra.setdefault(extra.group(1) if extra else None, set()).add(name)
    return by_extra


def test_memsim_imports_only_its_core_dependencies_and_declares_only_them():
    assert imported_modules(ROOT / "memsim") - {"memsim"} <= CORE
    assert requirements()[None] == CORE


def test_importing_memsim_leaves_the_validation_tools_and_the_recipe_out():
    loaded = "sorted(m for m in sys.modules if m.startswith(('memsim.validation', 'asr', 'hydra')))"
    code = f"import sys, memsim; print({loaded})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_asr_extra_covers_every_recipe_import_and_nothing_unused():
    used = imported_modules(ROOT / "asr") | imported_modules(ROOT / "scripts")
    used = {IMPORT_TO_DISTRIBUTION.get(name, name) for name in used} - {"asr", "memsim"} - CORE
    assert used == requirements()["asr"]


@pytest.mark.slow
def test_memsim_alone_installs_into_a_fresh_venv_and_converts_a_model(tmp_path):
    """Minutes and gigabytes (torch): `pytest -m slow tests/test_packaging.py` runs it."""
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", ROOT], check=True)
    script = (
        "import torch, memsim\n"
        "model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))\n"
        "chip = memsim.convert(model, memsim.CrossbarConfig(weight_bits=3, tile_size=16),\n"
        "                      generator=torch.Generator().manual_seed(0))\n"
        "memsim.calibrate(chip, [torch.randn(4, 20)])\n"
        "print(tuple(chip(torch.randn(4, 20)).shape), memsim.summary(chip)[-1]['cells'])\n"
    )
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stdout.split() == ["(4,", "5)", "6144"]
    freeze = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout.lower()
    assert "hydra" not in freeze and "sentencepiece" not in freeze and "torchaudio" not in freeze
