"""Tokenizers trained on the user's data (BPE for text, EMA VQ for images/video) and their saved format."""
