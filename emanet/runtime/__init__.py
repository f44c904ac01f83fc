"""emanet.runtime."""
