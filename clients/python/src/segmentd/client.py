"""A small typed client over the generated gRPC stubs."""

from __future__ import annotations

import datetime as _dt
import itertools
import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Generic,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
)

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2
# googleapis-common-protos ships no type stubs: its messages are used as Any.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from segmentd.v1 import (
    activities_pb2,
    activities_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    customer_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
    segments_pb2,
    segments_pb2_grpc,
)

if TYPE_CHECKING:  # pandas is optional: `pip install segmentd[pandas]`
    import pandas

#: A Python attribute value: bool, int (money in minor units), float, str, date, datetime
#: (timezone-aware, or naive meaning UTC), a list of str (a `keywords` set), or None (clears).
AttrValue = Union[bool, int, float, str, _dt.date, _dt.datetime, Sequence[str], None]


class SegmentdError(Exception):
    """A call segmentd refused or could not serve: `code` is the gRPC status code, and the rich
    error details the server sent (Google's error model) are read into attributes:

    - `reason`: the `ErrorInfo` reason (`INVALID_FIELD`, `NOT_FOUND`, `OVERLOADED`,
      `PARTIALLY_APPLIED`, ...), with its `metadata` (such as `applied_batches`);
    - `field_violations`: `(field, description)` pairs of a `BadRequest`, the field a path such as
      `customers[3].email`;
    - `retry_delay`: seconds to wait before retrying (`RetryInfo`), for RESOURCE_EXHAUSTED.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        reason: Optional[str] = None,
        metadata: Optional[Dict[str, str]] = None,
        field_violations: Sequence[Tuple[str, str]] = (),
        retry_delay: Optional[float] = None,
    ):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.reason = reason
        self.metadata: Dict[str, str] = dict(metadata or {})
        self.field_violations: List[Tuple[str, str]] = list(field_violations)
        self.retry_delay = retry_delay


@dataclass(frozen=True)
class BadRow:
    """A row the server refused: `batch` and `row` locate it in the load, `field` names what is
    wrong (`batch[2].customers[5].email`), `reason` says why."""

    batch: int
    row: int
    field: str
    reason: str


@dataclass(frozen=True)
class LoadResult:
    created: int
    updated: int
    batches: int
    #: With `max_bad_rows` or `validate_only`: the rows refused (the first 1,000), and how many.
    bad_rows: List[BadRow] = dataclass_field(default_factory=list)
    bad_row_count: int = 0


@dataclass(frozen=True)
class OrdersResult:
    applied: int
    duplicates: int
    created_customer_ids: List[str]


@dataclass(frozen=True)
class ActivityResult:
    changed: int
    unchanged: int
    unknown: List[str]


@dataclass(frozen=True)
class MembershipEvent:
    """A customer entering (`entered`) or leaving a segment, and why (`cause`: "rule", "time",
    "include", "exclude", "account", "activity", "member_load", "reclassification", "deletion")."""

    sequence: int
    time: _dt.datetime
    segment_id: str
    customer_id: str
    entered: bool
    cause: str
    activity_id: Optional[str]
    #: A move within a family (RFM): the member segment the customer left.
    from_segment_id: Optional[str] = None


def _event(e: segments_pb2.MembershipEvent) -> MembershipEvent:
    name = segments_pb2.MembershipCause.Name(e.cause).removeprefix("MEMBERSHIP_CAUSE_").lower()
    return MembershipEvent(
        sequence=e.sequence,
        time=e.time.ToDatetime(tzinfo=_dt.timezone.utc),
        segment_id=e.segment_id,
        customer_id=e.customer_id,
        entered=e.entered,
        cause=name,
        activity_id=e.activity_id or None,
        from_segment_id=e.from_segment_id or None,
    )


def _raise(err: grpc.RpcError) -> SegmentdError:
    """The error with the rich details of its `grpc-status-details-bin` trailer, if any."""
    reason: Optional[str] = None
    metadata: Dict[str, str] = {}
    violations: List[Tuple[str, str]] = []
    retry: Optional[float] = None
    # The errors of calls are also grpc.Call objects, with trailers.
    call = cast(Any, err)
    trailers = call.trailing_metadata() if hasattr(call, "trailing_metadata") else None
    for key, value in trailers or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend((v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info_r = error_details_pb2.RetryInfo()
                detail.Unpack(info_r)
                retry = info_r.retry_delay.seconds + info_r.retry_delay.nanos / 1e9
    return SegmentdError(
        call.code(),
        call.details() or "",
        reason=reason,
        metadata=metadata,
        field_violations=violations,
        retry_delay=retry,
    )


def _timestamp(t: _dt.datetime) -> timestamp_pb2.Timestamp:
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t.astimezone(_dt.timezone.utc))
    return ts


def to_value(v: AttrValue) -> customer_pb2.Value:
    """A Python value as a `Value` message (see `AttrValue`)."""
    if v is None:
        return customer_pb2.Value()
    if isinstance(v, bool):
        return customer_pb2.Value(bool_value=v)
    if isinstance(v, int):
        return customer_pb2.Value(int_value=v)
    if isinstance(v, float):
        return customer_pb2.Value(double_value=v)
    if isinstance(v, str):
        return customer_pb2.Value(string_value=v)
    if isinstance(v, _dt.datetime):
        return customer_pb2.Value(timestamp_value=_timestamp(v))
    if isinstance(v, _dt.date):
        return customer_pb2.Value(date_value=customer_pb2.Date(year=v.year, month=v.month, day=v.day))
    if isinstance(v, (list, tuple, set, frozenset)):
        return customer_pb2.Value(list_value=customer_pb2.StringList(values=sorted(str(x) for x in v)))
    raise TypeError(f"cannot send {type(v).__name__} as an attribute value")


def from_value(v: customer_pb2.Value) -> AttrValue:
    """A `Value` message as a Python value."""
    kind = v.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "date_value":
        return _dt.date(v.date_value.year, v.date_value.month, v.date_value.day)
    if kind == "timestamp_value":
        return v.timestamp_value.ToDatetime(tzinfo=_dt.timezone.utc)
    if kind == "list_value":
        return list(v.list_value.values)
    value: AttrValue = getattr(v, kind)
    return value


def to_customer(c: Union[Mapping[str, Any], customer_pb2.Customer]) -> customer_pb2.Customer:
    """`{"customer_id", "email"?, "attributes": {name: value}}` (or a message) as a message."""
    if isinstance(c, customer_pb2.Customer):
        return c
    msg = customer_pb2.Customer(customer_id=c["customer_id"])
    if c.get("email") is not None:
        msg.email = c["email"]
    for name, value in (c.get("attributes") or {}).items():
        msg.attributes[name].CopyFrom(to_value(value))
    return msg


def _column(name: str, rows: List[Tuple[int, Any]], n: int) -> Optional[customer_pb2.AttributeColumn]:
    """One attribute's column: its values in row order, the other rows listed as missing; None
    when the values are not all of one kind."""
    present = {i for i, _ in rows}
    col = customer_pb2.AttributeColumn(name=name, missing=[i for i in range(n) if i not in present])
    values = [v for _, v in rows]
    kinds = {type(v) for v in values}
    if kinds <= {bool}:
        col.bools.values.extend(values)
    elif kinds <= {int}:
        col.ints.values.extend(values)
    elif kinds <= {float}:
        col.doubles.values.extend(values)
    elif kinds <= {str}:
        distinct = list(dict.fromkeys(values))
        if len(distinct) * 2 <= len(values):
            # Few distinct strings (a country, a tier): each sent once.
            at = {v: i for i, v in enumerate(distinct)}
            col.strings.values.extend(distinct)
            col.strings.indexes.extend(at[v] for v in values)
        else:
            col.strings.values.extend(values)
    elif kinds <= {_dt.date}:
        col.dates.values.extend((v - _EPOCH).days for v in values)
    elif all(isinstance(v, _dt.datetime) for v in values):
        col.timestamps.values.extend(_micros(v) for v in values)
    elif all(isinstance(v, (list, tuple, set, frozenset)) for v in values):
        col.lists.values.extend(customer_pb2.StringList(values=sorted(str(x) for x in v)) for v in values)
    else:
        return None
    return col


def _micros(t: _dt.datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    delta = t - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def to_columns(customers: Sequence[Union[Mapping[str, Any], customer_pb2.Customer]]) -> Optional[customer_pb2.CustomerColumns]:
    """Customers as dicts (see `to_customer`) as one `CustomerColumns`, or None when one of
    them needs the message form (see `Client.load_customers`)."""
    ids: List[str] = []
    emails: List[str] = []
    attrs: Dict[str, List[Tuple[int, Any]]] = {}
    for i, c in enumerate(customers):
        if isinstance(c, customer_pb2.Customer):
            return None
        ids.append(c["customer_id"])
        email = c.get("email")
        if email == "":
            return None
        emails.append(email or "")
        for name, value in (c.get("attributes") or {}).items():
            if value is None:
                return None
            attrs.setdefault(name, []).append((i, value))
    columns = customer_pb2.CustomerColumns(customer_ids=ids)
    if any(emails):
        columns.emails.extend(emails)
    for name, rows in attrs.items():
        col = _column(name, rows, len(ids))
        if col is None:
            return None
        columns.attributes.append(col)
    return columns


def from_customer(c: customer_pb2.Customer) -> Dict[str, Any]:
    return {
        "customer_id": c.customer_id,
        "email": c.email if c.HasField("email") else None,
        "attributes": {k: from_value(v) for k, v in c.attributes.items()},
    }


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError("DataFrames need pandas: pip install 'segmentd[pandas]'") from None
    return cast(Any, pandas)


class Export(Iterator[Dict[str, Any]]):
    """A segment's members as they stream in, each a dict (customer_id, email, attributes);
    `to_dataframe()` collects the rest into a pandas DataFrame, one column per field."""

    def __init__(self, rows: Iterator[Dict[str, Any]], fields: Sequence[str]):
        self._rows = rows
        self._fields = list(fields)

    def __iter__(self) -> "Export":
        return self

    def __next__(self) -> Dict[str, Any]:
        return next(self._rows)

    def to_dataframe(self) -> "pandas.DataFrame":
        """The members not yet read: columns customer_id, email, then the fields asked for."""
        pd = _pandas()
        columns = ["customer_id", "email", *self._fields]
        records = [
            {"customer_id": r["customer_id"], "email": r["email"], **{f: r["attributes"].get(f) for f in self._fields}}
            for r in self
        ]
        frame: "pandas.DataFrame" = pd.DataFrame.from_records(records, columns=columns)
        return frame


def _from_pandas(v: Any) -> Any:
    """A cell of a DataFrame as a Python value; None when it is missing (NaN, NaT, None)."""
    pandas = _pandas()
    if v is None or (not isinstance(v, (list, tuple, set, frozenset, str)) and pandas.isna(v)):
        return None
    if isinstance(v, pandas.Timestamp):
        return v.to_pydatetime()
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return v.item()  # a numpy scalar
    return v


def dataframe_customers(df: "pandas.DataFrame") -> Iterator[Dict[str, Any]]:
    """The rows of a DataFrame as customers: `customer_id`, an optional `email`, and every other
    column an attribute; a missing cell (NaN, NaT, None) leaves the attribute as it is."""
    if "customer_id" not in df.columns:
        raise ValueError("the DataFrame needs a `customer_id` column")
    names = [str(c) for c in df.columns]
    for row in df.itertuples(index=False, name=None):
        cells = dict(zip(names, row))
        customer: Dict[str, Any] = {"customer_id": str(cells.pop("customer_id"))}
        email = _from_pandas(cells.pop("email", None))
        if email is not None:
            customer["email"] = email
        customer["attributes"] = {
            k: v for k, v in ((k, _from_pandas(v)) for k, v in cells.items()) if v is not None
        }
        yield customer


def _pem(v: Union[str, bytes]) -> bytes:
    """PEM bytes, from bytes or a file path."""
    if isinstance(v, bytes):
        return v
    with open(v, "rb") as f:
        return f.read()


def _bearer(token: Optional[str]) -> Tuple[Tuple[str, str], ...]:
    """The metadata every call of a client carries: `authorization: Bearer <token>`, if any (the
    same for `Client` and `AsyncClient`, whose channels take different interceptors)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


