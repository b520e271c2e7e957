/* chtest: isolation checks run *inside* a container (tests/test_isolation_chtest.py),
 * in the spirit of Charliecloud's chtest image. Compiled static by the tests (the
 * busybox image has no compiler or Python), one check per invocation:
 *
 *     chtest CHECK [ARG...]
 *
 * The first word printed says what happened, and the exit status the same:
 *     DENIED ...   0  the kernel refused, as it must
 *     ESCAPED ...  1  the attempt worked: isolation is broken
 *     ERROR ...    2  the check could not be made (nothing to try, bad arguments)
 * plus helpers that only report: `fds` (open descriptors above 2), `cwd`, `ids`. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static int denied(const char *what)
{
    printf("DENIED %s: %s\n", what, strerror(errno));
    return 0;
}

static int escaped(const char *what)
{
    printf("ESCAPED %s\n", what);
    return 1;
}

static int error(const char *what)
{
    printf("ERROR %s\n", what);
    return 2;
}

/* Try to open each existing path of a list; any success is an escape. */
static int open_each(const char *const *paths, int flags)
{
    int tried = 0;
    for (int i = 0; paths[i]; i++) {
        struct stat st;
        if (lstat(paths[i], &st))
            continue;
        tried++;
        int fd = open(paths[i], flags | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) {
            printf("ESCAPED opened %s (flags %#x)\n", paths[i], flags);
            return 1;
        }
        if (errno != EACCES && errno != EPERM && errno != EROFS) {
            printf("ERROR %s: unexpected %s\n", paths[i], strerror(errno));
            return 2;
        }
        printf("refused %s: %s\n", paths[i], strerror(errno));
    }
    if (!tried)
        return error("none of the paths exists here");
    printf("DENIED all %d\n", tried);
    return 0;
}

/* chroot(2) into a subdirectory, climb out with "..", chroot there: where the old root
 * is still reachable, this lands in it (the classic chroot escape). */
static int chroot_escape(int argc, char **argv)
{
    if (argc < 2)
        return error("usage: chroot-escape HOST-ROOT-DEV HOST-ROOT-INO");
    unsigned long long dev = strtoull(argv[0], NULL, 10), ino = strtoull(argv[1], NULL, 10);
    if (mkdir("/tmp/chtest-jail", 0700) && errno != EEXIST)
        return error("can't mkdir /tmp/chtest-jail");
    if (chroot("/tmp/chtest-jail"))
        return denied("chroot");
    for (int i = 0; i < 256; i++)
        if (chdir(".."))
            break;
    if (chroot("."))
        return denied("second chroot");
    struct stat st;
    if (stat("/", &st))
        return error("can't stat /");
    if ((unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino)
        return escaped("chroot climbed out to the host's root");
    printf("DENIED chroot worked but climbing out reaches only the container's root\n");
    return 0;
}

static int dev_access(void)
{
    static const char *const rw[] = {"/dev/mem", "/dev/kmem", "/dev/port", "/dev/vda",
                                     "/dev/sda", "/dev/nvme0n1", "/dev/xvda", "/dev/vdb",
                                     "/dev/loop0", "/dev/cpu/0/msr", NULL};
    static const char *const w[] = {"/dev/kmsg", NULL};
    int r = open_each(rw, O_RDWR);
    if (r == 1)
        return r;
    int r2 = open_each(w, O_WRONLY);
    if (r2 == 1)
        return r2;
    return r == 0 || r2 == 0 ? 0 : 2;
}

static int proc_access(void)
{
    static const char *const rd[] = {"/proc/kcore", "/proc/kmsg", "/proc/1/environ",
                                     "/proc/1/mem", NULL};
    static const char *const w[] = {"/proc/sysrq-trigger", "/proc/sys/kernel/hostname",
                                    "/proc/sys/vm/drop_caches", "/proc/sys/kernel/core_pattern",
                                    NULL};
    int r = open_each(rd, O_RDONLY);
    if (r == 1)
        return r;
    int r2 = open_each(w, O_WRONLY);
    if (r2 == 1)
        return r2;
    return r == 0 || r2 == 0 ? 0 : 2;
}

static int sys_access(void)
{
    static const char *const w[] = {"/sys/kernel/mm/transparent_hugepage/enabled",
                                    "/sys/power/state", "/sys/kernel/uevent_helper",
                                    "/sys/fs/cgroup/cgroup.procs",
                                    "/sys/fs/cgroup/cgroup.subtree_control",
                                    "/sys/kernel/profiling", NULL};
    return open_each(w, O_WRONLY);
}

static int read_file(int argc, char **argv)
{
    if (argc < 1)
        return error("usage: read FILE");
    int fd = open(argv[0], O_RDONLY | O_CLOEXEC);
    if (fd >= 0)
        return escaped("read a file the caller may not read");
    return errno == EACCES || errno == EPERM ? denied(argv[0]) : error(strerror(errno));
}

static int do_mknod(void)
{
    static const struct { const char *path; mode_t mode; unsigned maj, min; } nodes[] = {
        {"/tmp/chtest-null", S_IFCHR | 0666, 1, 3},
        {"/tmp/chtest-mem", S_IFCHR | 0600, 1, 1},
        {"/tmp/chtest-blk", S_IFBLK | 0600, 7, 0},
    };
    for (size_t i = 0; i < sizeof nodes / sizeof *nodes; i++) {
        if (mknod(nodes[i].path, nodes[i].mode, makedev(nodes[i].maj, nodes[i].min)) == 0) {
            unlink(nodes[i].path);
            printf("ESCAPED made device node %s\n", nodes[i].path);
            return 1;
        }
        if (errno != EPERM)
            return error(strerror(errno));
    }
    return denied("mknod of character and block devices");
}

static int bind_port(int argc, char **argv)
{
    if (argc < 1)
        return error("usage: bind-port PORT");
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return error("can't create a socket");
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[0]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) == 0)
        return escaped("bound a privileged port");
    return errno == EACCES || errno == EPERM ? denied("bind") : error(strerror(errno));
}

