"""Tests of data_download.sh: demo mode, and real mode with a fake downloader for every failure.

--downloader points the script at a small fake `gdown` written into tmp_path. Like the real gdown
without -O, it writes the file into its working folder under the name Google Drive gives it; a
mapping "id -> (Drive file name, which zip's contents)" says what each id serves, so quota pages,
HTML pages, truncated zips, good zips in any order and zips that are not what Drive calls them are
all tested without a network. One test runs the real gdown and expects a fast, helpful failure;
it is skipped when the network is reachable.
"""
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

import helpers

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data_download.sh"
ZIPS = ("train_clean.zip", "train_scan.zip", "test_scan.zip")
# The script's default ids, then the replacement test id, its last resort.
DEFAULT_IDS = ["16zAeGDmqbAvn7Iy8V-mBylKx6rG-wgLD", "1cqxSVFxfonx5qKVIdfByOq7uYdNZY8ea",
               "1zmfrXzT9lnLg7NlQ-hXekZlyX9aGNNqj"]
FALLBACK_ID = "1DEavUuFh6x7n1XEMQCaW8yaU3wQxqfBu"

FAKE_GDOWN = r"""#!/usr/bin/env bash
# A stand-in for gdown without -O: records its arguments, then behaves as FAKE_MODE says, writing
# into the current folder under the Drive name that FAKE_MAP ("id<TAB>drive name<TAB>zip") gives.
if [ "${1:-}" = "--help" ]; then echo "  --timeout SECONDS  give up"; exit 0; fi
echo "$*" >> "$FAKE_LOG"
id=""
while [ $# -gt 0 ]; do
  case "$1" in
    -O) echo "fake gdown: -O must not be used" >&2; exit 5 ;;
    --timeout) shift ;;
    -*) ;;
    *) id="$1" ;;
  esac
  shift
done
drive_name=""; kind=""
while IFS=$'\t' read -r i n k; do
  if [ "$i" = "$id" ]; then drive_name="$n"; kind="$k"; fi
done < "$FAKE_MAP"
case "$FAKE_MODE" in
  quota)
    echo "Failed to retrieve file url:" >&2
    echo "    Too many users have viewed or downloaded this file recently. Please try accessing" >&2
    echo "    the file again later." >&2
    exit 1 ;;
  refuse)
    echo "fake gdown: must not be called" >&2
    exit 3 ;;
esac
if [ -z "$drive_name" ]; then echo "fake gdown: unknown id $id" >&2; exit 4; fi
case "$FAKE_MODE" in
  html)
    printf '<!DOCTYPE html><html><head><title>Google Drive</title></head><body>sign in</body></html>' \
      > "$drive_name"
    exit 0 ;;
  truncated)
    head -c 150 "$FAKE_SRC/$kind" > "$drive_name"
    exit 0 ;;
  serve)
    : > "${drive_name}k3j5x9qa.part"  # a leftover partial file, as gdown may leave one
    cp "$FAKE_SRC/$kind" "$drive_name"
    exit 0 ;;
esac
echo "fake gdown: unknown mode $FAKE_MODE" >&2
exit 3
"""


def png(rgb):
    ok, buf = cv2.imencode(".png", rgb)
    assert ok
    return buf.tobytes()


def tif(rgb):
    ok, buf = cv2.imencode(".tif", rgb)
    assert ok
    return buf.tobytes()


def img(value):
    a = np.empty((8, 8, 3), np.uint8)
    a[:] = value
    return a


PAIRS = ["Mag.00001.01", "Mag.00001.02", "Hack.00002.01"]
CONTENT = {
    "train_clean.zip": [("train_clean/", None)] + [(f"train_clean/{n}.png", png(img(10 * i)))
                                                  for i, n in enumerate(PAIRS)],
    "train_scan.zip": [(f"scans/deep/{n}.png", png(img(10 * i + 3))) for i, n in enumerate(PAIRS)]
    + [("__MACOSX/scans/deep/._Mag.00001.01.png", b"junk")],
    "test_scan.zip": [("test_scan/Wire.00003.01.tif", tif(img(99))), ("test_scan/readme.txt", b"x")],
}
UNPACKED = {"train/clean": [f"{n}.png" for n in sorted(PAIRS)],
            "train/scan": [f"{n}.png" for n in sorted(PAIRS)],
            "test/scan": ["Wire.00003.01.tif"]}
