#!/usr/bin/env python3
"""How closely `ikukantai sim` agrees with `ikukantai bench` (docs/simulation.md, "Agreement").

Usage: sim-agreement.py EMULATOR_DIR SIM_DIR SCENARIO...
Each DIR/SCENARIO/report.json comes from `bench` / `sim` with `--runs N` (N >= 2 for a spread).

Per (set, users, origin): the cell agrees when the simulator's p50 and p90 (pooled over its runs)
lie within the emulator's range over its runs widened by 15 % or 2 ms, and its local share within
that range widened by 10 points. Also counted with the single-run rule (both percentiles within
15 % or 2 ms, local share within 10 points): the simulator against each emulator run, and the
emulator's runs against each other — how far a cell moves between runs of the emulator itself.
"""
import json
import sys


def cells(path):
    d = json.load(open(path))
    key = lambda r: (r["set"], r["users"], r["origin"])
    keep = lambda r: r["origin"] != "all" and r.get("function", "all") == "all"
    pooled = {key(r): r["stats"] for r in d["rows"] if keep(r)}
    spread = {key(r): r for r in d.get("spread", []) if keep(r)}
    return pooled, spread


def slack(v):
    return max(2.0, 0.15 * abs(v))


def in_range(x, runs, widen):
    lo, hi = min(runs), max(runs)
    return lo - widen(lo) <= x <= hi + widen(hi)


def close(a, b):
    return abs(a - b) <= slack(a)


def one_run_agrees(p50, p90, local, q50, q90, qlocal):
    return close(p50, q50) and close(p90, q90) and abs(local - qlocal) <= 0.10


def main(emulator, sim, scenarios):
    agree = total = single = single_n = 0
    pairs = pairs_n = 0
    by_set = {}
    for s in scenarios:
        _, spread = cells(f"{emulator}/{s}/report.json")
        pooled, _ = cells(f"{sim}/{s}/report.json")
        print(f"\n`{s}`:\n")
        print("| set | users | origin | emulator p50 per run | p90 per run | local per run | simulator p50 / p90 / local | agrees |")
        print("|---|---|---|---|---|---|---|---|")
        for k, e in spread.items():
            m = pooled[k]
            ok = (in_range(m["p50"], e["p50"], slack) and in_range(m["p90"], e["p90"], slack)
                  and in_range(m["local_share"], e["local"], lambda _: 0.10))
            agree += ok
            total += 1
            tally = by_set.setdefault(k[0], [0, 0])
            tally[0] += ok
            tally[1] += 1
            runs = list(zip(e["p50"], e["p90"], e["local"]))
            for r in runs:
                single += one_run_agrees(*r, m["p50"], m["p90"], m["local_share"])
                single_n += 1
            for i, a in enumerate(runs):
                for b in runs[i + 1:]:
                    pairs += one_run_agrees(*a, *b)
                    pairs_n += 1
            ms = lambda v: " / ".join(f"{x:.1f}" for x in v)
            pct = " / ".join(f"{x * 100:.0f}" for x in e["local"])
            sim_cell = f"{m['p50']:.1f} / {m['p90']:.1f} / {m['local_share'] * 100:.0f} %"
            print(f"| {k[0]} | {k[1]} | {k[2]} | {ms(e['p50'])} | {ms(e['p90'])} | {pct} % | {sim_cell} | {'yes' if ok else '**no**'} |")
    print(f"\nWithin the emulator's spread: {agree} of {total} cells; by set: "
          + ", ".join(f"{k} {a} of {n}" for k, (a, n) in by_set.items()))
    print(f"Single-run rule, simulator against each emulator run: {single} of {single_n}; "
          f"emulator runs against each other: {pairs} of {pairs_n}.")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
