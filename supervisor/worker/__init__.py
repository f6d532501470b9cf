"""Code that runs inside the training worker, injected through `sitecustomize` (see hooks/inject/).

It must stay importable without rich, yaml or the runner, and must never break the user's
program: everything it patches is wrapped so that a failure of the adapter is reported and the
program runs on unchanged.
"""
