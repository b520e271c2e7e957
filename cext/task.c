/* hpcrun's per-task front end: the program srun starts for every task of a step.
 *
 *     srun [srun options] .../hpcrun/_task<suffix>.so STEP-PLAN -- COMMAND [ARG...]
 *
 * `hpcrun srun` (Python, once per step on the launching node) resolves the image and
 * the options into a step plan: one argv word (hpcrun/slurm/stepplan.py writes it;
 * the grammar is below). Here, in every task, with no Python start-up:
 *   1. the image: a directory, or a squashfs file unpacked once per node into the
 *      node cache (the unpacking itself is Python's: `hpcrun task --unpack-only`,
 *      started once per node and image under prepare.py's lock);
 *   2. the environment: the task's own (its SLURM_* values) plus the plan's fixed
 *      additions (image ENV, --env-file, -e), as hpcrun.runtime.env.compose would;
 *   3. Slurm's PMIx directories bound at the same paths (as prepare.slurm_binds);
 *   4. the working directory: the plan's, or this task's cwd as seen inside;
 *   5. with `share`: one container per node and step. The first task makes it, held by
 *      a keeper process, and writes a node plan; the others join it (setns + exec).
 *      Otherwise (or where it cannot be shared) each task enters its own container.
 * Then the command replaces this process (hpcrun_enter / hpcrun_join): srun sees its
 * exit status and scancel's SIGTERM reaches it directly.
 *
 * It is built as a shared object with its own entry point and program interpreter
 * (setuptools builds extension modules, not programs), like glibc's libc.so.6, which
 * can be run too. Nothing of Python is linked in.
 *
 * Step plan grammar: comma-separated KEY=VALUE words; in VALUE, '%XX' (hex) stands for
 * any byte but letters, digits and "/._+@-" (so the plan is one shell word that needs
 * no quotes). Keys (repeatable ones *):
 *   v=1              plan version
 *   image=PATH       root directory               sq=PATH  squashfs file to unpack
 *   flags=N uid=N gid=N stop=N host=NAME fuse=PATH   as struct hpcrun_spec
 *   m=FLAGS:SRC:DST  * a mount, in order (SRC empty: none; SCRATCH: this task's
 *                      $SLURM_TMPDIR, else $TMPDIR: --scratch)
 *   wd=PATH wdreq=0|1  working directory          wdcwd=1  this task's cwd as seen inside
 *   entry=ARG        * the image's ENTRYPOINT, in front of the command
 *   cmd=ARG          * the image's CMD: the command when none follows `--`
 *   set=NAME:VALUE   * fixed environment additions, in order
 *   own=NAME         * names whose value is the task's own where it has one (`-e NAME`;
 *                      a set= of the same name applies only where the task has none)
 *   clean=1          --cleanenv: drop the rest of the task's variables but ...
 *   always=PREFIX    * ... those starting with these
 *   tmpfs=PATTERN    Slurm's TmpFS (%n, %h expanded here), for PMIx's directories
 *   cache=DIR        node cache base (HPCRUN_NODE_CACHE wins)
 *   share=1          one container per node and step
 *   join=auto|off|KEY  one container per node for the ranks of an MPI launch
 *                      (`hpcrun run` under mpirun, mpiexec.hydra, srun): the
 *                      launcher's job (auto; see launcher_key), KEY (--join=KEY), or
 *                      none (off); ranks left alone get separate_vars
 *   pmixv=M.N        the image's PMIx client version (pmix_check)
 *   pertask=1        devices (--gpus, --device) or limits (--memory, --cpuset-cpus,
 *                    ...): each task runs `hpcrun task ARGS`, which plans them with its
 *                    own node's allocation, CPUs and cgroup
 *   pfds=N           --preserve-fds: descriptors 3 .. 2+N stay open in the command
 *   netns=PID:START  --network container:N: the instance supervisor whose user and
 *                    network namespaces are joined (its start time checked)
 *   py=ARG           * how to start `hpcrun task` (Python) for what is not done here
 *   arg=ARG          * the step's `hpcrun task` options and IMAGE as given: where the
 *                      image is not on this node, `hpcrun task ARGS -- COMMAND` runs
 */
#define _GNU_SOURCE
#include "core.h"
#include "procfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

extern char **environ;
extern int hpcrun_trim_monitor;

#define MAX_ITEMS 512
#define KEEPER_ARGV0 "/.hpcrun-keeper-holds-this-container"
#define PLAN_HEAD "# hpcrun node-container plan 1"
#define PLAN_VERSION 2   /* hpcrun/runtime/plan.py VERSION: see also there */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct plan {
    const char *image, *sq, *fuse, *host, *wd, *tmpfs, *cache, *join, *pmixv;
    int flags, uid, gid, stop, wdreq, wdcwd, clean, share, pmix, pfds, version, pertask;
    int net_pid;                       /* netns=PID:START (0: none) */
    unsigned long long net_start;
    struct hpcrun_mount m[MAX_ITEMS];
    int nm;
    const char *entry[MAX_ITEMS], *cmd[MAX_ITEMS], *args[MAX_ITEMS], *set[MAX_ITEMS], *own[MAX_ITEMS], *always[64], *py[64];
    int nentry, ncmd, nargs, nset, nown, nalways, npy;
    struct hpcrun_limits lim;          /* lim= (tier 0: none) */
    char *cg[9];                       /* cg= (or made from cgmk=), NULL-terminated */
    int ncg;
    const char *cgmk[8], *cgw[64];     /* cgmk=CTL:POINT:ROOT, cgw=I:FILE:VALUE */
    int ncgmk, ncgw;
    const char *limnode[8], *limsay;   /* limnode=CTL:POINT:ROOT, limsay=TEXT */
    int nlimnode;
    const char *aff;                   /* aff=: CPUs to bind to */
    int affn;                          /* affn=: only so many of them */
    const char *rl[16];                /* rl=NAME:SOFT:HARD */
    int nrl;
};

/* ---------------------------------------------------------------- errors */

static const char *hint_text;

/* Hints for the steps the C core names in its messages (a substring -> what to do).
 * The one table: Python's hpcrun/_core.py asks hpcrun_hint too. */
static const char *const HINTS[][2] = {
    {"can't create a user namespace", "unprivileged user namespaces may be disabled here; "
     "run 'hpcrun check' and ask the admin to enable them (user.max_user_namespaces)"},
    {"can't open /dev/fuse", "this node does not let users mount FUSE; "
     "use --unpack to extract the squashfs image into a node-local cache instead"},
    {"can't mount squashfs", "the squashfs file may be corrupt or truncated; "
     "check it with 'unsquashfs -s FILE', or rebuild it"},
    {"can't mount a writable overlay", "--writable-tmpfs needs overlayfs in a user namespace "
     "(Linux >= 5.11); see 'hpcrun check'"},
    {"can't bind", "the destination must exist in the image or be creatable: it cannot "
     "lie inside /proc, /sys, /dev or a read-only or host-backed bind"},
    {"can't create mount point", "the destination cannot be made inside the image; "
     "pick another -v destination"},
    {"can't use working directory", "a path through /proc/self/fd or /proc/PID/cwd leads "
     "out of the container; give a directory inside the image or a bind"},
    {"can't install the seccomp filter", "the kernel refused seccomp (CONFIG_SECCOMP_FILTER, "
     "or a seccomp policy around hpcrun); see the README, 'Isolation'"},
    {"can't chdir to", "the working directory does not exist in the container; "
     "create it in the image, or give -w on a writable mount (/tmp, a -v bind)"},
    {"can't create working directory", "the working directory must exist in the image or "
     "lie on a writable mount (/tmp, a -v bind, or use --writable-tmpfs)"},
    {"its user namespace maps you to", "--network container:N runs in the instance's user "
     "namespace, so the ids inside are the instance's: start both with (or both without) "
     "--fakeroot, from images with the same USER"},
    {"the instance is gone", "see 'hpcrun ps'; start the instance again with 'hpcrun "
     "instance start --name N ...'"},
    {"of instance process", "the instance must be yours and still running "
     "(see 'hpcrun ps')"},
    {"command not found", "check the command name and the image's PATH "
     "(e.g. 'hpcrun run IMAGE -- ls /bin')"},
    {"can't execute", "the file is not executable, or not a program for this machine"},
};

const char *hpcrun_hint(const char *msg)
{
    for (size_t i = 0; i < sizeof HINTS / sizeof HINTS[0]; i++)
        if (strstr(msg, HINTS[i][0]))
            return HINTS[i][1];
    return NULL;
}

__attribute__((noreturn, format(printf, 2, 3)))
static void die(int code, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dprintf(2, "hpcrun: error: %s\n", msg);
    const char *hint = hint_text ? hint_text : hpcrun_hint(msg);
    if (hint)
        dprintf(2, "hint: %s\n", hint);
    _exit(code);
}

/* ---------------------------------------------------------------- the plan */

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Decode %XX escapes in place; -1 on a malformed one or an escaped NUL. */
static int unescape(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p == '%') {
            int a = hexval((unsigned char)p[1]), b = a < 0 ? -1 : hexval((unsigned char)p[2]);
            if (b < 0 || (a | b) == 0)
                return -1;
            *o++ = (char)(a * 16 + b);
            p += 2;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return 0;
}

