"""The project's structure, guarded: the kit stays small enough to read in an evening, one setup
cell, no torch where it is not needed, imports that flow one way, a few environment variables, words
for students only, and requirements that cover every import."""
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
ORDER = ["files", "metrics", "demo", "zips", "download", "data", "plots", "recipes",
         "notebook", "models", "inference", "crops", "losses", "checkpoints", "optim", "colourmap",
         "distributed", "engine", "launch", "submit", "cli"]
NO_TORCH = ["helpers", "descan", "descan.demo", "descan.zips", "descan.data",
            "descan.plots",
            "descan.notebook", "descan.recipes", "descan.submit", "descan.cli"]
KIT = [ROOT / "helpers.py", *sorted((ROOT / "descan").glob("*.py"))]
# where and how to run: the only environment variables the project reads
VARIABLES = {"DESCAN_DATA", "DESCAN_WORKSPACE", "DESCAN_SMOKE", "DESCAN_DRIVE", "DESCAN_REPO_URL",
             "DESCAN_RUN_NAME", "DESCAN_CHECKPOINT", "DESCAN_TRAIN_MINUTES", "DESCAN_RESUME",
             "DESCAN_DRIVE_IDS", "DESCAN_ZIP_CACHE", "DESCAN_KAGGLE_ROOT"}


def cells(path, kind="code"):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def project_files():
    """Every file of the project that git tracks (or would), as text."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return {name: (ROOT / name).read_text(errors="replace") for name in out if (ROOT / name).is_file()}


def code_lines(path) -> int:
    return len(Path(path).read_text().splitlines())


def functions(path):
    """(name, lines) of every function and method of a Python file, read with ast."""
    tree = ast.parse(Path(path).read_text())
    return [(f"{Path(path).name}:{n.name}", n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_the_kit_is_small_enough_to_read_in_an_evening():
    sizes = {p.relative_to(ROOT).as_posix(): code_lines(p) for p in KIT}
    assert sizes["helpers.py"] <= 200, sizes["helpers.py"]
    # a ratchet: 4,050 lines before the kit was cut down, 3,285 now; the goal is 2,500
    assert sum(sizes.values()) <= 3285, f"helpers.py + descan/*.py: {sum(sizes.values())} lines"
    assert max(sizes.values()) <= 300, max(sizes.items(), key=lambda kv: kv[1])
    longest = max((f for p in KIT for f in functions(p)), key=lambda f: f[1])
    assert longest[1] <= 50, f"longest function {longest}"
    assert code_lines(ROOT / "data_download.sh") <= 60


def test_no_line_over_100_characters_so_that_the_counts_mean_something():
    for path in [*KIT, ROOT / "data_download.sh"]:
        long = [i for i, line in enumerate(path.read_text().splitlines(), 1) if len(line) > 100]
        assert not long, f"{path.name}: lines {long[:10]} are over 100 characters"


def test_the_size_checks_can_fail(tmp_path):
    long_function = "def f():\n" + "    x = 1\n" * 60
    (tmp_path / "m.py").write_text(long_function)
    assert functions(tmp_path / "m.py") == [("m.py:f", 61)] and code_lines(tmp_path / "m.py") == 61


def test_a_dozen_environment_variables_at_most():
    found = {m for text in project_files().values() for m in re.findall(r"DESCAN" r"_[A-Z_]*", text)}
    assert found <= VARIABLES and len(VARIABLES) <= 12, f"not among the dozen: {sorted(found - VARIABLES)}"
    readme = (ROOT / "README.md").read_text()
    assert all(readme.count(f"`{v}`") >= 1 for v in VARIABLES), "the README lists every variable"


def test_the_product_speaks_to_students_only():
    words = re.compile(r"\bissue[ _-]?\d+|issue's targets|\.\./shared", re.IGNORECASE)
    found = {name: words.findall(text) for name, text in project_files().items() if name != "tests/test_layout.py"}
    assert not {k: v for k, v in found.items() if v}
    assert code_lines(ROOT / "README.md") <= 200


def test_the_five_notebooks_exist_in_order():
    assert [p.stem for p in NOTEBOOKS] == ["01_download", "02_explore", "03_train_dncnn",
                                           "04_train_attention", "05_submit"]


def test_every_notebook_opens_the_same_way():
    first = {p.name: cells(p)[0] for p in NOTEBOOKS}
    assert len(set(first.values())) == 1, "the first code cells differ: " + ", ".join(first)
    assert "notebook.setup(seed=0)" in next(iter(first.values()))
    for p in NOTEBOOKS:  # the title, a Colab badge, and one line that links to the Colab/Kaggle how-to
        intro = cells(p, "markdown")[0]
        assert intro.startswith("# ") and "colab-badge.svg" in intro and "#using-it-in-colab" in intro, p.name


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
    assert set(files) <= set(ORDER), f"update ORDER in this test: {sorted(set(files) - set(ORDER))}"
    for name, path in files.items():
        for mod in _imports(path):
            if mod.startswith("descan."):
                dep = mod.split(".")[1]
                assert ORDER.index(dep) < ORDER.index(name), f"descan.{name} imports descan.{dep} (upward)"


def test_the_notebooks_are_the_recipes():
    """03 and 04 hold their recipe as plain values, the model and the loss as code; the command
    line, torchrun's processes, the benchmarks and the tests all read them from there."""
    import torch
    from descan import recipes
    for recipe, cls in (("dncnn", "DnCNN"), ("attention", "AttentionUNet")):
        code = "\n".join(cells(ROOT / "notebooks" / recipes.NOTEBOOKS[recipe]))
        assert "CFG = TrainConfig(" in code and f"class {cls}(nn.Module)" in code
        assert "MODEL_CODE = notebook.this_cell()" in code and "def training_loss(" in code
    gpu = recipes.from_notebook("attention", torch.device("cuda"), smoke=False)
    cpu = recipes.from_notebook("attention", torch.device("cpu"), smoke=False)
    smoke = recipes.from_notebook("attention", torch.device("cpu"), smoke=True)
    assert gpu["config"].patch == 256 and gpu["config"].ema_decay == 0.999 and gpu["config"].warmup_steps == 200
    assert cpu["config"].patch == 64 and cpu["config"].ema_decay == 0.0 and smoke["config"].patch == 48
    assert gpu["model"]["kwargs"]["width"] == 32 and smoke["model"]["kwargs"]["width"] == 16
    assert cpu["model"]["kwargs"]["width"] == 16 and cpu["model"]["kwargs"]["enc_blocks"] == (1, 1, 1)
    # the augmentations that help other scanners: on a GPU only (on a CPU they cost the training ones)
    assert gpu["config"].colour_jitter == 0.5 and gpu["config"].degrade_prob == 0.25
    assert cpu["config"].colour_jitter == 0.0 and cpu["config"].degrade_prob == 0.0
    assert "class AttentionUNet" in gpu["model"]["code"] and "this_cell" not in gpu["model"]["code"]


# ---------------------------------------------------------------- requirements cover every import

# import name -> distribution in requirements.txt
DISTRIBUTIONS = {"cv2": "opencv-python", "torch": "torch", "numpy": "numpy",
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
