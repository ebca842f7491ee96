"""ResumableSampler, SeededDataset and collate."""

from __future__ import annotations

import torch
from engine_standins import MemoryDataset

from visionlab.data.loader import (
    ResumableSampler,
    SeededDataset,
    build_loader,
    list_collate,
    set_epoch,
    stack_collate,
)
from visionlab.tasks import get_task


def test_permutation_per_epoch_is_seeded() -> None:
    s = ResumableSampler(10, shuffle=True, seed=3)
    first = list(s)
    assert sorted(first) == list(range(10))
    assert list(ResumableSampler(10, shuffle=True, seed=3)) == first
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(10))
    assert list(ResumableSampler(4, shuffle=False)) == [0, 1, 2, 3]


def test_ranks_split_and_pad_to_equal_length() -> None:
    parts = [list(ResumableSampler(10, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]  # 10 padded to 12
    full = list(ResumableSampler(10, seed=0))
    assert sorted(i for p in parts for i in p) == sorted(full + full[:2])
    # interleaved: the global order is rank 0, rank 1, rank 2, rank 0, ...
    assert [parts[i % 3][i // 3] for i in range(10)] == full


def test_skip_resumes_mid_epoch_once() -> None:
    s = ResumableSampler(12, seed=1, batch_size=4)
    s.set_epoch(2)
    full = list(s)
    s.skip(2)
    assert list(s) == full[8:]
    assert list(s) == full  # the skip applies to one pass only


def test_seeded_samples_repeat_regardless_of_order_and_global_rng() -> None:
    data = SeededDataset(MemoryDataset(16), seed=5)
    a = [data[i][0] for i in range(16)]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    b = [data[i][0] for i in reversed(range(16))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    data.set_epoch(1)
    c = [data[i][0] for i in range(16)]
    assert any(not torch.equal(x, y) for x, y in zip(a, c))  # new epoch, new flips


def test_loader_epoch_and_skip() -> None:
    loader = build_loader(MemoryDataset(20), batch_size=4, shuffle=True, seed=0)
    set_epoch(loader, 1)
    full = [b[1]["image_id"].tolist() for b in loader]
    set_epoch(loader, 1, skip_batches=3)
    assert [b[1]["image_id"].tolist() for b in loader] == full[3:]
    assert loader.dataset.classes == ["r", "g", "b"]  # attributes pass through the wrapper


def test_collate() -> None:
    batch = [
        (torch.zeros(3, 4, 4), {"labels": torch.tensor(1), "image_id": 7, "file_name": "a"}),
        (torch.ones(3, 4, 4), {"labels": torch.tensor(2), "image_id": 8, "file_name": "b"}),
    ]
    images, targets = stack_collate(batch)
    assert images.shape == (2, 3, 4, 4)
    assert targets["labels"].tolist() == [1, 2]
    assert targets["image_id"].tolist() == [7, 8]
    assert targets["file_name"] == ["a", "b"]
    images, targets = list_collate(batch)
    assert isinstance(images, list) and len(targets) == 2
    assert get_task("detection").collate(batch)[1][0]["image_id"] == 7
