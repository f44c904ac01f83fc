"""emanet.deploy."""
