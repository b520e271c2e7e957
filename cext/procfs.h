/* Small files and /proc/PID/stat, shared by cext/core.c and cext/task.c (every binary
 * links both): internal to the C core, not part of the cffi API (core.h), so
 * cext/build.py does not hand it to cdef. */
#ifndef CEXT_PROCFS_H
#define CEXT_PROCFS_H

#include <sys/types.h>

/* The start of a small file (/proc, cgroupfs, a node plan), NUL-terminated in buf (len
 * bytes, len > 0): the number of bytes read, or -1 if it can't be opened or read. */
__attribute__((visibility("hidden")))
ssize_t hpcrun_read_small(const char *path, char *buf, size_t len);

/* Field `field` (3: the state, 4: the ppid, 22: the start time, as proc(5) numbers
 * them) of the text of a /proc/PID/stat, or NULL if the text is cut short or the
 * process is a zombie (or dead). The command name (field 2) may hold spaces and ')'. */
__attribute__((visibility("hidden")))
const char *hpcrun_stat_field(const char *stat, int field);

#endif