FOLDER = {"train_clean.zip": "train/clean", "train_scan.zip": "train/scan", "test_scan.zip": "test/scan"}
# The usual mapping: each default id serves the zip Drive names it after.
USUAL = {DEFAULT_IDS[0]: ("train_clean.zip", "train_clean.zip"),
         DEFAULT_IDS[1]: ("train_scan.zip", "train_scan.zip"),
         DEFAULT_IDS[2]: ("test_scan.zip", "test_scan.zip")}


def build_zip(path, name):
    with zipfile.ZipFile(path, "w") as zf:
        for arc, data in CONTENT[name]:
            if data is None:
                zf.writestr(zipfile.ZipInfo(arc), b"")
            else:
                zf.writestr(arc, data)
    return path


def unpack_by_hand(data):
    """The images of the three zips, placed where the script would unpack them."""
    for name, sub in FOLDER.items():
        (data / sub).mkdir(parents=True, exist_ok=True)
        for arc, blob in CONTENT[name]:
            if blob is not None and not arc.startswith("__MACOSX") and not arc.endswith(".txt"):
                (data / sub / Path(arc).name).write_bytes(blob)


def files_under(folder):
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else []


def snapshot(folder):
    """Every path under ``folder`` (the folder itself included) with its mtime."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in [folder, *folder.rglob("*")]}


@pytest.fixture
def fake(tmp_path):
    """A fake downloader serving the zips' contents from tmp_path/src by the mapping fake.serve()
    sets (default: USUAL); returns a helper object."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ZIPS:
        build_zip(src / name, name)
    with zipfile.ZipFile(src / "big.zip", "w") as zf:  # as many images as a training zip may hold
        for i in range(2000):
            zf.writestr(f"Mag.{i:05d}.01.png", b"x")
    script = tmp_path / "fake_gdown"
    script.write_text(FAKE_GDOWN)
    script.chmod(0o755)

    class Fake:
        log = tmp_path / "fake_calls.log"
        map = tmp_path / "fake_map.tsv"
        path = script

        def serve(self, mapping):
            """mapping: id -> (the file name Drive gives it, which zip's contents it holds)."""
            self.map.write_text("".join(f"{i}\t{n}\t{k}\n" for i, (n, k) in mapping.items()))

        def calls(self):
            return self.log.read_text().splitlines() if self.log.exists() else []

        def called_ids(self):
            return [line.split()[-1] for line in self.calls()]

    f = Fake()
    f.src = src
    f.serve(USUAL)
    return f


_WORKSPACE = {}


@pytest.fixture(autouse=True)
def workspace(tmp_path):
    """Each test's workspace (where `check` records a passed check): never the repository's."""
    _WORKSPACE["path"] = tmp_path / "workspace"
    yield _WORKSPACE["path"]
    _WORKSPACE.clear()


# Small demo sets, and no wait between download attempts; a test's own options come after these.
OPTIONS = ["--pages", "2", "--test-pages", "1", "--unseen-pages", "2", "--size", "64"]


def run_script(*args, env=None, fake=None, mode="refuse", timeout=120, wait="0"):
    full = {k: v for k, v in os.environ.items() if not k.startswith("DESCAN")}
    full.update({"DESCAN_WORKSPACE": str(_WORKSPACE["path"])})
    options = OPTIONS + (["--retry-wait", wait] if wait is not None else [])
    if fake is not None:
        full.update(FAKE_LOG=str(fake.log), FAKE_MAP=str(fake.map), FAKE_SRC=str(fake.src),
                    FAKE_MODE=mode)
        options += ["--downloader", str(fake.path)]
    full.update(env or {})
    t0 = time.time()
    r = subprocess.run(["bash", str(SCRIPT), *options, *map(str, args)], capture_output=True,
                       text=True, env=full, timeout=timeout, cwd="/")
    r.elapsed = time.time() - t0
    r.out = r.stdout + r.stderr
    return r


