"""Service discovery: services, targets and (later) health and balancer strategies."""
from .service import Service, Target

__all__ = ["Service", "Target"]
