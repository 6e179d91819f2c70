"""Fixtures shared by the test files (the session's environment is set in the root conftest.py)."""
import pytest

import helpers
from descan import demo


@pytest.fixture(scope="module")
def demo_pairs(tmp_path_factory):
    """(train, val) pairs of a tiny demo set (6 pages x 2 crops of 48 px), split by page."""
    root = tmp_path_factory.mktemp("demo")
    demo.make_demo_dataset(root, train_pages=6, test_pages=1, crops_per_page=2, crop=48, show_progress=False)
    pairs = helpers.pair_files(root / "train/clean", root / "train/scan")
    split = helpers.split_names([p.name for p in pairs], val_fraction=0.2, seed=0)
    return [p for p in pairs if split[p.name] == "train"], [p for p in pairs if split[p.name] == "val"]
