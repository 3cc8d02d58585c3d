"""The router: one OpenAI-compatible endpoint in front of a RoutingPolicy's InferenceModels.

Pure core, thin shell. How a request is judged is the shared core's ``specfleet.routing``
(``request`` turns a body into a ``ParsedRequest``, ``heuristic`` scores it, ``choice`` applies
the policy's overrides and tiers), the same code that judges captured requests offline. Here,
``config`` rereads the mounted configuration file (whose format, what the operator renders from
a RoutingPolicy, is ``specfleet.api.routerconfig``); ``keys`` reads the clients' API keys;
``routing`` picks the backend and its fallback by readiness; ``errors`` is the router's branch
of the runtime's one exception tree (``specfleet_runtime.errors``). None of these touch the
network or the clock. ``metrics`` defines ``specfleet_router_*``, ``app`` is the aiohttp
application (forwarding through the shared ``specfleet_runtime.proxy`` core) and ``cli`` the
``specfleet-router`` command.
"""
