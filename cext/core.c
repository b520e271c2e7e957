/* hpcrun C core: the whole path from unshare to exec. See cext/README.md for the
 * stage diagram and hpcrun/_core.py for the only caller.
 *
 * Error discipline (as ch-run): every step that can fail fills the caller's message
 * buffer with what was attempted ("can't bind /a to /b: Permission denied"), keeps
 * errno, and returns -1. Only a failed execve in a child process exits. */
#define _GNU_SOURCE
#include "core.h"
#include "procfs.h"
#include "seccomp.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

/* Where the container is assembled. A private tmpfs is mounted over the host's /tmp
 * inside our own mount namespace, then becomes the root (the host's root moves to
 * /oldroot); the image is mounted at /newroot, which finally becomes the root and the
 * tmpfs is detached. Nothing is ever created in the host's /tmp. */
#define BASE "/tmp"
#define OLDROOT "/oldroot"
#define NEWROOT "/newroot"
#define UPPER "/upper"   /* overlay upper / skeleton of missing mount points */
#define WORK "/work"     /* overlay work directory */
#define FILES "/files"   /* synthesized files (/etc/passwd, /etc/group) */
#define SQFS "/sqfs"     /* squashfuse mount of a squashfs image */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Signals a monitor or init passes on to the command (Slurm cancels with SIGTERM). */
static const int FORWARDED[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGQUIT,
                                SIGCONT, SIGWINCH, SIGALRM};

struct ctx {
    char *err;
    size_t errlen;
    int *code;
    pid_t fuse_pid;   /* the squashfuse server, killed if entering fails */
    int fuse_fd;      /* /dev/fuse, opened in our user namespace */
    int fuse_log;     /* memfd holding squashfuse's stderr */
    int fuse_go;      /* tells the squashfuse child to start, once the mount exists */
    int in_pidns;     /* this process is PID 1 of a new pid namespace */
    int image_mounts; /* mounts below the image directory: 0 not looked yet, 1 none, 2 some */
};

/* An instance's supervisor keeps its writable overlay's upper directory open (set only
 * in that process; see hpcrun_instance). */
static int instance_keep_upper;
static int instance_upper_fd = -1;

/* ---------------------------------------------------------------- errors */

static int vfail(struct ctx *c, int code, int with_errno, const char *fmt, va_list ap)
{
    int e = errno;
    int n = vsnprintf(c->err, c->errlen, fmt, ap);
    if (with_errno && n >= 0 && (size_t)n < c->errlen)
        snprintf(c->err + n, c->errlen - (size_t)n, ": %s", strerror(e));
    *c->code = code;
    errno = e;
    return -1;
}

/* "can't <what>: <strerror(errno)>", code 125. */
__attribute__((format(printf, 2, 3)))
static int fail(struct ctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(c, HPCRUN_EXIT_FAILED, 1, fmt, ap);
    va_end(ap);
    return -1;
}

/* The same without strerror (the message says it all). */
__attribute__((format(printf, 3, 4)))
static int failx(struct ctx *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(c, code, 0, fmt, ap);
    va_end(ap);
    return -1;
}

/* Join a and b into buf; a path that does not fit is an error, never truncated. */
static int pjoin(struct ctx *c, char *buf, const char *a, const char *b)
{
    int n = snprintf(buf, PATH_MAX, "%s%s", a, b);
    if (n < 0 || n >= PATH_MAX) {
        errno = ENAMETOOLONG;
        return fail(c, "path too long: %s%s", a, b);
    }
    return 0;
}

/* ---------------------------------------------------------------- small helpers */

static int write_file(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, data, len);
    int e = errno;
    close(fd);
    if (n != (ssize_t)len) {
        errno = n < 0 ? e : EIO;
        return -1;
    }
    return 0;
}

static int create_file(const char *path, const char *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -1;
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        off += (size_t)n;
    }
    return close(fd);
}

/* mkdir -p; the path buffer is modified in place and restored. */
static int mkdir_p(char *path, mode_t mode)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int r = mkdir(path, mode);
        int e = errno;
        *p = '/';
        if (r && e != EEXIST) {
            errno = e;
            return -1;
        }
    }
    if (mkdir(path, mode) && errno != EEXIST)
        return -1;
    return 0;
}

static int count_threads(void)
{
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 1;
    buf[n] = '\0';
    char *t = strstr(buf, "\nThreads:");
    return t ? atoi(t + 9) : 1;
}

/* Mount flags a bind remount must keep: the kernel refuses (EPERM) to drop nosuid,
 * nodev, noexec or atime flags locked on a mount inherited from a more privileged
 * namespace (mount_namespaces(7), "restrictions on mount namespaces"). */
static unsigned long locked_flags(const char *path)
{
    struct statvfs sv;
    unsigned long f = 0;
    if (statvfs(path, &sv))
        return 0;
    if (sv.f_flag & ST_NOSUID) f |= MS_NOSUID;
    if (sv.f_flag & ST_NODEV) f |= MS_NODEV;
    if (sv.f_flag & ST_NOEXEC) f |= MS_NOEXEC;
    if (sv.f_flag & ST_NOATIME) f |= MS_NOATIME;
    if (sv.f_flag & ST_NODIRATIME) f |= MS_NODIRATIME;
    if (sv.f_flag & ST_RELATIME) f |= MS_RELATIME;
    return f;
}

static int remount_ro(struct ctx *c, const char *path, const char *shown)
{
    if (mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | locked_flags(path), NULL))
        return fail(c, "can't make %s read-only", shown);
    return 0;
}

/* HPCRUN_CORE_FALLBACKS=1 (tests): take the paths for kernels without mount_setattr(2)
 * and close_range(2), so that they are exercised here too. */
static int use_fallbacks(void)
{
    const char *v = getenv("HPCRUN_CORE_FALLBACKS");
    return v && !strcmp(v, "1");
}

/* mount_setattr(2) (Linux >= 5.12); the struct under our own name, since only newer
 * glibc (2.36) and kernel headers declare it. */
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442   /* the same on every architecture (unified table) */
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#endif
struct hpcrun_mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

/* mountinfo escapes space, tab, newline and backslash as \ooo (octal): decode in place. */
static void unescape_mountinfo(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' &&
            p[3] >= '0' && p[3] <= '7') {
            *o++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
            p += 3;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
}

/* The mounts strictly below path in /proc/self/mountinfo (field 5, the mount point as
 * seen from our root; before the final pivot the host's /proc is under OLDROOT): how
 * many there are, each remounted read-only (keeping its locked flags) with remount;
 * -1 on failure, the message filled. For kernels without mount_setattr. */
