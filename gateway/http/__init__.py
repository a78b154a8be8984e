"""The HTTP/1.1 data plane: downstream protocol, pooled upstream connections, wire hygiene."""
from __future__ import annotations

from .downstream import DownstreamProtocol
from .pool import UpstreamPool
from .replies import render_local_reply

__all__ = ["DownstreamProtocol", "UpstreamPool", "render_local_reply"]
