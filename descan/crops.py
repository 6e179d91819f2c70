"""Training crops: several aligned crops per decoded pair, seeded per item, in worker processes."""
import os
from pathlib import Path

import numpy as np
import torch

from helpers import DataError, random_crop_pair, read_rgb
from descan.files import progress_bar


class CropDataset(torch.utils.data.Dataset):
    """Item j of an epoch: a pair (decoded, or from ``cache``) cut into ``crops_per_image`` aligned
    crops, flipped or rotated at random (``augment``), inputs changed by ``degrade``. Seeded by
    (seed, epoch, j): the crops do not depend on the workers; a resumed run sees the same ones."""

    def __init__(self, pairs, patch, crops_per_image, items_per_epoch, seed=0, augment=True,
                 cache=None, degrade=None):
        self.pairs, self.patch, self.crops_per_image = list(pairs), patch, crops_per_image
        self.items, self.seed, self.augment = items_per_epoch, seed, augment
        self.cache, self.degrade = cache or {}, degrade
        self.epoch, self.start, self._order = 0, 0, (None, None)

    def set_epoch(self, epoch: int, start: int = 0):
        """Serve epoch ``epoch`` from its item ``start`` on (a resumed run)."""
        self.epoch, self.start = epoch, start

    def __len__(self):
        return self.items - self.start

    def __getitem__(self, idx):
        j, n = idx + self.start, len(self.pairs)
        key = (self.epoch, j // n)  # the pairs in a new order on each pass, drawn once per pass
        if self._order[0] != key:
            self._order = key, np.random.default_rng([self.seed, *key, 7]).permutation(n)
        i = int(self._order[1][j % n])
        pair = self.pairs[i]
        clean, scan = self.cache.get(i) or (read_rgb(pair.clean), read_rgb(pair.scan))
        if clean.shape != scan.shape:
            raise DataError(f"pair {pair.name}: clean {clean.shape[:2]} and scan {scan.shape[:2]} "
                            "differ in size; run notebook 01's check again")
        rng = np.random.default_rng([self.seed, self.epoch, j])
        rng_degrade = np.random.default_rng([self.seed, self.epoch, j, 1])  # crops stay the same
        cleans, scans = [], []
        for _ in range(self.crops_per_image):
            c, s = random_crop_pair(clean, scan, self.patch, rng)
            if self.augment:  # one of the 8 flips and rotations
                k = int(rng.integers(0, 8))
                c, s = (np.ascontiguousarray(np.rot90(x, k)[:, ::-1] if k >= 4 else np.rot90(x, k))
                        for x in (c, s))
            cleans.append(c)
            scans.append(s if self.degrade is None else self.degrade(c, s, rng_degrade))
        return torch.from_numpy(np.stack(cleans)), torch.from_numpy(np.stack(scans))


def collate(items):
    """Items of several pairs -> one batch (cleans, scans) of all their crops."""
    return torch.cat([c for c, _ in items]), torch.cat([s for _, s in items])


def available_memory() -> int:
    """Bytes of memory available (Linux's MemAvailable: Colab, Kaggle), 0 where unknown."""
    meminfo = Path("/proc/meminfo")
    lines = meminfo.read_text().splitlines() if meminfo.exists() else []
    return next((int(n.split()[1]) * 1024 for n in lines if n.startswith("MemAvailable")), 0)


def check_patch(pairs, patch: int, batch_size: int) -> None:
    """DataError for a patch larger than the training images (its crops would be mostly mirrored
    padding), or a batch whose crops alone would take half the memory."""
    h, w = read_rgb(pairs[0].clean).shape[:2]
    todo = "Lower it in the notebook's settings cell (or patch=N on the command line)."
    if patch > max(h, w):
        raise DataError(f"patch={patch} is larger than the training images ({pairs[0].name} is "
                        f"{w}x{h}): its crops would be mostly mirrored padding. {todo}")
    need, available = batch_size * patch * patch * 3 * 4 * 2, available_memory()
    if available and need > available / 2:
        raise DataError(f"batch_size={batch_size} crops of patch={patch} need "
                        f"{need / 2 ** 30:.1f} GiB for the batch alone; "
                        f"{available / 2 ** 30:.1f} GiB are available. {todo}")


def build_cache(pairs, max_fraction=0.4, show_progress=True):
    """{i: (clean, scan)}: every pair decoded; None if they need over ``max_fraction`` of RAM."""
    h, w = read_rgb(pairs[0].clean).shape[:2]
    need = len(pairs) * h * w * 3 * 2
    if need > max_fraction * available_memory():
        print(f"decoded cache skipped: {need / 2**30:.1f} GiB would not fit; decoding per item")
        return None
    items = progress_bar(list(enumerate(pairs)), "decoding into memory", enabled=show_progress)
    return {i: (read_rgb(p.clean), read_rgb(p.scan)) for i, p in items}


def default_workers(device, processes: int = 1) -> int:
    """Loader processes: none on a CPU (the model needs every core); beside a GPU one per core, at
    most 4, shared among a machine's ``processes`` training processes (torchrun), 1 at least."""
    if torch.device(device).type == "cpu":
        return 0
    return max(1, min(4, (os.cpu_count() or 1) // max(1, processes)))


def make_loader(dataset, pairs_per_batch, workers, device):
    """Batches of ``pairs_per_batch`` items (pairs_per_batch x crops_per_image crops), in order."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=pairs_per_batch, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", drop_last=True, prefetch_factor=4 if workers else None)
