"""specfleet: a Kubernetes operator that serves LLM fleets with vLLM.

`specfleet.api` defines the InferenceModel and RoutingPolicy resources; `specfleet.crdgen` turns
them into CRDs; `specfleet.cli` is the `specfleet` command.
"""