_EPOCH = _dt.date(1970, 1, 1)

#: What a method returns.
_Out = TypeVar("_Out")

#: A customer to send: a dict (see `to_customer`) or a `Customer` message.
CustomerIn = Union[Mapping[str, Any], customer_pb2.Customer]


@dataclass(frozen=True)
class _Plan(Generic[_Out]):
    """One unary (or request-streaming) call, made the same way by `Client` and `AsyncClient`:
    the stub attribute and method, the request (or request iterator), whether the client's
    timeout applies, and what the method returns from the reply."""

    stub: str
    method: str
    request: Any
    convert: Callable[[Any], _Out]
    timeout: bool = True


def _unit(_: Any) -> None:
    return None


def _same(reply: Any) -> Any:
    return reply


# Each RPC's request and answer, shared by the two clients.


def _p_is_member(customer_id: str, segment_id: str) -> _Plan[bool]:
    request = membership_pb2.IsMemberRequest(customer_id=customer_id, segment_id=segment_id)
    return _Plan("_membership", "IsMember", request, lambda r: bool(r.member))


def _p_check_memberships(customer_id: str, segment_ids: Sequence[str]) -> _Plan[Dict[str, bool]]:
    ids = list(segment_ids)
    request = membership_pb2.CheckMembershipsRequest(customer_id=customer_id, segment_ids=ids)
    return _Plan("_membership", "CheckMemberships", request, lambda r: dict(zip(ids, r.member)))


