"""The request pipeline: RequestContext, Filter phases, FilterChain, LocalReply."""
from .chain import EMPTY_CHAIN, FilterChain
from .context import RequestContext
from .filter import Filter
from .reply import LocalReply

__all__ = ["EMPTY_CHAIN", "Filter", "FilterChain", "LocalReply", "RequestContext"]
