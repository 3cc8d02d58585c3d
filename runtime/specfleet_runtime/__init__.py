"""specfleet's data path: the processes that run beside or in front of vLLM."""
