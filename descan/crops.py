"""Training crops: several aligned crops per decoded pair, seeded per item, in worker processes."""
from __future__ import annotations

import os

import numpy as np
import torch

from helpers import DataError, random_crop_pair, read_rgb
from descan.files import progress_bar


def dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations (k in 0..7) of an (H, W, C) array."""
    img = np.rot90(img, k % 4)
    return np.ascontiguousarray(img[:, ::-1] if k >= 4 else img)


def available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            return int(next(line for line in f if line.startswith("MemAvailable")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return 0


class CropDataset(torch.utils.data.Dataset):
    """Item j of epoch e: one pair, decoded once, cut into ``crops_per_image`` aligned crops.

    An epoch is ``items_per_epoch`` items; pairs are visited in a seeded permutation. Every random
    choice of item j comes from a generator seeded with (seed, epoch, j), so the data does not
    depend on worker count, and training resumed mid-epoch sees exactly the crops it would have.
    ``cache``: decoded pairs kept in memory (filled before workers start, shared with them).
    ``degrade``: optional callable (clean, scan, rng) -> new scan, applied to the input only.
    An item is (cleans, scans), two uint8 tensors of shape (crops_per_image, patch, patch, 3).
    """

    def __init__(self, pairs, patch, crops_per_image, items_per_epoch, seed=0, augment=True,
                 cache=None, degrade=None):
        self.pairs, self.patch, self.crops_per_image = list(pairs), patch, crops_per_image
        self.items, self.seed, self.augment = items_per_epoch, seed, augment
        self.cache, self.degrade = cache, degrade
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0):
        self.epoch, self.start = epoch, start

    def __len__(self):
        return self.items - self.start

    def load(self, i):
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        pair = self.pairs[i]
        clean, scan = read_rgb(pair.clean), read_rgb(pair.scan)
        if clean.shape != scan.shape:
            raise DataError(f"pair {pair.name}: clean {clean.shape[:2]} and scan {scan.shape[:2]} differ "
                            "in size; run notebook 01's check again")
        return clean, scan

    def pair_index(self, j):
        n = len(self.pairs)
        key = (self.epoch, j // n)
        if getattr(self, "_perm_key", None) != key:  # one permutation per pass over the pairs
            self._perm_key = key
            self._perm = np.random.default_rng([self.seed, self.epoch, j // n, 7]).permutation(n)
        return int(self._perm[j % n])

    def __getitem__(self, idx):
        j = idx + self.start
        clean, scan = self.load(self.pair_index(j))
        rng = np.random.default_rng([self.seed, self.epoch, j])
        rng_degrade = np.random.default_rng([self.seed, self.epoch, j, 1])  # crops stay the same with or without
        cleans, scans = [], []
        for _ in range(self.crops_per_image):
            c, s = random_crop_pair(clean, scan, self.patch, rng)
            if self.augment:
                k = int(rng.integers(0, 8))
                c, s = dihedral(c, k), dihedral(s, k)
            if self.degrade is not None:
                s = self.degrade(c, s, rng_degrade)
            cleans.append(c)
            scans.append(s)
        return torch.from_numpy(np.stack(cleans)), torch.from_numpy(np.stack(scans))


def collate(items):
    """Items of several pairs -> one batch (cleans, scans) of all their crops."""
    return torch.cat([c for c, _ in items]), torch.cat([s for _, s in items])


def build_cache(pairs, max_fraction=0.4, show_progress=True):
    """Decode every pair into memory when that takes under ``max_fraction`` of the free RAM."""
    if not pairs:
        return None
    h, w = read_rgb(pairs[0].clean).shape[:2]
    need = len(pairs) * h * w * 3 * 2
    if need > max_fraction * available_ram():
        print(f"decoded cache skipped: {need / 2**30:.1f} GiB would not fit in memory; decoding per item")
        return None
    return {i: (read_rgb(p.clean), read_rgb(p.scan))
            for i, p in progress_bar(list(enumerate(pairs)), "decoding into memory", enabled=show_progress)}


def default_workers(device, processes: int = 1) -> int:
    """Loader processes: none on a CPU (the model needs every core, and the decoded cache makes
    loading cheap); beside a GPU one per CPU core, at most 4, the cores shared out among the
    ``processes`` training processes of one machine (torchrun), at least 1 each."""
    if torch.device(device).type == "cpu":
        return 0
    return max(1, min(4, (os.cpu_count() or 1) // max(1, processes)))


def make_loader(dataset, pairs_per_batch, workers, device):
    """Batches of ``pairs_per_batch`` items (so pairs_per_batch x crops_per_image crops), in order."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=pairs_per_batch, shuffle=False, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", persistent_workers=False, drop_last=True,
        prefetch_factor=4 if workers else None)


# --------------------------------------------------------------------------