def _p_batch_check_memberships(
    customer_ids: Sequence[str], segment_ids: Sequence[str]
) -> _Plan[Dict[str, Optional[Dict[str, bool]]]]:
    customers, segments = list(customer_ids), list(segment_ids)
    n = len(segments)

    def convert(r: Any) -> Dict[str, Optional[Dict[str, bool]]]:
        return {
            c: dict(zip(segments, r.member[i * n : (i + 1) * n])) if r.known_customer[i] else None
            for i, c in enumerate(customers)
        }

    request = membership_pb2.BatchCheckMembershipsRequest(customer_ids=customers, segment_ids=segments)
    return _Plan("_membership", "BatchCheckMemberships", request, convert)


def _p_get_customer_segments(customer_id: str) -> _Plan[List[str]]:
    request = membership_pb2.GetCustomerSegmentsRequest(customer_id=customer_id)
    return _Plan("_membership", "GetCustomerSegments", request, lambda r: list(r.segment_ids))


def _p_activity(
    add: bool, segment_id: str, customer_ids: Sequence[str], emails: Sequence[str], activity_id: str
) -> _Plan[ActivityResult]:
    ids, mails = list(customer_ids), list(emails)
    if add:
        request: Any = activities_pb2.AddToSegmentRequest(
            segment_id=segment_id, customer_ids=ids, emails=mails, activity_id=activity_id
        )
    else:
        request = activities_pb2.RemoveFromSegmentRequest(
            segment_id=segment_id, customer_ids=ids, emails=mails, activity_id=activity_id
        )
    method = "AddToSegment" if add else "RemoveFromSegment"
    return _Plan("_activities", method, request, lambda r: ActivityResult(r.changed, r.unchanged, list(r.unknown)))


