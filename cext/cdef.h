/* What cffi sees of the C core (ffi.cdef). Keep in step with core.h.
 * Every function returns int: a void return would make the module reference
 * Python data symbols (Py_None). */
#define HPCRUN_EXIT_FAILED 125
#define HPCRUN_EXIT_CANNOT_EXEC 126
#define HPCRUN_EXIT_NOT_FOUND 127

#define HPCRUN_F_FAKEROOT 1
#define HPCRUN_F_WRITABLE 2
#define HPCRUN_F_PID 4
#define HPCRUN_F_IPC 8
#define HPCRUN_F_NET 16
#define HPCRUN_F_UTS 32
#define HPCRUN_F_SQUASH 64
#define HPCRUN_F_MONITOR 128
#define HPCRUN_F_NO_OVERLAY 256

#define HPCRUN_M_RDONLY 1
#define HPCRUN_M_TMPFS 2
#define HPCRUN_M_OPTIONAL 4
#define HPCRUN_M_FILE 8
#define HPCRUN_M_PROC 16
#define HPCRUN_M_CONTENT 32
#define HPCRUN_M_USERFILE 64
#define HPCRUN_M_SYSFS 128

struct hpcrun_mount {
    const char *src;
    const char *dst;
    int flags;
};

struct hpcrun_spec {
    const char *image;
    const char *squashfuse;
    int flags;
    const char *hostname;
    unsigned int uid, gid;
    const struct hpcrun_mount *mounts;
    int n_mounts;
    const char *workdir;
    int workdir_required;
    char *const *argv;
    char *const *envp;
    int stop_signal;
};

int hpcrun_enter(const struct hpcrun_spec *spec, char *err, size_t errlen, int *code);
int hpcrun_join(int pid, char *const *argv, char *const *envp, const char *workdir,
                char *err, size_t errlen, int *code);
#define HPCRUN_PROBE_USERNS 1
#define HPCRUN_PROBE_MOUNT 2
#define HPCRUN_PROBE_OVERLAY 3
#define HPCRUN_PROBE_FUSE 4
#define HPCRUN_PROBE_PID 5
#define HPCRUN_PROBE_NET 6
int hpcrun_probe(int what, char *err, size_t errlen);

const char *hpcrun_core_version(void);
