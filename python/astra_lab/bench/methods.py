"""The methods a bench compares: the single device, ASTRA at each G, and the baselines."""
from __future__ import annotations

import torch

from astra import models
from astra.codebooks import Codebooks
from astra.engine import AstraEngine
from astra.transport import Transport

from .. import baselines


class SingleDevice:
    """The baseline, measured inside the sweep so that it shares the machine's state with the
    other methods: rank 0 runs the unmodified model on its one pinned core, the others wait idle."""

    def __init__(self, model):
        self.adapter = models.adapt(model)

    @torch.no_grad()
    def forward(self, inputs):
        return self.adapter.reference_forward(inputs)

    def run_rank(self, inputs, transport: Transport, *, timer=None):
        return self.forward(inputs) if transport.rank == 0 else None


def build(model, names: list[str], groups: list[int], codebooks: dict[str, str | Codebooks], *,
          table_budget_bytes: int, encode: str, exchange_parts: int | None = None) -> list[tuple[str, int | None, object]]:
    """(name, groups, method) of the single device and of every method in ``names`` ("astra" once per G;
    ``codebooks[str(G)]`` is a codebook file or :class:`Codebooks`)."""
    out = [("single", None, SingleDevice(model))]
    for name in names:
        if name == "astra":
            for g in groups:
                books = codebooks[str(g)]
                books = books if isinstance(books, Codebooks) else Codebooks.load(books)
                out.append(("astra", g, AstraEngine(model, books, table_budget_bytes=table_budget_bytes,
                                                    encode=encode, exchange_parts=exchange_parts)))
        elif name != "single":
            out.append((name, None, baselines.build(name, model)))
    return out
