"""Data pipeline of the bundled engine: ``DataManager``, ``DatasetWrapper``, ``build_data_loader``.

Reproduces Dassl 0.6.3's ``dassl.data`` (``dassl/data/data_manager.py``): the
same loaders and loader arguments, the same batch dicts and the same printed
lines and dataset summary table.
"""
from __future__ import annotations

import torch
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset as TorchDataset
from torchvision.transforms import Compose, Normalize, Resize, ToTensor

from ..utils import read_image_checked
from .datasets import build_dataset
from .samplers import build_sampler
from .transforms import build_transform, get_interpolation_mode

__all__ = ["DataManager", "DatasetWrapper", "build_data_loader"]


def build_data_loader(
    cfg,
    sampler_type="SequentialSampler",
    data_source=None,
    batch_size=64,
    n_domain=0,
    n_ins=2,
    tfm=None,
    is_train=True,
    dataset_wrapper=None,
):
    """A plain ``DataLoader`` over ``dataset_wrapper(cfg, data_source, tfm, is_train)``.

    As Dassl's ``build_data_loader``.

    Train loaders drop the last partial batch unless the whole set is smaller
    than one batch; ``pin_memory`` is on when CUDA is available and ``USE_CUDA``.
    """
    # Deliberate improvement: Dassl fails on an empty split with torch's
    # "num_samples should be a positive integer" or a bare assertion.
    if not data_source:
        raise ValueError(
            f"Cannot build a data loader: the {'training' if is_train else 'evaluation'} "
            "split is empty (0 items), so the loader yields no batch; check DATASET.ROOT, "
            "DATASET.NAME, DATASET.NUM_SHOTS and DATASET.SUBSAMPLE_CLASSES"
        )
    sampler = build_sampler(
        sampler_type,
        cfg=cfg,
        data_source=data_source,
        batch_size=batch_size,
        n_domain=n_domain,
        n_ins=n_ins,
    )

    if dataset_wrapper is None:
        dataset_wrapper = DatasetWrapper

    data_loader = DataLoader(
        dataset_wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=(torch.cuda.is_available() and cfg.USE_CUDA),
    )
    # Deliberate improvement: Dassl asserts len > 0 with no message.
    if len(data_loader) == 0:
        raise ValueError(
            f"The data loader over {len(data_source)} item(s) with sampler {sampler_type} and "
            f"batch size {batch_size} yields no batch: check that the dataset split is not "
            "empty (DATASET.ROOT, DATASET.NAME, DATASET.NUM_SHOTS, DATASET.SUBSAMPLE_CLASSES)"
        )
    return data_loader


