import datetime as dt
import itertools
import threading
import time

import grpc
import pytest

from segmentd import Client, SegmentdError
from segmentd.v1 import admin_pb2, segments_pb2


def customers(n):
    for i in range(n):
        yield {
            "customer_id": f"C{i}",
            "email": f"c{i}@example.com",
            "attributes": {
                "gender": "F" if i % 2 == 0 else "M",
                "birth_date": dt.date(1960 + i % 40, 1 + i % 12, 1 + i % 28),
                "household_size": 1 + i % 5,
                "tags": ["golf"] if i % 10 == 0 else [],
                "registered_at": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
                "vip": i == 7,
            },
        }


def test_load_segments_membership_and_export(client):
    result = client.load_customers(customers(2500), batch_size=1000)
    assert (result.created, result.updated, result.batches) == (2500, 0, 3)
    assert client.stats().customers == 2500

    c = client.get_customer("C7")
    assert c["email"] == "c7@example.com"
    assert c["attributes"]["vip"] is True
    assert c["attributes"]["birth_date"] == dt.date(1967, 8, 8)
    assert c["attributes"]["registered_at"] == dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    assert client.get_customer(email="c8@example.com")["customer_id"] == "C8"

    women = client.create_segment("women", rule_text='gender = "F"', name="Women")
    assert women.size == 1250
    count, sample = client.preview('gender = "F"', sample_size=3)
    assert count == 1250 and len(sample) == 3
    assert client.is_member("C0", "women") and not client.is_member("C1", "women")
    assert not client.is_member("nobody", "women")  # unknown customers are not an error

    client.create_segment("golfers", name="Golfers", allow_activities=True)
    r = client.add_to_segment("golfers", ["C1", "C3"], emails=["unknown@example.com"], activity_id="golf-week")
    assert (r.changed, r.unchanged, r.unknown) == (2, 0, ["unknown@example.com"])
    assert client.check_memberships("C1", ["women", "golfers"]) == {"women": False, "golfers": True}
    assert client.customer_segments("C0") == ["women"]
    client.remove_from_segment("golfers", ["C3"], activity_id="unsubscribe")
    assert not client.is_member("C3", "golfers")

    exported = list(client.export("golfers", fields=["gender"]))
    assert exported == [{"customer_id": "C1", "email": "c1@example.com", "attributes": {"gender": "M"}}]
    assert sum(1 for _ in client.export("women", batch_size=100)) == 1250

    orders = client.record_orders(
        [
            {"order_id": "O1", "customer_id": "C1", "placed_at": dt.datetime(2024, 5, 1), "amount_minor": 150_000},
            {"order_id": "O1", "customer_id": "C1", "placed_at": dt.datetime(2024, 5, 1), "amount_minor": 150_000},
            {"order_id": "O2", "customer_id": "NEW", "placed_at": dt.datetime(2024, 5, 2), "amount_minor": 500},
        ]
    )
    assert (orders.applied, orders.duplicates, orders.created_customer_ids) == (2, 1, ["NEW"])
    good = client.create_segment("good", rule_text="total_spent > 1000")
    assert good.size == 1
    client.update_segment("good", rule_text="total_spent > 1")
    assert client.get_segment("good").size == 2
    assert {s.segment_id for s in client.list_segments()} == {"women", "golfers", "good"}
    client.delete_segment("good")


def test_errors_keep_the_status_code(client):
    with pytest.raises(SegmentdError) as e:
        client.is_member("C1", "no-such-segment")
    assert e.value.code == grpc.StatusCode.NOT_FOUND

    with pytest.raises(SegmentdError) as e:
        client.create_segment("bad", rule_text="age >")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "rule_text" in e.value.details

    bad = [{"customer_id": "X1", "email": "not-an-email"}]
    with pytest.raises(SegmentdError) as e:
        client.load_customers(bad)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "email" in e.value.details
    assert client.stats().customers == 0

    with pytest.raises(TypeError):
        client.upsert_customers([{"customer_id": "X2", "attributes": {"vip": object()}}])


def test_watch_replays_resumes_and_history(client):
    client.load_customers(customers(20))
    client.create_segment("women", rule_text='gender = "F"')
    events = list(itertools.islice(client.watch(0), 10))
    assert [e.sequence for e in events] == list(range(1, 11))
    assert all(e.entered and e.cause == "rule" and e.segment_id == "women" for e in events)
    assert events[0].time.tzinfo is not None

    client.create_segment("golfers", allow_activities=True)
    client.add_to_segment("golfers", ["C1"], activity_id="golf-week")
    resumed = next(client.watch(events[-1].sequence, segment_ids=["golfers"]))
    assert (resumed.sequence, resumed.customer_id, resumed.cause) == (11, "C1", "activity")
    assert resumed.activity_id == "golf-week"

    history = client.membership_history("C1")
    assert [(h.segment_id, h.entered, h.cause) for h in history] == [("golfers", True, "activity")]
    with pytest.raises(SegmentdError) as e:
        next(client.watch(999))
    assert e.value.code == grpc.StatusCode.OUT_OF_RANGE


