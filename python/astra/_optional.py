"""Optional dependencies: import one where a feature needs it, or fail naming the extra that installs it.

    faiss = require("faiss", extra="calibrate", purpose="k-means calibration")
    # without faiss: MissingDependency: k-means calibration needs faiss: pip install 'astra-inference[calibrate]'

The extras are declared in pyproject.toml ([project.optional-dependencies]).
"""
from __future__ import annotations

import importlib
from types import ModuleType

DISTRIBUTION = "astra-inference"


class MissingDependency(ModuleNotFoundError):
    """An optional package is not installed; ``extra`` is the extra of astra-inference that installs it."""

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(f"{purpose} needs {module}: pip install '{DISTRIBUTION}[{extra}]'", name=module)
        self.extra = extra


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"faiss"``, ``"tqdm.auto"``); raise :class:`MissingDependency`, naming its
    top-level package, if it or a package above it is not installed. A module that is installed but fails
    inside its own imports (e.g. one of its dependencies is missing) raises that error unchanged."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise
        raise MissingDependency(exc.name.partition(".")[0], extra, purpose) from exc
