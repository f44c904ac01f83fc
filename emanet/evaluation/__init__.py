"""emanet.evaluation."""
