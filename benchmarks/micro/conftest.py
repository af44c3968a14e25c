"""Every microbenchmark runs on one thread (torch, and faiss where it is installed); an op that times two threads
sets them itself, inside its test."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    try:
        import faiss
    except ImportError:
        faiss = None
    threads = torch.get_num_threads()
    faiss_threads = faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(faiss_threads)
