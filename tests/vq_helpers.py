"""Float64 oracles, input builders and shapes for the VQ tests."""
import torch

# (lead shape, G, K, Dg): group counts of the paper, odd widths, K not a power of two.
VQ_SHAPES = [
    ((37,), 1, 64, 48),
    ((5, 7), 16, 37, 3),
    ((33,), 32, 100, 5),
    ((2, 3, 4), 4, 513, 17),
    ((19,), 2, 1000, 1),
    ((1,), 1, 2, 7),
    ((65,), 8, 260, 24),
]


def true_distances(x: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """All squared distances in float64: x (N, D), codebooks (G, K, Dg) -> (N, G, K)."""
    g, k, dg = codebooks.shape
    xg = x.double().reshape(-1, g, dg)
    cb = codebooks.double()
    return ((xg.unsqueeze(2) - cb.unsqueeze(0)) ** 2).sum(-1)


def assert_nearest(x, codebooks, codes, sqdist, rel=1e-5):
    """The chosen codeword is a nearest one up to rounding, and sqdist is its distance.

    Near-ties may legitimately pick another index in finite precision, so the
    check is on distances: d(chosen) - d(min) <= rel * (||x_g||^2 + max ||e||^2).
    """
    g, k, dg = codebooks.shape
    x = x.reshape(-1, g * dg)
    codes = codes.reshape(-1, g).long().cpu()
    sqdist = sqdist.reshape(-1, g).cpu()
    d = true_distances(x.cpu(), codebooks.cpu())
    assert codes.min() >= 0 and codes.max() < k
    chosen = d.gather(2, codes.unsqueeze(-1)).squeeze(-1)
    best = d.min(-1).values
    scale = (x.double().cpu().reshape(-1, g, dg) ** 2).sum(-1) + (codebooks.double().cpu() ** 2).sum(-1).max(-1).values
    slack = chosen - best
    assert (slack <= rel * scale + 1e-12).all(), f"worst excess distance {slack.max().item():.3g}"
    torch.testing.assert_close(sqdist.double(), chosen, rtol=1e-4, atol=1e-5 * scale.max().item())


def separated_codebooks(g, k, dg, *, dtype=torch.float32, seed=0):
    """(G, K, Dg) codebooks of distinct integer points: any two codewords differ by >= 1
    in some coordinate, so x = codeword + noise of norm < 0.25 has exactly one nearest."""
    gen = torch.Generator().manual_seed(seed)
    radius = int((4 * k) ** (1.0 / dg) / 2) + 1
    groups = []
    for _ in range(g):
        seen, rows = set(), []
        while len(rows) < k:
            p = tuple(torch.randint(-radius, radius + 1, (dg,), generator=gen).tolist())
            if p not in seen:
                seen.add(p)
                rows.append(p)
        groups.append(torch.tensor(rows, dtype=torch.float32))
    return torch.stack(groups).to(dtype)


def near_codewords(codebooks, n, *, seed=0):
    """x (n, D) within 0.2 of known codewords; returns (x, codes (n, G))."""
    gen = torch.Generator().manual_seed(seed)
    g, k, dg = codebooks.shape
    codes = torch.randint(0, k, (n, g), generator=gen)
    x = codebooks.float()[torch.arange(g), codes]  # (n, G, Dg)
    noise = torch.randn(n, g, dg, generator=gen)
    x = x + 0.2 * noise / noise.norm(dim=-1, keepdim=True).clamp_min(1.0) / 1.01
    return x.reshape(n, g * dg).to(codebooks.dtype), codes
