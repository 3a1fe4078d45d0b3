"""The model registry: adapters at rest (encrypted when a key is set) and their checks."""