def test_families_and_rfm(client):
    client.record_orders(
        [
            {"order_id": f"O{i}", "customer_id": f"C{i}", "placed_at": dt.datetime(2026, 1, 1 + i), "amount_minor": 1000 * (i + 1)}
            for i in range(10)
        ]
    )
    family = client.create_family("tiers", [("tiers.top", "total_spent >= 50"), ("tiers.mid", "total_spent >= 20")], "tiers.rest")
    assert [m.size for m in family.members] + [family.catch_all.size] == [6, 3, 1]
    assert client.is_member("C9", "tiers.top") and client.is_member("C0", "tiers.rest")
    r = client.reclassify(as_of=dt.datetime(2026, 2, 1))
    assert r.scored == 10 and len(r.thresholds.frequency) == 4
    rfm = [f for f in client.list_families() if f.family_id == "rfm"][0]
    assert rfm.builtin and sum(m.size for m in rfm.members) == 10


def test_tokens(secured):
    admin, port = secured
    result = admin.load_customers(customers(10))
    assert result.created == 10
    admin.create_segment("women", rule_text='gender = "F"')
    assert next(admin.watch(0)).segment_id == "women"
    with Client(f"127.0.0.1:{port}") as anonymous:
        with pytest.raises(SegmentdError) as e:
            anonymous.is_member("C0", "women")
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(f"127.0.0.1:{port}", token="reader-token-0123456789") as reader:
        assert reader.is_member("C0", "women")
        with pytest.raises(SegmentdError) as e:
            reader.get_customer("C0")
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_mutual_tls(tls_server):
    from conftest import TLS

    client, port = tls_server
    assert client.load_customers(customers(3)).created == 3
    # A client without a certificate is refused at the handshake.
    with Client(f"localhost:{port}", timeout=5, tls_ca=str(TLS / "ca.pem")) as anonymous:
        with pytest.raises(SegmentdError) as e:
            anonymous.stats()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE


def test_server_info_and_snapshot(client):
    info = client.get_server_info()
    assert info.version
    assert info.role == "primary"
    assert info.state == admin_pb2.SERVER_STATE_SERVING
    assert info.fsync == "never"
    client.upsert_customers([{"customer_id": "info-1"}])
    snap = client.snapshot()
    assert snap.sequence >= 1
    assert snap.path.startswith(info.data_dir)
    assert client.get_server_info().last_sequence >= snap.sequence


def test_every_remaining_rpc(client):
    client.load_customers(customers(20))
    # Schema: list, define, use.
    names = {a.name for a in client.get_schema()}
    assert {"gender", "birth_date", "total_spent"} <= names
    attr = client.define_attribute("shoe_size", "int", "EU size")
    assert attr.name == "shoe_size" and not attr.builtin
    with pytest.raises(ValueError):
        client.define_attribute("x", "colour")
    client.upsert_customers([{"customer_id": "C0", "attributes": {"shoe_size": 43}}])
    assert "shoe_size" in {a.name for a in client.get_schema()}

    client.create_segment("women", rule_text='gender = "F"')
    client.create_segment("big_feet", rule_text="shoe_size >= 42")
    checked = client.batch_check_memberships(["C0", "C1", "nobody"], ["women", "big_feet"])
    assert checked == {
        "C0": {"women": True, "big_feet": True},
        "C1": {"women": False, "big_feet": False},
        "nobody": None,
    }

    # Member loads by id and by e-mail, streamed in batches.
    client.create_segment("picked")
    r = client.load_segment_members("picked", ["C1", "C3", "ghost"], emails=["c5@example.com"], batch_size=2)
    assert (r.changed, r.unknown_count, list(r.unknown)) == (3, 1, ["ghost"])
    assert r.batches == 3
    client.load_segment_members("picked", ["C3"], mode="exclude")
    assert client.customer_segments("C3") == []
    with pytest.raises(ValueError):
        client.load_segment_members("picked", ["C1"], mode="maybe")

    why = client.explain_membership("C1", "picked")
    assert why.member and why.decided_by == segments_pb2.DECISION_INCLUDED_CUSTOMER
    overlap = client.segment_overlap(["women", "picked"])
    assert overlap[("women", "women")] == 10 and overlap[("picked", "picked")] == 2
    assert overlap[("women", "picked")] == 0

    family = client.create_family("sizes", [("sizes.big", "shoe_size >= 40")], "sizes.rest")
    assert family.family_id == "sizes"
    client.delete_family("sizes")
    assert "sizes" not in {f.family_id for f in client.list_families()}

    # Erasure by e-mail.
    client.delete_customer(email="c2@example.com")
    with pytest.raises(SegmentdError) as e:
        client.get_customer("C2")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ValueError):
        client.delete_customer("C4", email="c4@example.com")