def assert_unpacked(data):
    for sub, names in UNPACKED.items():
        assert files_under(data / sub) == names
    assert (data / "train/scan/Mag.00001.02.png").read_bytes() == CONTENT["train_scan.zip"][1][1]


# ---------------------------------------------------------------- usage and demo mode

def test_help_and_bad_arguments():
    r = run_script("--help")
    assert r.returncode == 0 and "usage" in r.stdout.lower() and "--demo" in r.stdout
    assert "DESCAN_DRIVE_IDS" in r.stdout and all(i in r.stdout for i in DEFAULT_IDS + [FALLBACK_ID])
    assert run_script("-h").stdout == r.stdout
    r = run_script("--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
    r = run_script("a", "b")
    assert r.returncode == 2 and "only one DATA_DIR" in r.stderr


def test_demo_mode_makes_the_layout_and_is_idempotent(tmp_path, workspace):
    data = tmp_path / "my demo"  # a space in the path must not break anything
    r = run_script("--demo", data)
    assert r.returncode == 0, r.out
    files = files_under(data)
    assert "DEMO_DATA.txt" in files
    assert len([f for f in files if f.startswith("train/clean/") and f.endswith(".png")]) == 8
    assert len([f for f in files if f.startswith("train/scan/") and f.endswith(".png")]) == 8
    assert len([f for f in files if f.startswith("test/scan/") and f.endswith(".tif")]) == 3
    assert "8 pairs (4 of them from unseen scanners, for validation only) and 3 test scans" in r.stdout
    assert "NOT the competition data" in r.stdout
    assert files_under(workspace)  # the passed check is recorded in the workspace, not in the data
    before = {f: (data / f).stat().st_mtime_ns for f in files}

    r = run_script("--demo", env={"DESCAN_DATA": str(data)})  # DESCAN_DATA names the same folder
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert {f: (data / f).stat().st_mtime_ns for f in files_under(data)} == before

    # other settings: the old demo files are replaced, not mixed with the new ones
    r = run_script("--demo", data, "--size", "48")
    assert r.returncode == 0, r.out
    assert "Replacing the older demo data" in r.stdout
    assert len(files_under(data)) == 20
    assert cv2.imread(str(data / "train/clean/DemoMaking.00000.01.png")).shape == (48, 48, 3)


def test_an_interrupted_demo_generation_is_made_again_not_taken_for_complete(tmp_path, monkeypatch):
    from descan import demo, download
    settings = {"train_pages": 2, "unseen_pages": 2, "test_pages": 1, "crop": 32}
    real_page, made = demo._demo_page, []

    def page_then_stop(*args):
        if len(made) == 3:
            raise KeyboardInterrupt  # Ctrl-C, or the runtime stops, half way
        made.append(real_page(*args))

    monkeypatch.setattr(demo, "_demo_page", page_then_stop)
    with pytest.raises(KeyboardInterrupt):
        download.get_demo(tmp_path / "data", **settings)
    monkeypatch.undo()
    assert len(files_under(tmp_path / "data/train/clean")) < 8  # cut short: some pairs only
    assert download.get_demo(tmp_path / "data", **settings)  # made again, not "nothing to do"
    assert [len(files_under(tmp_path / f"data/{sub}")) for sub in helpers.SPLITS.values()] == [8, 8, 3]
    assert not download.get_demo(tmp_path / "data", **settings)  # complete now: nothing to do


def test_a_demo_folder_of_the_previous_version_is_made_again(tmp_path, capsys):
    from descan import download
    settings = {"train_pages": 2, "unseen_pages": 2, "test_pages": 1, "crop": 32}
    download.get_demo(tmp_path, **settings)
    marker = tmp_path / helpers.DEMO_MARKER  # as version 2 wrote it (half the test set unseen)
    old = "version=2 seed=0 train_pages=2 unseen_pages=2 test_pages=1 crops_per_page=2 crop=32"
    text = marker.read_text()
    marker.write_text(text[:text.index("version=")] + old + "\n")
    assert download.get_demo(tmp_path, **settings)
    assert "Replacing the older demo data" in capsys.readouterr().out
    assert old not in marker.read_text()


def test_demo_refuses_a_real_data_folder(tmp_path):
    real = tmp_path / "real"
    (real / "train" / "clean").mkdir(parents=True)
    (real / "train" / "clean" / "Mag.00001.01.png").write_bytes(png(img(1)))
    r = run_script("--demo", real)
    assert r.returncode != 0
    assert "real competition data" in r.stderr and "DEMO_DATA.txt" in r.stderr
    assert files_under(real) == ["train/clean/Mag.00001.01.png"]  # nothing written


def test_real_mode_refuses_a_demo_folder(tmp_path, fake):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "DEMO_DATA.txt").write_text("demo")
    r = run_script(demo, fake=fake, mode="serve")
    assert r.returncode != 0 and "demo data" in r.stderr
    assert fake.calls() == [] and files_under(demo) == ["DEMO_DATA.txt"]


