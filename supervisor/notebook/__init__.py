"""`%load_ext oomladder` in a live IPython or Jupyter kernel: the kernel is the worker of a run that the cells drive.

A notebook run unattended (papermill, `jupyter nbconvert --execute`) needs none of this: its kernel is a child of
the command `oomladder run` starts, and is reached as any training process is (worker/protocol/role.py). This package is
for the notebook a person runs cell by cell, with no supervisor: Trainer steps recover in place, and an OOM that needs
a fresh load is shown as the next plan with the lines to change, journaled and reported as a supervised run's.
"""
