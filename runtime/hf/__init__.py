"""Hugging Face checkpoints in and out: load a local checkpoint into vlac's model under any
parallel layout (load.py; CLIP/SigLIP vision towers: vision.py, tower_load.py, pixels.py), export a
distributed checkpoint as a Hugging Face one (export.py)."""
