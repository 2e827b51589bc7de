#!/usr/bin/env python3
"""What each policy set ran to serve its load: instance-seconds from `sim` or `bench` reports.

Usage: instance-seconds.py REPORT_DIR...
Each REPORT_DIR holds a report.json. Per set, the instances running (started, not yet stopped:
starting ones count, for they hold their room) integrated over the run, from its first level's
start to its last level's end, summed over the reports given; then each set against the first.
"""
import json
import sys


def instance_seconds(run):
    """One run's instance-seconds: its instance events in time order, integrated."""
    events, end = [], 0.0
    for level in run["levels"]:
        end = max(end, level["began"] + level["seconds"])
        for e in level.get("instances", []):
            if e["change"] in ("started", "stopped"):
                events.append((e["at"], 1 if e["change"] == "started" else -1))
    events.sort()
    running, since, total = 0, 0.0, 0.0
    for at, step in events:
        total += running * (at - since)
        running, since = running + step, at
    return total + running * max(0.0, end - since)


def main(dirs):
    totals = {}
    for d in dirs:
        for run in json.load(open(f"{d}/report.json"))["runs"]:
            name = run["set"]["name"]
            totals[name] = totals.get(name, 0.0) + instance_seconds(run)
    if not totals:
        sys.exit("no runs in the reports given")
    first = next(iter(totals.values()))
    for name, total in totals.items():
        print(f"{name:12} {total:12.0f} instance-seconds  {total / first:6.3f} of the first")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
