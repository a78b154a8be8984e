# Holding a caller's writable buffer for an object's lifetime, safely for the cyclic collector.
#
# Why not simply PyObject_GetBuffer(buffer): node memory hands out memoryview slices
# (NodeMemory.place). A memoryview we hold an export on must never be collected as part of a
# garbage cycle: CPython 3.11's memoryview tp_clear, finding the export, fails to release
# (the "Exception ignored in tp_clear ... BufferError: memoryview has 1 exported buffer" line)
# but drops its managed buffer anyway; our later PyBuffer_Release then deallocates the view,
# whose release reads the dropped (NULL) managed buffer: a segfault inside the collector.
# An old runtime swapped out by a live limit change is exactly such a cycle (filter -> compiled
# access -> filter, tables, their memoryviews), so workers died at random after admin changes.
#
# So the export is taken on the memoryview's underlying object (the segment, a bytearray, an
# mmap: none of them clears itself while exported) and the memoryview is let go at once; the
# object points at the slice's first byte inside that export.
from cpython.buffer cimport PyBUF_WRITABLE, Py_buffer, PyBuffer_Release, PyObject_GetBuffer


cdef inline char* pin_writable(object buffer, Py_buffer* held, Py_ssize_t* length) except NULL:
    """Fill `held` with an export covering `buffer`'s bytes; return the address of its first byte
    and set `length` to its size. The caller releases `held` (PyBuffer_Release) when done."""
    cdef Py_buffer part
    cdef char* start
    PyObject_GetBuffer(buffer, &part, PyBUF_WRITABLE)       # writable, contiguous, or raises
    start = <char*>part.buf
    length[0] = part.len
    owner = buffer.obj if type(buffer) is memoryview else None
    if owner is None or owner is buffer:
        held[0] = part                                      # no memoryview in between: keep it
        return start
    try:
        PyObject_GetBuffer(owner, held, PyBUF_WRITABLE)
    except Exception:  # noqa: BLE001 - any refusal: hold the view itself, as before
        held[0] = part                                      # the owner exports no flat bytes
        return start
    if start < <char*>held.buf or start + part.len > <char*>held.buf + held.len:
        PyBuffer_Release(held)                              # a view onto other memory: keep it
        held[0] = part
        return start
    PyBuffer_Release(&part)
    return start