# ---------------------------------------------------------------- real mode, failures

def test_quota_message_fails_with_what_to_do(tmp_path, fake):
    data = tmp_path / "data"
    r = run_script(data, fake=fake, mode="quota")
    assert r.returncode != 0
    msg = r.stderr.lower()
    assert "too many users" in msg
    assert "wait" in msg and "retry later" in msg
    assert "your own google drive" in msg
    assert str(data / "zips" / "train_clean.zip").lower() in msg  # where to put it by hand
    assert len(fake.calls()) == 1  # no pointless retries against a quota
    assert "--timeout" in fake.calls()[0].split()  # the downloader never waits forever
    assert fake.called_ids() == [DEFAULT_IDS[0]]
    assert files_under(data / "zips") == []  # nothing partial left behind
    assert not (data / "train").exists()


def test_html_page_instead_of_zip_is_deleted(tmp_path, fake):
    data = tmp_path / "data"
    r = run_script(data, fake=fake, mode="html")
    assert r.returncode != 0
    assert "web page" in r.stderr and "deleted" in r.stderr
    assert "wait" in r.stderr.lower() and str(data / "zips") in r.stderr
    assert files_under(data / "zips") == []  # neither train_clean.zip nor a temporary file
    assert not (data / "train").exists()


def test_truncated_download_is_retried_then_deleted(tmp_path, fake):
    data = tmp_path / "data"
    r = run_script(data, "--tries", "2", fake=fake, mode="truncated")
    assert r.returncode != 0
    assert "after 2 attempts" in r.stderr
    assert fake.called_ids() == [DEFAULT_IDS[0]] * 2
    assert files_under(data / "zips") == []
    assert not (data / "train").exists()


def test_missing_downloader(tmp_path):
    r = run_script(tmp_path / "data", "--downloader", tmp_path / "no-such-gdown")
    assert r.returncode != 0 and "not installed" in r.stderr and "pip install gdown" in r.stderr


def test_a_zip_holding_the_wrong_split_is_refused(tmp_path, fake):
    """Drive calls it train_scan.zip, but it holds the test scans: nothing is unpacked."""
    data = tmp_path / "data"
    fake.serve({DEFAULT_IDS[0]: ("train_clean.zip", "train_clean.zip"),
                DEFAULT_IDS[1]: ("train_scan.zip", "test_scan.zip"),
                DEFAULT_IDS[2]: ("test_scan.zip", "test_scan.zip")})
    r = run_script(data, fake=fake, mode="serve")
    assert r.returncode != 0
    assert "train_scan.zip" in r.stderr and "not what its name says" in r.stderr
    assert "nothing was unpacked" in r.stderr
    assert not (data / "train").exists() and not (data / "test").exists()
    assert files_under(data / ".unpacked") == []
    assert files_under(data / "zips") == [".drive_ids", "test_scan.zip", "train_clean.zip", "train_scan.zip"]


