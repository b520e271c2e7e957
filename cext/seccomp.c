/* The fake-root seccomp filter for `hpcrun build` RUN steps (HPCRUN_F_SECCOMP_FAKE).
 *
 * In a user namespace where only the caller is mapped (to 0), package managers still
 * try to give files to other users, switch to service users and make device nodes.
 * The kernel refuses (EINVAL/EPERM: the ids are unmapped, device nodes need
 * CAP_MKNOD in the initial namespace), and dpkg, apt or rpm abort. This filter makes
 * those calls return 0 WITHOUT DOING ANYTHING, so the files stay the caller's and the
 * process keeps its ids. What it lies about (README, section build):
 *   - chown, fchown, lchown, fchownat (and the i386 *32 variants): success, no effect;
 *   - setuid, setgid, setgroups, setreuid, setregid, setresuid, setresgid, setfsuid,
 *     setfsgid (and *32): success, the ids do not change (getuid() still says 0);
 *   - capset: success, the capabilities do not change;
 *   - mknod/mknodat of a character or block device (the mode argument is checked
 *     here; regular files, fifos and sockets are made for real): success, no node;
 *   - setxattr, lsetxattr, fsetxattr: ENOTSUP ("not supported by this filesystem")
 *     for EVERY name. BPF sees only the pointer to the name, not the string, so the
 *     filter cannot single out system.posix_acl_*; ENOTSUP is the answer dpkg, tar,
 *     cp -a and systemd already take for "this filesystem keeps no xattrs". user.*
 *     attributes therefore cannot be set in a RUN step either.
 * The audit architecture is checked first: system call numbers differ between ABIs
 * (i386 on x86_64), and a number of another ABI must never be read as ours. On an
 * architecture the filter does not know, and for x32 numbers, it allows everything:
 * it only ever makes calls succeed that would fail, so allowing is the safe side.
 *
 * Modelled after the behaviour ch-image's seccomp mode documents; written here. */
#include "seccomp.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#define MAXPROG 256
#define MAXFIX 128

/* A tiny assembler: jumps to labels resolved once the program is complete. */
struct prog {
    struct sock_filter ins[MAXPROG];
    int n;
    int label[8];
    struct { int at, jt, jf; } fix[MAXFIX];
    int nfix;
    int overflow;
};

enum { L_FAKE, L_NOTSUP, L_ALLOW, L_NEXT0 };

static void emit(struct prog *p, unsigned short code, unsigned int k)
{
    if (p->n >= MAXPROG) {
        p->overflow = 1;
        return;
    }
    p->ins[p->n++] = (struct sock_filter)BPF_STMT(code, k);
}

/* if A == k goto jt else goto jf (labels, or -1: the next instruction) */
static void jeq(struct prog *p, unsigned int k, int jt, int jf)
{
    if (p->n >= MAXPROG || p->nfix >= MAXFIX) {
        p->overflow = 1;
        return;
    }
    p->fix[p->nfix].at = p->n;
    p->fix[p->nfix].jt = jt;
    p->fix[p->nfix].jf = jf;
    p->nfix++;
    p->ins[p->n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, k, 0, 0);
}

static void place(struct prog *p, int label)
{
    p->label[label] = p->n;
}

static int resolve(struct prog *p)
{
    for (int i = 0; i < p->nfix; i++) {
        int at = p->fix[i].at;
        int jt = p->fix[i].jt < 0 ? at + 1 : p->label[p->fix[i].jt];
        int jf = p->fix[i].jf < 0 ? at + 1 : p->label[p->fix[i].jf];
        if (jt <= at || jf <= at || jt - at - 1 > 255 || jf - at - 1 > 255)
            return -1;
        p->ins[at].jt = (unsigned char)(jt - at - 1);
        p->ins[at].jf = (unsigned char)(jf - at - 1);
    }
    return 0;
}

struct abi {
    unsigned int arch;
    const int *fake;      /* -1 terminated */
    const int *xattr;     /* -1 terminated */
    int mknod, mknod_mode_arg, mknodat, mknodat_mode_arg;   /* -1: none */
};