static int mounts_below(struct ctx *c, const char *path, int remount, const char *shown)
{
    int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fd = open(OLDROOT "/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(c, "can't read the mount table to make %s read-only", shown);
    size_t len = 0, cap = 0;
    char *buf = NULL;
    for (;;) {
        if (len + 4096 > cap) {
            char *nb = realloc(buf, cap = cap ? cap * 2 : 65536);
            if (!nb) {
                free(buf);
                close(fd);
                return fail(c, "can't read the mount table to make %s read-only", shown);
            }
            buf = nb;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    size_t pl = strlen(path);
    int r = 0, found = 0;
    for (char *line = buf, *next; line && *line && r == 0; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *f = line;   /* id parent major:minor root MOUNT-POINT options ... */
        for (int i = 0; i < 4 && f; i++) {
            f = strchr(f, ' ');
            if (f) f++;
        }
        if (!f)
            continue;
        char *end = strchr(f, ' ');
        if (end)
            *end = '\0';
        unescape_mountinfo(f);
        if (strncmp(f, path, pl) || f[pl] != '/')
            continue;     /* not below path */
        found++;
        if (remount &&
            mount(NULL, f, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | locked_flags(f), NULL) &&
            errno != ENOENT)
            r = fail(c, "can't make %s read-only (the mount at %s below it)", shown, f + pl);
    }
    free(buf);
    return r ? r : found;
}

/* A read-only bind is read-only all the way down, as bubblewrap's --ro-bind and
 * Docker's recursive read-only: -v /:/host:ro must not leave /host/dev/shm writable.
 * mount_setattr(AT_RECURSIVE) sets MOUNT_ATTR_RDONLY on the whole tree at once and
 * leaves the other (possibly locked) flags alone; where the kernel lacks it, remount
 * each mount, keeping the locked flags. */
static int remount_ro_rec(struct ctx *c, const char *path, const char *shown)
{
    struct hpcrun_mount_attr a = {MOUNT_ATTR_RDONLY, 0, 0, 0};
    if (!use_fallbacks() &&
        syscall(SYS_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &a, sizeof a) == 0)
        return 0;
    if (remount_ro(c, path, shown))
        return -1;
    return mounts_below(c, path, 1, shown) < 0 ? -1 : 0;
}

/* The same for a bind of an entry of the image directory `lower` (the underlay binds
 * every one): without mount_setattr, one look at the mount table tells whether anything
 * is mounted below the image at all, instead of one per entry. */
static int remount_ro_entry(struct ctx *c, const char *path, const char *shown,
                            const char *lower)
{
    struct hpcrun_mount_attr a = {MOUNT_ATTR_RDONLY, 0, 0, 0};
    if (!use_fallbacks() &&
        syscall(SYS_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &a, sizeof a) == 0)
        return 0;
    if (!c->image_mounts) {
        int n = mounts_below(c, lower, 0, "the image");
        if (n < 0)
            return -1;
        c->image_mounts = n ? 2 : 1;
    }
    if (remount_ro(c, path, shown))
        return -1;
    return c->image_mounts == 2 && mounts_below(c, path, 1, shown) < 0 ? -1 : 0;
}

static const char *env_get(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (; envp && *envp; envp++)
        if (!strncmp(*envp, name, n) && (*envp)[n] == '=')
            return *envp + n + 1;
    return NULL;
}

/* ---------------------------------------------------------------- identity */

/* One map line is enough: an unprivileged process may map exactly its own uid and gid
 * (user_namespaces(7)), and gid_map needs setgroups denied first. */
static int write_maps(struct ctx *c, const char *procdir, unsigned int uid, unsigned int gid,
                      unsigned int ouid, unsigned int ogid)
{
    char path[64], line[64];
    int n;
    snprintf(path, sizeof path, "%s/setgroups", procdir);
    if (write_file(path, "deny", 4) && errno != ENOENT)
        return fail(c, "can't write %s", path);
    snprintf(path, sizeof path, "%s/uid_map", procdir);
    n = snprintf(line, sizeof line, "%u %u 1\n", uid, ouid);
    if (write_file(path, line, (size_t)n))
        return fail(c, "can't write uid map %u -> %u", uid, ouid);
    snprintf(path, sizeof path, "%s/gid_map", procdir);
    n = snprintf(line, sizeof line, "%u %u 1\n", gid, ogid);
    if (write_file(path, line, (size_t)n))
        return fail(c, "can't write gid map %u -> %u", gid, ogid);
    return 0;
}

/* ---------------------------------------------------------------- squashfuse */

/* Start squashfuse on the image, in the host's user and mount namespaces: forked
 * before we unshare anything, so that it is no process of the container's user
 * namespace. Were it one (as it once was), the command could read its
 * /proc/PID/root and /proc/PID/fd (same uid, same user namespace: ptrace access
 * allowed) and so reach the host's tree; from a child user namespace the kernel refuses
 * that (ptrace across user namespaces needs CAP_SYS_PTRACE over the target's).
 * The mount is ours: /dev/fuse must be opened in the user namespace that mounts it, so
 * fuse_open() opens it there and fuse_mount() hands the descriptor to the waiting
 * server over a socket (SCM_RIGHTS) once the mount exists (before that a read is
 * EPERM); squashfuse serves it as /dev/fd/N (libfuse >= 3.3), needing neither
 * fusermount nor privilege. When the container's last process exits the mount goes,
 * the connection is aborted and squashfuse exits; if entering fails first, the socket
 * closes and the server exits without starting. Double fork: the command must not
 * inherit it as a child it could wait for. */
static int fuse_spawn(struct ctx *c, const struct hpcrun_spec *s)
{
    int pp[2], sp[2];
    c->fuse_log = memfd_create("squashfuse-stderr", MFD_CLOEXEC);
    if (c->fuse_log < 0)
        return fail(c, "can't create memfd");
    if (pipe2(pp, O_CLOEXEC) || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp))
        return fail(c, "can't create pipe");
    pid_t a = fork();
    if (a < 0)
        return fail(c, "can't fork");
    if (a == 0) {
        pid_t b = fork();
        if (b == 0) {
            char fdpath[32], g;
            union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
            struct iovec iov = {&g, 1};
            struct msghdr mh;
            memset(&mh, 0, sizeof mh);
            mh.msg_iov = &iov;
            mh.msg_iovlen = 1;
            mh.msg_control = u.buf;
            mh.msg_controllen = sizeof u.buf;
            close(sp[0]);
            ssize_t n;
            do
                n = recvmsg(sp[1], &mh, MSG_CMSG_CLOEXEC);
            while (n < 0 && errno == EINTR);
            struct cmsghdr *cm = n == 1 ? CMSG_FIRSTHDR(&mh) : NULL;
            if (!cm || cm->cmsg_type != SCM_RIGHTS)
                _exit(0);       /* entering failed before the mount: nothing to serve */
            int fd;
            memcpy(&fd, CMSG_DATA(cm), sizeof fd);
            setsid();   /* not in the terminal's process group: ^C is for the command */
            snprintf(fdpath, sizeof fdpath, "/dev/fd/%d", fd);
            fcntl(fd, F_SETFD, 0);
            dup2(c->fuse_log, 2);
            int nul = open("/dev/null", O_RDWR);
            if (nul >= 0) {
                dup2(nul, 0);
                dup2(nul, 1);
            }
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            prctl(PR_SET_NAME, "hpcrun:sqfuse");
            execl(s->squashfuse, "squashfuse", "-f", s->image, fdpath, (char *)NULL);
            dprintf(2, "can't execute %s: %s\n", s->squashfuse, strerror(errno));
            _exit(127);
        }
        ssize_t w = write(pp[1], &b, sizeof b);
        _exit(w == (ssize_t)sizeof b ? 0 : 1);
    }
    close(pp[1]);
    close(sp[1]);
    c->fuse_go = sp[0];
    pid_t b = -1;
    ssize_t r;
    do
        r = read(pp[0], &b, sizeof b);
    while (r < 0 && errno == EINTR);
    close(pp[0]);
    while (waitpid(a, NULL, 0) < 0 && errno == EINTR)
        ;
    if (r != (ssize_t)sizeof b || b <= 0) {
        errno = ECHILD;
        return fail(c, "can't start %s", s->squashfuse);
    }
    c->fuse_pid = b;
    return 0;
}

/* In the container's user namespace, before its mount namespace exists. */
static int fuse_open(struct ctx *c, const struct hpcrun_spec *s)
{
    c->fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (c->fuse_fd < 0)
        return fail(c, "can't open /dev/fuse to mount %s", s->image);
    return 0;
}

/* Hand the mounted connection to the server: the go-ahead and the descriptor at once. */
static int fuse_hand_over(struct ctx *c)
{
    char g = 'g';
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
    struct iovec iov = {&g, 1};
    struct msghdr mh;
    memset(&u, 0, sizeof u);
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = u.buf;
    mh.msg_controllen = sizeof u.buf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &c->fuse_fd, sizeof(int));
    ssize_t n;
    do
        n = sendmsg(c->fuse_go, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n == 1 ? 0 : -1;
}

static int fuse_mount(struct ctx *c, const struct hpcrun_spec *s, const char *target)
{
    char opts[128];
    struct stat st;
    snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=%u,group_id=%u",
             c->fuse_fd, s->uid, s->gid);
    if (mount("squashfuse", target, "fuse.squashfuse", MS_NOSUID | MS_NODEV | MS_RDONLY, opts))
        return fail(c, "can't mount squashfs %s", s->image);
    if (fuse_hand_over(c))
        return fail(c, "can't start squashfuse");
    close(c->fuse_go);
    c->fuse_go = -1;
    close(c->fuse_fd);   /* squashfuse's copy is now the only one: if it dies, ENOTCONN */
    c->fuse_fd = -1;
    if (stat(target, &st) == 0)
        return 0;
    int e = errno;
    char msg[512];
    ssize_t n = pread(c->fuse_log, msg, sizeof msg - 1, 0);
    n = n < 0 ? 0 : n;
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    msg[n] = '\0';
    char *last = strrchr(msg, '\n');
    errno = e;
    if (n > 0)
        return failx(c, HPCRUN_EXIT_FAILED, "can't mount squashfs %s: %s", s->image,
                     last ? last + 1 : msg);
    return fail(c, "can't mount squashfs %s", s->image);
}

/* ---------------------------------------------------------------- file system */

/* Escape a path for an overlayfs option value (',' ':' '\' are separators). */
static int ovl_escape(struct ctx *c, char *out, size_t outlen, const char *in)
{
    size_t j = 0;
    for (; *in; in++) {
        if (j + 3 >= outlen) {
            errno = ENAMETOOLONG;
            return fail(c, "path too long for overlay: %s", in);
        }
        if (*in == ',' || *in == ':' || *in == '\\')
            out[j++] = '\\';
        out[j++] = *in;
    }
    out[j] = '\0';
    return 0;
}

/* Does the image have a usable mount point at dst (a directory, or a regular file for a
 * file mount)? A symlink is not usable: mount(2) would follow it outside the image. */
static int have_mountpoint(const char *lower, const char *dst, int want_file)
{
    char p[PATH_MAX];
    struct stat st;
    if (snprintf(p, sizeof p, "%s%s", lower, dst) >= (int)sizeof p)
        return 0;
    if (lstat(p, &st))
        return 0;
    return want_file ? S_ISREG(st.st_mode) : S_ISDIR(st.st_mode);
}

/* Create dst in the skeleton (the overlay layer above the image). */
static int skeleton_add(struct ctx *c, const char *dst, int is_file)
{
    char p[PATH_MAX];
    if (pjoin(c, p, UPPER, dst))
        return -1;
    if (is_file) {
        char *slash = strrchr(p, '/');
        *slash = '\0';
        if (slash != p && mkdir_p(p, 0755))
            return fail(c, "can't create mount point %s", dst);
        *slash = '/';
        if (create_file(p, "", 0, 0644))
            return fail(c, "can't create mount point %s", dst);
    } else if (mkdir_p(p, 0755)) {
        return fail(c, "can't create mount point %s", dst);
    }
    return 0;
}

/* A symlink at dst (to target) in the skeleton: CDI's create-symlinks hook, made over
 * the image, never in it. An entry the image has at dst is shadowed by it. */
static int skeleton_link(struct ctx *c, const char *root, const char *target, const char *dst)
{
    char p[PATH_MAX];
    if (pjoin(c, p, root, dst))
        return -1;
    char *slash = strrchr(p, '/');
    *slash = '\0';
    int r = slash != p && mkdir_p(p, 0755);
    *slash = '/';
    if (r || (symlink(target, p) && errno != EEXIST))
        return fail(c, "can't create symlink %s -> %s", dst, target);
    return 0;
}

/* ---------------------------------------------------------------- underlay */

/* Re-create the skeleton's subtree at dst (directories and empty files). */
static int copy_skeleton(struct ctx *c, const char *skel, const char *dst)
{
    DIR *d = opendir(skel);
    struct dirent *e;
    char s2[PATH_MAX], d2[PATH_MAX];
    if (!d)
        return fail(c, "can't read %s", skel);
    while ((e = readdir(d))) {
        struct stat st;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (snprintf(s2, sizeof s2, "%s/%s", skel, e->d_name) >= (int)sizeof s2 ||
            snprintf(d2, sizeof d2, "%s/%s", dst, e->d_name) >= (int)sizeof d2 || lstat(s2, &st)) {
            closedir(d);
            errno = ENAMETOOLONG;
            return fail(c, "can't create mount point %s", d2);
        }
        if (S_ISLNK(st.st_mode)) {
            char t[PATH_MAX];
            ssize_t n = readlink(s2, t, sizeof t - 1);
            if (n >= 0)
                t[n] = '\0';
            if (n < 0 || (symlink(t, d2) && errno != EEXIST)) {
                closedir(d);
                return fail(c, "can't create symlink %s", d2);
            }
            continue;
        }
        if (S_ISDIR(st.st_mode) ? (mkdir(d2, 0755) && errno != EEXIST) || copy_skeleton(c, s2, d2)
                                : create_file(d2, "", 0, 0644)) {
            closedir(d);
            return fail(c, "can't create mount point %s", d2);
        }
    }
    closedir(d);
    return 0;
}

/* The underlay, as Apptainer's: where overlayfs can't be mounted in a user namespace,
 * NEWROOT is a tmpfs; every directory that needs a new entry (those in the skeleton)
 * is a directory of that tmpfs holding read-only binds of the image's entries (symlinks
 * copied), plus the new mount points; everything else is bound from the image. */
static int is_mount_dst(const struct hpcrun_spec *s, const char *rel)
{
    for (int i = 0; i < s->n_mounts; i++)
        if (!strcmp(s->mounts[i].dst, rel))
            return 1;
    return 0;
}

static int underlay(struct ctx *c, const struct hpcrun_spec *s, const char *lower,
                    const char *rel)
{
    char img[PATH_MAX], skel[PATH_MAX], dst[PATH_MAX], a[PATH_MAX], b[PATH_MAX], k[PATH_MAX];
    struct dirent *e;
    snprintf(img, sizeof img, "%s%s", lower, rel);
    snprintf(skel, sizeof skel, "%s%s", UPPER, rel);
    snprintf(dst, sizeof dst, "%s%s", NEWROOT, rel);
    DIR *d = opendir(img);
    if (!d)
        return fail(c, "can't read %s in the image", *rel ? rel : "/");
    while ((e = readdir(d))) {
        struct stat si, sk;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (snprintf(a, sizeof a, "%s/%s", img, e->d_name) >= (int)sizeof a ||
            snprintf(b, sizeof b, "%s/%s", dst, e->d_name) >= (int)sizeof b ||
            snprintf(k, sizeof k, "%s/%s", skel, e->d_name) >= (int)sizeof k || lstat(a, &si)) {
            closedir(d);
            errno = ENAMETOOLONG;
            return fail(c, "can't underlay %s/%s", rel, e->d_name);
        }
        int in_skel = lstat(k, &sk) == 0;
        int r = 0;
        if (in_skel && S_ISDIR(sk.st_mode) && S_ISDIR(si.st_mode)) {
            char sub[PATH_MAX];
            snprintf(sub, sizeof sub, "%s/%s", rel, e->d_name);
            r = mkdir(b, si.st_mode & 07777) || underlay(c, s, lower, sub);
        } else if (in_skel) {
            continue;   /* the skeleton's entry replaces the image's; made below */
        } else if (S_ISLNK(si.st_mode)) {
            char t[PATH_MAX];
            ssize_t n = readlink(a, t, sizeof t - 1);
            r = n < 0;
            if (!r) {
                t[n] = '\0';
                r = symlink(t, b);
            }
        } else {
            char sub[PATH_MAX];
            snprintf(sub, sizeof sub, "%s/%s", rel, e->d_name);
            r = S_ISDIR(si.st_mode) ? mkdir(b, si.st_mode & 07777) : create_file(b, "", 0, 0644);
            if (!r && is_mount_dst(s, sub))
                continue;       /* something is mounted here anyway: a mount point suffices */
            if (!r && mount(a, b, NULL, MS_BIND | MS_REC, NULL)) {
                closedir(d);
                return fail(c, "can't bind %s%s/%s from the image", rel, "", e->d_name);
            }
            if (!r && (S_ISDIR(si.st_mode) ? remount_ro_entry(c, b, e->d_name, lower)
                                            : remount_ro(c, b, e->d_name))) {
                closedir(d);
                return -1;
            }
        }
        if (r) {
            closedir(d);
            return fail(c, "can't underlay %s/%s", rel, e->d_name);
        }
    }
    closedir(d);
    return copy_skeleton(c, skel, dst);
}

/* /etc/passwd or /etc/group: the image's file minus entries with our name or id, plus
 * our line (src). */
static int user_file(struct ctx *c, const char *lower, const struct hpcrun_mount *m,
                     const char *out)
{
    const char *line = m->src;
    size_t namelen = strcspn(line, ":");
    const char *idp = line;
    for (int i = 0; i < 2 && idp; i++) {
        idp = strchr(idp, ':');
        if (idp) idp++;
    }
    size_t idlen = idp ? strcspn(idp, ":") : 0;
    char path[PATH_MAX];
    char *buf = NULL;
    size_t len = 0, cap = 0;
    if (pjoin(c, path, lower, m->dst))
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        for (;;) {
            if (len + 4096 > cap) {
                cap = cap ? cap * 2 : 16384;
                if (cap > (64u << 20)) break;    /* a sane bound on /etc/passwd */
                char *nb = realloc(buf, cap);
                if (!nb) break;
                buf = nb;
            }
            ssize_t n = read(fd, buf + len, cap - len);
            if (n <= 0) break;
            len += (size_t)n;
        }
        close(fd);
    }
    size_t linelen = strlen(line);
    char *outb = malloc(len + linelen + 2);
    if (!outb) {
        free(buf);
        return fail(c, "can't synthesize %s", m->dst);
    }
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t e = i;
        while (e < len && buf[e] != '\n') e++;
        const char *l = buf + i;
        size_t ll = e - i;
        int drop = 0;
        size_t nl = 0;
        while (nl < ll && l[nl] != ':') nl++;
        if (nl == namelen && !memcmp(l, line, namelen))
            drop = 1;
        const char *f = l;
        const char *end = l + ll;
        for (int k = 0; k < 2 && f < end; k++) {
            f = memchr(f, ':', (size_t)(end - f));
            f = f ? f + 1 : end;
        }
        size_t fl = 0;
        while (f + fl < end && f[fl] != ':') fl++;
        if (idp && f < end && fl == idlen && !memcmp(f, idp, idlen))
            drop = 1;
        if (!drop && ll) {
            memcpy(outb + o, l, ll);
            o += ll;
            outb[o++] = '\n';
        }
        i = e + 1;
    }
    memcpy(outb + o, line, linelen);
    o += linelen;
    if (!linelen || line[linelen - 1] != '\n')
        outb[o++] = '\n';
    int r = create_file(out, outb, o, 0644);
    free(buf);
    free(outb);
    if (r)
        return fail(c, "can't synthesize %s", m->dst);
    return 0;
}

/* Does dst lie under the destination of a tmpfs mount listed before index i? Mount
 * points there are made in that tmpfs when it is mounted, not in the skeleton. */
static int under_tmpfs(const struct hpcrun_spec *s, int i)
{
    const char *dst = s->mounts[i].dst;
    for (int j = 0; j < i; j++) {
        const struct hpcrun_mount *m = &s->mounts[j];
        size_t n = strlen(m->dst);
        if ((m->flags & HPCRUN_M_TMPFS) && !strncmp(dst, m->dst, n) &&
            (dst[n] == '/' || (n == 1 && m->dst[0] == '/')))
            return 1;
    }
    return 0;
}

static int do_mounts(struct ctx *c, const struct hpcrun_spec *s, const char *lower)
{
    char dst[PATH_MAX], src[PATH_MAX];
    for (int i = 0; i < s->n_mounts; i++) {
        const struct hpcrun_mount *m = &s->mounts[i];
        if (m->flags & HPCRUN_M_SYMLINK) {
            /* made in the skeleton by setup_fs, unless a tmpfs listed before hides it */
            if (under_tmpfs(s, i) && skeleton_link(c, NEWROOT, m->src, m->dst))
                return -1;
            continue;
        }
        if (pjoin(c, dst, NEWROOT, m->dst))
            return -1;
        if (m->flags & HPCRUN_M_TMPFS) {
            if (mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV,
                      (m->flags & HPCRUN_M_CLOSED) ? "mode=0755" : "mode=1777"))
                return fail(c, "can't mount tmpfs on %s", m->dst);
            continue;
        }
        if ((m->flags & HPCRUN_M_SYSFS) && ((s->flags & HPCRUN_F_NET) || s->net_pid) &&
            mount("sysfs", dst, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL) == 0) {
            /* With its own network namespace, a fresh sysfs shows only its interfaces
             * (allowed: our user namespace owns that network namespace; with --network
             * container:N, the instance's owns the instance's, which we joined). Where
             * the kernel refuses (an instance on the host's network), the host's is
             * bound below. */
            continue;
        }
        if ((m->flags & HPCRUN_M_PROC) && c->in_pidns) {
            /* A new procfs shows only this pid namespace. Allowed because our user
             * namespace owns the pid namespace and a full /proc is visible. */
            if (mount("proc", dst, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
                return fail(c, "can't mount proc on %s", m->dst);
            continue;
        }
        if (m->flags & HPCRUN_M_CONTENT) {
            snprintf(src, sizeof src, "%s/%d", FILES, i);
            if (m->flags & HPCRUN_M_USERFILE) {
                if (user_file(c, lower, m, src))
                    return -1;
            } else if (create_file(src, m->src, strlen(m->src), 0644)) {
                return fail(c, "can't write %s", m->dst);
            }
        } else if (pjoin(c, src, OLDROOT, m->src)) {
            return -1;
        }
        if ((m->flags & HPCRUN_M_OPTIONAL) && access(src, F_OK))
            continue;
        if ((m->flags & HPCRUN_M_NOSKEL) && access(dst, F_OK))
            continue;       /* e.g. /sys/fs/cgroup/memory in a fresh sysfs */
        if (under_tmpfs(s, i) && access(dst, F_OK)) {
            int is_file = (m->flags & (HPCRUN_M_FILE | HPCRUN_M_CONTENT)) != 0;
            char *slash = strrchr(dst, '/');
            *slash = '\0';
            int r = mkdir_p(dst, 0755);
            *slash = '/';
            if (r || (is_file ? create_file(dst, "", 0, 0644) : mkdir(dst, 0755)))
                return fail(c, "can't create mount point %s", m->dst);
        }
        if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL)) {
            if (m->flags & HPCRUN_M_CONTENT)
                return fail(c, "can't bind a synthesized file to %s", m->dst);
            return fail(c, "can't bind %s to %s", m->src, m->dst);
        }
        /* nothing can be mounted below a file: a plain remount does */
        int file = (m->flags & (HPCRUN_M_FILE | HPCRUN_M_CONTENT)) != 0;
        if ((m->flags & (HPCRUN_M_RDONLY | HPCRUN_M_CONTENT)) &&
            (file ? remount_ro(c, dst, m->dst) : remount_ro_rec(c, dst, m->dst)))
            return -1;
    }
    return 0;
}

/* Build the container's root at BASE/NEWROOT and pivot into it. */
/* HPCRUN_F_RW_ROOT (a build's root): the image directory is the build's own copy, so
 * mount points it lacks are made in it, as Docker's RUN leaves them in a layer. */
static int rw_root_mountpoints(struct ctx *c, const struct hpcrun_spec *s, const char *lower)
{
    char p[PATH_MAX];
    for (int i = 0; i < s->n_mounts; i++) {
        const struct hpcrun_mount *m = &s->mounts[i];
        int is_file = (m->flags & (HPCRUN_M_FILE | HPCRUN_M_CONTENT)) != 0;
        if ((m->flags & HPCRUN_M_OPTIONAL) && !(m->flags & HPCRUN_M_CONTENT)) {
            if (pjoin(c, p, OLDROOT, m->src))
                return -1;
            if (access(p, F_OK))
                continue;
        }
        if (under_tmpfs(s, i) || have_mountpoint(lower, m->dst, is_file))
            continue;
        if (pjoin(c, p, lower, m->dst))
            return -1;
        char *slash = strrchr(p, '/');
        if (is_file && slash) {
            *slash = '\0';
            int r = mkdir_p(p, 0755);
            *slash = '/';
            if (r || create_file(p, "", 0, 0644))
                return fail(c, "can't create mount point %s in the build root", m->dst);
        } else if (!is_file && mkdir_p(p, 0755)) {
            return fail(c, "can't create mount point %s in the build root", m->dst);
        }
    }
    return 0;
}

/* HPCRUN_F_RW_ROOT with overlay_lower (a build's RUN): the root is an overlay of the
 * build's read-only layers (the store's unpacked base, then the earlier steps' upper
 * directories) under this step's own upper directory, so nothing is copied before the
 * RUN and what it changed is exactly the upper directory (hpcrun/build/executor.py reads
 * it). userxattr: in a user namespace overlayfs can't write trusted.* (it needs
 * CAP_SYS_ADMIN in the initial namespace; without it a lower directory that was removed
 * can't be made again: EIO), so its opaque-directory marks go to user.overlay.*
 * (overlayfs.rst, "Permission model"; Linux 5.11). userxattr also keeps metacopy and
 * redirect_dir off, so every file in the upper directory is whole and a renamed lower
 * directory was copied (EXDEV): the upper directory alone says what changed. Each
 * layer is reached through a short symlink in our tmpfs (/L/N): mount(2) takes one
 * page of options, and the store's paths are long. */
