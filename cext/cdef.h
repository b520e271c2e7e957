/* What cffi sees of the C core (ffi.cdef). Keep in step with core.h. */
const char *hpcrun_core_version(void);
