"""Fixtures shared by the test files (the session's environment is set in the root conftest.py)."""
import pytest

from descan import data, demo


@pytest.fixture(scope="module")
def demo_pairs(tmp_path_factory):
    """(train, val) pairs of a tiny demo set (6 pages x 2 crops of 48 px from the seen scanners, and
    2 pairs from unseen ones), split as notebook 01 splits it: by page, unseen scanners in val."""
    root = tmp_path_factory.mktemp("demo")
    demo.make_demo_dataset(root, train_pages=6, unseen_pages=2, test_pages=1, crops_per_page=2, crop=48,
                           show_progress=False)
    manifest = data.make_manifest(root, val_fraction=0.2)
    return data.manifest_pairs(manifest, root, "train"), data.manifest_pairs(manifest, root, "val")