static int num(const char *v, int *out)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < 0 || n > 0x7fffffff)
        return -1;
    *out = (int)n;
    return 0;
}

#define PUSH(arr, n, cap, v) do { if ((n) >= (cap)) return -1; (arr)[(n)++] = (v); } while (0)

/* lim=TIER:MEMORY:MEMORY_SWAP:NPROC:INTERVAL_MS (runtime/plan.py) */
static int parse_limits(const char *v, struct hpcrun_limits *l)
{
    long long f[5];
    char *end;
    for (int i = 0; i < 5; i++) {
        f[i] = strtoll(v, &end, 10);
        if (end == v || f[i] < 0 || (i < 4 ? *end != ':' : *end != '\0'))
            return -1;
        v = end + 1;
    }
    if (f[0] < HPCRUN_TIER_CGROUP1 || f[0] > HPCRUN_TIER_WATCHDOG || f[4] > 60000)
        return -1;
    l->tier = (int)f[0];
    l->memory = f[1];
    l->memory_swap = f[2];
    l->nproc = f[3];
    l->interval_ms = (int)f[4];
    return 0;
}

/* aff= and rl= (hpcrun/cgroups.py): CPUs and resource limits the container inherits.
 * The plan was checked against this host when made; a cached one may meet another
 * allocation (a Slurm job's CPUs), so the CPUs are checked again. */
static void apply_binding(const struct plan *p)
{
    static const struct { const char *name, *shown; int res; } RL[] = {
        {"nofile", "NOFILE", RLIMIT_NOFILE}, {"nproc", "NPROC", RLIMIT_NPROC},
        {"core", "CORE", RLIMIT_CORE}, {"stack", "STACK", RLIMIT_STACK},
        {"memlock", "MEMLOCK", RLIMIT_MEMLOCK}, {"as", "AS", RLIMIT_AS},
        {"cpu", "CPU", RLIMIT_CPU}, {"fsize", "FSIZE", RLIMIT_FSIZE},
    };
    if (p->aff || p->affn > 0) {
        cpu_set_t want, have;
        CPU_ZERO(&want);
        const char *q = p->aff ? p->aff : "";
        /* affn= alone (a step plan's --cpus N): N of the CPUs this task may use. */
        if (!p->aff && sched_getaffinity(0, sizeof want, &want))
            die(HPCRUN_EXIT_FAILED, "can't read this task's CPUs: %s", strerror(errno));
        while (*q) {
            char *end;
            long a = strtol(q, &end, 10), b = a;
            if (end == q || a < 0 || a >= CPU_SETSIZE)
                die(HPCRUN_EXIT_FAILED, "the plan's CPU list %s is malformed", p->aff);
            if (*end == '-')
                b = strtol(end + 1, &end, 10);
            for (long c = a; c <= b && c < CPU_SETSIZE; c++)
                CPU_SET((int)c, &want);
            q = *end == ',' ? end + 1 : end;
            if (*end && *end != ',')
                die(HPCRUN_EXIT_FAILED, "the plan's CPU list %s is malformed", p->aff);
        }
        if (sched_getaffinity(0, sizeof have, &have) == 0) {
            CPU_AND(&have, &have, &want);
            if (!CPU_EQUAL(&have, &want)) {
                hint_text = "pick CPUs from the allowed list (nproc, taskset -p $$)";
                die(HPCRUN_EXIT_FAILED, "--cpuset-cpus %s: not all of these CPUs are allowed "
                    "here", p->aff);
            }
        }
        if (p->affn > 0 && p->affn < CPU_COUNT(&want)) {
            /* N of them, from the CPU we run on upwards (wrapping): side by side
             * containers spread the way the scheduler has placed their launchers. */
            cpu_set_t pick;
            int start = sched_getcpu(), n = 0;
            CPU_ZERO(&pick);
            for (int pass = 0; pass < 2 && n < p->affn; pass++)
                for (int c = pass ? 0 : (start > 0 ? start : 0); c < CPU_SETSIZE && n < p->affn; c++) {
                    if (pass && c >= start)
                        break;
                    if (CPU_ISSET(c, &want) && !CPU_ISSET(c, &pick)) {
                        CPU_SET(c, &pick);
                        n++;
                    }
                }
            want = pick;
        }
        if (sched_setaffinity(0, sizeof want, &want))
            die(HPCRUN_EXIT_FAILED, "can't bind to CPUs %s: %s", p->aff ? p->aff : "(some)",
                strerror(errno));
    }
    for (int i = 0; i < p->nrl; i++) {
        char name[16];
        long long soft, hard;
        const char *c = strchr(p->rl[i], ':');
        if (!c || (size_t)(c - p->rl[i]) >= sizeof name ||
            sscanf(c + 1, "%lld:%lld", &soft, &hard) != 2)
            die(HPCRUN_EXIT_FAILED, "the plan's resource limit %s is malformed", p->rl[i]);
        memcpy(name, p->rl[i], (size_t)(c - p->rl[i]));
        name[c - p->rl[i]] = '\0';
        size_t k = 0;
        while (k < sizeof RL / sizeof *RL && strcmp(RL[k].name, name))
            k++;
        if (k == sizeof RL / sizeof *RL)
            die(HPCRUN_EXIT_FAILED, "the plan's resource limit %s is unknown", name);
        struct rlimit rl = {soft < 0 ? RLIM_INFINITY : (rlim_t)soft,
                            hard < 0 ? RLIM_INFINITY : (rlim_t)hard};
        if (setrlimit(RL[k].res, &rl)) {
            int e = errno;
            struct rlimit cur;
            getrlimit(RL[k].res, &cur);
            hint_text = "an unprivileged user may only lower a hard limit";
            errno = e;
            die(HPCRUN_EXIT_FAILED, "can't set RLIMIT_%s to %lld:%lld: %s (hard limit now %llu)",
                RL[k].shown, soft, hard, strerror(e), (unsigned long long)cur.rlim_max);
        }
    }
}

/* cgmk= and cgw= (hpcrun/cgroups.py chose the tier; runtime/plan.py): the container's
 * cgroups, made here, so that a plan with a cgroup of its own needs no Python and can be
 * cached. For each cgmk=CTL:POINT:ROOT, the caller's own cgroup of controller CTL (""
 * for cgroup v2) is read from /proc/self/cgroup, as seen from the hierarchy mounted at
 * POINT whose root is ROOT, and hpcrun-<this pid> is made in it: a job's cgroup is never
 * left, wherever the cached plan is run. Stale hpcrun-<pid> siblings (their launcher
 * gone, so empty) are removed first. Then each cgw=I:FILE:VALUE is written into the I-th
 * (VALUE @parent: the parent's FILE, as cpuset.mems needs). Any failure removes what was
 * made. The monitor (cext/core.c) moves the container in and removes them at the end. */
static char cg_made[8][PATH_MAX];

static int own_cgroup(const char *ctl, char *out, size_t len)
{
    char buf[4096];
    if (hpcrun_read_small("/proc/self/cgroup", buf, sizeof buf) <= 0)
        return -1;
    size_t cl = strlen(ctl);
    for (char *line = buf, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *a = strchr(line, ':'), *b = a ? strchr(a + 1, ':') : NULL;
        if (!b)
            continue;
        *b = '\0';
        int hit = 0;
        if (!cl)
            hit = !strcmp(line, "0:");         /* "0::/path" */
        else
            for (char *c = a + 1; c && *c; c = strchr(c, ',') ? strchr(c, ',') + 1 : NULL)
                if (!strncmp(c, ctl, cl) && (c[cl] == ',' || c[cl] == '\0'))
                    hit = 1;
        if (hit && (size_t)snprintf(out, len, "%s", b + 1) < len)
            return 0;
    }
    return -1;
}

static void cgroups_undo(int n)
{
    while (n-- > 0)
        rmdir(cg_made[n]);
}

/* The caller's own cgroup named by CTL:POINT:ROOT (cgmk=, limnode=) into out: 0, or
 * -1 with the reason in out. */
static int own_cgroup_dir(const char *mk, char *out, size_t len)
{
    char own[PATH_MAX], spec[PATH_MAX];
    snprintf(spec, sizeof spec, "%s", mk);
    char *point = strchr(spec, ':'), *root = point ? strchr(point + 1, ':') : NULL;
    if (!root) {
        snprintf(out, len, "the plan's cgroup %s is malformed", mk);
        return -1;
    }
    *point++ = '\0';
    *root++ = '\0';
    if (own_cgroup(spec, own, sizeof own)) {
        snprintf(out, len, "can't find this process's %s cgroup in /proc/self/cgroup",
                 *spec ? spec : "v2");
        return -1;
    }
    const char *rel = own;
    size_t rl = strlen(root);
    while (rl > 1 && root[rl - 1] == '/')
        rl--;
    if (strcmp(root, "/") && !strncmp(own, root, rl) && (own[rl] == '/' || !own[rl]))
        rel = own + rl;
    while (*rel == '/')
        rel++;
    if ((size_t)snprintf(out, len, "%s%s%s", point, *rel ? "/" : "", rel) >= len) {
        snprintf(out, len, "the cgroup path under %s is too long", point);
        return -1;
    }
    return 0;
}

