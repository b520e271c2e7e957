/* The fake-root seccomp filter (cext/seccomp.c), internal to the C core: not part of
 * the cffi API (core.h), so cext/build.py does not hand it to cdef. */
#ifndef CEXT_SECCOMP_H
#define CEXT_SECCOMP_H

/* Install the filter on the calling thread (inherited across fork and execve).
 * 0, or -1 with errno set. */
__attribute__((visibility("hidden"))) int hpcrun_seccomp_fake_install(void);

#endif
