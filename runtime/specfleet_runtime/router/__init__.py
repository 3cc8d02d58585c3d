"""The router: one OpenAI-compatible endpoint in front of a RoutingPolicy's InferenceModels.

Pure core, thin shell. ``config`` rereads the mounted configuration file (whose format, what
the operator renders from a RoutingPolicy, is ``specfleet.api.routerconfig``); ``keys`` reads
the clients' API keys; ``request`` turns a body into a ``ParsedRequest``; ``classifier`` scores
it; ``routing`` picks the backend and its fallback; ``errors`` is the router's branch of the
runtime's one exception tree (``specfleet_runtime.errors``). None of these touch the network or the
clock. ``metrics`` defines ``specfleet_router_*``, ``app`` is the aiohttp application (forwarding
through the shared ``specfleet_runtime.proxy`` core) and ``cli`` the ``specfleet-router``
command.
"""
