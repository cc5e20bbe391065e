"""Applying a plan's parallel layout to a model from the outside (torchtitan style): a named
DeviceMesh, tensor/sequence, expert, pipeline and data parallelism, activation recompute."""

from .mesh import LayoutError, Mesh, ParallelDims, build_mesh
from .parallelize import ParallelModel, parallelize

__all__ = ["LayoutError", "Mesh", "ParallelDims", "ParallelModel", "build_mesh", "parallelize"]
