from oomladder.cli import entry

entry()
