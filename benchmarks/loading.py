"""Training-data throughput: the slides' loading scheme against ours, side by side in one run.

    python benchmarks/loading.py [--pairs 32] [--size 512] [--batches 12]

Both read the same freshly generated demo pairs (512 x 512 PNGs, the competition's crop size)
from disk and deliver batches of 64 float crops of 128 x 128, as training consumes them.
- slides: every crop decodes its two whole images, no worker processes (num_workers=0);
- ours:   descan.crops.CropDataset, several crops per decoded pair, worker processes;
- ours + cache: the same with the decoded pairs kept in memory (used when they fit).
Prints crops per second of each and the ratios. Figures depend on the machine; run it on yours.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: E402
from descan import crops, demo  # noqa: E402


class SlidesDataset(torch.utils.data.Dataset):
    """The slides' scheme: decode both full images for every 128 x 128 crop."""

    def __init__(self, pairs, patch):
        self.pairs, self.patch = pairs, patch

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        clean = cv2.cvtColor(cv2.imread(str(self.pairs[i].clean)), cv2.COLOR_BGR2RGB)
        scan = cv2.cvtColor(cv2.imread(str(self.pairs[i].scan)), cv2.COLOR_BGR2RGB)
        h, w = clean.shape[:2]
        top, left = np.random.randint(0, h - self.patch + 1), np.random.randint(0, w - self.patch + 1)
        win = (slice(top, top + self.patch), slice(left, left + self.patch))
        to_tensor = lambda a: (torch.from_numpy(a[win].copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
        return to_tensor(clean), to_tensor(scan)


def measure(loader, batches, to_float):
    it = iter(loader)
    next(it)  # start-up (worker launch, first decode) is not throughput
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            clean, scan = next(it)
        except StopIteration:
            it = iter(loader)
            clean, scan = next(it)
        if to_float:
            clean, scan = clean.permute(0, 3, 1, 2).float() / 255, scan.permute(0, 3, 1, 2).float() / 255
        n += scan.shape[0]
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--crops-per-image", type=int, default=8)
    args = ap.parse_args()
    batch, patch = 64, 128
    workers = crops.default_workers("cuda")  # what training beside a GPU uses on this machine
    with tempfile.TemporaryDirectory() as tmp:
        print(f"generating {args.pairs} DEMO pairs of {args.size}x{args.size} in {tmp} ...", flush=True)
        demo.make_demo_dataset(tmp, train_pages=args.pairs // 2, test_pages=1, crops_per_page=2,
                               crop=args.size, show_progress=False)
        pairs = helpers.pair_files(Path(tmp) / "train/clean", Path(tmp) / "train/scan")
        np.random.seed(0)
        slides = torch.utils.data.DataLoader(SlidesDataset(pairs, patch), batch_size=batch, shuffle=True,
                                             num_workers=0, drop_last=False)
        k = args.crops_per_image
        items = (args.batches + 2) * batch // k

        def ours(cache):
            ds = crops.CropDataset(pairs, patch, k, items, seed=0, cache=cache)
            return crops.make_loader(ds, batch // k, workers, torch.device("cpu"))

        print(f"{os.cpu_count()} CPUs; batches of {batch} crops of {patch}x{patch}; {args.batches} batches each",
              flush=True)
        rows = [("slides: 2 full decodes per crop, num_workers=0", measure(slides, args.batches, False))]
        rows.append((f"ours: {k} crops per decoded pair, {workers} workers", measure(ours(None), args.batches, True)))
        cache = crops.build_cache(pairs, show_progress=False)
        rows.append((f"ours + decoded cache, {workers} workers", measure(ours(cache), args.batches, True)))
    base = rows[0][1]
    print(f"\n{'scheme':<52} {'crops/s':>9} {'vs slides':>10}")
    for name, rate in rows:
        print(f"{name:<52} {rate:>9.0f} {rate / base:>9.1f}x")


if __name__ == "__main__":
    main()
