"""Python client for segmentd, the customer-segmentation service."""

from segmentd.client import (
    ActivityResult,
    Client,
    LoadResult,
    MembershipEvent,
    OrdersResult,
    SegmentdError,
)

__all__ = ["ActivityResult", "Client", "LoadResult", "MembershipEvent", "OrdersResult", "SegmentdError"]
