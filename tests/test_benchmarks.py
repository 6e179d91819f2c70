"""The benchmark scripts run (at toy sizes): a script that only runs on release day is broken."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_compare_models_prints_its_table():
    out = run("benchmarks/compare_models.py", "--minutes", "0.01", "--seeds", "1", "--pages", "4",
              "--unseen-pages", "2", "--new-pages", "2", "--size", "64", "--jobs", "1", "--only",
              "U-Net started from the 3D LUT (04 recipe)")
    for row in ("do nothing (the scans)", "classical colour map", "3D colour LUT", "U-Net started from the 3D LUT",
                "x the 3D LUT", "new_score", "on their new pages", "unseen_score", "best trained row on unseen scanners"):
        assert row in out
    # every trained row has its parameter count: the notebooks' models, nothing that was removed
    params = next(line for line in out.splitlines() if line.startswith("parameters: "))
    for row in ("DnCNN (03 recipe)", "04 recipe, colour head started from the affine map",
                "U-Net started from the 3D LUT (04 recipe)"):
        assert row in params, row
    for gone in ("mean-Y shift", "rescans", "auto-levels", "colour head alone"):
        assert gone not in out, gone


def test_loading_benchmark_prints_its_ratios():
    out = run("benchmarks/loading.py", "--pairs", "4", "--size", "160", "--batches", "2")
    assert "vs slides" in out and "ours + decoded cache" in out


def test_gpu_step_benchmark_prints_its_table_and_profile():
    out = run("benchmarks/gpu_step.py", "--batch", "4", "--patch", "32", "--width", "8", "--steps", "1",
              "--image", "48", "--pairs", "4", "--profile-rows", "5")
    for text in ("| dncnn | 4 x 32 px | fp32, channels-last * |", "| attention | 4 x 32 px | end to end",
                 "loader alone (0 workers)", "data-bound? ", "images/s x8 self-ensemble",
                 "top operations of one profiled attention step", "Self CPU time total"):
        assert text in out, text


def test_ddp_scaling_prints_its_table():
    out = run("benchmarks/ddp_scaling.py", "--processes", "2", "--pages", "3", "--size", "64", "--steps", "1",
              "--patch", "32", "--batch", "8")
    assert "| 2 | 1 |" in out and "training crops/s" in out
