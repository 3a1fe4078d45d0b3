"""Model backends: one small interface (``engine.serving.base``) behind which evaluation, the
deploy probe and ``/ask`` generate text — in-process with transformers + peft
(``engine.serving.inprocess``, the embedded default) or through a vLLM server."""