def test_a_zip_nobody_can_name_is_kept_with_what_to_do(tmp_path, fake):
    """A training-sized zip whose Drive name does not say clean or scan: kept in the cache, not guessed."""
    data = tmp_path / "data"
    fake.serve({DEFAULT_IDS[0]: ("download.zip", "big.zip")})
    r = run_script(data, fake=fake, mode="serve")
    assert r.returncode != 0
    assert "rename it to train_clean.zip or train_scan.zip" in r.stderr
    assert "kept as " + str(data / "zips" / "download.zip") in r.stderr
    assert files_under(data / "zips") == ["download.zip"]
    assert fake.called_ids() == [DEFAULT_IDS[0]]


def test_a_zip_missing_after_all_ids_says_how_to_fix(tmp_path, fake):
    data = tmp_path / "data"
    fake.serve({"A": ("train_clean.zip", "train_clean.zip"), "B": ("train_scan.zip", "train_scan.zip")})
    r = run_script(data, fake=fake, mode="serve", env={"DESCAN_DRIVE_IDS": "A B"})
    assert r.returncode != 0
    assert fake.called_ids() == ["A", "B"]  # overridden ids: no fallback id either
    assert "test_scan.zip" in r.stderr and "DESCAN_DRIVE_IDS" in r.stderr
    assert str(data / "zips" / "test_scan.zip") in r.stderr  # where to put it by hand
    assert not (data / "train").exists()


# ---------------------------------------------------------------- real mode, success

@pytest.mark.parametrize("order", ["usual", "test_first", "test_unnamed"])
def test_zips_are_named_by_what_they_are_not_by_their_id(tmp_path, fake, order):
    """Any id may be any zip; a re-run downloads nothing, and a cache that lacks one zip only
    downloads the ids it has not seen yet."""
    data = tmp_path / "data"
    kinds = {"usual": ZIPS, "test_first": ("test_scan.zip", "train_clean.zip", "train_scan.zip"),
             "test_unnamed": ("train_scan.zip", "test_scan.zip", "train_clean.zip")}[order]
    mapping = {i: (k, k) for i, k in zip(DEFAULT_IDS, kinds)}
    if order == "test_unnamed":  # no name to go by: the test zip is told by its contents
        mapping[DEFAULT_IDS[1]] = ("Descanning data (2).zip", "test_scan.zip")
    fake.serve(mapping)
    r = run_script(data, fake=fake, mode="serve")
    assert r.returncode == 0, r.out
    assert fake.called_ids() == DEFAULT_IDS  # the fallback id is not needed
    assert_unpacked(data)
    cache = data / "zips"
    assert files_under(cache) == [".drive_ids", "test_scan.zip", "train_clean.zip", "train_scan.zip"]
    for name in ZIPS:
        assert (cache / name).read_bytes() == (fake.src / name).read_bytes()
    assert sorted((cache / ".drive_ids").read_text().splitlines()) == sorted(
        f"{i} {k}" for i, k in zip(DEFAULT_IDS, kinds))
    assert "3 training pairs, 1 test scans" in r.stdout
    assert not (data / "DEMO_DATA.txt").exists()

    # re-run: the data is in place and checked; nothing is downloaded, unpacked or written
    before = snapshot(data)
    r = run_script(data, fake=fake, mode="refuse")
    assert r.returncode == 0, r.out
    assert "already in place" in r.stdout
    assert len(fake.calls()) == 3
    assert snapshot(data) == before

    # the data and the test zip are lost: only the id not yet known to be in the cache is fetched
    for sub in ("train", "test", ".unpacked"):
        subprocess.run(["rm", "-rf", str(data / sub)], check=True)
    (cache / "test_scan.zip").unlink()
    r = run_script(data, fake=fake, mode="serve")
    assert r.returncode == 0, r.out
    test_id = DEFAULT_IDS[kinds.index("test_scan.zip")]
    assert fake.called_ids()[3:] == [test_id]
    assert r.stdout.count("already in the cache: not downloading it again") == kinds.index("test_scan.zip")
    assert_unpacked(data)


