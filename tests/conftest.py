"""Test-wide settings.

TRITON_INTERPRET must be set before anything imports triton (torchao does), so that the kernel
tests run Triton's CPU interpreter rather than looking for a GPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
