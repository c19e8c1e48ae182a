"""Data layer: dataset registry, folder scanning and validation, splits, transforms."""
