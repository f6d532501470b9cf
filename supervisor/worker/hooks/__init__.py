"""How the adapter gets into a program's process: sitecustomize, the post-import hook, and the hooks on torch, IPython,
the command line and the memory cap."""
