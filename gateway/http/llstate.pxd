# httptools' getters answered from llhttp's state in C (llstate.pyx): downstream.pyx and
# upstream.pyx call these once per exchange instead of a Python method call each.
cdef bytes request_method(object parser)
cdef bint request_keep_alive(object parser) except -1
cdef bint response_keep_alive(object parser) except -1
cdef int status_code(object parser) except -1
cdef bint should_upgrade(object parser) except -1
