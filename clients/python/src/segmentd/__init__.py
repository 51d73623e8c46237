"""Python client for segmentd, the customer-segmentation service."""

from segmentd.aio import AsyncClient
from segmentd.client import (
    ActivityResult,
    BadRow,
    Client,
    Export,
    LoadResult,
    MembershipEvent,
    OrdersResult,
    SegmentdError,
)

__all__ = ["ActivityResult", "AsyncClient", "BadRow", "Client", "Export", "LoadResult", "MembershipEvent", "OrdersResult", "SegmentdError"]
