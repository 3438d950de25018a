"""Stanford Cars (as CoOp reads it): 196 models, split ``split_zhou_StanfordCars.json``.

Unlike the other datasets, split paths are relative to the dataset folder
(``cars_train/00001.jpg``, ``cars_test/00001.jpg``).
"""
import os.path as osp

import numpy as np
from gopro_prompts.registry import register_dataset
from scipy.io import loadmat

from .coop_common import CoOpFewShotDataset, new_datum, split_trainval


def _scalar(value):
    # A MATLAB struct field read by loadmat is a (nested) array around one value.
    return np.asarray(value).ravel()[0]


@register_dataset
class StanfordCars(CoOpFewShotDataset):
    """Without the split file, built from ``devkit/cars_train_annos.mat`` (80/20
    train/val), ``cars_test_annos_withlabels.mat`` (test) and ``devkit/cars_meta.mat``."""

    dataset_dir = "stanford_cars"
    image_dir_name = ""
    split_file = "split_zhou_StanfordCars.json"
    split_prefix_is_dataset_dir = True
    required_dirs = ("cars_train/", "cars_test/")
    source_files = (
        "devkit/cars_train_annos.mat",
        "cars_test_annos_withlabels.mat",
        "devkit/cars_meta.mat",
    )

    def build_split(self):
        meta_file = osp.join(self.dataset_dir, "devkit", "cars_meta.mat")
        trainval = self.read_data(
            "cars_train", osp.join(self.dataset_dir, "devkit", "cars_train_annos.mat"), meta_file
        )
        test = self.read_data(
            "cars_test", osp.join(self.dataset_dir, "cars_test_annos_withlabels.mat"), meta_file
        )
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, image_dir, anno_file, meta_file):
        """Annotations carry ``fname`` and a 1-based ``class``; the model name has its
        last word (the year) moved to the front."""
        annotations = loadmat(anno_file)["annotations"][0]
        class_names = loadmat(meta_file)["class_names"][0]
        items = []
        for anno in annotations:
            imname = str(_scalar(anno["fname"]))
            label = int(_scalar(anno["class"])) - 1
            names = str(_scalar(class_names[label])).split(" ")
            names.insert(0, names.pop(-1))
            impath = osp.join(self.dataset_dir, image_dir, imname)
            items.append(new_datum(impath, label, " ".join(names), anno_file))
        return items
