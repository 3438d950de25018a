"""ImageNetV2 matched-frequency (as CoOp's ``datasets/imagenetv2.py``): test only, 1000 classes."""
import os.path as osp

from gopro_prompts.dassl_compat import listdir_nohidden
from gopro_prompts.registry import register_dataset

from .coop_common import DATASETS_DOC, DatasetNotFoundError, short_list, new_datum
from .imagenet_variants import ImageNetVariant


@register_dataset
class ImageNetV2(ImageNetVariant):
    """``imagenetv2/imagenetv2-matched-frequency-format-val/<label>/`` (folders ``0``..``999``)."""

    dataset_dir = "imagenetv2"
    image_dir_name = "imagenetv2-matched-frequency-format-val"

    def read_data(self, classnames):
        """Label = folder number; name = the label-th line of ``classnames.txt``.

        CoOp loops over 0..999; here the count is the number of ``classnames.txt``
        lines, which is 1000 for the real file.
        """
        names = list(classnames.values())
        missing = [str(y) for y in range(len(names)) if not osp.isdir(osp.join(self.image_dir, str(y)))]
        if missing:
            raise DatasetNotFoundError(
                f"Dataset ImageNetV2: missing class folders in {self.image_dir}: "
                f"{short_list(missing)} (one per classnames.txt line, 0..{len(names) - 1}); "
                f"see {DATASETS_DOC} (section ImageNetV2)"
            )
        items = []
        for label, classname in enumerate(names):
            class_dir = osp.join(self.image_dir, str(label))
            for imname in listdir_nohidden(class_dir):
                items.append(new_datum(osp.join(class_dir, imname), label, classname, class_dir))
        return items
