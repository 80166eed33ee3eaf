"""Model files and modules: finding the checkpoint, strict weight mapping, tokenizer, the trainable
heads and DiT, the null embedding, loading them all, and downloading the public release."""