static void make_cgroups(struct plan *p)
{
    char parent[PATH_MAX], path[PATH_MAX];
    int made = 0;
    pid_t me = getpid();
    hint_text = "see 'hpcrun check' for what this host allows";
    for (int i = 0; i < p->ncgmk; i++) {
        if (own_cgroup_dir(p->cgmk[i], parent, sizeof parent)) {
            cgroups_undo(made);
            die(HPCRUN_EXIT_FAILED, "%s", parent);
        }
        /* stale siblings: hpcrun-<pid> of launchers that are gone (rmdir fails on any
         * cgroup that still holds a process) */
        DIR *d = opendir(parent);
        for (struct dirent *e; d && (e = readdir(d));) {
            char *end;
            long pid = strncmp(e->d_name, "hpcrun-", 7) ? 0 : strtol(e->d_name + 7, &end, 10);
            if (pid > 0 && !*end && pid != me && kill((pid_t)pid, 0) && errno == ESRCH &&
                (size_t)snprintf(path, sizeof path, "%s/%s", parent, e->d_name) < sizeof path)
                rmdir(path);
        }
        if (d)
            closedir(d);
        if ((size_t)snprintf(cg_made[made], sizeof cg_made[made], "%s/hpcrun-%d", parent,
                             (int)me) >= sizeof cg_made[made]) {
            cgroups_undo(made);
            die(HPCRUN_EXIT_FAILED, "the cgroup path under %s is too long", parent);
        }
        if (mkdir(cg_made[made], 0755) && (errno != EEXIST || rmdir(cg_made[made]) ||
                                           mkdir(cg_made[made], 0755))) {
            int e = errno;
            cgroups_undo(made);
            die(HPCRUN_EXIT_FAILED, "can't create cgroup %s: %s", cg_made[made], strerror(e));
        }
        p->cg[made] = cg_made[made];
        made++;
    }
    p->cg[made] = NULL;
    p->ncg = made;
    for (int i = 0; i < p->ncgw; i++) {
        char w[512], val[256];
        snprintf(w, sizeof w, "%s", p->cgw[i]);
        char *file = strchr(w, ':'), *v = file ? strchr(file + 1, ':') : NULL, *end;
        long k = strtol(w, &end, 10);
        if (!v || end != file || k < 0 || k >= made || memchr(file + 1, '/', (size_t)(v - file - 1))) {
            cgroups_undo(made);
            die(HPCRUN_EXIT_FAILED, "the plan's cgroup setting %s is malformed", p->cgw[i]);
        }
        *file++ = '\0';
        *v++ = '\0';
        if (!strcmp(v, "@parent")) {
            char *slash = strrchr(cg_made[k], '/');
            snprintf(path, sizeof path, "%.*s/%s", (int)(slash - cg_made[k]), cg_made[k], file);
            if (hpcrun_read_small(path, val, sizeof val) < 0)
                val[0] = '\0';
            val[strcspn(val, "\n")] = '\0';
            v = val;
        }
        snprintf(path, sizeof path, "%s/%s", cg_made[k], file);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        size_t vl = strlen(v);
        if (fd < 0 || write(fd, v, vl) != (ssize_t)vl) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            cgroups_undo(made);
            hint_text = "see 'hpcrun check' for what this host allows; --limits=best-effort "
                        "is no help for a cgroup that refuses a value";
            die(HPCRUN_EXIT_FAILED, "can't set %s to %s in %s: %s", file, v, cg_made[k],
                strerror(e));
        }
        close(fd);
    }
    hint_text = NULL;
    /* @cgI: the I-th made cgroup (the view mounted at /sys/fs/cgroup/..., cgmem=) */
    for (int i = 0; i < p->nm; i++)
        if (p->m[i].src && !strncmp(p->m[i].src, "@cg", 3)) {
            long k = strtol(p->m[i].src + 3, NULL, 10);
            if (k < 0 || k >= made) {
                cgroups_undo(made);
                die(HPCRUN_EXIT_FAILED, "the plan's cgroup mount %s is malformed", p->m[i].src);
            }
            p->m[i].src = cg_made[k];
        }
    if (p->lim.memory_cgroup && !strncmp(p->lim.memory_cgroup, "@cg", 3)) {
        long k = strtol(p->lim.memory_cgroup + 3, NULL, 10);
        p->lim.memory_cgroup = k >= 0 && k < made ? cg_made[k] : NULL;
    }
}

/* limnode= (a step plan's limits, runtime/pipeline.py): the plan carries them as the
 * no-cgroup tier applies them (lim=, limshow=, affn=), which this node uses unless it
 * gives this task a writable cgroup: its own cgroup v2 (limnode=:POINT:ROOT), or every
 * one of the v1 controllers needed. Then the task plans its cgroup in Python (`hpcrun
 * task`, as for devices), which chooses the tier as `hpcrun run` does. */
static int node_has_cgroup(const struct plan *p)
{
    char dir[PATH_MAX], procs[PATH_MAX + 16];
    int v1 = 0, v1w = 0;
    for (int i = 0; i < p->nlimnode; i++) {
        int w = !own_cgroup_dir(p->limnode[i], dir, sizeof dir) && !access(dir, W_OK) &&
                (size_t)snprintf(procs, sizeof procs, "%s/cgroup.procs", dir) < sizeof procs &&
                !access(procs, W_OK);
        if (p->limnode[i][0] == ':') {
            if (w)
                return 1;
        } else {
            v1++;
            v1w += w;
        }
    }
    return v1 && v1w == v1;
}

/* Parse the plan (a writable copy: values are decoded in place). */
static int parse_plan(char *text, struct plan *p)
{
    memset(p, 0, sizeof *p);
    for (char *w = strtok(text, ","); w; w = strtok(NULL, ",")) {
        char *v = strchr(w, '=');
        if (!v)
            return -1;
        *v++ = '\0';
        const char *k = w;
        if (!strcmp(k, "m")) {
            /* FLAGS:SRC:DST, each part escaped on its own (':' inside is %3A) */
            char *a = strchr(v, ':'), *b = a ? strchr(a + 1, ':') : NULL;
            if (!b)
                return -1;
            *a++ = '\0';
            *b++ = '\0';
            if (p->nm >= MAX_ITEMS || num(v, &p->m[p->nm].flags) || unescape(a) || unescape(b))
                return -1;
            p->m[p->nm].src = *a ? a : NULL;
            p->m[p->nm].dst = b;
            p->nm++;
            continue;
        }
        if (!strcmp(k, "set")) {
            /* NAME:VALUE, stored as NAME=VALUE (the name never holds ':' or '=') */
            char *a = strchr(v, ':');
            if (!a || a == v)
                return -1;
            *a = '=';
            if (unescape(v))
                return -1;
            PUSH(p->set, p->nset, MAX_ITEMS, v);
            continue;
        }
        if (unescape(v))
            return -1;
        if (!strcmp(k, "v")) { if (num(v, &p->version)) return -1; }
        else if (!strcmp(k, "image")) p->image = v;
        else if (!strcmp(k, "sq")) p->sq = v;
        else if (!strcmp(k, "fuse")) p->fuse = v;
        else if (!strcmp(k, "host")) p->host = v;
        else if (!strcmp(k, "wd")) p->wd = v;
        else if (!strcmp(k, "tmpfs")) p->tmpfs = v;
        else if (!strcmp(k, "cache")) p->cache = v;
        else if (!strcmp(k, "join")) p->join = v;
        else if (!strcmp(k, "pmixv")) p->pmixv = v;
        else if (!strcmp(k, "flags")) { if (num(v, &p->flags)) return -1; }
        else if (!strcmp(k, "uid")) { if (num(v, &p->uid)) return -1; }
        else if (!strcmp(k, "gid")) { if (num(v, &p->gid)) return -1; }
        else if (!strcmp(k, "stop")) { if (num(v, &p->stop)) return -1; }
        else if (!strcmp(k, "wdreq")) p->wdreq = !strcmp(v, "1");
        else if (!strcmp(k, "wdcwd")) p->wdcwd = !strcmp(v, "1");
        else if (!strcmp(k, "clean")) p->clean = !strcmp(v, "1");
        else if (!strcmp(k, "share")) p->share = !strcmp(v, "1");
        else if (!strcmp(k, "pertask")) p->pertask = !strcmp(v, "1");
        else if (!strcmp(k, "pmix")) p->pmix = !strcmp(v, "1");
        else if (!strcmp(k, "pfds")) { if (num(v, &p->pfds)) return -1; }
        else if (!strcmp(k, "entry")) PUSH(p->entry, p->nentry, MAX_ITEMS, v);
        else if (!strcmp(k, "cmd")) PUSH(p->cmd, p->ncmd, MAX_ITEMS, v);
        else if (!strcmp(k, "arg")) PUSH(p->args, p->nargs, MAX_ITEMS, v);
        else if (!strcmp(k, "own")) PUSH(p->own, p->nown, MAX_ITEMS, v);
        else if (!strcmp(k, "always")) PUSH(p->always, p->nalways, 64, v);
        else if (!strcmp(k, "py")) PUSH(p->py, p->npy, 60, v);
        else if (!strcmp(k, "lim")) { if (parse_limits(v, &p->lim)) return -1; }
        else if (!strcmp(k, "limshow")) p->lim.memory_shown = v;
        else if (!strcmp(k, "cg")) PUSH(p->cg, p->ncg, 8, v);
        else if (!strcmp(k, "cgmk")) PUSH(p->cgmk, p->ncgmk, 8, v);
        else if (!strcmp(k, "cgw")) PUSH(p->cgw, p->ncgw, 64, v);
        else if (!strcmp(k, "limnode")) PUSH(p->limnode, p->nlimnode, 8, v);
        else if (!strcmp(k, "limsay")) p->limsay = v;
        else if (!strcmp(k, "cgmem")) p->lim.memory_cgroup = v;
        else if (!strcmp(k, "aff")) p->aff = v;
        else if (!strcmp(k, "affn")) { if (num(v, &p->affn)) return -1; }
        else if (!strcmp(k, "rl")) PUSH(p->rl, p->nrl, 16, v);
        else if (!strcmp(k, "netns")) {
            char *colon = strchr(v, ':'), *end;
            if (!colon)
                return -1;
            *colon = '\0';
            errno = 0;
            p->net_start = strtoull(colon + 1, &end, 10);
            if (num(v, &p->net_pid) || !p->net_pid || errno || end == colon + 1 || *end)
                return -1;
        }
        else return -1;     /* a key of a newer plan: refuse rather than guess */
    }
    return p->version == PLAN_VERSION && (p->image || p->sq) ? 0 : -1;
}

