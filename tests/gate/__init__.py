"""Tests of the gate sidecar (specfleet_runtime.gate) and the proxy core it uses."""
