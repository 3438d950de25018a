"""Dataset containers, few-shot sampling and the dataset registry.

Reproduces Dassl 0.6.3's ``dassl.data.datasets`` surface
(``dassl/data/datasets/base_dataset.py`` and ``build.py``):
``Datum``, ``DatasetBase``, ``DATASET_REGISTRY`` and ``build_dataset``.

Dataset *classes* (OxfordPets, ImageNet, ...) are not defined here: the
project's ``datasets/`` package registers them into ``DATASET_REGISTRY``.
"""
from __future__ import annotations

import os
import os.path as osp
import random
import tarfile
import zipfile
from collections import defaultdict

from gopro_prompts.logs import get_logger

from ..utils import Registry, check_availability

__all__ = ["DATASET_REGISTRY", "Datum", "DatasetBase", "build_dataset"]

_LOGGER = get_logger("gopro_prompts.data")

DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg):
    """Instantiate the dataset class registered under ``cfg.DATASET.NAME`` (printed with VERBOSE)."""
    avai_datasets = DATASET_REGISTRY.registered_names()
    check_availability(cfg.DATASET.NAME, avai_datasets)
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


class Datum:
    """One data instance: image path, label, domain and class name (as Dassl's ``Datum``).

    The values live in the instance attributes ``_impath``, ``_label``,
    ``_domain`` and ``_classname`` and are exposed as read-only properties;
    pickled few-shot caches (which restore the instance dict) depend on exactly these attribute names.
    """

    def __init__(self, impath="", label=0, domain=0, classname=""):
        if not isinstance(impath, str):
            raise TypeError(
                f"Datum impath must be a str, got {type(impath).__name__} ({impath!r})"
            )
        # Deliberate improvement over Dassl (which warns, then raises a bare
        # AssertionError): a clear error that names the missing file.
        if not osp.isfile(impath):
            raise FileNotFoundError(
                f'No file found at "{impath}": every image listed in a dataset split must '
                "exist (check DATASET.ROOT and that the dataset is fully extracted)"
            )
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label

    @property
    def domain(self):
        return self._domain

    @property
    def classname(self):
        return self._classname

    def __repr__(self):
        return (
            f"Datum(impath={self._impath!r}, label={self._label!r}, "
            f"domain={self._domain!r}, classname={self._classname!r})"
        )


class DatasetBase:
    """A dataset: lists of :class:`Datum` for ``train_x``, ``train_u``, ``val``, ``test``."""

    dataset_dir = ""  # the directory where the dataset is stored
    domains = []  # string names of all domains

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x  # labeled training data
        self._train_u = train_u  # unlabeled training data (optional)
        self._val = val  # validation data (optional)
        self._test = test  # test data
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self):
        return self._lab2cname

    @property
    def classnames(self):
        return self._classnames

    @property
    def num_classes(self):
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source):
        """Max label + 1 (as Dassl: not the number of distinct labels).

        An empty or missing source gives 0 (Dassl crashes on it; the empty
        train loader is reported later by the DataManager with a clear error).
        """
        labels = {item.label for item in (data_source or [])}
        return max(labels) + 1 if labels else 0

    @staticmethod
    def get_lab2cname(data_source):
        """Return ``(lab2cname, classnames)``; ``classnames`` is sorted by label.

        Deliberate improvement: Dassl builds the mapping from a set, so its key
        order (and the winner when one label carries two names) changes between
        processes.  Here keys are in ascending label order and the first name seen
        for a label wins; ``classnames`` (what prompt learners use) is identical.
        """
        mapping = {}
        for item in data_source or []:
            mapping.setdefault(item.label, item.classname)
        labels = sorted(mapping)
        lab2cname = {label: mapping[label] for label in labels}
        classnames = [mapping[label] for label in labels]
        return lab2cname, classnames

    def check_input_domains(self, source_domains, target_domains):
        """Both domain lists must be non-empty and belong to ``self.domains``."""
        if len(source_domains) == 0:
            raise ValueError("source_domains (list) is empty: set DATASET.SOURCE_DOMAINS")
        if len(target_domains) == 0:
            raise ValueError("target_domains (list) is empty: set DATASET.TARGET_DOMAINS")
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains):
        for domain in input_domains:
            if domain not in self.domains:
                raise ValueError(
                    f"Input domain must belong to {self.domains}, but got [{domain}]"
                )

    def download_data(self, url, dst, from_gdrive=True):
        """Download ``url`` to ``dst`` with gdown, then extract it next to ``dst`` (DA/DG only)."""
        parent = osp.dirname(dst)
        if parent and not osp.exists(parent):
            os.makedirs(parent, exist_ok=True)
        if not from_gdrive:
            raise NotImplementedError("Only Google Drive downloads (from_gdrive=True) are supported")
        try:
            import gdown
        except ImportError as err:  # pragma: no cover - gdown is in requirements.txt
            raise ImportError("download_data needs the gdown package: pip install gdown") from err
        gdown.download(url, dst, quiet=False)

        print("Extracting file ...")
        if dst.endswith(".zip"):
            with zipfile.ZipFile(dst, "r") as zf:
                zf.extractall(parent)
        elif dst.endswith(".tar") or dst.endswith(".tar.gz") or dst.endswith(".tgz"):
            with tarfile.open(dst, "r:*") as tar:
                tar.extractall(parent, filter="data")
        else:
            raise NotImplementedError(
                f"Cannot extract {dst}: only .zip, .tar and .tar.gz archives are supported"
            )
        print(f"File extracted to {parent}")

    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False):
        """Sample ``num_shots`` items per label from each source (exactly as Dassl does).

        Labels are visited in order of first appearance; a label with at least K
        items gets ``random.sample(items, K)`` on Python's global ``random``; a
        shorter one gets ``random.choices(items, k=K)`` when ``repeat``, else all
        its items with no RNG consumed.  ``num_shots < 1`` returns the input
        unchanged (the list itself for one source, the tuple for several).
        """
        if num_shots < 1:
            if len(data_sources) == 1:
                return data_sources[0]
            return data_sources

        print(f"Creating a {num_shots}-shot dataset")

        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset = []
            for label, items in tracker.items():
                if len(items) >= num_shots:
                    sampled_items = random.sample(items, num_shots)
                elif repeat:
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    # Project addition: say which class is short (no RNG consumed).
                    _LOGGER.warning(
                        "Few-shot sampling: class %r (label %s) has only %d image(s), fewer "
                        "than %d shots; all of them are used",
                        items[0].classname, label, len(items), num_shots,
                    )
                    sampled_items = items
                dataset.extend(sampled_items)
            output.append(dataset)

        if len(output) == 1:
            return output[0]
        return output

    @staticmethod
    def split_dataset_by_label(data_source):
        """Group items by label: insertion-ordered dict label -> list of items (first-appearance order)."""
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source):
        """Group items by domain: insertion-ordered dict domain -> list of items (first-appearance order)."""
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output
