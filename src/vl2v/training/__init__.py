"""Training: the one loop every algorithm uses, SWAD, checkpoints."""
