"""C-level base classes of Worker and Runtime: see runtime_core.pxd. The fields' meanings are documented
where the subclasses set them (gateway/worker.py, gateway/runtime.py)."""


cdef class WorkerCore:
    pass


cdef class RuntimeCore:
    pass
