"""Ladder files shipped with oomladder: default.yaml is the ladder used when --ladder is left out."""
