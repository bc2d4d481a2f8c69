"""Model adapters: one module per resampler family, behind the contract in base.py."""
