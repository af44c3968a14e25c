"""The ``astra`` command line: the one place that joins the runtime (:mod:`astra`) and the
experiment harness (:mod:`astra_lab`)."""
from .main import main

__all__ = ["main"]
