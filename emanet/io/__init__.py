"""emanet.io."""
