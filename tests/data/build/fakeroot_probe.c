/* Probe for the fake-root seccomp filter (tests/test_build.py): each line is
 * "<call> <return value> <errno name or 0>" plus what really happened. Static, so it
 * runs in the busybox test image. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <linux/capability.h>

static void show(const char *what, long r)
{
    printf("%s %ld %s\n", what, r, r < 0 ? (errno == ENOTSUP ? "ENOTSUP" : strerror(errno)) : "0");
}

int main(void)
{
    int fd = open("/probe-file", O_CREAT | O_WRONLY, 0644);
    close(fd);
    show("chown", chown("/probe-file", 123, 456));
    show("fchownat", fchownat(AT_FDCWD, "/probe-file", 7, 7, 0));
    struct stat st;
    stat("/probe-file", &st);
    printf("owner %u %u\n", st.st_uid, st.st_gid);
    gid_t g = 5;
    show("setgroups", setgroups(1, &g));
    show("setresgid", setresgid(5, 5, 5));
    show("setresuid", setresuid(5, 5, 5));
    show("setfsuid", syscall(SYS_setfsuid, 5) < 0 ? -1 : 0);
    printf("uid %u\n", getuid());
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {{0, 0, 0}, {0, 0, 0}};
    show("capset", syscall(SYS_capset, &h, d));
    show("mknod-chr", mknod("/probe-chr", S_IFCHR | 0600, makedev(1, 3)));
    show("mknod-blk", mknodat(AT_FDCWD, "/probe-blk", S_IFBLK | 0600, makedev(7, 0)));
    show("mknod-reg", mknod("/probe-reg", S_IFREG | 0600, 0));
    show("mknod-fifo", mknod("/probe-fifo", S_IFIFO | 0600, 0));
    printf("exists chr %d blk %d reg %d fifo %d\n", access("/probe-chr", F_OK) == 0,
           access("/probe-blk", F_OK) == 0, access("/probe-reg", F_OK) == 0,
           access("/probe-fifo", F_OK) == 0);
    show("setxattr-acl", setxattr("/probe-file", "system.posix_acl_access", "x", 1, 0));
    show("setxattr-user", lsetxattr("/probe-file", "user.test", "x", 1, 0));
    return 0;
}
