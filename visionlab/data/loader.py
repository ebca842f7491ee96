"""Batching: collate functions, a resumable (and distributed) sampler and ``build_loader``.

Exact resume needs the data order and the random augmentations to be a function of
(seed, epoch, position) only, never of how many batches a process happened to draw before:

- :class:`ResumableSampler` draws one seeded permutation per epoch, pads it to a multiple of
  the number of processes and hands each rank its slice; ``skip(n)`` starts the next pass
  ``n`` batches in.
- :class:`SeededDataset` reseeds torch's RNG from (seed, epoch, index) around every
  ``dataset[index]`` (the caller's RNG state is restored afterwards), so a sample gets the same
  augmentation whichever worker loads it and whether or not the run was resumed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from visionlab.constants import STACKED_TASKS


def stack_collate(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, dict[str, Any]]:
    """Classification / segmentation batch: images ``[B, 3, H, W]`` and one target dict.

    Tensor fields of equal shape are stacked (``labels [B]``, ``semantic [B, H, W]``); other
    fields (``image_id``, ``file_name``, ...) become lists of length B.
    """
    images = torch.stack([image for image, _ in batch])
    keys = batch[0][1].keys() if batch else ()
    targets: dict[str, Any] = {}
    for key in keys:
        values = [target[key] for _, target in batch]
        if all(isinstance(v, Tensor) for v in values) and len({v.shape for v in values}) == 1:
            targets[key] = torch.stack(values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            targets[key] = torch.tensor(values, dtype=torch.int64)
        else:
            targets[key] = values
    return images, targets


def list_collate(
    batch: Sequence[tuple[Tensor, dict[str, Any]]],
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Detection batch: ``(list[Tensor[3, H, W]], list[target dict])``; sizes may differ."""
    return [image for image, _ in batch], [target for _, target in batch]


def collate_for(task: str):
    """The collate function of ``task``: stacked for classification / segmentation."""
    return stack_collate if task in STACKED_TASKS else list_collate


def _mix(*values: int) -> int:
    """A 63-bit seed from a few integers (splitmix64 steps): nearby inputs, unrelated seeds."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x >> 1


class SeededDataset(Dataset):
    """Wrap ``dataset`` so that sample ``i`` of epoch ``e`` is drawn with torch seed
    ``f(seed, e, i)``: random augmentations repeat exactly across resumes and workers.

    Attributes of the wrapped dataset (``classes``, ``task``, ...) are readable through it.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_mix(self.seed, self.epoch, int(index)))
            return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """A batch of samples (what DataLoader asks for), decoded with one intra-op thread.

        Per-sample work is many small tensor ops: extra threads only add synchronisation
        (measured: README "Models and measured results", tiny CNN). DataLoader workers
        already run single-threaded; this does the same for loading in the main process,
        and restores the thread count afterwards.
        """
        threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
        try:
            return [self[i] for i in indices]
        finally:
            if threads > 1:
                torch.set_num_threads(threads)

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "__setstate__") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableSampler(Sampler[int]):
    """Seeded, epoch-aware, rank-aware sampler that can start mid-epoch.

    Every epoch draws ``randperm(num_samples)`` from a generator seeded with ``seed + epoch``
    (or keeps ``0..n-1`` when ``shuffle`` is False), pads it by repeating its start to a
    multiple of ``world_size`` (so every rank gets the same number of samples, like
    :class:`torch.utils.data.DistributedSampler`), and yields ``indices[rank::world_size]``.

    Args:
        num_samples: dataset length.
        shuffle: a new permutation each epoch.
        seed: base seed; identical on every rank.
        rank, world_size: this process and the number of processes.
        batch_size: per-rank batch size, the unit of :meth:`skip`.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples = int(num_samples)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.batch_size = int(batch_size)
        self.epoch = 0
        self._skip = 0
        self.per_rank = math.ceil(self.num_samples / world_size) if self.num_samples else 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before each pass)."""
        self.epoch = int(epoch)

    def skip(self, n_batches: int) -> None:
        """Make the next pass start after ``n_batches`` batches of this rank (exact resume)."""
        self._skip = int(n_batches)

    def indices(self) -> list[int]:
        """This rank's indices of the current epoch, in order (no skipping)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        while len(order) < total:  # pad by repeating the start, as DistributedSampler does
            order += order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        order = self.indices()[self._skip * self.batch_size :]
        self._skip = 0
        return iter(order)

    def __len__(self) -> int:
        return self.per_rank

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed, "world_size": self.world_size}


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    collate_fn: Any = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` with a :class:`ResumableSampler` and seeded samples.

    Args:
        dataset: a dataset with a ``task`` attribute (chooses the collate function) or an
            explicit ``collate_fn``.
        batch_size: per-process batch size.
        shuffle: seeded permutation per epoch (training) or the dataset order.
        seed: seeds the permutation and each sample's augmentation.
        distributed: slice the data by ``torch.distributed`` rank / world size.
        drop_last: drop the last incomplete batch of each epoch.

    Returns:
        ``DataLoader``; ``loader.sampler`` is the ResumableSampler and ``loader.dataset`` a
        :class:`SeededDataset`; call :func:`set_epoch` before each pass.
    """
    rank, world_size = 0, 1
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
    seeded = dataset if isinstance(dataset, SeededDataset) else SeededDataset(dataset, seed)
    sampler = ResumableSampler(
        len(seeded),
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world_size=world_size,
        batch_size=batch_size,
    )
    if collate_fn is None:
        collate_fn = collate_for(getattr(dataset, "task", "detection"))
    # A private generator: creating an iterator draws a base seed from it, which must not
    # consume the global RNG (that would make a resumed run diverge).
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        seeded,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=False,
    )


def set_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Prepare ``loader`` for a pass over ``epoch``, starting ``skip_batches`` batches in."""
    if isinstance(loader.sampler, ResumableSampler):
        loader.sampler.set_epoch(epoch)
        loader.sampler.skip(skip_batches)
    elif skip_batches:
        raise ValueError("skipping batches needs a ResumableSampler")
    if isinstance(loader.dataset, SeededDataset):
        loader.dataset.set_epoch(epoch)