/* 64-bit FNV-1a of the plan: what a node's shared container is planned for. */
static uint64_t fnv(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* ---------------------------------------------------------------- helpers */

static const char *node_name(void)
{
    static struct utsname u;
    const char *n = getenv("SLURMD_NODENAME");
    if (n && *n)
        return n;
    uname(&u);
    return u.nodename;
}

/* <cache base>/<node>: HPCRUN_NODE_CACHE, else the plan's, else the default. */
static void cache_dir(const struct plan *p, char *out)
{
    const char *base = getenv("HPCRUN_NODE_CACHE");
    char def[128];
    if (!base || !*base)
        base = p->cache;
    if (!base || !*base) {
        snprintf(def, sizeof def, "/var/tmp/hpcrun-%u/nodecache", (unsigned)getuid());
        base = def;
    }
    if (snprintf(out, PATH_MAX, "%s/%s", base, node_name()) >= PATH_MAX)
        die(HPCRUN_EXIT_FAILED, "node cache path too long: %s", base);
}

/* Refuse the node cache PATH because LEVEL (PATH or a directory above it) PROBLEM. */
__attribute__((noreturn))
static void refuse_dir(const char *path, const char *level, const char *problem)
{
    static char hint[PATH_MAX + 200];
    snprintf(hint, sizeof hint, "remove %s, or ask its owner or an admin to; or set node_cache "
             "(HPCRUN_NODE_CACHE) to a directory you own that no one else can write (see "
             "'Security' in the README)", level);
    hint_text = hint;
    if (!strcmp(path, level))
        die(HPCRUN_EXIT_FAILED, "refusing to use the node cache %s: %s %s", path, path, problem);
    die(HPCRUN_EXIT_FAILED, "refusing to use the node cache %s: %s (above it) %s", path, level,
        problem);
}

/* Make (0700) and check the node cache PATH by hpcrun.fsutil.private_dir's rule (see
 * there; the two must agree): each level is opened from its parent's descriptor
 * (openat, O_NOFOLLOW) and checked on the opened directory (fstat). The cache itself
 * must be ours; a level owned by us must not be writable by group or others; one above
 * it owned by root may be only if sticky (/var/tmp); a symlink is followed only if root
 * owns it; any other owner is refused. */
static void private_dir(const char *path)
{
    char p[PATH_MAX], level[PATH_MAX] = "", why[160];
    uid_t me = geteuid();
    size_t ll = 0;
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p)
        die(HPCRUN_EXIT_FAILED, "node cache path too long: %s", path);
    int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        die(HPCRUN_EXIT_FAILED, "can't open /: %s", strerror(errno));
    char *save = NULL, *next;
    for (char *name = strtok_r(p, "/", &save); name; name = next) {
        next = strtok_r(NULL, "/", &save);
        int last = next == NULL;    /* the cache itself: it must be ours */
        ll += (size_t)snprintf(level + ll, sizeof level - ll, "/%s", name);
        struct stat st;
        if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) &&
            (errno != ENOENT || (mkdirat(fd, name, 0700) && errno != EEXIST) ||
             fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW)))
            die(HPCRUN_EXIT_FAILED, "cannot create the node cache %s: %s: %s", path, level,
                strerror(errno));
        int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
        if (S_ISLNK(st.st_mode)) {
            if (st.st_uid != 0) {
                snprintf(why, sizeof why, "is a symbolic link owned by uid %u (only root's "
                         "are followed)", (unsigned)st.st_uid);
                refuse_dir(path, level, why);
            }
        } else if (!S_ISDIR(st.st_mode)) {
            refuse_dir(path, level, "is not a directory");
        } else {
            flags |= O_NOFOLLOW;
        }
        int nfd = openat(fd, name, flags);
        if (nfd < 0 && errno == ELOOP)
            refuse_dir(path, level, "was replaced by a symbolic link");
        if (nfd < 0 || fstat(nfd, &st))
            die(HPCRUN_EXIT_FAILED, "cannot use the node cache %s: %s: %s", path, level,
                strerror(errno));
        close(fd);
        fd = nfd;
        mode_t m = st.st_mode & 07777;
        if (!S_ISDIR(st.st_mode))
            refuse_dir(path, level, "is not a directory");
        int rootdir = st.st_uid == 0 && !last;
        if (rootdir ? (m & 022) && !(m & S_ISVTX) : st.st_uid != me || (m & 022)) {
            if (rootdir)
                snprintf(why, sizeof why, "is writable by group or others without the "
                         "sticky bit (mode %04o)", (unsigned)m);
            else if (st.st_uid == me)
                snprintf(why, sizeof why, "is writable by group or others (mode %04o; chmod "
                         "go-w it)", (unsigned)m);
            else
                snprintf(why, sizeof why, "is owned by uid %u, not by you",
                         (unsigned)st.st_uid);
            refuse_dir(path, level, why);
        }
    }
    close(fd);
}

