"""The command line: ``python -m descan COMMAND`` (``-h`` lists them). torch is imported only by
the subcommands that need it (none that data_download.sh uses)."""
import argparse
import contextlib
import importlib.util
import os
import sys
import time
from pathlib import Path

from helpers import ROOT, DataError, data_dir, env_path, smoke_mode, workspace_dir
from descan.files import WRITE_ERRORS, atomic_path
from descan.notebook import ensure_split, hosted_defaults


def _whole(minimum):
    """An argparse type: a whole number of at least ``minimum``."""
    def parse(text):
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum}")
        return int(text)
    return parse


def _download(args) -> None:
    """Get the competition data (or the demo set with --demo), as data_download.sh does."""
    from descan import data, download
    default = ROOT / "data" / ("demo" if args.demo else "real")
    with contextlib.suppress(ModuleNotFoundError):  # Colab, also in its terminal
        if not args.demo and Path("/content").is_dir() and importlib.util.find_spec("google.colab"):
            default = Path("/content/data")
    folder = Path(args.data_dir[0]) if args.data_dir else env_path("DESCAN_DATA") or default
    if args.demo:
        demo = {k: vars(args)[k] for k in ("train_pages", "unseen_pages", "test_pages", "crop")}
        fresh = download.get_demo(folder, **demo)
        r = data.check_dataset(folder, workspace_dir(folder), show_progress=False, force=fresh)
    else:
        options = {k: vars(args)[k] for k in ("tries", "wait", "timeout", "downloader")}
        r = data.get_competition_data(folder, workspace_dir(folder), **options)
    print(f"{data.data_label(folder)} in {folder}: {r['train_pairs']} training pairs, "
          f"{r['test_scans']} test scans (checked {r['checked']})")