/* The native ABI, from the C library's numbers. */
static const int native_fake[] = {
#ifdef __NR_chown
    __NR_chown,
#endif
#ifdef __NR_lchown
    __NR_lchown,
#endif
    __NR_fchown, __NR_fchownat,
    __NR_setuid, __NR_setgid, __NR_setgroups, __NR_setreuid, __NR_setregid,
    __NR_setresuid, __NR_setresgid, __NR_setfsuid, __NR_setfsgid, __NR_capset,
    -1};
static const int native_xattr[] = {__NR_setxattr, __NR_lsetxattr, __NR_fsetxattr, -1};

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
/* i386 binaries on x86_64 (arch/x86/entry/syscalls/syscall_32.tbl), including the
 * 32-bit-id variants. */
static const int i386_fake[] = {
    182, 16, 95, 298,                 /* chown lchown fchown fchownat */
    212, 198, 207,                    /* chown32 lchown32 fchown32 */
    23, 46, 81, 70, 71, 164, 170, 138, 139,   /* setuid setgid setgroups setre* setres* setfs* */
    213, 214, 206, 203, 204, 208, 210, 215, 216,  /* the *32 variants */
    185,                              /* capset */
    -1};
static const int i386_xattr[] = {226, 227, 228, -1};
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NATIVE_ARCH AUDIT_ARCH_PPC64LE
#else
#error "fake-root seccomp filter: add this architecture's AUDIT_ARCH"
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i))
#else
#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i) + 4)
#endif

static void abi_block(struct prog *p, const struct abi *a, int next_label)
{
    emit(p, BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    jeq(p, a->arch, -1, next_label);
    emit(p, BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (const int *nr = a->fake; *nr >= 0; nr++)
        jeq(p, (unsigned int)*nr, L_FAKE, -1);
    for (const int *nr = a->xattr; *nr >= 0; nr++)
        jeq(p, (unsigned int)*nr, L_NOTSUP, -1);
    int calls[2][2] = {{a->mknod, a->mknod_mode_arg}, {a->mknodat, a->mknodat_mode_arg}};
    for (int i = 0; i < 2; i++) {
        if (calls[i][0] < 0)
            continue;
        /* if nr == mknod: A = mode & S_IFMT; fake for S_IFCHR and S_IFBLK, else allow.
         * (A no longer holds nr after this, so each branch ends in a return.) */
        int skip = p->n + 6;            /* the instruction after this group */
        if (skip > MAXPROG) {
            p->overflow = 1;
            return;
        }
        p->ins[p->n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                                    (unsigned int)calls[i][0], 0, 5);
        p->n++;
        emit(p, BPF_LD | BPF_W | BPF_ABS, (unsigned int)ARG_LO(calls[i][1]));
        emit(p, BPF_ALU | BPF_AND | BPF_K, S_IFMT);
        jeq(p, S_IFCHR, L_FAKE, -1);
        jeq(p, S_IFBLK, L_FAKE, -1);
        emit(p, BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        if (p->n != skip)
            p->overflow = 1;
    }
    emit(p, BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
}

int hpcrun_seccomp_fake_install(void)
{
    static struct prog p;   /* static: a few KB off the (possibly small) stack */
    const struct abi native = {
        NATIVE_ARCH, native_fake, native_xattr,
#ifdef __NR_mknod
        __NR_mknod, 1,
#else
        -1, 0,
#endif
        __NR_mknodat, 2};
    p.n = p.nfix = p.overflow = 0;
#if defined(__x86_64__)
    const struct abi i386 = {AUDIT_ARCH_I386, i386_fake, i386_xattr, 14, 1, 297, 2};
    abi_block(&p, &native, L_NEXT0);
    place(&p, L_NEXT0);
    abi_block(&p, &i386, L_ALLOW);
#else
    abi_block(&p, &native, L_ALLOW);
#endif
    place(&p, L_ALLOW);
    emit(&p, BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    place(&p, L_FAKE);
    emit(&p, BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 0);       /* returns 0: success */
    place(&p, L_NOTSUP);
    emit(&p, BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOTSUP);
    if (p.overflow || resolve(&p)) {
        errno = E2BIG;
        return -1;
    }
    struct sock_fprog fp = {(unsigned short)p.n, p.ins};
    /* Without no_new_privs the kernel asks for CAP_SYS_ADMIN in our user namespace,
     * which the namespace's root has; fall back to no_new_privs elsewhere. */
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fp) == 0)
        return 0;
    if (errno != EACCES || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fp);
}
