"""``python -m specfleet_runtime.capture``: a capture's writer process
(``specfleet_runtime.capture.child``), started by the capture it writes for."""

from specfleet_runtime.capture import child

child.main()
