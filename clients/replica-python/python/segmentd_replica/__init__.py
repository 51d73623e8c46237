"""segmentd's segment membership inside a Python process.

    from segmentd_replica import Replica

    replica = Replica("http://127.0.0.1:50051", ["good", "golfers"], token="...")
    replica.wait_ready(timeout=10)
    replica.is_member("C000000042", "good")   # True, False, or None for an unknown customer

The replica follows the server (`Replication.Follow`, role `reader`) on a thread of its own:
a consistent snapshot, then every change in order, reconnecting and resuming by itself. Checks
read its table without locks and without a network call.
"""

from segmentd_replica._native import NotReady, Replica, ReplicaError, Stale, UnknownSegment

__all__ = ["Replica", "ReplicaError", "NotReady", "UnknownSegment", "Stale"]
