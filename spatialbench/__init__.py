"""spatialbench: does a resampler's visual prompt still encode where things are?"""

__version__ = "0.1.0"