static int overlay_root(struct ctx *c, const struct hpcrun_spec *s)
{
    char opts[4096], p[PATH_MAX], esc_u[2 * PATH_MAX], esc_w[2 * PATH_MAX], link[32];
    size_t n = (size_t)snprintf(opts, sizeof opts, "lowerdir=");
    if (!s->overlay_work) {
        errno = EINVAL;
        return fail(c, "the build's overlay has no work directory");
    }
    if (mkdir("/L", 0755))
        return fail(c, "can't create /L");
    for (int i = 0; s->overlay_lower[i]; i++) {
        snprintf(link, sizeof link, "/L/%d", i);
        if (pjoin(c, p, OLDROOT, s->overlay_lower[i]))
            return -1;
        if (symlink(p, link))
            return fail(c, "can't create %s", link);
        int k = snprintf(opts + n, sizeof opts - n, "%s%s", i ? ":" : "", link);
        if (k < 0 || (size_t)k >= sizeof opts - n) {
            errno = E2BIG;
            return fail(c, "too many layers for the build's overlay (%d)", i + 1);
        }
        n += (size_t)k;
    }
    if (pjoin(c, p, OLDROOT, s->image) || ovl_escape(c, esc_u, sizeof esc_u, p) ||
        pjoin(c, p, OLDROOT, s->overlay_work) || ovl_escape(c, esc_w, sizeof esc_w, p))
        return -1;
    int k = snprintf(opts + n, sizeof opts - n, ",upperdir=%s,workdir=%s,userxattr", esc_u, esc_w);
    if (k < 0 || (size_t)k >= sizeof opts - n) {
        errno = E2BIG;
        return fail(c, "the build's overlay options are too long");
    }
    if (mount("overlay", NEWROOT, "overlay", MS_NOSUID, opts))
        return fail(c, "can't mount the build's overlay on %s", s->image);
    return 0;
}

static int setup_fs(struct ctx *c, const struct hpcrun_spec *s)
{
    char lower[PATH_MAX], opts[3 * PATH_MAX + 64], esc1[2 * PATH_MAX], p[PATH_MAX];
    static const char *const dirs[] = {OLDROOT, NEWROOT, UPPER, WORK, FILES, SQFS};
    int writable = s->flags & HPCRUN_F_WRITABLE;

    /* Nothing we mount may propagate back to the host. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
        return fail(c, "can't make / private");
    if (mount("hpcrun", BASE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"))
        return fail(c, "can't mount tmpfs on %s", BASE);
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        if (pjoin(c, p, BASE, dirs[i]) || mkdir(p, 0755))
            return fail(c, "can't create %s", p);
    }
    if (s->flags & HPCRUN_F_SQUASH) {
        if (pjoin(c, p, BASE, SQFS) || fuse_mount(c, s, p))
            return -1;
    }
    /* pivot_root(2) into the tmpfs: new_root is a mount point, not on the root's mount,
     * and nothing is shared (made private above). */
    if (chdir(BASE) || syscall(SYS_pivot_root, ".", OLDROOT + 1))
        return fail(c, "can't pivot_root to a private tmpfs");
    if (chdir("/"))
        return fail(c, "can't chdir to /");

    if (s->flags & HPCRUN_F_SQUASH)
        snprintf(lower, sizeof lower, "%s", SQFS);
    else if (pjoin(c, lower, OLDROOT, s->image))
        return -1;

    /* Mount points the image lacks go into a skeleton layered above it, so the image is
     * never changed on disk (it may be read-only, shared, owned by root). */
    int skeleton = 0, underlaid = 0;
    int ovl_root = (s->flags & HPCRUN_F_RW_ROOT) && s->overlay_lower && s->overlay_lower[0];
    if (ovl_root) {
        /* mounted first: the mount points a RUN lacks are made through it, in its upper */
        if (overlay_root(c, s))
            return -1;
        snprintf(lower, sizeof lower, "%s", NEWROOT);
    }
    if ((s->flags & HPCRUN_F_RW_ROOT) && rw_root_mountpoints(c, s, lower))
        return -1;
    for (int i = 0; !(s->flags & HPCRUN_F_RW_ROOT) && i < s->n_mounts; i++) {
        const struct hpcrun_mount *m = &s->mounts[i];
        int is_file = (m->flags & (HPCRUN_M_FILE | HPCRUN_M_CONTENT)) != 0;
        if (m->flags & HPCRUN_M_NOSKEL)
            continue;       /* on an earlier mount (/sys, /proc): nothing to make */
        if (m->flags & HPCRUN_M_SYMLINK) {
            if (under_tmpfs(s, i))
                continue;
            if (skeleton_link(c, UPPER, m->src, m->dst))
                return -1;
            skeleton = 1;
            continue;
        }
        if ((m->flags & HPCRUN_M_OPTIONAL) && !(m->flags & HPCRUN_M_CONTENT)) {
            if (pjoin(c, p, OLDROOT, m->src))
                return -1;
            if (access(p, F_OK))
                continue;
        }
        if (under_tmpfs(s, i) || have_mountpoint(lower, m->dst, is_file))
            continue;
        if (skeleton_add(c, m->dst, is_file))
            return -1;
        skeleton = 1;
    }

    if (ovl_escape(c, esc1, sizeof esc1, lower))
        return -1;
    if (ovl_root) {
        /* mounted above */
    } else if (writable) {
        snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s", esc1, UPPER, WORK);
        if (s->flags & HPCRUN_F_NO_OVERLAY)
            errno = EPERM;
        if ((s->flags & HPCRUN_F_NO_OVERLAY) || mount("overlay", NEWROOT, "overlay", MS_NOSUID, opts))
            return fail(c, "can't mount a writable overlay on %s", s->image);
        if (instance_keep_upper && (instance_upper_fd = open(UPPER, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
            return fail(c, "can't open the overlay's upper directory");
    } else if (skeleton) {
        snprintf(opts, sizeof opts, "lowerdir=%s:%s", UPPER, esc1);
        if ((s->flags & HPCRUN_F_NO_OVERLAY) ||
            mount("overlay", NEWROOT, "overlay", MS_NOSUID | MS_RDONLY, opts)) {
            /* No overlayfs in a user namespace here (kernel < 5.11, or refused): an
             * underlay of binds on a tmpfs does the same job at some more mounts. */
            if (mount("hpcrun", NEWROOT, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"))
                return fail(c, "can't mount tmpfs on %s", NEWROOT);
            if (underlay(c, s, lower, ""))
                return -1;
            underlaid = 1;
        }
    } else if (mount(lower, NEWROOT, NULL, MS_BIND | MS_REC, NULL)) {
        return fail(c, "can't bind %s to /", s->image);
    } else if (!(s->flags & HPCRUN_F_RW_ROOT) && remount_ro_rec(c, NEWROOT, "the image")) {
        /* Read-only now (a build's root stays writable), with whatever is mounted below the image directory on the host;
         * the container's own mounts come next and keep their own modes. */
        return -1;
    }

    if (do_mounts(c, s, lower))
        return -1;
    /* The underlay's tmpfs, not its binds (each made read-only already). */
    if (underlaid && remount_ro(c, NEWROOT, "the image"))
        return -1;

    /* pivot_root(".", ".") stacks the old root on top of the new one; detaching it
     * drops the tmpfs and the host's tree together (pivot_root(2), NOTES). */
    if (chdir(NEWROOT) || syscall(SYS_pivot_root, ".", "."))
        return fail(c, "can't pivot_root to %s", s->image);
    if (umount2(".", MNT_DETACH))
        return fail(c, "can't detach the old root");
    if (chdir("/"))
        return fail(c, "can't chdir to /");
    return 0;
}

static int net_lo_up(struct ctx *c)
{
    struct ifreq ifr;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(c, "can't create a socket to bring up lo");
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) == 0) {
            close(fd);
            return 0;
        }
    }
    close(fd);
    return fail(c, "can't bring up lo");
}

/* After the user namespace exists: squashfuse, the other namespaces, file system. */
static int enter_rest(struct ctx *c, const struct hpcrun_spec *s)
{
    int fl = CLONE_NEWNS;
    if (s->flags & HPCRUN_F_SQUASH && fuse_open(c, s))
        return -1;
    if (s->flags & HPCRUN_F_IPC) fl |= CLONE_NEWIPC;
    if (s->flags & HPCRUN_F_NET) fl |= CLONE_NEWNET;
    if (s->flags & HPCRUN_F_UTS) fl |= CLONE_NEWUTS;
    if (unshare(fl))
        return fail(c, "can't create mount/ipc/network/uts namespaces");
    if ((s->flags & HPCRUN_F_NET) && net_lo_up(c))
        return -1;
    if ((s->flags & HPCRUN_F_UTS) && s->hostname &&
        sethostname(s->hostname, strlen(s->hostname)))
        return fail(c, "can't set hostname to %s", s->hostname);
    return setup_fs(c, s);
}

/* ---------------------------------------------------------------- exec */

/* The working directory must lie inside the container's root. A path through a magic
 * link (/proc/self/fd/N of an inherited directory, /proc/PID/cwd of a host process)
 * would start the command outside it, the runc CVE-2024-21626 class. The kernel's
 * getcwd(2) tells: it prefixes "(unreachable)" to a directory not below our root (the
 * raw syscall; glibc's getcwd turns that into ENOENT). */
static int cwd_inside(struct ctx *c, const char *shown)
{
    char p[PATH_MAX];
    long n = syscall(SYS_getcwd, p, sizeof p);
    if (n > 0 && p[0] == '/')
        return 0;
    if (n < 0 && errno != ENOENT)
        return fail(c, "can't tell where working directory %s lies", shown);
    errno = EPERM;
    return failx(c, HPCRUN_EXIT_FAILED, "can't use working directory %s: it lies outside "
                 "the container's root", shown);
}

static int chdir_work(struct ctx *c, const struct hpcrun_spec *s)
{
    char p[PATH_MAX];
    const char *wd = s->workdir && *s->workdir ? s->workdir : "/";
    if (!s->workdir || !*s->workdir || chdir(s->workdir) == 0)
        return cwd_inside(c, wd);
    if (!s->workdir_required)
        return chdir("/") ? fail(c, "can't chdir to /") : cwd_inside(c, "/");
    if (errno == ENOENT && snprintf(p, sizeof p, "%s", s->workdir) < (int)sizeof p) {
        if (mkdir_p(p, 0755))
            return fail(c, "can't create working directory %s", s->workdir);
        if (chdir(p) == 0)
            return cwd_inside(c, wd);
    }
    return fail(c, "can't chdir to %s", s->workdir);
}

/* ---------------------------------------------------------------- descriptors */

/* Variables that name a descriptor the command needs: the PMI-1/PMI-2 wire protocol's
 * (Slurm's mpi/pmi2, MPICH's hydra, Flux). PMIx connects by socket path instead. */
static const char *const FD_VARS[] = {"PMI_FD"};

/* Mark every inherited descriptor above 2 close-on-exec, but 3 .. 2+preserve (Docker's
 * --preserve-fds) and those FD_VARS name in the command's environment: a descriptor of
 * the host's (`3</`) would reach the host's tree through /proc/self/fd/3. Close-on-exec
 * rather than close: the report pipe to a parent must stay until execve succeeds.
 * close_range(2) with CLOSE_RANGE_CLOEXEC (Linux >= 5.11) over the ranges between the
 * kept ones; else each open descriptor from /proc/self/fd (or up to the limit). */
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#define MAX_KEPT (sizeof FD_VARS / sizeof *FD_VARS)

static int kept_fd(int fd, unsigned int first, const int *keep, size_t nkeep)
{
    if ((unsigned int)fd < first)
        return 1;
    for (size_t i = 0; i < nkeep; i++)
        if (keep[i] == fd)
            return 1;
    return 0;
}

static void cloexec_inherited(const struct hpcrun_spec *s)
{
    int keep[MAX_KEPT] = {0};
    size_t nkeep = 0;
    unsigned int first = 3 + (unsigned int)(s->preserve_fds > 0 ? s->preserve_fds : 0);
    for (size_t i = 0; i < MAX_KEPT; i++) {
        const char *v = env_get(s->envp, FD_VARS[i]);
        char *end;
        long n;
        if (!v || !*v)
            continue;
        errno = 0;
        n = strtol(v, &end, 10);
        if (!*end && !errno && n >= (long)first && n < 0x7fffffff)
            keep[nkeep++] = (int)n;
    }
    /* sort the few kept ones, then mark the gaps between them */
    for (size_t i = 1; i < nkeep; i++)
        for (size_t j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
            int t = keep[j];
            keep[j] = keep[j - 1];
            keep[j - 1] = t;
        }
    if (!use_fallbacks()) {
        unsigned int lo = first;
        int ok = 1;
        for (size_t i = 0; i < nkeep && ok; i++) {
            unsigned int k = (unsigned int)keep[i];
            if (k < lo)
                continue;           /* the same one twice */
            if (k > lo && syscall(SYS_close_range, lo, k - 1, CLOSE_RANGE_CLOEXEC))
                ok = 0;
            lo = k + 1;
        }
        if (ok && syscall(SYS_close_range, lo, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
            return;
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        int self = dirfd(d);
        for (struct dirent *e; (e = readdir(d));) {
            char *end;
            long fd = strtol(e->d_name, &end, 10);
            if (*end || e->d_name[0] < '0' || e->d_name[0] > '9' || fd == self ||
                kept_fd((int)fd, first, keep, nkeep))
                continue;
            fcntl((int)fd, F_SETFD, FD_CLOEXEC);
        }
        closedir(d);
        return;
    }
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > (1L << 20))
        max = 1L << 20;
    for (long fd = first; fd < max; fd++)
        if (!kept_fd((int)fd, first, keep, nkeep))
            fcntl((int)fd, F_SETFD, FD_CLOEXEC);
}

/* ---------------------------------------------------------------- terminal injection */

/* TIOCSTI pushes bytes into a terminal's input queue, TIOCLINUX (selection paste) does
 * the same on a virtual console: a command holding the caller's terminal could type
 * commands into the caller's shell after it exits. A seccomp filter refuses both
 * ioctls (EPERM) to the command and all it starts; job control and every other ioctl
 * stay (setsid would cost the command its controlling terminal, and ^C with it).
 * The request is an unsigned int to the kernel: compare the low 32 bits only (a 64-bit
 * compare is bypassed by setting high bits, CVE-2019-10063). 32-bit system calls of a
 * 64-bit kernel (i386 on x86-64, arm on arm64) have their own ioctl number. Installing
 * needs CAP_SYS_ADMIN in our user namespace (held here) or no_new_privs, which we do
 * not set: it would change what the image's programs may do. */
#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#define COMPAT_ARCH AUDIT_ARCH_I386
#define COMPAT_IOCTL 54
#define X32_IOCTL (0x40000000 | 514)
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#define COMPAT_ARCH AUDIT_ARCH_ARM
#define COMPAT_IOCTL 54
#define X32_IOCTL __NR_ioctl
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG1_LOW offsetof(struct seccomp_data, args[1])
#else
#define ARG1_LOW (offsetof(struct seccomp_data, args[1]) + 4)
#endif

static int tty_filter_done;   /* once per process: a fork inherits the filter */

/* Whether the command can reach a terminal: a controlling one (TIOCSTI works only on
 * the caller's own controlling terminal, unless it holds CAP_SYS_ADMIN in the initial
 * user namespace, so a process without one cannot type into any terminal in use: one
 * that controls another session cannot become ours), or one among the descriptors it
 * inherits (TIOCLINUX needs only a descriptor of a virtual console). Batch work (Slurm
 * steps, workflow tools, pipes) reaches none, and goes without the filter: a filter
 * costs every system call of the job 50-100 ns on this machine (the seccomp entry
 * path), and protects nothing there. Unsure (no /proc): yes. */
static int reaches_terminal(const struct hpcrun_spec *s)
{
    for (int fd = 0; fd <= 2 + (s->preserve_fds > 0 ? s->preserve_fds : 0); fd++)
        if (isatty(fd))
            return 1;
    char buf[1024];
    if (hpcrun_read_small("/proc/self/stat", buf, sizeof buf) <= 0)
        return 1;
    const char *tty = hpcrun_stat_field(buf, 7);     /* tty_nr */
    return !tty || strtol(tty, NULL, 10) != 0;
}

static int block_tty_injection(struct ctx *c, const struct hpcrun_spec *s)
{
    if (!reaches_terminal(s))
        return 0;
#ifdef NATIVE_ARCH
    struct sock_filter f[] = {
        /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 0, 4),
        /* 2 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        /* 3 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 6, 0),
        /* 4 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, X32_IOCTL, 5, 0),
        /* 5 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 6 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, COMPAT_ARCH, 0, 2),
        /* 7 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        /* 8 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, COMPAT_IOCTL, 1, 0),
        /* 9 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 10 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG1_LOW),
        /* 11 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCSTI, 2, 0),
        /* 12 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCLINUX, 1, 0),
        /* 13 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 14 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof *f), f};
    if (tty_filter_done)
        return 0;
    /* SPEC_ALLOW: a filter must not turn on the speculative-store-bypass mitigation
     * for the whole job (kernels before 5.16 do, by default, for seccomp'd tasks: a
     * cost on every HPC code's memory traffic); before Linux 4.17 there is no flag. */
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW, &prog) &&
        (errno != EINVAL || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)))
        return fail(c, "can't install the seccomp filter against terminal injection (TIOCSTI)");
    tty_filter_done = 1;
#else
    (void)c;    /* an architecture without the numbers above: no filter */
    (void)s;
#endif
    return 0;
}

