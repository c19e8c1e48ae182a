"""vl2v: distil a vision-language model into a small, robust image classifier."""

__version__ = "0.1.0"
