"""Which image names the real node's containerd may forget after a load (e2e/node.py): the ID
names of builds that a newer one under the same tag replaced, and nothing a tag still needs."""

from __future__ import annotations

from e2e.node import replaced_image_ids

# `ctr images ls` as containerd prints it, the media types shortened.
LISTING = """\
REF                                     TYPE             DIGEST     SIZE      PLATFORMS   LABELS
docker.io/specfleet/runtime:0.1.0       manifest.v1+json sha256:m2  152.0 MiB linux/amd64 -
registry.k8s.io/pause:3.10.2            index.v1+json    sha256:ix  660.0 KiB linux/amd64 -
sha256:c1                               manifest.v1+json sha256:m1  152.0 MiB linux/amd64 -
sha256:c2                               manifest.v1+json sha256:m2  152.0 MiB linux/amd64 -
sha256:cp                               index.v1+json    sha256:ix  660.0 KiB linux/amd64 -
"""
CONFIGS = {"sha256:m1": {"sha256:c1"}, "sha256:m2": {"sha256:c2"}, "sha256:ix": {"sha256:cp"}}


def test_only_the_ids_of_replaced_builds_are_forgotten() -> None:
    looked_up: list[str] = []

    def configs(digest: str) -> set[str]:
        looked_up.append(digest)
        return CONFIGS[digest]

    # c1 was runtime's build before m2 replaced it; c2 and the pause index's cp are in use.
    assert replaced_image_ids(LISTING, configs) == ["sha256:c1"]
    # Only tags' targets are looked up: an ID's own target says nothing about what is named.
    assert sorted(looked_up) == ["sha256:ix", "sha256:m2"]


def test_nothing_is_forgotten_when_every_id_is_named() -> None:
    current = "\n".join(line for line in LISTING.splitlines() if "sha256:c1 " not in line)
    assert replaced_image_ids(current, CONFIGS.__getitem__) == []
    assert replaced_image_ids(LISTING.splitlines()[0], CONFIGS.__getitem__) == []
