"""SSH to the boxes, with pinned host keys."""
