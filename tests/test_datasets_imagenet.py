"""ImageNet and its four test-only variants from miniature trees (as CoOp reads them)."""
import os
import random
from pathlib import Path

import pytest

from gopro_prompts.registry import register_all
from gopro_prompts.dassl_compat import DATASET_REGISTRY, Datum
from gopro_prompts.datasets.coop_common import DatasetNotFoundError, ImageNotFoundError
from gopro_prompts.datasets.datum_pickle import load_datum_pickle
from helpers import dataset_cfg, touch_jpeg

register_all()  # our datasets and trainers in the backend's registries

N_WNIDS = 1000
WNIDS = [f"n{1440764 + 7 * i:08d}" for i in range(N_WNIDS)]
NAMES = [f"class {i}" if i % 3 else f"class_{i} thing" for i in range(N_WNIDS)]


def write_classnames(folder):
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "classnames.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES))
    )


def build(root, name, shots=-1, seed=1, subsample="all"):
    cfg = dataset_cfg(root, name, shots, seed, subsample)
    random.seed(seed)
    return DATASET_REGISTRY.get(name)(cfg)


# ImageNet proper: 5 classes (wnids 3, 0, 8, 5, 1 of the list, so folder order != list order).
IMNET_CLASSES = [WNIDS[i] for i in (3, 0, 8, 5, 1)]


def make_imagenet(root, n_train=4, n_val=2):
    ds_dir = Path(root) / "imagenet"
    write_classnames(ds_dir)
    for wnid in IMNET_CLASSES:
        for i in range(n_train):
            touch_jpeg(ds_dir / "images" / "train" / wnid / f"{wnid}_{i}.JPEG")
        for i in range(n_val):
            touch_jpeg(ds_dir / "images" / "val" / wnid / f"ILSVRC2012_val_{wnid}_{i}.JPEG")
    return ds_dir


def test_imagenet_builds_and_reuses_preprocessed(tmp_path, capsys):
    ds_dir = make_imagenet(tmp_path)
    ds = build(tmp_path, "ImageNet")
    sorted_wnids = sorted(IMNET_CLASSES)
    assert ds.classnames == [NAMES[WNIDS.index(w)] for w in sorted_wnids]
    assert (len(ds.train_x), len(ds.test)) == (20, 10)
    assert ds.val is ds.test  # as CoOp: val is the test list
    assert (ds_dir / "split_fewshot").is_dir()
    pkl = ds_dir / "preprocessed.pkl"
    assert b"dassl.data.datasets.base_dataset" in pkl.read_bytes()
    data = load_datum_pickle(str(pkl))
    assert [d.impath for d in data["train"]] == [d.impath for d in ds.train_x]
    assert "preprocessed" not in capsys.readouterr().out  # the pkl is written silently

    # The pkl wins over the folders: a new class folder is not seen.
    touch_jpeg(ds_dir / "images" / "train" / WNIDS[9] / "x.JPEG")
    again = build(tmp_path, "ImageNet")
    assert [d.impath for d in again.train_x] == [d.impath for d in ds.train_x]


def test_imagenet_fewshot_train_only_and_base_new(tmp_path, capsys):
    ds_dir = make_imagenet(tmp_path)
    ds = build(tmp_path, "ImageNet", shots=2, seed=2)
    out = capsys.readouterr().out
    cache = ds_dir / "split_fewshot" / "shot_2-seed_2.pkl"
    assert f"Saving preprocessed few-shot data to {cache}" in out
    assert out.count("Creating a 2-shot dataset") == 1
    assert set(load_datum_pickle(str(cache))) == {"train"}
    assert len(ds.train_x) == 10 and len(ds.test) == 10

    new = build(tmp_path, "ImageNet", shots=2, seed=2, subsample="new")
    out = capsys.readouterr().out
    assert f"Loading preprocessed few-shot data from {cache}" in out
    assert "SUBSAMPLE NEW CLASSES!" in out
    assert new.classnames == ds.classnames[3:]
    assert sorted({d.label for d in new.train_x}) == [0, 1]
    assert sorted({d.label for d in new.test}) == [0, 1] and len(new.test) == 4
    assert new.val is new.test


