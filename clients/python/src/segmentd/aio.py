"""The same client for asyncio (`grpc.aio`): every method of `Client`, awaited; the streams
(`export_segment`, `watch_memberships`) are async iterators. Requests and answers are built by
the functions `Client` uses, so the two clients cannot drift apart."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

from segmentd.client import (
    ActivityResult,
    CustomerIn,
    LoadResult,
    MembershipEvent,
    OrdersResult,
    _connection,
    _event,
    _export_request,
    _Out,
    _p_activity,
    _p_batch_check_memberships,
    _p_check_memberships,
    _p_create_family,
    _p_create_segment,
    _p_define_attribute,
    _p_delete_customer,
    _p_delete_family,
    _p_delete_segment,
    _p_explain_membership,
    _p_get_customer,
    _p_get_customer_segments,
    _p_get_membership_history,
    _p_get_schema,
    _p_get_segment,
    _p_get_server_info,
    _p_is_member,
    _p_get_size_history,
    _p_list_families,
    _p_list_segments,
    _p_load_customers,
    _p_load_segment_members,
    _p_preview_segment,
    _p_reclassify,
    _p_record_orders,
    _p_segment_overlap,
    _p_snapshot,
    _p_stats,
    _p_update_segment,
    _p_upsert_customers,
    _bearer,
    _Plan,
    _raise,
    _watch_request,
    dataframe_customers,
    from_customer,
)
from segmentd.v1 import (
    activities_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    membership_pb2_grpc,
    segments_pb2,
    segments_pb2_grpc,
)

if TYPE_CHECKING:
    import pandas


class AsyncClient:
    """segmentd over one `grpc.aio` channel, with the options of `Client` (`timeout`, `token`,
    TLS, `retries`). Use `async with` or `await close()`; create it inside the event loop that
    uses it."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: Optional[float] = 30.0,
        token: Optional[str] = None,
        tls_ca: Optional[Union[str, bytes]] = None,
        tls_cert: Optional[Union[str, bytes]] = None,
        tls_key: Optional[Union[str, bytes]] = None,
        tls_domain: Optional[str] = None,
        retries: int = 3,
    ):
        options, credentials = _connection(retries, tls_ca, tls_cert, tls_key, tls_domain)
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._metadata = _bearer(token)
        self._timeout = timeout
        self._membership = membership_pb2_grpc.MembershipStub(self._channel)
        self._activities = activities_pb2_grpc.ActivitiesStub(self._channel)
        self._ingest = ingest_pb2_grpc.IngestStub(self._channel)
        self._segments = segments_pb2_grpc.SegmentsStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, plan: _Plan[_Out]) -> _Out:
        method = getattr(getattr(self, plan.stub), plan.method)
        try:
            reply = await method(
                plan.request, timeout=self._timeout if plan.timeout else None, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise _raise(err) from None
        return plan.convert(reply)

    # Membership.

    async def is_member(self, customer_id: str, segment_id: str) -> bool:
        return await self._run(_p_is_member(customer_id, segment_id))

    async def check_memberships(self, customer_id: str, segment_ids: Sequence[str]) -> Dict[str, bool]:
        return await self._run(_p_check_memberships(customer_id, segment_ids))

    async def batch_check_memberships(
        self, customer_ids: Sequence[str], segment_ids: Sequence[str]
    ) -> Dict[str, Optional[Dict[str, bool]]]:
        return await self._run(_p_batch_check_memberships(customer_ids, segment_ids))

    async def get_customer_segments(self, customer_id: str) -> List[str]:
        return await self._run(_p_get_customer_segments(customer_id))

    # Activities.

    async def add_to_segment(
        self, segment_id: str, customer_ids: Sequence[str] = (), emails: Sequence[str] = (), *, activity_id: str
    ) -> ActivityResult:
        return await self._run(_p_activity(True, segment_id, customer_ids, emails, activity_id))

    async def remove_from_segment(
        self, segment_id: str, customer_ids: Sequence[str] = (), emails: Sequence[str] = (), *, activity_id: str
    ) -> ActivityResult:
        return await self._run(_p_activity(False, segment_id, customer_ids, emails, activity_id))

    # Ingest.

    async def upsert_customers(self, customers: Iterable[CustomerIn]) -> LoadResult:
        return await self._run(_p_upsert_customers(customers))

    async def load_customers(
        self,
        customers: Iterable[CustomerIn],
        batch_size: int = 1000,
        *,
        validate_only: bool = False,
        max_bad_rows: int = 0,
    ) -> LoadResult:
        """As `Client.load_customers` (batches read from `customers` as the stream takes them)."""
        return await self._run(_p_load_customers(customers, batch_size, validate_only, max_bad_rows))

    async def load_dataframe(self, df: "pandas.DataFrame", batch_size: int = 1000) -> LoadResult:
        return await self.load_customers(dataframe_customers(df), batch_size=batch_size)

    async def get_customer(self, customer_id: Optional[str] = None, *, email: Optional[str] = None) -> Dict[str, Any]:
        return await self._run(_p_get_customer(customer_id, email))

    async def delete_customer(self, customer_id: Optional[str] = None, *, email: Optional[str] = None) -> None:
        await self._run(_p_delete_customer(customer_id, email))

    async def load_segment_members(
        self,
        segment_id: str,
        customer_ids: Iterable[str] = (),
        emails: Iterable[str] = (),
        *,
        mode: str = "include",
        batch_size: int = 10_000,
    ) -> ingest_pb2.LoadSegmentMembersResponse:
        return await self._run(_p_load_segment_members(segment_id, customer_ids, emails, mode, batch_size))

    async def record_orders(self, orders: Iterable[Mapping[str, Any]]) -> OrdersResult:
        return await self._run(_p_record_orders(orders))

    # Segments.

    async def create_segment(
        self,
        segment_id: str,
        *,
        rule_text: str = "",
        name: Optional[str] = None,
        description: str = "",
        allow_activities: bool = False,
        include_customer_ids: Sequence[str] = (),
        exclude_customer_ids: Sequence[str] = (),
    ) -> segments_pb2.Segment:
        return await self._run(
            _p_create_segment(
                segment_id, rule_text, name, description, allow_activities, include_customer_ids, exclude_customer_ids
            )
        )

    async def update_segment(self, segment_id: str, **fields: Any) -> segments_pb2.Segment:
        return await self._run(_p_update_segment(segment_id, fields))

    async def get_segment(self, segment_id: str) -> segments_pb2.Segment:
        return await self._run(_p_get_segment(segment_id))

    async def list_segments(self) -> List[segments_pb2.Segment]:
        return await self._run(_p_list_segments())

    async def delete_segment(self, segment_id: str) -> None:
        await self._run(_p_delete_segment(segment_id))

    async def preview_segment(
        self, rule_text: str, *, sample_size: int = 0, as_of: Optional[_dt.datetime] = None
    ) -> Tuple[int, List[str]]:
        return await self._run(_p_preview_segment(rule_text, sample_size, as_of))

    async def explain_membership(self, customer_id: str, segment_id: str) -> segments_pb2.ExplainMembershipResponse:
        return await self._run(_p_explain_membership(customer_id, segment_id))

    async def segment_overlap(self, segment_ids: Sequence[str]) -> Dict[Tuple[str, str], int]:
        return await self._run(_p_segment_overlap(segment_ids))

    async def export_segment(
        self, segment_id: str, fields: Sequence[str] = (), batch_size: int = 1000
    ) -> AsyncIterator[Dict[str, Any]]:
        """Members of a segment as dicts, streamed: `async for member in client.export_segment(...)`."""
        call = self._segments.ExportSegment(_export_request(segment_id, fields, batch_size), metadata=self._metadata)
        try:
            async for msg in call:
                for c in msg.customers:
                    yield from_customer(c)
        except grpc.RpcError as err:
            raise _raise(err) from None

    async def watch_memberships(
        self, from_sequence: int = 0, segment_ids: Sequence[str] = (), *, from_latest: bool = False
    ) -> AsyncIterator[MembershipEvent]:
        """As `Client.watch_memberships`: endless, resumable from the last `sequence` received."""
        call = self._segments.WatchMemberships(
            _watch_request(from_sequence, segment_ids, from_latest), metadata=self._metadata
        )
        try:
            async for msg in call:
                for e in msg.events:
                    yield _event(e)
        except grpc.RpcError as err:
            raise _raise(err) from None
        finally:
            call.cancel()

    async def get_size_history(self, segment_ids: Sequence[str] = ()) -> Dict[str, List[Tuple[_dt.datetime, int]]]:
        return await self._run(_p_get_size_history(segment_ids))

    async def get_membership_history(self, customer_id: str, segment_id: str = "") -> List[MembershipEvent]:
        return await self._run(_p_get_membership_history(customer_id, segment_id))

    # Families.

    async def create_family(
        self,
        family_id: str,
        members: Sequence[Tuple[str, str]],
        catch_all: str,
        *,
        name: Optional[str] = None,
        description: str = "",
    ) -> segments_pb2.Family:
        return await self._run(_p_create_family(family_id, members, catch_all, name, description))

    async def list_families(self) -> List[segments_pb2.Family]:
        return await self._run(_p_list_families())

    async def delete_family(self, family_id: str) -> None:
        await self._run(_p_delete_family(family_id))

    async def reclassify(self, as_of: Optional[_dt.datetime] = None) -> segments_pb2.ReclassifyResponse:
        return await self._run(_p_reclassify(as_of))

    # Admin.

    async def stats(self) -> admin_pb2.StatsResponse:
        return await self._run(_p_stats())

    async def get_schema(self) -> List[admin_pb2.Attribute]:
        return await self._run(_p_get_schema())

    async def define_attribute(self, name: str, type: str, description: str = "") -> admin_pb2.Attribute:
        return await self._run(_p_define_attribute(name, type, description))

    async def get_server_info(self) -> admin_pb2.GetServerInfoResponse:
        return await self._run(_p_get_server_info())

    async def snapshot(self) -> admin_pb2.SnapshotResponse:
        return await self._run(_p_snapshot())
