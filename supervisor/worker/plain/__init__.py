"""A plain PyTorch program, through the public API (`oomladder.api`)."""
