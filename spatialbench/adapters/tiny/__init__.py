"""Tiny checkpoints built in code, so tests and the demo run offline with the real loading path.

builds.py lists every build by name (`tiny:<name>` in a card) and materialises it on first use; one module
per family holds its builders; the pretrained testbed's builds come from spatialbench.testbed.
"""

IMAGE_SIZE = 64  # the pixel size of every tiny checkpoint
