# A common upstream response recognised in one pass, without llhttp (plain_response.pyx).
from gateway.http.head cimport HeaderView


cdef struct PlainResponse:
    int status
    int minor                   # HTTP/1.<minor>: 0 or 1
    long long content_length    # -1: no Content-Length field
    bint keep_alive             # the connection carries on after a body framed by Content-Length

cdef HeaderView scan_plain_response(bytes buf, PlainResponse* out, Py_ssize_t max_fields,
                                    Py_ssize_t max_field_bytes)
