"""The command line: ``python -m descan COMMAND`` (``-h`` lists them).

torch is imported only by the subcommands that need it (none of those used by data_download.sh).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

from helpers import ROOT, DataError, data_dir, data_label, env_path, workspace_dir
from descan.files import atomic_path


DOWNLOAD_HELP = """Get the data into DATA_DIR: the competition's three zips from Google Drive,
unpacked (the default), or the synthetic demo set (--demo: no network, a few seconds).
bash data_download.sh [--demo] [DATA_DIR] [options] runs this.

Competition data already in DATA_DIR that passes the check is used as it is (nothing is written
there). Else the zips are taken from the zip cache, downloading with gdown only what it lacks;
each download is named by Drive's file name or its contents (train_clean.zip, train_scan.zip or
test_scan.zip), never by the order of the ids, and checked; then unpacked flat into
train/clean, train/scan and test/scan and checked. Steps already done are skipped; zips may be
put into the cache by hand under those names. Demo data (marked by DEMO_DATA.txt) is never
written into a folder of real data, nor real data into a demo folder.

DATA_DIR: default $DESCAN_DATA, else ./data/demo (--demo), /content/data (Colab), ./data/real.
Environment: DESCAN_ZIP_CACHE (default DATA_DIR/zips); DESCAN_WORKSPACE (where a passed check
is recorded); DESCAN_DRIVE_IDS: the zips' Google Drive ids, space-separated, any order; default
  {ids}
  and, while test_scan.zip is missing, {fallback}.