def _p_upsert_customers(customers: Iterable[CustomerIn]) -> _Plan[LoadResult]:
    request = ingest_pb2.UpsertCustomersRequest(customers=[to_customer(c) for c in customers])
    return _Plan("_ingest", "UpsertCustomers", request, lambda r: LoadResult(r.created, r.updated, 1))


def _p_load_customers(
    customers: Iterable[CustomerIn], batch_size: int, validate_only: bool = False, max_bad_rows: int = 0
) -> _Plan[LoadResult]:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if max_bad_rows < 0:
        raise ValueError("max_bad_rows must be at least 0")

    def batches() -> Iterator[ingest_pb2.LoadCustomersRequest]:
        it = iter(customers)
        # The options go with the first message, for the whole stream.
        options: Dict[str, Any] = {"validate_only": validate_only, "max_bad_rows": max_bad_rows}
        while True:
            chunk = list(itertools.islice(it, batch_size))
            if not chunk:
                return
            columns = to_columns(chunk)
            if columns is not None:
                yield ingest_pb2.LoadCustomersRequest(columns=columns, **options)
            else:
                yield ingest_pb2.LoadCustomersRequest(customers=[to_customer(c) for c in chunk], **options)
            options = {}

    def convert(r: Any) -> LoadResult:
        bad = [BadRow(b.batch, b.row, b.field, b.reason) for b in r.bad_rows]
        return LoadResult(r.created, r.updated, r.batches, bad, r.bad_row_count)

    # A load runs as long as it has rows: no deadline.
    return _Plan("_ingest", "LoadCustomers", batches(), convert, timeout=False)


def _customer_key(customer_id: Optional[str], email: Optional[str]) -> Dict[str, str]:
    if customer_id is not None and email is None:
        return {"customer_id": customer_id}
    if email is not None and customer_id is None:
        return {"email": email}
    raise ValueError("give exactly one of customer_id or email")


def _p_get_customer(customer_id: Optional[str], email: Optional[str]) -> _Plan[Dict[str, Any]]:
    request = ingest_pb2.GetCustomerRequest(**_customer_key(customer_id, email))
    return _Plan("_ingest", "GetCustomer", request, lambda r: from_customer(r.customer))


def _p_delete_customer(customer_id: Optional[str], email: Optional[str]) -> _Plan[None]:
    request = ingest_pb2.DeleteCustomerRequest(**_customer_key(customer_id, email))
    return _Plan("_ingest", "DeleteCustomer", request, _unit)


def _p_load_segment_members(
    segment_id: str, customer_ids: Iterable[str], emails: Iterable[str], mode: str, batch_size: int
) -> _Plan[ingest_pb2.LoadSegmentMembersResponse]:
    modes = {"include": ingest_pb2.MEMBER_MODE_INCLUDE, "exclude": ingest_pb2.MEMBER_MODE_EXCLUDE}
    if mode not in modes:
        raise ValueError("mode is 'include' or 'exclude'")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")

    def batches() -> Iterator[ingest_pb2.LoadSegmentMembersRequest]:
        for field, values in (("customer_ids", customer_ids), ("emails", emails)):
            it = iter(values)
            while True:
                chunk = list(itertools.islice(it, batch_size))
                if not chunk:
                    break
                yield ingest_pb2.LoadSegmentMembersRequest(segment_id=segment_id, mode=modes[mode], **{field: chunk})

    return _Plan("_ingest", "LoadSegmentMembers", batches(), _same)


def _p_record_orders(orders: Iterable[Mapping[str, Any]]) -> _Plan[OrdersResult]:
    msgs = [
        customer_pb2.Order(
            order_id=o["order_id"],
            customer_id=o["customer_id"],
            placed_at=_timestamp(o["placed_at"]),
            amount_minor=o["amount_minor"],
            promotion=bool(o.get("promotion", False)),
            categories=list(o.get("categories", ())),
            brands=list(o.get("brands", ())),
        )
        for o in orders
    ]
    convert = lambda r: OrdersResult(r.applied, r.duplicates, list(r.created_customer_ids))  # noqa: E731
    return _Plan("_ingest", "RecordOrders", ingest_pb2.RecordOrdersRequest(orders=msgs), convert)


def _p_create_segment(
    segment_id: str,
    rule_text: str,
    name: Optional[str],
    description: str,
    allow_activities: bool,
    include_customer_ids: Sequence[str],
    exclude_customer_ids: Sequence[str],
) -> _Plan[segments_pb2.Segment]:
    segment = segments_pb2.Segment(
        segment_id=segment_id,
        name=name or segment_id,
        description=description,
        rule_text=rule_text,
        allow_activities=allow_activities,
        include_customer_ids=list(include_customer_ids),
        exclude_customer_ids=list(exclude_customer_ids),
    )
    return _Plan("_segments", "CreateSegment", segments_pb2.CreateSegmentRequest(segment=segment), _same)


