"""The manifest corpora the unit tests (pydantic) and the e2e tests (the API server) share.

`tests/manifests/invalid/*.yaml` each hold one resource that must be refused; their
`# expect: TEXT` header lines name what every refusal must mention (the field, and for
cross-field rules what to do), whoever refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID_DIR = ROOT / "tests" / "manifests" / "invalid"


@dataclass(frozen=True)
class Invalid:
    """One manifest that must be refused, and what the refusal must say."""

    path: Path
    expects: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.path.stem

    @property
    def text(self) -> str:
        return self.path.read_text()


def invalid_manifests() -> list[Invalid]:
    cases = []
    for path in sorted(INVALID_DIR.glob("*.yaml")):
        expects = tuple(
            line.removeprefix("# expect:").strip()
            for line in path.read_text().splitlines()
            if line.startswith("# expect:")
        )
        if not expects:
            raise ValueError(f"{path}: add a '# expect: TEXT' line naming the field")
        cases.append(Invalid(path, expects))
    return cases
