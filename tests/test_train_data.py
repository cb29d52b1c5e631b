"""Training datasets and sample order: MXNet-written records and image folders read as RGB, normalised, flipped;
the order is a pure function of (seed, epoch) and identical for 1 process and the union of N ranks."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from facecli.data.datasets import ImageFolderDataset, open_dataset, to_input
from facecli.train.sampling import EpochPlan, ResumableBatchSampler


@pytest.mark.parametrize("layout", ["ms1m_style", "ms1m_face2rec2", "flat"])
def test_golden_record_files(shared_dir, layout):
    folder = shared_dir / "golden" / "recordio" / layout
    data = open_dataset(folder if layout != "flat" else folder / "data.rec")
    expected = json.loads((shared_dir / "golden" / "recordio" / "expected.json").read_text())
    if layout == "flat":
        assert len(data) == 22 and data.num_classes == 5
    else:
        assert len(data) == 20 and data.num_classes == 4
        assert sorted(np.bincount(data.labels).tolist()) == [5, 5, 5, 5]
    x, label = data[(3, False)]
    assert x.shape == (3, 112, 112) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    # pixel-exact against the source JPEG decoded as RGB and normalised (x/255 - 0.5)/0.5
    source = expected["sets"][layout]["records"][str(int(data.keys[3]))]["source"]
    rgb = cv2.cvtColor(cv2.imread(str(shared_dir / "golden" / "recordio" / source)), cv2.COLOR_BGR2RGB)
    torch.testing.assert_close(x, to_input(rgb))
    flipped, _ = data[(3, True)]
    torch.testing.assert_close(flipped, torch.flip(x, dims=[2]))


def test_image_folder_labels_and_rgb(tmp_path):
    for name, colour in (("bob", (255, 0, 0)), ("alice", (0, 0, 255))):  # RGB
        (tmp_path / name).mkdir()
        img = np.zeros((112, 112, 3), np.uint8)
        img[:] = colour
        cv2.imwrite(str(tmp_path / name / "a.png"), img[:, :, ::-1])
    (tmp_path / "alice" / "notes.txt").write_text("ignored")
    data = ImageFolderDataset(tmp_path)
    assert data.identities == ["alice", "bob"] and data.labels.tolist() == [0, 1]
    x, label = data[(1, False)]
    assert label == 1 and x[0].mean() == 1.0 and x[2].mean() == -1.0  # bob is red: channel 0 is R


def test_epoch_plan_is_deterministic_and_shards_the_global_batch():
    labels = np.arange(100) % 10
    one = EpochPlan(labels, batch_size=8, world_size=1, seed=4)
    ranks = [EpochPlan(labels, batch_size=4, world_size=2, rank=r, seed=4) for r in range(2)]
    for epoch in (0, 1):
        single = one.epoch(epoch)
        split = [r.epoch(epoch) for r in ranks]
        assert len(single) == len(split[0]) == 12
        for b, batch in enumerate(single):
            assert batch == split[0][b] + split[1][b]  # same global batch, rank slices in order
    assert one.epoch(0) != one.epoch(1)
    assert EpochPlan(labels, 8, seed=4).epoch(0) == one.epoch(0)
    flips = [f for batch in one.epoch(0) for _, f in batch]
    assert 0.3 < np.mean(flips) < 0.7
    assert not any(f for batch in EpochPlan(labels, 8, seed=4, flip=False).epoch(0) for _, f in batch)
    # resuming the stream after 15 batches continues exactly (across the epoch boundary)
    stream = iter(ResumableBatchSampler(one))
    batches = [next(stream) for _ in range(20)]
    resumed = iter(ResumableBatchSampler(one, start=15))
    assert [next(resumed) for _ in range(5)] == batches[15:]


def test_epoch_plan_refuses_data_too_small_for_a_batch_as_a_usage_error():
    from facecli.errors import UsageError

    with pytest.raises(UsageError, match="not enough for one global batch of 8 × 2"):
        EpochPlan(np.arange(15) % 3, batch_size=8, world_size=2)
    with pytest.raises(UsageError, match="not a multiple of K=4"):
        EpochPlan(np.arange(40) % 5, batch_size=6, pk=4)