def _p_create_family(
    family_id: str, members: Sequence[Tuple[str, str]], catch_all: str, name: Optional[str], description: str
) -> _Plan[segments_pb2.Family]:
    family = segments_pb2.Family(
        family_id=family_id,
        name=name or family_id,
        description=description,
        members=[segments_pb2.FamilyMember(segment_id=i, name=i, rule_text=r) for i, r in members],
        catch_all=segments_pb2.FamilyMember(segment_id=catch_all, name=catch_all),
    )
    return _Plan("_segments", "CreateFamily", segments_pb2.CreateFamilyRequest(family=family), _same)


def _p_reclassify(as_of: Optional[_dt.datetime]) -> _Plan[segments_pb2.ReclassifyResponse]:
    request = segments_pb2.ReclassifyRequest()
    if as_of is not None:
        request.as_of.CopyFrom(_timestamp(as_of))
    return _Plan("_segments", "Reclassify", request, _same)


def _p_update_segment(segment_id: str, fields: Dict[str, Any]) -> _Plan[segments_pb2.Segment]:
    if not fields:
        raise ValueError("give at least one field to update")
    segment = segments_pb2.Segment(segment_id=segment_id, **fields)
    paths = ["rule" if f == "rule_text" else f for f in fields]
    request = segments_pb2.UpdateSegmentRequest(segment=segment, update_mask=field_mask_pb2.FieldMask(paths=paths))
    return _Plan("_segments", "UpdateSegment", request, _same)


def _p_segment_overlap(segment_ids: Sequence[str]) -> _Plan[Dict[Tuple[str, str], int]]:
    request = segments_pb2.SegmentOverlapRequest(segment_ids=list(segment_ids))
    convert = lambda r: {(o.segment_a, o.segment_b): o.count for o in r.overlaps}  # noqa: E731
    return _Plan("_segments", "SegmentOverlap", request, convert)


def _p_preview_segment(rule_text: str, sample_size: int, as_of: Optional[_dt.datetime]) -> _Plan[Tuple[int, List[str]]]:
    request = segments_pb2.PreviewSegmentRequest(rule_text=rule_text, sample_size=sample_size)
    if as_of is not None:
        request.as_of.CopyFrom(_timestamp(as_of))
    return _Plan("_segments", "PreviewSegment", request, lambda r: (r.count, list(r.sample_customer_ids)))


def _p_get_membership_history(customer_id: str, segment_id: str) -> _Plan[List[MembershipEvent]]:
    request = segments_pb2.GetMembershipHistoryRequest(customer_id=customer_id, segment_id=segment_id)
    return _Plan("_segments", "GetMembershipHistory", request, lambda r: [_event(e) for e in r.events])


_ATTRIBUTE_TYPES = {
    "bool": admin_pb2.ATTRIBUTE_TYPE_BOOL,
    "int": admin_pb2.ATTRIBUTE_TYPE_INT,
    "float": admin_pb2.ATTRIBUTE_TYPE_FLOAT,
    "money": admin_pb2.ATTRIBUTE_TYPE_MONEY,
    "date": admin_pb2.ATTRIBUTE_TYPE_DATE,
    "timestamp": admin_pb2.ATTRIBUTE_TYPE_TIMESTAMP,
    "keyword": admin_pb2.ATTRIBUTE_TYPE_KEYWORD,
    "keywords": admin_pb2.ATTRIBUTE_TYPE_KEYWORDS,
    "text": admin_pb2.ATTRIBUTE_TYPE_TEXT,
}


def _p_define_attribute(name: str, type: str, description: str) -> _Plan[admin_pb2.Attribute]:
    if type not in _ATTRIBUTE_TYPES:
        raise ValueError(f"type is one of {', '.join(_ATTRIBUTE_TYPES)}")
    request = admin_pb2.DefineAttributeRequest(name=name, type=_ATTRIBUTE_TYPES[type], description=description)
    return _Plan("_admin", "DefineAttribute", request, lambda r: r.attribute)


def _p_get_segment(segment_id: str) -> _Plan[segments_pb2.Segment]:
    return _Plan("_segments", "GetSegment", segments_pb2.GetSegmentRequest(segment_id=segment_id), _same)


def _p_list_segments() -> _Plan[List[segments_pb2.Segment]]:
    return _Plan("_segments", "ListSegments", segments_pb2.ListSegmentsRequest(), lambda r: list(r.segments))


def _p_delete_segment(segment_id: str) -> _Plan[None]:
    return _Plan("_segments", "DeleteSegment", segments_pb2.DeleteSegmentRequest(segment_id=segment_id), _unit)


def _p_explain_membership(customer_id: str, segment_id: str) -> _Plan[segments_pb2.ExplainMembershipResponse]:
    request = segments_pb2.ExplainMembershipRequest(customer_id=customer_id, segment_id=segment_id)
    return _Plan("_segments", "ExplainMembership", request, _same)


