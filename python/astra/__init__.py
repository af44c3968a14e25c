"""ASTRA runtime: sequence-parallel Transformer inference over slow links.

Each device keeps its own tokens at full precision and, once per block,
sends the other devices only the bit-packed VQ codes of its tokens; remote
tokens are attended through codebook lookups (Mixed-Precision Attention).

    >>> import astra
    >>> books = astra.calibrate(model, batches, codebook_size=1024, groups=1)
    >>> engine = astra.AstraEngine(model, books)
    >>> logits = engine.forward(inputs, world_size=4)        # single-process simulation
    >>> # on each of N processes (torchrun / mpirun / astra run --ranks N):
    >>> with astra.parallelize(model, books, transport="gloo") as par:
    ...     local_logits = par(inputs)
"""
from .calibrate import calibrate
from .codebooks import Codebooks
from .engine import AstraEngine, KVCache, PhaseTimer
from .generate import Sampling
from .handshake import HandshakeError
from .models import TinyTransformer, adapt
from .parallel import ParallelModel, parallelize
from .partition import Layout
from .transport import PeerError, TransportFailed

__all__ = ["AstraEngine", "Codebooks", "HandshakeError", "KVCache", "Layout", "ParallelModel", "PeerError",
           "PhaseTimer", "Sampling", "TinyTransformer", "TransportFailed", "adapt", "calibrate", "parallelize"]