/* Run `hpcrun task --unpack-only SQ` (Python) and wait for it. */
static void python_unpack(const struct plan *p)
{
    const char *argv[64 + 3];
    int n = 0;
    for (int i = 0; i < p->npy; i++)
        argv[n++] = p->py[i];
    argv[n++] = "--unpack-only";
    argv[n++] = p->sq;
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        die(HPCRUN_EXIT_FAILED, "can't fork: %s", strerror(errno));
    if (pid == 0) {
        /* It prints the unpacked copy's path, which this program works out itself:
         * neither that nor anything else of it belongs in the task's output. */
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null >= 0)
            dup2(null, 1);
        execv(argv[0], (char *const *)argv);
        dprintf(2, "hpcrun: error: can't run %s: %s\n", argv[0], strerror(errno));
        _exit(HPCRUN_EXIT_FAILED);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            die(HPCRUN_EXIT_FAILED, "can't wait for the image's unpacking: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        _exit(WIFEXITED(st) ? WEXITSTATUS(st) : HPCRUN_EXIT_FAILED);   /* it said why */
}

/* The image is not on this node (a node-local store, a path that only the launching
 * node has): run `hpcrun task ARGS -- COMMAND` (Python) instead, which resolves the
 * image here, pulling it into this node's store if need be. Once only. */
__attribute__((noreturn))
static void python_task(const struct plan *p, char **cmd, int ncmd, const char *path)
{
    if (p->nargs == 0 || p->npy == 0 || getenv("HPCRUN_TASK_FALLBACK"))
        die(HPCRUN_EXIT_FAILED, "can't read image %s: %s", path, strerror(errno));
    const char **argv = calloc((size_t)(p->npy + p->nargs + ncmd + 2), sizeof *argv);
    if (!argv)
        die(HPCRUN_EXIT_FAILED, "out of memory");
    int n = 0;
    for (int i = 0; i < p->npy; i++)
        argv[n++] = p->py[i];
    for (int i = 0; i < p->nargs; i++)
        argv[n++] = p->args[i];
    argv[n++] = "--";
    for (int i = 0; i < ncmd; i++)
        argv[n++] = cmd[i];
    argv[n] = NULL;
    setenv("HPCRUN_TASK_FALLBACK", "1", 1);
    execv(argv[0], (char *const *)argv);
    die(HPCRUN_EXIT_FAILED, "can't run %s: %s", argv[0], strerror(errno));
}

/* The root directory: the plan's, or the squashfs file's unpacked copy on this node
 * (prepare.py's name for it: sq-<dev>-<ino>-<size>-<mtime ns>, all hex). */
static const char *image_root(const struct plan *p, char *buf, char **cmd, int ncmd)
{
    struct stat st;
    if (!p->sq) {
        if (stat(p->image, &st))
            python_task(p, cmd, ncmd, p->image);
        return p->image;
    }
    if (stat(p->sq, &st))
        python_task(p, cmd, ncmd, p->sq);
    char dir[PATH_MAX];
    cache_dir(p, dir);
    unsigned long long mt = (unsigned long long)st.st_mtim.tv_sec * 1000000000ULL +
                            (unsigned long long)st.st_mtim.tv_nsec;
    if (snprintf(buf, PATH_MAX, "%s/sq-%llx-%llx-%llx-%llx", dir, (unsigned long long)st.st_dev,
                 (unsigned long long)st.st_ino, (unsigned long long)st.st_size, mt) >= PATH_MAX)
        die(HPCRUN_EXIT_FAILED, "node cache path too long: %s", dir);
    /* The entry's name is computable by anyone who can stat the image: use it only in a
     * private cache (no one else can have made it) and only if it is our directory. */
    struct stat d;
    private_dir(dir);
    if (lstat(buf, &d) == 0 && S_ISDIR(d.st_mode) && d.st_uid == geteuid())
        return buf;
    python_unpack(p);           /* once per node and image: the others wait on its lock */
    if (lstat(buf, &d) || !S_ISDIR(d.st_mode) || d.st_uid != geteuid())
        die(HPCRUN_EXIT_FAILED, "the unpacked image %s did not appear", buf);
    return buf;
}

static int starts_with_any(const char *s, const char *const *pre, int n)
{
    for (int i = 0; i < n; i++)
        if (!strncmp(s, pre[i], strlen(pre[i])))
            return 1;
    return 0;
}

static int name_is(const char *kv, const char *name)
{
    size_t n = strlen(name);
    return !strncmp(kv, name, n) && kv[n] == '=';
}

static int in_names(const char *kv, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (name_is(kv, names[i]))
            return 1;
    return 0;
}

/* The task's variable named as set entry `set` (NAME=VALUE), or NULL. */
static const char *task_var(const char *set)
{
    size_t n = (size_t)(strchr(set, '=') - set);
    for (char **e = environ; *e; e++)
        if (!strncmp(*e, set, n) && (*e)[n] == '=')
            return *e;
    return NULL;
}

/* Whether set entry i applies: not where the name is the task's own and it has one. */
static int set_applies(const struct plan *p, int i)
{
    const char *s = p->set[i];
    size_t n = (size_t)(strchr(s, '=') - s);
    for (int j = 0; j < p->nown; j++)
        if (strlen(p->own[j]) == n && !strncmp(p->own[j], s, n))
            return task_var(s) == NULL;
    return 1;
}

static int in_sets(const char *kv, const struct plan *p)
{
    for (int i = 0; i < p->nset; i++) {
        const char *eq = strchr(p->set[i], '=');
        size_t n = (size_t)(eq - p->set[i]);
        if (!strncmp(kv, p->set[i], n) && kv[n] == '=' && set_applies(p, i))
            return 1;
    }
    return 0;
}

/* The command's environment: this task's, minus what --cleanenv drops, the fixed
 * additions over it (image ENV < --env-file < -e, already in order), PATH by default. */
static char **compose_env(const struct plan *p)
{
    size_t n = 0;
    for (char **e = environ; *e; e++)
        n++;
    char **env = calloc(n + (size_t)p->nset + 2, sizeof *env);
    if (!env)
        die(HPCRUN_EXIT_FAILED, "out of memory");
    size_t k = 0;
    for (char **e = environ; *e; e++) {
        if (in_sets(*e, p))
            continue;                    /* replaced below */
        if (p->clean && !starts_with_any(*e, p->always, p->nalways) &&
            !in_names(*e, p->own, p->nown))
            continue;
        env[k++] = *e;
    }
    for (int i = 0; i < p->nset; i++)
        if (set_applies(p, i))
            env[k++] = (char *)p->set[i];
    int has_path = 0;
    for (size_t i = 0; i < k; i++)
        has_path |= name_is(env[i], "PATH");
    if (!has_path)
        env[k++] = "PATH=" DEFAULT_PATH;
    env[k] = NULL;
    return env;
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Slurm's TmpFS setting (%n, %h unexpanded) from slurm.conf ($SLURM_CONF), else
 * /tmp: for plans made without it (`hpcrun run`, which need not be in Slurm). */
static const char *slurm_tmpfs(char *out)
{
    const char *conf = getenv("SLURM_CONF");
    snprintf(out, PATH_MAX, "/tmp");
    FILE *f = fopen(conf && *conf ? conf : "/etc/slurm/slurm.conf", "re");
    if (!f)
        return out;
    char line[PATH_MAX + 64];
    while (fgets(line, sizeof line, f)) {
        char *s = line + strspn(line, " \t");
        if (strncasecmp(s, "tmpfs", 5) || s[5 + strspn(s + 5, " \t")] != '=')
            continue;
        s = strchr(s, '=') + 1;
        s += strspn(s, " \t");
        s[strcspn(s, "# \t\r\n")] = '\0';
        if (*s)
            snprintf(out, PATH_MAX, "%s", s);
    }
    fclose(f);
    return out;
}

/* Slurm's PMIx directories, bound at the same paths (prepare.slurm_binds). */
static void pmix_binds(struct plan *p, char bufs[2][PATH_MAX])
{
    const char *srv = getenv("PMIX_SERVER_TMPDIR");
    if (!getenv("PMIX_NAMESPACE") && !srv)
        return;
    int n = 0;
    if (srv && *srv) {
        snprintf(bufs[n], PATH_MAX, "%s", srv);
        size_t l = strlen(bufs[n]);
        while (l > 1 && bufs[n][l - 1] == '/')
            bufs[n][--l] = '\0';
        n++;
    }
    const char *job = getenv("SLURM_JOB_ID"), *step = getenv("SLURM_STEP_ID");
    if (job && step) {
        /* TmpFS with %n (node name) and %h (host name) expanded */
        char t[PATH_MAX];
        struct utsname u;
        uname(&u);
        size_t o = 0;
        char conf_tmpfs[PATH_MAX];
        const char *pat = p->tmpfs && *p->tmpfs ? p->tmpfs : slurm_tmpfs(conf_tmpfs);
        for (const char *s = pat; *s && o < sizeof t - 1; s++) {
            const char *rep = NULL;
            if (s[0] == '%' && s[1] == 'n') rep = node_name();
            else if (s[0] == '%' && s[1] == 'h') rep = u.nodename;
            if (rep) {
                o += (size_t)snprintf(t + o, sizeof t - o, "%s", rep);
                s++;
            } else {
                t[o++] = *s;
            }
        }
        t[o < sizeof t ? o : sizeof t - 1] = '\0';
        if (snprintf(bufs[n], PATH_MAX, "%s/spmix_appdir_%u_%s.%s", t, (unsigned)getuid(),
                     job, step) < PATH_MAX)
            n++;
    }
    for (int i = 0; i < n; i++)
        if (is_dir(bufs[i]) && p->nm < MAX_ITEMS) {
            p->m[p->nm].src = bufs[i];
            p->m[p->nm].dst = bufs[i];
            p->m[p->nm].flags = 0;
            p->nm++;
        }
}

/* This task's cwd as seen inside: through the bind holding it (the longest source),
 * else the same path (launch._visible_cwd). */
static const char *visible_cwd(const struct plan *p, char *buf)
{
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return "/";
    const struct hpcrun_mount *best = NULL;
    for (int i = 0; i < p->nm; i++) {
        const struct hpcrun_mount *m = &p->m[i];
        if (!m->src || (m->flags & HPCRUN_M_CONTENT))
            continue;
        size_t l = strlen(m->src);
        while (l > 1 && m->src[l - 1] == '/')
            l--;
        if (!strncmp(cwd, m->src, l) && (cwd[l] == '\0' || cwd[l] == '/' || l == 1) &&
            (!best || strlen(m->src) > strlen(best->src)))
            best = m;
    }
    if (!best || !strcmp(best->src, "/")) {
        snprintf(buf, PATH_MAX, "%s", cwd);
        return buf;
    }
    size_t l = strlen(best->src);
    while (l > 1 && best->src[l - 1] == '/')
        l--;
    size_t dl = strlen(best->dst);
    while (dl > 1 && best->dst[dl - 1] == '/')
        dl--;
    snprintf(buf, PATH_MAX, "%.*s%s", (int)dl, best->dst, cwd + l);
    if (!*buf)
        snprintf(buf, PATH_MAX, "/");
    return buf;
}

/* ---------------------------------------------------------------- the node's container */

/* Field 22 of /proc/PID/stat (start time), or "" if the process is gone or a zombie. */
static void starttime(pid_t pid, char *out, size_t len)
{
    char path[64], buf[1024];
    out[0] = '\0';
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (hpcrun_read_small(path, buf, sizeof buf) <= 0)
        return;
    const char *s = hpcrun_stat_field(buf, 22);
    if (!s)
        return;
    size_t l = strcspn(s, " ");
    if (l >= len)
        return;
    memcpy(out, s, l);
    out[l] = '\0';
}

static volatile sig_atomic_t keeper_leave;

static void on_leave(int sig)
{
    (void)sig;
    keeper_leave = 1;
}

/* The keeper: inside the container, it waits until the step's slurmstepd (pidfd, or
 * pid `watch`) is gone or a signal ends it, then removes the node plan if still its. */
__attribute__((noreturn))
static void keeper(struct hpcrun_spec *s, int rep, int watchfd,
                   pid_t watch, const char *dir, const char *base)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_leave;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
    }
    /* Hold nothing of the task's: srun waits for its output's end. */
    for (int fd = 3; fd < 1024; fd++)
        if (fd != rep && fd != watchfd && fd != dirfd)
            close(fd);
    char *kargv[] = {KEEPER_ARGV0, NULL};
    char *kenv[] = {NULL};
    s->argv = kargv;
    s->envp = kenv;
    char err[1024];
    int code = 0;
    /* hpcrun_enter builds the whole container, then fails at execve of a command that
     * does not exist: we are inside. */
    if (hpcrun_enter(s, err, sizeof err, &code) < 0 && code != HPCRUN_EXIT_NOT_FOUND) {
        dprintf(rep, "E %s", err);
        _exit(1);
    }
    dprintf(rep, "K %d", (int)getpid());
    close(rep);
    while (!keeper_leave) {
        if (watchfd >= 0) {
            struct pollfd pf = {watchfd, POLLIN, 0};
            if (poll(&pf, 1, -1) > 0)
                break;
        } else {
            if (kill(watch, 0) && errno == ESRCH)
                break;
            sleep(1);
        }
    }
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    if (dirfd >= 0) {
        char name[256], head[256];
        snprintf(name, sizeof name, "%s.plan", base);
        int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, head, sizeof head - 1);
            close(fd);
            char mine[64];
            snprintf(mine, sizeof mine, PLAN_HEAD " %d ", (int)getpid());
            if (n > 0 && (head[n] = '\0', !strncmp(head, mine, strlen(mine)))) {
                unlinkat(dirfd, name, 0);
                snprintf(name, sizeof name, "%s.lock", base);
                unlinkat(dirfd, name, 0);
            }
        }
    }
    _exit(0);
}

