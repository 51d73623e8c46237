"""Python client for segmentd, the customer-segmentation service."""

from segmentd.client import (
    ActivityResult,
    Client,
    LoadResult,
    OrdersResult,
    SegmentdError,
)

__all__ = ["ActivityResult", "Client", "LoadResult", "OrdersResult", "SegmentdError"]
