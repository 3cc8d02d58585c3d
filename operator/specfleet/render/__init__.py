"""Manifests from specs: pure functions, no I/O.

`render.inferencemodel` builds what serves one InferenceModel; `render.vllm` is the vLLM command
line dialect it uses.
"""
