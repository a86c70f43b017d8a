"""Optional dependencies: a package above the core says which extra installs what it lacks."""

from __future__ import annotations

import importlib.util


def require_extra(package: str, extra: str, *modules: str) -> None:
    """Raise ``ImportError`` naming ``pip install 'geoflow[extra]'`` if any of ``modules`` (import
    names) is not installed; checked without importing them."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"{package} needs {', '.join(missing)}, which the {extra!r} extra installs: "
                          f"pip install 'geoflow[{extra}]'")
