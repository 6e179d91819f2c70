"""The command line: ``python -m descan COMMAND`` (``-h`` lists them).

torch is imported only by the subcommands that need it (none of those used by data_download.sh).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from helpers import DEMO_MARKER, ROOT, SPLITS, DataError, data_dir, data_label, workspace_dir
from descan.files import atomic_path


def _demo(args) -> None:
    """Generate the demo set unless the same one is already there and checked."""
    from descan.data import check_dataset, has_data
    from descan.demo import DEMO_DEFAULTS, make_demo_dataset, settings_line
    data = Path(args.data_dir)
    s = {**DEMO_DEFAULTS, "train_pages": args.pages, "unseen_pages": args.unseen_pages,
         "test_pages": args.test_pages, "crop": args.size}
    marker = data / DEMO_MARKER
    if any((data / sub).exists() for sub in ("train", "test")) and not marker.exists():
        raise DataError(f"{data} already holds data without a {DEMO_MARKER} marker, so it looks like the real "
                        "competition data. Demo data is never written there. Give another folder: "
                        "bash data_download.sh --demo ./data/demo")
    if marker.exists() and settings_line(s) in marker.read_text().splitlines() and has_data(data):
        try:
            r = check_dataset(data, show_progress=False)
            print(f"Demo data already in {data} ({settings_line(s)}; {r['train_pairs']} training pairs, "
                  f"{r['test_scans']} test scans); nothing to do.")
            return
        except DataError:
            pass
    if marker.exists():
        print(f"Replacing the older demo data in {data} (other settings, or incomplete).")
        for sub in ("train", "test"):
            shutil.rmtree(data / sub, ignore_errors=True)
    t0 = time.time()
    print(f"Generating SYNTHETIC DEMO DATA in {data} ({settings_line(s)}) ...", flush=True)
    r = make_demo_dataset(data, **s)
    check_dataset(data, show_progress=False, force=True)
    print(f"DEMO DATA (synthetic): {r['train_pairs']} pairs ({r['unseen_pairs']} of them from unseen scanners, "
          f"for validation only) and {r['test_scans']} test scans of "
          f"{s['crop']}x{s['crop']} in {r['root']}, checked ({time.time() - t0:.1f} s). "
          "It is NOT the competition data.")


def _demo_parser(sub) -> None:
    """The `demo` subcommand and its options; the defaults are descan.demo.DEMO_DEFAULTS."""
    from descan.demo import DEMO_DEFAULTS

    def at_least(low):
        def number(text):
            if not text.isdigit() or int(text) < low:
                raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, not {text!r}")
            return int(text)
        return number
    p = sub.add_parser("demo", help="generate the synthetic demo dataset",
                       description="Generate the synthetic demo set unless the same one is there.")
    p.add_argument("data_dir", help="the folder to make it in")
    p.add_argument("--pages", type=at_least(2), default=DEMO_DEFAULTS["train_pages"],
                   help="training pages, from the seen scanners (default %(default)s)")
    p.add_argument("--unseen-pages", type=at_least(0), default=DEMO_DEFAULTS["unseen_pages"],
                   help="validation pages from the unseen scanners (default %(default)s)")
    p.add_argument("--test-pages", type=at_least(1), default=DEMO_DEFAULTS["test_pages"],
                   help="test pages from the seen scanners, and as many from the test-only "
                   "scanners (default %(default)s)")
    p.add_argument("--size", type=at_least(16), default=DEMO_DEFAULTS["crop"],
                   help="side of the demo images in pixels (default %(default)s)")


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
                print(f"no manifest in {workspace}: making the page-grouped split as notebook 01 does")
                data.write_manifest(data.make_manifest(folder), workspace)
            name = args.run_name or os.environ.get("DESCAN_RUN_NAME") or recipes.RUN_NAMES[args.recipe]
            result = launch.train(run, folder, workspace, name, device, args.processes)
    except Exception as e:
        if distributed.peer_failed(e):  # the process that failed has printed why
            print(f"process {distributed.rank()}: stopped because another process of this run failed "
                  "(its error is above)", file=sys.stderr)
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
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", extra_arguments=["--log-level=ERROR"],
                                resources={"metadata": {"path": str(path.parent)}})
        target = out_dir / path.name
        try:
            client.execute()
        except CellExecutionError as e:  # the message first; the whole traceback is in the saved copy
            raise DataError(f"{path.name} stopped: {e.ename}: {e.evalue}\n(the executed copy with the whole "
                            f"traceback: {target})") from None
        finally:
            with atomic_path(target) as tmp:
                nbformat.write(nb, str(tmp))
        print(f"  ok in {time.time() - t0:.0f} s -> {target}", flush=True)
        done.append(target)
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m descan",
                                     description="The Descanning starter kit's command line.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p = sub.add_parser("score", help="competition score of restored images against clean ones")
    p.add_argument("pred_dir"), p.add_argument("clean_dir")
    _demo_parser(sub)
    p = sub.add_parser("kind", help="print 'demo' (the demo marker is there), 'real' (data without it) or 'none'")
    p.add_argument("data_dir")
    p = sub.add_parser("check-zip", help="exit 0 when a file is a complete zip")
    p.add_argument("zip")
    p = sub.add_parser("identify-zip", help="print which competition zip a download is (by name, else contents)")
    p.add_argument("zip"), p.add_argument("--drive-name", help="the file name Google Drive gave it")
    p = sub.add_parser("check-zips", help="check that three zips hold what their names say")
    p.add_argument("cache", help="folder holding train_clean.zip, train_scan.zip and test_scan.zip")
    p = sub.add_parser("unpack", help="unpack the images of a zip flat into a folder")
    p.add_argument("zip"), p.add_argument("dest")
    p = sub.add_parser("check", help="check pairing, readability and sizes of a data folder (once)")
    p.add_argument("data_dir"), p.add_argument("--force", action="store_true", help="check again")
    p = sub.add_parser("train", help="train notebook 03's (dncnn) or 04's (attention) recipe",
                       description="Train a notebook's recipe; settings as key=value, e.g. lr=3e-4 epochs=20")
    p.add_argument("--recipe", choices=("dncnn", "attention"))
    p.add_argument("settings", nargs="*", help="key=value changes to the notebook's settings")
    p.add_argument("--run-dir", help="train the recipe saved in this run folder (torchrun's processes)")
    p.add_argument("--data", help="data folder (default: DESCAN_DATA's rule)")
    p.add_argument("--workspace", help="workspace (default: DESCAN_WORKSPACE's rule)")
    p.add_argument("--run-name", help="run folder under WORKSPACE/runs (default: DESCAN_RUN_NAME or the recipe)")
    p.add_argument("--processes", type=int, default=1, help="N > 1: torchrun with N processes")
    p = sub.add_parser("run-notebooks", help="execute the notebooks in order, saving executed copies")
    p.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    p.add_argument("--cell-timeout", type=int, default=1800, help="seconds a cell may run (0: no limit, for "
                   "full training runs); default 1800")
    args = parser.parse_args(argv)
    if args.cmd == "train" and not (args.recipe or args.run_dir):
        parser.error("train needs --recipe dncnn|attention (or --run-dir)")
    if args.cmd in ("train", "run-notebooks"):
        from descan.notebook import hosted_defaults
        hosted_defaults()  # on Kaggle: the attached data in place, the workspace in /kaggle/working
    try:
        if args.cmd == "score":
            from descan.submit import score_folders
            r = score_folders(args.pred_dir, args.clean_dir)
            print(f"competition score (mean |mean Y diff|) over {r['n_images']} images: {r['score']:.4f}")
            for group in ("seen", "unseen"):
                if group in r:
                    print(f"  {group} scanners: competition score over {r[group][0]} images: {r[group][1]:.4f}")
        elif args.cmd == "demo":
            _demo(args)
        elif args.cmd == "kind":
            d = Path(args.data_dir)
            print("demo" if (d / DEMO_MARKER).exists() else
                  "real" if any((d / sub).is_dir() for sub in SPLITS.values()) else "none")
        elif args.cmd == "check-zip":
            from descan.zips import check_zip
            print(f"{args.zip}: complete zip, {check_zip(args.zip)} entries")
        elif args.cmd == "identify-zip":
            from descan.zips import identify_zip
            print(identify_zip(args.zip, args.drive_name))
        elif args.cmd == "check-zips":
            from descan.zips import ZIP_NAMES, check_zip_set
            counts = check_zip_set({n: Path(args.cache) / n for n in ZIP_NAMES})
            print("zips agree with their names: " + ", ".join(f"{k} {v} images" for k, v in counts.items()))
        elif args.cmd == "unpack":
            from descan.zips import unpack_zip
            r = unpack_zip(args.zip, args.dest)
            print(f"{args.zip} -> {args.dest}: {r['written']} written, {r['skipped']} already there")
        elif args.cmd == "check":
            _check(args)
        elif args.cmd == "train":
            _train(args)
        elif args.cmd == "run-notebooks":
            run_notebooks(args.notebooks, args.cell_timeout or None)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # what was interrupted has said so (training: last.pt saved)
        return 130
    return 0

