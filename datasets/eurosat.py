"""EuroSAT RGB (as CoOp reads it): 10 land-cover classes, split ``split_zhou_EuroSAT.json``."""
from gopro_prompts.registry import register_dataset

from .coop_common import CoOpFewShotDataset, read_and_split_data

#: Readable names written when the split is generated; an existing split file's names win.
NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@register_dataset
class EuroSAT(CoOpFewShotDataset):
    """Images ``eurosat/2750/<Class>/``; without the split file, 50/20/30 per folder."""

    dataset_dir = "eurosat"
    image_dir_name = "2750"
    split_file = "split_zhou_EuroSAT.json"

    def build_split(self):
        return read_and_split_data(self.image_dir, new_cnames=NEW_CNAMES)