static void reset_signals(const sigset_t *mask)
{
    /* Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across
     * execve(2), and a command must start with the defaults. */
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    sigprocmask(SIG_SETMASK, mask, NULL);
}

/* Exec argv[0], searching the container's PATH (execvpe(3) would search ours). Returns
 * only on failure, with 126 or 127 in *code as Docker does. */
static int do_exec(struct ctx *c, const struct hpcrun_spec *s)
{
    const char *file = s->argv[0];
    char p[PATH_MAX];
    int eacces = 0, last = ENOENT;
    if (block_tty_injection(c, s))
        return -1;
    if ((s->flags & HPCRUN_F_SECCOMP_FAKE) && hpcrun_seccomp_fake_install())
        return fail(c, "can't install the fake-root seccomp filter");
    cloexec_inherited(s);
    if (strchr(file, '/')) {
        execve(file, s->argv, s->envp);
        last = errno;
    } else {
        const char *path = env_get(s->envp, "PATH");
        if (!path) path = DEFAULT_PATH;
        while (*path) {
            size_t n = strcspn(path, ":");
            int len = snprintf(p, sizeof p, "%.*s/%s", (int)n, n ? path : ".", file);
            if (len > 0 && len < (int)sizeof p) {
                execve(p, s->argv, s->envp);
                if (errno == EACCES)
                    eacces = 1;
                else if (errno != ENOENT && errno != ENOTDIR)
                    last = errno;
            }
            path += n;
            if (*path == ':') path++;
        }
        if (eacces && last == ENOENT)
            last = EACCES;
    }
    errno = last;
    if (last == ENOENT || last == ENOTDIR)
        return failx(c, HPCRUN_EXIT_NOT_FOUND, "command not found in the container: %s", file);
    return failx(c, HPCRUN_EXIT_CANNOT_EXEC, "can't execute %s: %s", file, strerror(last));
}

/* ---------------------------------------------------------------- monitor and init */

static void forwarded_set(sigset_t *set)
{
    sigemptyset(set);
    for (size_t i = 0; i < sizeof FORWARDED / sizeof *FORWARDED; i++)
        sigaddset(set, FORWARDED[i]);
    sigaddset(set, SIGCHLD);
}

static int wstatus_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return HPCRUN_EXIT_FAILED;
}

/* A caller that has threads keeps them running beside the monitor, and a signal sent
 * to the process may be taken by one of them (which do not block it): there a handler
 * forwards it. Single-threaded, the signals stay blocked and this never runs. */
static volatile sig_atomic_t fwd_child = -1;
static volatile sig_atomic_t fwd_stopsig;
static volatile sig_atomic_t fwd_pending;   /* a signal taken before the child existed */

static void forward_handler(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    int e = errno;
    if (si->si_code == SI_KERNEL)
        ;   /* from the terminal: the command's process group got it too */
    else if (fwd_child > 0)
        kill(fwd_child, sig == SIGTERM && fwd_stopsig > 0 ? fwd_stopsig : sig);
    else
        fwd_pending = sig;
    errno = e;
}

/* Installed before the child is created, so no signal finds the default action. */
static void forward_from_other_threads(struct sigaction *old)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = forward_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigfillset(&sa.sa_mask);
    fwd_child = -1;
    fwd_pending = 0;
    for (size_t i = 0; i < sizeof FORWARDED / sizeof *FORWARDED; i++)
        sigaction(FORWARDED[i], &sa, &old[i]);
}

static void forward_to(pid_t child, int stopsig)
{
    fwd_stopsig = stopsig;
    fwd_child = child;
    if (fwd_pending)
        kill(child, fwd_pending == SIGTERM && stopsig > 0 ? stopsig : fwd_pending);
}

static void forward_restore(const struct sigaction *old)
{
    fwd_child = -1;
    for (size_t i = 0; i < sizeof FORWARDED / sizeof *FORWARDED; i++)
        sigaction(FORWARDED[i], &old[i], NULL);
}

/* Wait for child with the forwarded signals blocked (they were blocked before the fork,
 * so none is lost), pass each on (SIGTERM as the image's STOPSIGNAL when we are the
 * command's parent), and reap. As PID 1 also reap orphans (any pid); the
 * kernel kills the rest of the pid namespace when we return and exit. A blocked signal
 * is queued even for a pid-namespace init (an unblocked SIG_DFL one would be dropped). */
static int supervise(pid_t child, int init, int stopsig)
{
    sigset_t set;
    forwarded_set(&set);
    for (;;) {
        int st;
        pid_t p;
        while ((p = waitpid(init ? -1 : child, &st, WNOHANG)) > 0)
            if (p == child)
                return wstatus_code(st);
        if (p < 0 && errno == ECHILD)
            return HPCRUN_EXIT_FAILED;
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        /* A signal from the terminal (^C, ^\\, window size) went to the whole foreground
         * process group, the command included: passing it on would deliver it twice. */
        if (sig > 0 && sig != SIGCHLD && si.si_code != SI_KERNEL)
            kill(child, sig == SIGTERM && stopsig > 0 ? stopsig : sig);
    }
}

/* A monitor or init is a fork of the Python launcher: without care it keeps the whole
 * interpreter resident (10+ MiB of heap). Before waiting, drop every mapping except
 * what the loop needs: libc and the dynamic loader (text, data, bss), this module
 * (linked -z now, so no lazy symbol resolution needs the loader's heap), the stack, the
 * TLS block (errno, the stack-protector canary) and the vDSO. Signal handlers point into
 * Python's code, so they are reset first; the loop itself takes every signal it cares
 * about by sigwaitinfo with the signals blocked, and calls no allocator. The text
 * pages the interpreter faulted in are released too (MADV_DONTNEED on a read-only
 * file mapping only drops page-table entries; they fault back in from the page cache
 * if used). */
#define MAPS_MAX (1 << 17)
static int is_libc(const char *name)
{
    return strstr(name, "/libc.so") || strstr(name, "/libc-") || strstr(name, "/ld-linux") ||
           strstr(name, "/ld-musl");
}

static int keep_mapping(const char *name, unsigned long lo, unsigned long hi,
                        const unsigned long *addrs, int naddrs)
{
    for (int i = 0; i < naddrs; i++)
        if (addrs[i] >= lo && addrs[i] < hi)
            return 1;
    return is_libc(name) || strstr(name, "_ccore") || !strcmp(name, "[stack]") || !strcmp(name, "[vdso]") ||
           !strcmp(name, "[vvar]") || !strcmp(name, "[vvar_vclock]") || !strcmp(name, "[vsyscall]");
}

/* Locale-free number parsing: sscanf would read the locale's ctype tables, which are a
 * file mapping we may already have dropped. */