def test_imagenet_errors(tmp_path):
    (tmp_path / "imagenet").mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        build(tmp_path, "ImageNet")
    msg = str(info.value)
    assert "preprocessed.pkl" in msg and "classnames.txt" in msg and "images/val/" in msg
    assert "DATASETS.md" in msg

    # Flat (unarranged) val folder -> clear error.
    ds_dir = make_imagenet(tmp_path / "b")
    val_dir = ds_dir / "images" / "val"
    for sub in list(val_dir.iterdir()):
        for f in sub.iterdir():
            f.rename(val_dir / f.name)
        sub.rmdir()
    with pytest.raises(DatasetNotFoundError, match="one folder per class"):
        build(tmp_path / "b", "ImageNet")


def test_imagenet_moved_preprocessed_is_reported(tmp_path):
    make_imagenet(tmp_path / "old")
    build(tmp_path / "old", "ImageNet")
    os.rename(tmp_path / "old", tmp_path / "new")
    with pytest.raises(ImageNotFoundError, match="preprocessed.pkl"):
        build(tmp_path / "new", "ImageNet")


# ---------------------------------------------------------------------------
# Test-only variants
# ---------------------------------------------------------------------------

# 200 classes of the 1000, not contiguous: every 5th wnid, shuffled on disk creation.
SUBSET_200 = [WNIDS[i] for i in range(0, N_WNIDS, 5)]


@pytest.mark.parametrize("name, ds_dir, img_dir", [
    ("ImageNetA", "imagenet-adversarial", "imagenet-a"),
    ("ImageNetR", "imagenet-rendition", "imagenet-r"),
])
def test_imagenet_a_r_use_their_200_classes(tmp_path, name, ds_dir, img_dir):
    root = tmp_path / ds_dir
    write_classnames(root)
    for wnid in reversed(SUBSET_200):
        touch_jpeg(root / img_dir / wnid / "0.jpg")
    touch_jpeg(root / img_dir / SUBSET_200[0] / "1.jpg")
    (root / img_dir / "README.txt").write_text("read me")
    ds = build(tmp_path, name, shots=4, subsample="base")
    assert ds.num_classes == 200 and len(ds.classnames) == 200
    assert ds.classnames == [NAMES[WNIDS.index(w)] for w in sorted(SUBSET_200)]
    assert ds.train_x is ds.test and len(ds.test) == 201
    assert not ds.val
    assert not (root / "split_fewshot").exists()  # NUM_SHOTS ignored


def test_imagenet_sketch_1000_classes(tmp_path):
    root = tmp_path / "imagenet-sketch"
    write_classnames(root)
    for wnid in WNIDS:
        touch_jpeg(root / "images" / wnid / "sketch_0.JPEG")
    ds = build(tmp_path, "ImageNetSketch")
    assert ds.num_classes == 1000
    assert ds.classnames == [NAMES[WNIDS.index(w)] for w in sorted(WNIDS)]
    assert ds.train_x is ds.test and len(ds.test) == 1000


def test_imagenetv2_labels_are_folder_numbers(tmp_path):
    root = tmp_path / "imagenetv2"
    write_classnames(root)
    img_dir = root / "imagenetv2-matched-frequency-format-val"
    for label in range(N_WNIDS):
        touch_jpeg(img_dir / str(label) / f"{label}a.jpeg")
    ds = build(tmp_path, "ImageNetV2")
    assert ds.num_classes == 1000
    assert ds.classnames == NAMES  # classnames.txt order, not wnid order
    assert all(Path(d.impath).parent.name == str(d.label) for d in ds.test)
    assert ds.train_x is ds.test and not ds.val

    (img_dir / "999" / "999a.jpeg").unlink()
    (img_dir / "999").rmdir()
    with pytest.raises(DatasetNotFoundError, match="999"):
        build(tmp_path, "ImageNetV2")


def test_variant_missing_classnames(tmp_path):
    (tmp_path / "imagenet-rendition" / "imagenet-r").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="classnames.txt"):
        build(tmp_path, "ImageNetR")


def test_datum_class_in_preprocessed_is_current_backend(tmp_path):
    make_imagenet(tmp_path)
    build(tmp_path, "ImageNet")
    again = build(tmp_path, "ImageNet")
    assert type(again.train_x[0]) is Datum
