"""Data: image and mask reading, MVTec AD category folders and the seen-anomaly protocol split."""

from prnad.data.images import IMAGE_SUFFIXES, list_images, read_mask, read_rgb, read_rgb_full, to_rgb
from prnad.data.layouts import detect_layout, scan_data, scan_dataset
from prnad.data.mvtec import (
    Category,
    Sample,
    file_sha256,
    held_out_split,
    load_samples,
    relative_paths,
    require_both_classes,
    scan_category,
    seen_anomalies,
    split_seen_anomalies,
    write_tiny_category,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "Category",
    "Sample",
    "detect_layout",
    "file_sha256",
    "held_out_split",
    "list_images",
    "load_samples",
    "read_mask",
    "read_rgb",
    "read_rgb_full",
    "relative_paths",
    "require_both_classes",
    "scan_category",
    "scan_data",
    "scan_dataset",
    "seen_anomalies",
    "split_seen_anomalies",
    "to_rgb",
    "write_tiny_category",
]