static const char *parse_num(const char *p, int base, unsigned long *out)
{
    unsigned long v = 0;
    int any = 0;
    for (;; p++) {
        int d;
        if (*p >= '0' && *p <= '9') d = *p - '0';
        else if (base == 16 && *p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
        else break;
        v = v * (unsigned long)base + (unsigned long)d;
        any = 1;
    }
    *out = v;
    return any ? p : NULL;
}

static const char *skip_field(const char *p)
{
    while (*p && *p != ' ') p++;
    while (*p == ' ') p++;
    return p;
}

/* 0 in a program without an interpreter to drop (cext/task.c). */
int hpcrun_trim_monitor = 1;

static void trim_memory(void)
{
    unsigned long tp = 0;
#if defined(__x86_64__)
    __asm__ volatile("mov %%fs:0, %0" : "=r"(tp));
#elif defined(__aarch64__)
    __asm__ volatile("mrs %0, tpidr_el0" : "=r"(tp));
#else
    return;   /* unknown thread-pointer register: keep everything */
#endif
    if (!hpcrun_trim_monitor || getenv("HPCRUN_NO_TRIM"))
        return;
    char maps_buf[MAPS_MAX];    /* on the stack: nothing of ours lives in anonymous memory */
    unsigned long addrs[] = {tp, (unsigned long)__errno_location(), (unsigned long)&tp};
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    size_t len = 0;
    ssize_t n;
    while (len < sizeof maps_buf - 1 &&
           (n = read(fd, maps_buf + len, sizeof maps_buf - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    if (len >= sizeof maps_buf - 1)
        return;   /* did not read it all: keep everything rather than guess */
    maps_buf[len] = '\0';
    /* Only trim where libc is a shared object we can recognise and keep whole: find the
     * mapping holding waitpid(2)'s code (a libc linked into the interpreter statically
     * would have its data in the interpreter's own mappings). */
    unsigned long libc_fn = (unsigned long)&waitpid;
    int libc_ok = 0;
    for (const char *l = maps_buf; l && *l;) {
        unsigned long lo, hi;
        const char *q = parse_num(l, 16, &lo);
        if (q && *q == '-' && (q = parse_num(q + 1, 16, &hi)) && libc_fn >= lo && libc_fn < hi) {
            const char *name = skip_field(skip_field(skip_field(skip_field(skip_field(l)))));
            const char *eol = strchr(name, '\n');
            char nm[PATH_MAX];
            size_t n = eol ? (size_t)(eol - name) : strlen(name);
            if (n >= sizeof nm)
                n = sizeof nm - 1;
            memcpy(nm, name, n);
            nm[n] = '\0';
            libc_ok = is_libc(nm) != 0;
            break;
        }
        l = strchr(l, '\n');
        if (l) l++;
    }
    if (!libc_ok)
        return;
    for (int sig = 1; sig < 32; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
    int keep_prev = 0;
    char *line = maps_buf;
    while (line && *line) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        /* start-end perms offset dev inode name */
        unsigned long lo, hi;
        const char *q = parse_num(line, 16, &lo);
        if (!q || *q != '-' || !(q = parse_num(q + 1, 16, &hi))) {
            line = next;
            continue;
        }
        const char *perms = skip_field(line);
        const char *name = skip_field(skip_field(skip_field(skip_field(perms))));
        int keep = keep_mapping(name, lo, hi, addrs, 3);
        /* The anonymous mapping right after libc or the loader is its bss. */
        if (!keep && !*name && keep_prev)
            keep = 1;
        keep_prev = keep && is_libc(name);
        if (!keep)
            munmap((void *)lo, hi - lo);
        else if (name[0] == '/' && perms[1] != 'w' && perms[2] == 'x')
            madvise((void *)lo, hi - lo, MADV_DONTNEED);
        line = next;
    }
}

/* ---------------------------------------------------------------- limits */

/* Resource limits (hpcrun/cgroups.py chose the tier and made any cgroup). The monitor
 * moves the container's first process into the cgroups before it starts, watches for
 * OOM kills, and removes the cgroups when the container ends; a reaper process removes
 * them if the monitor itself is killed. Without a writable cgroup, the monitor is the
 * watchdog: it sums the memory of the container's processes (those in its user
 * namespace) from /proc at an interval and kills the container at the limit.
 * Everything below that runs in the monitor runs after trim_memory(): no allocator, no
 * stdio, no locale, only system calls and these small helpers. */

/* Processes seen at the last sample, ascending (as /proc lists them), and whether
 * each is the container's: a pid present at two samples in a row is the same process
 * (the pid space wraps far slower), so only new ones need their namespace read. */
#define WATCH_MAX 8192
#define WATCH_FULL_MS 2000      /* so often every process is checked (hpcrun join) */

struct watch {
    const struct hpcrun_limits *L;
    int prev[WATCH_MAX], cur[WATCH_MAX];
    int prev_fd[WATCH_MAX], cur_fd[WATCH_MAX];   /* a container process's statm, kept open */
    unsigned char prev_in[WATCH_MAX], cur_in[WATCH_MAX];
    int nprev, nfds;
    long long listed_ms, full_ms;  /* when /proc was last listed, last fully checked */
    pid_t child;
    int pidns;
    int procfd;                 /* /proc, read again at every sample */
    char userns[64];            /* readlink of the container's /proc/PID/ns/user */
    ssize_t userns_len;
    long long peak;             /* the largest sample (watchdog), bytes */
    unsigned long oom_seen;     /* cgroup tiers: oom_kill count already acted on */
    int oom;                    /* the container was killed for memory */
    long page;
};

/* a + number + b into buf (paths under /proc and cgroup directories). */
static void cat_num(char *buf, size_t len, const char *a, unsigned long n, const char *b)
{
    char t[24];
    size_t k = 0, i = 0;
    do t[k++] = (char)('0' + n % 10); while ((n /= 10));
    for (; *a && i + 1 < len; a++) buf[i++] = *a;
    while (k && i + 1 < len) buf[i++] = t[--k];
    for (; b && *b && i + 1 < len; b++) buf[i++] = *b;
    buf[i] = '\0';
}

ssize_t hpcrun_read_small(const char *path, char *buf, size_t len)
{
    buf[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = 0, got = 0;
    while ((size_t)got < len - 1 && (n = read(fd, buf + got, len - 1 - (size_t)got)) > 0)
        got += n;
    close(fd);
    buf[got] = '\0';
    return got == 0 && n < 0 ? -1 : got;
}

const char *hpcrun_stat_field(const char *stat, int field)
{
    const char *p = strrchr(stat, ')');
    if (!p || p[1] != ' ' || !p[2] || p[2] == 'Z' || p[2] == 'X')
        return NULL;
    p += 2;                          /* field 3 */
    for (int f = 3; f < field; f++) {
        p = strchr(p, ' ');
        if (!p)
            return NULL;
        p++;
    }
    return *p ? p : NULL;
}

/* The number after "key" at the start of a line of buf (e.g. "oom_kill ", "Pss:"). */
static unsigned long key_num(const char *buf, const char *key)
{
    size_t kl = strlen(key);
    for (const char *l = buf; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL)
        if (!strncmp(l, key, kl)) {
            const char *p = l + kl;
            unsigned long v = 0;
            while (*p == ' ' || *p == '\t') p++;
            parse_num(p, 10, &v);
            return v;
        }
    return 0;
}

static unsigned long file_num(const char *dir, const char *leaf, const char *key)
{
    char p[PATH_MAX], buf[1024];
    size_t n = strlen(dir);
    if (n + strlen(leaf) + 2 > sizeof p)
        return 0;
    memcpy(p, dir, n);
    p[n] = '/';
    memcpy(p + n + 1, leaf, strlen(leaf) + 1);
    if (hpcrun_read_small(p, buf, sizeof buf) <= 0)
        return 0;
    if (key)
        return key_num(buf, key);
    unsigned long v = 0;
    parse_num(buf, 10, &v);
    return v;
}

/* Sum the memory of the container's processes: resident (statm; pss: proportional, from
 * smaps_rollup, which walks page tables and is only read to confirm a kill) and swap.
 * With kill_them, SIGKILL each instead. Returns the number of processes found. */
static long long mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void watch_forget(struct watch *w, int j);

/* Between two listings of /proc: the resident memory of the processes already known
 * to be the container's, from their statm kept open (one pread each). */
static int watch_reread(struct watch *w, long long *mem, long long *swap)
{
    char data[256], path[64];
    int found = 0;
    for (int j = 0; j < w->nprev; j++) {
        if (!w->prev_in[j])
            continue;
        ssize_t got;
        if (w->prev_fd[j] >= 0) {
            got = pread(w->prev_fd[j], data, sizeof data - 1, 0);
            if (got <= 0) {          /* exited (ESRCH): the next listing drops it */
                watch_forget(w, j);
                w->prev_in[j] = 0;
                continue;
            }
            data[got] = '\0';
        } else {
            cat_num(path, sizeof path, "/proc/", (unsigned long)w->prev[j], "/statm");
            if ((got = hpcrun_read_small(path, data, sizeof data)) <= 0)
                continue;
        }
        unsigned long rss = 0;
        parse_num(skip_field(data), 10, &rss);
        *mem += (long long)rss * w->page;
        found++;
        if (w->L->memory_swap) {
            char st[2048];
            cat_num(path, sizeof path, "/proc/", (unsigned long)w->prev[j], "/status");
            if (hpcrun_read_small(path, st, sizeof st) > 0)
                *swap += (long long)key_num(st, "VmSwap:") * 1024;
        }
    }
    return found;
}

static void watch_forget(struct watch *w, int j)
{
    if (w->prev_fd[j] >= 0) {
        close(w->prev_fd[j]);
        w->nfds--;
        w->prev_fd[j] = -1;
    }
}

static int watch_scan(struct watch *w, int pss, int kill_them, long long *mem, long long *swap)
{
    char dents[32768], path[64], link[64], data[2048];
    int found = 0, j = 0, ncur = 0;
    long long now = mono_ms();
    int cached = !pss && !kill_them && now - w->full_ms < WATCH_FULL_MS;
    *mem = *swap = 0;
    if (!pss && !kill_them && now - w->listed_ms < (w->L->interval_ms > 0 ? w->L->interval_ms : 100))
        return watch_reread(w, mem, swap);   /* between listings: the known processes */
    if (!pss && !kill_them) {
        w->listed_ms = now;
        if (!cached)
            w->full_ms = now;
    }
    if (lseek(w->procfd, 0, SEEK_SET) < 0)
        return 0;
    for (;;) {
        long n = syscall(SYS_getdents64, w->procfd, dents, sizeof dents);
        if (n <= 0)
            break;
        for (long off = 0; off < n;) {
            struct dirent64 *d = (struct dirent64 *)(dents + off);
            unsigned long pid;
            off += d->d_reclen;
            const char *q = parse_num(d->d_name, 10, &pid);
            if (!q || *q)
                continue;
            int in = -1, fd = -1, track = !pss && !kill_them;
            if (track) {
                while (j < w->nprev && w->prev[j] < (int)pid)
                    watch_forget(w, j++);           /* gone */
                if (j < w->nprev && w->prev[j] == (int)pid) {
                    if (cached)
                        in = w->prev_in[j];
                    fd = w->prev_fd[j++];
                }
            }
            if (in < 0) {
                cat_num(path, sizeof path, "/proc/", pid, "/ns/user");
                ssize_t l = readlink(path, link, sizeof link);
                in = l == w->userns_len && !memcmp(link, w->userns, (size_t)l);
            }
            if (fd >= 0 && !in) {
                close(fd);
                w->nfds--;
                fd = -1;
            }
            if (track && in && fd < 0 && w->nfds < 512) {
                cat_num(path, sizeof path, "/proc/", pid, "/statm");
                fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd >= 0)
                    w->nfds++;
            }
            if (track && ncur < WATCH_MAX) {
                w->cur[ncur] = (int)pid;
                w->cur_fd[ncur] = fd;
                w->cur_in[ncur++] = (unsigned char)in;
            } else if (track && fd >= 0) {
                close(fd);
                w->nfds--;
                fd = -1;
            }
            if (!in)
                continue;
            found++;
            if (kill_them) {
                kill((pid_t)pid, SIGKILL);
                continue;
            }
            if (pss) {
                cat_num(path, sizeof path, "/proc/", pid, "/smaps_rollup");
                if (hpcrun_read_small(path, data, sizeof data) > 0) {
                    *mem += (long long)key_num(data, "Pss:") * 1024;
                    *swap += (long long)key_num(data, "SwapPss:") * 1024;
                }
                continue;
            }
            cat_num(path, sizeof path, "/proc/", pid, "/statm");
            unsigned long rss = 0;
            ssize_t got = fd >= 0 ? pread(fd, data, sizeof data - 1, 0) : hpcrun_read_small(path, data, sizeof data);
            if (fd >= 0 && got >= 0)
                data[got] = '\0';
            if (got > 0) {
                const char *f = skip_field(data);
                parse_num(f, 10, &rss);
                *mem += (long long)rss * w->page;
            }
            if (w->L->memory_swap) {
                cat_num(path, sizeof path, "/proc/", pid, "/status");
                if (hpcrun_read_small(path, data, sizeof data) > 0)
                    *swap += (long long)key_num(data, "VmSwap:") * 1024;
            }
        }
    }
    if (!pss && !kill_them) {
        while (j < w->nprev)
            watch_forget(w, j++);
        memcpy(w->prev, w->cur, (size_t)ncur * sizeof *w->cur);
        memcpy(w->prev_fd, w->cur_fd, (size_t)ncur * sizeof *w->cur_fd);
        memcpy(w->prev_in, w->cur_in, (size_t)ncur);
        w->nprev = ncur;
    }
    return found;
}

/* Every process of a cgroup: SIGKILL. cgroup.procs is read in pieces, a number that
 * straddles two pieces carried over. Returns how many were signalled. */
static int cgroup_kill(const char *dir)
{
    char p[PATH_MAX], buf[4096];
    size_t n = strlen(dir), carry = 0;
    int killed = 0;
    if (n + sizeof "/cgroup.procs" > sizeof p)
        return 0;
    memcpy(p, dir, n);
    memcpy(p + n, "/cgroup.procs", sizeof "/cgroup.procs");
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    for (;;) {
        ssize_t r = read(fd, buf + carry, sizeof buf - 1 - carry);
        if (r <= 0)
            break;
        size_t len = carry + (size_t)r, start = 0;
        for (size_t i = 0; i < len; i++)
            if (buf[i] == '\n') {
                unsigned long pid;
                buf[i] = '\0';
                if (parse_num(buf + start, 10, &pid) && pid > 0 && kill((pid_t)pid, SIGKILL) == 0)
                    killed++;
                start = i + 1;
            }
        carry = len - start;
        memmove(buf, buf + start, carry);
    }
    close(fd);
    return killed;
}

/* Empty and remove the container's cgroups (children first: they are listed leaf
 * last, so walk backwards). A cgroup is busy until its last process has exited. */
static void cgroup_remove(const struct hpcrun_limits *L)
{
    int n = 0;
    while (L->cgroups && L->cgroups[n])
        n++;
    for (int i = n - 1; i >= 0; i--)
        for (int tries = 0; tries < 2000; tries++) {
            cgroup_kill(L->cgroups[i]);
            if (rmdir(L->cgroups[i]) == 0 || errno == ENOENT)
                break;
            struct timespec ts = {0, 5 * 1000000};
            nanosleep(&ts, NULL);
        }
}

/* The limits copied onto the monitor's stack: the caller's (Python's heap) are gone
 * after trim_memory(). */
#define LIMITS_MAX_CGROUPS 8
struct limits_copy {
    struct hpcrun_limits L;
    char *dirs[LIMITS_MAX_CGROUPS + 1];
    char dir[LIMITS_MAX_CGROUPS][PATH_MAX];
    char memdir[PATH_MAX];
    char shown[32];
};

static const struct hpcrun_limits *limits_copy(struct limits_copy *k, const struct hpcrun_limits *L)
{
    int n = 0;
    k->L = *L;
    for (; L->cgroups && L->cgroups[n] && n < LIMITS_MAX_CGROUPS; n++) {
        snprintf(k->dir[n], sizeof k->dir[n], "%s", L->cgroups[n]);
        k->dirs[n] = k->dir[n];
    }
    k->dirs[n] = NULL;
    k->L.cgroups = k->dirs;
    if (L->memory_cgroup) {
        snprintf(k->memdir, sizeof k->memdir, "%s", L->memory_cgroup);
        k->L.memory_cgroup = k->memdir;
    }
    if (L->memory_shown) {
        snprintf(k->shown, sizeof k->shown, "%s", L->memory_shown);
        k->L.memory_shown = k->shown;
    }
    return &k->L;
}

/* cgroup v1: the cgroups' `tasks` files, opened by the monitor before the clone
 * (limits_open) and written by the container's first process itself, "0" (limits_join),
 * while it is still single-threaded. The kernel moves a thread that moves itself without
 * taking cgroup_threadgroup_rwsem, whose write side waits for an RCU grace period: on this
 * machine's kernel (6.18) 0.02-0.03 ms against 4.5-8 ms for any pid written from outside
 * or for a whole process through cgroup.procs (benchmarks/limits.py). The permission is
 * checked with the opener's credentials (the monitor's), so the user namespace the child
 * is already in changes nothing. cgroup v2 has no such file for a domain cgroup
 * (cgroup.threads moves a thread only within its domain): there the monitor writes the
 * child's pid into cgroup.procs (limits_attach). */
static int limits_fd[LIMITS_MAX_CGROUPS];
static int limits_nfd;

static void limits_close(void)
{
    for (int i = 0; i < limits_nfd; i++)
        close(limits_fd[i]);
    limits_nfd = 0;
}

static int limits_open(struct ctx *c, const struct hpcrun_limits *L)
{
    char p[PATH_MAX];
    limits_nfd = 0;
    if (L->tier != HPCRUN_TIER_CGROUP1)
        return 0;
    for (int i = 0; L->cgroups && L->cgroups[i] && i < LIMITS_MAX_CGROUPS; i++) {
        if (pjoin(c, p, L->cgroups[i], "/tasks")) {
            limits_close();
            return -1;
        }
        int fd = open(p, O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            limits_close();
            errno = e;
            return fail(c, "can't move the container into cgroup %s", L->cgroups[i]);
        }
        limits_fd[limits_nfd++] = fd;
    }
    return 0;
}

/* In the container's first process, before anything else: into the v1 cgroups. */
static int limits_join(struct ctx *c, const struct hpcrun_limits *L)
{
    for (int i = 0; i < limits_nfd; i++) {
        if (write(limits_fd[i], "0\n", 2) != 2) {
            int e = errno;
            limits_close();
            errno = e;
            return fail(c, "can't move the container into cgroup %s", L->cgroups[i]);
        }
    }
    limits_close();
    return 0;
}

/* In the monitor, before the container starts: move its first process into the
 * cgroups (from outside, so the monitor itself stays out: an OOM in the container
 * must not take its reporter along). cgroup v2 only; v1: limits_open/limits_join. */
static int limits_attach(struct ctx *c, const struct hpcrun_limits *L, pid_t pid)
{
    char p[PATH_MAX], num[24];
    if (L->tier == HPCRUN_TIER_CGROUP1)
        return 0;
    for (int i = 0; L->cgroups && L->cgroups[i]; i++) {
        if (pjoin(c, p, L->cgroups[i], "/cgroup.procs"))
            return -1;
        int n = snprintf(num, sizeof num, "%d\n", (int)pid);
        if (write_file(p, num, (size_t)n))
            return fail(c, "can't move the container into cgroup %s", L->cgroups[i]);
    }
    return 0;
}

/* In the container's first process, once it is in its cgroups: a cgroup namespace
 * rooted there (so /proc/self/cgroup reads "/" and the view mounted at /sys/fs/cgroup
 * is the limiting cgroup itself), and the process limit without a cgroup. RLIMIT_NPROC
 * is counted per user namespace (kernel >= 5.14, ucounts): set here, inside the new one,
 * it bounds the container's processes and threads, not all of the user's. */
static int limits_child(struct ctx *c, const struct hpcrun_limits *L)
{
    if (L->tier != HPCRUN_TIER_WATCHDOG && unshare(CLONE_NEWCGROUP))
        return fail(c, "can't create a cgroup namespace");
    if (L->nproc > 0) {
        struct rlimit rl = {(rlim_t)L->nproc, (rlim_t)L->nproc};
        if (setrlimit(RLIMIT_NPROC, &rl))
            return fail(c, "can't set the process limit to %lld", L->nproc);
    }
    return 0;
}

/* An instance's monitor (instance_monitor): the OOM message goes to the instance's
 * log as a stderr line, and the exit code to its state, instead of to stderr. */
static int watch_logfd = -1;
static int watch_statefd = -1;
static void log_line(int logfd, char stream, const char *text, size_t len);
static void write_exit(int statefd, int code);

static void watch_init(struct watch *w, const struct hpcrun_limits *L, pid_t child, int pidns)
{
    char path[64];
    memset(w, 0, sizeof *w);
    w->L = L;
    w->child = child;
    w->pidns = pidns;
    w->page = sysconf(_SC_PAGESIZE);
    w->procfd = -1;
    if (L->tier == HPCRUN_TIER_WATCHDOG && (L->memory || L->memory_swap)) {
        w->procfd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cat_num(path, sizeof path, "/proc/", (unsigned long)child, "/ns/user");
        w->userns_len = readlink(path, w->userns, sizeof w->userns);
    }
}

static void watch_kill(struct watch *w)
{
    long long m, s;
    w->oom = 1;
    if (watch_statefd >= 0)
        write_exit(watch_statefd, 128 + SIGKILL);   /* an instance: before its PID 1 dies */
    kill(w->child, SIGKILL);    /* with a pid namespace, its init: the kernel kills the rest */
    if (w->L->tier != HPCRUN_TIER_WATCHDOG) {
        for (int i = 0; w->L->cgroups && w->L->cgroups[i]; i++)
            cgroup_kill(w->L->cgroups[i]);
    } else if (w->procfd >= 0) {
        for (int i = 0; i < 100 && watch_scan(w, 0, 1, &m, &s); i++)
            ;
    }
}

/* One sample; returns the milliseconds until the next. */
static int watch_tick(struct watch *w)
{
    const struct hpcrun_limits *L = w->L;
    int ms = L->interval_ms > 0 ? L->interval_ms : 100;
    if (w->oom)
        return ms;
    if (L->tier != HPCRUN_TIER_WATCHDOG) {
        /* oom_kill, not oom: an ancestor with the same limit counts the event too. v1 has
         * no memory.oom.group: the rest of the cgroup is killed here instead. */
        if (!L->memory_cgroup)
            return ms;
        unsigned long k = L->tier == HPCRUN_TIER_CGROUP2
                              ? file_num(L->memory_cgroup, "memory.events", "oom_kill ")
                              : file_num(L->memory_cgroup, "memory.oom_control", "oom_kill ");
        if (k > w->oom_seen) {
            w->oom_seen = k;
            watch_kill(w);
        }
        return ms;
    }
    if (w->procfd < 0)
        return ms;
    long long mem, swap;
    watch_scan(w, 0, 0, &mem, &swap);
    int over = (L->memory && mem > L->memory) || (L->memory_swap && mem + swap > L->memory_swap);
    if (over) {
        /* Resident sizes count shared pages once per process: confirm with PSS. */
        watch_scan(w, 1, 0, &mem, &swap);
        over = (L->memory && mem > L->memory) || (L->memory_swap && mem + swap > L->memory_swap);
    }
    if (mem > w->peak)
        w->peak = mem;
    if (over) {
        watch_kill(w);
        return ms;
    }
    /* The interval follows the headroom: far below the limit (under half) every 2.5
     * intervals, close to it (over three quarters) five times as often. A burst
     * between two samples is what the watchdog cannot catch. */
    long long lim = L->memory ? L->memory : L->memory_swap;
    if (mem > lim / 4 * 3)
        ms = ms / 5 > 10 ? ms / 5 : 10;
    else if (mem < lim / 2)
        ms = ms * 5 / 2;
    return ms;
}

static size_t fmt_size(char *out, long long v)
{
    char num[24];
    size_t n;
    unsigned long long mib = ((unsigned long long)v + (1u << 19)) >> 20;
    if (mib >= 10240) {
        unsigned long long tenths = ((unsigned long long)v * 10 + (1ull << 29)) >> 30;
        cat_num(num, sizeof num, "", (unsigned long)(tenths / 10), ".");
        n = strlen(num);
        num[n++] = (char)('0' + tenths % 10);
        num[n++] = 'G';
        num[n] = '\0';
    } else {
        cat_num(num, sizeof num, "", (unsigned long)mib, "M");
    }
    n = strlen(num);
    memcpy(out, num, n + 1);
    return n;
}

/* After the command ended: the last OOM count, the peak, the message, the cgroups gone. */
static int watch_end(struct watch *w, int code)
{
    const struct hpcrun_limits *L = w->L;
    long long peak = w->peak;
    if (L->tier != HPCRUN_TIER_WATCHDOG && L->memory_cgroup) {
        int v2 = L->tier == HPCRUN_TIER_CGROUP2;
        unsigned long k = v2 ? file_num(L->memory_cgroup, "memory.events", "oom_kill ")
                             : file_num(L->memory_cgroup, "memory.oom_control", "oom_kill ");
        if (k > w->oom_seen)
            w->oom = 1;
        peak = (long long)file_num(L->memory_cgroup, v2 ? "memory.peak" : "memory.max_usage_in_bytes",
                                   NULL);
    }
    if (L->tier != HPCRUN_TIER_WATCHDOG)
        cgroup_remove(L);
    if (!w->oom)
        return code;
    char msg[256], num[32];
    const char *shown = L->memory_shown ? L->memory_shown : "?";
    size_t n = 0;
    const char *parts[] = {"hpcrun: container killed: out of memory (limit ", shown, ", peak ", NULL,
                           ")\n"};
    fmt_size(num, peak);
    parts[3] = num;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        size_t l = strlen(parts[i]);
        if (n + l >= sizeof msg)
            break;
        memcpy(msg + n, parts[i], l);
        n += l;
    }
    if (watch_logfd >= 0) {
        log_line(watch_logfd, '2', msg, n - 1);     /* without its newline */
        write_exit(watch_statefd, 128 + SIGKILL);
    } else if (write(2, msg, n) < 0) { /* nowhere to report */ }
    return 128 + SIGKILL;
}

/* Removes the cgroups if the monitor dies without doing so (SIGKILL): it waits on a
 * pipe only the monitor holds. Forked after trim_memory(), so the fork is cheap. */
static int reaper_start(const struct hpcrun_limits *L, pid_t *pid)
{
    int p[2];
    *pid = -1;
    if (L->tier == HPCRUN_TIER_WATCHDOG || pipe2(p, O_CLOEXEC))
        return -1;
    pid_t r = fork();
    if (r < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (r == 0) {
        char b;
        prctl(PR_SET_NAME, "hpcrun:reaper");
        int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
            dup2(nul, 2);
        }
        /* Hold nothing of the caller's open (a pipe its parent reads to EOF). */
        if (p[0] > 3)
            syscall(SYS_close_range, 3u, (unsigned)p[0] - 1, 0u);
        syscall(SYS_close_range, (unsigned)p[0] + 1, ~0u, 0u);
        ssize_t n;
        do
            n = read(p[0], &b, 1);
        while (n < 0 && errno == EINTR);
        if (n != 1)
            cgroup_remove(L);      /* the monitor is gone; the signals stay blocked */
        _exit(0);
    }
    close(p[0]);
    *pid = r;
    return p[1];
}

/* supervise() for a container with limits: the same loop, waking at the sampling
 * interval. */
static int supervise_limited(pid_t child, int stopsig, const struct hpcrun_limits *L, int pidns)
{
    struct watch w;
    sigset_t set;
    pid_t reaper;
    int code = HPCRUN_EXIT_FAILED;
    watch_init(&w, L, child, pidns);
    int rfd = reaper_start(L, &reaper);
    int polling = L->tier != HPCRUN_TIER_WATCHDOG ? L->memory_cgroup != NULL : w.procfd >= 0;
    /* The first sample one interval in: a short command (most of a job's steps) ends
     * before the watchdog has cost anything. */
    int ms = L->interval_ms > 0 ? L->interval_ms : 100;
    struct timespec next, now;
    clock_gettime(CLOCK_MONOTONIC, &next);
    forwarded_set(&set);
    for (;;) {
        int st;
        pid_t p;
        while ((p = waitpid(child, &st, WNOHANG)) > 0)
            if (p == child) {
                code = wstatus_code(st);
                goto done;
            }
        if (p < 0 && errno == ECHILD)
            goto done;
        siginfo_t si;
        int sig;
        if (polling) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            long long left = (next.tv_sec - now.tv_sec) * 1000000000LL + (next.tv_nsec - now.tv_nsec)
                             + (long long)ms * 1000000;
            if (left <= 0) {
                ms = watch_tick(&w);
                next = now;
                continue;
            }
            struct timespec ts = {(time_t)(left / 1000000000), (long)(left % 1000000000)};
            sig = sigtimedwait(&set, &si, &ts);
        } else {
            sig = sigwaitinfo(&set, &si);
        }
        if (sig > 0 && sig != SIGCHLD && si.si_code != SI_KERNEL)
            kill(child, sig == SIGTERM && stopsig > 0 ? stopsig : sig);
    }
done:
    code = watch_end(&w, code);
    if (rfd >= 0) {
        if (write(rfd, "d", 1) != 1) { /* the reaper is gone: it removed them */ }
        close(rfd);
        while (waitpid(reaper, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    return code;
}

/* A child reports a failure to its parent over a close-on-exec pipe: EOF means the
 * command was executed. */
struct report {
    int code;
    int err;
    char msg[1024];
};

static void report_and_exit(struct ctx *c, int fd)
{
    struct report r;
    memset(&r, 0, sizeof r);
    r.code = *c->code;
    r.err = errno;
    snprintf(r.msg, sizeof r.msg, "%s", c->err);
    if (write(fd, &r, sizeof r) < 0) { /* the parent is gone: nothing to tell */ }
    if (c->fuse_pid > 0)
        kill(c->fuse_pid, SIGKILL);
    _exit(r.code);
}

static int read_report(struct ctx *c, int fd)
{
    struct report r;
    ssize_t n;
    do
        n = read(fd, &r, sizeof r);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n != (ssize_t)sizeof r)
        return 0;
    r.msg[sizeof r.msg - 1] = '\0';
    snprintf(c->err, c->errlen, "%s", r.msg);
    *c->code = r.code;
    errno = r.err;
    return -1;
}

/* ---------------------------------------------------------------- --network container:N */

/* Field 22 of /proc/PID/stat (start time in clock ticks since boot), through an open
 * /proc/PID directory; -1 if the process is gone or a zombie. */
static int proc_start_time(int dirfd, unsigned long long *out)
{
    char buf[1024];
    int fd = openat(dirfd, "stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    const char *p = hpcrun_stat_field(buf, 22);
    if (!p)
        return -1;
    char *end;
    errno = 0;
    *out = strtoull(p, &end, 10);
    return errno || end == p ? -1 : 0;
}

/* Share the network namespace of an instance (s->net_pid, started at s->net_start).
 * That namespace is owned by the instance's user namespace, and setns(2) into a
 * network namespace needs CAP_SYS_ADMIN in the user namespace that owns it: we join
 * that user namespace first (its owner's uid in the parent has every capability in it,
 * user_namespaces(7)), then the network namespace. The caller then makes its own
 * mount (and pid, ipc, uts) namespaces inside it, owned by it, instead of a user
 * namespace of its own: a process of a child user namespace could not join the
 * network namespace, nor could a later rank of the node join this container (cext/
 * task.c node containers, hpcrun_join). So the ids inside are those the instance maps,
 * which must be the ones planned (s->uid, s->gid). The pid is checked by its start
 * time through an open /proc/PID directory, which keeps naming that process even if
 * the pid is reused afterwards. Single-threaded callers only (setns(CLONE_NEWUSER)). */
static int join_instance_net(struct ctx *c, const struct hpcrun_spec *s)
{
    char p[64];
    unsigned long long start = 0;
    int pid = s->net_pid;
    if (count_threads() > 1) {
        errno = EINVAL;
        return failx(c, HPCRUN_EXIT_FAILED, "can't share the network of instance process %d "
                     "from a multi-threaded process", pid);
    }
    snprintf(p, sizeof p, "/proc/%d", pid);
    int dir = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0 || proc_start_time(dir, &start) || start != s->net_start) {
        if (dir >= 0)
            close(dir);
        errno = ESRCH;
        return failx(c, HPCRUN_EXIT_FAILED, "can't share the network of instance process "
                     "%d: the instance is gone", pid);
    }
    int fu = openat(dir, "ns/user", O_RDONLY | O_CLOEXEC);
    int fn = fu < 0 ? -1 : openat(dir, "ns/net", O_RDONLY | O_CLOEXEC);
    int e = errno;
    close(dir);
    if (fu < 0 || fn < 0) {
        if (fu >= 0)
            close(fu);
        errno = e;
        return fail(c, "can't open the namespaces of instance process %d", pid);
    }
    struct stat a, b;
    int r = 0;
    /* setns into one's own user namespace is EINVAL (and there is nothing to join). */
    if (!(fstat(fu, &a) == 0 && stat("/proc/self/ns/user", &b) == 0 &&
          a.st_ino == b.st_ino && a.st_dev == b.st_dev) && setns(fu, CLONE_NEWUSER))
        r = fail(c, "can't join the user namespace of instance process %d", pid);
    unsigned int uid = geteuid(), gid = getegid();
    if (r == 0 && (uid != s->uid || gid != s->gid)) {
        errno = EPERM;
        r = failx(c, HPCRUN_EXIT_FAILED, "can't share the network of instance process %d: "
                  "its user namespace maps you to uid %u gid %u, this container is planned "
                  "for uid %u gid %u", pid, uid, gid, s->uid, s->gid);
    }
    if (r == 0 && !(fstat(fn, &a) == 0 && stat("/proc/self/ns/net", &b) == 0 &&
                    a.st_ino == b.st_ino && a.st_dev == b.st_dev) && setns(fn, CLONE_NEWNET))
        r = fail(c, "can't join the network namespace of instance process %d", pid);
    e = errno;
    close(fu);
    close(fn);
    errno = e;
    return r;
}

/* The default: this (single-threaded) process enters and becomes the command. */
static int enter_in_place(struct ctx *c, const struct hpcrun_spec *s)
{
    sigset_t cur;
    unsigned int ouid = geteuid(), ogid = getegid();   /* 65534 once unshared */
    sigprocmask(SIG_SETMASK, NULL, &cur);
    if ((s->flags & HPCRUN_F_SQUASH) && fuse_spawn(c, s))
        return -1;
    if (s->net_pid ? join_instance_net(c, s) : unshare(CLONE_NEWUSER)) {
        if (!s->net_pid)
            fail(c, "can't create a user namespace");
        if (c->fuse_pid > 0)
            kill(c->fuse_pid, SIGKILL);
        return -1;
    }
    if ((!s->net_pid && write_maps(c, "/proc/self", s->uid, s->gid, ouid, ogid)) ||
        enter_rest(c, s) || chdir_work(c, s)) {
        if (c->fuse_pid > 0)
            kill(c->fuse_pid, SIGKILL);
        return -1;
    }
    reset_signals(&cur);
    return do_exec(c, s);
}

/* --pid=private (or a multi-threaded caller): clone a child into new user (+ pid)
 * namespaces; we write its id maps from outside, then stay as a small monitor that
 * forwards signals and returns its status. The child is PID 1 of the pid namespace:
 * it builds the file system (with a new /proc), forks the command and is its init. */
static int enter_monitored(struct ctx *c, const struct hpcrun_spec *s)
{
    sigset_t fwd, orig;
    int rep[2], go[2];
    int pidns = (s->flags & HPCRUN_F_PID) != 0;
    struct sigaction old[sizeof FORWARDED / sizeof *FORWARDED];
    int threaded = count_threads() > 1;
    forwarded_set(&fwd);
    if (pipe2(rep, O_CLOEXEC) || pipe2(go, O_CLOEXEC))
        return fail(c, "can't create pipe");
    if ((s->flags & HPCRUN_F_SQUASH) && fuse_spawn(c, s)) {   /* before: see there */
        close(rep[0]); close(rep[1]); close(go[0]); close(go[1]);
        return -1;
    }
    if (s->limits && limits_open(c, s->limits)) {
        if (c->fuse_pid > 0)
            kill(c->fuse_pid, SIGKILL);
        close(rep[0]); close(rep[1]); close(go[0]); close(go[1]);
        return -1;
    }
    /* --network container:N: this process joins the instance's user and network
     * namespaces (single-threaded only), and the child is made inside them. */
    if (s->net_pid && join_instance_net(c, s)) {
        limits_close();
        if (c->fuse_pid > 0)
            kill(c->fuse_pid, SIGKILL);
        close(rep[0]); close(rep[1]); close(go[0]); close(go[1]);
        return -1;
    }
    if (threaded)
        forward_from_other_threads(old);
    sigprocmask(SIG_BLOCK, &fwd, &orig);
    /* clone(2) without a new stack behaves like fork(2), plus the namespace flags. */
    pid_t pid = (pid_t)syscall(SYS_clone, SIGCHLD | (s->net_pid ? 0 : CLONE_NEWUSER) |
                               (pidns ? CLONE_NEWPID : 0), NULL, NULL, NULL, NULL);
    if (pid != 0)
        limits_close();         /* the child's copies are the ones written */
    if (pid < 0) {
        int e = errno;
        sigprocmask(SIG_SETMASK, &orig, NULL);
        if (threaded)
            forward_restore(old);
        close(rep[0]); close(rep[1]); close(go[0]); close(go[1]);
        if (c->fuse_pid > 0)
            kill(c->fuse_pid, SIGKILL);
        errno = e;
        if (s->net_pid)
            return fail(c, pidns ? "can't create a pid namespace" : "can't fork");
        return fail(c, "can't create user%s namespace", pidns ? " and pid" : "");
    }
    if (pid == 0) {
        char b;
        close(rep[0]);
        close(go[1]);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        prctl(PR_SET_NAME, pidns ? "hpcrun:init" : "hpcrun:child");
        if (read(go[0], &b, 1) != 1)
            _exit(HPCRUN_EXIT_FAILED);    /* the parent failed to map us: it reports */
        close(go[0]);
        c->in_pidns = pidns;
        if (s->limits && (limits_join(c, s->limits) || limits_child(c, s->limits)))
            report_and_exit(c, rep[1]);
        if (enter_rest(c, s) || chdir_work(c, s))
            report_and_exit(c, rep[1]);
        if (!pidns) {
            reset_signals(&orig);
            do_exec(c, s);
            report_and_exit(c, rep[1]);
        }
        pid_t cmd = fork();
        if (cmd < 0) {
            fail(c, "can't fork");
            report_and_exit(c, rep[1]);
        }
        if (cmd == 0) {
            reset_signals(&orig);
            do_exec(c, s);
            report_and_exit(c, rep[1]);
        }
        close(rep[1]);
        int stopsig = s->stop_signal;
        trim_memory();
        _exit(supervise(cmd, 1, stopsig));
    }
    close(rep[1]);
    close(go[0]);
    if (c->fuse_go >= 0) {
        close(c->fuse_go);      /* the child's copy hands the connection over */
        c->fuse_go = -1;
    }
    if (threaded)
        forward_to(pid, pidns ? 0 : s->stop_signal);
    char procdir[32];
    snprintf(procdir, sizeof procdir, "/proc/%d", (int)pid);
    int r = s->net_pid ? 0 : write_maps(c, procdir, s->uid, s->gid, geteuid(), getegid());
    if (r == 0 && s->limits)
        r = limits_attach(c, s->limits, pid);
    if (r == 0 && write(go[1], "g", 1) != 1)
        r = fail(c, "can't start the container process");
    close(go[1]);
    if (r == 0)
        r = read_report(c, rep[0]);
    else
        close(rep[0]);
    if (r) {
        int e = errno;
        kill(pid, SIGKILL);
        if (c->fuse_pid > 0)
            kill(c->fuse_pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        sigprocmask(SIG_SETMASK, &orig, NULL);
        if (threaded)
            forward_restore(old);
        errno = e;
        return -1;
    }
    /* The command runs: from here this process is only its monitor, never Python again
     * (as with the default in-place exec, the launcher does not come back). */
    prctl(PR_SET_NAME, "hpcrun:monitor");
    int stopsig = pidns ? 0 : s->stop_signal;
    struct limits_copy lk;
    const struct hpcrun_limits *lim = s->limits ? limits_copy(&lk, s->limits) : NULL;
    if (!threaded)
        trim_memory();      /* with threads, keep their memory: they still run */
    _exit(lim ? supervise_limited(pid, stopsig, lim, pidns) : supervise(pid, 0, stopsig));
}

int hpcrun_enter(const struct hpcrun_spec *s, char *err, size_t errlen, int *code)
{
    struct ctx c = {err, errlen, code, -1, -1, -1, -1, 0, 0};
    *code = HPCRUN_EXIT_FAILED;
    if (errlen) err[0] = '\0';
    if (!s->argv || !s->argv[0]) {
        errno = EINVAL;
        return failx(&c, HPCRUN_EXIT_FAILED, "no command given");
    }
    /* unshare(CLONE_NEWUSER) is EINVAL in a multi-threaded process; a clone()d child is
     * single-threaded, so a threaded caller takes the monitored path. */
    if ((s->flags & (HPCRUN_F_PID | HPCRUN_F_MONITOR)) || s->limits || count_threads() > 1) {
        int r = enter_monitored(&c, s);
        if (r < 0 && s->limits && s->limits->tier != HPCRUN_TIER_WATCHDOG) {
            int e = errno;
            cgroup_remove(s->limits);   /* made for a container that never started */
            errno = e;
        }
        return r;
    }
    return enter_in_place(&c, s);
}

/* ---------------------------------------------------------------- join */

/* setns into the user, ipc, uts, net, pid and mount namespaces of pid, the user
 * namespace first (it grants the rights the others need). *pidns: a pid namespace was
 * joined, which applies to our children only. */
static int join_namespaces(struct ctx *c, int pid, int *pidns)
{
    static const struct { const char *name; int type; } ns[] = {
        {"user", CLONE_NEWUSER}, {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS},
        {"net", CLONE_NEWNET}, {"pid", CLONE_NEWPID}, {"mnt", CLONE_NEWNS},
    };
    int fds[6];
    char p[64];
    if (count_threads() > 1) {
        errno = EINVAL;
        return failx(c, HPCRUN_EXIT_FAILED, "can't join a container from a multi-threaded process");
    }
    /* Open them all first: after setns(user) the host's /proc/PID may look different. */
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "/proc/%d/ns/%s", pid, ns[i].name);
        fds[i] = open(p, O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0) {
            fail(c, "can't open %s", p);
            for (int j = 0; j < i; j++) close(fds[j]);
            return -1;
        }
    }
    *pidns = 0;
    for (int i = 0; i < 6; i++) {
        struct stat a, b;
        snprintf(p, sizeof p, "/proc/self/ns/%s", ns[i].name);
        /* Same namespace as ours already (e.g. the host's ipc): nothing to join, and
         * setns into one's own user namespace is EINVAL. */
        if (fstat(fds[i], &a) == 0 && stat(p, &b) == 0 && a.st_ino == b.st_ino &&
            a.st_dev == b.st_dev) {
            close(fds[i]);
            continue;
        }
        if (ns[i].type == CLONE_NEWPID)
            *pidns = 1;
        if (setns(fds[i], ns[i].type)) {
            fail(c, "can't join the %s namespace of process %d", ns[i].name, pid);
            for (int j = i; j < 6; j++) close(fds[j]);
            return -1;
        }
        close(fds[i]);
    }
    return 0;
}

int hpcrun_join(int pid, char *const *argv, char *const *envp, const char *workdir,
                char *err, size_t errlen, int *code)
{
    struct ctx c = {err, errlen, code, -1, -1, -1, -1, 0, 0};
    *code = HPCRUN_EXIT_FAILED;
    if (errlen) err[0] = '\0';
    int pidns = 0;
    if (join_namespaces(&c, pid, &pidns))
        return -1;
    /* setns(2) into a mount namespace already set our root and cwd to its root. */
    struct hpcrun_spec s;
    memset(&s, 0, sizeof s);
    s.argv = argv;
    s.envp = envp;
    s.workdir = workdir;
    s.workdir_required = 0;
    if (chdir_work(&c, &s))
        return -1;
    sigset_t fwd, orig;
    if (!pidns) {
        /* The command replaces this process, as the default `hpcrun run` does: whoever
         * started us (slurmstepd) sees its exit status and signals it directly. A
         * monitor in front would end by the very SIGTERM its command survives (once
         * the command has exited, nothing blocks it) and report "Terminated". */
        sigprocmask(SIG_SETMASK, NULL, &orig);
        reset_signals(&orig);
        do_exec(&c, &s);
        return -1;
    }
    /* A setns into a pid namespace applies to children only: fork, and be the monitor;
     * it never returns to the caller (like enter_monitored), so that a signal arriving
     * after the command ended cannot end it with another status. */
    forwarded_set(&fwd);
    sigprocmask(SIG_BLOCK, &fwd, &orig);
    int rep[2];
    if (pipe2(rep, O_CLOEXEC))
        return fail(&c, "can't create pipe");
    pid_t child = fork();
    if (child < 0)
        return fail(&c, "can't fork");
    if (child == 0) {
        close(rep[0]);
        reset_signals(&orig);
        do_exec(&c, &s);
        report_and_exit(&c, rep[1]);
    }
    close(rep[1]);
    if (read_report(&c, rep[0])) {
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
            ;
        sigprocmask(SIG_SETMASK, &orig, NULL);
        return -1;
    }
    prctl(PR_SET_NAME, "hpcrun:monitor");
    _exit(supervise(child, 0, 0));
}

/* ---------------------------------------------------------------- instance supervisor */

/* Decimal digits of v into buf (no stdio after trim_memory: see parse_num). */
static size_t fmt_ulong(char *buf, unsigned long v, int width)
{
    char t[24];
    size_t n = 0;
    do {
        t[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v || (int)n < width);
    for (size_t i = 0; i < n; i++)
        buf[i] = t[n - 1 - i];
    return n;
}

/* One output stream of the command: what is read waits here for its newline. */
struct logbuf {
    int fd;          /* read end of the command's pipe; -1 at EOF */
    char stream;     /* '1' stdout, '2' stderr */
    size_t len;
    char buf[8192];
};

/* Append "SECONDS.NANOS S TEXT\n" to the log, as one write (O_APPEND keeps lines whole). */
static void log_line(int logfd, char stream, const char *text, size_t len)
{
    char line[8192 + 48];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    size_t n = fmt_ulong(line, (unsigned long)ts.tv_sec, 1);
    line[n++] = '.';
    n += fmt_ulong(line + n, (unsigned long)ts.tv_nsec, 9);
    line[n++] = ' ';
    line[n++] = stream;
    line[n++] = ' ';
    memcpy(line + n, text, len);
    n += len;
    line[n++] = '\n';
    if (write(logfd, line, n) < 0) { /* a full disk loses log lines, not the command */ }
}

/* Read what the pipe has (it is non-blocking) and log each complete line; at EOF (or
 * when flushing) the rest too. */
static void log_drain(struct logbuf *b, int logfd, int flush)
{
    while (b->fd >= 0) {
        ssize_t n = read(b->fd, b->buf + b->len, sizeof b->buf - b->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            close(b->fd);
            b->fd = -1;
            flush = 1;
            break;
        }
        if (n < 0)
            break;
        b->len += (size_t)n;
        size_t start = 0;
        for (size_t i = 0; i < b->len; i++)
            if (b->buf[i] == '\n') {
                log_line(logfd, b->stream, b->buf + start, i - start);
                start = i + 1;
            }
        if (start == 0 && b->len == sizeof b->buf) {   /* a line longer than the buffer */
            log_line(logfd, b->stream, b->buf, b->len);
            start = b->len;
        }
        memmove(b->buf, b->buf + start, b->len - start);
        b->len -= start;
    }
    if (flush && b->len) {
        log_line(logfd, b->stream, b->buf, b->len);
        b->len = 0;
    }
}

/* The exit code, written to a temporary name and renamed: a reader sees all or nothing. */
static void write_exit(int statefd, int code)
{
    char buf[16];
    size_t n = fmt_ulong(buf, (unsigned long)code, 1);
    buf[n++] = '\n';
    int fd = openat(statefd, "exit.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    ssize_t w = write(fd, buf, n);
    close(fd);
    if (w == (ssize_t)n)
        renameat(statefd, "exit.tmp", statefd, "exit");
}

/* PID 1 of an instance. The forwarded signals are blocked (since before the clone) and
 * read from a signalfd, so one poll(2) loop serves signals and the command's output.
 * The instance ends with its command (the kernel kills what is left in the pid
 * namespace when PID 1 exits), or, without a command, once stopped. */
static int instance_supervise(pid_t cmd, int stopsig, struct logbuf *out, int logfd, int statefd,
                              int anchor)
{
    sigset_t set;
    forwarded_set(&set);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    int stopping = 0, code = 0;
    struct timespec deadline = {0, 0};
    for (;;) {
        int st;
        pid_t p;
        while ((p = waitpid(-1, &st, WNOHANG)) > 0)
            if (p == cmd) {
                code = wstatus_code(st);
                log_drain(&out[0], logfd, 1);
                log_drain(&out[1], logfd, 1);
                write_exit(statefd, code);
                return code;
            }
        if (p < 0 && errno == ECHILD && stopping) {
            write_exit(statefd, code);
            return code;
        }
        int timeout = -1;
        if (deadline.tv_sec) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long ms = (deadline.tv_sec - now.tv_sec) * 1000 + (deadline.tv_nsec - now.tv_nsec) / 1000000;
            if (ms <= 0) {
                write_exit(statefd, 128 + SIGKILL);
                return 128 + SIGKILL;      /* PID 1 exits: the kernel kills the rest */
            }
            timeout = (int)ms;
        }
        struct pollfd pf[4] = {{sfd, POLLIN, 0}, {out[0].fd, POLLIN, 0}, {out[1].fd, POLLIN, 0},
                               {deadline.tv_sec ? -1 : anchor, POLLIN, 0}};
        if (poll(pf, 4, timeout) < 0 && errno != EINTR)
            return HPCRUN_EXIT_FAILED;
        for (int i = 0; i < 2; i++)
            if (pf[i + 1].revents)
                log_drain(&out[i], logfd, 0);
        int sig = 0;
        if (pf[3].revents) {
            /* The Slurm step that started us is gone: stop as on SIGTERM, and end for
             * good ten seconds later (Slurm's own KillWait default). */
            sig = SIGTERM;
            clock_gettime(CLOCK_MONOTONIC, &deadline);
            deadline.tv_sec += 10;
        } else {
            struct signalfd_siginfo si;
            if (!(pf[0].revents & POLLIN) || read(sfd, &si, sizeof si) != (ssize_t)sizeof si)
                continue;
            sig = (int)si.ssi_signo;
        }
        if (sig == SIGCHLD)
            continue;
        if (cmd > 0) {
            kill(cmd, sig == SIGTERM && stopsig > 0 ? stopsig : sig);
        } else if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP) {
            stopping = 1;
            kill(-1, SIGTERM);     /* from PID 1: every other process of the instance */
        } else {
            kill(-1, sig);
        }
    }
}

/* Move fd to exactly number `to`, close-on-exec (the supervisor never execs; the
 * command must not inherit it). */
static int move_fd(int fd, int to)
{
    if (fd == to)
        return fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (dup3(fd, to, O_CLOEXEC) < 0)
        return -1;
    close(fd);
    return 0;
}

/* The child of hpcrun_instance: PID 1 of the new pid namespace. */
static void instance_child(struct ctx *c, const struct hpcrun_spec *s, int statefd, int go,
                           int rep, int anchor, const sigset_t *orig)
{
    char b;
    int out[2], errp[2];
    prctl(PR_SET_NAME, "hpcrun:instance");
    if (read(go, &b, 1) != 1)
        _exit(HPCRUN_EXIT_FAILED);    /* the parent failed to map us: it reports */
    close(go);
    /* Into its cgroups (v1: itself, now; v2: the monitor moved it before "go"), then
     * the cgroup namespace and the process limit, for every process of the instance. */
    if (s->limits && (limits_join(c, s->limits) || limits_child(c, s->limits)))
        report_and_exit(c, rep);
    if (setsid() < 0) {
        fail(c, "can't start a session for the instance");
        report_and_exit(c, rep);
    }
    /* Descriptors: 0-2 /dev/null, 3 the state dir, 4 the upper dir, 5 the report pipe,
     * 6 the anchor's pidfd, everything else closed. */
    int hi_state = fcntl(statefd, F_DUPFD_CLOEXEC, 10), hi_rep = fcntl(rep, F_DUPFD_CLOEXEC, 10);
    int hi_anchor = anchor >= 0 ? fcntl(anchor, F_DUPFD_CLOEXEC, 10) : -1;
    int null = open("/dev/null", O_RDWR);
    if (hi_state < 0 || hi_rep < 0 || null < 0 || (anchor >= 0 && hi_anchor < 0)) {
        fail(c, "can't set up the instance's descriptors");
        report_and_exit(c, rep);
    }
    rep = hi_rep;
    /* 0-2 and a placeholder at 4 (so nothing opened before the upper dir takes it). */
    for (int fd = 0; fd < 5; fd++)
        if (null != fd && fd != 3)
            dup2(null, fd);
    if (null > 4)
        close(null);
    if (move_fd(hi_state, HPCRUN_INSTANCE_STATE_FD) || move_fd(rep, 5)) {
        fail(c, "can't set up the instance's descriptors");
        report_and_exit(c, hi_rep);
    }
    statefd = HPCRUN_INSTANCE_STATE_FD;
    rep = 5;
    if (hi_anchor >= 0 && move_fd(hi_anchor, 6)) {
        fail(c, "can't keep the Slurm step's pidfd");
        report_and_exit(c, rep);
    }
    anchor = hi_anchor >= 0 ? 6 : -1;
    if (anchor < 0)
        close(6);     /* whatever the caller had there (the report pipe's original, say) */
    syscall(SYS_close_range, 7, ~0U, 0);
    int logfd = openat(statefd, "log", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (logfd < 0) {
        fail(c, "can't open the instance's log");
        report_and_exit(c, rep);
    }
    c->in_pidns = 1;
    instance_keep_upper = 1;
    if (enter_rest(c, s) || chdir_work(c, s))
        report_and_exit(c, rep);
    if (instance_upper_fd >= 0 && move_fd(instance_upper_fd, HPCRUN_INSTANCE_UPPER_FD)) {
        fail(c, "can't keep the overlay's upper directory");
        report_and_exit(c, rep);
    }
    struct logbuf lb[2];
    memset(lb, 0, sizeof lb);
    lb[0].fd = lb[1].fd = -1;
    lb[0].stream = '1';
    lb[1].stream = '2';
    pid_t cmd = 0;
    if (s->argv && s->argv[0]) {
        if (pipe2(out, O_CLOEXEC) || pipe2(errp, O_CLOEXEC)) {
            fail(c, "can't create the instance's output pipes");
            report_and_exit(c, rep);
        }
        cmd = fork();
        if (cmd < 0) {
            fail(c, "can't fork");
            report_and_exit(c, rep);
        }
        if (cmd == 0) {
            dup2(out[1], 1);
            dup2(errp[1], 2);
            reset_signals(orig);
            do_exec(c, s);
            report_and_exit(c, rep);
        }
        close(out[1]);
        close(errp[1]);
        lb[0].fd = out[0];
        lb[1].fd = errp[0];
        fcntl(out[0], F_SETFL, O_NONBLOCK);
        fcntl(errp[0], F_SETFL, O_NONBLOCK);
    }
    close(rep);
    int stopsig = s->stop_signal;
    trim_memory();
    _exit(instance_supervise(cmd, stopsig, lb, logfd, statefd, anchor));
}

static int instance_start(const struct hpcrun_spec *s, int state_dir, int anchor, int *pid_out,
                          char *err, size_t errlen, int *code)
{
    struct ctx c = {err, errlen, code, -1, -1, -1, -1, 0, 0};
    sigset_t fwd, orig;
    int rep[2], go[2];
    *code = HPCRUN_EXIT_FAILED;
    if (errlen) err[0] = '\0';
    forwarded_set(&fwd);
    if (pipe2(rep, O_CLOEXEC) || pipe2(go, O_CLOEXEC))
        return fail(&c, "can't create pipe");
    if (s->limits && limits_open(&c, s->limits)) {
        close(rep[0]); close(rep[1]); close(go[0]); close(go[1]);
        return -1;
    }
    sigprocmask(SIG_BLOCK, &fwd, &orig);
    pid_t pid = (pid_t)syscall(SYS_clone, SIGCHLD | CLONE_NEWUSER | CLONE_NEWPID,
                               NULL, NULL, NULL, NULL);
    if (pid != 0)
        limits_close();         /* the child's copies are the ones written */
    if (pid == 0) {
        close(rep[0]);
        close(go[1]);
        instance_child(&c, s, state_dir, go[0], rep[1], anchor, &orig);
    }
    int e = errno;
    sigprocmask(SIG_SETMASK, &orig, NULL);
    close(rep[1]);
    close(go[0]);
    if (pid < 0) {
        close(rep[0]);
        close(go[1]);
        errno = e;
        return fail(&c, "can't create user and pid namespaces");
    }
    char procdir[32];
    snprintf(procdir, sizeof procdir, "/proc/%d", (int)pid);
    int r = write_maps(&c, procdir, s->uid, s->gid, geteuid(), getegid());
    if (r == 0 && s->limits && s->limits->tier != HPCRUN_TIER_WATCHDOG)
        r = limits_attach(&c, s->limits, pid);      /* PID 1: all of the instance */
    if (r == 0 && write(go[1], "g", 1) != 1)
        r = fail(&c, "can't start the instance");
    close(go[1]);
    if (r == 0)
        r = read_report(&c, rep[0]);
    else
        close(rep[0]);
    if (r) {
        e = errno;
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        errno = e;
        return -1;
    }
    *pid_out = (int)pid;
    return 0;
}

/* What an instance's monitor tells hpcrun_instance: the supervisor's pid, or why not. */
struct monitor_report {
    int r, pid, code, err;
    char msg[1024];
};

/* The monitor of an instance with limits (a memory limit or a cgroup): a detached
 * process outside the instance's namespaces, its supervisor's parent, doing for the
 * instance what run's monitor does for a container (supervise_limited): the watchdog
 * (it sums the memory of the instance's user namespace, `hpcrun exec` processes
 * included) or the cgroup's OOM count, the kill, the message (a stderr line of the
 * instance's log, and exit 137 in its state) and the cgroups' removal, with a reaper
 * if it is itself killed. Outside, so an OOM in the instance cannot take it along. */
__attribute__((noreturn))
static void instance_monitor(const struct hpcrun_spec *s, int state_dir, int anchor, int rep)
{
    struct monitor_report m;
    struct limits_copy k;
    memset(&m, 0, sizeof m);
    prctl(PR_SET_NAME, "hpcrun:monitor");
    setsid();
    /* Hold nothing of the caller's but what the start needs (its output pipes: a
     * caller reading them to EOF must not wait for the instance's end). */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        close(null);
    }
    int keep[3] = {state_dir, anchor, rep};
    for (int i = 0; i < 3; i++)          /* ascending, for close_range between them */
        for (int j = i + 1; j < 3; j++)
            if (keep[j] < keep[i]) {
                int t = keep[i];
                keep[i] = keep[j];
                keep[j] = t;
            }
    unsigned lo = 3;
    for (int i = 0; i < 3; i++) {
        if (keep[i] < 0 || (unsigned)keep[i] < lo)
            continue;
        if ((unsigned)keep[i] > lo)
            syscall(SYS_close_range, lo, (unsigned)keep[i] - 1, 0u);
        lo = (unsigned)keep[i] + 1;
    }
    syscall(SYS_close_range, lo, ~0u, 0u);
    const struct hpcrun_limits *L = limits_copy(&k, s->limits);
    m.r = instance_start(s, state_dir, anchor, &m.pid, m.msg, sizeof m.msg, &m.code);
    m.err = errno;
    if (write(rep, &m, sizeof m) < 0) { /* the caller is gone: it reports nothing */ }
    close(rep);
    if (m.r)
        _exit(HPCRUN_EXIT_FAILED);
    if (anchor >= 0)
        close(anchor);                  /* the supervisor watches the Slurm step */
    watch_statefd = state_dir;
    watch_logfd = openat(state_dir, "log", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    sigset_t fwd;
    forwarded_set(&fwd);
    sigprocmask(SIG_BLOCK, &fwd, NULL);
    trim_memory();
    /* No stop signal here: `instance stop` signals the supervisor, which stops its
     * command; this only watches. */
    supervise_limited(m.pid, 0, L, 1);
    _exit(0);
}

int hpcrun_instance(const struct hpcrun_spec *s, int state_dir, int anchor, int *pid_out,
                    char *err, size_t errlen, int *code)
{
    const struct hpcrun_limits *L = s->limits;
    if (s->net_pid) {
        /* Not done: the supervisor would live in the other instance's user namespace,
         * and `exec` would join that one (hpcrun/instance/lifecycle.py refuses first). */
        struct ctx c = {err, errlen, code, -1, -1, -1, -1, 0, 0};
        *code = HPCRUN_EXIT_FAILED;
        errno = EINVAL;
        return failx(&c, HPCRUN_EXIT_FAILED, "an instance can't share another instance's "
                     "network (--network container:N)");
    }
    if (!L || (L->tier == HPCRUN_TIER_WATCHDOG && !L->memory && !L->memory_swap))
        return instance_start(s, state_dir, anchor, pid_out, err, errlen, code);
    /* The monitor is a grandchild, so that it is never the caller's child (an API
     * caller lives on; it would be its zombie). */
    struct ctx c = {err, errlen, code, -1, -1, -1, -1, 0, 0};
    int rep[2];
    *code = HPCRUN_EXIT_FAILED;
    if (errlen) err[0] = '\0';
    if (pipe2(rep, O_CLOEXEC))
        return fail(&c, "can't create pipe");
    pid_t mid = fork();
    if (mid == 0) {
        close(rep[0]);
        pid_t mon = fork();
        if (mon == 0)
            instance_monitor(s, state_dir, anchor, rep[1]);
        _exit(mon < 0 ? HPCRUN_EXIT_FAILED : 0);
    }
    int e = errno;
    close(rep[1]);
    if (mid < 0) {
        close(rep[0]);
        errno = e;
        return fail(&c, "can't start the instance's monitor");
    }
    while (waitpid(mid, NULL, 0) < 0 && errno == EINTR)
        ;
    struct monitor_report m;
    ssize_t n;
    do
        n = read(rep[0], &m, sizeof m);
    while (n < 0 && errno == EINTR);
    close(rep[0]);
    if (n != (ssize_t)sizeof m)
        return fail(&c, "the instance's monitor ended before the instance started");
    if (m.r) {
        snprintf(err, errlen, "%s", m.msg);
        *code = m.code;
        errno = m.err;
        return -1;
    }
    *pid_out = m.pid;
    return 0;
}


/* ---------------------------------------------------------------- batch server */

/* Read exactly n bytes; 0 at a clean EOF before the first byte, -1 otherwise. */
static int read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return got == 0 && r == 0 ? 0 : -1;
        got += (size_t)r;
    }
    return 1;
}

static int write_full(int fd, const void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, (const char *)buf + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        done += (size_t)w;
    }
    return 0;
}

struct growbuf {
    char *p;
    size_t len, cap;
};

static int grow_read(struct growbuf *b, int fd)
{
    if (b->cap - b->len < 65536) {
        size_t cap = b->cap ? b->cap * 2 : 65536;
        char *q = realloc(b->p, cap);
        if (!q)
            return -1;
        b->p = q;
        b->cap = cap;
    }
    ssize_t n = read(fd, b->p + b->len, b->cap - b->len);
    if (n < 0 && errno == EINTR)
        return 1;
    if (n <= 0)
        return 0;
    b->len += (size_t)n;
    return 1;
}

/* Split a request's NUL-terminated strings: workdir, argv[nargv], envp[nenv]. */
static int split_request(char *data, size_t len, unsigned nargv, unsigned nenv,
                         const char **workdir, char **argv, char **envp)
{
    char *p = data, *end = data + len;
    size_t total = 1 + (size_t)nargv + nenv;
    for (size_t i = 0; i < total; i++) {
        char *z = memchr(p, '\0', (size_t)(end - p));
        if (!z)
            return -1;
        if (i == 0) *workdir = p;
        else if (i <= nargv) argv[i - 1] = p;
        else envp[i - 1 - nargv] = p;
        p = z + 1;
    }
    argv[nargv] = NULL;
    envp[nenv] = NULL;
    return nargv ? 0 : -1;
}

/* Run one request in a child (already in the container's namespaces: forked after
 * setns, so in its pid namespace too) and answer with its status and output. */
static int serve_one(struct ctx *c, int out_fd, const char *workdir, char **argv, char **envp,
                     const sigset_t *orig)
{
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC))
        return fail(c, "can't create pipe");
    /* vfork: the server is a copy of a Python process, and copying its page tables
     * for every command would cost more than the command's exec. The child only
     * rearranges descriptors, changes directory and execs (or writes and _exits). */
    pid_t child = vfork();
    if (child < 0)
        return fail(c, "can't fork");
    if (child == 0) {
        struct hpcrun_spec s;
        memset(&s, 0, sizeof s);
        s.argv = argv;
        s.envp = envp;
        s.workdir = workdir;
        s.workdir_required = 1;
        int null = open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(po[1], 1);
        dup2(pe[1], 2);
        reset_signals(orig);
        if (chdir_work(c, &s) == 0)
            do_exec(c, &s);
        if (write(2, "hpcrun: error: ", 15) < 0 || write(2, c->err, strlen(c->err)) < 0 ||
            write(2, "\n", 1) < 0) { /* nobody to tell */ }
        _exit(*c->code);
    }
    close(po[1]);
    close(pe[1]);
    struct growbuf b[2];
    memset(b, 0, sizeof b);
    int fds[2] = {po[0], pe[0]};
    while (fds[0] >= 0 || fds[1] >= 0) {
        struct pollfd pf[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
        if (poll(pf, 2, -1) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++)
            if (fds[i] >= 0 && pf[i].revents) {
                int r = grow_read(&b[i], fds[i]);
                if (r <= 0) {
                    close(fds[i]);
                    fds[i] = -1;
                }
            }
    }
    int st;
    while (waitpid(child, &st, 0) < 0 && errno == EINTR)
        ;
    int32_t hdr[3] = {wstatus_code(st), (int32_t)b[0].len, (int32_t)b[1].len};
    int r = write_full(out_fd, hdr, sizeof hdr) || write_full(out_fd, b[0].p, b[0].len) ||
            write_full(out_fd, b[1].p, b[1].len);
    free(b[0].p);
    free(b[1].p);
    return r ? fail(c, "can't write the answer") : 0;
}

