"""Training jobs: runners that launch the training program, and the worker loop."""
