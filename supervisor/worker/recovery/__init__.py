"""What recovers from an out-of-memory error without losing a step: in-place recovery and split ahead, the emergency
checkpoint, and what a resumed run carries over."""