def test_fallback_test_id_and_duplicate_downloads(tmp_path, fake):
    """When none of the three ids is the test zip, the replacement test id is tried; a download of
    a zip already in the cache is discarded."""
    data = tmp_path / "data"
    fake.serve({DEFAULT_IDS[0]: ("train_clean.zip", "train_clean.zip"),
                DEFAULT_IDS[1]: ("train_scan.zip", "train_scan.zip"),
                DEFAULT_IDS[2]: ("train_scan.zip", "train_scan.zip"),
                FALLBACK_ID: ("test_scan.zip", "test_scan.zip")})
    r = run_script(data, fake=fake, mode="serve")
    assert r.returncode == 0, r.out
    assert fake.called_ids() == DEFAULT_IDS + [FALLBACK_ID]
    assert "new copy is discarded" in r.stdout
    assert_unpacked(data)
    assert files_under(data / "zips") == [".drive_ids", "test_scan.zip", "train_clean.zip", "train_scan.zip"]


def test_drive_ids_can_be_overridden(tmp_path, fake):
    data = tmp_path / "data"
    fake.serve({"newTest": ("test_scan.zip", "test_scan.zip"), "newClean": ("train_clean.zip", "train_clean.zip"),
                "newScan": ("train_scan.zip", "train_scan.zip")})
    r = run_script(data, fake=fake, mode="serve", env={"DESCAN_DRIVE_IDS": " newTest  newClean newScan "})
    assert r.returncode == 0, r.out
    assert fake.called_ids() == ["newTest", "newClean", "newScan"]
    assert_unpacked(data)


def test_cached_zips_are_used_bad_ones_moved_aside(tmp_path, fake):
    data, cache = tmp_path / "data", tmp_path / "cache"
    cache.mkdir()
    build_zip(cache / "train_clean.zip", "train_clean.zip")  # complete: kept as it is
    hand_made = (cache / "train_clean.zip").read_bytes()
    (cache / "train_scan.zip").write_text("<html>an old quota page saved as a zip</html>")
    # test_scan.zip is absent: downloaded

    env = {"DESCAN_ZIP_CACHE": str(cache)}
    r = run_script(data, fake=fake, mode="serve", env=env)
    assert r.returncode == 0, r.out
    assert "train_clean.zip: complete zip already in the cache" in r.stdout
    assert "moved it aside to " + str(cache / "train_scan.zip.bad") in r.stdout
    # which id is train_clean.zip is not known until it is downloaded: that copy is discarded
    assert fake.called_ids() == DEFAULT_IDS
    assert "new copy is discarded" in r.stdout
    assert files_under(cache) == [".drive_ids", "test_scan.zip", "train_clean.zip", "train_scan.zip",
                                  "train_scan.zip.bad"]
    assert (cache / "train_clean.zip").read_bytes() == hand_made
    assert (cache / "train_scan.zip.bad").read_text().startswith("<html>")
    assert_unpacked(data)
    assert not (data / "zips").exists()


def test_data_failing_the_check_is_unpacked_again(tmp_path, fake):
    data, cache = tmp_path / "data", tmp_path / "cache"
    cache.mkdir()
    for name in ZIPS:
        build_zip(cache / name, name)
    unpack_by_hand(data)
    (data / "train/clean/Mag.00001.01.png").write_bytes(b"not an image")
    r = run_script(data, fake=fake, mode="refuse", env={"DESCAN_ZIP_CACHE": str(cache)})
    assert r.returncode == 0, r.out
    assert "does not pass the check" in r.stdout and fake.calls() == []
    assert_unpacked(data)
    assert (data / "train/clean/Mag.00001.01.png").read_bytes() == CONTENT["train_clean.zip"][1][1]


def test_data_in_place_on_a_read_only_folder(tmp_path, fake):
    """Unpacked images and nothing else, read-only: checked and accepted, nothing written (the
    snapshot also catches writes that root could make despite the permissions)."""
    data = tmp_path / "ro data"
    unpack_by_hand(data)
    before = snapshot(data)
    subprocess.run(["chmod", "-R", "a-w", str(data)], check=True)
    try:
        r = run_script(data, fake=fake, mode="refuse")
        assert r.returncode == 0, r.out
        assert "already in place" in r.stdout and "3 training pairs, 1 test scans" in r.stdout
        assert fake.calls() == []
        assert snapshot(data) == before
        assert not (data / "zips").exists() and not (data / ".unpacked").exists()
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(data)], check=True)


