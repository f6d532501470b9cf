"""The Hugging Face Trainer (and TRL's trainers, its subclasses) and `from_pretrained`."""