class DataManager:
    """Build the dataset, its transforms and its loaders from ``cfg`` (as Dassl's ``DataManager``).

    Attributes: ``dataset``, ``train_loader_x``, ``train_loader_u`` (None unless
    ``dataset.train_u`` is non-empty), ``val_loader`` (None unless ``dataset.val``
    is non-empty), ``test_loader``, ``num_classes``, ``num_source_domains``, ``lab2cname``.
    """

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        # Load dataset
        dataset = build_dataset(cfg)

        # Build transforms
        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            print("* Using custom transform for training")
            tfm_train = custom_tfm_train

        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            print("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        # Labeled training loader
        train_x_cfg = cfg.DATALOADER.TRAIN_X
        train_loader_x = build_data_loader(
            cfg,
            sampler_type=train_x_cfg.SAMPLER,
            data_source=dataset.train_x,
            batch_size=train_x_cfg.BATCH_SIZE,
            n_domain=train_x_cfg.N_DOMAIN,
            n_ins=train_x_cfg.N_INS,
            tfm=tfm_train,
            is_train=True,
            dataset_wrapper=dataset_wrapper,
        )

        # Unlabeled training loader (never built for the CoOp datasets)
        train_loader_u = None
        if dataset.train_u:
            u_cfg = train_x_cfg if cfg.DATALOADER.TRAIN_U.SAME_AS_X else cfg.DATALOADER.TRAIN_U
            train_loader_u = build_data_loader(
                cfg,
                sampler_type=u_cfg.SAMPLER,
                data_source=dataset.train_u,
                batch_size=u_cfg.BATCH_SIZE,
                n_domain=u_cfg.N_DOMAIN,
                n_ins=u_cfg.N_INS,
                tfm=tfm_train,
                is_train=True,
                dataset_wrapper=dataset_wrapper,
            )

        # Validation and test loaders
        val_loader = None
        if dataset.val:
            val_loader = build_data_loader(
                cfg,
                sampler_type=cfg.DATALOADER.TEST.SAMPLER,
                data_source=dataset.val,
                batch_size=cfg.DATALOADER.TEST.BATCH_SIZE,
                tfm=tfm_test,
                is_train=False,
                dataset_wrapper=dataset_wrapper,
            )

        test_loader = build_data_loader(
            cfg,
            sampler_type=cfg.DATALOADER.TEST.SAMPLER,
            data_source=dataset.test,
            batch_size=cfg.DATALOADER.TEST.BATCH_SIZE,
            tfm=tfm_test,
            is_train=False,
            dataset_wrapper=dataset_wrapper,
        )

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname

        self.dataset = dataset
        self.train_loader_x = train_loader_x
        self.train_loader_u = train_loader_u
        self.val_loader = val_loader
        self.test_loader = test_loader

        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def num_source_domains(self):
        return self._num_source_domains

    @property
    def lab2cname(self):
        return self._lab2cname

    def show_dataset_summary(self, cfg):
        """Print the dataset summary table (tabulate "simple" format, no header)."""
        source_domains = cfg.DATASET.SOURCE_DOMAINS
        target_domains = cfg.DATASET.TARGET_DOMAINS

        table = [["Dataset", cfg.DATASET.NAME]]
        if source_domains:
            table.append(["Source", source_domains])
        if target_domains:
            table.append(["Target", target_domains])
        table.append(["# classes", f"{self.num_classes:,}"])
        table.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            table.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            table.append(["# val", f"{len(self.dataset.val):,}"])
        table.append(["# test", f"{len(self.dataset.test):,}"])

        print(tabulate(table))


class DatasetWrapper(TorchDataset):
    """Turn a list of :class:`Datum` into a torch dataset of dicts (as Dassl's ``DatasetWrapper``).

    Item ``idx`` holds ``label``, ``domain``, ``impath``, ``index`` and ``img``
    (``img2``, ``img3``, ... for a list of transforms); each image value is a
    list of ``DATALOADER.K_TRANSFORMS`` augmentations at train time when that
    is > 1.  ``DATALOADER.RETURN_IMG0`` adds the un-augmented ``img0``.
    """

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform  # accept a list of transforms
        self.is_train = is_train
        # Augmenting an image K>1 times is only allowed at training time
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0

        if self.k_tfm > 1 and transform is None:
            raise ValueError(
                f"Cannot augment the image {self.k_tfm} times because transform is None"
            )

        # Un-augmented img0: resized to exactly INPUT.SIZE (aspect not kept).
        interp_mode = get_interpolation_mode(cfg.INPUT.INTERPOLATION)
        to_tensor = [
            Resize(tuple(int(s) for s in cfg.INPUT.SIZE), interpolation=interp_mode),
            ToTensor(),
        ]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = Compose(to_tensor)

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]

        output = {
            "label": item.label,
            "domain": item.domain,
            "impath": item.impath,
            "index": idx,
        }

        img0 = self._read(item.impath)

        if self.transform is not None:
            if isinstance(self.transform, (list, tuple)):
                for i, tfm in enumerate(self.transform):
                    keyname = "img" if i == 0 else f"img{i + 1}"
                    output[keyname] = self._transform_image(tfm, img0)
            else:
                output["img"] = self._transform_image(self.transform, img0)
        else:
            output["img"] = img0

        if self.return_img0:
            output["img0"] = self.to_tensor(img0)  # without any augmentation

        return output

    #: an unreadable image fails naming the file (Dassl lets PIL's error through)
    _read = staticmethod(read_image_checked)

    def _transform_image(self, tfm, img0):
        """Apply ``tfm`` ``k_tfm`` times: a bare result for k = 1, else a list."""
        img_list = [tfm(img0) for _ in range(self.k_tfm)]
        return img_list[0] if len(img_list) == 1 else img_list
