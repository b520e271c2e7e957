/* hpcrun C core: enter a container (user + mount namespaces, id maps, mounts,
 * pivot_root, environment, exec) and, for --pid=private, a minimal init.
 *
 * Python reaches this only through hpcrun/_core.py. See cext/README.md for the
 * stage diagram. cext/build.py hands this header to cffi's cdef (less the include
 * guard and #include lines): keep it to what cdef parses, and make every function
 * return int (a void return would make the module reference Py_None, a data symbol). */
#ifndef HPCRUN_CORE_H
#define HPCRUN_CORE_H

#include <stddef.h>

/* Exit codes, Docker's conventions. See also hpcrun/errors.py, which mirrors them. */
#define HPCRUN_EXIT_FAILED 125     /* hpcrun itself failed */
#define HPCRUN_EXIT_CANNOT_EXEC 126 /* command found but cannot be executed */
#define HPCRUN_EXIT_NOT_FOUND 127  /* command not found */

/* hpcrun_spec.flags */
#define HPCRUN_F_FAKEROOT 0x01  /* map the caller to uid/gid 0 */
#define HPCRUN_F_WRITABLE 0x02  /* tmpfs overlay on top of the image, discarded at exit */
#define HPCRUN_F_PID      0x04  /* new pid namespace, C init as PID 1 */
#define HPCRUN_F_IPC      0x08  /* new ipc namespace */
#define HPCRUN_F_NET      0x10  /* new network namespace, only lo up */
#define HPCRUN_F_UTS      0x20  /* new uts namespace (hostname) */
#define HPCRUN_F_SQUASH   0x40  /* image is a squashfs file: mount it with squashfuse */
#define HPCRUN_F_MONITOR  0x80  /* keep a host-side monitor even without a pid namespace */
#define HPCRUN_F_NO_OVERLAY 0x100 /* do not use overlayfs (HPCRUN_NO_OVERLAY=1): underlay */
#define HPCRUN_F_RW_ROOT  0x4000 /* bind the image directory read-write, no overlay or
                                  * skeleton: missing mount points are made in it (build);
                                  * with overlay_lower: an overlay whose upper is the image */
#define HPCRUN_F_SECCOMP_FAKE 0x8000 /* fake-root seccomp filter (cext/seccomp.c) before exec */

/* hpcrun_mount.flags: the default-bind table (hpcrun/runtime/mounts.py) is data. */
#define HPCRUN_M_RDONLY   0x01  /* remount read-only */
#define HPCRUN_M_TMPFS    0x02  /* a fresh tmpfs (src ignored) */
#define HPCRUN_M_OPTIONAL 0x04  /* skip silently when the source is missing */
#define HPCRUN_M_FILE     0x08  /* the destination is a file, not a directory */
#define HPCRUN_M_PROC     0x10  /* /proc: new one with a pid namespace, else the host's */
#define HPCRUN_M_CONTENT  0x20  /* src is file content (bound from a private tmpfs) */
#define HPCRUN_M_USERFILE 0x40  /* with CONTENT: the image's own file plus this line */
#define HPCRUN_M_SYSFS    0x80  /* /sys: a fresh sysfs with a new network namespace, else the host's */
#define HPCRUN_M_NOSKEL   0x100 /* the mount point lies on an earlier mount (/sys/fs/cgroup/...,
                                   /proc/meminfo): no skeleton entry; skipped if it is missing */
#define HPCRUN_M_SYMLINK  0x400 /* not a mount: a symlink at dst pointing to src, made in the
                                 * skeleton over the image (or in a tmpfs listed before it) */
#define HPCRUN_M_CLOSED   0x800 /* with TMPFS: mode 0755, not 1777 (the container's own /dev:
                                 * in a sticky world-writable directory the kernel refuses
                                 * O_CREAT opens of others' device nodes, may_create_in_sticky) */

struct hpcrun_mount {
    const char *src;  /* absolute host path (symlinks resolved), or content */
    const char *dst;  /* absolute path inside the container */
    int flags;
};

