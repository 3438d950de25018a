"""ImageNet-R (as CoOp's ``datasets/imagenet_r.py``): test only, its 200 classes named by folder wnid."""
from gopro_prompts.registry import register_dataset

from .imagenet_variants import ImageNetVariant


@register_dataset
class ImageNetR(ImageNetVariant):
    """``imagenet-rendition/imagenet-r/<wnid>/`` + ``classnames.txt`` (labels 0..199)."""

    dataset_dir = "imagenet-rendition"
    image_dir_name = "imagenet-r"

    def read_data(self, classnames):
        return self.read_wnid_folders(classnames, ignored=("README.txt",))
