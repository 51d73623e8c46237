"""Python client for segmentd, the customer-segmentation service."""

from segmentd.client import (
    ActivityResult,
    Client,
    Export,
    LoadResult,
    MembershipEvent,
    OrdersResult,
    SegmentdError,
)

__all__ = ["ActivityResult", "Client", "Export", "LoadResult", "MembershipEvent", "OrdersResult", "SegmentdError"]
