"""d2lightning."""