def test_errors_carry_the_rich_details(client):
    client.load_customers(customers(3))
    with pytest.raises(SegmentdError) as e:
        client.upsert_customers([{"customer_id": "C1"}, {"customer_id": "C2", "attributes": {"gendr": "F"}}])
    err = e.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "INVALID_FIELD"
    (field, description), = err.field_violations
    assert field == 'customers[1].attributes["gendr"]'
    assert "did you mean `gender`?" in description
    with pytest.raises(SegmentdError) as e:
        client.is_member("C1", "nope")
    assert (e.value.code, e.value.reason, e.value.field_violations) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND", [])


def test_load_customers_goes_column_by_column_and_falls_back_to_messages(client):
    from segmentd.client import to_columns

    batch = list(customers(20))
    columns = to_columns(batch)
    assert columns is not None and list(columns.customer_ids) == [f"C{i}" for i in range(20)]
    # A cleared value or a removed e-mail needs Customer messages.
    assert to_columns([{"customer_id": "x", "attributes": {"vip": None}}]) is None
    assert to_columns([{"customer_id": "x", "email": ""}]) is None
    assert to_columns([{"customer_id": "x", "attributes": {"household_size": 1}},
                       {"customer_id": "y", "attributes": {"household_size": "two"}}]) is None

    assert client.load_customers(customers(20), batch_size=8).created == 20
    # Each batch read as the same customers sent as messages would be.
    for i in (0, 7, 19):
        got = client.get_customer(f"C{i}")
        want = next(itertools.islice(customers(20), i, None))
        assert got["email"] == want["email"]
        for name, value in want["attributes"].items():
            assert got["attributes"].get(name, []) == value, (i, name)
    # A batch that clears a value goes as messages, in the same stream.
    mixed = [{"customer_id": "C1", "attributes": {"vip": None}}, {"customer_id": "C2", "attributes": {"vip": True}}]
    assert client.load_customers(mixed).updated == 2
    assert "vip" not in client.get_customer("C1")["attributes"]
    # A bad row is named in the column form as in the message form.
    with pytest.raises(SegmentdError) as err:
        client.load_customers([{"customer_id": "C3", "attributes": {"household_size": "two"}}])
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "household_size" in str(err.value)


def test_dataframes_in_and_out(client):
    pandas = pytest.importorskip("pandas")
    df = pandas.DataFrame(
        {
            "customer_id": ["P1", "P2", "P3"],
            "email": ["p1@example.com", None, "p3@example.com"],
            "household_size": [2, 3, 4],
            "gender": ["F", "M", None],
            "registered_at": pandas.to_datetime(["2021-05-01T10:00:00Z", None, "2022-01-01T00:00:00Z"]),
        }
    )
    assert client.load_dataframe(df).created == 3
    p2 = client.get_customer("P2")
    assert p2["email"] is None and "registered_at" not in p2["attributes"]
    assert client.get_customer("P3")["attributes"]["registered_at"] == dt.datetime(2022, 1, 1, tzinfo=dt.timezone.utc)

    client.create_segment("big", rule_text="household_size >= 3")
    out = client.export_segment("big", fields=["household_size", "gender"]).to_dataframe()
    assert list(out.columns) == ["customer_id", "email", "household_size", "gender"]
    assert sorted(out["customer_id"]) == ["P2", "P3"]
    row = out.set_index("customer_id").loc["P2"]
    assert row["household_size"] == 3 and row["gender"] == "M"


def test_unavailable_is_retried_until_the_server_is_back(server_bin, tmp_path):
    import socket
    import subprocess
    import threading

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # No server yet: without retries the call fails at once.
    with Client(f"127.0.0.1:{port}", timeout=10, retries=0) as c:
        with pytest.raises(SegmentdError) as err:
            c.stats()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    # With retries, a server that starts a moment later answers the same call.
    procs = []

    def start():
        procs.append(
            subprocess.Popen(
                [server_bin, "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"), "--fsync", "never"],
                stderr=subprocess.DEVNULL,
            )
        )

    timer = threading.Timer(0.3, start)
    timer.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=10, retries=4) as c:
            assert c.stats().customers == 0
    finally:
        timer.join()
        for p in procs:
            p.terminate()
            p.wait(timeout=20)
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", retries=5)


def test_methods_are_named_as_the_rpcs():
    for rpc in ("preview_segment", "export_segment", "watch_memberships", "get_membership_history",
                "get_customer_segments", "load_dataframe"):
        assert callable(getattr(Client, rpc)), rpc


