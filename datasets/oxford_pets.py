"""Oxford-IIIT Pets (as CoOp reads it): 37 breeds, split ``split_zhou_OxfordPets.json``."""
import os.path as osp

from gopro_prompts.registry import register_dataset

from .coop_common import CoOpFewShotDataset, new_datum, split_trainval


@register_dataset
class OxfordPets(CoOpFewShotDataset):
    """Images in ``oxford_pets/images``; without the split file, built from
    ``annotations/trainval.txt`` (80/20 train/val) and ``annotations/test.txt``."""

    dataset_dir = "oxford_pets"
    image_dir_name = "images"
    split_file = "split_zhou_OxfordPets.json"
    source_files = ("annotations/trainval.txt", "annotations/test.txt")

    def build_split(self):
        trainval = self.read_data("trainval.txt")
        test = self.read_data("test.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, split_file):
        """Parse an annotation list: ``<image name> <class id> <species> <breed id>``."""
        items = []
        filepath = osp.join(self.dataset_dir, "annotations", split_file)
        with open(filepath, "r") as f:
            for line in f:
                imname, label, _species, _breed_id = line.strip().split(" ")
                # Breed = image name without its last "_"-part, lower-cased.
                breed = "_".join(imname.split("_")[:-1]).lower()
                impath = osp.join(self.image_dir, imname + ".jpg")
                items.append(new_datum(impath, int(label) - 1, breed, filepath))
        return items
