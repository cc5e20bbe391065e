"""The executors `vlac.submit` sends an emitted program to (vlac.submission documents each). A
module of its own, importing nothing, so that an emitted launch.py can list them in its --help
without importing the compiler, torch and submitit."""

EXECUTORS = ("local", "slurm", "debug")
