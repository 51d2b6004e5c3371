"""Reading an ingested dataset through Ray Data on a real local Ray instance."""

import numpy as np
import pytest

from components.images import make_shapes
from pipelines.stages.ingest import ingest
from pipelines.stages.sources import IngestOptions


@pytest.fixture
def shapes_url(tmp_path) -> str:
    """64 shapes images at 16 px in 4 shards of 16 rows."""
    url = str(tmp_path / "ds")
    ingest("shapes", url, IngestOptions(resolution=16, num_images=64, rows_per_shard=16), log=lambda *_: None)
    return url


def test_ray_dataset_yields_decoded_batches(shapes_url, ray_cluster):
    from pipelines.infra.dataset import ray_dataset

    ds = ray_dataset(shapes_url)
    rows = ds.take_all()
    assert len(rows) == 64
    images = np.stack([r["image"] for r in rows])
    labels = np.array([r["label"] for r in rows])
    assert images.shape == (64, 3, 16, 16) and images.dtype == np.float32
    expected, expected_labels, _ = make_shapes(64, 16, 4, seed=0)
    # Ray may reorder blocks: compare as sets of (label, image)
    assert sorted(labels.tolist()) == sorted(expected_labels.tolist())
    got = {(int(lab), np.round((im + 1) * 127.5).astype(np.uint8).tobytes()) for lab, im in zip(labels, images)}
    want = {(int(lab), im.transpose(2, 0, 1).tobytes()) for lab, im in zip(expected_labels, expected)}
    assert got == want


def test_driver_dataset_holds_the_same_rows_in_shard_order(shapes_url, ray_cluster):
    from components.images import to_model_input
    from pipelines.infra.dataset import driver_dataset, read_split

    images, labels = read_split(shapes_url)
    for _ in range(2):  # the same order every time: shard order, then row order
        batches = list(driver_dataset(shapes_url).iter_batches(batch_size=None, batch_format="numpy"))
        got = np.concatenate([b["image"] for b in batches])
        assert got.dtype == np.float32 and got.shape == (64, 3, 16, 16)
        np.testing.assert_array_equal(got, to_model_input(images).numpy())
        np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels)


def test_epochs_are_shuffled_differently_and_repeat_from_run_to_run(shapes_url, ray_cluster):
    from components.config import TrainConfig
    from pipelines.infra.dataset import driver_dataset
    from pipelines.stages.train_worker import _epoch

    ds = driver_dataset(shapes_url)
    in_order = np.concatenate([b["label"] for b in ds.iter_batches(batch_size=None)])

    def labels(shuffle_rows: int, rank: int, step: int) -> np.ndarray:
        cfg = TrainConfig(batch_size=8, shuffle_rows=shuffle_rows)
        return np.concatenate([b["label"].numpy() for b in _epoch(ds.iterator(), cfg, 0, rank, step)])

    first = labels(32, 0, 0)
    assert sorted(first.tolist()) == sorted(in_order.tolist()) and len(first) == 64  # a permutation, all rows
    np.testing.assert_array_equal(first, labels(32, 0, 0))  # the same epoch in another run
    assert not np.array_equal(first, labels(32, 0, 8))  # the next epoch (it starts at step 8)
    assert not np.array_equal(first, labels(32, 1, 0))  # another rank
    np.testing.assert_array_equal(labels(0, 0, 0), in_order)  # shuffle_rows=0: shard order
