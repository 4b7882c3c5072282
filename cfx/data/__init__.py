"""Data: the MVTec AD layout, image reading, the demo generator and synthetic anomalies."""
from cfx.data.mvtec import (Arrays, MVTecDataset, Sample, list_categories, list_samples, validate_root,
                            OFFICIAL_CATEGORIES)

__all__ = ["Arrays", "MVTecDataset", "Sample", "list_categories", "list_samples", "validate_root",
           "OFFICIAL_CATEGORIES"]
