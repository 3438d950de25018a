"""Shared reader of the test-only ImageNet variants (as CoOp's ``datasets/imagenet_*.py``).

ImageNet-Sketch, -A, -R and -V2 are evaluation targets: ``train_x = test =``
all images, no val; ``DATASET.NUM_SHOTS`` and ``DATASET.SUBSAMPLE_CLASSES`` are
ignored, and no ``split_fewshot`` folder is created.
"""
import os.path as osp

from gopro_prompts.dassl_compat import DatasetBase, get_logger, listdir_nohidden

from .coop_common import (
    DatasetError, check_images_readable, check_layout, dataset_root, new_datum, read_classnames,
)

_LOG = get_logger("datasets")


class ImageNetVariant(DatasetBase):
    """Base of the test-only variants; subclasses set ``dataset_dir``,
    ``image_dir_name`` and implement :meth:`read_data`."""

    dataset_dir = ""
    image_dir_name = ""

    def __init__(self, cfg):
        name = type(self).__name__
        root = dataset_root(cfg)
        self.dataset_dir = osp.join(root, type(self).dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, self.image_dir_name)
        check_layout(name, cfg, self.dataset_dir, ["classnames.txt", self.image_dir_name + "/"])
        subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        if subsample != "all":
            _LOG.warning(
                "%s is test-only: DATASET.SUBSAMPLE_CLASSES=%s is ignored, all its classes are used",
                name, subsample,
            )
        classnames = read_classnames(osp.join(self.dataset_dir, "classnames.txt"))
        data = self.read_data(classnames)
        check_images_readable({"test": data}, name)
        super().__init__(train_x=data, test=data)

    def read_data(self, classnames):  # pragma: no cover - overridden
        raise NotImplementedError

    def read_wnid_folders(self, classnames, ignored=()):
        """Folders = sorted non-hidden entries of the image folder minus ``ignored``;
        label = index; name = ``classnames.txt`` entry of the folder (wnid)."""
        folders = [f for f in listdir_nohidden(self.image_dir, sort=True) if f not in ignored]
        items = []
        for label, folder in enumerate(folders):
            if folder not in classnames:
                raise DatasetError(
                    f"Dataset {type(self).__name__}: folder {osp.join(self.image_dir, folder)} has "
                    f"no entry in {osp.join(self.dataset_dir, 'classnames.txt')}"
                )
            folder_dir = osp.join(self.image_dir, folder)
            for imname in listdir_nohidden(folder_dir):
                items.append(
                    new_datum(osp.join(folder_dir, imname), label, classnames[folder], folder_dir)
                )
        return items
