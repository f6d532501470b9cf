"""The file protocol between a worker and its supervisor: the files a worker leaves, and what it reports in them."""