@pytest.fixture
def served(server_bin):
    from conftest import _server

    with _server(server_bin) as (c, port):
        yield c, port


def test_async_client(served):
    import asyncio

    from segmentd import AsyncClient

    sync, port = served
    sync.load_customers(customers(50))
    sync.create_segment("golfers", rule_text='tags has_any ("golf")', allow_activities=True)

    async def main():
        async with AsyncClient(f"127.0.0.1:{port}", timeout=10) as c:
            assert await c.is_member("C0", "golfers")
            assert not await c.is_member("C1", "golfers")
            assert await c.check_memberships("C10", ["golfers"]) == {"golfers": True}
            assert (await c.stats()).customers == 50
            loaded = await c.load_customers(({"customer_id": f"A{i}", "attributes": {"vip": True}} for i in range(30)), batch_size=7)
            assert (loaded.created, loaded.batches) == (30, 5)
            result = await c.add_to_segment("golfers", ["A1"], activity_id="golf-week")
            assert result.changed == 1
            members = [m["customer_id"] async for m in c.export_segment("golfers")]
            assert sorted(members) == sorted(["A1"] + [f"C{i}" for i in range(0, 50, 10)])
            # Events stream as an async iterator; the first is the oldest retained.
            events = c.watch_memberships(0, ["golfers"])
            first = await events.__anext__()
            assert first.segment_id == "golfers" and first.entered
            await events.aclose()
            with pytest.raises(SegmentdError) as err:
                await c.get_segment("nope")
            assert err.value.code == grpc.StatusCode.NOT_FOUND
            assert err.value.reason == "NOT_FOUND"
            count, sample = await c.preview_segment("vip", sample_size=1)
            assert count == 31 and len(sample) == 1  # the 30 loaded here and C7

    asyncio.run(main())


def test_async_client_sends_its_token(secured):
    import asyncio

    from conftest import ADMIN_TOKEN

    from segmentd import AsyncClient

    _, port = secured

    async def main():
        async with AsyncClient(f"127.0.0.1:{port}", token=ADMIN_TOKEN) as c:
            assert (await c.stats()).customers == 0
        async with AsyncClient(f"127.0.0.1:{port}") as c:
            with pytest.raises(SegmentdError) as err:
                await c.stats()
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(main())


def test_load_customers_skips_or_only_checks_bad_rows(client):
    rows = [
        {"customer_id": "V1", "attributes": {"household_size": 1}},
        {"customer_id": "V2", "attributes": {"household_size": "two"}},
        {"customer_id": "V3", "attributes": {"household_size": 3}},
    ]
    checked = client.load_customers(rows, validate_only=True)
    assert (checked.created, checked.bad_row_count) == (2, 1)
    assert checked.bad_rows[0].row == 1 and "household_size" in checked.bad_rows[0].field
    assert client.stats().customers == 0
    loaded = client.load_customers(rows, max_bad_rows=1)
    assert (loaded.created, loaded.bad_row_count) == (2, 1)
    assert client.stats().customers == 2
    with pytest.raises(SegmentdError) as err:
        client.load_customers(rows)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_size_history_and_watching_from_now_on(server_bin):
    from conftest import _server

    with _server(server_bin, ["--size-sample-secs", "1"]) as (client, _):
        client.load_customers(customers(10))
        client.create_segment("women", rule_text='gender = "F"')
        deadline = time.monotonic() + 10
        while len(client.get_size_history(["women"])["women"]) < 2:
            assert time.monotonic() < deadline, client.get_size_history()
            time.sleep(0.2)
        samples = client.get_size_history()["women"]
        assert all(size == 5 for _, size in samples)
        assert all(t.tzinfo is not None for t, _ in samples)
        assert [t for t, _ in samples] == sorted(t for t, _ in samples)
        with pytest.raises(SegmentdError) as e:
            client.get_size_history(["nope"])
        assert e.value.code == grpc.StatusCode.NOT_FOUND

        # From now on: the five women who entered before are not replayed (from 0 they are).
        client.create_segment("golfers", allow_activities=True)
        assert next(client.watch(0, segment_ids=["golfers", "women"])).segment_id == "women"
        events = client.watch(segment_ids=["golfers", "women"], from_latest=True)
        # The stream opens at the first next(): the additions keep coming until one is seen.
        stop = threading.Event()

        def add() -> None:
            for n in range(3, 10):
                if stop.wait(0.3):
                    return
                client.add_to_segment("golfers", [f"C{n}"], activity_id="a")

        adder = threading.Thread(target=add)
        adder.start()
        try:
            first = next(events)
        finally:
            stop.set()
            adder.join()
        assert (first.segment_id, first.entered, first.cause) == ("golfers", True, "activity")
