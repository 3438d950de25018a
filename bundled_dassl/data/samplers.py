"""Samplers: ``build_sampler`` (as Dassl's ``dassl/data/samplers.py``).

Prompt learning only uses torch's ``RandomSampler`` (train) and
``SequentialSampler`` (val/test).  The three DA/DG batch composers are simple
implementations of Dassl's behaviour: they draw from Python ``random`` (and
numpy to pad short classes) and, like Dassl, compute their length by running
one full iteration at construction time, which consumes RNG.
"""
from __future__ import annotations

import copy
import random
from collections import defaultdict

import numpy as np
from torch.utils.data.sampler import RandomSampler, Sampler, SequentialSampler

__all__ = [
    "build_sampler",
    "RandomDomainSampler",
    "SeqDomainSampler",
    "RandomClassSampler",
    "RandomSampler",
    "SequentialSampler",
]


def _indices_by(data_source, attr):
    """Insertion-ordered dict value-of-``attr`` -> list of item indices."""
    groups = defaultdict(list)
    for i, item in enumerate(data_source):
        groups[getattr(item, attr)].append(i)
    return groups


class _DomainBatchSampler(Sampler):
    """Batches of ``n_img_per_domain`` images from each of the domains :meth:`_batch_domains` picks.

    Images are drawn without replacement; the epoch ends as soon as one picked
    domain has fewer images left than one batch needs from it.
    """

    def _setup(self, data_source, domain_dict, domains, batch_size, n_domain):
        self.data_source = data_source
        self.domain_dict = domain_dict
        self.domains = domains
        self.n_img_per_domain = batch_size // n_domain
        self.batch_size = batch_size
        self.n_domain = n_domain
        self.length = len(list(self.__iter__()))

    def _batch_domains(self):
        raise NotImplementedError

    def __iter__(self):
        domain_dict = copy.deepcopy(self.domain_dict)
        final_idxs = []
        stop_sampling = False
        while not stop_sampling:
            for domain in self._batch_domains():
                idxs = domain_dict[domain]
                selected_idxs = random.sample(idxs, self.n_img_per_domain)
                final_idxs.extend(selected_idxs)
                for idx in selected_idxs:
                    idxs.remove(idx)
                if len(idxs) < self.n_img_per_domain:
                    stop_sampling = True
        return iter(final_idxs)

    def __len__(self):
        return self.length


class RandomDomainSampler(_DomainBatchSampler):
    """Each batch: ``n_domain`` randomly chosen domains x ``batch_size // n_domain`` images."""

    def __init__(self, data_source, batch_size, n_domain):
        domain_dict = _indices_by(data_source, "domain")
        if n_domain is None or n_domain <= 0:
            n_domain = len(domain_dict)
        if batch_size % n_domain != 0:
            raise ValueError(
                f"RandomDomainSampler: batch size {batch_size} must be divisible by the "
                f"number of domains per batch {n_domain} (DATALOADER.TRAIN_X.N_DOMAIN)"
            )
        self._setup(data_source, domain_dict, list(domain_dict.keys()), batch_size, n_domain)

    def _batch_domains(self):
        return random.sample(self.domains, self.n_domain)


class SeqDomainSampler(_DomainBatchSampler):
    """Each batch: every domain (sorted order) x ``batch_size // n_domains`` random images."""

    def __init__(self, data_source, batch_size):
        domain_dict = _indices_by(data_source, "domain")
        n_domain = len(domain_dict)
        if n_domain == 0 or batch_size % n_domain != 0:
            raise ValueError(
                f"SeqDomainSampler: batch size {batch_size} must be a multiple of the "
                f"number of domains ({n_domain})"
            )
        self._setup(data_source, domain_dict, sorted(domain_dict.keys()), batch_size, n_domain)

    def _batch_domains(self):
        return self.domains


class RandomClassSampler(Sampler):
    """Each batch: ``batch_size // n_ins`` random classes x ``n_ins`` instances.

    A class with fewer than ``n_ins`` items is padded by sampling with
    replacement (numpy); items are cut into chunks of ``n_ins`` after a shuffle.
    """

    def __init__(self, data_source, batch_size, n_ins):
        if batch_size < n_ins:
            raise ValueError(
                f"RandomClassSampler: batch_size={batch_size} must be no less than "
                f"n_ins={n_ins} (DATALOADER.TRAIN_X.N_INS)"
            )
        self.data_source = data_source
        self.batch_size = batch_size
        self.n_ins = n_ins
        self.ncls_per_batch = batch_size // n_ins
        self.index_dic = _indices_by(data_source, "label")
        self.labels = list(self.index_dic.keys())
        if len(self.labels) < self.ncls_per_batch:
            raise ValueError(
                f"RandomClassSampler: {len(self.labels)} classes cannot fill a batch of "
                f"{self.ncls_per_batch} classes x {n_ins} instances: lower the batch size"
            )
        self.length = len(list(self.__iter__()))

    def __iter__(self):
        batch_idxs_dict = defaultdict(list)
        for label in self.labels:
            idxs = list(self.index_dic[label])
            if len(idxs) < self.n_ins:
                idxs = np.random.choice(idxs, size=self.n_ins, replace=True).tolist()
            random.shuffle(idxs)
            chunk = []
            for idx in idxs:
                chunk.append(idx)
                if len(chunk) == self.n_ins:
                    batch_idxs_dict[label].append(chunk)
                    chunk = []

        avai_labels = list(self.labels)
        final_idxs = []
        while len(avai_labels) >= self.ncls_per_batch:
            selected_labels = random.sample(avai_labels, self.ncls_per_batch)
            for label in selected_labels:
                final_idxs.extend(batch_idxs_dict[label].pop(0))
                if len(batch_idxs_dict[label]) == 0:
                    avai_labels.remove(label)
        return iter(final_idxs)

    def __len__(self):
        return self.length


def build_sampler(
    sampler_type,
    cfg=None,
    data_source=None,
    batch_size=32,
    n_domain=0,
    n_ins=16,
):
    """Build the sampler named ``sampler_type`` over ``data_source``; an unknown name is a ValueError."""
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomDomainSampler":
        return RandomDomainSampler(data_source, batch_size, n_domain)
    if sampler_type == "SeqDomainSampler":
        return SeqDomainSampler(data_source, batch_size)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins)
    raise ValueError(
        f"Unknown sampler type: {sampler_type} (valid: RandomSampler, SequentialSampler, "
        "RandomDomainSampler, SeqDomainSampler, RandomClassSampler)"
    )