/* hpcrun_limits.tier: how resource limits are enforced (hpcrun/cgroups.py decides). */
#define HPCRUN_TIER_CGROUP1 1   /* cgroup v1 directories (root) */
#define HPCRUN_TIER_CGROUP2 2   /* a writable cgroup v2 subtree */
#define HPCRUN_TIER_WATCHDOG 3  /* no writable cgroup: the monitor samples /proc */

/* Limits the monitor applies and watches; hpcrun/cgroups.py made any cgroup already. */
struct hpcrun_limits {
    int tier;                  /* HPCRUN_TIER_* */
    char *const *cgroups;      /* cgroup tiers: directories the container joins (NULL-terminated),
                                  emptied and removed when it ends, even if the monitor is killed */
    const char *memory_cgroup; /* cgroup tiers: the directory with the memory controller, or NULL */
    long long memory;          /* bytes; the watchdog enforces it (0: none) */
    long long memory_swap;     /* watchdog: memory + swap, bytes (0: none) */
    long long nproc;           /* watchdog tier: RLIMIT_NPROC in the container's user namespace */
    int interval_ms;           /* watchdog sampling (and OOM polling) interval */
    const char *memory_shown;  /* the limit as shown in the OOM message ("512M") */
};

struct hpcrun_spec {
    const char *image;       /* absolute host path: root directory or squashfs file */
    const char *squashfuse;  /* squashfuse binary (HPCRUN_F_SQUASH) */
    int flags;               /* HPCRUN_F_* */
    const char *hostname;    /* with HPCRUN_F_UTS */
    unsigned int uid, gid;   /* the ids inside, mapped to the caller's (0 with --fakeroot) */
    const struct hpcrun_mount *mounts;
    int n_mounts;
    const char *workdir;     /* absolute path inside */
    int workdir_required;    /* 1: create on a writable mount or fail; 0: fall back to / */
    char *const *argv;       /* NULL-terminated */
    char *const *envp;       /* NULL-terminated; PATH in here is used to find argv[0] */
    int stop_signal;         /* the image's STOPSIGNAL: what a forwarded SIGTERM becomes (0: SIGTERM) */
    int preserve_fds;        /* --preserve-fds N: keep descriptors 3 .. 2+N open in the command;
                              * the others above 2 are closed at exec (PMI_FD's is kept) */
    const struct hpcrun_limits *limits;  /* NULL: none; else needs HPCRUN_F_MONITOR or _PID */
    int net_pid;             /* --network container:N: the instance's supervisor (0: none). Its
                              * user namespace is joined instead of making one (it owns the
                              * network namespace, which is joined next), so the ids inside are
                              * the instance's and must equal uid/gid; no HPCRUN_F_NET */
    unsigned long long net_start; /* its start time (field 22 of /proc/PID/stat): a pid that
                              * was reused is refused */
    char *const *overlay_lower; /* with HPCRUN_F_RW_ROOT (a build's RUN): NULL, or the read-only
                              * layers of an overlay root, topmost first, NULL-terminated;
                              * image is then its upper directory, written through the
                              * overlay (userxattr: user.overlay.* marks, char 0/0 whiteouts) */
    const char *overlay_work; /* the overlay's work directory (same file system as image) */
};

/* Enter the container described by spec and exec its command.
 * Default options: the calling process becomes the command and this never returns on
 * success. With HPCRUN_F_PID (or when the caller is multi-threaded) the caller stays as
 * a small monitor and exits with the command's status (or 128+N): it does not return.
 * On failure: -1, errno preserved, err filled ("can't bind /a to /b: Permission
 * denied"), *code set to HPCRUN_EXIT_*. */
int hpcrun_enter(const struct hpcrun_spec *spec, char *err, size_t errlen, int *code);

