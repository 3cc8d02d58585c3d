"""The router's configuration file at run time: rereading it while the router runs.

The format (what the operator renders from a RoutingPolicy, and what every field means) is
``specfleet.api.routerconfig``. ``ConfigFile.poll`` rereads the mounted file on every tick
(``specfleet_runtime.watched``: a ConfigMap update swaps a symlink), and reports a configuration
only when the file's text changed to a valid one; a file that is missing or invalid keeps the
last good configuration and is reported once per distinct problem. Called by
``specfleet_runtime.router.app`` (the reload task), ``cli`` (the first load) and tests.
"""

from __future__ import annotations

from specfleet.api import routerconfig
from specfleet_runtime import watched

# A reload needs no hurry: backends change readiness over seconds, and rereading a small file
# once a second costs nothing.
POLL_INTERVAL = 1.0


class ConfigFile(watched.Watched[str, routerconfig.RouterConfig]):
    """Rereads a configuration file and reports the configuration when its content changes."""

    keeping = "the current configuration"

    def read(self) -> str:
        return watched.read_text(self.path, "config file")

    def parse(self, content: str) -> routerconfig.RouterConfig:
        try:
            return routerconfig.parse_config(content)
        except routerconfig.ConfigError as exc:
            raise watched.WatchError(f"config file {self.path}: {exc}") from None