static int remount(int argc, char **argv)
{
    const char *path = argc > 0 ? argv[0] : "/";
    if (mount(NULL, path, NULL, MS_REMOUNT | MS_BIND, NULL) == 0)
        return escaped("remounted read-write");
    if (errno != EPERM && errno != EACCES)
        return error(strerror(errno));
    if (mount("none", "/tmp", "tmpfs", 0, NULL) == 0)
        return escaped("mounted a tmpfs");
    return denied("remount and mount");
}

/* Unmount the root or a mount of the container: where that worked, what lies below
 * (the host's tree, an image directory's real contents) would show. */
static int do_umount(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (umount2(argv[i], MNT_DETACH) == 0) {
            printf("ESCAPED unmounted %s\n", argv[i]);
            return 1;
        }
        if (errno != EPERM && errno != EINVAL)
            return error(strerror(errno));
    }
    return argc ? denied("umount") : error("usage: umount PATH...");
}

/* The real and effective uid: a setuid program of the image must gain nothing. */
static int ids(void)
{
    printf("%u %u\n", (unsigned)getuid(), (unsigned)geteuid());
    return 0;
}

static int do_setgroups(void)
{
    gid_t g = getgid();
    if (setgroups(0, NULL) == 0 || setgroups(1, &g) == 0)
        return escaped("setgroups worked");
    return errno == EPERM ? denied("setgroups") : error(strerror(errno));
}

static int do_seteuid(int argc, char **argv)
{
    if (argc < 1)
        return error("usage: seteuid UID...");
    for (int i = 0; i < argc; i++) {
        uid_t u = (uid_t)strtoul(argv[i], NULL, 10);
        if (u == geteuid())
            return error("that is our own uid");
        if (seteuid(u) == 0) {
            printf("ESCAPED seteuid(%u) worked\n", (unsigned)u);
            return 1;
        }
        if (errno != EPERM && errno != EINVAL)
            return error(strerror(errno));
        if (setuid(u) == 0) {
            printf("ESCAPED setuid(%u) worked\n", (unsigned)u);
            return 1;
        }
    }
    return denied("seteuid and setuid");
}

static int do_kill(int argc, char **argv)
{
    if (argc < 1)
        return error("usage: kill PID");
    pid_t p = (pid_t)atoi(argv[0]);
    if (p <= 1 || p == getpid())
        return error("not a usable pid");
    if (kill(p, SIGKILL) == 0)
        return escaped("signalled the process");
    return errno == ESRCH || errno == EPERM ? denied("kill") : error(strerror(errno));
}

/* TIOCSTI on standard input (the caller's terminal): `tiocsti high` sets bits above the
 * 32 the kernel reads of the request, which an unmasked filter compare misses. */
static int tiocsti(int argc, char **argv)
{
    unsigned long req = TIOCSTI;
    char ch = '#';
    if (argc > 0 && !strcmp(argv[0], "high"))
        req |= 1UL << 32;
    if (!isatty(0))
        return error("standard input is not a terminal");
    if (syscall(SYS_ioctl, 0, req, &ch) == 0)
        return escaped("TIOCSTI pushed a byte into the terminal's input");
    return denied("TIOCSTI");
}

/* TIOCLINUX on a terminal that is not a virtual console is refused anyway (EINVAL or
 * ENOTTY); EPERM says a filter stopped it first. */
static int tioclinux(void)
{
    char sub = 3;   /* TIOCL_PASTESEL */
    if (ioctl(0, TIOCLINUX, &sub) == 0)
        return escaped("TIOCLINUX worked");
    printf("%s TIOCLINUX: %s\n", errno == EPERM ? "DENIED" : "REFUSED", strerror(errno));
    return errno == EPERM ? 0 : 3;
}

static int fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return error("can't read /proc/self/fd");
    for (struct dirent *e; (e = readdir(d));) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] >= '0' && e->d_name[0] <= '9' && fd > 2 && fd != dirfd(d))
            printf("%d ", fd);
    }
    printf("\n");
    closedir(d);
    return 0;
}

static int cwd(void)
{
    char p[4096];
    long n = syscall(SYS_getcwd, p, sizeof p);
    if (n < 0)
        return error(strerror(errno));
    printf("%s\n", p);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        return error("usage: chtest CHECK [ARG...]");
    const char *c = argv[1];
    int n = argc - 2;
    char **a = argv + 2;
    if (!strcmp(c, "chroot-escape")) return chroot_escape(n, a);
    if (!strcmp(c, "dev")) return dev_access();
    if (!strcmp(c, "proc")) return proc_access();
    if (!strcmp(c, "sys")) return sys_access();
    if (!strcmp(c, "read")) return read_file(n, a);
    if (!strcmp(c, "mknod")) return do_mknod();
    if (!strcmp(c, "bind-port")) return bind_port(n, a);
    if (!strcmp(c, "remount")) return remount(n, a);
    if (!strcmp(c, "umount")) return do_umount(n, a);
    if (!strcmp(c, "ids")) return ids();
    if (!strcmp(c, "setgroups")) return do_setgroups();
    if (!strcmp(c, "seteuid")) return do_seteuid(n, a);
    if (!strcmp(c, "kill")) return do_kill(n, a);
    if (!strcmp(c, "tiocsti")) return tiocsti(n, a);
    if (!strcmp(c, "tioclinux")) return tioclinux();
    if (!strcmp(c, "fds")) return fds();
    if (!strcmp(c, "cwd")) return cwd();
    return error("unknown check");
}