/* How long a rank waits for the node's container (the lock, the keeper's start):
 * HPCRUN_JOIN_TIMEOUT seconds, 60 by default. Every wait here has this bound. */
static int join_timeout(void)
{
    const char *t = getenv("HPCRUN_JOIN_TIMEOUT");
    int n;
    return t && !num(t, &n) && n > 0 ? n : 60;
}

static int verbose(void)
{
    const char *v = getenv("HPCRUN_VERBOSE");
    return v && *v && strcmp(v, "0");
}

/* Field 4 (ppid) and the command name of /proc/PID/stat; -1 if gone or a zombie. */
static pid_t parent_of(pid_t pid, char *comm, size_t len)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (hpcrun_read_small(path, buf, sizeof buf) <= 0)
        return -1;
    char *a = strchr(buf, '('), *b = strrchr(buf, ')');
    const char *pp = hpcrun_stat_field(buf, 4);
    if (!a || !b || b < a || !pp)
        return -1;
    snprintf(comm, len, "%.*s", (int)(b - a - 1), a + 1);
    return (pid_t)strtol(pp, NULL, 10);
}

/* The process whose end ends the node's container: the launcher's daemon on this node
 * (slurmstepd, Open MPI's orted or mpirun, PRRTE's prted, MPICH's hydra_pmi_proxy), the
 * nearest one above this process; else the parent. A wrapper script between the
 * launcher and hpcrun (`mpirun ./wrap.sh`) does not end the container with one rank. */
static pid_t launcher_pid(void)
{
    static const char *const daemons[] = {"slurmstepd", "orted", "prted", "prterun", "mpirun",
                                          "orterun", "mpiexec", "hydra_pmi_proxy", NULL};
    pid_t pid = getppid();
    char comm[64];
    for (int depth = 0; depth < 16 && pid > 1; depth++) {
        pid_t up = parent_of(pid, comm, sizeof comm);
        if (up < 0)
            break;
        for (int i = 0; daemons[i]; i++)
            if (!strncmp(comm, daemons[i], strlen(daemons[i])))
                return pid;
        pid = up;
    }
    return getppid();
}

/* Start the keeper (a grandchild, so that it is never the command's child) and return
 * its pid once it is inside the container (bounded: join_timeout()). */
static pid_t start_keeper(struct hpcrun_spec *s, const char *dir,
                          const char *base)
{
    pid_t watch = launcher_pid();    /* the step's slurmstepd, the launcher's daemon */
    int watchfd = (int)syscall(SYS_pidfd_open, watch, 0);
    int rep[2];
    if (pipe2(rep, O_CLOEXEC))
        die(HPCRUN_EXIT_FAILED, "can't create a pipe: %s", strerror(errno));
    pid_t mid = fork();
    if (mid < 0)
        die(HPCRUN_EXIT_FAILED, "can't fork: %s", strerror(errno));
    if (mid == 0) {
        close(rep[0]);
        setsid();                /* not in the task's process group either */
        pid_t k = fork();
        if (k < 0) {
            dprintf(rep[1], "E can't fork: %s", strerror(errno));
            _exit(1);
        }
        if (k > 0)
            _exit(0);
        keeper(s, rep[1], watchfd, watch, dir, base);
    }
    close(rep[1]);
    if (watchfd >= 0)
        close(watchfd);
    while (waitpid(mid, NULL, 0) < 0 && errno == EINTR)
        ;
    char msg[1100];
    size_t len = 0;
    ssize_t n;
    int secs = join_timeout();
    for (;;) {
        struct pollfd pf = {rep[0], POLLIN, 0};
        int r = poll(&pf, 1, secs * 1000);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            die(HPCRUN_EXIT_FAILED, "the node container's keeper did not start within %d s "
                "(HPCRUN_JOIN_TIMEOUT)", secs);
        if (len >= sizeof msg - 1 || (n = read(rep[0], msg + len, sizeof msg - 1 - len)) == 0)
            break;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        len += (size_t)n;
    }
    close(rep[0]);
    msg[len] = '\0';
    if (len > 2 && msg[0] == 'K')
        return (pid_t)atoi(msg + 2);
    if (len > 2 && msg[0] == 'E')
        die(HPCRUN_EXIT_FAILED, "%s", msg + 2);
    die(HPCRUN_EXIT_FAILED, "the node container's keeper failed to start");
}

/* The real uid of PID, or -1. */
static long uid_of(pid_t pid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    if (hpcrun_read_small(path, buf, sizeof buf) < 0)
        return -1;
    const char *u = strstr(buf, "\nUid:");
    long uid = -1;
    return u && sscanf(u + 5, "%ld", &uid) == 1 ? uid : -1;
}

/* The live keeper a node plan names ("# hpcrun node-container plan 1 PID START KEY"),
 * its key copied to key; 0 if there is no plan or its keeper is gone. */
static int live_keeper(const char *path, char *key, size_t keylen)
{
    char head[512], start[64], hkey[256], now[64];
    if (hpcrun_read_small(path, head, sizeof head) < 0)
        return 0;
    int pid = 0;
    if (strncmp(head, PLAN_HEAD " ", sizeof PLAN_HEAD) ||
        sscanf(head + sizeof PLAN_HEAD, "%d %63s %255s", &pid, start, hkey) != 3 || pid <= 0)
        return 0;
    starttime(pid, now, sizeof now);
    if (!*now || strcmp(now, start))
        return 0;
    if (key)
        snprintf(key, keylen, "%s", hkey);
    return pid;
}

/* Remove the plans (and locks) of other steps or launches whose keeper is gone: a
 * keeper killed with its step (SIGKILL, e.g. by proctrack/cgroup) had no time to. */
static void sweep_stale(const char *dir, const char *base)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    char path[PATH_MAX + 300];
    size_t bl = strlen(base);
    for (struct dirent *e; (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        if ((strncmp(e->d_name, "step-", 5) && strncmp(e->d_name, "join-", 5)) || l < 11 ||
            strcmp(e->d_name + l - 5, ".plan") ||
            (!strncmp(e->d_name, base, bl) && e->d_name[bl] == '.'))
            continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path ||
            live_keeper(path, NULL, 0))
            continue;
        unlink(path);
        memcpy(path + strlen(path) - 5, ".lock", 5);
        unlink(path);
    }
    closedir(d);
}

static void on_alarm(int sig)
{
    (void)sig;
}

/* flock(LOCK_EX), bounded: a rank stuck while making the node's container (it holds
 * the lock) makes the others fail with this error, never wait for ever. A rank that
 * died holding it released it (an flock ends with its holder: no state is left). */
static void lock_bounded(int fd, const char *path)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;    /* no SA_RESTART: flock returns EINTR */
    sigaction(SIGALRM, &sa, &old);
    int secs = join_timeout();
    unsigned prev = alarm((unsigned)secs);
    int r, e;
    while ((r = flock(fd, LOCK_EX)) && (e = errno) == EINTR) {
        if (!alarm(0)) {         /* ours went off */
            hint_text = "a rank of this node is stuck making its container; see its "
                        "error, or raise HPCRUN_JOIN_TIMEOUT";
            die(HPCRUN_EXIT_FAILED, "timed out after %d s waiting for the node's container "
                "(%s)", secs, path);
        }
        alarm((unsigned)secs);   /* another signal: go on */
    }
    alarm(0);
    sigaction(SIGALRM, &old, NULL);
    if (prev)
        alarm(prev);
    if (r)
        die(HPCRUN_EXIT_FAILED, "can't lock %s: %s", path, strerror(e));
}

