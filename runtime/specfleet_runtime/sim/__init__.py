"""A vLLM stand-in for tests, demos and benchmarks: the same OpenAI endpoints, /health and
`vllm:*` metrics (speculative decoding counters included), timed by specfleet's performance
model so a simulated H100 behaves like one in shape.

- `engine`: the pure core (admission, steps, acceptance sampling); no clock, no I/O.
- `vllm_metrics`: vLLM's metric families as data.
- `exporter`: those families in a prometheus-client registry.
- `server`: the aiohttp shell; `cli`: the `specfleet-sim` console script.
- `capability`: the seam where a simulator stands in for models of different strength and
  for a judge of their answers (`--capability`).
"""