/* Enter the user + mount (+ ipc, uts, net, pid) namespaces of running container
 * process pid and exec argv there with envp, in workdir. Returns only on failure (-1,
 * as hpcrun_enter): the command replaces this process, or, where a pid namespace is
 * joined (a setns into it applies to children only), runs in a child while this
 * process stays as its monitor and exits with its status (or 128+N). */
int hpcrun_join(int pid, char *const *argv, char *const *envp, const char *workdir,
                char *err, size_t errlen, int *code);

/* Instances (hpcrun/instance/): a long-lived container whose PID 1 is a small C
 * supervisor. It keeps these descriptors, which the host side reads through
 * /proc/PID/fd/N (same user, owner of the user namespace): */
#define HPCRUN_INSTANCE_STATE_FD 3  /* the instance's state directory (log, exit) */
#define HPCRUN_INSTANCE_UPPER_FD 4  /* --writable-tmpfs: the overlay's upper directory */

/* Start an instance of spec (its flags gain HPCRUN_F_PID): clone a child into new user
 * and pid namespaces, detached (own session, stdin /dev/null, no parent-death signal),
 * which builds the file system and, if argv is non-empty, forks the command. The
 * child is PID 1: it reaps, forwards signals (SIGTERM as the stop signal) and writes
 * the command's stdout and stderr, one timestamped line at a time, to the file "log"
 * in state_dir ("SECONDS.NANOS 1|2 TEXT"), and its exit code to "exit" when it ends.
 * Without a command it waits; SIGTERM, SIGINT or SIGHUP then goes to every process of
 * the instance, and it exits 0 once its children are gone. anchor: a pidfd (or -1);
 * when that process ends (the Slurm step that started the instance), the instance
 * stops as on SIGTERM and ends at most 10 s later. 0 once the command runs (*pid: the
 * supervisor's pid); -1 as hpcrun_enter on failure (nothing left running). */
int hpcrun_instance(const struct hpcrun_spec *spec, int state_dir, int anchor, int *pid,
                    char *err, size_t errlen, int *code);

/* The batch server behind `hpcrun exec --batch` and hpcrun.api: join pid's namespaces
 * as hpcrun_join does, then answer requests on in_fd until EOF, one at a time, each
 * run in a forked child inside the container. Request: three native uint32 (length
 * of the strings, argc, envc), then NUL-terminated strings: workdir, argv, envp.
 * Answer on out_fd: three native int32 (exit status or 128+N, stdout length, stderr
 * length), then stdout, then stderr. Returns only on failure to join (-1). */
int hpcrun_serve(int pid, int in_fd, int out_fd, char *err, size_t errlen, int *code);

/* hpcrun_probe: what `hpcrun check` asks the kernel, each in a forked child. */
#define HPCRUN_PROBE_USERNS 1
#define HPCRUN_PROBE_MOUNT 2
#define HPCRUN_PROBE_OVERLAY 3
#define HPCRUN_PROBE_FUSE 4
#define HPCRUN_PROBE_PID 5
#define HPCRUN_PROBE_NET 6
#define HPCRUN_PROBE_OVERLAY_BUILD 7 /* overlayfs with userxattr (a build's RUN root) */
/* 0 if it works; -1 with errno and err filled otherwise. */
int hpcrun_probe(int what, char *err, size_t errlen);
/* The same, for probes that work in a directory of the caller's (OVERLAY_BUILD: an
 * empty directory it may fill; the caller removes it). */
int hpcrun_probe_at(int what, const char *dir, char *err, size_t errlen);

/* Execute a container plan (hpcrun/runtime/plan.py states its grammar): argv is
 * {PROGRAM, PLAN, "--", COMMAND...}. The one executor of plans: the per-task program
 * (cext/task.c's entry point) and Python (hpcrun/_core.py plan_exec) both call it.
 * Never returns: the command replaces the process, or the process stays as its
 * monitor and exits with its status; failures print one line and exit 125. */
int hpcrun_plan_exec(int argc, char **argv);

/* The hint for an error message of the core (NULL: none). */
const char *hpcrun_hint(const char *msg);

const char *hpcrun_core_version(void);

#endif