/* Refuse a node directory or keeper that is not the caller's: hpcrun never joins
 * another user's container (a --join key they use, a shared HPCRUN_NODE_CACHE). */
static void own_or_die(const char *what, const char *name, long uid)
{
    if (uid < 0 || uid == (long)getuid())
        return;
    hint_text = "pick another key (--join=KEY), or a node cache of your own "
                "(HPCRUN_NODE_CACHE)";
    die(HPCRUN_EXIT_FAILED, "join key %s: %s belongs to uid %ld, another user; hpcrun does "
        "not join another user's container", name, what, uid);
}

/* Ranks in different user namespaces: Open MPI's cross-memory attach fails (and its
 * fallback hangs at 64 KiB), and UCX (MPICH's ch4:ucx, Open MPI's pml ucx) can't open
 * a peer's shared memory through /proc/PID/fd nor use CMA (without CMA, its rendezvous
 * goes over TCP, whose close at MPI_Finalize sometimes hangs with UCX 1.13: eager
 * messages only). Turn these off, unless the user set them. */
static const char *const separate_vars[] = {"OMPI_MCA_btl_vader_single_copy_mechanism=none",
                                            "UCX_POSIX_USE_PROC_LINK=n", "UCX_TLS=^cma",
                                            "UCX_RNDV_THRESH=inf", NULL};

static char **separate_env(char *const *env, const char *why)
{
    size_t n = 0;
    while (env[n])
        n++;
    char **out = calloc(n + 5, sizeof *out);
    if (!out)
        die(HPCRUN_EXIT_FAILED, "out of memory");
    memcpy(out, env, n * sizeof *out);
    size_t k = n;
    for (int v = 0; separate_vars[v]; v++) {
        const char *kv = separate_vars[v];
        size_t l = (size_t)(strchr(kv, '=') - kv);
        int set = 0;
        for (size_t i = 0; i < n && !set; i++)
            set = !strncmp(env[i], kv, l) && env[i][l] == '=';
        if (set)
            continue;
        out[k++] = (char *)kv;
        if (verbose())
            dprintf(2, "hpcrun: %s: this rank has a user namespace of its own, so %s\n",
                    why, kv);
    }
    return out;
}

/* Run the command in this node's container of the step or launch `base` (made here
 * if there is none), or, if the node's container was planned otherwise (srun
 * --multi-prog), in its own. `name`: what to call it in messages. */
static void node_container(const struct plan *p, struct hpcrun_spec *s, const char *key,
                           const char *base, const char *name)
{
    const char *job = getenv("SLURM_JOB_ID"), *step = getenv("SLURM_STEP_ID");
    char dir[PATH_MAX], path[PATH_MAX + 160];
    cache_dir(p, dir);
    struct stat ds;
    if (!lstat(dir, &ds))        /* another user's: say which key (private_dir refuses too) */
        own_or_die(dir, name, (long)ds.st_uid);
    private_dir(dir);
    for (int tries = 0;; tries++) {
        snprintf(path, sizeof path, "%s/%s.lock", dir, base);
        int lock = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (lock < 0)
            die(HPCRUN_EXIT_FAILED, "can't open %s: %s", path, strerror(errno));
        lock_bounded(lock, path);
        snprintf(path, sizeof path, "%s/%s.plan", dir, base);
        char hkey[256] = "", now[64];
        int pid = live_keeper(path, hkey, sizeof hkey);     /* 0: none yet, or a stale plan */
        if (pid > 0)
            own_or_die("its container", name, uid_of(pid));
        if (pid > 0 && strcmp(hkey, key)) {
            close(lock);         /* planned for other options: a container of our own */
            char err[1024];
            int code;
            s->envp = separate_env(s->envp, "the node's container was made with "
                                   "other options");
            hpcrun_enter(s, err, sizeof err, &code);
            die(code, "%s", err);
        }
        int made = pid <= 0;
        if (!made)
            starttime(pid, now, sizeof now);
        if (made) {
            pid = start_keeper(s, dir, base);    /* it changes its own copy of s only */
            starttime(pid, now, sizeof now);
            char tmp[PATH_MAX + 200];
            snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid());
            int w = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (w < 0 || dprintf(w, PLAN_HEAD " %d %s %s\n", pid, *now ? now : "0", key) < 0 ||
                close(w) || rename(tmp, path)) {
                unlink(tmp);
                die(HPCRUN_EXIT_FAILED, "can't write %s: %s", path, strerror(errno));
            }
            sweep_stale(dir, base);  /* once per node and step */
        }
        close(lock);
        if (getenv("HPCRUN_TASK_LOG") && !strcmp(getenv("HPCRUN_TASK_LOG"), "1")) {
            snprintf(path, sizeof path, "%s/tasks.log", dir);
            int l = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
            if (l >= 0) {
                const char *t = getenv("SLURM_PROCID");
                dprintf(l, "%s job=%s step=%s task=%s pid=%d base=%s\n",
                        made ? "keeper" : "join", job ? job : "-", step ? step : "-",
                        t ? t : "-", (int)getpid(), base);
                close(l);
            }
        }
        if (verbose() && p->join)
            dprintf(2, "hpcrun: %s the node's container for %s (keeper %d)\n",
                    made ? "made" : "joining", name, pid);
        char err[1024], after[64];
        int code;
        hpcrun_join(pid, s->argv, s->envp, s->workdir, err, sizeof err, &code);
        /* The keeper ended between the plan's check and the join (its launcher ended
         * as we started): nothing was entered (its namespaces could not be opened), so
         * elect again, once or twice, then say so. A command that fails is no reason. */
        starttime(pid, after, sizeof after);
        if (tries < 2 && code == HPCRUN_EXIT_FAILED && strcmp(after, now))
            continue;
        die(code, "%s", err);
    }
}

/* A job of one process: Open MPI's singleton (a program that called MPI_Init with no
 * launcher above it: ess "singleton", its own orted started below it), or a launch of
 * one process. What such a process starts inherits PMIX_NAMESPACE and PMIX_RANK (and
 * OMPI_*) without being a rank: Debian's makeflow calls MPI_Init, so every task it ran
 * looked like rank 0 of a PMIx launch, and each `--wrapper 'hpcrun run ...'` task made
 * a node container with a keeper (whose launcher, the nearest daemon above, was the
 * task's own shell) or joined one, under the node's lock, and got separate_vars. */
static int one_process_job(void)
{
    const char *v;
    return ((v = getenv("OMPI_MCA_ess")) && !strcmp(v, "singleton")) ||
           ((v = getenv("OMPI_MCA_orte_ess_num_procs")) && !strcmp(v, "1")) ||
           ((v = getenv("OMPI_COMM_WORLD_SIZE")) && !strcmp(v, "1"));
}

/* This rank's launch, for join=auto: whether it is one of several ranks on this node
 * started by an MPI launcher or srun, and the launch's identity (written to `id`; the
 * node is the directory). Open MPI's job id (or PMIx's namespace), Slurm's job.step;
 * MPICH's hydra exports none, so its proxy on this node (pid and start time) names it.
 * `who` names the launcher. 0: not under a launcher, the only rank of this node, or a
 * job of one process (one_process_job). */
static int launcher_key(char *id, size_t len, const char **who)
{
    const char *ls = NULL, *v;
    char t[64];
    id[0] = '\0';
    if (one_process_job())
        return 0;
    if ((ls = getenv("OMPI_COMM_WORLD_LOCAL_SIZE"))) {
        *who = "Open MPI";
        v = getenv("OMPI_MCA_ess_base_jobid");
        if (!v)
            v = getenv("PMIX_NAMESPACE");
        if (v)
            snprintf(id, len, "ompi-%s", v);
    } else if ((ls = getenv("MPI_LOCALNRANKS")) || getenv("PMI_FD") || getenv("HYDI_CONTROL_FD")) {
        *who = "MPICH hydra";
        if ((v = getenv("PMI_KVSNAME")))
            snprintf(id, len, "pmi-%s", v);
    } else if ((v = getenv("SLURM_JOB_ID")) && getenv("SLURM_STEP_ID")) {
        *who = "srun";
        snprintf(id, len, "slurm-%s.%s", v, getenv("SLURM_STEP_ID"));
        ls = getenv("SLURM_STEP_NUM_TASKS");
        const char *nn = getenv("SLURM_STEP_NUM_NODES");
        if (!ls || !nn || !strcmp(ls, nn))
            return 0;            /* not an srun step's task, or one task per node */
    } else if ((v = getenv("PMIX_NAMESPACE")) && getenv("PMIX_RANK")) {
        *who = "PMIx";
        snprintf(id, len, "pmix-%s", v);
    } else {
        return 0;
    }
    if (ls && !strcmp(ls, "1"))
        return 0;
    if (!id[0]) {
        pid_t d = launcher_pid();
        starttime(d, t, sizeof t);
        snprintf(id, len, "proxy-%d-%s", (int)d, t);
    }
    return 1;
}

