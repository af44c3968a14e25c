"""Synthetic benchmark rows, as the bench ranks write them, for the report and driver tests."""


def make_row(method, bw, latency, *, groups=None, ranks=2, wait=0.0, sent=(0, 0), formulation=None, **extra):
    row = {
        "model": "gpt2-small", "method": method, "ranks": ranks, "setting_ranks": 2, "groups": groups,
        "bandwidth_mbps": bw, "link": "sim", "topology": "star", "latency_s": latency, "comm_wait_s": wait,
        "compute_s": latency - wait, "bytes_on_wire": sum(sent), "bytes_sent_per_rank": list(sent), **extra,
    }
    if formulation:
        row["remote_formulation"] = formulation
    return row


def synthetic_rows():
    rows = []
    for bw, single, astra, sp in [(10.0, 1.234, 0.611, 2.875), (100.0, 1.201, 0.598, 0.777)]:
        rows.append(make_row("single", bw, single, ranks=1))
        rows.append(make_row("astra", bw, astra, groups=16, wait=0.011, sent=(4096, 0), formulation=["codewords", "tokens"]))
        rows.append(make_row("sp_fp32", bw, sp, wait=sp - 0.5, sent=(98304, 0)))
    for r in rows:
        single = next(s for s in rows if s["method"] == "single" and s["bandwidth_mbps"] == r["bandwidth_mbps"])
        r["speedup_vs_single"] = single["latency_s"] / r["latency_s"]
    return rows
