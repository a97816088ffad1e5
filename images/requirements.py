"""Print kubeslim's pinned requirements for some extras, one a line, from pyproject.toml.

The images install these in a layer of their own, keyed by pyproject.toml alone, so that
a change to kubeslim's sources reuses the installed dependencies from the layer cache:

    python images/requirements.py pyproject.toml runtime,s3 > requirements.txt
"""

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as fh:
        project = tomllib.load(fh)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"extras: {unknown[0]!r} is not in {pyproject}")
    return [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], [e for e in sys.argv[2].split(",") if e])))
