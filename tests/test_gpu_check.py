"""make gpu-check: its hot-path checks run (here on the CPU), and without a GPU it says so and exits with 2."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name",
    [
        "device pulse + read",
        "crossbar read",
        "depthwise convolution read",
        "dense convolution read",
        "QAT training step",
        "pre-cycling pulses",
    ],
)
def test_every_hot_path_check_runs(name, device):
    gpu_check = load_script()
    gpu_check.run_without_sync(gpu_check.HOT_PATHS[name], torch.device(device), gpu_check.SYNCS_ALLOWED.get(name, 0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_with_2():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 2 and "no CUDA device here" in done.stdout
