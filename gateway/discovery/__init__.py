"""Service discovery: services, targets, balancers, health, registration, canaries (see ARCHITECTURE.md)."""
from .service import Service, Target

__all__ = ["Service", "Target"]