def _p_list_families() -> _Plan[List[segments_pb2.Family]]:
    return _Plan("_segments", "ListFamilies", segments_pb2.ListFamiliesRequest(), lambda r: list(r.families))


def _p_delete_family(family_id: str) -> _Plan[None]:
    return _Plan("_segments", "DeleteFamily", segments_pb2.DeleteFamilyRequest(family_id=family_id), _unit)


def _p_stats() -> _Plan[admin_pb2.StatsResponse]:
    return _Plan("_admin", "Stats", admin_pb2.StatsRequest(), _same)


def _p_get_schema() -> _Plan[List[admin_pb2.Attribute]]:
    return _Plan("_admin", "GetSchema", admin_pb2.GetSchemaRequest(), lambda r: list(r.attributes))


def _p_get_server_info() -> _Plan[admin_pb2.GetServerInfoResponse]:
    return _Plan("_admin", "GetServerInfo", admin_pb2.GetServerInfoRequest(), _same)


def _p_snapshot() -> _Plan[admin_pb2.SnapshotResponse]:
    return _Plan("_admin", "Snapshot", admin_pb2.SnapshotRequest(), _same)


def _export_request(segment_id: str, fields: Sequence[str], batch_size: int) -> segments_pb2.ExportSegmentRequest:
    return segments_pb2.ExportSegmentRequest(segment_id=segment_id, fields=list(fields), batch_size=batch_size)


def _watch_request(
    from_sequence: int, segment_ids: Sequence[str], from_latest: bool = False
) -> segments_pb2.WatchMembershipsRequest:
    return segments_pb2.WatchMembershipsRequest(
        from_sequence=from_sequence, segment_ids=list(segment_ids), from_latest=from_latest
    )


def _size_history(r: segments_pb2.GetSizeHistoryResponse) -> Dict[str, List[Tuple[_dt.datetime, int]]]:
    times = [t.ToDatetime(tzinfo=_dt.timezone.utc) for t in r.sample_times]
    # A segment's sizes are the last len(sizes) samples.
    return {h.segment_id: list(zip(times[len(times) - len(h.sizes) :], h.sizes)) for h in r.histories}


def _p_get_size_history(segment_ids: Sequence[str]) -> "_Plan[Dict[str, List[Tuple[_dt.datetime, int]]]]":
    request = segments_pb2.GetSizeHistoryRequest(segment_ids=list(segment_ids))
    return _Plan("_segments", "GetSizeHistory", request, _size_history)

#: Most attempts gRPC's retry policy allows (the first call included).
_MAX_ATTEMPTS = 5


def _channel_options(retries: int) -> List[Tuple[str, Any]]:
    """Channel options: large messages, and gRPC's own retry policy (a maintained mechanism,
    the same in every language) for calls refused UNAVAILABLE: a server restarting, a
    connection not yet (re)established. Exponential backoff from 0.1 s, jittered, at most 2 s
    a wait. Reconnection is retried as quickly, so a restart of a few hundred milliseconds is
    not seen by the caller."""
    if not 0 <= retries < _MAX_ATTEMPTS:
        raise ValueError(f"retries is 0 to {_MAX_ATTEMPTS - 1}")
    options: List[Tuple[str, Any]] = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if retries:
        policy = {
            "maxAttempts": retries + 1,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        config = {"methodConfig": [{"name": [{}], "retryPolicy": policy}]}
        options += [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]
    else:
        options.append(("grpc.enable_retries", 0))
    return options


def _connection(
    retries: int,
    tls_ca: Optional[Union[str, bytes]],
    tls_cert: Optional[Union[str, bytes]],
    tls_key: Optional[Union[str, bytes]],
    tls_domain: Optional[str],
) -> Tuple[List[Tuple[str, Any]], Optional[grpc.ChannelCredentials]]:
    """The channel options and, for TLS, the credentials: the server's CA (a PEM path or
    bytes), and for mutual TLS a client certificate and key."""
    options = _channel_options(retries)
    if tls_ca is None:
        return options, None
    if tls_domain:
        options.append(("grpc.ssl_target_name_override", tls_domain))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_pem(tls_ca),
        private_key=_pem(tls_key) if tls_key is not None else None,
        certificate_chain=_pem(tls_cert) if tls_cert is not None else None,
    )
    return options, credentials


