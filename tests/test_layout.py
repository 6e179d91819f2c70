"""The project's structure, guarded: one setup cell, no torch where it is not needed, imports that
flow one way, one recipe table, file sizes, and requirements that cover every import."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# descan's modules from low to high: each may import only modules before it (and helpers)
ORDER = ["demo", "zips", "download", "data", "plots", "notebook", "recipes", "models", "inference", "crops", "losses", "checkpoints",
         "colourmap", "distributed",
         "engine", "submit", "cli"]
NO_TORCH = ["helpers", "descan", "descan.demo", "descan.zips", "descan.data", "descan.plots", "descan.notebook",
            "descan.recipes", "descan.submit", "descan.cli"]


def cells(path, kind="code"):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def test_the_five_notebooks_exist_in_order():
    assert [p.stem for p in NOTEBOOKS] == ["01_download", "02_explore", "03_train_dncnn", "04_train_attention",
                                           "05_submit"]


def test_the_setup_cell_is_the_same_in_every_notebook():
    first = {p.name: cells(p)[0] for p in NOTEBOOKS}
    assert len(set(first.values())) == 1, "the first code cells differ: " + ", ".join(first)
    setup = next(iter(first.values()))
    assert "notebook.setup_notebook(seed=0)" in setup and "notebook.setup()" in setup


def test_every_notebook_explains_the_drive_dialog_first():
    for p in NOTEBOOKS:
        intro = cells(p, "markdown")[0]
        assert "Run all waits until you answer it" in intro and "DESCAN_DRIVE=0" in intro, p.name


def test_notebooks_are_committed_without_outputs():
    for p in NOTEBOOKS:
        for c in json.loads(p.read_text())["cells"]:
            assert not c.get("outputs") and not c.get("execution_count"), p.name


def test_no_torch_at_import_time_where_it_is_not_needed():
    code = f"import sys, importlib; [importlib.import_module(m) for m in {NO_TORCH!r}]; " \
           "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"torch imported by one of {NO_TORCH}: {r.stdout[:200]}"


def _imports(path):
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            if node.module == "descan":
                for a in node.names:
                    yield f"descan.{a.name}"


def test_imports_flow_one_way_without_cycles():
    assert not [m for m in _imports(ROOT / "helpers.py") if m.split(".")[0] == "descan"], "helpers imports descan"
    files = {p.stem: p for p in (ROOT / "descan").glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert set(files) == set(ORDER), f"update ORDER in this test: {sorted(files)}"
    for name, path in files.items():
        for mod in _imports(path):
            if mod.startswith("descan."):
                dep = mod.split(".")[1]
                assert ORDER.index(dep) < ORDER.index(name), f"descan.{name} imports descan.{dep} (upward)"


def test_file_sizes():
    assert len((ROOT / "helpers.py").read_text().splitlines()) < 400
    for path in list((ROOT / "descan").glob("*.py")) + list((ROOT / "benchmarks").glob("*.py")):
        n = len(path.read_text().splitlines())
        assert n <= 450, f"{path.name} has {n} lines"


def test_the_recipes_table_is_the_single_source():
    from descan import recipes
    sources = {"03": "\n".join(cells(ROOT / "notebooks/03_train_dncnn.ipynb")),
               "04": "\n".join(cells(ROOT / "notebooks/04_train_attention.ipynb")),
               "benchmark": (ROOT / "benchmarks/compare_models.py").read_text(),
               "tests": (ROOT / "tests/test_training.py").read_text()}
    assert 'recipes.recipe("dncnn"' in sources["03"] and 'recipes.recipe("attention"' in sources["04"]
    for where in ("benchmark", "tests"):
        assert "recipes.recipe(" in sources[where] and '"dncnn"' in sources[where] and '"attention"' in sources[where]
    knobs = ("warmup_steps=", "ema_decay=", "weight_decay=", "degrade_prob=", "mean_y_weight=", "grad_clip=")
    for where, text in sources.items():
        if where == "tests":  # unit tests of one knob may set it; the recipe tests read RECIPES (above)
            continue
        code = "\n".join(line.split("#")[0] for line in text.splitlines())  # comments may show an example
        literal = [k for k in knobs if re.search(rf"\b{k}\s*[\d.]", code)]
        assert not literal, f"{where} sets recipe knobs itself instead of reading RECIPES: {literal}"
    # the layers of recipe(): GPU recipe, then the CPU sizes, then smoke mode
    name, kwargs, gpu = recipes.recipe("attention", "cuda", use_env=False)
    _, _, cpu = recipes.recipe("attention", "cpu", use_env=False)
    _, small, smoke = recipes.recipe("attention", "cpu", smoke=True, use_env=False)
    assert name == "attention_unet" and kwargs == recipes.RECIPES["attention"]["model_kwargs"]
    assert gpu.patch == 256 and gpu.ema_decay == 0.999 and gpu.warmup_steps == 200
    assert cpu.patch == 64 and cpu.ema_decay == 0.999 and smoke.patch == 48 and small["width"] == 16


# ---------------------------------------------------------------- requirements cover every import

# import name -> distribution in requirements.txt
DISTRIBUTIONS = {"cv2": "opencv-python", "torch": "torch", "torchvision": "torchvision", "numpy": "numpy",
                 "pandas": "pandas", "matplotlib": "matplotlib", "tqdm": "tqdm", "torchsummary": "torchsummary",
                 "pytest": "pytest", "nbformat": "nbformat", "nbclient": "nbclient"}
# imported only where they exist, each with its own message
OPTIONAL = {"google": "Colab's own module (descan/notebook.py runs only in Colab)"}
# used as commands, not imported
COMMANDS = {"gdown": "data_download.sh downloads with it", "nbval": "pytest --nbval", "ipykernel": "nbval's kernel"}
LOCAL = {"helpers", "descan", "builders", "conftest"}


def _project_imports():
    files = [ROOT / "helpers.py", ROOT / "conftest.py", *(ROOT / "descan").glob("*.py"),
             *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tests").glob("*.py")]
    found = {}
    for f in files:
        for mod in _imports(f):
            found.setdefault(mod.split(".")[0], f.relative_to(ROOT).as_posix())
    for nb in NOTEBOOKS:
        code = "\n".join(line for c in cells(nb) for line in c.splitlines() if not line.lstrip().startswith("%"))
        for node in ast.walk(ast.parse(code)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for mod in names:
                found.setdefault(mod.split(".")[0], f"notebooks/{nb.name}")
    return found


def requirement_names(text):
    return {re.split(r"[<>=!~\[; ]", line.strip())[0].lower() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")}


def missing_requirements(requirements_text):
    """Third-party imports of the project that requirements.txt does not cover: {import: where}."""
    have = requirement_names(requirements_text)
    missing = {}
    for mod, where in _project_imports().items():
        if mod in sys.stdlib_module_names or mod in LOCAL or mod in OPTIONAL:
            continue
        dist = DISTRIBUTIONS.get(mod)
        if dist is None or dist not in have:
            missing[mod] = where
    return missing


def test_requirements_cover_every_import():
    text = (ROOT / "requirements.txt").read_text()
    assert missing_requirements(text) == {}, "add these to requirements.txt (and to DISTRIBUTIONS here)"
    for command in COMMANDS:
        assert command in requirement_names(text), command


@pytest.mark.parametrize("dist", sorted(set(DISTRIBUTIONS.values())))
def test_the_coverage_check_fails_without_a_line(dist):
    text = (ROOT / "requirements.txt").read_text()
    without = "\n".join(line for line in text.splitlines() if requirement_names(line) != {dist})
    assert dist in {DISTRIBUTIONS[m] for m in missing_requirements(without)}