/* The image's PMIx client (version `want`, "M.N") against the launcher's PMIx server:
 * the server names where it listens in one variable per wire version it speaks; a
 * client looks for its own version's and older ones, and one that finds none does not
 * fail cleanly (it waits or retries). So: an error here, before the command starts. */
static void pmix_check(const char *want)
{
    static const struct { const char *var; int v; } uris[] = {
        {"PMIX_SERVER_URI41", 41}, {"PMIX_SERVER_URI4", 40}, {"PMIX_SERVER_URI3", 30},
        {"PMIX_SERVER_URI21", 21}, {"PMIX_SERVER_URI2", 20}, {"PMIX_SERVER_URI", 10}};
    int maj = 0, min = 0;
    if (!getenv("PMIX_NAMESPACE") || sscanf(want, "%d.%d", &maj, &min) != 2)
        return;
    int client = maj * 10 + (min > 9 ? 9 : min);
    char offered[256] = "", looks[256] = "";
    size_t o = 0, l = 0;
    for (size_t i = 0; i < sizeof uris / sizeof uris[0]; i++) {
        int has = getenv(uris[i].var) != NULL;
        if (has && uris[i].v <= client)
            return;                  /* one it can use */
        if (has && o < sizeof offered)
            o += (size_t)snprintf(offered + o, sizeof offered - o, "%s%s", o ? ", " : "",
                                  uris[i].var);
        if (uris[i].v <= client && l < sizeof looks)
            l += (size_t)snprintf(looks + l, sizeof looks - l, "%s%s", l ? " or " : "",
                                  uris[i].var);
    }
    if (!*offered)
        return;                      /* no PMIx server here: nothing to check */
    const char *sv = getenv("PMIX_VERSION");
    hint_text = "rebuild the image with a PMIx of version 2.1 or later (PMIx talks across "
                "versions from there), or use --mpi=host";
    die(HPCRUN_EXIT_FAILED, "PMIx mismatch: the image's PMIx %s looks for %s, the launcher's "
        "PMIx server (%s) offers only %s", want, looks, sv ? sv : "newer", offered);
}

/* ---------------------------------------------------------------- main */

int hpcrun_plan_exec(int argc, char **argv)
{
    hint_text = "this program is started by 'hpcrun srun' (or by job files); run "
                "'hpcrun task --help' for the per-task command";
    if (argc < 3 || strcmp(argv[2], "--"))
        die(HPCRUN_EXIT_FAILED, "usage: %s STEP-PLAN -- [COMMAND [ARG...]]",
            argc > 0 ? argv[0] : "hpcrun-task");
    static struct plan p;
    char *text = strdup(argv[1]);
    if (!text || parse_plan(text, &p))
        die(HPCRUN_EXIT_FAILED, "the step plan given to %s is malformed or of another "
            "hpcrun version", argv[0]);
    hint_text = NULL;
    char root[PATH_MAX], pmix[2][PATH_MAX], wd[PATH_MAX];
    struct hpcrun_spec s;
    memset(&s, 0, sizeof s);
    if (p.pertask && !getenv("HPCRUN_TASK_FALLBACK"))
        python_task(&p, argv + 3, argc - 3, p.image);   /* devices: planned on each node */
    if (p.nlimnode && !getenv("HPCRUN_TASK_FALLBACK") && node_has_cgroup(&p))
        python_task(&p, argv + 3, argc - 3, p.image);   /* a cgroup of the task's own */
    s.image = image_root(&p, root, argv + 3, argc - 3);
    s.squashfuse = p.fuse;
    s.flags = p.flags;
    s.hostname = p.host;
    s.uid = (unsigned)p.uid;
    s.gid = (unsigned)p.gid;
    for (int i = 0; i < p.nm; i++)
        if (p.m[i].src && !strcmp(p.m[i].src, "SCRATCH")) {
            const char *t = getenv("SLURM_TMPDIR");
            if (!t || !*t)
                t = getenv("TMPDIR");
            if (!t || !*t) {
                hint_text = "set TMPDIR to a node-local directory, or drop --scratch";
                die(HPCRUN_EXIT_FAILED, "--scratch: neither SLURM_TMPDIR nor TMPDIR is set");
            }
            p.m[i].src = t;
        }
    if (p.pmix)
        pmix_binds(&p, pmix);
    s.mounts = p.m;
    s.n_mounts = p.nm;
    s.workdir = p.wdcwd ? visible_cwd(&p, wd) : p.wd;
    s.workdir_required = p.wdreq;
    s.stop_signal = p.stop;
    s.preserve_fds = p.pfds;
    if (p.limsay && verbose())
        dprintf(2, "hpcrun: %s\n", p.limsay);
    s.net_pid = p.net_pid;
    s.net_start = p.net_start;
    if (p.lim.tier) {
        if (p.ncgmk)
            make_cgroups(&p);
        p.lim.cgroups = p.cg;
        s.limits = &p.lim;
    }
    apply_binding(&p);
    char **words = argv + 3;
    int nc = argc - 3;
    if (nc == 0) {               /* no command: the image's CMD */
        words = (char **)p.cmd;
        nc = p.ncmd;
    }
    if (p.nentry + nc == 0) {
        hint_text = p.npy ? "give a command after the image: srun $TASK -- CMD [ARG...]"
                          : "give a command after the image: hpcrun run IMAGE -- CMD [ARG...]";
        die(HPCRUN_EXIT_FAILED, "no command given, and the image has no CMD or ENTRYPOINT");
    }
    char **cmd = calloc((size_t)(p.nentry + nc + 1), sizeof *cmd);
    if (!cmd)
        die(HPCRUN_EXIT_FAILED, "out of memory");
    for (int i = 0; i < p.nentry; i++)
        cmd[i] = (char *)p.entry[i];
    for (int i = 0; i < nc; i++)
        cmd[p.nentry + i] = words[i];
    s.argv = cmd;
    s.envp = compose_env(&p);
    int shareable = !(p.flags & (HPCRUN_F_PID | HPCRUN_F_MONITOR | HPCRUN_F_SQUASH));
    char key[32], base[128];
    snprintf(key, sizeof key, "c%016llx", (unsigned long long)fnv(argv[1]));
    if (p.share && shareable && getenv("SLURM_JOB_ID") && getenv("SLURM_STEP_ID")) {
        snprintf(base, sizeof base, "step-%s.%s", getenv("SLURM_JOB_ID"), getenv("SLURM_STEP_ID"));
        node_container(&p, &s, key, base, base);
    }
    if (p.pmixv)
        pmix_check(p.pmixv);
    if (p.join) {
        char id[256];
        const char *who = "--join";
        int off = !strcmp(p.join, "off");
        int several = strcmp(p.join, "auto") && !off
                          ? (snprintf(id, sizeof id, "%s", p.join), 1)
                          : launcher_key(id, sizeof id, &who);
        if (off)
            who = p.npy ? "a container per task" : "--no-join";
        /* A squashfs image mounted by squashfuse can be shared too: the FUSE server
         * serves the keeper's mount namespace until its last process is gone. */
        int joinable = !(p.flags & (HPCRUN_F_PID | HPCRUN_F_MONITOR));
        if (several && joinable && !off) {
            snprintf(base, sizeof base, "join-%016llx", (unsigned long long)fnv(id));
            node_container(&p, &s, key, base, id);
        }
        if (several)
            s.envp = separate_env(s.envp, joinable || off ? who
                                                          : "--pid=private or a STOPSIGNAL");
    }
    char err[1024];
    int code;
    hpcrun_enter(&s, err, sizeof err, &code);
    die(code, "%s", err);
}

/* ---------------------------------------------------------------- entry point */

#ifndef HPCRUN_NO_TASK_ENTRY   /* (the launcher, cext/launcher.c, links this file too) */

/* The kernel starts a program at its entry point with argc, argv, envp on the stack;
 * the dynamic loader has already run libc's initialisation (environ is set). Align the
 * stack as the ABI wants for a call and go to C. */
#if defined(__x86_64__)
const char hpcrun_task_interp[] __attribute__((section(".interp"))) = "/lib64/ld-linux-x86-64.so.2";
__asm__(".text\n"
        ".globl hpcrun_task_entry\n"
        ".type hpcrun_task_entry,@function\n"
        "hpcrun_task_entry:\n"
        "  xor %ebp, %ebp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call hpcrun_task_start\n"
        "  hlt\n");
#elif defined(__aarch64__)
const char hpcrun_task_interp[] __attribute__((section(".interp"))) = "/lib/ld-linux-aarch64.so.1";
__asm__(".text\n"
        ".globl hpcrun_task_entry\n"
        ".type hpcrun_task_entry,%function\n"
        "hpcrun_task_entry:\n"
        "  mov x29, #0\n"
        "  mov x30, #0\n"
        "  mov x0, sp\n"
        "  bl hpcrun_task_start\n"
        "  brk #0\n");
#endif

__attribute__((noreturn, used, visibility("default")))
void hpcrun_task_start(long *sp)
{
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    hpcrun_trim_monitor = 0;     /* a monitor here has no interpreter's memory to drop */
    exit(hpcrun_plan_exec(argc, argv));
}
#endif