int hpcrun_serve(int pid, int in_fd, int out_fd, char *err, size_t errlen, int *code)
{
    struct ctx c = {err, errlen, code, -1, -1, -1, -1, 0, 0};
    *code = HPCRUN_EXIT_FAILED;
    if (errlen) err[0] = '\0';
    int pidns = 0;
    if (join_namespaces(&c, pid, &pidns))
        return -1;
    sigset_t orig;
    sigprocmask(SIG_SETMASK, NULL, &orig);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_NAME, "hpcrun:batch");
    for (;;) {
        uint32_t hdr[3];   /* length of the strings, argc, envc */
        int r = read_full(in_fd, hdr, sizeof hdr);
        if (r == 0)
            _exit(0);
        if (r < 0 || hdr[0] > (64u << 20) || hdr[1] > 1u << 16 || hdr[2] > 1u << 16)
            _exit(HPCRUN_EXIT_FAILED);
        char *data = malloc(hdr[0] + 1);
        char **argv = calloc(hdr[1] + 1, sizeof *argv), **envp = calloc(hdr[2] + 1, sizeof *envp);
        const char *workdir = "/";
        if (!data || !argv || !envp || read_full(in_fd, data, hdr[0]) != 1)
            _exit(HPCRUN_EXIT_FAILED);
        data[hdr[0]] = '\0';
        if (split_request(data, hdr[0], hdr[1], hdr[2], &workdir, argv, envp) ||
            serve_one(&c, out_fd, workdir, argv, envp, &orig))
            _exit(HPCRUN_EXIT_FAILED);
        free(data);
        free(argv);
        free(envp);
    }
}

