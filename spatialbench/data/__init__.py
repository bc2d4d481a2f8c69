"""Data sources: synthetic scenes and (later) real datasets, as examples over images."""