def test_the_notebooks_get_the_data_in_their_own_python(tmp_path, fake, monkeypatch):
    """What the script runs, called as a function (as data.ensure_data does): no bash, no other
    Python; the downloader and the retries are arguments."""
    from descan import data as data_module
    for name, value in dict(FAKE_LOG=fake.log, FAKE_MAP=fake.map, FAKE_SRC=fake.src).items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("FAKE_MODE", "serve")
    folder = tmp_path / "data"
    summary = data_module.get_competition_data(folder, tmp_path / "ws", downloader=fake.path,
                                               tries=1, wait=0)
    assert summary["train_pairs"] == 3 and summary["test_scans"] == 1
    assert fake.called_ids() == DEFAULT_IDS
    assert_unpacked(folder)


@pytest.mark.parametrize("broken", ["everywhere", "after_startup"])
def test_a_python_without_opencv_never_costs_a_cached_zip(tmp_path, fake, broken):
    """A python that cannot import cv2: the cached zip is kept as it is, and the message says why.
    'after_startup': the python runs `-c` and `-m descan -h` but fails every other command, so the
    check of the cached zip itself fails without being the zip's fault."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    cache.mkdir()
    build_zip(cache / "train_clean.zip", "train_clean.zip")
    zipped = (cache / "train_clean.zip").read_bytes()
    wrapper = tmp_path / "python-without-cv2"
    passthrough = "" if broken == "everywhere" else (
        f'case "$*" in "-c "*|"-m descan -h") exec "{sys.executable}" "$@" ;; esac\n')
    wrapper.write_text("#!/usr/bin/env bash\n" + passthrough +
                       "echo \"ModuleNotFoundError: No module named 'cv2'\" >&2\nexit 1\n")
    wrapper.chmod(0o755)
    r = run_script(data, fake=fake, mode="serve", env={"DESCAN_ZIP_CACHE": str(cache), "PYTHON": str(wrapper)})
    assert r.returncode != 0
    assert "No module named 'cv2'" in r.stderr
    assert files_under(cache) == ["train_clean.zip"]
    assert (cache / "train_clean.zip").read_bytes() == zipped
    assert fake.calls() == []
    assert not (data / "train").exists()


# ---------------------------------------------------------------- the real gdown, no network

def _network_reachable():
    try:
        socket.create_connection(("drive.google.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_network_reachable(), reason="the network is reachable; this test is for offline machines")
@pytest.mark.parametrize("downloader", [None, "gdown"])
def test_no_network_fails_fast_with_help(tmp_path, downloader):
    """None: the script's own connectivity check; 'gdown': the real gdown's failure, classified."""
    options = ["--downloader", downloader] if downloader else []
    # the default wait between attempts: a fast failure must not depend on it
    r = run_script(tmp_path / "data", *options, wait=None, timeout=60)
    assert r.returncode != 0
    assert r.elapsed < 30
    assert "no network connection" in r.stderr
    assert "--demo" in r.stderr and str(tmp_path / "data" / "zips") in r.stderr
    assert files_under(tmp_path / "data" / "zips") == []


# ---------------------------------------------------------------- completeness, by the zips' lists

TEST_SCANS = [f"Wire.{i:05d}.01" for i in range(1, 7)]


@pytest.fixture
def zipped(tmp_path, monkeypatch):
    """A zip cache with the three zips (a test zip of six scans), and ensure_data's own Python."""
    from descan import data as data_module
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ZIPS[:2]:
        build_zip(cache / name, name)
    with zipfile.ZipFile(cache / "test_scan.zip", "w") as zf:
        for i, name in enumerate(TEST_SCANS):
            zf.writestr(f"test_scan/{name}.tif", tif(img(20 * i)))
    monkeypatch.setenv("DESCAN_ZIP_CACHE", str(cache))
    return lambda: data_module.ensure_data(tmp_path / "data", tmp_path / "ws")


