"""The Python binding against a real segmentd: the replica's answers are the server's."""

import pathlib
import time

import pytest

from segmentd.testing import free_port, local_server, server_binary
from segmentd_replica import NotReady, Replica, Stale, UnknownSegment

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture
def server():
    with local_server(server_binary(REPO)) as s:
        yield s.client, f"http://127.0.0.1:{s.port}", s.process


def customers(n):
    for i in range(n):
        yield {
            "customer_id": f"C{i}",
            "attributes": {"gender": "F" if i % 2 else "M", "household_size": 1 + i % 5},
        }


def eventually(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.01)


def test_the_replica_answers_as_the_server_does_and_follows_its_changes(server):
    client, addr, _ = server
    client.load_customers(customers(300))
    client.create_segment("women", rule_text='gender = "F"')
    client.create_segment("big", rule_text="household_size >= 4")
    client.create_segment("golfers", allow_activities=True)
    segments = ["women", "big", "golfers"]

    with Replica(addr, segments) as replica:
        replica.wait_ready(timeout=20)
        for n in range(300):
            cid = f"C{n}"
            want = client.check_memberships(cid, segments)
            assert replica.check(cid, segments) == [want[s] for s in segments], cid
            assert replica.is_member(cid, "women") == want["women"]
            assert replica.segments_of(cid) == sorted(s for s in segments if want[s])
        assert replica.size("women") == client.get_segment("women").size == 150

        # Unknown customers are told apart from non-members; unfollowed segments raise.
        assert replica.is_member("nobody", "women") is None
        assert replica.check("nobody", segments) is None
        with pytest.raises(UnknownSegment):
            replica.is_member("C1", "vip")

        # Changes arrive: an activity, a new customer, an erasure.
        client.add_to_segment("golfers", ["C7"], activity_id="golf-week")
        client.upsert_customers([{"customer_id": "NEW", "attributes": {"gender": "F"}}])
        client.delete_customer("C1")
        eventually(lambda: replica.is_member("C7", "golfers") is True)
        eventually(lambda: replica.is_member("NEW", "women") is True)
        eventually(lambda: replica.is_member("C1", "women") is None)

        status = replica.status()
        assert status["ready"] and status["connected"]
        assert status["customers"] == 300
        assert sorted(status["segments"]) == sorted(segments)
        assert status["bytes"] > 0


def test_not_ready_before_a_snapshot_and_stale_once_the_server_is_gone(server):
    client, addr, proc = server
    client.create_segment("women", rule_text='gender = "F"')
    nowhere = Replica(f"http://127.0.0.1:{free_port()}", ["women"], connect_timeout=0.2)
    with pytest.raises(NotReady):
        nowhere.is_member("C1", "women")
    with pytest.raises(NotReady):
        nowhere.wait_ready(timeout=0.3)
    nowhere.close()

    with pytest.raises(ValueError):
        Replica(addr, ["women"], max_staleness=-1.0)
    # No segments named: every segment is followed.
    replica = Replica(addr, max_staleness=0.5)
    replica.wait_ready(timeout=20)
    assert replica.is_member("C1", "women") is None
    assert replica.status()["segments"] == ["women"]
    proc.terminate()
    proc.wait(timeout=20)
    eventually(lambda: _raises_stale(replica), timeout=5)
    replica.close()


def _raises_stale(replica) -> bool:
    try:
        replica.is_member("C1", "women")
        return False
    except Stale:
        return True