def _train(args) -> None:
    """Train notebook 03's or 04's recipe with key=value changes, or (torchrun's) --run-dir's."""
    import torch
    from descan import checkpoints, data, distributed, launch, recipes
    device = distributed.init(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    folder = Path(args.data).resolve() if args.data else data_dir()
    workspace = Path(args.workspace).resolve() if args.workspace else workspace_dir(folder)
    try:
        if args.run_dir:
            result = launch.train_saved(Path(args.run_dir), folder, workspace, device)
        else:
            run = recipes.from_notebook(args.recipe, device, smoke_mode(), args.settings)
            name = os.environ.get("DESCAN_RUN_NAME") or recipes.RUN_NAMES[args.recipe]
            checkpoints.run_dir(workspace, name)  # a bad run name or budget stops before the data
            recipes.with_env(run["config"])
            data.ensure_data(folder, workspace)
            ensure_split(folder, workspace)
            result = launch.train(run, folder, workspace, name, device, args.processes)
    except Exception as e:
        if not distributed.peer_failed(e):
            raise
        print(f"process {distributed.rank()}: stopped because another process of this run "
              "failed (its error is above)", file=sys.stderr)
        raise SystemExit(1) from None
    if result:
        print(f"best validation score {result['best_score']:.4f} after {result['steps']} steps: "
              f"{result['best_path']}")
    distributed.teardown()


def run_notebooks(paths=None, timeout=1800) -> None:
    """Execute notebooks in order here; save the executed copies in <workspace>/executed/."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    for path in map(Path, paths or sorted((ROOT / "notebooks").glob("*.ipynb"))):
        t0, target = time.time(), workspace_dir(data_dir()) / "executed" / path.name
        print(f"running {path.name} ...", flush=True)
        nb = nbformat.read(path, as_version=4)
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3",
                           extra_arguments=["--log-level=ERROR"],
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        except CellExecutionError as e:  # the message first; the traceback is in the saved copy
            raise DataError(f"{path.name} stopped: {e.ename}: {e.evalue}\n(the executed copy "
                            f"with the whole traceback: {target})") from None
        finally:
            with atomic_path(target) as tmp:
                nbformat.write(nb, str(tmp))
        print(f"  ok in {time.time() - t0:.0f} s -> {target}", flush=True)


def _score(args) -> None:
    from descan.submit import score_restored
    r = score_restored(args.pred_dir, args.clean_dir)
    seen = r["images"] - r.get("unseen_images", 0)
    print(f"competition score (mean |mean Y diff|) over {seen} images: {r['score']:.4f}"
          + (" (the seen scanners')" if "unseen_score" in r else ""))
    if "unseen_score" in r:
        print(f"  unseen scanners: competition score over {r['unseen_images']} images: "
              f"{r['unseen_score']:.4f}")


def _parser() -> argparse.ArgumentParser:
    from descan.demo import DEMO_DEFAULTS as DEMO
    from descan.download import DRIVE_IDS, FALLBACK_TEST_ID
    parser = argparse.ArgumentParser(prog="python -m descan")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p = sub.add_parser("score", help="competition score of restored images against clean ones")
    p.add_argument("pred_dir")
    p.add_argument("clean_dir")
    p = sub.add_parser("download", help="get the competition data, or make the demo set",
                       description="Download, check and unpack the competition's zips (steps "
                       "already done are skipped), or make the synthetic demo set.",
                       epilog=f"DESCAN_DRIVE_IDS: the zips' Google Drive ids, in any order "
                       f"(default {' '.join(DRIVE_IDS)}, then {FALLBACK_TEST_ID} while "
                       "test_scan.zip is missing). DESCAN_ZIP_CACHE: where the zips are kept "
                       "(default DATA_DIR/zips).")
    p.add_argument("data_dir", nargs="*", metavar="DATA_DIR", help="where the images go (default "
                   "$DESCAN_DATA, else ./data/demo (--demo), /content/data (Colab), ./data/real)")
    p.add_argument("--demo", action="store_true", help="make the synthetic demo set instead")
    p.add_argument("--tries", type=_whole(1), default=3, help="attempts per zip (%(default)s)")
    p.add_argument("--retry-wait", dest="wait", type=_whole(0), default=10,
                   help="seconds between tries (%(default)s)")
    p.add_argument("--timeout", type=_whole(1), default=30,
                   help="seconds without data before giving up (%(default)s)")
    p.add_argument("--downloader", default="gdown", help="the download program (%(default)s)")
    p.add_argument("--pages", dest="train_pages", type=_whole(2), default=DEMO["train_pages"],
                   metavar="N", help="demo: training pages (%(default)s)")
    p.add_argument("--unseen-pages", type=_whole(0), default=DEMO["unseen_pages"],
                   help="demo: pages of the unseen scanners (%(default)s)")
    p.add_argument("--test-pages", type=_whole(1), default=DEMO["test_pages"],
                   help="demo: seen-scanner test pages (%(default)s)")
    p.add_argument("--size", dest="crop", type=_whole(16), default=DEMO["crop"], metavar="N",
                   help="demo: side of the crops in pixels (%(default)s)")
    p = sub.add_parser("train", help="train notebook 03's (dncnn) or 04's (attention) recipe")
    recipe = p.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--recipe", choices=("dncnn", "attention"))
    recipe.add_argument("--run-dir", help="train the recipe saved in this run folder (torchrun's)")
    p.add_argument("settings", nargs="*", help="key=value changes, e.g. lr=3e-4 epochs=20")
    p.add_argument("--data", help="data folder (default: DESCAN_DATA's rule)")
    p.add_argument("--workspace", help="workspace (default: DESCAN_WORKSPACE's rule)")
    p.add_argument("--processes", type=_whole(1), default=1, help="N > 1: torchrun, N processes")
    p = sub.add_parser("run-notebooks", help="execute the notebooks in order, saving copies")
    p.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    p.add_argument("--cell-timeout", type=int, default=1800,
                   help="seconds a cell may run (0: no limit); default 1800")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd == "download" and len(args.data_dir) > 1:
        parser.error(f"only one DATA_DIR may be given (got {' and '.join(args.data_dir)})")
    if args.cmd in ("train", "run-notebooks"):
        hosted_defaults()  # on Kaggle: the attached data in place, the workspace in working/
    commands = {"score": _score, "download": _download, "train": _train,
                "run-notebooks": lambda a: run_notebooks(a.notebooks, a.cell_timeout or None)}
    try:
        commands[args.cmd](args)
    except (DataError, ValueError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in WRITE_ERRORS:
            raise  # not a full disk or a read-only folder: the traceback shows where
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # what was interrupted has said so (training: last.pt saved)
        return 130
    return 0
