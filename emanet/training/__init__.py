"""emanet.training."""
