"""The dataset wrapper of our trainers: Dassl's, with errors that name the image file.

Dassl's ``DatasetWrapper.__getitem__`` (``dassl/data/data_manager.py``) opens
each image with ``read_image`` and lets PIL's exception through: a corrupt
file in a split of thousands ends the run with ``cannot identify image file``
and no hint of what to do.  :class:`DatasetWrapper` keeps Dassl's items and
transforms unchanged (it is a subclass of the backend's wrapper) and, only
when an item fails, checks whether its image file is the cause; if so the
error names the file and the fix.  The bundled engine's wrapper already does
this, so both backends fail with the same line.
"""
from __future__ import annotations

from gopro_prompts.dassl_compat import DatasetWrapper as _BackendDatasetWrapper
from gopro_prompts.bundled_dassl.utils import read_image_checked  # ours, not a Dassl name

__all__ = ["DatasetWrapper", "read_image_checked"]


class DatasetWrapper(_BackendDatasetWrapper):
    """The backend's ``DatasetWrapper``; an item whose image cannot be read fails naming the file."""

    def __getitem__(self, idx):
        try:
            return super().__getitem__(idx)
        except Exception:
            # Was it the image file?  Then say which one (raises); otherwise the original error stands.
            read_image_checked(self.data_source[idx].impath)
            raise
