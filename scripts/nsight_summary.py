#!/usr/bin/env python3
"""Summaries of Nsight Compute reports of kiln's decode step, for docs/BENCHMARKS.md.

  nsight_summary.py timeline REPORT.ncu-rep   the DRAM read rate over the kernel's time (its PmSampling
                                              section): how much of the time streams and at what rate
  nsight_summary.py samples REPORT.ncu-rep    the same samples, one digit each (tenths of the peak)
  nsight_summary.py stalls SASS.csv           the kernel's warp stall samples (SourceCounters, exported with
                                              `ncu -i REP --page source --csv --print-source sass`) sorted
                                              by where in the step a warp waits

Each prints one line. `timeline` needs Nsight Compute's python module (extras/python of its
install, found on its own under /opt/nvidia/nsight-compute and /usr/local/cuda).
"""
import collections
import csv
import glob
import statistics
import sys

READ_RATE = "dramc__read_throughput.avg.pct_of_peak_sustained_elapsed"
# The DRAM throughput of the Speed Of Light section, by the names Nsight Compute versions give it.
DRAM_PCT = ["gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
            "dram__throughput.avg.pct_of_peak_sustained_elapsed"]


def load_ncu_report(path):
    sys.path += sorted(glob.glob("/opt/nvidia/nsight-compute/*/extras/python"))
    sys.path += sorted(glob.glob("/usr/local/cuda*/nsight-compute*/extras/python"))
    import ncu_report  # noqa: E402 (found through the paths above)
    return ncu_report.load_report(path)


def kernel_window(path):
    """The kernel's action and the DRAM read rate samples (% of peak) over its duration."""
    action = load_ncu_report(path).range_by_idx(0).action_by_idx(0)
    name = next((n for n in action.metric_names() if n.endswith(READ_RATE)), None)
    if name is None:
        sys.exit(f"{path}: no PM sampling of the DRAM read rate (profile with --section PmSampling)")
    metric = action.metric_by_name(name)
    rates = [metric.as_double(i) for i in range(1, metric.num_instances())]  # the first is the origin
    duration_ns = action.metric_by_name("gpu__time_duration.sum").as_double()
    interval_ns = action.metric_by_name("profiler__pmsampler_interval_time").as_double()
    # The samples run on both sides of the kernel: keep the window of its duration that reads the most.
    n = max(1, min(len(rates), round(duration_ns / interval_ns)))
    start = max(range(len(rates) - n + 1), key=lambda i: sum(rates[i:i + n]))
    return action, rates[start:start + n]


def timeline(path):
    action, window = kernel_window(path)
    duration_ns = action.metric_by_name("gpu__time_duration.sum").as_double()
    dram_pct = next(m.as_double() for m in map(action.metric_by_name, DRAM_PCT) if m is not None)
    interval_ns = action.metric_by_name("profiler__pmsampler_interval_time").as_double()
    streaming = [r for r in window if r >= 85]
    starved = sum(1 for r in window if r < 50)
    n = len(window)
    print(f"| {action.name().split('<')[0]} | {duration_ns / 1e3:,.1f} us | {dram_pct:.1f}% | "
          f"{100 * len(streaming) / n:.0f}% of the time at {statistics.mean(streaming or [0]):.1f}% | "
          f"{100 * starved / n:.0f}% below 50% | {interval_ns / 1e3:.1f} us samples |")


def samples(path):
    """Every sample of the window as one digit, the read rate in tenths of the peak (9: 90% and more)."""
    print("".join(str(min(9, int(r // 10))) for r in kernel_window(path)[1]))


def stall_place(source, i):
    """Where the warp at instruction i waits, from the SASS around it."""
    def near(text, lo, hi):
        return any(text in s for s in source[max(0, i + lo):i + hi])
    if near("SYNCS.PHASECHK", -3, 1):
        return "ring slot (its weights)"
    if near("CCTL.IVALL", -2, 3) or "YIELD" in source[i]:
        return "grid barrier, thread 0 polling"
    for j in range(i, max(0, i - 7), -1):
        if "BAR.SYNC" in source[j]:  # the samples land on the instruction after the block barrier
            return "grid barrier, the block behind thread 0" if near("CCTL.IVALL", j - i - 8, j - i) \
                else "block barrier"
    return "products, staging, epilogues"


def stalls(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = next(i for i, r in enumerate(rows) if "Source" in r)
    col = {h: i for i, h in enumerate(rows[header])}
    body = rows[header + 1:]
    source = [r[col["Source"]].strip() for r in body]
    samples = [int(r[col["Warp Stall Sampling (All Samples)"]] or 0) for r in body]
    places = collections.Counter()
    for i, s in enumerate(samples):
        if s:
            places[stall_place(source, i)] += s
    total = sum(places.values())
    print("| " + " | ".join(f"{p} {100 * s / total:.1f}%" for p, s in places.most_common()) + " |")


if __name__ == "__main__":
    commands = {"timeline": timeline, "samples": samples, "stalls": stalls}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](sys.argv[2])
