#!/usr/bin/env python3
"""Where a bulk load's time goes, thread by thread (Linux).

Runs the load bench binary (`cargo bench --bench load --no-run` prints its path) and, over its
timed phase only (from the end of generation to the throughput line), reads every thread's
`/proc/<pid>/task/<tid>/schedstat`: the time each ran on a core and the time it was ready to
run but waited for one. Threads are summed by name (`writer`, `server`: async workers and batch
parsing, `client`, `wal-sync`, `reclaimer`). Also prints the machine's idle, steal (time the
hypervisor took) and system CPU seconds from /proc/stat over the same phase.

    python3 benches/thread_times.py target/release/deps/load-<hash> [NAME=VALUE ...]

NAME=VALUE pairs are set in the bench's environment (SEGMENTD_BENCH_FSYNC=never, ...). The
threads are read every 20 ms, so the last 20 ms of the phase may be missed.
"""

import collections
import os
import subprocess
import sys
import tempfile
import time


def threads(pid):
    """tid -> (name, ns on a core, ns waiting for one)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ran, waited, _ = f.read().split()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        out[tid] = (name, int(ran), int(waited))
    return out


def machine():
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    env = dict(os.environ)
    for pair in sys.argv[2:]:
        name, _, value = pair.partition("=")
        env[name] = value
    with tempfile.TemporaryDirectory() as tmp:
        out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        with open(out_path, "w") as out, open(err_path, "w") as err:
            bench = subprocess.Popen([sys.argv[1], "--bench"], stdout=out, stderr=err, env=env)

        def said(path, text):
            with open(path) as f:
                return text in f.read()

        # Generation ends with a line about bytes per customer on stderr.
        while not said(err_path, "per customer"):
            if bench.poll() is not None:
                sys.exit(open(err_path).read())
            time.sleep(0.005)
        start = (threads(bench.pid), machine())
        end = start
        while not said(out_path, "customers/s"):
            now = (threads(bench.pid), machine())
            if said(out_path, "customers/s"):
                break
            end = now
            time.sleep(0.02)
        bench.wait()
        with open(out_path) as f:
            rate = f.readline().split("= ")[-1].strip()

    by_name = collections.defaultdict(lambda: [0.0, 0.0])
    for tid, (name, ran, waited) in end[0].items():
        ran0, waited0 = start[0].get(tid, (name, 0, 0))[1:]
        by_name[name][0] += (ran - ran0) / 1e9
        by_name[name][1] += (waited - waited0) / 1e9
    ticks = os.sysconf("SC_CLK_TCK")
    d = [(b - a) / ticks for a, b in zip(start[1], end[1])]
    idle, steal, system = d[3] + d[4], d[7], d[2]
    print(f"{rate}  machine: idle {idle:.2f} s, steal {steal:.2f} s, system {system:.2f} s")
    for name, (ran, waited) in sorted(by_name.items(), key=lambda kv: -kv[1][0]):
        if ran >= 0.005:
            print(f"  {name:<16} ran {ran:5.2f} s, waited for a core {waited:5.2f} s")


if __name__ == "__main__":
    main()
