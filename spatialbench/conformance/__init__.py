"""The conformance check every adapter must pass (checks.py): the prompt is exactly what the model feeds its
LLM, and the adapter behaves as it declares. `spatialbench check-adapter` prints it; `spatialbench.testing`
is its public import path for a third-party package's own tests."""
