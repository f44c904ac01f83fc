"""emanet.fast."""
