cimport numpy as cnp

cdef object pooled_empty(int nd, cnp.npy_intp *dims, int typenum)
cdef bint pooled(Py_ssize_t nbytes) noexcept
