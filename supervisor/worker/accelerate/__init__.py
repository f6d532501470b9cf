"""A custom training loop on Hugging Face accelerate."""
