"""Tests of data_download.sh: demo mode, and real mode with a fake downloader for every failure.

DESCAN_GDOWN points the script at a small fake `gdown` written into tmp_path, so quota pages,
HTML pages, truncated zips and good zips are all tested without a network. One test runs the
real gdown and expects a fast, helpful failure; it is skipped when the network is reachable.
"""
import os
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data_download.sh"
IDS = {"train_clean.zip": "16zAeGDmqbAvn7Iy8V-mByIKx6rG-wgLD",
       "train_scan.zip": "1cqxSVFxfonx5qKVldfBy0q7uYdNZY8ea",
       "test_scan.zip": "1zmfrXzT9InLg7NIQ-hXekZIyX9aGNNqj"}

FAKE_GDOWN = r"""#!/usr/bin/env bash
# A stand-in for gdown: records its arguments, then behaves as MODE says.
if [ "${1:-}" = "--help" ]; then echo "  --timeout SECONDS  give up"; exit 0; fi
echo "$*" >> "$FAKE_LOG"
out=""; id=""
while [ $# -gt 0 ]; do
  case "$1" in
    -O) out="$2"; shift ;;
    --timeout) shift ;;
    -*) ;;
    *) id="$1" ;;
  esac
  shift
done
case "$FAKE_MODE" in
  quota)
    echo "Failed to retrieve file url:" >&2
    echo "    Too many users have viewed or downloaded this file recently. Please try accessing" >&2
    echo "    the file again later." >&2
    exit 1 ;;
  html)
    printf '<!DOCTYPE html><html><head><title>Google Drive</title></head><body>sign in</body></html>' > "$out"
    exit 0 ;;
  truncated)
    head -c 150 "$FAKE_SRC/$id.zip" > "$out"
    exit 0 ;;
  serve)
    cp "$FAKE_SRC/$id.zip" "$out"
    exit 0 ;;
  *)
    echo "fake gdown: must not be called" >&2
    exit 3 ;;
esac
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


def build_zip(path, name):
    with zipfile.ZipFile(path, "w") as zf:
        for arc, data in CONTENT[name]:
            if data is None:
                zf.writestr(zipfile.ZipInfo(arc), b"")
            else:
                zf.writestr(arc, data)
    return path


def files_under(folder):
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else []


@pytest.fixture
def fake(tmp_path):
    """A fake downloader serving good zips by id from tmp_path/src; returns a helper object."""
    src = tmp_path / "src"
    src.mkdir()
    for name, file_id in IDS.items():
        build_zip(src / f"{file_id}.zip", name)
    script = tmp_path / "fake_gdown"
    script.write_text(FAKE_GDOWN)
    script.chmod(0o755)

    class Fake:
        log = tmp_path / "fake_calls.log"
        path = script

        def calls(self):
            return self.log.read_text().splitlines() if self.log.exists() else []

        def called_ids(self):
            return [line.split()[-1] for line in self.calls()]

    f = Fake()
    f.src = src
    return f


def run_script(*args, env=None, fake=None, mode="refuse", timeout=120):
    full = {k: v for k, v in os.environ.items() if not k.startswith("DESCAN_")}
    full.update({"DESCAN_RETRY_WAIT": "0", "DESCAN_DEMO_PAGES": "2", "DESCAN_DEMO_TEST_PAGES": "1",
                 "DESCAN_DEMO_SIZE": "64"})
    if fake is not None:
        full.update({"DESCAN_GDOWN": str(fake.path), "FAKE_LOG": str(fake.log),
                     "FAKE_SRC": str(fake.src), "FAKE_MODE": mode})
    full.update(env or {})
    t0 = time.time()
    r = subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                       env=full, timeout=timeout, cwd="/")
    r.elapsed = time.time() - t0
    r.out = r.stdout + r.stderr
    return r


# ---------------------------------------------------------------- usage and demo mode

def test_help_and_bad_arguments():
    r = run_script("--help")
    assert r.returncode == 0 and "Usage" in r.stdout and "--demo" in r.stdout
    assert run_script("-h").stdout == r.stdout
    r = run_script("--bogus")
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr
    r = run_script("a", "b")
    assert r.returncode == 2 and "only one DATA_DIR" in r.stderr


def test_demo_mode_makes_the_layout_and_is_idempotent(tmp_path):
    data = tmp_path / "my demo"  # a space in the path must not break anything
    r = run_script("--demo", data)
    assert r.returncode == 0, r.out
    files = files_under(data)
    assert "DEMO_DATA.txt" in files
    assert len([f for f in files if f.startswith("train/clean/") and f.endswith(".png")]) == 4
    assert len([f for f in files if f.startswith("train/scan/") and f.endswith(".png")]) == 4
    assert len([f for f in files if f.startswith("test/scan/") and f.endswith(".tif")]) == 2
    assert "4 training pairs, 2 test scans" in r.stdout
    before = {f: (data / f).stat().st_mtime_ns for f in files}

    r = run_script("--demo", env={"DESCAN_DATA": str(data)})  # DESCAN_DATA names the same folder
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert {f: (data / f).stat().st_mtime_ns for f in files_under(data)} == before

    # other settings: the old demo files are replaced, not mixed with the new ones
    r = run_script("--demo", data, env={"DESCAN_DEMO_SIZE": "48"})
    assert r.returncode == 0, r.out
    assert len(files_under(data)) == 11
    assert cv2.imread(str(data / "train/clean/DemoMaking.00000.01.png")).shape == (48, 48, 3)


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
    assert fake.called_ids() == [IDS["train_clean.zip"]]
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
    r = run_script(data, fake=fake, mode="truncated", env={"DESCAN_DOWNLOAD_TRIES": "2"})
    assert r.returncode != 0
    assert "after 2 attempts" in r.stderr
    assert fake.called_ids() == [IDS["train_clean.zip"]] * 2
    assert files_under(data / "zips") == []
    assert not (data / "train").exists()


def test_missing_downloader(tmp_path):
    r = run_script(tmp_path / "data", env={"DESCAN_GDOWN": str(tmp_path / "no-such-gdown")})
    assert r.returncode != 0 and "not installed" in r.stderr and "pip install gdown" in r.stderr


# ---------------------------------------------------------------- real mode, success

def test_cached_zips_are_used_bad_ones_replaced_and_rerun_is_idempotent(tmp_path, fake):
    data, cache = tmp_path / "data", tmp_path / "cache"
    cache.mkdir()
    build_zip(cache / "train_clean.zip", "train_clean.zip")  # complete: must not be downloaded
    (cache / "train_scan.zip").write_text("<html>an old quota page saved as a zip</html>")
    # test_scan.zip is absent: downloaded

    env = {"DESCAN_ZIP_CACHE": str(cache)}
    r = run_script(data, fake=fake, mode="serve", env=env)
    assert r.returncode == 0, r.out
    assert fake.called_ids() == [IDS["train_scan.zip"], IDS["test_scan.zip"]]
    assert "train_clean.zip: complete zip already in the cache" in r.stdout
    assert files_under(cache) == ["test_scan.zip", "train_clean.zip", "train_scan.zip"]
    for name in IDS:
        assert (cache / name).read_bytes() == (fake.src / f"{IDS[name]}.zip").read_bytes()
    for sub, names in UNPACKED.items():
        assert files_under(data / sub) == names
    assert (data / "train/scan/Mag.00001.02.png").read_bytes() == CONTENT["train_scan.zip"][1][1]
    assert "3 training pairs, 1 test scans" in r.stdout
    assert not (data / "DEMO_DATA.txt").exists()

    # re-run: everything is skipped; the downloader is not called again
    before = {f: (data / f).stat().st_mtime_ns for f in files_under(data)}
    r = run_script(data, fake=fake, mode="refuse", env=env)
    assert r.returncode == 0, r.out
    assert len(fake.calls()) == 2
    assert r.stdout.count("already unpacked") == 3
    assert {f: (data / f).stat().st_mtime_ns for f in files_under(data)} == before


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
    env = {"DESCAN_RETRY_WAIT": "10"}  # the default wait: a fast failure must not depend on it
    if downloader:
        env["DESCAN_GDOWN"] = downloader
    r = run_script(tmp_path / "data", env=env, timeout=60)
    assert r.returncode != 0
    assert r.elapsed < 30
    assert "no network connection" in r.stderr
    assert "--demo" in r.stderr and str(tmp_path / "data" / "zips") in r.stderr
    assert files_under(tmp_path / "data" / "zips") == []
