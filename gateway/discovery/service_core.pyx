"""C-level base classes of Target and Service: see service_core.pxd. The fields' meanings are documented
where the subclasses set them (gateway/discovery/service.py)."""


cdef class TargetCore:
    pass


cdef class ServiceCore:
    pass
