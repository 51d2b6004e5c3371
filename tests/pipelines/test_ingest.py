import dataclasses
import json
import os
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from components.images import DataError, make_shapes
from pipelines.infra.dataset import DecodeBatch, describe, load_manifest, read_split
from pipelines.stages.ingest import ingest
from pipelines.stages.sources import FASHION_MNIST_DIR, Batch, IngestOptions, limited, source_fingerprint

QUIET = dict(log=lambda *_: None)


def _folder(root: Path, classes=("cat", "dog"), per_class=3, size=(40, 30)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_shapes_ingest_round_trip(tmp_path):
    dest = tmp_path / "shapes"
    manifest = ingest("shapes", str(dest), IngestOptions(resolution=16, num_images=100, splits=("train", "test"),
                                                         rows_per_shard=30), **QUIET)
    assert manifest["counts"] == {"train": 100, "test": 100}
    assert len(manifest["shards"]["train"]) == 4
    images, labels = read_split(str(dest), "train")
    expected, expected_labels, _ = make_shapes(100, 16, 4, seed=0)
    assert np.array_equal(images, expected) and np.array_equal(labels, expected_labels)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # same content again: a no-op; different content: refused before anything is written
    assert ingest("shapes", str(dest), IngestOptions(resolution=16, num_images=100, splits=("train", "test")),
                  **QUIET)["fingerprint"] == manifest["fingerprint"]
    with pytest.raises(DataError, match="different dataset"):
        ingest("shapes", str(dest), IngestOptions(resolution=16, num_images=100, seed=1), **QUIET)
    assert load_manifest(str(dest)) == manifest


def test_validation_split_is_carved_by_content_deterministically_and_disjoint_from_train(tmp_path):
    """A held-out split carved from train: the same images on a rerun with other shard sizes (and the same
    fingerprint), none of them left in train, train + validation = the source, and the source's own test split
    untouched; the fingerprint differs from the uncarved dataset's (the split is part of the dataset)."""
    opts = IngestOptions(resolution=16, num_images=200, splits=("train", "test"), validation_fraction=0.2)
    first = ingest("shapes", str(tmp_path / "a"), opts, **QUIET)
    again = ingest("shapes", str(tmp_path / "b"), dataclasses.replace(opts, rows_per_shard=7), **QUIET)
    assert first["fingerprint"] == again["fingerprint"]
    assert first["counts"]["test"] == 200 and first["counts"]["train"] + first["counts"]["validation"] == 200
    assert 20 <= first["counts"]["validation"] <= 60  # about a fifth: a hash, not a count
    held, held_labels = read_split(str(tmp_path / "a"), "validation")
    held_b, _ = read_split(str(tmp_path / "b"), "validation")
    train, _ = read_split(str(tmp_path / "a"), "train")
    assert np.array_equal(held, held_b)
    source, source_labels, _ = make_shapes(200, 16, 4, seed=0)
    keys = {im.tobytes() for im in source}
    assert {im.tobytes() for im in held} <= keys and {im.tobytes() for im in train} <= keys
    assert not {im.tobytes() for im in held} & {im.tobytes() for im in train}
    in_held = np.array([im.tobytes() in {h.tobytes() for h in held} for im in source])
    assert np.array_equal(held_labels, source_labels[in_held])  # in source order, labels kept
    assert source_fingerprint("shapes", opts) == first["fingerprint"]
    plain = ingest("shapes", str(tmp_path / "c"), dataclasses.replace(opts, validation_fraction=0.0), **QUIET)
    assert "validation" not in plain["counts"] and plain["fingerprint"] != first["fingerprint"]
    with pytest.raises(DataError, match="--validation-fraction 1.5 must be in"):
        ingest("shapes", str(tmp_path / "d"), dataclasses.replace(opts, validation_fraction=1.5), **QUIET)


def test_limit_takes_the_first_images_and_a_grown_dataset_keeps_the_smaller_ones_held_out_images(tmp_path):
    """--limit N: the source's first N images per split; carved after the limit, the held-out images of the first 120
    are exactly the first held-out images of all 200 (what a retraining benchmark on grown data needs)."""
    opts = IngestOptions(resolution=16, num_images=200, splits=("train", "test"), validation_fraction=0.2)
    small = ingest("shapes", str(tmp_path / "small"), dataclasses.replace(opts, limit=120), **QUIET)
    ingest("shapes", str(tmp_path / "full"), opts, **QUIET)
    assert small["counts"]["test"] == 120 and small["counts"]["train"] + small["counts"]["validation"] == 120
    assert small["limit"] == 120
    source, _, _ = make_shapes(200, 16, 4, seed=0)
    small_held, _ = read_split(str(tmp_path / "small"), "validation")
    full_held, _ = read_split(str(tmp_path / "full"), "validation")
    small_train, _ = read_split(str(tmp_path / "small"), "train")
    first = {im.tobytes() for im in source[:120]}
    assert {im.tobytes() for im in small_train} | {im.tobytes() for im in small_held} == first
    assert 0 < len(small_held) < len(full_held) and np.array_equal(full_held[:len(small_held)], small_held)
    assert source_fingerprint("shapes", dataclasses.replace(opts, limit=120)) == small["fingerprint"]
    with pytest.raises(DataError, match="--limit -3 must be a whole number >= 1"):
        ingest("shapes", str(tmp_path / "bad"), dataclasses.replace(opts, limit=-3), **QUIET)


def test_limit_counts_across_a_splits_batches():
    images = np.zeros((5, 2, 2, 1), dtype=np.uint8)
    batches = [Batch("train", images, np.arange(5)), Batch("test", images, np.arange(5)),
               Batch("train", images, np.arange(5, 10)), Batch("train", images, np.arange(10, 15))]
    out = list(limited(iter(batches), 7))
    assert [(b.split, list(b.labels)) for b in out] == [("train", [0, 1, 2, 3, 4]), ("test", [0, 1, 2, 3, 4]),
                                                         ("train", [5, 6])]
    assert sum(len(b.labels) for b in limited(iter(batches), 0)) == 20


def test_image_folder_on_memory_filesystem(tmp_path):
    src = _folder(tmp_path / "src")
    fs = fsspec.filesystem("memory")
    for p in src.rglob("*.png"):
        fs.pipe(f"/imgs/{p.parent.name}/{p.name}", p.read_bytes())
    manifest = ingest("memory://imgs", "memory://out/ds", IngestOptions(resolution=16), **QUIET)
    assert manifest["class_names"] == ["cat", "dog"]
    assert manifest["counts_per_class"]["train"] == {"cat": 3, "dog": 3}
    images, labels = read_split("memory://out/ds")
    assert images.shape == (6, 16, 16, 3) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    info = describe("memory://out/ds")
    assert fs.exists("/out/ds/grid.png") and info["grid"].endswith("grid.png")


def test_corrupt_image_fails_by_name_or_is_skipped(tmp_path):
    src = _folder(tmp_path / "src")
    (src / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png"):
        ingest(str(src), str(tmp_path / "out"), IngestOptions(resolution=16), **QUIET)
    assert not (tmp_path / "out").exists()
    manifest = ingest(str(src), str(tmp_path / "out"), IngestOptions(resolution=16, skip_bad=True), **QUIET)
    assert manifest["skipped"]["count"] == 1 and manifest["counts"]["train"] == 6
    assert manifest["skipped"]["files"][0].endswith("broken.png")


def test_files_that_are_not_images_are_left_out_with_a_note(tmp_path):
    src = _folder(tmp_path / "src")
    (src / "cat" / "notes.txt").write_text("hello")
    (src / "dog" / "LABELS.CSV").write_text("a,b")
    lines = []
    manifest = ingest(str(src), str(tmp_path / "out"), IngestOptions(resolution=16), log=lines.append)
    assert manifest["counts"]["train"] == 6 and manifest["skipped"]["count"] == 0
    assert sorted(Path(f).name for f in manifest["ignored"]["files"]) == ["LABELS.CSV", "notes.txt"]
    assert any("are not images" in line and "notes.txt" in line for line in lines)
    only_notes = _folder(tmp_path / "notes", classes=("a", "b"))
    for png in (only_notes / "b").iterdir():
        png.rename(png.with_suffix(".txt"))
    with pytest.raises(DataError, match="holds no image files"):
        ingest(str(only_notes), str(tmp_path / "out2"), IngestOptions(resolution=16), **QUIET)


def test_folder_layout_errors(tmp_path):
    one = _folder(tmp_path / "one", classes=("only",))
    with pytest.raises(DataError, match="at least two classes"):
        ingest(str(one), str(tmp_path / "o1"), IngestOptions(resolution=16), **QUIET)
    empty = _folder(tmp_path / "empty")
    (empty / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra is empty"):
        ingest(str(empty), str(tmp_path / "o2"), IngestOptions(resolution=16), **QUIET)
    with pytest.raises(DataError, match="--resolution"):
        ingest(str(empty), str(tmp_path / "o3"), IngestOptions(), **QUIET)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(DataError, match="holds files"):
        ingest("shapes", str(tmp_path / "busy"), IngestOptions(num_images=8), **QUIET)


def test_fashion_mnist_wrong_md5_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="missing"):
        ingest(f"fashion-mnist:{tmp_path}", str(tmp_path / "o"), **QUIET)
    # the README's test command installs the package (scripts/setup.sh): absent files are a broken setup, not a skip
    assert os.path.exists(FASHION_MNIST_DIR), \
        f"Fashion-MNIST absent at {FASHION_MNIST_DIR}: run scripts/setup.sh (apt-get install dataset-fashion-mnist)"
    for name in os.listdir(FASHION_MNIST_DIR):
        (tmp_path / name).write_bytes(Path(FASHION_MNIST_DIR, name).read_bytes())
    import gzip

    raw = bytearray(gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="md5"):
        ingest(f"fashion-mnist:{tmp_path}", str(tmp_path / "o"), IngestOptions(splits=("train", "test")), **QUIET)


def test_real_fashion_mnist(tmp_path):
    manifest = ingest("fashion-mnist", str(tmp_path / "fm"), IngestOptions(resolution=32, splits=("train", "test")),
                      **QUIET)
    assert manifest["counts"] == {"train": 60000, "test": 10000}
    assert set(manifest["counts_per_class"]["test"].values()) == {1000}
    images, labels = read_split(str(tmp_path / "fm"), "test", limit=50)
    assert images.shape == (50, 32, 32, 1) and images[:, :2].max() == 0  # padded border
    on_disk = json.loads((tmp_path / "fm" / "manifest.json").read_text())
    assert on_disk["fingerprint"] == manifest["fingerprint"]


def test_decode_batch_scales_to_model_range():
    images, labels, _ = make_shapes(3, 16, 4, seed=0)
    from components.images import encode_png

    out = DecodeBatch(3)({"image": np.array([encode_png(i) for i in images], dtype=object), "label": labels})
    assert out["image"].shape == (3, 3, 16, 16) and out["image"].dtype == np.float32
    assert np.allclose((out["image"] + 1) * 127.5, images.transpose(0, 3, 1, 2), atol=1e-3)


def test_interrupted_ingest_leaves_nothing_a_reader_accepts(tmp_path, monkeypatch):
    import pipelines.stages.ingest as ingest_module

    real_write, calls = ingest_module._write_shard, []

    def failing_write(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C while the third shard was being written
        real_write(*args)

    monkeypatch.setattr(ingest_module, "_write_shard", failing_write)
    with pytest.raises(KeyboardInterrupt):
        ingest("shapes", str(tmp_path / "ds"), IngestOptions(num_images=64, rows_per_shard=8), **QUIET)
    assert len(calls) == 3
    assert not (tmp_path / "ds").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="no manifest.json"):
        load_manifest(str(tmp_path / "ds"))


def test_labels_outside_the_class_range_are_refused():
    from components.images import check_labels

    with pytest.raises(DataError, match="outside 0..9"):
        check_labels(np.array([0, 3, 10]), 10, "labels")
