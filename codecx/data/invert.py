"""Inverse training (Rethinking Latent Variable, WACV 2026, supplement C.1): every training image also as `1 - x`."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class InvertedDataset(Dataset):
    """`dataset` followed by its inverted copy: item `i + len(dataset)` is `1 - dataset[i]`
    (the data doubles; crops and flips are drawn afresh for the copy)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.paths = getattr(dataset, "paths", None)

    def __len__(self) -> int:
        return 2 * len(self.dataset)

    def __getitem__(self, idx: int) -> torch.Tensor:
        n = len(self.dataset)
        if idx < 0:
            idx += 2 * n
        if not 0 <= idx < 2 * n:
            raise IndexError(f"index {idx} out of range for {2 * n} items")
        x = self.dataset[idx % n]
        return 1.0 - x if idx >= n else x
