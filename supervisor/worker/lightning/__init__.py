"""PyTorch Lightning 2.x (`lightning.pytorch` or `pytorch_lightning`)."""
