"""Put on the worker's PYTHONPATH: holds only sitecustomize, which loads the adapter."""
