cimport numpy as cnp

cdef object pooled_empty(int nd, cnp.npy_intp *dims, int typenum, const void *like,
                         const void *like2=*, bint apart=*)
cdef bint pooled(Py_ssize_t nbytes) noexcept
cdef bint streams(Py_ssize_t out_bytes, Py_ssize_t moved_bytes, bint callers_out) noexcept
