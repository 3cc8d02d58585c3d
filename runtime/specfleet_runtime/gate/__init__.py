"""The gate sidecar: a live batch limit in front of one vLLM server, without restarts.

vLLM reads ``--max-num-seqs`` once at start, so the operator runs vLLM at its ceiling and puts
this gate beside it in the pod. ``admission`` holds the limit and the queue, ``limit`` reads the
limit file the operator's ConfigMap mounts, ``metrics`` defines ``specfleet_gate_*``, ``app`` is
the HTTP application and ``cli`` the ``specfleet-gate`` command.
"""