class Client:
    """segmentd over one gRPC channel. `target` is `host:port`; `timeout` (seconds) applies to
    every unary call; `token` is sent as a bearer token to a server with roles; `tls_ca` (a PEM
    path or bytes) switches to TLS, with `tls_cert` and `tls_key` for a server that verifies
    clients; a call refused UNAVAILABLE (the server restarting, unreachable for a moment) is
    tried again up to `retries` times (0 to 4) with exponential backoff. Use as a context
    manager or call `close()`."""

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
        channel: Optional[grpc.Channel] = None,
        retries: int = 3,
    ):
        options, credentials = _connection(retries, tls_ca, tls_cert, tls_key, tls_domain)
        if channel is not None:
            self._channel = channel
        elif credentials is not None:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata = _bearer(token)
        self._timeout = timeout
        self._membership = membership_pb2_grpc.MembershipStub(self._channel)
        self._activities = activities_pb2_grpc.ActivitiesStub(self._channel)
        self._ingest = ingest_pb2_grpc.IngestStub(self._channel)
        self._segments = segments_pb2_grpc.SegmentsStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, plan: "_Plan[_Out]") -> _Out:
        method = getattr(getattr(self, plan.stub), plan.method)
        try:
            reply = method(
                plan.request, timeout=self._timeout if plan.timeout else None, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise _raise(err) from None
        return plan.convert(reply)

    # Membership: the request-time path.

    def is_member(self, customer_id: str, segment_id: str) -> bool:
        return self._run(_p_is_member(customer_id, segment_id))

    def check_memberships(self, customer_id: str, segment_ids: Sequence[str]) -> Dict[str, bool]:
        return self._run(_p_check_memberships(customer_id, segment_ids))

    def batch_check_memberships(
        self, customer_ids: Sequence[str], segment_ids: Sequence[str]
    ) -> Dict[str, Optional[Dict[str, bool]]]:
        """Each customer against each segment in one call: None for an unknown customer."""
        return self._run(_p_batch_check_memberships(customer_ids, segment_ids))

    def get_customer_segments(self, customer_id: str) -> List[str]:
        return self._run(_p_get_customer_segments(customer_id))

    customer_segments = get_customer_segments

    # Activities.

    def add_to_segment(
        self, segment_id: str, customer_ids: Sequence[str] = (), emails: Sequence[str] = (), *, activity_id: str
    ) -> ActivityResult:
        return self._run(_p_activity(True, segment_id, customer_ids, emails, activity_id))

    def remove_from_segment(
        self, segment_id: str, customer_ids: Sequence[str] = (), emails: Sequence[str] = (), *, activity_id: str
    ) -> ActivityResult:
        return self._run(_p_activity(False, segment_id, customer_ids, emails, activity_id))

    # Ingest.

    def upsert_customers(self, customers: Iterable[CustomerIn]) -> LoadResult:
        return self._run(_p_upsert_customers(customers))

    def load_customers(
        self,
        customers: Iterable[CustomerIn],
        batch_size: int = 1000,
        *,
        validate_only: bool = False,
        max_bad_rows: int = 0,
    ) -> LoadResult:
        """Streams customers in batches; a bad batch ends the load with `SegmentdError` naming
        it (earlier batches stay applied). With `max_bad_rows`, up to that many bad rows are
        skipped and listed in the result's `bad_rows` instead; with `validate_only`, every row
        is checked, the bad ones listed, and nothing applied. Batches go column by column
        (`CustomerColumns`, the form segctl sends and the server applies fastest) unless one
        needs the message form: a `Customer` message given, a value of None (clearing), an
        e-mail of "" (removing it), or one attribute given values of different kinds."""
        return self._run(_p_load_customers(customers, batch_size, validate_only, max_bad_rows))

    def load_dataframe(self, df: "pandas.DataFrame", batch_size: int = 1000) -> LoadResult:
        """Loads the rows of a DataFrame as customers (see `dataframe_customers`), column by
        column as `load_customers` sends them."""
        return self.load_customers(dataframe_customers(df), batch_size=batch_size)

    def get_customer(self, customer_id: Optional[str] = None, *, email: Optional[str] = None) -> Dict[str, Any]:
        return self._run(_p_get_customer(customer_id, email))

    def delete_customer(self, customer_id: Optional[str] = None, *, email: Optional[str] = None) -> None:
        """Erases a customer, by id or by e-mail (exactly one)."""
        self._run(_p_delete_customer(customer_id, email))

    def load_segment_members(
        self,
        segment_id: str,
        customer_ids: Iterable[str] = (),
        emails: Iterable[str] = (),
        *,
        mode: str = "include",
        batch_size: int = 10_000,
    ) -> ingest_pb2.LoadSegmentMembersResponse:
        """Puts customers (by id and by e-mail) on a segment's include or exclude list, streamed
        in batches; unknown ones are counted and listed in the response."""
        return self._run(_p_load_segment_members(segment_id, customer_ids, emails, mode, batch_size))

    def record_orders(self, orders: Iterable[Mapping[str, Any]]) -> OrdersResult:
        """Orders as dicts: order_id, customer_id, placed_at (datetime), amount_minor (cents),
        promotion, categories, brands."""
        return self._run(_p_record_orders(orders))

    # Segments.

    def create_segment(
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
        return self._run(
            _p_create_segment(
                segment_id, rule_text, name, description, allow_activities, include_customer_ids, exclude_customer_ids
            )
        )

    def update_segment(self, segment_id: str, **fields: Any) -> segments_pb2.Segment:
        """Replaces the fields given (name, description, rule_text, allow_activities,
        include_customer_ids, ...), keeping the others."""
        return self._run(_p_update_segment(segment_id, fields))

    def get_segment(self, segment_id: str) -> segments_pb2.Segment:
        return self._run(_p_get_segment(segment_id))

    def list_segments(self) -> List[segments_pb2.Segment]:
        return self._run(_p_list_segments())

    def delete_segment(self, segment_id: str) -> None:
        self._run(_p_delete_segment(segment_id))

    def preview_segment(
        self, rule_text: str, *, sample_size: int = 0, as_of: Optional[_dt.datetime] = None
    ) -> Tuple[int, List[str]]:
        """(count, sample customer ids) of the customers `rule_text` matches now (or `as_of`)."""
        return self._run(_p_preview_segment(rule_text, sample_size, as_of))

    preview = preview_segment

    def explain_membership(self, customer_id: str, segment_id: str) -> segments_pb2.ExplainMembershipResponse:
        """Why a customer is in a segment or not: the deciding list or rule, each predicate's value."""
        return self._run(_p_explain_membership(customer_id, segment_id))

    def segment_overlap(self, segment_ids: Sequence[str]) -> Dict[Tuple[str, str], int]:
        """Customers in both segments of every pair (a pair of one segment with itself: its size)."""
        return self._run(_p_segment_overlap(segment_ids))

    def export_segment(self, segment_id: str, fields: Sequence[str] = (), batch_size: int = 1000) -> Export:
        """Members of a segment as dicts (customer_id, email, attributes), streamed; the result
        also gives them as a DataFrame (`.to_dataframe()`, with `segmentd[pandas]`)."""
        request = _export_request(segment_id, fields, batch_size)
        stream = self._segments.ExportSegment(request, metadata=self._metadata)

        def rows() -> Iterator[Dict[str, Any]]:
            try:
                for msg in stream:
                    for c in msg.customers:
                        yield from_customer(c)
            except grpc.RpcError as err:
                raise _raise(err) from None

        return Export(rows(), fields)

    export = export_segment

    def watch_memberships(
        self, from_sequence: int = 0, segment_ids: Sequence[str] = (), *, from_latest: bool = False
    ) -> Iterator[MembershipEvent]:
        """Membership events after `from_sequence` (0: everything retained), in order, then new
        ones as they happen; endless until the caller stops iterating. To resume after an
        interruption, pass the last `sequence` received: no duplicates, no gaps. A sequence older
        than the server's retention raises SegmentdError with code OUT_OF_RANGE. `from_latest`
        (with `from_sequence` 0): only changes from now on."""
        request = _watch_request(from_sequence, segment_ids, from_latest)
        stream = self._segments.WatchMemberships(request, metadata=self._metadata)
        try:
            for msg in stream:
                for e in msg.events:
                    yield _event(e)
        except grpc.RpcError as err:
            raise _raise(err) from None
        finally:
            stream.cancel()

    watch = watch_memberships

    def get_size_history(self, segment_ids: Sequence[str] = ()) -> Dict[str, List[Tuple[_dt.datetime, int]]]:
        """Each segment's (every segment's when empty) sizes as the server sampled them
        (`--size-sample-secs`, the last 24 hours): segment id to (time, size) pairs, oldest first."""
        return self._run(_p_get_size_history(segment_ids))

    def get_membership_history(self, customer_id: str, segment_id: str = "") -> List[MembershipEvent]:
        """A customer's entries into and exits from segments (one, or all), oldest first."""
        return self._run(_p_get_membership_history(customer_id, segment_id))

    membership_history = get_membership_history

    # Families.

    def create_family(
        self,
        family_id: str,
        members: Sequence[Tuple[str, str]],
        catch_all: str,
        *,
        name: Optional[str] = None,
        description: str = "",
    ) -> segments_pb2.Family:
        """A family: `members` as (segment_id, rule_text) in order (first match wins), then the
        catch-all segment id. Each member becomes a segment."""
        return self._run(_p_create_family(family_id, members, catch_all, name, description))

    def list_families(self) -> List[segments_pb2.Family]:
        return self._run(_p_list_families())

    def delete_family(self, family_id: str) -> None:
        """Deletes a family and its member segments (the built-in RFM family cannot be)."""
        self._run(_p_delete_family(family_id))

    def reclassify(self, as_of: Optional[_dt.datetime] = None) -> segments_pb2.ReclassifyResponse:
        """Scores RFM now (or as of `as_of`) and moves customers between the RFM members."""
        return self._run(_p_reclassify(as_of))

    # Admin.

    def stats(self) -> admin_pb2.StatsResponse:
        return self._run(_p_stats())

    def get_schema(self) -> List[admin_pb2.Attribute]:
        """Every attribute with its type, built-in or custom."""
        return self._run(_p_get_schema())

    def define_attribute(self, name: str, type: str, description: str = "") -> admin_pb2.Attribute:
        """Declares a custom attribute: `type` is bool, int, float, money, date, timestamp, keyword,
        keywords or text."""
        return self._run(_p_define_attribute(name, type, description))

    def get_server_info(self) -> admin_pb2.GetServerInfoResponse:
        """Version, commit, uptime, data directory, role and state (answers while recovering)."""
        return self._run(_p_get_server_info())

    def snapshot(self) -> admin_pb2.SnapshotResponse:
        """Writes a snapshot now: a consistent point to copy the data directory from."""
        return self._run(_p_snapshot())
