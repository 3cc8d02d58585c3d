"""How a request is judged for routing: the part of the router that must be the same online
and offline.

Part of the shared core (no network, no clock; only ``learned`` reads and writes a file): the
router (``specfleet_runtime.router``) runs it on every request, and whatever scores requests
away from the router (training and evaluating a classifier on captured traffic) runs the same
code, so the two can never judge a request differently.

``request`` parses a body into a ``ParsedRequest`` (the text, its length, the output cap);
``heuristic`` classifies it (complexity, expected output tokens, categories); ``choice``
applies a policy's overrides and tiers to that classification, before readiness and fallback,
which stay the router's. ``features`` is what a classifier learned from labelled requests sees
of one, and ``learned`` that classifier's artifact (one JSON file, checked whole at load) and
its scorer, which picks a tier for a request from its features.
"""