/* ---------------------------------------------------------------- probes */

/* One probe in a forked child (the caller's namespaces never change). */
static int probe_child(struct ctx *c, int what, const char *dir)
{
    unsigned int ouid = geteuid(), ogid = getegid();
    char opts[6 * PATH_MAX + 64];
    if (unshare(CLONE_NEWUSER))
        return fail(c, "can't create a user namespace");
    if (write_maps(c, "/proc/self", ouid, ogid, ouid, ogid))
        return -1;
    if (what == HPCRUN_PROBE_USERNS)
        return 0;
    if (unshare(CLONE_NEWNS | (what == HPCRUN_PROBE_NET ? CLONE_NEWNET : 0)))
        return fail(c, "can't create a mount namespace");
    if (what == HPCRUN_PROBE_NET)
        return net_lo_up(c);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
        return fail(c, "can't make / private");
    if (what == HPCRUN_PROBE_OVERLAY_BUILD) {
        /* as overlay_root mounts a build's RUN root, in dir (the build's work directory,
         * on the file system its upper directories will be on: it must keep user.*
         * xattrs, or a removed lower directory can't be made again) */
        char l[PATH_MAX], u[PATH_MAX], w[PATH_MAX], m[PATH_MAX], d[PATH_MAX];
        if (!dir || snprintf(l, sizeof l, "%s/l", dir) >= (int)sizeof l ||
            snprintf(d, sizeof d, "%s/l/d", dir) >= (int)sizeof d ||
            snprintf(u, sizeof u, "%s/u", dir) >= (int)sizeof u ||
            snprintf(w, sizeof w, "%s/w", dir) >= (int)sizeof w ||
            snprintf(m, sizeof m, "%s/m", dir) >= (int)sizeof m) {
            errno = EINVAL;
            return fail(c, "the overlay probe needs a directory");
        }
        if (mkdir(l, 0755) || mkdir(d, 0755) || mkdir(u, 0755) || mkdir(w, 0755) ||
            mkdir(m, 0755))
            return fail(c, "can't create directories in %s", dir);
        char esc[2 * PATH_MAX];
        if (ovl_escape(c, esc, sizeof esc, dir))
            return -1;
        snprintf(opts, sizeof opts, "lowerdir=%s/l,upperdir=%s/u,workdir=%s/w,userxattr",
                 esc, esc, esc);
        if (mount("overlay", m, "overlay", 0, opts))
            return fail(c, "can't mount overlayfs with userxattr in a user namespace");
        snprintf(d, sizeof d, "%s/m/d", dir);
        if (rmdir(d) || mkdir(d, 0755))
            return fail(c, "can't make a removed lower directory again in an overlay on %s", dir);
        return 0;
    }
    if (mount("probe", BASE, "tmpfs", 0, NULL))
        return fail(c, "can't mount tmpfs in a user namespace");
    if (what == HPCRUN_PROBE_MOUNT)
        return 0;
    if (what == HPCRUN_PROBE_OVERLAY) {
        if (mkdir(BASE "/l", 0755) || mkdir(BASE "/u", 0755) || mkdir(BASE "/w", 0755) ||
            mkdir(BASE "/m", 0755))
            return fail(c, "can't create directories");
        if (mount("overlay", BASE "/m", "overlay", 0,
                  "lowerdir=" BASE "/l,upperdir=" BASE "/u,workdir=" BASE "/w"))
            return fail(c, "can't mount overlayfs in a user namespace");
        return 0;
    }
    if (what == HPCRUN_PROBE_FUSE) {
        int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
        if (fd < 0)
            return fail(c, "can't open /dev/fuse");
        snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=%u,group_id=%u", fd, ouid, ogid);
        if (mount("probe", BASE, "fuse.probe", MS_NOSUID | MS_NODEV, opts))
            return fail(c, "can't mount FUSE in a user namespace");
        return 0;
    }
    if (what == HPCRUN_PROBE_PID) {
        pid_t p = (pid_t)syscall(SYS_clone, SIGCHLD | CLONE_NEWPID, NULL, NULL, NULL, NULL);
        if (p < 0)
            return fail(c, "can't create a pid namespace");
        if (p == 0)
            _exit(mount("proc", BASE, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) ? 1 : 0);
        int st;
        if (waitpid(p, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
            errno = EPERM;
            return fail(c, "can't mount proc in a new pid namespace");
        }
        return 0;
    }
    errno = EINVAL;
    return fail(c, "unknown probe %d", what);
}

int hpcrun_probe(int what, char *err, size_t errlen)
{
    return hpcrun_probe_at(what, NULL, err, errlen);
}

int hpcrun_probe_at(int what, const char *dir, char *err, size_t errlen)
{
    int code;
    struct ctx c = {err, errlen, &code, -1, -1, -1, -1, 0, 0};
    int rep[2];
    if (errlen) err[0] = '\0';
    if (pipe2(rep, O_CLOEXEC))
        return fail(&c, "can't create pipe");
    pid_t pid = fork();
    if (pid < 0)
        return fail(&c, "can't fork");
    if (pid == 0) {
        close(rep[0]);
        if (probe_child(&c, what, dir))
            report_and_exit(&c, rep[1]);
        _exit(0);
    }
    close(rep[1]);
    int r = read_report(&c, rep[0]);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    return r;
}

const char *hpcrun_core_version(void) { return "0.2.0"; }
