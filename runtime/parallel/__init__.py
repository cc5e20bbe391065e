"""Applying a plan's parallel layout to a model from the outside (torchtitan style)."""
