"""ImageNet-A (as CoOp's ``datasets/imagenet_a.py``): test only, its 200 classes named by folder wnid."""
from gopro_prompts.registry import register_dataset

from .imagenet_variants import ImageNetVariant


@register_dataset
class ImageNetA(ImageNetVariant):
    """``imagenet-adversarial/imagenet-a/<wnid>/`` + ``classnames.txt`` (labels 0..199)."""

    dataset_dir = "imagenet-adversarial"
    image_dir_name = "imagenet-a"

    def read_data(self, classnames):
        return self.read_wnid_folders(classnames, ignored=("README.txt",))
