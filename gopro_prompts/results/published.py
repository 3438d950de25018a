"""Published reference figures (ViT-B/16, 16 shots), as printed by the papers: not our measurements.

Source: GOPro repository images ``images/b2n.png``, ``images/cd.png`` and ``images/dg.png``
(commit ``e284586``); the CLIP / CoOp / CoCoOp / MaPLe rows are GOPro's reprints, and their
base-to-new averages equal the MaPLe README's.  Values as read from
those images.  One misprint is corrected: the image gives CoCoOp's
Flowers102 *new* accuracy as 71.15, but its own HM (81.71) and CoCoOp's average (71.69)
both require 71.75, which is used here.

Keys are our trainer names (``ZeroshotCLIP`` is the papers' "CLIP") and ``DATASET.NAME``s.
"""
from __future__ import annotations

SOURCE_B2N = "GOPro repository, images/b2n.png at e284586 (baseline rows reprinted by GOPro)"
SOURCE_XD = "GOPro repository, images/cd.png at e284586"
SOURCE_DG = "GOPro repository, images/dg.png at e284586"

#: the methods in the order the papers print them (StyLIP has no trainer here)
METHODS = ("ZeroshotCLIP", "CoOp", "CoCoOp", "MaPLe", "StyLIP", "GOPro")
#: the 11 base-to-new datasets in the papers' order
B2N_DATASETS = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101")

_B2N_ROWS = {  # dataset -> one (base, new, hm) per METHODS entry
    "ImageNet": ((72.43, 68.14, 70.22), (76.47, 67.88, 71.92), (75.98, 70.43, 73.10),
                 (76.66, 70.54, 73.47), (77.15, 71.34, 74.13), (78.56, 73.22, 75.80)),
    "Caltech101": ((96.84, 94.00, 95.40), (98.00, 89.81, 93.73), (97.96, 93.81, 95.84),
                   (97.74, 94.36, 96.02), (98.23, 94.91, 96.54), (98.86, 95.78, 97.30)),
    "OxfordPets": ((91.17, 97.26, 94.12), (93.67, 95.29, 94.47), (95.20, 97.69, 96.43),
                   (95.43, 97.76, 96.58), (95.96, 98.14, 97.04), (96.36, 98.49, 97.41)),
    "StanfordCars": ((63.37, 74.89, 68.65), (78.12, 60.40, 68.13), (70.49, 73.59, 72.01),
                     (72.94, 74.00, 73.47), (75.19, 74.46, 74.82), (77.59, 75.35, 76.45)),
    "OxfordFlowers": ((72.08, 77.80, 74.83), (97.60, 59.67, 74.06), (94.87, 71.75, 81.71),
                      (95.92, 72.46, 82.56), (96.54, 73.08, 83.19), (97.73, 77.91, 86.70)),
    "Food101": ((90.10, 91.22, 90.66), (88.33, 82.26, 85.19), (90.70, 91.29, 90.99),
                (90.71, 92.05, 91.38), (91.20, 92.48, 91.84), (92.37, 93.56, 92.96)),
    "FGVCAircraft": ((27.19, 36.29, 31.09), (40.44, 22.30, 28.75), (33.41, 23.71, 27.74),
                     (37.44, 35.61, 36.50), (37.65, 35.93, 36.77), (37.89, 36.44, 37.15)),
    "SUN397": ((69.36, 75.35, 72.23), (80.60, 65.89, 72.51), (79.74, 76.86, 78.27),
               (80.82, 78.70, 79.75), (82.12, 79.95, 81.02), (81.94, 81.64, 81.79)),
    "DescribableTextures": ((53.24, 59.90, 56.37), (79.44, 41.18, 54.24), (77.01, 56.00, 64.85),
                            (80.36, 59.18, 68.16), (81.57, 61.72, 70.27), (82.41, 62.95, 71.38)),
    "EuroSAT": ((56.48, 64.05, 60.03), (92.19, 54.74, 68.69), (87.49, 60.04, 71.21),
                (94.07, 73.23, 82.35), (94.61, 74.06, 83.08), (94.92, 76.27, 84.58)),
    "UCF101": ((70.53, 77.50, 73.85), (84.69, 56.05, 67.46), (82.33, 73.45, 77.64),
               (83.00, 78.66, 80.77), (85.19, 79.22, 82.10), (87.67, 78.91, 83.06)),
}
_B2N_AVERAGE = ((69.34, 74.22, 71.70), (82.69, 63.22, 71.66), (80.47, 71.69, 75.83),
                (82.28, 75.14, 78.55), (83.22, 75.94, 79.41), (84.21, 77.32, 80.62))

#: {method: {dataset: (base, new, hm)}}, datasets of B2N_DATASETS
BASE2NEW = {m: {d: _B2N_ROWS[d][i] for d in B2N_DATASETS} for i, m in enumerate(METHODS)}
#: {method: (base, new, hm)}: the published average over the 11 datasets
BASE2NEW_AVERAGE = dict(zip(METHODS, _B2N_AVERAGE))

XD_TARGETS = ("Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "FGVCAircraft",
              "SUN397", "DescribableTextures", "EuroSAT", "UCF101")
_XD_ROWS = (  # ImageNet (source), the 10 targets, published average of the targets
    (66.73, 93.31, 89.10, 65.64, 70.73, 85.86, 24.72, 62.58, 44.39, 48.28, 67.72, 65.23),
    (71.51, 93.70, 89.14, 64.51, 68.71, 85.30, 18.47, 64.15, 41.92, 46.39, 66.55, 63.88),
    (71.02, 94.43, 90.14, 65.32, 71.88, 86.06, 22.94, 67.36, 45.73, 45.37, 68.21, 65.74),
    (70.72, 93.53, 90.49, 65.57, 72.23, 86.20, 24.74, 67.01, 46.49, 48.06, 68.69, 66.30),
    (72.30, 95.45, 91.60, 67.09, 72.36, 88.60, 25.21, 68.11, 47.86, 48.22, 69.30, 67.38),
    (73.27, 94.81, 92.73, 68.67, 72.60, 87.74, 25.85, 68.70, 48.04, 49.43, 69.98, 67.86),
)
#: {method: {dataset: accuracy}} with the source ImageNet, the 10 targets and "Average" (of the targets)
CROSS_DATASET = {m: dict(zip(("ImageNet",) + XD_TARGETS + ("Average",), row)) for m, row in zip(METHODS, _XD_ROWS)}

DG_TARGETS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
_DG_ROWS = (
    (66.73, 60.83, 46.15, 47.77, 73.96),
    (71.51, 64.20, 47.99, 49.71, 75.21),
    (71.02, 64.07, 48.75, 50.63, 76.18),
    (70.72, 64.07, 49.15, 50.90, 76.98),
    (72.30, 64.28, 50.83, 51.14, 76.53),
    (73.27, 65.35, 50.36, 52.23, 78.02),
)
#: {method: {dataset: accuracy}} with the source ImageNet and its four variants
DOMAIN_GENERALIZATION = {m: dict(zip(("ImageNet",) + DG_TARGETS, row)) for m, row in zip(METHODS, _DG_ROWS)}
