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
from gopro_prompts.dassl_compat import read_image

__all__ = ["DatasetWrapper", "read_image_checked"]


def read_image_checked(impath):
    """``read_image(impath)`` (RGB PIL image), or an error that names the file and the fix."""
    try:
        return read_image(impath)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f'Image file not found: "{impath}" ({err}); check DATASET.ROOT and the split file'
        ) from err
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise OSError(
            f'Cannot read image "{impath}": {type(err).__name__}: {err}. '
            "The file is corrupt or not an image; replace or remove it"
        ) from err


class DatasetWrapper(_BackendDatasetWrapper):
    """The backend's ``DatasetWrapper``; an item whose image cannot be read fails naming the file."""

    def __getitem__(self, idx):
        try:
            return super().__getitem__(idx)
        except Exception:
            # Was it the image file?  Then say which one (raises); otherwise the original error stands.
            read_image_checked(self.data_source[idx].impath)
            raise
