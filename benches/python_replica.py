"""Membership checks from Python: the replica binding (segmentd_replica) against the gRPC
client's IsMember, on the same server and customers. Prints the time per check (the median of
rounds of 100,000 calls for the replica, 2,000 for gRPC; random known customers) and one JSON line.

    pip install ./clients/python ./clients/replica-python
    python benches/python_replica.py target/release/segmentd [customers]
"""

import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from segmentd import Client
from segmentd_replica import Replica

SEGMENTS = 20


def main() -> None:
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tempfile.mkdtemp()
    server = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--fsync", "never"],
        stderr=subprocess.DEVNULL,
    )
    try:
        client = Client(f"127.0.0.1:{port}", timeout=120)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.stats()
                break
            except Exception:
                assert time.monotonic() < deadline, "segmentd did not start"
                time.sleep(0.1)
        client.load_customers(
            ({"customer_id": f"C{i:08}", "attributes": {"household_size": i % 100}} for i in range(n)),
            batch_size=10_000,
        )
        ids = [f"s{k:02}" for k in range(SEGMENTS)]
        for k, sid in enumerate(ids):
            client.create_segment(sid, rule_text=f"household_size >= {k * 5}")
        started = time.perf_counter()
        replica = Replica(f"http://127.0.0.1:{port}", ids)
        replica.wait_ready(timeout=120)
        bootstrap = time.perf_counter() - started

        rng = random.Random(7)
        sample = [f"C{rng.randrange(n):08}" for _ in range(100_000)]
        segs = [ids[i % SEGMENTS] for i in range(len(sample))]
        pairs = list(zip(sample, segs))

        def rounds(check, calls, count):
            per_call = []
            for _ in range(count):
                part = pairs[:calls]
                t0 = time.perf_counter_ns()
                for cid, sid in part:
                    check(cid, sid)
                per_call.append((time.perf_counter_ns() - t0) / calls)
            return statistics.median(per_call)

        # Alternating, so the machine's noise falls on both.
        replica_ns, grpc_ns, check20_ns = [], [], []
        for _ in range(3):
            replica_ns.append(rounds(replica.is_member, 100_000, 3))
            grpc_ns.append(rounds(client.is_member, 2_000, 1))
            t0 = time.perf_counter_ns()
            for cid in sample[:20_000]:
                replica.check(cid, ids)
            check20_ns.append((time.perf_counter_ns() - t0) / 20_000)
        # Agreement on a sample: the replica answers as the server does.
        for cid, sid in pairs[:2_000]:
            assert replica.is_member(cid, sid) == client.is_member(cid, sid), (cid, sid)
        result = {
            "customers": n,
            "segments": SEGMENTS,
            "replica_is_member_ns": round(statistics.median(replica_ns)),
            "replica_check20_ns": round(statistics.median(check20_ns)),
            "grpc_is_member_ns": round(statistics.median(grpc_ns)),
            "bootstrap_s": round(bootstrap, 3),
            "replica_bytes_per_customer": round(replica.status()["bytes"] / n, 2),
        }
        print(f"| from Python, {n:,} customers | per call |")
        print("|---|---|")
        print(f"| `Replica.is_member` (segmentd_replica) | {result['replica_is_member_ns']} ns |")
        print(f"| `Replica.check`, 20 segments | {result['replica_check20_ns']} ns |")
        print(f"| `Client.is_member` (gRPC, loopback) | {result['grpc_is_member_ns']} ns |")
        print(json.dumps(result))
        replica.close()
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
