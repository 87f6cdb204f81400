"""Data: image and mask reading, MVTec AD category folders and the seen-anomaly protocol split."""

from prnad.data.images import IMAGE_SUFFIXES, list_images, read_mask, read_rgb
from prnad.data.mvtec import (
    Category,
    Sample,
    load_samples,
    scan_category,
    split_seen_anomalies,
    write_tiny_category,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "Category",
    "Sample",
    "list_images",
    "load_samples",
    "read_mask",
    "read_rgb",
    "scan_category",
    "split_seen_anomalies",
    "write_tiny_category",
]