def test_a_test_set_unpacked_in_part_is_completed_from_its_zip(tmp_path, zipped):
    from descan import data as data_module
    assert zipped()["test_scans"] == 6
    for name in TEST_SCANS[3:]:  # an unpack cut short (a kill, a full disk), stamps or none
        (tmp_path / f"data/test/scan/{name}.tif").unlink()
    assert zipped()["test_scans"] == 6
    scans = data_module.test_scans(tmp_path / "data", tmp_path / "ws")
    assert [p.stem for p in scans] == TEST_SCANS and all(p.is_file() for p in scans)


def test_a_test_scan_missing_with_no_zip_stops_the_submission(tmp_path, zipped, monkeypatch):
    """Data placed by hand: the test list is recorded at the first check and rechecked."""
    from descan import data as data_module
    from descan import submit
    zipped()
    monkeypatch.setenv("DESCAN_ZIP_CACHE", str(tmp_path / "no zips"))
    data, ws = tmp_path / "data", tmp_path / "ws2"
    assert data_module.ensure_data(data, ws)["test_scans"] == 6
    (data / f"test/scan/{TEST_SCANS[4]}.tif").unlink()
    before = snapshot(data)
    with pytest.raises(helpers.DataError, match=rf"lacks 1 of the 6 test scans .*{TEST_SCANS[4]}"):
        data_module.ensure_data(data, ws)
    with pytest.raises(helpers.DataError, match=rf"lacks 1 of the 6 .*{TEST_SCANS[4]}.*Put them"):
        data_module.test_scans(data, ws)
    assert snapshot(data) == before and not (tmp_path / "no zips").exists()
    (data / "test/scan/Other.00001.01.tif").write_bytes(tif(img(1)))  # one it never had
    (data / f"test/scan/{TEST_SCANS[4]}.tif").write_bytes(tif(img(1)))
    with pytest.raises(helpers.DataError, match=r"1 images that are not in .*Other\.00001\.01"):
        data_module.test_scans(data, ws)
    with pytest.raises(ValueError, match=r"2 test images have no row"):  # and the CSV's own check
        submit.write_submission([(n, 1.0) for n in TEST_SCANS[:4]], tmp_path / "s.csv", TEST_SCANS)


def test_disk_full_while_unpacking_says_what_is_needed_and_deletes_nothing(tmp_path, zipped,
                                                                            monkeypatch):
    import errno
    from descan import zips
    opened, real_open = [], open

    def open_until_full(path, mode="r", *args, **kwargs):
        if "w" in mode and "Wire" in str(path):
            opened.append(path)
            if len(opened) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(zips, "open", open_until_full, raising=False)
    with pytest.raises(helpers.DataError) as e:
        zipped()
    message = str(e.value)
    assert "disk full while unpacking test_scan.zip" in message and " free." in message
    assert re.search(r"[\d,.]+ (MB|bytes) more are needed", message), message
    assert not re.search(r"delete|remove", message, re.I), "the advice removes nothing"
    assert files_under(tmp_path / "data/test/scan") == [f"{n}.tif" for n in TEST_SCANS[:2]]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(ZIPS)
    monkeypatch.undo()
    monkeypatch.setenv("DESCAN_ZIP_CACHE", str(tmp_path / "cache"))
    assert zipped()["test_scans"] == 6  # space freed, run again: completed


def test_images_one_folder_too_deep_are_named_and_nothing_is_written(tmp_path, fake):
    data = tmp_path / "data"
    unpack_by_hand(data)
    deep = data / "train/clean/train_clean"
    deep.mkdir()
    for p in (data / "train/clean").glob("*.png"):
        p.rename(deep / p.name)
    before = snapshot(data)
    r = run_script(data, fake=fake, mode="refuse")
    assert r.returncode == 1 and fake.calls() == [], r.out
    assert "train/clean/train_clean/ (3 images)" in r.stderr and "not where it is looked" in r.stderr
    assert "Google Drive" not in r.out and "Traceback" not in r.out
    assert snapshot(data) == before
