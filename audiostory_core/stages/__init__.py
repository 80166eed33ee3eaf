"""The pipeline's stages in order: grammar and prompt, plan decoding (reference and fast), event
tokens, DiT sampling, VAE decode and stitching."""