"""


def _whole(minimum):
    """An argparse type: a whole number of at least ``minimum``."""
    def parse(text):
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum}")
        return int(text)
    return parse


def _add_download_parser(sub) -> None:
    """``python -m descan download`` (what data_download.sh runs) and its options."""
    from descan.demo import DEMO_DEFAULTS as D
    from descan.download import DRIVE_IDS, FALLBACK_TEST_ID
    p = sub.add_parser("download", help="get the competition data, or make the demo set",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=DOWNLOAD_HELP.format(ids=" ".join(DRIVE_IDS),
                                                        fallback=FALLBACK_TEST_ID))
    p.add_argument("data_dir", nargs="*", metavar="DATA_DIR", help="where the images go")
    p.add_argument("--demo", action="store_true", help="make the synthetic demo set instead")
    for flag, default, least, what in (("--tries", 3, 1, "attempts per zip"),
                                       ("--retry-wait", 10, 0, "seconds between attempts"),
                                       ("--timeout", 30, 1, "seconds without data: give up")):
        p.add_argument(flag, type=_whole(least), default=default, metavar="N",
                       help=f"{what} (default {default})")
    p.add_argument("--downloader", metavar="PROGRAM", help="used as gdown is (default: gdown)")
    for flag, key, least, what in (("--pages", "train_pages", 2, "training pages"),
                                   ("--unseen-pages", "unseen_pages", 0, "unseen-scanner pages"),
                                   ("--test-pages", "test_pages", 1, "test pages per group"),
                                   ("--size", "crop", 16, "side of the crops in pixels")):
        p.add_argument(flag, dest=key, type=_whole(least), metavar="N",
                       help=f"demo: {what} (default {D[key]})")


def _in_colab() -> bool:
    """In Colab, also in a terminal or a subprocess there (which has not imported google.colab)."""
    try:
        return Path("/content").is_dir() and importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:
        return False


def _download(args) -> None:
    """Get the competition data (or the demo set with --demo), as data_download.sh does."""
    from descan import data, download
    if len(args.data_dir) > 1:
        print(f"error: only one DATA_DIR may be given (got {' and '.join(args.data_dir)})",
              file=sys.stderr)
        raise SystemExit(2)
    default = ROOT / "data" / ("demo" if args.demo else "real")
    if _in_colab() and not args.demo:
        default = Path("/content/data")
    folder = Path(args.data_dir[0]) if args.data_dir else env_path("DESCAN_DATA") or default
    if args.demo:
        keys = ("train_pages", "unseen_pages", "test_pages", "crop")
        settings = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
        fresh = download.get_demo(folder, **settings)
        r = data.check_dataset(folder, workspace_dir(folder), show_progress=False, force=fresh)
    else:
        r = data.get_competition_data(folder, workspace_dir(folder), tries=args.tries,
                                      wait=args.retry_wait, timeout=args.timeout,
                                      downloader=args.downloader)
    print(f"{data_label(folder)} in {folder}: {r['train_pairs']} training pairs, "
          f"{r['test_scans']} test scans (checked {r['checked']})")


def _check(args) -> None:
    from descan.data import check_dataset
    r = check_dataset(args.data_dir, force=args.force)
    print(f"{data_label(args.data_dir)} in {args.data_dir}: {r['train_pairs']} training pairs, "
          f"{r['test_scans']} test scans, all paired and readable; sizes {r['train_sizes']}, "
          f"test sizes {r['test_sizes']} (checked {r['checked']})")


def _train(args) -> None:
    """Train notebook 03's (``dncnn``) or 04's (``attention``) recipe with key=value changes, as the
    notebook does; ``--run-dir``: the recipe saved there (what torchrun's processes run)."""
    import torch
    from descan import data, distributed, launch, recipes
    from helpers import smoke_mode
    device = distributed.init(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    folder = Path(args.data).resolve() if args.data else data_dir()
    workspace = Path(args.workspace).resolve() if args.workspace else workspace_dir(folder)
    try:
        if args.run_dir:
            result = launch.train_saved(Path(args.run_dir), folder, workspace, device)
        else:
            run = recipes.from_notebook(args.recipe, device, smoke_mode(), args.settings)
            data.ensure_data(folder, workspace)
            if not (workspace / data.MANIFEST_FILE).is_file():  # what notebook 01 does, once
                print(f"no manifest in {workspace}: making the split as notebook 01 does")
                data.write_manifest(data.make_manifest(folder), workspace)
            default = os.environ.get("DESCAN_RUN_NAME") or recipes.RUN_NAMES[args.recipe]
            name = args.run_name or default
            result = launch.train(run, folder, workspace, name, device, args.processes)
    except Exception as e:
        if distributed.peer_failed(e):  # the process that failed has printed why
            print(f"process {distributed.rank()}: stopped because another process of this run "
                  "failed (its error is above)", file=sys.stderr)
            raise SystemExit(1) from None
        raise
    if result:
        print(f"best validation score {result['best_score']:.4f} after {result['steps']} steps: "
              f"{result['best_path']}")
    distributed.teardown()


def run_notebooks(paths=None, timeout=1800) -> list[Path]:
    """Execute notebooks in order in this Python environment; save executed copies in
    <workspace>/executed/ so their figures can be looked at."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    paths = [Path(p) for p in paths] if paths else sorted((ROOT / "notebooks").glob("*.ipynb"))
    out_dir = workspace_dir(data_dir()) / "executed"
    done = []
    for path in paths:
        t0 = time.time()
        print(f"running {path.name} ...", flush=True)
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                extra_arguments=["--log-level=ERROR"],
                                resources={"metadata": {"path": str(path.parent)}})
        target = out_dir / path.name
        try:
            client.execute()
        except CellExecutionError as e:  # the message first; the traceback is in the saved copy
            raise DataError(f"{path.name} stopped: {e.ename}: {e.evalue}\n(the executed copy with "
                            f"the whole traceback: {target})") from None
        finally:
            with atomic_path(target) as tmp:
                nbformat.write(nb, str(tmp))
        print(f"  ok in {time.time() - t0:.0f} s -> {target}", flush=True)
        done.append(target)
    return done


def _score(args) -> None:
    from descan.submit import score_restored
    r = score_restored(args.pred_dir, args.clean_dir)
    seen = r["images"] - r.get("unseen_images", 0)
    print(f"competition score (mean |mean Y diff|) over {seen} images: {r['score']:.4f}"
          + (" (the seen scanners')" if "unseen_score" in r else ""))
    if "unseen_score" in r:
        print(f"  unseen scanners: competition score over {r['unseen_images']} images: "
              f"{r['unseen_score']:.4f}")


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train notebook 03's (dncnn) or 04's (attention) recipe",
                       description="Train a notebook's recipe, with key=value changes to its "
                       "settings, e.g. lr=3e-4 epochs=20")
    p.add_argument("--recipe", choices=("dncnn", "attention"))
    p.add_argument("settings", nargs="*", help="key=value changes to the notebook's settings")
    p.add_argument("--run-dir",
                   help="train the recipe saved in this run folder (torchrun's processes)")
    p.add_argument("--data", help="data folder (default: DESCAN_DATA's rule)")
    p.add_argument("--workspace", help="workspace (default: DESCAN_WORKSPACE's rule)")
    p.add_argument("--run-name",
                   help="folder under WORKSPACE/runs (default: DESCAN_RUN_NAME, or the "
                   "notebook's)")
    p.add_argument("--processes", type=_whole(1), default=1,
                   help="N > 1: torchrun with N processes")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m descan",
                                     description="The Descanning starter kit's command line.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p = sub.add_parser("score", help="competition score of restored images against clean ones")
    p.add_argument("pred_dir")
    p.add_argument("clean_dir")
    _add_download_parser(sub)
    p = sub.add_parser("check", help="check pairing, readability and sizes of a data folder (once)")
    p.add_argument("data_dir")
    p.add_argument("--force", action="store_true", help="check again")
    _add_train_parser(sub)
    p = sub.add_parser("run-notebooks",
                       help="execute the notebooks in order, saving executed copies")
    p.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    p.add_argument("--cell-timeout", type=int, default=1800, help="seconds a cell may run (0: no "
                   "limit, for full training runs); default 1800")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd == "train" and not (args.recipe or args.run_dir):
        parser.error("train needs --recipe dncnn|attention (or --run-dir)")
    if args.cmd in ("train", "run-notebooks"):
        from descan.notebook import hosted_defaults
        hosted_defaults()  # on Kaggle: the attached data in place, the workspace in /kaggle/working
    commands = {"score": _score, "download": _download, "check": _check, "train": _train,
                "run-notebooks": lambda a: run_notebooks(a.notebooks, a.cell_timeout or None)}
    try:
        commands[args.cmd](args)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # what was interrupted has said so (training: last.pt saved)
        return 130
    return 0
