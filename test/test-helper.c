/* SPDX-License-Identifier: MIT */
/*
 * test-helper.c: lockd-helper with real processes, real fds and a fake
 * systemd (fake-systemd.h).
 *
 * Each case starts its own helper on a socket in its scratch directory and
 * ends it by pid.  Guests (owners) are forked processes that wait on a pipe;
 * managers are forked processes or the test itself.  Whether a lease is held
 * is always asked from outside, the way another host would: lockd_probe(),
 * or an acquire that must fail.  Children close every fd they do not need
 * first (spawn()), because a stray copy of a lease fd in a child would keep
 * a lease held that the test expects to be free, or the other way round hide
 * a lease the helper lost.
 *
 * Every case body runs in a child of a small wrapper that is a subreaper: if
 * the body fails or times out, the wrapper kills whatever it left behind
 * (each by its pid) and prints the tail of the helpers' logs.
 *
 * The cases:
 *   harness_selfcheck   the fake systemd enforces systemd 252's fd store rules
 *                       (run against a fake helper: this binary)
 *   notify_basics       READY=1, STATUS=, WATCHDOG=1; socket files left as
 *                       they should be
 *   crash_manager       manager SIGKILLed after hand-off: held while the owner
 *                       lives, released at once when it exits
 *   crash_helper_fdstore  helper SIGKILLed under the fd store: held
 *                       throughout, adopted with the same ids, released when
 *                       the owner exits; an owner that died meanwhile is
 *                       released after adoption
 *   crash_helper_store_bound  past --store-leases: what is stored survives a
 *                       crash, the rest is free, as documented
 *   crash_helper_no_store  without the store a helper crash frees its leases
 *   stash_rotation      1,800 single hand-overs and 1,400 releases: the
 *                       stash rotates, a crash adopts exactly the live 400
 *   stash_inflight_bound  without CAP_SYS_RESOURCE under a 1,000-fd limit,
 *                       800 leases stay stashed across a re-exec and a crash
 *   hung_filesystem     a FUSE lockspace stalls: hand-overs, releases and
 *                       STATUS go on, the stuck mount is named
 *   keeper_crash        without systemd, --keeper: a helper SIGKILL and a
 *                       SIGTERM keep every lease, stop-helper stops both
 *   reexec_under_load   19,000 leases, 500 owners, 3 SIGUSR1 re-execs of an
 *                       upgraded binary while a poller tries every lease
 *   refusals            unlocked fd, shared lock announced exclusive, FIFO,
 *                       one bad fd among good ones, bad pids and pidfds
 *   stale_notice        a late one-way release notice never touches a newer
 *                       lease of the same disk
 *   handoff_in_its_space  an fd must be its key's file in the lockspace the
 *                       connection showed; listings keep to that lockspace
 *   credentials         uid 65534 against root's owners and a 0600 socket
 *   malformed           raw protocol garbage, fd count lies, disconnects,
 *                       1,100 connections: the helper stays up, nothing held
 *                       changes, no fd leaks
 *   fd_exhaustion       out of fds, the helper still answers, -EMFILE
 *   idle_exit_reactivation  --timeout exits when idle, a connection starts
 *                       it again, a held lease keeps it running
 *   systemd_units       systemd-analyze verify on the units, and the
 *                       settings the helper relies on
 *   verbose_logs_leases  --verbose: a line per hand-over, release and loss
 */
#include "test.h"
#include "util.h"
#include "fake-systemd.h"
#include "stallfs.h"

#include <dirent.h>
#include <glob.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "lockd.h"

#define UUID1 "6f2b1c1e-6b8d-4d3a-9a55-0d1b8e7c2a01"
#define NOBODY 65534

/* ------------------------------------------------------------------------
 * The case wrapper
 */

/* Print the last lines of every *.log in the scratch directory. */
static void
dump_logs(void)
{
    static char buf[1 << 20];
    glob_t g;
    int r = glob(test_path("*.log"), 0, NULL, &g);

    if (r != 0 && r != GLOB_NOMATCH)
        return;
    (void)glob(test_path("*/*.log"), GLOB_APPEND, NULL, &g);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        int fd = open(g.gl_pathv[i], O_RDONLY | O_CLOEXEC), lines = 0;
        ssize_t n = fd < 0 ? -1 : pread(fd, buf, sizeof(buf) - 1, 0);
        char *p;

        if (fd >= 0)
            close(fd);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        for (p = buf + n; p > buf && lines <= 40; p--)
            lines += p[-1] == '\n';
        fprintf(stderr, "--- %s (tail) ---\n%s", g.gl_pathv[i], p);
    }
    globfree(&g);
}

/* This process's children, from /proc (CONFIG_PROC_CHILDREN). */
static size_t
self_children(pid_t *pids, size_t cap)
{
    char path[64], buf[16384], *p, *end;
    size_t n = 0;
    ssize_t len;
    int fd;

    snprintf(path, sizeof(path), "/proc/self/task/%d/children", (int)getpid());
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    len = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[len > 0 ? len : 0] = '\0';
    for (p = buf; n < cap; p = end) {
        long v = strtol(p, &end, 10);

        if (end == p)
            break;
        pids[n++] = (pid_t)v;
    }
    return n;
}

/* A child that is gone from /proc counts as a zombie: nothing to kill. */
static int
is_zombie(pid_t pid)
{
    char state = proc_state(pid);

    return state == 0 || state == 'Z';
}

/* Kill (by pid) and reap whatever the body left; returns how many of them
 * were still running. */
static int
reap_leftovers(void)
{
    pid_t pids[1024];
    size_t n;
    int live = 0;

    while ((n = self_children(pids, 1024)) > 0)
        for (size_t i = 0; i < n; i++) {
            if (!is_zombie(pids[i])) {
                fprintf(stderr, "left running: pid %d\n", (int)pids[i]);
                live++;
                kill(pids[i], SIGKILL);
            }
            while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR)
                ;
        }
    return live;
}

static volatile pid_t case_body;
static volatile sig_atomic_t case_timed_out;

static void
case_alarm(int sig)
{
    (void)sig;
    case_timed_out = 1;
    if (case_body > 0)
        kill(case_body, SIGKILL);
}

/*
 * Run body in a child, as a subreaper, within the case's alarm: afterwards
 * nothing the body started is left running, whatever happened to it.
 */
static void
case_wrap(void (*body)(void))
{
    unsigned left = alarm(0);
    pid_t pid;
    int st, r;

    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
        TEST_FAIL("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
    pid = fork();
    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0) {
        body();
        fflush(NULL);
        _exit(0);
    }
    case_body = pid;
    signal(SIGALRM, case_alarm);
    alarm(left > 2 ? left - 2 : 1);
    st = test_wait(pid);
    alarm(0);
    if (case_timed_out) {
        fprintf(stderr, "case timed out: killed it\n");
        st = 128 + SIGALRM;
    }
    r = reap_leftovers();
    if (st == 0 && r > 0) {
        fprintf(stderr, "the case left %d processes running\n", r);
        st = 1;
    }
    if (st != 0)
        dump_logs();
    fflush(NULL);
    _exit(st);
}

#define HELPER_CASE(name)                                                           \
    static void name##_body(void);                                                  \
    static void name(void)                                                          \
    {                                                                               \
        case_wrap(name##_body);                                                     \
    }                                                                               \
    static void name##_body(void)

/* ------------------------------------------------------------------------
 * Processes
 */

/*
 * Fork a child that runs fn(arg) with every fd closed except stdio and
 * keep[0..nkeep-1].  The parent (and the fake systemd in it) holds lease
 * fds; a copy in a child would change what is held.
 */
static pid_t
spawn(int (*fn)(void *), void *arg, const int *keep, size_t nkeep)
{
    int sorted[8];
    pid_t pid;

    assert(nkeep <= 8);
    if (nkeep > 0)
        memcpy(sorted, keep, nkeep * sizeof(int));
    qsort(sorted, nkeep, sizeof(int), fsd_cmp_int);
    pid = fork();
    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0) {
        fsd_close_others(sorted, nkeep);
        _exit(fn(arg));
    }
    return pid;
}

/* A guest: the owner the leases protect.  It waits until its pipe closes. */
struct guest {
    pid_t pid;
    int wfd;
};

static int
guest_main(void *arg)
{
    int fd = *(int *)arg;
    char c;

    while (read(fd, &c, 1) < 0 && errno == EINTR)
        ;
    return 0;
}

static void
guest_start(struct guest *g)
{
    int p[2];

    if (pipe2(p, O_CLOEXEC) < 0)
        TEST_FAIL("pipe: %s", strerror(errno));
    g->pid = spawn(guest_main, &p[0], &p[0], 1);
    close(p[0]);
    g->wfd = p[1];
}

/* The guest exits normally; returns when it has been reaped. */
static void
guest_end(struct guest *g)
{
    close(g->wfd);
    ASSERT_INT_EQ(test_wait(g->pid), 0);
    g->pid = 0;
}

static void
guest_kill(struct guest *g)
{
    kill(g->pid, SIGKILL);
    ASSERT_INT_EQ(test_wait(g->pid), 128 + SIGKILL);
    close(g->wfd);
    g->pid = 0;
}

/* A pidfd of pid, or -1 where pidfd_open() is unknown: valgrind 3.19 does
 * not know it, so under valgrind the helper opens the pidfds itself. */
static int
pidfd_of(pid_t pid)
{
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);

    if (fd < 0 && errno != ENOSYS)
        TEST_FAIL("pidfd_open(%d): %s", (int)pid, strerror(errno));
    return fd;
}

/* The fds pid has open, and how many of them are open files whose path
 * contains what (NULL: count all). */
static int
proc_fds(pid_t pid, const char *what)
{
    char dir[64], path[384], target[PATH_MAX];
    struct dirent *e;
    int n = 0;
    DIR *d;

    snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
    d = opendir(dir);
    if (!d)
        TEST_FAIL("opendir %s: %s", dir, strerror(errno));
    while ((e = readdir(d))) {
        ssize_t len;

        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        len = readlink(path, target, sizeof(target) - 1);
        if (len < 0)
            continue;
        target[len] = '\0';
        n += !what || strstr(target, what) != NULL;
    }
    closedir(d);
    return n;
}

/* Shared memory for a child's counters. */
static void *
shared_alloc(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED)
        TEST_FAIL("mmap: %s", strerror(errno));
    return p;
}

#define LOAD(x)     __atomic_load_n(&(x), __ATOMIC_SEQ_CST)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_SEQ_CST)
#define BUMP(x)     __atomic_add_fetch(&(x), 1, __ATOMIC_SEQ_CST)

/* ------------------------------------------------------------------------
 * Leases and the helper, through the library
 */

#define DISKS_MAX 64

/* A set of disks, with what the helper said about them. */
struct disks {
    size_t n;
    char key[DISKS_MAX][LOCKD_KEY_SIZE];
    char path[DISKS_MAX][64];
    const char *keys[DISKS_MAX];
    const char *paths[DISKS_MAX];
    int modes[DISKS_MAX];
    uint64_t id[DISKS_MAX];
};

/*
 * Children are forked from a case with its handles allocated; valgrind
 * checks each child for leaks when it exits, and a handle the child cannot
 * reach through a global looks lost.  So handles are also kept here (never
 * removed: a stale pointer costs nothing).
 */
static void *volatile roots[64];
static unsigned nroots;

static void *
root(void *p)
{
    roots[nroots++ % 64] = p;
    return p;
}

/* The lockspace the case's helpers serve, kept reachable (see roots). */
static lockd_space *
space_open_rooted(void)
{
    lockd_space *sp = NULL;

    ASSERT_OK(lockd_space_open(test_path("space"), LOCKD_OPEN_CREATE, &sp));
    return root(sp);
}

/* n exclusive disks named /images/<tag>-<i>.qcow2. */
static void
disks_make(struct disks *d, lockd_space *sp, const char *tag, size_t n)
{
    assert(n <= DISKS_MAX);
    memset(d, 0, sizeof(*d));
    d->n = n;
    for (size_t i = 0; i < n; i++) {
        snprintf(d->path[i], sizeof(d->path[i]), "/images/%s-%zu.qcow2", tag, i);
        ASSERT_OK(lockd_space_key(sp, d->path[i], d->key[i]));
        d->keys[i] = d->key[i];
        d->paths[i] = d->path[i];
        d->modes[i] = LOCKD_EXCLUSIVE;
    }
}

/*
 * Acquire every disk of d and hand them to the helper for pid, with their
 * paths as names in d's order; d->id[] gets the lease ids in d's order (the
 * library answers in key order: lockd_lease_index() maps them).  Returns handoff's result; *ret_lease gets our
 * copies, or they are forgotten when ret_lease is NULL.
 */
static int
hand_over(lockd_conn *c, lockd_space *sp, int32_t pid, struct disks *d, lockd_lease **ret_lease)
{
    const char *names[DISKS_MAX];
    uint64_t ids[DISKS_MAX];
    lockd_lease *l;
    int r;

    ASSERT_OK(lockd_acquire(sp, d->n, d->keys, d->modes, LOCKD_TRY, &l));
    ASSERT_INT_EQ(lockd_lease_count(l), d->n);
    for (size_t i = 0; i < d->n; i++)
        names[i] = d->paths[i];
    r = lockd_conn_handoff(c, pid, l, names, ids);
    for (size_t i = 0; r == 0 && i < d->n; i++)
        d->id[i] = ids[lockd_lease_index(l, i)];
    if (ret_lease)
        *ret_lease = l;
    else
        lockd_lease_forget(l);
    return r;
}

static int
probe(const lockd_space *sp, const char *key)
{
    int r = lockd_probe(sp, key, NULL);

    ASSERT_OK(r);
    return r;
}

/* How many of d's disks probe as mode. */
static size_t
disks_probe_count(const lockd_space *sp, const struct disks *d, int mode)
{
    size_t n = 0;

    for (size_t i = 0; i < d->n; i++)
        n += probe(sp, d->key[i]) == mode;
    return n;
}

static lockd_conn *
conn_open(const char *sock)
{
    lockd_conn *c = NULL;

    ASSERT_OK(lockd_conn_open(sock, &c));
    return root(c);
}

/*
 * The start of many cases: a helper under the fake systemd (activated,
 * notifying, with an fd store of store_max), a guest, and a connection
 * that registered it as "guest".
 */
static struct fsd *
helper_with_guest(unsigned store_max, struct guest *g, lockd_conn **ret_c)
{
    struct fsd *s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, store_max);

    fsd_start_ready(s);
    guest_start(g);
    *ret_c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(*ret_c, g->pid, -1, NULL, "guest"));
    return s;
}

struct counts {
    uint64_t owners, leases, stored;
};

static struct counts
status_on(lockd_conn *c)
{
    struct counts k;

    ASSERT_OK(lockd_conn_status(c, &k.owners, &k.leases, &k.stored));
    return k;
}

/* Status over a fresh connection. */
static struct counts
status_at(const char *sock)
{
    lockd_conn *c = conn_open(sock);
    struct counts k = status_on(c);

    lockd_conn_close(c);
    return k;
}

struct row {
    uint64_t id;
    int mode;
    int32_t pid;
    uint32_t uid;
    char key[LOCKD_KEY_SIZE], disk[64], uuid[37], name[64];
};

struct rows {
    size_t n, cap;
    struct row *r;
};

static int
rows_add(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
         int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    struct rows *rs = userdata;
    struct row *r;

    if (rs->n == rs->cap) {
        rs->cap = rs->cap ? 2 * rs->cap : 64;
        rs->r = realloc(rs->r, rs->cap * sizeof(*rs->r));
        if (!rs->r)
            TEST_FAIL("out of memory");
    }
    r = &rs->r[rs->n++];
    r->id = id;
    r->mode = mode;
    r->pid = pid;
    r->uid = uid;
    snprintf(r->key, sizeof(r->key), "%s", key);
    snprintf(r->disk, sizeof(r->disk), "%s", disk);
    snprintf(r->uuid, sizeof(r->uuid), "%s", uuid);
    snprintf(r->name, sizeof(r->name), "%s", name);
    return 0;
}

/* The leases the helper lists for pid (0: all the caller may see). */
static struct rows
rows_list(lockd_conn *c, int32_t pid)
{
    struct rows rs = {0};

    ASSERT_OK(lockd_conn_list(c, pid, NULL, rows_add, &rs));
    return rs;
}

static const struct row *
rows_find_id(const struct rows *rs, uint64_t id)
{
    for (size_t i = 0; i < rs->n; i++)
        if (rs->r[i].id == id)
            return &rs->r[i];
    return NULL;
}

static int
owners_count_cb(void *userdata, int32_t pid, uint32_t uid, const char *uuid, const char *name,
                uint32_t leases)
{
    (void)pid, (void)uid, (void)uuid, (void)name, (void)leases;
    (*(size_t *)userdata)++;
    return 0;
}

static size_t
owners_count(lockd_conn *c)
{
    size_t n = 0;

    ASSERT_OK(lockd_conn_owners(c, owners_count_cb, &n));
    return n;
}

/* Each disk of d is listed with its id, path and mode, owned by pid. */
static void
assert_listed(lockd_conn *c, int32_t pid, const struct disks *d)
{
    struct rows rs = rows_list(c, pid);

    ASSERT_INT_EQ(rs.n, d->n);
    for (size_t i = 0; i < d->n; i++) {
        const struct row *r = rows_find_id(&rs, d->id[i]);

        if (!r)
            TEST_FAIL("lease %zu (id %llu, %s) not listed", i,
                      (unsigned long long)d->id[i], d->path[i]);
        ASSERT_STR_EQ(r->key, d->key[i]);
        ASSERT_STR_EQ(r->disk, d->path[i]);
        ASSERT_INT_EQ(r->mode, d->modes[i]);
        ASSERT_INT_EQ(r->pid, pid);
    }
    free(rs.r);
}

/*
 * A watcher: a process that asks about keys continuously, from outside,
 * and counts every time one was free (a probe said so, or a try-acquire
 * got it, which it then gives back).
 */
struct watch {
    int stop;
    long rounds, free_seen, errors;
    size_t n;
    char key[DISKS_MAX][LOCKD_KEY_SIZE];
};

static int
watch_main(void *arg)
{
    struct watch *w = arg;
    lockd_space *sp = NULL;

    if (lockd_space_open(test_path("space"), 0, &sp) < 0)
        return 2;
    while (!LOAD(w->stop)) {
        for (size_t i = 0; i < w->n; i++) {
            const char *k = w->key[i];
            lockd_lease *l;
            int r = lockd_probe(sp, k, NULL);

            if (r == LOCKD_FREE)
                BUMP(w->free_seen);
            else if (r < 0)
                BUMP(w->errors);
            r = lockd_acquire(sp, 1, &k, NULL, LOCKD_TRY, &l);
            if (r == 0) {
                BUMP(w->free_seen);
                lockd_lease_release(l);
            } else if (r != -EAGAIN)
                BUMP(w->errors);
        }
        BUMP(w->rounds);
    }
    lockd_space_close(sp);
    return 0;
}

static struct watch *
watch_start(const struct disks *d, size_t first, size_t n, pid_t *ret_pid)
{
    struct watch *w = shared_alloc(sizeof(*w));

    w->n = n;
    for (size_t i = 0; i < n; i++)
        memcpy(w->key[i], d->key[first + i], LOCKD_KEY_SIZE);
    *ret_pid = spawn(watch_main, w, NULL, 0);
    return w;
}

/* Wait until the watcher has gone round k more times. */
static void
watch_rounds(struct watch *w, long k)
{
    long start = LOAD(w->rounds);

    if (!WAIT_UNTIL(LOAD(w->rounds) >= start + k, 10000))
        TEST_FAIL("the watcher is stuck at round %ld", LOAD(w->rounds));
}

/* Stop the watcher; it must never have seen a lease free. */
static void
watch_stop(struct watch *w, pid_t pid)
{
    STORE(w->stop, 1);
    ASSERT_INT_EQ(test_wait(pid), 0);
    if (w->free_seen || w->errors)
        TEST_FAIL("the watcher saw a lease free %ld times (%ld errors) in %ld rounds",
                  w->free_seen, w->errors, w->rounds);
    munmap(w, sizeof(*w));
}

/* ------------------------------------------------------------------------
 * The fake helper: this binary, started by the fake systemd with
 * "--fake-helper SCRIPT [ARG]", to check that the harness enforces systemd's
 * rules (the real helper must never trip them, so only a fake can show that
 * the checks work).
 */

static int
fake_send(const char *msg, const int *fds, size_t n)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    union {
        char buf[CMSG_SPACE(sizeof(int) * FSD_FDS_MAX)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {(void *)msg, strlen(msg)};
    struct msghdr mh = {.msg_name = &sa, .msg_namelen = sizeof(sa), .msg_iov = &iov,
                        .msg_iovlen = 1};
    int fd, r;

    if (!path || strlen(path) >= sizeof(sa.sun_path))
        return -EINVAL;
    strcpy(sa.sun_path, path);
    if (n > 0) {
        struct cmsghdr *c;

        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * n);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
    }
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    r = sendmsg(fd, &mh, MSG_NOSIGNAL) < 0 ? -errno : 0;
    close(fd);
    return r;
}

/* Write what systemd passed to fake.report: the variables, then each fd's
 * /proc/self/fd link. */
static void
fake_report(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    const char *names = getenv("LISTEN_FDNAMES");
    int n = fds ? atoi(fds) : 0;
    FILE *f = fopen("fake.report.tmp", "w");

    if (!f)
        _exit(3);
    fprintf(f, "pid=%s\nfds=%d\nnames=%s\n",
            pid && atoi(pid) == getpid() ? "ok" : "bad", n, names ? names : "");
    for (int i = 0; i < n; i++) {
        char link[64], target[256];
        ssize_t len;

        snprintf(link, sizeof(link), "/proc/self/fd/%d", 3 + i);
        len = readlink(link, target, sizeof(target) - 1);
        target[len > 0 ? len : 0] = '\0';
        fprintf(f, "fd %d %s\n", 3 + i, target);
    }
    if (fclose(f) != 0 || rename("fake.report.tmp", "fake.report") < 0)
        _exit(3);
}

static int
fake_memfd(const char *name)
{
    int fd = memfd_create(name, MFD_CLOEXEC);

    if (fd < 0)
        _exit(3);
    return fd;
}

/* First start: named fds, two under one name, an invalid name, a pidfd
 * that is polled, a duplicate, a message from another pid, one too long.
 * Second start: four fds of which the store has room for three. */
static void
fake_store(const char *guest)
{
    const char *fds = getenv("LISTEN_FDS");

    if (fds && atoi(fds) == 1) {
        int a = fake_memfd("a"), b[2] = {fake_memfd("b1"), fake_memfd("b2")};
        int x = fake_memfd("x"), c = fake_memfd("c"), a2 = dup(a);
        int p = (int)syscall(SYS_pidfd_open, atoi(guest), 0);
        char *longmsg = malloc(5001);
        pid_t child;

        if (p < 0 || a2 < 0 || !longmsg)
            _exit(3);
        fake_send("FDSTORE=1\nFDNAME=a\nFDPOLL=0", &a, 1);
        fake_send("FDSTORE=1\nFDNAME=b\nFDPOLL=0", b, 2);
        fake_send("FDSTORE=1\nFDNAME=x:y\nFDPOLL=0", &x, 1);
        fake_send("FDSTORE=1\nFDNAME=p", &p, 1);
        fake_send("FDSTORE=1\nFDNAME=c\nFDPOLL=0", &c, 1);
        fake_send("FDSTORE=1\nFDNAME=a2\nFDPOLL=0", &a2, 1);
        child = fork();
        if (child == 0)
            _exit(fake_send("STATUS=from a child", NULL, 0) < 0);
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
            ;
        memcpy(longmsg, "STATUS=", 7);
        memset(longmsg + 7, 'x', 5000 - 7);
        longmsg[5000] = '\0';
        fake_send(longmsg, NULL, 0);
    } else {
        int d[4] = {fake_memfd("d"), fake_memfd("d"), fake_memfd("d"), fake_memfd("d")};

        fake_send("FDSTORE=1\nFDNAME=d\nFDPOLL=0", d, 4);
    }
}

/* 600 fds with 250-character names: LISTEN_FDNAMES would be 150 KB. */
static void
fake_big(void)
{
    char xs[247], msg[300];

    memset(xs, 'x', 246);
    xs[246] = '\0';
    for (int i = 0; i < 600; i++) {
        int fd = fake_memfd("big");

        snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=n%03d%s\nFDPOLL=0", i, xs);
        fake_send(msg, &fd, 1);
        close(fd);
    }
}

static void __attribute__((noreturn))
fake_helper(const char *script, const char *arg)
{
    fake_report();
    if (strcmp(script, "store") == 0)
        fake_store(arg);
    else if (strcmp(script, "big") == 0)
        fake_big();
    fake_send("READY=1\nSTATUS=fake", NULL, 0);
    for (;;)
        pause();
}

static void
self_exe(char *buf, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", buf, cap - 1);

    if (n < 0)
        TEST_FAIL("readlink /proc/self/exe: %s", strerror(errno));
    buf[n] = '\0';
}

static char *
read_file(const char *path)
{
    static char buf[65536];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);

    if (n < 0)
        TEST_FAIL("read %s: %s", path, strerror(errno));
    close(fd);
    buf[n] = '\0';
    return buf;
}

HELPER_CASE(harness_selfcheck)
{
    char text[FSD_VIOLATION_SZ], guest_pid[16], *rep;
    struct guest g;
    struct fsd *s;

    guest_start(&g);
    snprintf(guest_pid, sizeof(guest_pid), "%d", (int)g.pid);
    s = fsd_new("fake", FSD_ACTIVATE | FSD_NOTIFY, 8);
    self_exe(s->bin, sizeof(s->bin));
    s->bin_is_copy = 0;
    fsd_arg(s, "--fake-helper");
    fsd_arg(s, "store");
    fsd_arg(s, guest_pid);
    fsd_start_ready(s);

    /* Newest first; the two fds named b in either order; x:y is invalid
     * and stored as "stored"; the dup of a is the same description. */
    fsd_lock(s);
    ASSERT_STR_EQ(s->status, "fake");
    ASSERT_INT_EQ(s->nstore, 6);
    ASSERT_STR_EQ(fsd_name_at_locked(s, 0), "c");
    ASSERT_STR_EQ(fsd_name_at_locked(s, 1), "p");
    ASSERT_STR_EQ(fsd_name_at_locked(s, 2), "stored");
    ASSERT_STR_EQ(fsd_name_at_locked(s, 3), "b");
    ASSERT_STR_EQ(fsd_name_at_locked(s, 4), "b");
    ASSERT_STR_EQ(fsd_name_at_locked(s, 5), "a");
    ASSERT_INT_EQ(s->dups, 1);
    ASSERT_INT_EQ(s->drops, 0);
    fsd_unlock(s);
    if (fsd_violations_take(s, text, sizeof(text)) != 3) TEST_FAIL("%s", text);
    ASSERT_CONTAINS(text, "invalid FDNAME=x:y");
    ASSERT_CONTAINS(text, "not the main pid");
    ASSERT_CONTAINS(text, "5000 bytes");

    /* p was pushed without FDPOLL=0: reaping its process drops it. */
    guest_kill(&g);
    ASSERT_TRUE(FSD_WAIT(s, s->drops == 1 && !fsd_has_locked(s, "p"), 5000));

    /* A crash keeps the store, and the restart gets it back in list order. */
    ASSERT_INT_EQ(fsd_kill(s, SIGKILL), 128 + SIGKILL);
    fsd_start_ready(s);
    rep = read_file(test_path("fake.report"));
    ASSERT_CONTAINS(rep, "pid=ok\nfds=6\nnames=" FSD_SOCKET_NAME ":c:stored:b:b:a\n");
    ASSERT_CONTAINS(rep, "fd 3 socket:[");
    ASSERT_CONTAINS(rep, "fd 4 /memfd:c ");
    ASSERT_CONTAINS(rep, "fd 5 /memfd:x ");
    ASSERT_CONTAINS(rep, "fd 6 /memfd:b");
    ASSERT_CONTAINS(rep, "fd 7 /memfd:b");
    ASSERT_CONTAINS(rep, "fd 8 /memfd:a ");
    /* Room for 3 of the 4 d's. */
    fsd_lock(s);
    ASSERT_INT_EQ(s->nstore, 8);
    ASSERT_INT_EQ(fsd_count_locked(s, "d"), 3);
    fsd_unlock(s);
    ASSERT_INT_EQ(fsd_violations_take(s, text, sizeof(text)), 1);
    ASSERT_CONTAINS(text, "FileDescriptorStoreMax=8");

    /* Stop empties the store. */
    ASSERT_INT_EQ(fsd_kill(s, SIGTERM), 128 + SIGTERM);
    fsd_lock(s);
    ASSERT_INT_EQ(s->nstore, 0);
    fsd_unlock(s);

    /* Names worth 150 KB: the restart's execve() fails. */
    s->store_max = 1000;
    s->nargs = 1;
    fsd_arg(s, "big");
    fsd_start_ready(s);
    fsd_lock(s);
    ASSERT_INT_EQ(s->nstore, 600);
    fsd_unlock(s);
    ASSERT_INT_EQ(fsd_kill(s, SIGKILL), 128 + SIGKILL);
    ASSERT_ERR(fsd_start(s), E2BIG);
    ASSERT_INT_EQ(fsd_violations_take(s, text, sizeof(text)), 1);
    ASSERT_CONTAINS(text, strerror(E2BIG));
    fsd_fini(s);
}

/* ------------------------------------------------------------------------
 * Notifications and the socket
 */

HELPER_CASE(notify_basics)
{
    lockd_space *sp = space_open_rooted();
    struct disks d;
    struct guest g;
    struct fsd *s, *b;
    lockd_conn *c;
    unsigned long w;

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 0);
    s->watchdog_usec = 200000;
    fsd_start_ready(s);
    ASSERT_TRUE(FSD_WAIT(s, strcmp(s->status, "0 owners, 0 leases, 0 in fd store") == 0,
                         5000));
    /* WATCHDOG=1 every WATCHDOG_USEC / 2. */
    w = s->watchdogs;
    ASSERT_TRUE(FSD_WAIT(s, s->watchdogs >= w + 3, 3000));

    guest_start(&g);
    disks_make(&d, sp, "notify", 2);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, UUID1, "guest"));
    /* Registering the same live process again is harmless. */
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, UUID1, "guest, renamed"));
    ASSERT_OK(hand_over(c, sp, g.pid, &d, NULL));
    ASSERT_TRUE(FSD_WAIT(s, strcmp(s->status, "1 owner, 2 leases, 0 in fd store") == 0,
                         5000));
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_TRUE(FSD_WAIT(s, strcmp(s->status, "0 owners, 0 leases, 0 in fd store") == 0,
                         5000));
    ASSERT_INT_EQ(disks_probe_count(sp, &d, LOCKD_FREE), 2);

    /* SIGTERM is a clean exit; a socket systemd owns stays. */
    ASSERT_INT_EQ(fsd_stop(s), 0);
    ASSERT_OK(access(s->sock, F_OK));
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);

    /* A socket the helper bound itself is 0600 and removed at exit. */
    b = fsd_new("bound", FSD_NOTIFY, 0);
    fsd_start_ready(b);
    {
        struct stat st;

        ASSERT_OK(stat(b->sock, &st));
        ASSERT_TRUE(S_ISSOCK(st.st_mode));
        ASSERT_INT_EQ(st.st_mode & 07777, 0600);
    }
    ASSERT_INT_EQ(status_at(b->sock).owners, 0);
    ASSERT_INT_EQ(fsd_stop(b), 0);
    ASSERT_ERR(access(b->sock, F_OK) < 0 ? -errno : 0, ENOENT);
    FSD_ASSERT_CLEAN(b);
    fsd_fini(b);
    lockd_space_close(sp);
}

/* ------------------------------------------------------------------------
 * The crash matrix
 */

struct manager {
    const char *sock;
    pid_t guest;
    struct disks *d;
    int out, hold;
};

/* A manager: registers the guest, hands its disks over (keeping its own
 * copies), reports the ids, and waits to be killed. */
static int
manager_main(void *arg)
{
    struct manager *m = arg;
    lockd_space *sp = space_open_rooted();
    lockd_conn *c = conn_open(m->sock);
    lockd_lease *l;
    char byte;

    ASSERT_OK(lockd_conn_register(c, m->guest, pidfd_of(m->guest), UUID1, "guest-1"));
    ASSERT_OK(hand_over(c, sp, m->guest, m->d, &l));
    if (write(m->out, m->d->id, m->d->n * sizeof(uint64_t)) < 0)
        return 3;
    while (read(m->hold, &byte, 1) < 0 && errno == EINTR)
        ;
    return 0;
}

struct contender {
    struct disks *d;
};

/* Another process: exclusive tries fail on every disk; a shared try
 * succeeds exactly on the shared ones. */
static int
contender_main(void *arg)
{
    struct disks *d = ((struct contender *)arg)->d;
    lockd_space *sp = space_open_rooted();

    for (size_t i = 0; i < d->n; i++) {
        const char *k = d->key[i];
        int shared = LOCKD_SHARED;
        lockd_lease *l;

        ASSERT_ERR(lockd_acquire(sp, 1, &k, NULL, LOCKD_TRY, &l), EAGAIN);
        if (d->modes[i] == LOCKD_SHARED) {
            ASSERT_OK(lockd_acquire(sp, 1, &k, &shared, LOCKD_TRY, &l));
            ASSERT_OK(lockd_lease_release(l));
        } else
            ASSERT_ERR(lockd_acquire(sp, 1, &k, &shared, LOCKD_TRY, &l), EAGAIN);
    }
    lockd_space_close(sp);
    return 0;
}

HELPER_CASE(crash_manager)
{
    lockd_space *sp = space_open_rooted();
    int out[2], hold[2];
    struct contender ct;
    struct manager m;
    struct guest g;
    struct disks d;
    struct fsd *s;
    lockd_conn *c;
    pid_t mpid;
    int64_t t0;

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 0);
    fsd_start_ready(s);
    guest_start(&g);
    disks_make(&d, sp, "crashmgr", 3);
    d.modes[2] = LOCKD_SHARED;
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(hold, O_CLOEXEC) < 0)
        TEST_FAIL("pipe: %s", strerror(errno));
    m = (struct manager){s->sock, g.pid, &d, out[1], hold[0]};
    {
        int keep[2] = {out[1], hold[0]};

        mpid = spawn(manager_main, &m, keep, 2);
    }
    close(out[1]);
    close(hold[0]);
    if (read(out[0], d.id, sizeof(uint64_t) * d.n) != (ssize_t)(sizeof(uint64_t) * d.n))
        TEST_FAIL("the manager did not report its lease ids");

    /* The manager dies with its own copies; the helper's keep the leases. */
    kill(mpid, SIGKILL);
    ASSERT_INT_EQ(test_wait(mpid), 128 + SIGKILL);
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(probe(sp, d.key[1]), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(probe(sp, d.key[2]), LOCKD_SHARED);
    ct.d = &d;
    ASSERT_INT_EQ(test_wait(spawn(contender_main, &ct, NULL, 0)), 0);
    c = conn_open(s->sock);
    assert_listed(c, g.pid, &d);
    ASSERT_INT_EQ(owners_count(c), 1);
    {
        struct counts k = status_on(c);

        ASSERT_INT_EQ(k.owners, 1);
        ASSERT_INT_EQ(k.leases, 3);
    }

    /* The owner exits: everything released, at once. */
    t0 = test_now_ms();
    guest_end(&g);
    if (!WAIT_UNTIL(disks_probe_count(sp, &d, LOCKD_FREE) == 3, 3000))
        TEST_FAIL("leases still held %lld ms after the owner exited",
                  (long long)(test_now_ms() - t0));
    {
        struct counts k = status_on(c);

        ASSERT_INT_EQ(k.owners, 0);
        ASSERT_INT_EQ(k.leases, 0);
    }
    lockd_conn_close(c);
    close(out[0]);
    close(hold[1]);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

HELPER_CASE(crash_helper_fdstore)
{
    lockd_space *sp = space_open_rooted();
    uint64_t stored[2];
    struct disks d1, d2;
    struct guest g1, g2;
    struct watch *w;
    struct rows rs;
    struct fsd *s;
    lockd_conn *c;
    pid_t wpid;

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 64);
    fsd_start_ready(s);
    guest_start(&g1);
    guest_start(&g2);
    disks_make(&d1, sp, "store-a", 3);
    disks_make(&d2, sp, "store-b", 2);
    d1.modes[1] = LOCKD_SHARED;
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g1.pid, pidfd_of(g1.pid), UUID1, "guest-1"));
    ASSERT_OK(lockd_conn_register(c, g2.pid, -1, NULL, "guest-2"));
    ASSERT_OK(hand_over(c, sp, g1.pid, &d1, NULL));
    ASSERT_OK(hand_over(c, sp, g2.pid, &d2, NULL));
    lockd_conn_close(c);

    /* Every lease fd and pidfd is in the stash; the store holds two fds,
     * the stash and the state, whatever the lease count. */
    ASSERT_TRUE(WAIT_UNTIL(fsd_stash_count(s, 'L') == 5 && fsd_stash_count(s, 'P') == 2, 5000));
    ASSERT_TRUE(FSD_WAIT(s, fsd_count_locked(s, "S") == 1 && fsd_has_locked(s, "state") &&
                                 s->nstore == 2, 5000));
    /* lockd_conn_status()'s stored counts leases (lockd.h), not the state
     * memfd and pidfds; checked at the end, after the crash behaviour. */
    stored[0] = status_at(s->sock).stored;

    /* Crash; g2 dies and is reaped while the helper is down. */
    w = watch_start(&d1, 0, d1.n, &wpid);
    watch_rounds(w, 2);
    ASSERT_INT_EQ(fsd_kill(s, SIGKILL), 128 + SIGKILL);
    watch_rounds(w, 2);
    ASSERT_INT_EQ(disks_probe_count(sp, &d2, LOCKD_EXCLUSIVE), 2);
    guest_kill(&g2);
    ASSERT_INT_EQ(disks_probe_count(sp, &d2, LOCKD_EXCLUSIVE), 2);
    watch_rounds(w, 2);
    fsd_start_ready(s);

    /* Adopted with the same ids; g2's leases released after adoption. */
    if (!WAIT_UNTIL(disks_probe_count(sp, &d2, LOCKD_FREE) == 2, 3000))
        TEST_FAIL("the leases of an owner that died while the helper was down are held");
    watch_rounds(w, 2);
    watch_stop(w, wpid);
    c = conn_open(s->sock);
    assert_listed(c, g1.pid, &d1);
    ASSERT_INT_EQ(owners_count(c), 1);
    rs = rows_list(c, 0);
    ASSERT_INT_EQ(rs.n, 3);
    ASSERT_STR_EQ(rs.r[0].uuid, UUID1);
    ASSERT_STR_EQ(rs.r[0].name, "guest-1");
    free(rs.r);
    /* A new stash with what was adopted; the old one is gone. */
    ASSERT_TRUE(WAIT_UNTIL(fsd_stash_count(s, 'L') == 3 && fsd_stash_count(s, 'P') == 1, 5000));
    ASSERT_TRUE(FSD_WAIT(s, s->nstore == 2, 5000));
    stored[1] = status_at(s->sock).stored;

    /* A release by id takes its fd out of the store's count (its copy in
     * the stash is unlocked, and goes at the next rotation); a repeat is a
     * no-op. */
    ASSERT_INT_EQ(lockd_conn_release(c, g1.pid, 1, &d1.id[0]), 1);
    ASSERT_INT_EQ(probe(sp, d1.key[0]), LOCKD_FREE);
    ASSERT_INT_EQ(lockd_conn_release(c, g1.pid, 1, &d1.id[0]), 0);
    ASSERT_INT_EQ(status_on(c).stored, 2);
    lockd_conn_close(c);

    /* A second crash adopts the state as it was updated since. */
    ASSERT_INT_EQ(fsd_kill(s, SIGKILL), 128 + SIGKILL);
    ASSERT_INT_EQ(probe(sp, d1.key[1]), LOCKD_SHARED);
    ASSERT_INT_EQ(probe(sp, d1.key[2]), LOCKD_EXCLUSIVE);
    fsd_start_ready(s);
    c = conn_open(s->sock);
    rs = rows_list(c, g1.pid);
    ASSERT_INT_EQ(rs.n, 2);
    ASSERT_TRUE(rows_find_id(&rs, d1.id[1]) && rows_find_id(&rs, d1.id[2]));
    free(rs.r);
    lockd_conn_close(c);
    ASSERT_INT_EQ(probe(sp, d1.key[0]), LOCKD_FREE);

    /* The owner exits: released, and out of the store. */
    guest_end(&g1);
    ASSERT_TRUE(WAIT_UNTIL(disks_probe_count(sp, &d1, LOCKD_FREE) == 3, 3000));
    ASSERT_INT_EQ(status_at(s->sock).stored, 0);
    fsd_lock(s);
    ASSERT_INT_EQ(s->drops, 0); /* every pidfd was pushed with FDPOLL=0 */
    /* Nothing pushed twice, nothing removed that was not stored: the
     * helper's count of what is stored, which bounds it, is right. */
    ASSERT_INT_EQ(s->dups, 0);
    ASSERT_INT_EQ(s->remove_misses, 0);
    fsd_unlock(s);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    fsd_lock(s);
    ASSERT_INT_EQ(s->nstore, 0);
    fsd_unlock(s);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    ASSERT_INT_EQ(stored[0], 5);
    ASSERT_INT_EQ(stored[1], 3);
    lockd_space_close(sp);
}

/*
 * --store-leases 6 with one owner and 10 leases: 6 are stashed.  The helper
 * says the store is full; after a crash exactly the stored 6 are held (and
 * listed), the other 4 are free.
 */
HELPER_CASE(crash_helper_store_bound)
{
    lockd_space *sp = space_open_rooted();
    size_t held = 0;
    struct guest g;
    struct disks d;
    struct rows rs;
    struct fsd *s;
    lockd_conn *c;

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 8);
    fsd_arg(s, "--store-leases");
    fsd_arg(s, "6");
    fsd_start_ready(s);
    guest_start(&g);
    disks_make(&d, sp, "bound", 10);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, NULL, "guest"));
    ASSERT_OK(hand_over(c, sp, g.pid, &d, NULL));
    ASSERT_TRUE(FSD_WAIT(s, strstr(s->status, "10 leases") != NULL, 5000));
    fsd_lock(s);
    ASSERT_INT_EQ(s->nstore, 2);
    ASSERT_CONTAINS(s->status, "full");
    fsd_unlock(s);
    ASSERT_INT_EQ(fsd_stash_count(s, 'L'), 6);
    ASSERT_INT_EQ(status_on(c).stored, 6);
    ASSERT_INT_EQ(status_on(c).leases, 10);
    ASSERT_CONTAINS(read_file(s->log), "store full");
    lockd_conn_close(c);

    ASSERT_INT_EQ(fsd_kill(s, SIGKILL), 128 + SIGKILL);
    ASSERT_INT_EQ(disks_probe_count(sp, &d, LOCKD_EXCLUSIVE), 6);
    fsd_start_ready(s);
    c = conn_open(s->sock);
    rs = rows_list(c, g.pid);
    ASSERT_INT_EQ(rs.n, 6);
    for (size_t i = 0; i < d.n; i++) {
        int listed = rows_find_id(&rs, d.id[i]) != NULL;

        ASSERT_INT_EQ(probe(sp, d.key[i]), listed ? LOCKD_EXCLUSIVE : LOCKD_FREE);
        held += listed;
    }
    ASSERT_INT_EQ(held, 6);
    free(rs.r);
    ASSERT_INT_EQ(status_on(c).leases, 6);
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_TRUE(WAIT_UNTIL(disks_probe_count(sp, &d, LOCKD_FREE) == 10, 3000));
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * The stash under churn: 1,500 leases handed over one message each, 1,400
 * of them released one by one (the queue rotates: dead entries go, live ones
 * move to the tail), 300 more handed over.  A crash then adopts exactly the
 * 400 live leases from the queue, every released disk stays free, and the
 * new stash holds the 400 and nothing else.
 */
/*
 * Hand over keys[from..to) for pid one message each (the stash's worst
 * case), named /images/<tag>-<i>.qcow2: key[i] gets each key, id[i] its
 * lease id; our copies are forgotten.
 */
static void
hand_over_singles(lockd_conn *c, lockd_space *sp, int32_t pid, const char *tag, size_t from,
                  size_t to, char (*key)[LOCKD_KEY_SIZE], uint64_t *id)
{
    for (size_t i = from; i < to; i++) {
        const char *k = key[i];
        char name[64];
        lockd_lease *l;

        snprintf(name, sizeof(name), "/images/%s-%zu.qcow2", tag, i);
        ASSERT_OK(lockd_space_key(sp, name, key[i]));
        ASSERT_OK(lockd_acquire(sp, 1, &k, NULL, LOCKD_TRY, &l));
        ASSERT_OK(lockd_conn_handoff(c, pid, l, NULL, &id[i]));
        lockd_lease_forget(l);
    }
}

HELPER_CASE(stash_rotation)
{
    enum { FIRST = 1500, GONE = 1400, MORE = 300, N = FIRST + MORE };
    lockd_space *sp = space_open_rooted();
    static char key[N][LOCKD_KEY_SIZE];
    static uint64_t id[N];
    size_t i, listed = 0;
    struct guest g;
    struct rows rs;
    struct fsd *s;
    lockd_conn *c;

    s = helper_with_guest(8, &g, &c);
    hand_over_singles(c, sp, g.pid, "churn", 0, FIRST, key, id);
    for (i = 0; i < GONE; i++)
        ASSERT_INT_EQ(lockd_conn_release(c, g.pid, 1, &id[i]), 1);
    hand_over_singles(c, sp, g.pid, "churn", FIRST, N, key, id);
    ASSERT_INT_EQ(status_on(c).stored, N - GONE);
    /* Rotated: far fewer entries queued than were ever sent. */
    ASSERT_TRUE(fsd_stash_count(s, 'L') < FIRST);
    lockd_conn_close(c);

    ASSERT_INT_EQ(fsd_kill(s, SIGKILL), 128 + SIGKILL);
    fsd_start_ready(s);
    c = conn_open(s->sock);
    rs = rows_list(c, g.pid);
    ASSERT_INT_EQ(rs.n, N - GONE);
    for (i = 0; i < N; i++) {
        int on = rows_find_id(&rs, id[i]) != NULL;

        ASSERT_INT_EQ(on, i >= GONE);
        if (i % 20 == 0 || i == GONE - 1 || i == GONE)
            ASSERT_INT_EQ(probe(sp, key[i]), on ? LOCKD_EXCLUSIVE : LOCKD_FREE);
        listed += on;
    }
    free(rs.r);
    ASSERT_INT_EQ(listed, N - GONE);
    ASSERT_INT_EQ(fsd_stash_count(s, 'L'), N - GONE);
    fsd_lock(s);
    ASSERT_INT_EQ(s->nstore, 2);
    fsd_unlock(s);
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_TRUE(WAIT_UNTIL(probe(sp, key[N - 1]) == LOCKD_FREE, 3000));
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * A filesystem that hangs must not freeze the helper.  A lockspace on
 * test/stallfs (FUSE, stalled on demand) and one on the scratch directory;
 * guest 1 holds a lease on each.  The FUSE daemon stalls; then:
 *  - a lease on the stalled filesystem acquired before is handed over (its
 *    checks never ask the filesystem: statx AT_STATX_DONT_SYNC, fdinfo);
 *  - guest 1 exits: its lease on the normal lockspace is freed while the
 *    helper's close of the other waits in FUSE FLUSH;
 *  - a second client's hand-over on the normal lockspace completes;
 *  - STATUS, lockdctl status and systemd's STATUS= name the stuck mount;
 * and when the daemon answers again the waiting close completes and the
 * stuck filesystem is no longer named.  The order of events is asserted,
 * never a time.
 */
static void assert_counts(struct counts k, uint64_t owners, uint64_t leases);

/*
 * A process that runs one shell command for the case and sends back what
 * it printed.  Started before the case opens files on a filesystem that
 * will stall: an exec from the case itself would close its O_CLOEXEC copies
 * of them, and each such close waits in FUSE FLUSH.
 */
struct runner {
    pid_t pid;
    int cmd_w, out_r;
};

static int
runner_main(void *arg)
{
    const int *fd = arg;
    char cmd[PATH_MAX * 2], out[8192];
    ssize_t n = read(fd[0], cmd, sizeof(cmd) - 1);
    FILE *p;
    size_t k;

    if (n <= 0)
        return 1;
    cmd[n] = '\0';
    p = popen(cmd, "r");
    if (!p)
        return 1;
    k = fread(out, 1, sizeof(out), p);
    if (pclose(p) != 0 || write(fd[1], out, k) != (ssize_t)k)
        return 1;
    return 0;
}

static void
runner_start(struct runner *r)
{
    int in[2], out[2], fds[2];

    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0)
        TEST_FAIL("pipe: %s", strerror(errno));
    fds[0] = in[0];
    fds[1] = out[1];
    r->pid = spawn(runner_main, fds, fds, 2);
    close(in[0]);
    close(out[1]);
    r->cmd_w = in[1];
    r->out_r = out[0];
}

/* What cmd printed; the runner exits after it. */
static const char *
runner_run(struct runner *r, const char *cmd)
{
    static char out[8192];
    size_t len = 0;
    ssize_t n;

    if (write(r->cmd_w, cmd, strlen(cmd)) != (ssize_t)strlen(cmd))
        TEST_FAIL("runner: %s", strerror(errno));
    close(r->cmd_w);
    while (len < sizeof(out) - 1 && (n = read(r->out_r, out + len, sizeof(out) - 1 - len)) > 0)
        len += (size_t)n;
    out[len] = '\0';
    close(r->out_r);
    ASSERT_INT_EQ(test_wait(r->pid), 0);
    return out;
}

HELPER_CASE(hung_filesystem)
{
    char top[PATH_MAX - 64], prog[PATH_MAX], backing[PATH_MAX], mnt[PATH_MAX], ctl[PATH_MAX];
    char fuse_space[PATH_MAX + 8], reply[256], stuck[1024], cmd[PATH_MAX * 2];
    lockd_space *sp = space_open_rooted(), *fsp = NULL;
    struct disks d1, d2, d3, d4;
    struct guest g1, g2;
    struct runner run;
    lockd_lease *late;
    struct fsd *s;
    lockd_conn *c;
    pid_t fs;

    fsd_top(top, sizeof(top));
    snprintf(prog, sizeof(prog), "%s/test/stallfs", top);
    if (access(prog, X_OK) < 0)
        TEST_FAIL("%s: %s (make test/stallfs)", prog, strerror(errno));
    snprintf(backing, sizeof(backing), "%s", test_path("backing"));
    snprintf(mnt, sizeof(mnt), "%s", test_path("mnt"));
    snprintf(ctl, sizeof(ctl), "%s", test_path("stallfs.sock"));
    ASSERT_OK(mkdir(backing, 0700) < 0 ? -errno : 0);
    ASSERT_OK(mkdir(mnt, 0700) < 0 ? -errno : 0);
    runner_start(&run);
    fs = stallfs_start(prog, backing, mnt, ctl);
    if (fs < 0)
        TEST_FAIL("cannot start %s", prog);
    snprintf(fuse_space, sizeof(fuse_space), "%s/space", mnt);
    ASSERT_OK(lockd_space_open(fuse_space, LOCKD_OPEN_CREATE, &fsp));

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 0);
    fsd_start_ready(s);
    guest_start(&g1);
    guest_start(&g2);
    disks_make(&d1, fsp, "hung", 1);
    disks_make(&d2, sp, "fine", 1);
    disks_make(&d3, fsp, "late", 1);
    disks_make(&d4, sp, "other", 1);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g1.pid, -1, NULL, "guest-1"));
    ASSERT_OK(lockd_conn_register(c, g2.pid, -1, NULL, "guest-2"));
    ASSERT_OK(hand_over(c, fsp, g1.pid, &d1, NULL));
    ASSERT_OK(hand_over(c, sp, g1.pid, &d2, NULL));
    ASSERT_OK(lockd_acquire(fsp, 1, d3.keys, NULL, LOCKD_TRY, &late));
    ASSERT_INT_EQ(probe(fsp, d1.key[0]), LOCKD_EXCLUSIVE);

    /* Ends by itself after 30 s: a case that fails while stalled would
     * otherwise hang in its own exit, whose closes flush. */
    ASSERT_OK(stallfs_cmd(ctl, "stall 30", reply, sizeof(reply)));
    ASSERT_OK(lockd_conn_handoff(c, g2.pid, late, NULL, &d3.id[0]));
    guest_kill(&g1);
    ASSERT_OK(stallfs_cmd(ctl, "wait flush", reply, sizeof(reply)));
    ASSERT_STR_EQ(reply, "ok");
    /* The helper's close of d1 waits in FLUSH; the rest goes on. */
    ASSERT_TRUE(WAIT_UNTIL(probe(sp, d2.key[0]) == LOCKD_FREE, 5000));
    ASSERT_OK(hand_over(c, sp, g2.pid, &d4, NULL));
    ASSERT_INT_EQ(probe(sp, d4.key[0]), LOCKD_EXCLUSIVE);
    ASSERT_TRUE(WAIT_UNTIL(lockd_conn_stuck(c, stuck, sizeof(stuck)) == 1, 5000));
    ASSERT_CONTAINS(stuck, mnt);
    ASSERT_CONTAINS(stuck, "1 waiting");
    snprintf(cmd, sizeof(cmd), "LOCKD_SOCKET=%s %s/lockdctl status", s->sock, top);
    ASSERT_CONTAINS(runner_run(&run, cmd), "stuck filesystem: ");
    ASSERT_TRUE(FSD_WAIT(s, strstr(s->status, "stuck: ") != NULL, 5000));
    assert_counts(status_on(c), 1, 2);

    ASSERT_OK(stallfs_cmd(ctl, "go", reply, sizeof(reply)));
    ASSERT_TRUE(WAIT_UNTIL(lockd_conn_stuck(c, stuck, sizeof(stuck)) == 0, 5000));
    ASSERT_CONTAINS(read_file(s->log), "filesystem not answering");
    ASSERT_INT_EQ(probe(fsp, d1.key[0]), LOCKD_FREE);
    lockd_lease_forget(late);
    ASSERT_INT_EQ(probe(fsp, d3.key[0]), LOCKD_EXCLUSIVE);
    guest_end(&g2);
    ASSERT_TRUE(WAIT_UNTIL(probe(fsp, d3.key[0]) == LOCKD_FREE, 5000));
    ASSERT_INT_EQ(probe(sp, d4.key[0]), LOCKD_FREE);
    lockd_conn_close(c);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(fsp);
    ASSERT_INT_EQ(stallfs_stop(fs, ctl, mnt), 0);
    lockd_space_close(sp);
}

/* Run lockd-helper --keeper on sock, its log in the scratch directory. */
struct keeper_args {
    char bin[PATH_MAX], sock[PATH_MAX], log[PATH_MAX];
    char **argv; /* bin --keeper --socket sock, as the tests run a helper */
};

static int
keeper_exec(void *arg)
{
    const struct keeper_args *k = arg;
    int fd = open(k->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

    if (fd < 0 || dup2(fd, 2) < 0)
        return 127;
    execv(k->argv[0], k->argv);
    return 127;
}

/* The helper the keeper runs now: its only child, once it answers. */
static pid_t
keeper_child(pid_t keeper, const char *sock, pid_t not)
{
    char path[64];
    pid_t child;
    lockd_conn *c = NULL;

    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)keeper, (int)keeper);
    child = (pid_t)atoi(read_file(path)); /* the keeper must not be gone */
    if (child == 0 || child == not || lockd_conn_open(sock, &c) < 0)
        return 0;
    lockd_conn_close(c);
    return child;
}

/*
 * Without systemd, lockd-helper --keeper: the keeper holds the listening
 * socket and what the helper stores (its state and stash), and restarts it.
 * A SIGKILL of the helper and a SIGTERM to the keeper keep every lease (a
 * poller never wins), ids and names come back, an exiting guest is
 * released, and lockdctl stop-helper stops both, removing the socket.
 */
HELPER_CASE(keeper_crash)
{
    lockd_space *sp = space_open_rooted();
    struct keeper_args *k = root(calloc(1, sizeof(*k)));
    pid_t keeper, helper, wpid;
    struct disks d;
    struct guest g;
    struct watch *w;
    struct rows rs;
    lockd_conn *c;

    fsd_helper_source(k->bin, sizeof(k->bin));
    snprintf(k->sock, sizeof(k->sock), "%s", test_path("keeper.sock"));
    snprintf(k->log, sizeof(k->log), "%s", test_path("keeper.log"));
    k->argv = test_wrapped((char *[]){k->bin, "--keeper", "--socket", k->sock, NULL});
    keeper = spawn(keeper_exec, k, NULL, 0);
    ASSERT_TRUE(WAIT_UNTIL((helper = keeper_child(keeper, k->sock, 0)) > 0, 10000));
    guest_start(&g);
    disks_make(&d, sp, "kept", 3);
    d.modes[2] = LOCKD_SHARED;
    c = conn_open(k->sock);
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, NULL, "guest"));
    ASSERT_OK(hand_over(c, sp, g.pid, &d, NULL));
    ASSERT_INT_EQ(status_on(c).stored, 3);
    lockd_conn_close(c);

    w = watch_start(&d, 0, d.n, &wpid);
    watch_rounds(w, 2);
    ASSERT_INT_EQ(kill(helper, SIGKILL), 0);
    ASSERT_TRUE(WAIT_UNTIL((helper = keeper_child(keeper, k->sock, helper)) > 0, 10000));
    watch_rounds(w, 2);
    c = conn_open(k->sock);
    assert_listed(c, g.pid, &d);
    lockd_conn_close(c);

    /* SIGTERM to the keeper: passed on; the helper exits 75 with its
     * leases stored and is started again. */
    ASSERT_INT_EQ(kill(keeper, SIGTERM), 0);
    ASSERT_TRUE(WAIT_UNTIL((helper = keeper_child(keeper, k->sock, helper)) > 0, 10000));
    watch_rounds(w, 2);
    watch_stop(w, wpid);
    c = conn_open(k->sock);
    rs = rows_list(c, g.pid);
    ASSERT_INT_EQ(rs.n, 3);
    free(rs.r);

    guest_end(&g);
    ASSERT_TRUE(WAIT_UNTIL(disks_probe_count(sp, &d, LOCKD_FREE) == 3, 5000));
    ASSERT_OK(lockd_conn_stop(c, 0));
    lockd_conn_close(c);
    ASSERT_INT_EQ(test_wait(keeper), 0);
    ASSERT_TRUE(access(k->sock, F_OK) < 0 && errno == ENOENT);
    ASSERT_CONTAINS(read_file(k->log), "killed by signal 9: restarting it");
    ASSERT_CONTAINS(read_file(k->log), "exited with status 75: restarting it");
    test_no_valgrind_report(k->log);
    lockd_space_close(sp);
}

/*
 * Queued fds count against the sender's RLIMIT_NOFILE unless it has
 * CAP_SYS_RESOURCE, which the unit does not grant: a helper that filled a
 * new stash before letting the old one go would need twice its lease count
 * (found by review: with 800 leases under a limit of 1,000, a re-exec left
 * 253 covered and a crash then freed 547 disks of a running guest).  Here,
 * without those capabilities and with that limit: a re-exec and then a
 * crash keep all 800, every one stashed throughout.
 */
HELPER_CASE(stash_inflight_bound)
{
    enum { N = 800 };
    lockd_space *sp = space_open_rooted();
    static char key[N][LOCKD_KEY_SIZE];
    static uint64_t id[N];
    struct rlimit rl = {1000, 1000};
    struct guest g;
    struct fsd *s;
    struct rows rs;
    lockd_conn *c;
    size_t i;

    ASSERT_OK(prctl(PR_CAPBSET_DROP, 24 /* CAP_SYS_RESOURCE */, 0, 0, 0));
    ASSERT_OK(prctl(PR_CAPBSET_DROP, 21 /* CAP_SYS_ADMIN */, 0, 0, 0));
    ASSERT_OK(setrlimit(RLIMIT_NOFILE, &rl));
    s = helper_with_guest(8, &g, &c);
    hand_over_singles(c, sp, g.pid, "bound", 0, N, key, id);
    ASSERT_INT_EQ(status_on(c).stored, N);
    lockd_conn_close(c);

    ASSERT_OK(kill(s->pid, SIGUSR1));
    ASSERT_TRUE(WAIT_UNTIL(strstr(read_file(s->log), "re-exec ") &&
                               strstr(strstr(read_file(s->log), "re-exec "), "ready:"),
                           10000));
    ASSERT_INT_EQ(status_at(s->sock).stored, N);
    if (strstr(read_file(s->log), "store full"))
        TEST_FAIL("the store filled up across the re-exec:\n%s", read_file(s->log));
    ASSERT_INT_EQ(fsd_kill(s, SIGKILL), 128 + SIGKILL);
    fsd_start_ready(s);
    c = conn_open(s->sock);
    rs = rows_list(c, g.pid);
    ASSERT_INT_EQ(rs.n, N);
    free(rs.r);
    ASSERT_INT_EQ(status_on(c).stored, N);
    for (i = 0; i < N; i += 7)
        ASSERT_INT_EQ(probe(sp, key[i]), LOCKD_EXCLUSIVE);
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_TRUE(WAIT_UNTIL(probe(sp, key[N - 1]) == LOCKD_FREE, 5000));
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/* Without the fd store a helper crash frees what it alone held, as
 * documented, and the restarted helper knows nothing. */
HELPER_CASE(crash_helper_no_store)
{
    lockd_space *sp = space_open_rooted();
    struct counts k;
    struct guest g;
    struct disks d;
    struct fsd *s;
    lockd_conn *c;

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 0);
    fsd_start_ready(s);
    guest_start(&g);
    disks_make(&d, sp, "nostore", 3);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, NULL, "guest"));
    ASSERT_OK(hand_over(c, sp, g.pid, &d, NULL));
    ASSERT_INT_EQ(disks_probe_count(sp, &d, LOCKD_EXCLUSIVE), 3);
    lockd_conn_close(c);
    ASSERT_INT_EQ(fsd_kill(s, SIGKILL), 128 + SIGKILL);
    ASSERT_INT_EQ(disks_probe_count(sp, &d, LOCKD_FREE), 3);
    fsd_lock(s);
    ASSERT_INT_EQ(s->nstore, 0);
    fsd_unlock(s);
    fsd_start_ready(s);
    k = status_at(s->sock);
    ASSERT_INT_EQ(k.owners, 0);
    ASSERT_INT_EQ(k.leases, 0);
    guest_end(&g);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/* ------------------------------------------------------------------------
 * Re-exec under load
 */

#define LOAD_OWNERS 500
#define LOAD_PER    38 /* 19,000 leases: the fd limit is 20,000 */
#define LOAD_REEXECS 3

static void
load_key(lockd_space *sp, int owner, int i, char *key)
{
    char path[64];

    snprintf(path, sizeof(path), "/images/load-%d-%d.qcow2", owner, i);
    ASSERT_OK(lockd_space_key(sp, path, key));
}

struct poller {
    int go; /* read end of a pipe: a byte when the leases are all held */
    int stop, ready;
    long rounds, taken, errors;
};

/*
 * Open every lease file once, then try to take each, again and again
 * (F_OFD_SETLK, what a LOCKD_TRY acquire does after its open): a whole round
 * is 19,000 fcntl() calls, a few ms, so every lease is tried many times
 * while the helper execs.
 */
static int
poller_main(void *arg)
{
    struct poller *p = arg;
    int *fds = calloc(LOAD_OWNERS * LOAD_PER, sizeof(int)), n = 0;
    char key[LOCKD_KEY_SIZE], byte;
    lockd_space *sp;

    if (!fds || read(p->go, &byte, 1) != 1)
        return 2;
    sp = space_open_rooted();
    for (int o = 0; o < LOAD_OWNERS; o++)
        for (int i = 0; i < LOAD_PER; i++) {
            load_key(sp, o, i, key);
            fds[n] = openat(lockd_space_fd(sp), key,
                            O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
            if (fds[n++] < 0)
                TEST_FAIL("poller: open %s: %s", key, strerror(errno));
        }
    STORE(p->ready, 1);
    while (!LOAD(p->stop)) {
        for (int i = 0; i < n; i++) {
            struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_len = 1};

            if (fcntl(fds[i], F_OFD_SETLK, &fl) == 0) {
                BUMP(p->taken);
                fl.l_type = F_UNLCK;
                (void)fcntl(fds[i], F_OFD_SETLK, &fl);
            } else if (errno != EAGAIN && errno != EACCES)
                BUMP(p->errors);
        }
        BUMP(p->rounds);
    }
    for (int i = 0; i < n; i++)
        close(fds[i]);
    free(fds);
    lockd_space_close(sp);
    return 0;
}

static int
count_cb(void *userdata, uint64_t id, int mode, const char *key, const char *disk, int32_t pid,
         uint32_t uid, const char *uuid, const char *name)
{
    (void)id, (void)mode, (void)key, (void)disk, (void)pid, (void)uid, (void)uuid, (void)name;
    (*(size_t *)userdata)++;
    return 0;
}

/* Hand LOAD_PER leases to each owner, one round trip each, keeping no
 * copy: the test process could not hold 19,000 fds besides the poller. */
static void
load_hand_over(lockd_conn *c, lockd_space *sp, const pid_t *owners)
{
    char keys[LOAD_PER][LOCKD_KEY_SIZE], name[32];
    const char *kp[LOAD_PER];

    for (int o = 0; o < LOAD_OWNERS; o++) {
        lockd_lease *l;

        for (int i = 0; i < LOAD_PER; i++) {
            load_key(sp, o, i, keys[i]);
            kp[i] = keys[i];
        }
        snprintf(name, sizeof(name), "load-%d", o);
        ASSERT_OK(lockd_conn_register(c, owners[o], -1, NULL, name));
        ASSERT_OK(lockd_acquire(sp, LOAD_PER, kp, NULL, LOCKD_TRY, &l));
        ASSERT_OK(lockd_conn_handoff(c, owners[o], l, NULL, NULL));
        lockd_lease_forget(l);
    }
}

static void
assert_counts(struct counts k, uint64_t owners, uint64_t leases)
{
    ASSERT_INT_EQ(k.owners, owners);
    ASSERT_INT_EQ(k.leases, leases);
}

HELPER_CASE(reexec_under_load)
{
    lockd_space *sp = space_open_rooted();
    struct poller *p = shared_alloc(sizeof(*p));
    pid_t owners[LOAD_OWNERS], ppid, hpid;
    char key[LOCKD_KEY_SIZE];
    int gp[2], go[2];
    size_t listed = 0;
    struct fsd *s;
    lockd_conn *c;
    int64_t t0;

    /* Owners and the poller first: they must not inherit lease fds. */
    if (pipe2(gp, O_CLOEXEC) < 0 || pipe2(go, O_CLOEXEC) < 0)
        TEST_FAIL("pipe: %s", strerror(errno));
    for (int o = 0; o < LOAD_OWNERS; o++)
        owners[o] = spawn(guest_main, &gp[0], &gp[0], 1);
    close(gp[0]);
    p->go = go[0];
    ppid = spawn(poller_main, p, &go[0], 1);
    close(go[0]);

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 0);
    fsd_start_ready(s);
    hpid = s->pid;
    c = conn_open(s->sock);
    t0 = test_now_ms();
    load_hand_over(c, sp, owners);
    fprintf(stderr, "# %d leases handed over in %lld ms\n", LOAD_OWNERS * LOAD_PER,
            (long long)(test_now_ms() - t0));
    assert_counts(status_on(c), LOAD_OWNERS, LOAD_OWNERS * LOAD_PER);
    if (write(go[1], "g", 1) != 1)
        TEST_FAIL("write: %s", strerror(errno));
    ASSERT_TRUE(WAIT_UNTIL(LOAD(p->ready), 30000));
    ASSERT_TRUE(WAIT_UNTIL(LOAD(p->rounds) >= 2, 10000));

    /* Each time a new binary is installed at the path the helper was
     * started from: /proc/PID/exe shows when the exec happened. */
    for (int r = 0; r < LOAD_REEXECS; r++) {
        ino_t ino = fsd_install(s);
        long rounds;

        t0 = test_now_ms();
        ASSERT_OK(kill(hpid, SIGUSR1));
        if (!WAIT_UNTIL(fsd_exe_ino(hpid) == ino, 10000))
            TEST_FAIL("re-exec %d: the helper did not exec the new binary", r);
        assert_counts(status_at(s->sock), LOAD_OWNERS, LOAD_OWNERS * LOAD_PER);
        fprintf(stderr, "# re-exec %d: answering again after %lld ms\n", r,
                (long long)(test_now_ms() - t0));
        /* A connection from before the re-exec still works. */
        assert_counts(status_on(c), LOAD_OWNERS, LOAD_OWNERS * LOAD_PER);
        rounds = LOAD(p->rounds);
        ASSERT_TRUE(WAIT_UNTIL(LOAD(p->rounds) >= rounds + 2, 10000));
    }
    fsd_lock(s);
    ASSERT_INT_EQ(s->pid, hpid);
    ASSERT_INT_EQ(s->exits, 0);
    fsd_unlock(s);
    STORE(p->stop, 1);
    ASSERT_INT_EQ(test_wait(ppid), 0);
    fprintf(stderr, "# poller: %ld rounds, %ld leases taken, %ld errors\n", p->rounds,
            p->taken, p->errors);
    ASSERT_INT_EQ(p->taken, 0);
    ASSERT_INT_EQ(p->errors, 0);

    /* Afterwards: all listed, all released on request, all free. */
    ASSERT_OK(lockd_conn_list(c, 0, NULL, count_cb, &listed));
    ASSERT_INT_EQ(listed, LOAD_OWNERS * LOAD_PER);
    for (int o = 0; o < LOAD_OWNERS; o++)
        ASSERT_INT_EQ(lockd_conn_release(c, owners[o], 0, NULL), LOAD_PER);
    assert_counts(status_on(c), LOAD_OWNERS, 0);
    for (int o = 0; o < LOAD_OWNERS; o++)
        for (int i = 0; i < LOAD_PER; i++) {
            load_key(sp, o, i, key);
            ASSERT_INT_EQ(probe(sp, key), LOCKD_FREE);
        }
    close(gp[1]);
    for (int o = 0; o < LOAD_OWNERS; o++)
        ASSERT_INT_EQ(test_wait(owners[o]), 0);
    ASSERT_TRUE(WAIT_UNTIL(status_on(c).owners == 0, 5000));
    lockd_conn_close(c);
    close(go[1]);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/* ------------------------------------------------------------------------
 * Refusals
 */

static void
set_lock(int fd, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_len = 1};

    if (fcntl(fd, F_OFD_SETLK, &fl) < 0)
        TEST_FAIL("F_OFD_SETLK: %s", strerror(errno));
}

/* Hand over d for pid with fix(lease) applied to our copies first; the
 * helper must refuse with -EBADFD and keep none of the fds. */
static void
refused(lockd_conn *c, struct fsd *s, lockd_space *sp, int32_t pid, struct disks *d,
        void (*fix)(lockd_lease *))
{
    lockd_lease *l;

    ASSERT_OK(lockd_acquire(sp, d->n, d->keys, NULL, LOCKD_TRY, &l));
    fix(l);
    ASSERT_ERR(lockd_conn_handoff(c, pid, l, NULL, NULL), EBADFD);
    lockd_lease_forget(l);
    for (size_t i = 0; i < d->n; i++) {
        ASSERT_INT_EQ(proc_fds(s->pid, d->key[i]), 0);
        ASSERT_INT_EQ(probe(sp, d->key[i]), LOCKD_FREE);
    }
}

static void
fix_unlock(lockd_lease *l)
{
    set_lock(lockd_lease_fd(l, 0), F_UNLCK);
}

static void
fix_downgrade_middle(lockd_lease *l)
{
    set_lock(lockd_lease_fd(l, lockd_lease_count(l) / 2), F_RDLCK);
}

static void
fix_fifo(lockd_lease *l)
{
    int ff = open(test_path("fifo"), O_RDWR | O_NONBLOCK | O_CLOEXEC);

    if (ff < 0 || dup3(ff, lockd_lease_fd(l, 0), O_CLOEXEC) < 0)
        TEST_FAIL("fifo: %s", strerror(errno));
    /* Locked too, if the kernel lets us: only its type is wrong. */
    {
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_len = 1};

        (void)fcntl(ff, F_OFD_SETLK, &fl);
    }
    close(ff);
}

static int
exit_at_once(void *arg)
{
    (void)arg;
    return 0;
}

HELPER_CASE(refusals)
{
    lockd_space *sp = space_open_rooted();
    struct disks held, d;
    struct guest g, g2;
    struct rows rs;
    struct fsd *s;
    lockd_conn *c;
    pid_t dead;
    int pidfd;

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 0);
    fsd_start_ready(s);
    guest_start(&g);
    guest_start(&g2);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, NULL, "guest"));
    disks_make(&held, sp, "held", 1);
    ASSERT_OK(hand_over(c, sp, g.pid, &held, NULL));

    disks_make(&d, sp, "unlocked", 1);
    refused(c, s, sp, g.pid, &d, fix_unlock);
    /* Exclusive announced, but the fd holds a read lock. */
    disks_make(&d, sp, "shared", 1);
    refused(c, s, sp, g.pid, &d, fix_downgrade_middle);
    if (mkfifo(test_path("fifo"), 0600) < 0)
        TEST_FAIL("mkfifo: %s", strerror(errno));
    disks_make(&d, sp, "fifo", 1);
    refused(c, s, sp, g.pid, &d, fix_fifo);
    ASSERT_INT_EQ(proc_fds(s->pid, "fifo"), 0);
    /* One bad fd among good ones: the whole request is refused. */
    disks_make(&d, sp, "mixed", 3);
    refused(c, s, sp, g.pid, &d, fix_downgrade_middle);

    /* Owners: not registered, not alive, a pidfd of another process. */
    disks_make(&d, sp, "noowner", 1);
    ASSERT_ERR(hand_over(c, sp, g2.pid, &d, NULL), ESRCH);
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_FREE);
    dead = spawn(exit_at_once, NULL, NULL, 0);
    ASSERT_INT_EQ(test_wait(dead), 0);
    ASSERT_ERR(lockd_conn_register(c, dead, -1, NULL, "dead"), ESRCH);
    pidfd = pidfd_of(g.pid);
    if (pidfd >= 0) { /* see pidfd_of() */
        ASSERT_ERR(lockd_conn_register(c, g2.pid, pidfd, NULL, "mismatch"), ESRCH);
        close(pidfd);
    }
    ASSERT_INT_EQ(owners_count(c), 1);
    pidfd = pidfd_of(g2.pid);
    ASSERT_OK(lockd_conn_register(c, g2.pid, pidfd, NULL, "guest-2"));
    if (pidfd >= 0)
        close(pidfd);

    /* Nothing held changed. */
    assert_counts(status_on(c), 2, 1);
    ASSERT_INT_EQ(probe(sp, held.key[0]), LOCKD_EXCLUSIVE);
    rs = rows_list(c, 0);
    ASSERT_INT_EQ(rs.n, 1);
    ASSERT_INT_EQ(rs.r[0].id, held.id[0]);
    free(rs.r);
    lockd_conn_close(c);
    guest_end(&g);
    guest_end(&g2);
    ASSERT_TRUE(WAIT_UNTIL(probe(sp, held.key[0]) == LOCKD_FREE, 3000));
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * A manager that kept its copies releases by unlocking its own and sending
 * a one-way notice.  If the notice is late, the disk may have been leased
 * again meanwhile: the notice names the old id and must not touch the new
 * lease (nor may a notice from another owner's pid).
 */
HELPER_CASE(stale_notice)
{
    lockd_space *sp = space_open_rooted();
    uint64_t id1, id2;
    struct guest g, g2;
    struct rows rs;
    struct disks d;
    struct fsd *s;
    lockd_lease *l;
    lockd_conn *c;

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 0);
    fsd_start_ready(s);
    guest_start(&g);
    guest_start(&g2);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, NULL, "guest"));
    ASSERT_OK(lockd_conn_register(c, g2.pid, -1, NULL, "guest-2"));
    disks_make(&d, sp, "stale", 1);
    ASSERT_OK(hand_over(c, sp, g.pid, &d, &l));
    id1 = d.id[0];
    ASSERT_INT_EQ(proc_fds(s->pid, d.key[0]), 1);
    /* Our unlock frees it, although the helper still has a copy. */
    ASSERT_OK(lockd_lease_release(l));
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_FREE);

    ASSERT_OK(hand_over(c, sp, g.pid, &d, NULL));
    id2 = d.id[0];
    ASSERT_TRUE(id2 != id1);
    ASSERT_INT_EQ(proc_fds(s->pid, d.key[0]), 2);

    ASSERT_OK(lockd_conn_release_notice(c, g.pid, 1, &id1));
    ASSERT_OK(lockd_conn_release_notice(c, g2.pid, 1, &id2));
    /* Requests on one connection are handled in order: the notices are
     * done when this answers. */
    assert_counts(status_on(c), 2, 1);
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(proc_fds(s->pid, d.key[0]), 1);
    rs = rows_list(c, 0);
    ASSERT_INT_EQ(rs.n, 1);
    ASSERT_INT_EQ(rs.r[0].id, id2);
    free(rs.r);
    ASSERT_INT_EQ(lockd_conn_release(c, g.pid, 1, &id1), 0);
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_EXCLUSIVE);

    /* A notice must name ids: "all of this owner", late, would free id2
     * (notice_all_refused sends one raw). */
    ASSERT_ERR(lockd_conn_release_notice(c, g.pid, 0, NULL), EINVAL);
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(lockd_conn_release(c, g.pid, 1, &id2), 1);
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_FREE);
    ASSERT_INT_EQ(proc_fds(s->pid, d.key[0]), 0);
    lockd_conn_close(c);
    guest_end(&g);
    guest_end(&g2);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * A hand-over too big for one message goes in several, all or nothing.  If
 * a later message is refused, the earlier ones are taken back without
 * unlocking: the helper shares the open file descriptions with the manager,
 * and an unlock there would free the manager's own leases.  Here the 280th
 * of 300 leases is unlocked behind the library's back, so the second
 * message is refused.
 */
static void
rollback_run(unsigned store_max)
{
    enum { N = 300, BAD = 280 };
    lockd_space *sp = space_open_rooted();
    static char key[N][LOCKD_KEY_SIZE];
    const char *keys[N];
    struct guest g;
    struct fsd *s;
    lockd_lease *l;
    lockd_conn *c;
    size_t i;

    s = helper_with_guest(store_max, &g, &c);
    for (i = 0; i < N; i++) {
        char name[64];

        snprintf(name, sizeof(name), "/images/big-%zu.qcow2", i);
        ASSERT_OK(lockd_space_key(sp, name, key[i]));
        keys[i] = key[i];
    }
    ASSERT_OK(lockd_acquire(sp, N, keys, NULL, LOCKD_TRY, &l));
    set_lock(lockd_lease_fd(l, BAD), F_UNLCK);
    ASSERT_ERR(lockd_conn_handoff(c, g.pid, l, NULL, NULL), EBADFD);
    /* The helper keeps nothing, and every lease but the one unlocked is
     * still held, through our copies alone. */
    assert_counts(status_on(c), 1, 0);
    for (i = 0; i < N; i++) {
        const char *k = lockd_lease_key(l, i);

        ASSERT_INT_EQ(probe(sp, k), i == BAD ? LOCKD_FREE : LOCKD_EXCLUSIVE);
        if (i % 50 == 0)
            ASSERT_INT_EQ(proc_fds(s->pid, k), 0);
    }
    if (store_max) {
        /* The first message's 253 fds went to the stash; taken back, they
         * left it before the answer: our close alone frees them. */
        lockd_lease_forget(l);
        for (i = 0; i < N; i += 7)
            ASSERT_INT_EQ(probe(sp, keys[i]), LOCKD_FREE);
        ASSERT_INT_EQ(fsd_stash_count(s, 'L'), 0);
    } else {
        ASSERT_OK(lockd_lease_release(l));
        ASSERT_INT_EQ(probe(sp, keys[0]), LOCKD_FREE);
    }
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

HELPER_CASE(handoff_rollback)
{
    rollback_run(0);
}

/* The same with the fd store: a lease taken back leaves the stash before
 * the answer, or its queued copy would keep the lock after our close. */
HELPER_CASE(handoff_rollback_stash)
{
    rollback_run(8);
}


/*
 * A handed-over fd is checked against (lockspace, key): the connection
 * shows its lockspace (lockd_conn_handoff() does), and each fd must be the
 * file named by its key in that directory.  Refused: the file of the same
 * key in another lockspace, and a locked memfd, each put in place of our
 * copy of a real lease.  A lease of that key acquired in the other
 * lockspace is accepted (it is a disk there), and a listing by a
 * connection bound to the first lockspace, and lockdctl who, never name it.
 */
static int
count_row(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
          int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    (void)id, (void)mode, (void)key, (void)disk, (void)pid, (void)uid, (void)uuid, (void)name;
    ++*(int *)userdata;
    return 0;
}

HELPER_CASE(handoff_in_its_space)
{
    lockd_space *sp = space_open_rooted(), *other = NULL;
    char top[PATH_MAX - 64], cmd[PATH_MAX * 3], key[LOCKD_KEY_SIZE];
    const char *keys[1] = {key};
    lockd_space *via = NULL;
    lockd_lease *real, *forged;
    uint64_t vid = 0;
    lockd_conn *c, *c2;
    struct runner run;
    const char *out;
    struct rows rs;
    int n = 0;
    struct guest g;
    struct fsd *s;
    ino_t ino;
    int mfd;

    fsd_top(top, sizeof(top));
    ASSERT_OK(lockd_space_open(test_path("other"), LOCKD_OPEN_CREATE, &other));
    ASSERT_OK(lockd_space_key(sp, "/images/forged.qcow2", key));
    s = helper_with_guest(0, &g, &c);

    /* The file of the key in the other lockspace, in place of ours. */
    ASSERT_OK(lockd_acquire(other, 1, keys, NULL, LOCKD_TRY, &forged));
    ASSERT_OK(lockd_acquire(sp, 1, keys, NULL, LOCKD_TRY, &real));
    ASSERT_OK(dup2(lockd_lease_fd(forged, 0), lockd_lease_fd(real, 0)) < 0 ? -errno : 0);
    ASSERT_ERR(lockd_conn_handoff(c, g.pid, real, NULL, NULL), EBADFD);
    /* A locked memfd in its place. */
    mfd = memfd_create("lease", MFD_CLOEXEC);
    ASSERT_TRUE(mfd >= 0 && ftruncate(mfd, 1) == 0);
    set_lock(mfd, F_WRLCK);
    ASSERT_OK(dup2(mfd, lockd_lease_fd(real, 0)) < 0 ? -errno : 0);
    close(mfd);
    ASSERT_ERR(lockd_conn_handoff(c, g.pid, real, NULL, NULL), EBADFD);
    lockd_lease_forget(real);
    assert_counts(status_on(c), 1, 0);
    ASSERT_CONTAINS(read_file(s->log), "not the file of that key in the lockspace");

    /* A re-exec keeps the connection's lockspace by its path, not its
     * directory fd: the name is read from /proc instead of looked up, and
     * the same forgery is refused that way too. */
    ino = fsd_install(s);
    ASSERT_OK(kill(s->pid, SIGUSR1));
    ASSERT_TRUE(WAIT_UNTIL(fsd_exe_ino(s->pid) == ino, 10000));
    assert_counts(status_on(c), 1, 0);
    ASSERT_OK(lockd_acquire(sp, 1, keys, NULL, LOCKD_TRY, &real));
    ASSERT_OK(dup2(lockd_lease_fd(forged, 0), lockd_lease_fd(real, 0)) < 0 ? -errno : 0);
    ASSERT_ERR(lockd_conn_handoff(c, g.pid, real, NULL, NULL), EBADFD);
    lockd_lease_forget(real);
    out = strstr(read_file(s->log), "not the file of that key in the lockspace");
    ASSERT_TRUE(out && strstr(out + 1, "not the file of that key in the lockspace"));

    /* The same lockspace through a bind mount is another path: the
     * connection shows it again, and the hand-over is accepted. */
    ASSERT_OK(mkdir(test_path("via"), 0700) < 0 ? -errno : 0);
    ASSERT_OK(mount(test_path("space"), test_path("via"), NULL, MS_BIND, NULL) < 0 ? -errno : 0);
    ASSERT_OK(lockd_space_open(test_path("via"), 0, &via));
    ASSERT_OK(lockd_acquire(via, 1, keys, NULL, LOCKD_TRY, &real));
    ASSERT_OK(lockd_conn_handoff(c, g.pid, real, NULL, &vid));
    lockd_lease_forget(real);
    ASSERT_INT_EQ(lockd_conn_release(c, g.pid, 1, &vid), 1);
    lockd_space_close(via);
    ASSERT_OK(umount2(test_path("via"), MNT_DETACH) < 0 ? -errno : 0);

    /* A lease of that key in the other lockspace: a disk there. */
    ASSERT_OK(lockd_conn_handoff(c, g.pid, forged, NULL, NULL));
    lockd_lease_forget(forged);
    assert_counts(status_on(c), 1, 1);
    rs = rows_list(c, g.pid); /* c showed the other lockspace last */
    ASSERT_INT_EQ(rs.n, 1);
    free(rs.r);
    c2 = conn_open(s->sock);
    ASSERT_OK(lockd_conn_bind(c2, sp));
    ASSERT_INT_EQ(lockd_conn_list(c2, 0, key, count_row, &n), 0);
    ASSERT_INT_EQ(n, 0);
    ASSERT_OK(lockd_conn_bind(c2, other));
    ASSERT_INT_EQ(lockd_conn_list(c2, 0, key, count_row, &n), 0);
    ASSERT_INT_EQ(n, 1);
    lockd_conn_close(c2);
    ASSERT_INT_EQ(probe(sp, key), LOCKD_FREE);
    snprintf(cmd, sizeof(cmd), "LOCKD_SOCKET=%s LOCKD_DIR=%s %s/lockdctl who "
             "/images/forged.qcow2 2>&1", s->sock, test_path("space"), top);
    runner_start(&run);
    out = runner_run(&run, cmd);
    if (strstr(out, "guest") || !strstr(out, "free"))
        TEST_FAIL("lockdctl who names a holder in another lockspace:\n%s", out);

    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_TRUE(WAIT_UNTIL(probe(other, key) == LOCKD_FREE, 5000));
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(other);
    lockd_space_close(sp);
}

/*
 * A manager that lost a hand-over's reply (its connection broke) reconnects
 * and sends the same lease fds again.  The helper must answer with the same
 * lease ids and keep one copy: two ids for one open file description would
 * let a release of either unlock both.
 */
HELPER_CASE(handoff_retried)
{
    lockd_space *sp = space_open_rooted();
    uint64_t id1[2], id2[2];
    struct disks d;
    struct guest g;
    struct fsd *s;
    lockd_lease *l;
    lockd_conn *c;

    s = helper_with_guest(0, &g, &c);
    disks_make(&d, sp, "again", 2);
    ASSERT_OK(lockd_acquire(sp, d.n, d.keys, d.modes, LOCKD_TRY, &l));
    ASSERT_OK(lockd_conn_handoff(c, g.pid, l, NULL, id1));
    lockd_conn_close(c);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_handoff(c, g.pid, l, NULL, id2));
    ASSERT_INT_EQ(id2[0], id1[0]);
    ASSERT_INT_EQ(id2[1], id1[1]);
    assert_counts(status_on(c), 1, 2);
    ASSERT_INT_EQ(proc_fds(s->pid, d.key[0]), 1);
    lockd_lease_forget(l);
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(lockd_conn_release(c, g.pid, 2, id1), 2);
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_FREE);
    ASSERT_INT_EQ(probe(sp, d.key[1]), LOCKD_FREE);
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * lockd_conn_handoff() takes the names in the order the keys were given to
 * lockd_acquire(), whatever order the keys sort in: each disk is listed
 * under its own key.  A key given twice is one lease, named by its first
 * non-NULL name; lockd_lease_index() maps the ids back to the caller's
 * order.
 */
HELPER_CASE(handoff_names_in_callers_order)
{
    lockd_space *sp = space_open_rooted();
    const char *keys[DISKS_MAX + 1], *names[DISKS_MAX + 1];
    uint64_t ids[DISKS_MAX];
    struct disks d;
    struct guest g;
    struct fsd *s;
    lockd_lease *l;
    lockd_conn *c;
    size_t i, n, ord[DISKS_MAX];

    s = helper_with_guest(0, &g, &c);
    disks_make(&d, sp, "order", 6);
    /* Given in descending key order (ord[]), so that no name could land on
     * its key by being passed in the lease's (ascending) order. */
    for (i = 0; i < d.n; i++) {
        size_t j = i;

        for (; j > 0 && strcmp(d.key[ord[j - 1]], d.key[i]) < 0; j--)
            ord[j] = ord[j - 1];
        ord[j] = i;
    }
    for (i = 0; i < d.n; i++)
        keys[i] = d.key[ord[i]], names[i] = d.path[ord[i]];
    /* The last disk again, named only the second time. */
    keys[d.n] = keys[d.n - 1];
    names[d.n] = names[d.n - 1];
    names[d.n - 1] = NULL;
    n = d.n + 1;
    ASSERT_OK(lockd_acquire(sp, n, keys, NULL, LOCKD_TRY, &l));
    ASSERT_INT_EQ(lockd_lease_count(l), d.n);
    for (i = 0; i + 1 < d.n; i++)
        ASSERT_TRUE(strcmp(lockd_lease_key(l, i), lockd_lease_key(l, i + 1)) < 0);
    ASSERT_INT_EQ(lockd_lease_index(l, d.n), lockd_lease_index(l, d.n - 1));
    ASSERT_ERR(lockd_lease_index(l, n), EINVAL);
    for (i = 0; i < n; i++)
        ASSERT_STR_EQ(lockd_lease_key(l, (size_t)lockd_lease_index(l, i)), keys[i]);
    ASSERT_OK(lockd_conn_handoff(c, g.pid, l, names, ids));
    for (i = 0; i < d.n; i++)
        d.id[ord[i]] = ids[lockd_lease_index(l, i)];
    lockd_lease_forget(l);
    assert_listed(c, g.pid, &d);
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * A reply that makes no sense leaves the connection out of step: the
 * library shuts it down and every later call fails with -ENOTCONN, instead
 * of taking the next reply for the wrong request.  A fake helper answers
 * the first request with garbage and must then see the client hang up, not
 * send a second request.
 */
static int
garbage_server(void *arg)
{
    int lfd = *(int *)arg, fd;
    static uint8_t buf[65536];
    ssize_t n;

    fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0 || recv(fd, buf, sizeof(buf), 0) <= 0 || send(fd, "junk", 4, 0) != 4)
        return 1;
    /* Anything more from the client is a failure; a hang-up is the pass. */
    n = recv(fd, buf, sizeof(buf), 0);
    return n == 0 ? 0 : 2;
}

HELPER_CASE(client_out_of_step)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    lockd_conn *c = NULL;
    pid_t pid;

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", test_path("junk.sock"));
    ASSERT_TRUE(lfd >= 0);
    ASSERT_OK(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0);
    ASSERT_OK(listen(lfd, 4) < 0 ? -errno : 0);
    pid = spawn(garbage_server, &lfd, &lfd, 1);
    ASSERT_OK(lockd_conn_open(sa.sun_path, &c));
    ASSERT_ERR(lockd_conn_status(c, NULL, NULL, NULL), EPROTO);
    ASSERT_ERR(lockd_conn_status(c, NULL, NULL, NULL), ENOTCONN);
    ASSERT_ERR(lockd_conn_release_notice(c, 1, 1, &(uint64_t){1}), ENOTCONN);
    lockd_conn_close(c);
    ASSERT_INT_EQ(test_wait(pid), 0);
    close(lfd);
}

/* ------------------------------------------------------------------------
 * Credentials
 */

struct unpriv {
    const char *closed_sock, *open_sock;
    pid_t root_guest;    /* registered by root, with a lease */
    pid_t root_other;    /* a root process nobody registered */
    uint64_t root_id;
};

static int
unpriv_main(void *arg)
{
    struct unpriv *u = arg;
    lockd_space *sp = NULL;
    struct disks d;
    struct rows rs;
    lockd_conn *c;
    int pidfd;

    if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
        TEST_FAIL("dropping privileges: %s", strerror(errno));
    /* The directory lets us through; the socket's mode 0600 does not. */
    ASSERT_ERR(lockd_conn_open(u->closed_sock, &c), EACCES);
    c = conn_open(u->open_sock);
    /* Only root stops the helper. */
    ASSERT_ERR(lockd_conn_stop(c, 1), EPERM);
    ASSERT_ERR(lockd_conn_stop(c, 0), EPERM);

    /* A root process: not ours to register, whether root registered it
     * or not; root's owner is not ours to see or release either. */
    ASSERT_ERR(lockd_conn_register(c, u->root_other, -1, NULL, "steal"), EPERM);
    pidfd = pidfd_of(u->root_other);
    if (pidfd >= 0) { /* see pidfd_of() */
        ASSERT_ERR(lockd_conn_register(c, u->root_other, pidfd, NULL, "steal"), EPERM);
        close(pidfd);
    }
    ASSERT_ERR(lockd_conn_register(c, u->root_guest, -1, NULL, "steal"), EPERM);
    rs = rows_list(c, 0);
    ASSERT_INT_EQ(rs.n, 0);
    rs = rows_list(c, u->root_guest);
    ASSERT_INT_EQ(rs.n, 0);
    ASSERT_INT_EQ(owners_count(c), 0);
    ASSERT_ERR(lockd_conn_release(c, u->root_guest, 0, NULL), ESRCH);
    ASSERT_ERR(lockd_conn_release(c, u->root_guest, 1, &u->root_id), ESRCH);
    ASSERT_OK(lockd_conn_release_notice(c, u->root_guest, 1, &u->root_id));

    /* Our own process: registered, a lease of ours handed over, seen. */
    ASSERT_OK(lockd_conn_register(c, getpid(), -1, NULL, "mine"));
    ASSERT_OK(lockd_space_open(test_path("uspace"), 0, &sp));
    memset(&d, 0, sizeof(d));
    d.n = 1;
    strcpy(d.path[0], "/images/nobody.qcow2");
    ASSERT_OK(lockd_space_key(sp, d.path[0], d.key[0]));
    d.keys[0] = d.key[0];
    d.paths[0] = d.path[0];
    ASSERT_OK(hand_over(c, sp, getpid(), &d, NULL));
    rs = rows_list(c, 0);
    ASSERT_INT_EQ(rs.n, 1);
    ASSERT_INT_EQ(rs.r[0].uid, NOBODY);
    ASSERT_INT_EQ(rs.r[0].pid, getpid());
    free(rs.r);
    ASSERT_INT_EQ(owners_count(c), 1);
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_EXCLUSIVE);
    lockd_conn_close(c);
    lockd_space_close(sp);
    return 0;
}

/* Where uid 65534 takes part: the scratch directory open to it, run/ for
 * the helpers' sockets, and uspace/, a directory of its own. */
static void
nobody_setup(void)
{
    if (chmod(test_scratch, 0755) < 0 || mkdir(test_path("run"), 0755) < 0 ||
        mkdir(test_path("uspace"), 0755) < 0 || chown(test_path("uspace"), NOBODY, NOBODY) < 0)
        TEST_FAIL("setup: %s", strerror(errno));
}

/* A helper on run/open whose socket every user may use; not started, so
 * that the case can add its arguments. */
static struct fsd *
open_helper_new(void)
{
    struct fsd *s = fsd_new("run/open", FSD_NOTIFY, 0);

    fsd_arg(s, "--socket-mode");
    fsd_arg(s, "0666");
    return s;
}

HELPER_CASE(credentials)
{
    lockd_space *sp = space_open_rooted(), *usp = NULL;
    struct fsd *closed, *open_;
    struct unpriv u;
    struct guest g, other;
    struct stat st;
    struct disks d;
    struct rows rs;
    char ukey[LOCKD_KEY_SIZE];
    lockd_conn *c;

    nobody_setup();
    closed = fsd_new("run/closed", FSD_NOTIFY, 0);
    fsd_start_ready(closed);
    open_ = open_helper_new();
    fsd_start_ready(open_);
    ASSERT_OK(stat(closed->sock, &st));
    ASSERT_INT_EQ(st.st_mode & 07777, 0600);
    ASSERT_OK(stat(open_->sock, &st));
    ASSERT_INT_EQ(st.st_mode & 07777, 0666);

    guest_start(&g);
    c = conn_open(open_->sock);
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, UUID1, "root's guest"));
    disks_make(&d, sp, "root", 1);
    ASSERT_OK(hand_over(c, sp, g.pid, &d, NULL));

    guest_start(&other);
    u = (struct unpriv){closed->sock, open_->sock, g.pid, other.pid, d.id[0]};
    ASSERT_INT_EQ(test_wait(spawn(unpriv_main, &u, NULL, 0)), 0);
    guest_end(&other);

    /* Root's lease is untouched; the unprivileged owner has exited, so its
     * lease is released; root saw it while it lived (checked via list). */
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_EXCLUSIVE);
    ASSERT_OK(lockd_space_open(test_path("uspace"), LOCKD_OPEN_READONLY, &usp));
    root(usp);
    ASSERT_OK(lockd_space_key(usp, "/images/nobody.qcow2", ukey));
    ASSERT_TRUE(WAIT_UNTIL(probe(usp, ukey) == LOCKD_FREE, 3000));
    ASSERT_TRUE(WAIT_UNTIL(owners_count(c) == 1, 3000));
    rs = rows_list(c, 0);
    ASSERT_INT_EQ(rs.n, 1);
    ASSERT_INT_EQ(rs.r[0].id, d.id[0]);
    ASSERT_INT_EQ(rs.r[0].uid, 0);
    free(rs.r);
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_INT_EQ(fsd_stop(closed), 0);
    ASSERT_INT_EQ(fsd_stop(open_), 0);
    FSD_ASSERT_CLEAN(closed);
    FSD_ASSERT_CLEAN(open_);
    fsd_fini(closed);
    fsd_fini(open_);
    lockd_space_close(usp);
    lockd_space_close(sp);
}

/* ------------------------------------------------------------------------
 * Malformed input, bypassing the library
 *
 * The wire format as lockd.c's protocol section writes it down: a 24-byte
 * header (u32 magic "lkd1", u16 version 1, u16 type, u32 serial, i32
 * status, u32 nfds, u32 len), host byte order.  Written out here on purpose,
 * so that the test does not share the codec it tests.
 */

#define RAW_MAGIC   0x31646b6cu
#define RAW_HDR     24
#define RAW_SETTLE  777u /* serial of the status request that follows garbage */

enum {
    RAW_REGISTER = 1,
    RAW_HANDOFF = 2,
    RAW_RELEASE = 3,
    RAW_NOTICE = 4,
    RAW_LIST = 5,
    RAW_STATUS = 7,
};

static size_t
raw_hdr(uint8_t *buf, uint32_t magic, uint16_t version, uint16_t type, uint32_t serial,
        int32_t status, uint32_t nfds, uint32_t len)
{
    memcpy(buf, &magic, 4);
    memcpy(buf + 4, &version, 2);
    memcpy(buf + 6, &type, 2);
    memcpy(buf + 8, &serial, 4);
    memcpy(buf + 12, &status, 4);
    memcpy(buf + 16, &nfds, 4);
    memcpy(buf + 20, &len, 4);
    return RAW_HDR;
}

/* A well-formed header for a body of len bytes. */
static size_t
raw_ok(uint8_t *buf, uint16_t type, uint32_t serial, uint32_t nfds, uint32_t len)
{
    return raw_hdr(buf, RAW_MAGIC, 1, type, serial, 0, nfds, len);
}

static int
raw_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct timeval tv = {.tv_sec = 10};
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

    strcpy(sa.sun_path, path);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        TEST_FAIL("connect %s: %s", path, strerror(errno));
    return fd;
}

static int
raw_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * FSD_FDS_MAX)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {(void *)buf, len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

    if (nfds > 0) {
        struct cmsghdr *c;

        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    return sendmsg(sock, &mh, MSG_NOSIGNAL) < 0 ? -errno : 0;
}

/*
 * After garbage: ask for the status and read until its answer.  Replies
 * before it must be error replies with empty bodies, echoing want_serial
 * if it is not 0; *ret_err gets the first one's status (0 if none).
 * Returns 1 if the status was answered, 0 if the helper hung up on us.
 */
static int
raw_settle(int sock, uint32_t want_serial, int32_t *ret_err)
{
    static uint8_t buf[65536 + 1];
    uint8_t req[RAW_HDR];

    *ret_err = 0;
    raw_ok(req, RAW_STATUS, RAW_SETTLE, 0, 0);
    if (raw_send(sock, req, sizeof(req), NULL, 0) < 0)
        return 0;
    for (;;) {
        ssize_t n = recv(sock, buf, sizeof(buf), 0);
        uint32_t magic, serial, nfds, len;
        uint16_t version;
        int32_t status;

        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 0;
        if (n < 0)
            TEST_FAIL("the helper neither answered nor hung up: %s", strerror(errno));
        if (n < RAW_HDR)
            TEST_FAIL("a reply of %zd bytes", n);
        memcpy(&magic, buf, 4);
        memcpy(&version, buf + 4, 2);
        memcpy(&serial, buf + 8, 4);
        memcpy(&status, buf + 12, 4);
        memcpy(&nfds, buf + 16, 4);
        memcpy(&len, buf + 20, 4);
        ASSERT_INT_EQ(magic, RAW_MAGIC);
        ASSERT_INT_EQ(version, 1);
        ASSERT_INT_EQ(nfds, 0);
        ASSERT_INT_EQ(len, (uint32_t)n - RAW_HDR);
        if (serial == RAW_SETTLE) {
            ASSERT_INT_EQ(status, 0);
            return 1;
        }
        if (status >= 0)
            TEST_FAIL("garbage was answered with status %d", status);
        ASSERT_INT_EQ(len, 0);
        if (want_serial)
            ASSERT_INT_EQ(serial, want_serial);
        if (*ret_err == 0)
            *ret_err = status;
    }
}

/* What a case expects of one piece of garbage: a hang-up or -EPROTO; that
 * exact error; or, for a notice (never answered), also nothing. */
enum { HUP_OR_EPROTO, EXPECT_ERR, QUIET_OK };

struct mal {
    struct fsd *s;
    lockd_conn *keep;
    lockd_space *sp;
    const char *held_key;
    int32_t guest;
    int base_fds; /* the helper's fds with only keep connected */
};

static void
mal_check(const char *what, int answered, int32_t got, int expect, int32_t err)
{
    if (expect == EXPECT_ERR && got != err)
        TEST_FAIL("%s: answered %d, expected %d", what, got, err);
    if (expect == HUP_OR_EPROTO && answered && got != -EPROTO)
        TEST_FAIL("%s: answered %d, expected -EPROTO or a hang-up", what, got);
    if (expect == QUIET_OK && answered && got != 0 && got != -EPROTO)
        TEST_FAIL("%s: answered %d", what, got);
}

/* The helper is up, answers the connection it had and a new one, and the
 * lease it held is held. */
static void
mal_alive(const struct mal *m, const char *what)
{
    struct counts k;

    fsd_lock(m->s);
    if (m->s->pid == 0 || m->s->exits != 0)
        TEST_FAIL("%s: the helper exited (status %d)", what, m->s->last_status);
    fsd_unlock(m->s);
    /* Every connection we closed is gone and every fd we sent closed: no
     * fd leaks (and no connection limit hit by the next check). */
    if (m->base_fds && !WAIT_UNTIL(proc_fds(m->s->pid, NULL) <= m->base_fds, 5000))
        TEST_FAIL("%s: the helper has %d fds, %d before", what, proc_fds(m->s->pid, NULL),
                  m->base_fds);
    k = status_on(m->keep);
    if (k.owners != 1 || k.leases != 1)
        TEST_FAIL("%s: %llu owners, %llu leases", what, (unsigned long long)k.owners,
                  (unsigned long long)k.leases);
    assert_counts(status_at(m->s->sock), 1, 1);
    ASSERT_INT_EQ(probe(m->sp, m->held_key), LOCKD_EXCLUSIVE);
}

/* Send one piece of garbage (with fds) on a fresh connection and check
 * the outcome; the fds are closed here, and the helper must close its
 * copies: pipe write ends whose read ends must see the hang-up. */
static void
mal_try(const struct mal *m, const char *what, const void *buf, size_t len, const int *fds,
        size_t nfds, int expect, int32_t err, uint32_t serial)
{
    int sock = raw_connect(m->s->sock), answered;
    int32_t got;

    ASSERT_OK(raw_send(sock, buf, len, fds, nfds));
    answered = raw_settle(sock, serial, &got);
    close(sock);
    mal_check(what, answered, got, expect, err);
    mal_alive(m, what);
}

/* A pipe whose write end goes to the helper: once everyone has closed that
 * end, the read end polls POLLHUP. */
static void
mal_fds_gone(int rd, const char *what)
{
    struct pollfd p = {.fd = rd, .events = POLLIN};

    if (!WAIT_UNTIL(poll(&p, 1, 0) == 1 && (p.revents & POLLHUP), 5000))
        TEST_FAIL("%s: the helper kept an fd it was sent", what);
    close(rd);
}

static void
mal_with_pipes(const struct mal *m, const char *what, const void *buf, size_t len,
               size_t nfds, int expect, int32_t err)
{
    int rd[FSD_FDS_MAX], wr[FSD_FDS_MAX];

    for (size_t i = 0; i < nfds; i++) {
        int p[2];

        if (pipe2(p, O_CLOEXEC) < 0)
            TEST_FAIL("pipe: %s", strerror(errno));
        rd[i] = p[0];
        wr[i] = p[1];
    }
    {
        int sock = raw_connect(m->s->sock), answered;
        int32_t got;

        ASSERT_OK(raw_send(sock, buf, len, wr, nfds));
        for (size_t i = 0; i < nfds; i++)
            close(wr[i]);
        answered = raw_settle(sock, 0, &got);
        close(sock);
        mal_check(what, answered, got, expect, err);
    }
    for (size_t i = 0; i < nfds; i++)
        mal_fds_gone(rd[i], what);
    mal_alive(m, what);
}

static size_t
body_register(uint8_t *b, int32_t pid, const char *name, size_t nlen)
{
    uint16_t l = (uint16_t)nlen;

    memcpy(b, &pid, 4);
    memset(b + 4, 0, 16);
    memcpy(b + 20, &l, 2);
    memcpy(b + 22, name, nlen);
    return 22 + nlen;
}

/* HANDOFF of count items for pid, each with the given mode and no name. */
static size_t
body_handoff(uint8_t *b, int32_t pid, uint16_t count, uint8_t mode)
{
    size_t at = 6;

    memcpy(b, &pid, 4);
    memcpy(b + 4, &count, 2);
    for (uint16_t i = 0; i < count; i++) {
        b[at] = mode;
        memset(b + at + 1, 0xa0 + (i & 15), 32);
        memset(b + at + 33, 0, 2);
        at += 35;
    }
    return at;
}

static void
malformed_headers(const struct mal *m)
{
    static uint8_t big[70000];
    uint8_t b[256] = {0};

    raw_hdr(b, RAW_MAGIC, 2, RAW_STATUS, 5, 0, 0, 0);
    mal_try(m, "version 2", b, RAW_HDR, NULL, 0, EXPECT_ERR, -EPROTONOSUPPORT, 5);
    raw_hdr(b, RAW_MAGIC, 0xffff, RAW_STATUS, 6, 0, 0, 0);
    mal_try(m, "version 65535", b, RAW_HDR, NULL, 0, EXPECT_ERR, -EPROTONOSUPPORT, 6);
    raw_ok(b, RAW_STATUS, 7, 0, 0);
    mal_try(m, "10 bytes", b, 10, NULL, 0, HUP_OR_EPROTO, 0, 0);
    mal_try(m, "1 byte", b, 1, NULL, 0, HUP_OR_EPROTO, 0, 0);
    mal_try(m, "0 bytes", b, 0, NULL, 0, HUP_OR_EPROTO, 0, 0);
    raw_ok(big, RAW_STATUS, 8, 0, sizeof(big) - RAW_HDR);
    mal_try(m, "70,000 bytes", big, sizeof(big), NULL, 0, HUP_OR_EPROTO, 0, 0);
    raw_hdr(b, 0x12345678, 1, RAW_STATUS, 9, 0, 0, 0);
    mal_try(m, "bad magic", b, RAW_HDR, NULL, 0, HUP_OR_EPROTO, 0, 0);
    raw_ok(b, 99, 10, 0, 0);
    mal_try(m, "type 99", b, RAW_HDR, NULL, 0, HUP_OR_EPROTO, 0, 0);
    raw_ok(b, 0, 11, 0, 0);
    mal_try(m, "type 0", b, RAW_HDR, NULL, 0, HUP_OR_EPROTO, 0, 0);
    raw_hdr(b, RAW_MAGIC, 1, RAW_STATUS, 12, -5, 0, 0);
    mal_try(m, "status in a request", b, RAW_HDR, NULL, 0, HUP_OR_EPROTO, 0, 0);
    raw_ok(b, RAW_STATUS, 0, 0, 0);
    mal_try(m, "serial 0 on a request", b, RAW_HDR, NULL, 0, HUP_OR_EPROTO, 0, 0);
    raw_ok(b, RAW_STATUS, 13, 0, 100);
    mal_try(m, "len beyond the message", b, RAW_HDR + 10, NULL, 0, HUP_OR_EPROTO, 0, 0);
    raw_ok(b, RAW_STATUS, 14, 0, 0);
    mal_try(m, "len short of the message", b, RAW_HDR + 10, NULL, 0, HUP_OR_EPROTO, 0, 0);
}

static void
malformed_fds(const struct mal *m)
{
    static uint8_t b[RAW_HDR + 6 + 35 * FSD_FDS_MAX];
    size_t n;

    n = body_register(b + RAW_HDR, m->guest, "x", 1);
    raw_ok(b, RAW_REGISTER, 20, 2, (uint32_t)n);
    mal_with_pipes(m, "register announcing 2 fds, sending 1", b, RAW_HDR + n, 1,
                   HUP_OR_EPROTO, 0);
    raw_ok(b, RAW_STATUS, 21, 0, 0);
    mal_with_pipes(m, "status announcing 0 fds, sending 1", b, RAW_HDR, 1, HUP_OR_EPROTO, 0);
    raw_ok(b, RAW_REGISTER, 22, 1, (uint32_t)n);
    mal_try(m, "register announcing 1 fd, sending none", b, RAW_HDR + n, NULL, 0,
            HUP_OR_EPROTO, 0, 0);
    n = body_handoff(b + RAW_HDR, m->guest, 2, 0);
    raw_ok(b, RAW_HANDOFF, 23, 1, (uint32_t)n);
    mal_with_pipes(m, "handoff of 2 with 1 fd", b, RAW_HDR + n, 1, HUP_OR_EPROTO, 0);
    /* Well formed, but the fds are pipes, not leases. */
    raw_ok(b, RAW_HANDOFF, 24, 2, (uint32_t)n);
    mal_with_pipes(m, "handoff of 2 pipes", b, RAW_HDR + n, 2, EXPECT_ERR, -EBADFD);
    n = body_handoff(b + RAW_HDR, m->guest, FSD_FDS_MAX, 0);
    raw_ok(b, RAW_HANDOFF, 25, FSD_FDS_MAX, (uint32_t)n);
    mal_with_pipes(m, "handoff of 253 pipes", b, RAW_HDR + n, FSD_FDS_MAX, EXPECT_ERR,
                   -EBADFD);
    /* An empty message is a hang-up: the fds it carried are closed all the
     * same (fuzz-dispatch found them kept open). */
    mal_with_pipes(m, "an empty message with 2 fds", b, 0, 2, HUP_OR_EPROTO, 0);
}

static void
malformed_bodies(const struct mal *m)
{
    uint8_t b[512] = {0};
    size_t n;
    uint16_t five = 5;
    uint64_t id = 1;

    raw_ok(b, RAW_REGISTER, 30, 0, 3);
    mal_try(m, "register of 3 bytes", b, RAW_HDR + 3, NULL, 0, EXPECT_ERR, -EPROTO, 30);
    n = body_register(b + RAW_HDR, m->guest, "a\0b", 3);
    raw_ok(b, RAW_REGISTER, 31, 0, (uint32_t)n);
    mal_try(m, "a name with a NUL", b, RAW_HDR + n, NULL, 0, EXPECT_ERR, -EPROTO, 31);
    n = body_register(b + RAW_HDR, 0, "x", 1);
    raw_ok(b, RAW_REGISTER, 32, 0, (uint32_t)n);
    mal_try(m, "register pid 0", b, RAW_HDR + n, NULL, 0, EXPECT_ERR, -EPROTO, 32);
    n = body_register(b + RAW_HDR, -5, "x", 1);
    raw_ok(b, RAW_REGISTER, 33, 0, (uint32_t)n);
    mal_try(m, "register pid -5", b, RAW_HDR + n, NULL, 0, EXPECT_ERR, -EPROTO, 33);
    memset(b + RAW_HDR, 0, 4 + 1 + 32 + 8 + 1);
    raw_ok(b, RAW_LIST, 34, 0, 4 + 1 + 32 + 8 + 1);
    mal_try(m, "list with a byte too many", b, RAW_HDR + 46, NULL, 0, EXPECT_ERR, -EPROTO,
            34);
    memcpy(b + RAW_HDR, &m->guest, 4);
    memcpy(b + RAW_HDR + 4, &five, 2);
    memcpy(b + RAW_HDR + 6, &id, 8);
    raw_ok(b, RAW_RELEASE, 35, 0, 14);
    mal_try(m, "release of 5 ids with 1", b, RAW_HDR + 14, NULL, 0, EXPECT_ERR, -EPROTO, 35);
    raw_ok(b, RAW_NOTICE, 36, 0, 14);
    mal_try(m, "notice with a serial", b, RAW_HDR + 14, NULL, 0, QUIET_OK, 0, 0);
    n = body_handoff(b + RAW_HDR, m->guest, 1, 7);
    raw_ok(b, RAW_HANDOFF, 37, 1, (uint32_t)n);
    mal_with_pipes(m, "handoff with mode 7", b, RAW_HDR + n, 1, EXPECT_ERR, -EPROTO);
}

/* Clients that go away: mid-request, and many at once. */
static void
malformed_disconnects(const struct mal *m)
{
    static int socks[1100];
    uint8_t b[RAW_HDR + 64] = {0};

    for (int i = 0; i < 200; i++) {
        int sock = raw_connect(m->s->sock);

        if (i % 2) {
            raw_ok(b, RAW_STATUS, 40, 0, 0);
            ASSERT_OK(raw_send(sock, b, RAW_HDR, NULL, 0));
        } else {
            memset(b + RAW_HDR, 0, 45);
            raw_ok(b, RAW_LIST, 41, 0, 45);
            ASSERT_OK(raw_send(sock, b, RAW_HDR + 45, NULL, 0));
        }
        close(sock);
    }
    mal_alive(m, "200 requests whose senders left");
    /* More than the helper's connection limit (1024), all at once. */
    for (int i = 0; i < 1100; i++)
        socks[i] = raw_connect(m->s->sock);
    for (int i = 0; i < 1100; i++)
        close(socks[i]);
    mal_alive(m, "1,100 connections opened and dropped");
    for (int i = 0; i < 1000; i++)
        close(raw_connect(m->s->sock));
    mal_alive(m, "1,000 connections one after another");
}

HELPER_CASE(malformed)
{
    lockd_space *sp = space_open_rooted();
    struct guest g;
    struct disks d;
    struct fsd *s;
    struct mal m;
    int base;

    /* No NOTIFY_SOCKET: each sd_notify() opens a socket for a moment,
     * which would blur the count of the helper's fds. */
    s = fsd_new("helper", FSD_ACTIVATE, 0);
    fsd_start_ready(s);
    guest_start(&g);
    disks_make(&d, sp, "malformed", 1);
    m = (struct mal){s, conn_open(s->sock), sp, d.key[0], g.pid, 0};
    ASSERT_OK(lockd_conn_register(m.keep, g.pid, -1, NULL, "guest"));
    ASSERT_OK(hand_over(m.keep, sp, g.pid, &d, NULL));
    /* Only keep is connected, and nothing is in flight. */
    base = m.base_fds = proc_fds(s->pid, NULL);
    mal_alive(&m, "start");

    malformed_headers(&m);
    malformed_fds(&m);
    malformed_bodies(&m);
    malformed_disconnects(&m);

    /* Every connection gone, every fd sent closed: no fd leaked. */
    if (!WAIT_UNTIL(proc_fds(s->pid, NULL) <= base, 5000))
        TEST_FAIL("the helper has %d fds, %d before", proc_fds(s->pid, NULL), base);
    lockd_conn_close(m.keep);
    guest_end(&g);
    ASSERT_TRUE(WAIT_UNTIL(probe(sp, d.key[0]) == LOCKD_FREE, 3000));
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/* ------------------------------------------------------------------------
 * Out of descriptors
 */

HELPER_CASE(fd_exhaustion)
{
    lockd_space *sp = space_open_rooted();
    struct rlimit rl = {.rlim_cur = 48, .rlim_max = 48};
    char keys[64][LOCKD_KEY_SIZE];
    struct disks one;
    int ok = 0, r = 0;
    struct guest g;
    struct fsd *s;
    lockd_conn *c;

    s = helper_with_guest(0, &g, &c);
    ASSERT_OK(prlimit(s->pid, RLIMIT_NOFILE, &rl, NULL));
    for (int i = 0; i < 64; i++) {
        char tag[16];

        snprintf(tag, sizeof(tag), "fd%d", i);
        disks_make(&one, sp, tag, 1);
        r = hand_over(c, sp, g.pid, &one, NULL);
        if (r < 0)
            break;
        memcpy(keys[ok++], one.key[0], LOCKD_KEY_SIZE);
    }
    ASSERT_ERR(r, EMFILE);
    ASSERT_TRUE(ok > 0);
    /* It still answers, on this connection and on new ones, and holds
     * what it had, and not what it could not take. */
    assert_counts(status_on(c), 1, (uint64_t)ok);
    for (int i = 0; i < 3; i++)
        assert_counts(status_at(s->sock), 1, (uint64_t)ok);
    ASSERT_INT_EQ(probe(sp, one.key[0]), LOCKD_FREE);
    for (int i = 0; i < ok; i++)
        ASSERT_INT_EQ(probe(sp, keys[i]), LOCKD_EXCLUSIVE);
    /* Releasing makes room again. */
    ASSERT_INT_EQ(lockd_conn_release(c, g.pid, 0, NULL), ok);
    ASSERT_OK(hand_over(c, sp, g.pid, &one, NULL));
    ASSERT_INT_EQ(probe(sp, one.key[0]), LOCKD_EXCLUSIVE);
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_TRUE(WAIT_UNTIL(probe(sp, one.key[0]) == LOCKD_FREE, 3000));
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * Registering when the helper is out of fds, at every headroom from none to
 * a few: with a pidfd sent along or without, the answer is success or
 * -EMFILE, never -ESRCH ("no such process") for a live process.
 */
/*
 * lockd_conn_open_in(): a connection in the caller's memory, for a child
 * between fork() and exec() (libvirt registers QEMU there).  The child of
 * a process whose other thread is inside malloc() all the time registers
 * a guest; bad memory is refused.
 */
static volatile int malloc_stop;

static void *
malloc_hammer(void *arg)
{
    (void)arg;
    while (!malloc_stop)
        free(malloc(64 + (size_t)(rand() % 4096)));
    return NULL;
}

HELPER_CASE(conn_in_place)
{
    static unsigned char mem[LOCKD_CONN_SIZE] __attribute__((aligned(16)));
    struct guest g, g2;
    lockd_conn *c, *ic;
    struct fsd *s = helper_with_guest(0, &g, &c);
    pthread_t t;
    pid_t pid;
    int st;

    ASSERT_ERR(lockd_conn_open_in(mem, LOCKD_CONN_SIZE - 1024 * 63, s->sock, &ic),
               EINVAL);
    ASSERT_ERR(lockd_conn_open_in(mem + 1, LOCKD_CONN_SIZE - 1, s->sock, &ic), EINVAL);
    ASSERT_ERR(lockd_conn_open_in(mem, sizeof(mem), NULL, &ic), EINVAL);
    ASSERT_ERR(lockd_conn_open_in(mem, sizeof(mem), test_path("nosuch.sock"), &ic),
               ENOENT);
    guest_start(&g2);
    ASSERT_INT_EQ(pthread_create(&t, NULL, malloc_hammer, NULL), 0);
    pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        int r = lockd_conn_open_in(mem, sizeof(mem), s->sock, &ic);

        if (r == 0)
            r = lockd_conn_register_on_loss(ic, g2.pid, -1, UUID1, "in-place",
                                            LOCKD_ON_LOSS_REPORT, NULL);
        lockd_conn_close(ic);
        _exit(r == 0 ? 0 : 1);
    }
    ASSERT_INT_EQ(waitpid(pid, &st, 0), pid);
    malloc_stop = 1;
    ASSERT_INT_EQ(pthread_join(t, NULL), 0);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ASSERT_INT_EQ(owners_count(c), 2);
    guest_end(&g2);
    guest_end(&g);
    lockd_conn_close(c);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
}

HELPER_CASE(register_out_of_fds)
{
    lockd_space *sp = space_open_rooted();
    struct rlimit rl = {.rlim_cur = 48, .rlim_max = 48};
    struct disks one;
    struct guest g, g2;
    struct fsd *s;
    lockd_conn *c;
    int r = 0, emfile = 0;

    s = helper_with_guest(0, &g, &c);
    ASSERT_OK(prlimit(s->pid, RLIMIT_NOFILE, &rl, NULL));
    for (int i = 0; i < 64 && r == 0; i++) {
        char tag[16];

        snprintf(tag, sizeof(tag), "fd%d", i);
        disks_make(&one, sp, tag, 1);
        r = hand_over(c, sp, g.pid, &one, NULL);
    }
    ASSERT_ERR(r, EMFILE);
    for (int i = 0; i < 8; i++) {
        struct rows rs;

        /* A new process each time: only a first registration opens or
         * checks a pidfd. */
        for (int k = 0; k < 2; k++) {
            int pidfd;

            guest_start(&g2);
            pidfd = pidfd_of(g2.pid);
            r = lockd_conn_register(c, g2.pid, k ? pidfd : -1, NULL, "late");
            if (r != 0 && r != -EMFILE)
                TEST_FAIL("register (%s pidfd) with %d leases released: %s",
                          k ? "with" : "without", i, strerror(-r));
            emfile += r == -EMFILE;
            if (pidfd >= 0)
                close(pidfd);
            guest_end(&g2);
        }
        rs = rows_list(c, g.pid);
        ASSERT_TRUE(rs.n > 0);
        ASSERT_INT_EQ(lockd_conn_release(c, g.pid, 1, &rs.r[0].id), 1);
        free(rs.r);
    }
    ASSERT_TRUE(emfile > 0);
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/* ------------------------------------------------------------------------
 * Idle exit and socket activation
 */

HELPER_CASE(idle_exit_reactivation)
{
    lockd_space *sp = space_open_rooted();
    struct guest g;
    struct disks d;
    struct fsd *s;
    lockd_conn *c;

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY | FSD_REACTIVATE, 0);
    fsd_arg(s, "--timeout");
    fsd_arg(s, "1");
    fsd_start_ready(s);
    /* Idle: it exits by itself, cleanly. */
    ASSERT_TRUE(FSD_WAIT(s, s->exits == 1 && s->last_status == 0, 5000));
    /* A client connects: systemd starts it again, and it answers. */
    c = conn_open(s->sock);
    assert_counts(status_on(c), 0, 0);
    ASSERT_TRUE(FSD_WAIT(s, s->starts == 2, 5000));
    /* A held lease keeps it running, with no client connected. */
    guest_start(&g);
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, NULL, "guest"));
    disks_make(&d, sp, "idle", 1);
    ASSERT_OK(hand_over(c, sp, g.pid, &d, NULL));
    lockd_conn_close(c);
    ASSERT_TRUE(!FSD_WAIT(s, s->exits != 1, 2500));
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_EXCLUSIVE);
    /* The owner exits: nothing held, so it exits again. */
    guest_end(&g);
    ASSERT_TRUE(FSD_WAIT(s, s->exits == 2 && s->last_status == 0, 5000));
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_FREE);
    assert_counts(status_at(s->sock), 0, 0);
    ASSERT_TRUE(FSD_WAIT(s, s->starts == 3, 5000));
    ASSERT_TRUE(FSD_WAIT(s, s->exits == 3, 5000));
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/* ------------------------------------------------------------------------
 * systemd units
 */

/* Copy a unit, with ExecStart='s binary replaced by the built helper. */
static void
unit_copy(const char *src, const char *dst, const char *helper)
{
    FILE *in = fopen(src, "r"), *out;
    char line[1024];

    if (!in)
        TEST_FAIL("%s: %s (the units belong in systemd/)", src, strerror(errno));
    out = fopen(dst, "w");
    if (!out)
        TEST_FAIL("%s: %s", dst, strerror(errno));
    while (fgets(line, sizeof(line), in)) {
        if (strncmp(line, "ExecStart=", 10) == 0)
            fprintf(out, "ExecStart=%s%s", helper, line + 10 + strcspn(line + 10, " \n"));
        else
            fputs(line, out);
    }
    fclose(in);
    if (fclose(out) != 0)
        TEST_FAIL("%s: %s", dst, strerror(errno));
}

/* systemd-analyze [--user] verify the socket and service in dir: it must
 * exit 0 and say nothing. */
static void
units_verify(const char *dir, int user)
{
    char sock[PATH_MAX], svc[PATH_MAX], out[PATH_MAX], *text;
    pid_t pid;
    int st;

    snprintf(sock, sizeof(sock), "%s/lockd-helper.socket", dir);
    snprintf(svc, sizeof(svc), "%s/lockd-helper.service", dir);
    snprintf(out, sizeof(out), "%s/verify.out", dir);
    pid = fork();
    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);

        if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
            _exit(127);
        /* --user needs a runtime directory; none of the machine's. */
        setenv("XDG_RUNTIME_DIR", test_path("rt"), 1);
        setenv("HOME", test_scratch, 1);
        execlp("systemd-analyze", "systemd-analyze", user ? "--user" : "--system", "verify",
               "--man=no", sock, svc, (char *)NULL);
        _exit(127);
    }
    st = test_wait(pid);
    text = read_file(out);
    if (st != 0 || text[0])
        TEST_FAIL("systemd-analyze%s verify %s: status %d:\n%s", user ? " --user" : "", dir,
                  st, text);
}

/* The number after key in text, or -1. */
static long
unit_number(const char *text, const char *key)
{
    const char *p = strstr(text, key);

    return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

/* The store the unit allows and the one the helper is told must match, or
 * systemd closes what the helper believes stored; the helper needs 3. */
static void
units_store_matches(const char *path)
{
    char *svc = strdup(read_file(path));
    long max = unit_number(svc, "\nFileDescriptorStoreMax="), arg;

    arg = unit_number(svc, "--fd-store-max ");
    if (arg < 0)
        arg = unit_number(svc, "--fd-store-max=");
    if (max < 3 || arg != max)
        TEST_FAIL("%s: FileDescriptorStoreMax=%ld but --fd-store-max %ld", path, max, arg);
    free(svc);
}

HELPER_CASE(systemd_units)
{
    static const char *const names[] = {"lockd-helper.socket", "lockd-helper.service"};
    char top[PATH_MAX - 64], helper[PATH_MAX], src[PATH_MAX], dst[PATH_MAX], *text;

    fsd_top(top, sizeof(top));
    snprintf(helper, sizeof(helper), "%s/lockd-helper", top);
    if (access(helper, X_OK) < 0)
        TEST_FAIL("%s: %s (make lockd-helper)", helper, strerror(errno));
    if (mkdir(test_path("rt"), 0700) < 0 || mkdir(test_path("system"), 0755) < 0 ||
        mkdir(test_path("user"), 0755) < 0)
        TEST_FAIL("mkdir: %s", strerror(errno));
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof(src), "%s/systemd/%s", top, names[i]);
        snprintf(dst, sizeof(dst), "%s/%s", test_path("system"), names[i]);
        unit_copy(src, dst, helper);
        snprintf(src, sizeof(src), "%s/systemd/user/%s", top, names[i]);
        snprintf(dst, sizeof(dst), "%s/%s", test_path("user"), names[i]);
        unit_copy(src, dst, helper);
    }
    units_verify(test_path("system"), 0);
    units_verify(test_path("user"), 1);

    /* What the helper's guarantees rest on. */
    snprintf(src, sizeof(src), "%s/systemd/lockd-helper.service", top);
    units_store_matches(src);
    text = read_file(src);
    ASSERT_CONTAINS(text, "\nType=notify\n");
    ASSERT_CONTAINS(text, "\nRestart=on-failure\n");
    ASSERT_CONTAINS(text, "\nLimitNOFILE=");
    ASSERT_CONTAINS(text, "\nOOMScoreAdjust=");
    ASSERT_CONTAINS(text, "\nProtectSystem=strict\n");
    /* A stop or restart would free every running guest's lease. */
    ASSERT_CONTAINS(text, "\nRefuseManualStop=yes\n");
    ASSERT_CONTAINS(text, " machine.slice\n");
    /* Past a start limit systemd marks the unit failed and empties the
     * store: no limit. */
    ASSERT_CONTAINS(text, "\nStartLimitIntervalSec=0\n");
    snprintf(src, sizeof(src), "%s/systemd/user/lockd-helper.service", top);
    units_store_matches(src);
    ASSERT_CONTAINS(read_file(src), "\nStartLimitIntervalSec=0\n");
    snprintf(src, sizeof(src), "%s/systemd/lockd-helper.socket", top);
    text = read_file(src);
    ASSERT_CONTAINS(text, "\nListenSequentialPacket=/run/lockd/helper.sock\n");
    ASSERT_CONTAINS(text, "\nSocketMode=0600\n");
    ASSERT_CONTAINS(text, "\nRefuseManualStop=yes\n");
}

/*
 * lockd-helper --socket PATH replaces only a stale socket: a regular file
 * (a disk image, after a typo), a FIFO or a directory at PATH is refused
 * with a line naming it, and left as it was.
 */
HELPER_CASE(socket_path_not_socket)
{
    char helper[PATH_MAX], *log;
    const char *file = test_path("disk.img"), *fifo = test_path("fifo");
    const char *paths[] = {file, fifo, test_path("dir")};
    struct stat st;
    int fd;

    fsd_helper_source(helper, sizeof(helper));
    fd = open(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_TRUE(fd >= 0 && write(fd, "guest data", 10) == 10);
    close(fd);
    ASSERT_OK(sys(mkfifo(fifo, 0600)));
    ASSERT_OK(sys(mkdir(test_path("dir"), 0755)));
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        char **argv = test_wrapped((char *[]){helper, "--socket", (char *)paths[i], NULL});
        pid_t pid = fork();

        if (pid < 0)
            TEST_FAIL("fork: %s", strerror(errno));
        if (pid == 0) {
            int out = open(test_path("helper.log"), O_WRONLY | O_CREAT | O_TRUNC, 0644);

            if (out < 0 || dup2(out, 2) < 0)
                _exit(126);
            unsetenv("LISTEN_FDS"), unsetenv("NOTIFY_SOCKET");
            execv(argv[0], argv);
            _exit(127);
        }
        ASSERT_TRUE(test_wait(pid) != 0);
        log = read_file(test_path("helper.log"));
        ASSERT_CONTAINS(log, paths[i]);
        ASSERT_CONTAINS(log, "something other than a socket is there");
    }
    ASSERT_OK(sys(stat(file, &st)));
    ASSERT_TRUE(S_ISREG(st.st_mode) && st.st_size == 10);
    ASSERT_OK(sys(lstat(fifo, &st)));
    ASSERT_TRUE(S_ISFIFO(st.st_mode));
    ASSERT_OK(sys(stat(test_path("dir"), &st)));
    ASSERT_TRUE(S_ISDIR(st.st_mode));
}

/*
 * How most cases of this wave start: a helper under the fake systemd (with
 * a store of store_max fds, 0 for none), one guest registered as "guest",
 * and n disks tagged tag handed over for it (our copies of the leases in
 * *ret_lease, or forgotten if ret_lease is NULL); and how they end.
 */
struct one {
    lockd_space *sp;
    struct fsd *s;
    struct guest g;
    struct disks d;
    lockd_conn *c;
};

static void
one_start(struct one *t, unsigned store_max, const char *tag, size_t n, lockd_lease **ret_lease)
{
    t->sp = space_open_rooted();
    t->s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, store_max);
    fsd_start_ready(t->s);
    guest_start(&t->g);
    t->c = conn_open(t->s->sock);
    ASSERT_OK(lockd_conn_register(t->c, t->g.pid, -1, NULL, "guest"));
    disks_make(&t->d, t->sp, tag, n);
    ASSERT_OK(hand_over(t->c, t->sp, t->g.pid, &t->d, ret_lease));
}

/* The guest exits (its leases are freed) and the helper stops cleanly. */
static void
one_end(struct one *t)
{
    lockd_conn_close(t->c);
    guest_end(&t->g);
    ASSERT_TRUE(WAIT_UNTIL(disks_probe_count(t->sp, &t->d, LOCKD_FREE) == t->d.n, 5000));
    ASSERT_INT_EQ(fsd_stop(t->s), 0);
    FSD_ASSERT_CLEAN(t->s);
    fsd_fini(t->s);
    lockd_space_close(t->sp);
}

/*
 * A one-way notice with no ids, "all of this owner", is refused however it
 * comes: sent late, it would free the leases handed over after it was
 * written.  The library will not send one; here one is sent raw.
 */
HELPER_CASE(notice_all_refused)
{
    uint8_t msg[RAW_HDR + 6];
    uint16_t zero = 0;
    struct one t;
    int32_t pid, err;
    int sock;

    one_start(&t, 0, "all", 2, NULL);
    pid = t.g.pid;
    sock = raw_connect(t.s->sock);
    raw_ok(msg, RAW_NOTICE, 0, 0, 6);
    memcpy(msg + RAW_HDR, &pid, 4);
    memcpy(msg + RAW_HDR + 4, &zero, 2);
    ASSERT_OK(raw_send(sock, msg, sizeof(msg), NULL, 0));
    /* No reply to a notice; the status after it is the first answer. */
    ASSERT_INT_EQ(raw_settle(sock, 0, &err), 1);
    ASSERT_INT_EQ(err, 0);
    close(sock);
    ASSERT_INT_EQ(disks_probe_count(t.sp, &t.d, LOCKD_EXCLUSIVE), 2);
    assert_listed(t.c, t.g.pid, &t.d);
    ASSERT_CONTAINS(read_file(t.s->log), "refused notice from uid 0");
    one_end(&t);
}

/*
 * Names come from clients and go into the log: a newline in an owner's or a
 * disk's name must not start a line of the client's choosing (a "<0>" line
 * is an emergency to journald).  Control bytes are written as \xHH.
 */
HELPER_CASE(log_escapes_names)
{
    lockd_space *sp = space_open_rooted();
    const char *evil = "guest\n<0>forged emergency\r\\";
    char *log, *line;
    struct disks d;
    struct guest g;
    struct fsd *s;
    lockd_conn *c;

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 0);
    fsd_start_ready(s);
    guest_start(&g);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, NULL, evil));
    disks_make(&d, sp, "evil", 1);
    ASSERT_OK(hand_over(c, sp, g.pid, &d, NULL));
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_TRUE(FSD_WAIT(s, strstr(read_file(s->log), ") gone") != NULL, 5000));
    log = read_file(s->log);
    ASSERT_CONTAINS(log, "guest\\x0a<0>forged emergency\\x0d\\x5c");
    for (line = log; line; line = strchr(line, '\n'), line = line ? line + 1 : NULL)
        if (*line && (line[0] != '<' || line[1] < '3' || line[1] > '7' || line[2] != '>'))
            TEST_FAIL("a log line that is not the helper's: %.60s", line);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/* Unlock one copy of a lease's open file description, as a manager that
 * took a hand-over for failed would release its own copy. */
static void
unlock_copy(const lockd_lease *l, const char *key)
{
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};

    for (size_t i = 0; i < lockd_lease_count(l); i++)
        if (strcmp(lockd_lease_key(l, i), key) == 0) {
            ASSERT_OK(sys(fcntl(lockd_lease_fd(l, i), F_OFD_SETLK, &fl)));
            return;
        }
    TEST_FAIL("key %s not in the lease", key);
}

static int
row_mode(const struct rows *rs, uint64_t id)
{
    const struct row *r = rows_find_id(rs, id);

    if (!r)
        TEST_FAIL("lease %llu not listed", (unsigned long long)id);
    return r->mode;
}

/*
 * A lease whose lock is gone (another copy of its open file description
 * was unlocked) is never reported as held: a listing checks each row as it
 * writes it (LOCKD_LOST), a sweep every two seconds finds the others, the
 * counts leave lost leases out, and each is logged at <2> with its owner
 * and disk.  Releasing it by id drops the record.
 */
HELPER_CASE(lost_lease_listed)
{
    struct rows rs;
    struct one t;
    lockd_lease *l;

    one_start(&t, 0, "lost", 2, &l);
    ASSERT_OK(lockd_conn_register_on_loss(t.c, t.g.pid, -1, NULL, NULL, LOCKD_ON_LOSS_REPORT,
                                          NULL));
    assert_counts(status_on(t.c), 1, 2);

    unlock_copy(l, t.d.key[0]);
    ASSERT_INT_EQ(probe(t.sp, t.d.key[0]), LOCKD_FREE);
    rs = rows_list(t.c, t.g.pid);
    ASSERT_INT_EQ(rs.n, 2);
    ASSERT_INT_EQ(row_mode(&rs, t.d.id[0]), LOCKD_LOST);
    ASSERT_INT_EQ(row_mode(&rs, t.d.id[1]), LOCKD_EXCLUSIVE);
    free(rs.r);
    assert_counts(status_on(t.c), 1, 1);
    ASSERT_CONTAINS(read_file(t.s->log), "<2>lost lease /images/lost-0.qcow2");

    /* Nobody lists the second one: the sweep finds it. */
    unlock_copy(l, t.d.key[1]);
    ASSERT_TRUE(WAIT_UNTIL(status_on(t.c).leases == 0, 6000));
    ASSERT_CONTAINS(read_file(t.s->log), "<2>lost lease /images/lost-1.qcow2");
    ASSERT_TRUE(FSD_WAIT(t.s, strstr(t.s->status, "2 LOST") != NULL, 5000));

    ASSERT_INT_EQ(lockd_conn_release(t.c, t.g.pid, 1, &t.d.id[0]), 1);
    ASSERT_INT_EQ(lockd_conn_release(t.c, t.g.pid, 0, NULL), 1);
    rs = rows_list(t.c, t.g.pid);
    ASSERT_INT_EQ(rs.n, 0);
    free(rs.r);
    lockd_lease_forget(l);
    one_end(&t);
}

static size_t count_lines_with(const char *text, const char *needle);

/* The --verbose line of lease i of d (lockd-helper(8), "Logging and status"). */
static void
verbose_line(char *buf, size_t size, const char *event, const struct disks *d, size_t i,
             pid_t pid, const char *why)
{
    snprintf(buf, size,
             "<7>%s lease %llu: disk %s, key %s, %s, owner pid %d (vguest), uid %u: %s\n",
             event, (unsigned long long)d->id[i], d->path[i], d->key[i],
             d->modes[i] == LOCKD_SHARED ? "shared" : "exclusive", (int)pid,
             (unsigned)getuid(), why);
}

/*
 * --verbose logs one line per hand-over, release (by request, by the
 * owner's exit) and loss, each naming the lease, disk, key, mode and owner,
 * as lockd-helper(8) writes them; without --verbose none of them.
 */
HELPER_CASE(verbose_logs_leases)
{
    lockd_space *sp = space_open_rooted();
    char line[3][PATH_MAX + 512], space[PATH_MAX], *log;
    struct fsd *s, *quiet;
    struct disks d;
    struct guest g;
    lockd_conn *c;
    lockd_lease *l;
    pid_t pid;

    s = fsd_new("verbose", FSD_ACTIVATE | FSD_NOTIFY, 0);
    fsd_arg(s, "--verbose");
    fsd_start_ready(s);
    guest_start(&g);
    pid = g.pid;
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, pid, -1, NULL, "vguest"));
    disks_make(&d, sp, "verbose", 3);
    d.modes[1] = LOCKD_SHARED;
    ASSERT_OK(hand_over(c, sp, pid, &d, &l));
    ASSERT_TRUE(realpath(lockd_space_dir(sp), space) != NULL);
    for (size_t i = 0; i < 3; i++) {
        char why[PATH_MAX + 32];

        snprintf(why, sizeof(why), "in lockspace %s", space);
        verbose_line(line[i], sizeof(line[i]), "handed over", &d, i, pid, why);
    }
    log = read_file(s->log);
    for (size_t i = 0; i < 3; i++)
        ASSERT_CONTAINS(log, line[i]);

    /* A release by request, then a loss found by a listing. */
    ASSERT_INT_EQ(lockd_conn_release(c, pid, 1, &d.id[0]), 1);
    verbose_line(line[0], sizeof(line[0]), "released", &d, 0, pid, "released by request");
    ASSERT_CONTAINS(read_file(s->log), line[0]);
    unlock_copy(l, d.key[2]);
    free(rows_list(c, pid).r);
    verbose_line(line[2], sizeof(line[2]), "lost", &d, 2, pid, "its lock is gone");
    ASSERT_CONTAINS(read_file(s->log), line[2]);
    lockd_lease_forget(l);

    /* The owner exits: the two leases left are released, the lost one too. */
    lockd_conn_close(c);
    guest_end(&g);
    verbose_line(line[1], sizeof(line[1]), "released", &d, 1, pid, "exited");
    verbose_line(line[2], sizeof(line[2]), "released", &d, 2, pid, "exited");
    ASSERT_TRUE(FSD_WAIT(s, strstr(read_file(s->log), line[2]) != NULL, 5000));
    ASSERT_CONTAINS(read_file(s->log), line[1]);
    ASSERT_INT_EQ(count_lines_with(read_file(s->log), "<7>handed over lease "), 3);
    ASSERT_INT_EQ(disks_probe_count(sp, &d, LOCKD_FREE), 3);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);

    /* Without --verbose: the owner's lines, no lease's. */
    quiet = fsd_new("quiet", FSD_ACTIVATE | FSD_NOTIFY, 0);
    fsd_start_ready(quiet);
    guest_start(&g);
    c = conn_open(quiet->sock);
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, NULL, "vguest"));
    ASSERT_OK(hand_over(c, sp, g.pid, &d, NULL));
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_TRUE(FSD_WAIT(quiet, strstr(read_file(quiet->log), ") gone") != NULL, 5000));
    ASSERT_TRUE(strstr(read_file(quiet->log), "<7>") == NULL);
    ASSERT_INT_EQ(fsd_stop(quiet), 0);
    FSD_ASSERT_CLEAN(quiet);
    fsd_fini(quiet);
    lockd_space_close(sp);
}

/*
 * What a lost lease does to its guest, chosen at registration: kill (the
 * default) SIGKILLs it, stop SIGSTOPs it (SIGCONT resumes it), exec runs a
 * hook with the owner, disk, key and error in its environment and no fd
 * but 0-2, and leaves the guest running.  Each once per owner, logged on
 * the loss's line.  A bad action is refused and changes nothing.
 */
static void become_nobody(void);

HELPER_CASE(loss_actions)
{
    char cmd[LOCKD_COMMAND_MAX + 1], *text;
    ino_t ino;
    struct guest g[3];
    struct disks d[3];
    struct rows rs;
    lockd_lease *l[3];
    lockd_space *sp = space_open_rooted();
    struct fsd *s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 64);
    lockd_conn *c;
    int i;

    fsd_start_ready(s);
    c = conn_open(s->sock);
    snprintf(cmd, sizeof(cmd), "ls /proc/self/fd > %s; (env; id -u) > %s.tmp && mv %s.tmp %s #",
             test_path("hook.fds"), test_path("hook.env"), test_path("hook.env"),
             test_path("hook.env"));
    /* As long as a hook may be: its owner's record must still fit the
     * state a re-exec hands over (it did not: 512 bytes). */
    memset(cmd + strlen(cmd), 'x', LOCKD_COMMAND_MAX - strlen(cmd));
    cmd[LOCKD_COMMAND_MAX] = '\0';
    for (i = 0; i < 3; i++) {
        static const char *const tags[] = {"kill", "stop", "exec"};

        guest_start(&g[i]);
        ASSERT_OK(lockd_conn_register(c, g[i].pid, -1, UUID1, tags[i]));
        disks_make(&d[i], sp, tags[i], 2);
        ASSERT_OK(hand_over(c, sp, g[i].pid, &d[i], &l[i]));
    }
    /* Re-registering without an action keeps the one chosen. */
    ASSERT_OK(lockd_conn_register_on_loss(c, g[1].pid, -1, NULL, NULL, LOCKD_ON_LOSS_STOP, NULL));
    ASSERT_OK(lockd_conn_register(c, g[1].pid, -1, NULL, NULL));
    ASSERT_OK(lockd_conn_register_on_loss(c, g[2].pid, -1, NULL, NULL, LOCKD_ON_LOSS_EXEC, cmd));
    ASSERT_INT_EQ(lockd_conn_register_on_loss(c, g[2].pid, -1, NULL, NULL, LOCKD_ON_LOSS_EXEC, ""),
                  -EINVAL);
    ASSERT_INT_EQ(lockd_conn_register_on_loss(c, g[2].pid, -1, NULL, NULL, LOCKD_ON_LOSS_KILL,
                                              "true"),
                  -EINVAL);
    ASSERT_INT_EQ(lockd_conn_register_on_loss(c, g[2].pid, -1, NULL, NULL, 5, NULL),
                  -EINVAL);
    ASSERT_INT_EQ(lockd_conn_register_on_loss(c, g[2].pid, -1, NULL, NULL,
                                              LOCKD_ON_LOSS_EXEC_OR_KILL, NULL),
                  -EINVAL);
    /* Every choice survives a re-exec, and a crash (the fd store's
     * state log). */
    ino = fsd_install(s);
    ASSERT_OK(kill(s->pid, SIGUSR1));
    ASSERT_TRUE(WAIT_UNTIL(fsd_exe_ino(s->pid) == ino, 10000));
    ASSERT_TRUE(WAIT_UNTIL(fsd_stash_count(s, 'L') == 6, 5000));
    ASSERT_INT_EQ(fsd_kill(s, SIGKILL), 128 + SIGKILL);
    fsd_start_ready(s);
    lockd_conn_close(c);
    c = conn_open(s->sock);
    assert_counts(status_on(c), 3, 6);

    for (i = 0; i < 3; i++) {
        unlock_copy(l[i], d[i].key[0]);
        unlock_copy(l[i], d[i].key[1]);
        rs = rows_list(c, g[i].pid); /* a listing checks each row */
        free(rs.r);
    }
    ASSERT_INT_EQ(test_wait(g[0].pid), 128 + SIGKILL);
    close(g[0].wfd);
    ASSERT_TRUE(WAIT_UNTIL(proc_state(g[1].pid) == 'T', 5000));
    ASSERT_TRUE(WAIT_UNTIL(access(test_path("hook.env"), F_OK) == 0, 10000));
    ASSERT_CONTAINS(read_file(test_path("hook.env")), "\n0\n"); /* run as root, who registered */
    text = read_file(s->log);
    /* Found in fdinfo: a copy was unlocked, which is how a manager that
     * kept copies releases before its notice comes; so the action waits a
     * --check-period for a release that never comes here. */
    ASSERT_CONTAINS(text, "<2>lost lease /images/kill-0.qcow2");
    ASSERT_CONTAINS(text, "(kill): its lock is gone; its on-loss action follows in 1000 ms");
    ASSERT_CONTAINS(text, "<2>owner pid ");
    ASSERT_CONTAINS(text, "(kill): lease /images/kill-");
    ASSERT_CONTAINS(text, ".qcow2 still lost: killed it (SIGKILL)");
    ASSERT_CONTAINS(text, ".qcow2 still lost: stopped it (SIGSTOP");
    ASSERT_CONTAINS(text, ".qcow2 still lost: started its on-loss hook (pid");
    ASSERT_INT_EQ(count_lines_with(text, "still lost: stopped it"), 1);
    ASSERT_INT_EQ(count_lines_with(text, "started its on-loss hook"), 1);
    /* The hook: fds 0-2 only (3 is ls's own directory), its facts.  Under
     * valgrind every process it traces also has valgrind's own fds, at the
     * top of the fd limit: those are left out. */
    {
        char *fds = read_file(test_path("hook.fds")), *line, *save = NULL, seen[256] = "";

        for (line = strtok_r(fds, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
            if (!getenv("LOCKD_TEST_VALGRIND") || atoi(line) < 1000)
                snprintf(seen + strlen(seen), sizeof(seen) - strlen(seen), "%s ", line);
        ASSERT_STR_EQ(seen, "0 1 2 3 ");
    }
    text = read_file(test_path("hook.env"));
    {
        char want[128];

        snprintf(want, sizeof(want), "LOCKD_OWNER_PID=%d\n", (int)g[2].pid);
        ASSERT_CONTAINS(text, want);
        /* Of the lost lease the action was for: one of the two. */
        snprintf(want, sizeof(want), "LOCKD_KEY=%s\n", d[2].key[0]);
        if (!strstr(text, want))
            snprintf(want, sizeof(want), "LOCKD_KEY=%s\n", d[2].key[1]);
        ASSERT_CONTAINS(text, want);
    }
    ASSERT_CONTAINS(text, "LOCKD_OWNER_NAME=exec\n");
    ASSERT_CONTAINS(text, "LOCKD_OWNER_UUID=" UUID1 "\n");
    ASSERT_CONTAINS(text, "LOCKD_DISK=/images/exec-");
    ASSERT_CONTAINS(text, "LOCKD_ERROR=ENOLCK\n");
    ASSERT_TRUE(WAIT_UNTIL(strstr(read_file(s->log), "exited 0"), 5000));
    ASSERT_INT_EQ(proc_state(g[2].pid), 'S'); /* exec leaves the guest running */

    ASSERT_OK(sys(kill(g[1].pid, SIGCONT)));
    ASSERT_TRUE(WAIT_UNTIL(proc_state(g[1].pid) == 'S', 5000));
    for (i = 1; i < 3; i++) {
        guest_end(&g[i]);
        lockd_lease_release(l[i]);
    }
    lockd_lease_forget(l[0]);
    lockd_conn_close(c);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * A hook runs as the uid that registered it: here 65534, whose own guest
 * lost its own lease; and a hook still running at --hook-timeout is
 * killed.
 */
struct hook_by {
    const char *sock, *space, *out;
};

static int
hook_by_nobody_main(void *arg)
{
    const struct hook_by *h = arg;
    lockd_space *sp = NULL;
    struct disks d;
    struct guest g;
    struct rows rs;
    lockd_lease *l;
    lockd_conn *c;
    char cmd[512];

    become_nobody();
    guest_start(&g);
    c = conn_open(h->sock);
    snprintf(cmd, sizeof(cmd), "id -u > %s.tmp && mv %s.tmp %s; exec sleep 100", h->out,
             h->out, h->out);
    ASSERT_OK(lockd_conn_register_on_loss(c, g.pid, -1, NULL, "nobody's", LOCKD_ON_LOSS_EXEC,
                                          cmd));
    ASSERT_OK(lockd_space_open(h->space, LOCKD_OPEN_CREATE, &sp));
    disks_make(&d, sp, "mine", 1);
    ASSERT_OK(hand_over(c, sp, g.pid, &d, &l));
    unlock_copy(l, d.key[0]);
    rs = rows_list(c, g.pid);
    ASSERT_INT_EQ(rs.r[0].mode, LOCKD_LOST);
    free(rs.r);
    ASSERT_TRUE(WAIT_UNTIL(access(h->out, F_OK) == 0, 30000));
    guest_end(&g);
    lockd_lease_forget(l);
    lockd_space_close(sp);
    lockd_conn_close(c);
    return 0;
}

HELPER_CASE(hook_as_registering_uid)
{
    struct hook_by h;
    struct fsd *s;

    nobody_setup();
    s = open_helper_new();
    /* Under valgrind the hook's shell and id(1) take seconds to start. */
    fsd_arg(s, "--hook-timeout");
    fsd_arg(s, getenv("LOCKD_TEST_VALGRIND") ? "20" : "1");
    fsd_start_ready(s);
    h = (struct hook_by){s->sock, test_path("uspace"), test_path("uspace/uid")};
    ASSERT_INT_EQ(test_wait(spawn(hook_by_nobody_main, &h, NULL, 0)), 0);
    ASSERT_STR_EQ(read_file(h.out), "65534\n");
    ASSERT_TRUE(FSD_WAIT(s, strstr(read_file(s->log), "still runs after ") &&
                                strstr(read_file(s->log), " s: killed") &&
                                strstr(read_file(s->log), "killed by signal 9"),
                         40000));
    ASSERT_CONTAINS(read_file(s->log), "started its on-loss hook (pid");
    ASSERT_CONTAINS(read_file(s->log), "as uid 65534)");
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
}

/*
 * exec-or-kill: the hook runs as exec's does, and its guest is killed
 * unless the hook exits 0: a hook that succeeds leaves it running, one
 * that fails and one that outlasts --hook-timeout get it killed.  (The
 * libvirt plugin's <on_lockfailure>pause</on_lockfailure>.)
 */
HELPER_CASE(exec_or_kill)
{
    static const char *const hooks[] = {"exit 0", "exit 3", "exec sleep 100"};
    struct guest g[3];
    struct disks d[3];
    lockd_lease *l[3];
    lockd_space *sp = space_open_rooted();
    struct fsd *s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 64);
    lockd_conn *c;
    int i;

    fsd_arg(s, "--hook-timeout");
    fsd_arg(s, getenv("LOCKD_TEST_VALGRIND") ? "20" : "2");
    fsd_start_ready(s);
    c = conn_open(s->sock);
    for (i = 0; i < 3; i++) {
        static const char *const tags[] = {"ok", "fails", "hangs"};

        guest_start(&g[i]);
        ASSERT_OK(lockd_conn_register_on_loss(c, g[i].pid, -1, NULL, tags[i],
                                              LOCKD_ON_LOSS_EXEC_OR_KILL, hooks[i]));
        disks_make(&d[i], sp, tags[i], 1);
        ASSERT_OK(hand_over(c, sp, g[i].pid, &d[i], &l[i]));
        unlock_copy(l[i], d[i].key[0]);
    }
    ASSERT_INT_EQ(test_wait(g[1].pid), 128 + SIGKILL);
    close(g[1].wfd);
    ASSERT_INT_EQ(test_wait(g[2].pid), 128 + SIGKILL);
    close(g[2].wfd);
    ASSERT_TRUE(FSD_WAIT(s, strstr(read_file(s->log), "exited 0"), 10000));
    ASSERT_INT_EQ(proc_state(g[0].pid), 'S'); /* its hook succeeded */
    ASSERT_TRUE(!strstr(read_file(s->log), "(ok): its on-loss hook failed"));
    /* Each kill comes before its log line: wait for the lines. */
    ASSERT_TRUE(FSD_WAIT(
        s,
        strstr(read_file(s->log), "(fails): its on-loss hook failed: killed it (SIGKILL)") &&
            strstr(read_file(s->log), "(hangs): its on-loss hook failed: killed it (SIGKILL)"),
        10000));
    ASSERT_CONTAINS(read_file(s->log), "; it is killed unless the hook succeeds");
    guest_end(&g[0]);
    for (i = 0; i < 3; i++)
        lockd_lease_forget(l[i]);
    lockd_conn_close(c);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * Direct leases (lockd_acquire_direct(): the lock on the disk itself) are
 * handed over and listed under their paths, on a file and through a
 * symlink; after a lockspace's lease on the same connection too.  One whose
 * path names another file, or whose key is not its path's, is refused.
 * Each survives its manager, and the owner's exit frees it.
 */
HELPER_CASE(direct_leases)
{
    lockd_space *sp = space_open_rooted();
    char img[4096], other[4096], link[4096];
    const char *one[1], *names[1];
    lockd_lease *l = NULL, *l2 = NULL;
    struct disks d;
    struct guest g;
    struct rows rs;
    lockd_conn *c;
    uint64_t id;
    struct fsd *s = helper_with_guest(0, &g, &c);
    int fd;

    snprintf(img, sizeof(img), "%s", test_path("disk.img"));
    snprintf(other, sizeof(other), "%s", test_path("other.img"));
    snprintf(link, sizeof(link), "%s", test_path("link.img"));
    ASSERT_OK(sys(fd = open(img, O_CREAT | O_WRONLY | O_CLOEXEC, 0600)));
    close(fd);
    ASSERT_OK(sys(fd = open(other, O_CREAT | O_WRONLY | O_CLOEXEC, 0600)));
    close(fd);
    ASSERT_OK(sys(symlink(img, link)));
    /* A lockspace lease first: the connection then shows no lockspace. */
    disks_make(&d, sp, "beside", 1);
    ASSERT_OK(hand_over(c, sp, g.pid, &d, NULL));
    one[0] = link;
    ASSERT_OK(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &l));
    names[0] = other; /* a path that names another file */
    ASSERT_ERR(lockd_conn_handoff(c, g.pid, l, names, &id), EBADFD);
    ASSERT_CONTAINS(read_file(s->log), "refused direct lease");
    ASSERT_OK(lockd_conn_handoff(c, g.pid, l, NULL, &id));
    lockd_lease_forget(l);
    rs = rows_list(c, g.pid);
    ASSERT_INT_EQ(rs.n, 2);
    {
        const struct row *r = rows_find_id(&rs, id);
        ASSERT_TRUE(r != NULL);
        /* A row keeps 63 bytes of the name. */
        ASSERT_TRUE(strncmp(r->disk, link, sizeof(r->disk) - 1) == 0);
        ASSERT_INT_EQ(r->mode, LOCKD_EXCLUSIVE);
    }
    free(rs.r);
    ASSERT_INT_EQ(lockd_probe_direct(img, NULL), LOCKD_EXCLUSIVE);
    /* Back to the lockspace on the same connection. */
    disks_make(&d, sp, "after", 1);
    ASSERT_OK(hand_over(c, sp, g.pid, &d, NULL));
    assert_counts(status_on(c), 1, 3);
    one[0] = img;
    ASSERT_ERR(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &l2), EAGAIN);
    guest_end(&g);
    ASSERT_TRUE(WAIT_UNTIL(lockd_probe_direct(img, NULL) == LOCKD_FREE, 5000));
    lockd_conn_close(c);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * An lvm lockspace names its files after devices (LV UUIDs), raw: its
 * leases are handed over and listed under the SHA-256 of the name; a file
 * whose name does not hash to the key handed over with it (renamed since)
 * is refused.
 */
HELPER_CASE(named_space_leases)
{
    static const char *const names[] = {"06UgP5-2rhb-w3Bo-3mdR-WeoL-pytO-SAa2ky",
                                        "Xg9eYb-3yR5-Mft0-d6nY-k2vS-8hPq-L1wZcA"};
    char dir[PATH_MAX], hashed[LOCKD_KEY_SIZE], from[PATH_MAX + 64], to[PATH_MAX + 64];
    lockd_space *sp = NULL;
    lockd_lease *l = NULL;
    struct guest g;
    struct rows rs;
    lockd_conn *c;
    uint64_t id;
    struct fsd *s = helper_with_guest(0, &g, &c);

    snprintf(dir, sizeof(dir), "%s", test_path("lvm"));
    ASSERT_OK(lockd_space_open(dir, LOCKD_OPEN_CREATE | LOCKD_OPEN_LVM, &sp));
    ASSERT_OK(lockd_acquire(sp, 1, &names[0], NULL, LOCKD_TRY, &l));
    ASSERT_OK(lockd_conn_handoff(c, g.pid, l, NULL, &id));
    lockd_lease_forget(l);
    rs = rows_list(c, g.pid);
    ASSERT_INT_EQ(rs.n, 1);
    ASSERT_OK(lockd_key_resource(names[0], strlen(names[0]), hashed));
    ASSERT_STR_EQ(rs.r[0].key, hashed);
    free(rs.r);
    ASSERT_OK(lockd_acquire(sp, 1, &names[1], NULL, LOCKD_TRY, &l));
    snprintf(from, sizeof(from), "%s/%s", dir, names[1]);
    snprintf(to, sizeof(to), "%s/renamed", dir);
    ASSERT_OK(sys(rename(from, to)));
    ASSERT_ERR(lockd_conn_handoff(c, g.pid, l, NULL, &id), EBADFD);
    ASSERT_OK(lockd_lease_release(l));
    guest_end(&g);
    ASSERT_TRUE(WAIT_UNTIL(lockd_probe(sp, names[0], NULL) == LOCKD_FREE, 5000));
    lockd_conn_close(c);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * exec-or-kill whose hook cannot even start (its uid has no passwd entry,
 * so no group to run it with): the guest is killed, as if the hook had
 * failed; the guest is not left running on a lost lease.
 */
#define NO_PASSWD_UID 54321

struct nohook {
    const char *sock, *space;
};

static int
nohook_main(void *arg)
{
    const struct nohook *h = arg;
    lockd_space *sp = NULL;
    struct disks d;
    struct guest g;
    lockd_lease *l;
    lockd_conn *c;

    if (setgroups(0, NULL) < 0 || setgid(NO_PASSWD_UID) < 0 || setuid(NO_PASSWD_UID) < 0)
        TEST_FAIL("dropping privileges: %s", strerror(errno));
    guest_start(&g);
    c = conn_open(h->sock);
    ASSERT_OK(lockd_conn_register_on_loss(c, g.pid, -1, NULL, "nopasswd",
                                          LOCKD_ON_LOSS_EXEC_OR_KILL, "exit 0"));
    ASSERT_OK(lockd_space_open(h->space, LOCKD_OPEN_CREATE, &sp));
    disks_make(&d, sp, "nohook", 1);
    ASSERT_OK(hand_over(c, sp, g.pid, &d, &l));
    unlock_copy(l, d.key[0]);
    ASSERT_INT_EQ(test_wait(g.pid), 128 + SIGKILL);
    close(g.wfd);
    lockd_lease_forget(l);
    lockd_space_close(sp);
    lockd_conn_close(c);
    return 0;
}

HELPER_CASE(exec_or_kill_hook_cannot_start)
{
    struct nohook h;
    struct fsd *s;

    ASSERT_TRUE(getpwuid(NO_PASSWD_UID) == NULL);
    nobody_setup();
    ASSERT_OK(sys(chown(test_path("uspace"), NO_PASSWD_UID, NO_PASSWD_UID)));
    s = open_helper_new();
    fsd_start_ready(s);
    h = (struct nohook){s->sock, test_path("uspace")};
    ASSERT_INT_EQ(test_wait(spawn(nohook_main, &h, NULL, 0)), 0);
    /* The kill comes before its log line: wait for the line. */
    ASSERT_TRUE(FSD_WAIT(s, strstr(read_file(s->log), "could not start its on-loss hook (") &&
                                strstr(read_file(s->log), "): killed it (SIGKILL)"),
                         10000));
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
}

/*
 * Adoption checks every fd as a hand-over does.  The helper put a lease in
 * systemd's store and was SIGKILLed; meanwhile the manager, which kept its
 * copy, unlocked it.  The restarted helper must not list that lease as
 * held (a plugin would skip the disk and a second guest would get it).
 */
HELPER_CASE(adopt_checks_locks)
{
    struct rows rs;
    struct one t;
    lockd_lease *l;

    one_start(&t, 64, "adopt", 2, &l);
    /* The action is in the state too: the restarted helper only reports. */
    ASSERT_OK(lockd_conn_register_on_loss(t.c, t.g.pid, -1, NULL, NULL, LOCKD_ON_LOSS_REPORT,
                                          NULL));
    ASSERT_TRUE(WAIT_UNTIL(fsd_stash_count(t.s, 'L') == 2, 5000));
    ASSERT_INT_EQ(fsd_kill(t.s, SIGKILL), 128 + SIGKILL);
    unlock_copy(l, t.d.key[0]);
    lockd_lease_forget(l);
    fsd_start_ready(t.s);
    lockd_conn_close(t.c);
    t.c = conn_open(t.s->sock);
    rs = rows_list(t.c, t.g.pid);
    ASSERT_INT_EQ(rs.n, 2);
    ASSERT_INT_EQ(row_mode(&rs, t.d.id[0]), LOCKD_LOST);
    ASSERT_INT_EQ(row_mode(&rs, t.d.id[1]), LOCKD_EXCLUSIVE);
    free(rs.r);
    assert_counts(status_on(t.c), 1, 1);
    ASSERT_INT_EQ(probe(t.sp, t.d.key[0]), LOCKD_FREE);
    ASSERT_INT_EQ(probe(t.sp, t.d.key[1]), LOCKD_EXCLUSIVE);
    ASSERT_CONTAINS(read_file(t.s->log), "<2>lost lease /images/adopt-0.qcow2");
    one_end(&t);
}

/* A raw HANDOFF of n items, each {mode, key (hex), no name}, with fds;
 * returns the helper's status (raw_settle: an error reply, or a failure of
 * the case if it was accepted). */
static int32_t
raw_handoff(const char *sock_path, int32_t pid, size_t n, const char *const *keys,
            const int *fds, uint8_t mode)
{
    uint8_t b[RAW_HDR + 6 + 35 * 4];
    size_t at = RAW_HDR + 6;
    uint16_t count = (uint16_t)n;
    int32_t err;
    int sock = raw_connect(sock_path);

    assert(n <= 4);
    memcpy(b + RAW_HDR, &pid, 4);
    memcpy(b + RAW_HDR + 4, &count, 2);
    for (size_t i = 0; i < n; i++, at += 35) {
        b[at] = mode;
        for (int k = 0; k < 32; k++)
            sscanf(keys[i] + 2 * k, "%2hhx", &b[at + 1 + k]);
        memset(b + at + 33, 0, 2);
    }
    raw_ok(b, RAW_HANDOFF, 31, (uint32_t)n, (uint32_t)(at - RAW_HDR));
    ASSERT_OK(raw_send(sock, b, at, fds, n));
    ASSERT_INT_EQ(raw_settle(sock, 31, &err), 1);
    close(sock);
    return err;
}

/*
 * One open file description is one lease: the same description handed to
 * another owner, or to the same owner under another key, or twice in one
 * request, is refused (-EEXIST), so that releasing one can never unlock
 * another that stays listed.  The same owner's same lease again is a retry
 * and gets its id back.
 */
HELPER_CASE(one_ofd_one_lease)
{
    lockd_space *sp = space_open_rooted();
    uint64_t id, id2;
    struct disks d;
    struct guest g1, g2;
    struct rows rs;
    struct fsd *s;
    lockd_lease *l, *l2;
    lockd_conn *c;
    int fds[2];

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 0);
    fsd_start_ready(s);
    guest_start(&g1);
    guest_start(&g2);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g1.pid, -1, NULL, "guest-1"));
    ASSERT_OK(lockd_conn_register(c, g2.pid, -1, NULL, "guest-2"));
    disks_make(&d, sp, "ofd", 2);
    ASSERT_OK(lockd_acquire(sp, 1, d.keys, NULL, LOCKD_TRY, &l));
    ASSERT_OK(lockd_conn_handoff(c, g1.pid, l, NULL, &id));
    ASSERT_ERR(lockd_conn_handoff(c, g2.pid, l, NULL, NULL), EEXIST);
    ASSERT_OK(lockd_conn_handoff(c, g1.pid, l, NULL, &id2));
    ASSERT_INT_EQ(id2, id);
    /* Under another key, as a forger would send it. */
    fds[0] = lockd_lease_fd(l, 0);
    ASSERT_INT_EQ(raw_handoff(s->sock, g1.pid, 1, &d.keys[1], fds, LOCKD_EXCLUSIVE), -EEXIST);
    /* Twice in one request: a description and a dup of it. */
    ASSERT_OK(lockd_acquire(sp, 1, &d.keys[1], NULL, LOCKD_TRY, &l2));
    fds[0] = lockd_lease_fd(l2, 0);
    fds[1] = dup(fds[0]);
    ASSERT_OK(sys(fds[1]));
    {
        const char *k2[2] = {d.keys[1], d.keys[1]};

        ASSERT_INT_EQ(raw_handoff(s->sock, g2.pid, 2, k2, fds, LOCKD_EXCLUSIVE), -EEXIST);
    }
    close(fds[1]);
    rs = rows_list(c, 0);
    ASSERT_INT_EQ(rs.n, 1);
    ASSERT_INT_EQ(rs.r[0].id, id);
    ASSERT_INT_EQ(rs.r[0].pid, g1.pid);
    free(rs.r);
    ASSERT_CONTAINS(read_file(s->log), "already another lease");
    ASSERT_CONTAINS(read_file(s->log), "two of its items are one open file description");
    /* l2's description was never taken: ours alone holds it. */
    ASSERT_INT_EQ(proc_fds(s->pid, d.key[1]), 0);
    ASSERT_OK(lockd_lease_release(l2));
    lockd_lease_forget(l);
    ASSERT_INT_EQ(lockd_conn_release(c, g1.pid, 1, &id), 1);
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_FREE);
    lockd_conn_close(c);
    guest_end(&g1);
    guest_end(&g2);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * Lease ids never repeat across a cold start that lost the state: ids carry
 * an epoch drawn at each cold start.  A helper without the fd store is
 * killed while the manager still holds its copy of a lease; a new helper is
 * handed the same lease in the same slot and gives it another id, and a
 * notice naming the old id touches nothing.
 */
HELPER_CASE(ids_new_after_cold_start)
{
    lockd_space *sp = space_open_rooted();
    uint64_t id1, id2;
    struct disks d;
    struct guest g;
    struct rows rs;
    struct fsd *s;
    lockd_lease *l;
    lockd_conn *c;

    s = helper_with_guest(0, &g, &c);
    disks_make(&d, sp, "epoch", 1);
    ASSERT_OK(hand_over(c, sp, g.pid, &d, &l));
    id1 = d.id[0];
    lockd_conn_close(c);
    ASSERT_INT_EQ(fsd_kill(s, SIGKILL), 128 + SIGKILL);
    fsd_start_ready(s);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g.pid, -1, NULL, "guest"));
    ASSERT_OK(lockd_conn_handoff(c, g.pid, l, NULL, &id2));
    ASSERT_TRUE(id2 != id1);
    ASSERT_INT_EQ(id2 & 0xfffff, id1 & 0xfffff); /* the same slot */
    ASSERT_OK(lockd_conn_release_notice(c, g.pid, 1, &id1));
    ASSERT_INT_EQ(lockd_conn_release(c, g.pid, 1, &id1), 0);
    rs = rows_list(c, g.pid);
    ASSERT_INT_EQ(rs.n, 1);
    ASSERT_INT_EQ(rs.r[0].id, id2);
    ASSERT_INT_EQ(rs.r[0].mode, LOCKD_EXCLUSIVE);
    free(rs.r);
    ASSERT_INT_EQ(lockd_conn_release(c, g.pid, 1, &id2), 1);
    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_FREE);
    lockd_lease_forget(l);
    lockd_conn_close(c);
    guest_end(&g);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/* Append raw records to the fd store's state memfd (the fake systemd keeps
 * it; reached through /proc), as the helper would have written them just
 * before a crash. */
static void
state_append_raw(struct fsd *s, const uint8_t *rec, size_t len)
{
    char path[64];
    uint8_t h[32];
    uint64_t end;
    int fd = -1;

    fsd_lock(s);
    for (size_t i = 0; i < s->nslots; i++)
        if (s->store[i].fd >= 0 && strcmp(s->store[i].name, "state") == 0) {
            snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)s->harness, s->store[i].fd);
            fd = open(path, O_RDWR | O_CLOEXEC);
        }
    fsd_unlock(s);
    ASSERT_OK(sys(fd));
    ASSERT_INT_EQ(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    memcpy(&end, h + 24, 8);
    ASSERT_INT_EQ(pwrite(fd, rec, len, (off_t)end), (ssize_t)len);
    end += len;
    memcpy(h + 24, &end, 8);
    ASSERT_INT_EQ(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    close(fd);
}

/*
 * A FREE record says whether the lease was released or taken back by its
 * client (the rollback of a multi-message hand-over, which keeps the lock
 * through the client's own copy).  A crash after the record and before the
 * store let go of the fd must finish each as it was begun: replaying a
 * take-back as a release would unlock the client's lease.
 */
HELPER_CASE(adopt_free_record_kinds)
{
    uint8_t rec[16];
    struct rows rs;
    struct one t;
    lockd_lease *l;

    one_start(&t, 64, "free", 2, &l);
    ASSERT_TRUE(WAIT_UNTIL(fsd_stash_count(t.s, 'L') == 2, 5000));
    ASSERT_TRUE(FSD_WAIT(t.s, fsd_has_locked(t.s, "state"), 5000));
    ASSERT_INT_EQ(fsd_kill(t.s, SIGKILL), 128 + SIGKILL);
    /* FREE: u8 type 4, u16 length 5, u32 slot, u8 unlocked. */
    for (int i = 0; i < 2; i++) {
        uint32_t slot = (uint32_t)(t.d.id[i] & 0xfffff);
        uint16_t len = 5;

        rec[8 * i] = 4;
        memcpy(rec + 8 * i + 1, &len, 2);
        memcpy(rec + 8 * i + 3, &slot, 4);
        rec[8 * i + 7] = (uint8_t)i; /* disk 0 taken back, disk 1 released */
    }
    state_append_raw(t.s, rec, sizeof(rec));
    fsd_start_ready(t.s);
    lockd_conn_close(t.c);
    t.c = conn_open(t.s->sock);
    rs = rows_list(t.c, 0);
    ASSERT_INT_EQ(rs.n, 0);
    free(rs.r);
    /* The take-back closed the helper's copy only: ours still holds it. */
    ASSERT_INT_EQ(probe(t.sp, t.d.key[0]), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(probe(t.sp, t.d.key[1]), LOCKD_FREE);
    ASSERT_INT_EQ(proc_fds(t.s->pid, t.d.key[0]), 0);
    ASSERT_OK(lockd_lease_release(l));
    one_end(&t);
}

/* Install a script at the helper's start-up path (an upgrade gone wrong). */
static void
install_script(struct fsd *s, const char *body)
{
    char tmp[PATH_MAX + 8];
    FILE *f;

    snprintf(tmp, sizeof(tmp), "%s.new", s->bin);
    f = fopen(tmp, "we");
    if (!f || fprintf(f, "#!/bin/sh\n%s\n", body) < 0 || fclose(f) != 0 ||
        chmod(tmp, 0755) < 0 || rename(tmp, s->bin) < 0)
        TEST_FAIL("install %s: %s", s->bin, strerror(errno));
}

/*
 * Re-exec checks the new binary first: SIGUSR1 or SIGHUP with a binary at
 * the start-up path that cannot start (here a script that fails) is refused
 * with a log line,
 * and the old image carries on, leases and all; with a good binary there,
 * SIGHUP re-execs like SIGUSR1 (it used to exit and drop every lease).
 */
HELPER_CASE(reexec_checks_binary)
{
    ino_t old_ino, ino;
    struct one t;
    pid_t hpid;

    one_start(&t, 0, "upgrade", 2, NULL);
    hpid = t.s->pid;
    old_ino = fsd_exe_ino(hpid);

    install_script(t.s, "exit 3");
    ASSERT_OK(kill(hpid, SIGUSR1));
    ASSERT_TRUE(WAIT_UNTIL(strstr(read_file(t.s->log), "re-exec refused") != NULL, 10000));
    ASSERT_CONTAINS(read_file(t.s->log), "--self-test exited 3; still running the old image");
    ASSERT_INT_EQ(fsd_exe_ino(hpid), old_ino);
    assert_listed(t.c, t.g.pid, &t.d);
    ASSERT_INT_EQ(disks_probe_count(t.sp, &t.d, LOCKD_EXCLUSIVE), 2);

    ino = fsd_install(t.s);
    ASSERT_OK(kill(hpid, SIGHUP));
    ASSERT_TRUE(WAIT_UNTIL(fsd_exe_ino(hpid) == ino, 10000));
    assert_listed(t.c, t.g.pid, &t.d);
    ASSERT_INT_EQ(disks_probe_count(t.sp, &t.d, LOCKD_EXCLUSIVE), 2);
    fsd_lock(t.s);
    ASSERT_INT_EQ(t.s->pid, hpid);
    ASSERT_INT_EQ(t.s->exits, 0);
    fsd_unlock(t.s);
    one_end(&t);
}

/*
 * Per-uid caps, for a helper whose socket mode lets every user in: one uid
 * other than root may hold --user-connections connections, --user-owners
 * owners and --user-leases leases (small here), and its refusals are logged
 * at most LOG_BURST at once, the rest counted.  Root is never held back by
 * another user's use.
 */
struct caps {
    const char *sock, *space, *log;
};

static int
caps_main(void *arg)
{
    const struct caps *k = arg;
    lockd_conn *c[4], *extra;
    lockd_space *sp = NULL;
    struct guest g[3];
    struct disks d;
    lockd_lease *l;
    int r;

    if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
        TEST_FAIL("dropping privileges: %s", strerror(errno));
    /* Connections: three, then the fourth is shut at once. */
    for (int i = 0; i < 3; i++) {
        c[i] = conn_open(k->sock);
        (void)status_on(c[i]);
    }
    ASSERT_OK(lockd_conn_open(k->sock, &extra));
    r = lockd_conn_status(extra, NULL, NULL, NULL);
    ASSERT_TRUE(r == -ECONNRESET || r == -EPIPE || r == -ENOTCONN);
    lockd_conn_close(extra);
    /* Owners: two of its own processes, then -EDQUOT. */
    for (int i = 0; i < 3; i++)
        guest_start(&g[i]);
    ASSERT_OK(lockd_conn_register(c[0], g[0].pid, -1, NULL, "u0"));
    ASSERT_OK(lockd_conn_register(c[0], g[1].pid, -1, NULL, "u1"));
    ASSERT_ERR(lockd_conn_register(c[0], g[2].pid, -1, NULL, "u2"), EDQUOT);
    /* Leases: two, then -EDQUOT, nothing taken of the third. */
    ASSERT_OK(lockd_space_open(k->space, LOCKD_OPEN_CREATE, &sp));
    disks_make(&d, sp, "cap", 3);
    ASSERT_OK(lockd_acquire(sp, 2, d.keys, NULL, LOCKD_TRY, &l));
    ASSERT_OK(lockd_conn_handoff(c[0], g[0].pid, l, NULL, NULL));
    lockd_lease_forget(l);
    ASSERT_OK(lockd_acquire(sp, 1, d.keys + 2, NULL, LOCKD_TRY, &l));
    ASSERT_ERR(lockd_conn_handoff(c[0], g[1].pid, l, NULL, NULL), EDQUOT);
    ASSERT_OK(lockd_lease_release(l));
    /* A flood of refusals: each answered, few logged. */
    for (int i = 0; i < 300; i++)
        ASSERT_ERR(lockd_conn_release(c[1], 1, 0, NULL), ESRCH);
    /* Once the rate allows a line again, it says how many were left out. */
    ASSERT_TRUE(WAIT_UNTIL((lockd_conn_release(c[1], 1, 0, NULL),
                            strstr(read_file(k->log), "more refusals of uid 65534 not logged")),
                           5000));
    for (int i = 0; i < 3; i++)
        guest_end(&g[i]);
    for (int i = 0; i < 3; i++)
        lockd_conn_close(c[i]);
    lockd_space_close(sp);
    return 0;
}

static size_t
count_lines_with(const char *text, const char *needle)
{
    size_t n = 0;

    for (const char *p = text; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

HELPER_CASE(user_caps)
{
    struct caps k;
    struct fsd *s;
    lockd_conn *rc[8];
    char *log;
    size_t refused;

    nobody_setup();
    s = open_helper_new();
    fsd_arg(s, "--user-connections");
    fsd_arg(s, "3");
    fsd_arg(s, "--user-owners");
    fsd_arg(s, "2");
    fsd_arg(s, "--user-leases");
    fsd_arg(s, "2");
    fsd_start_ready(s);
    /* Root is capped by nothing of this. */
    for (int i = 0; i < 8; i++) {
        rc[i] = conn_open(s->sock);
        (void)status_on(rc[i]);
    }
    k = (struct caps){s->sock, test_path("uspace"), s->log};
    ASSERT_INT_EQ(test_wait(spawn(caps_main, &k, NULL, 0)), 0);
    for (int i = 0; i < 8; i++)
        assert_counts(status_on(rc[i]), 0, 0);
    log = read_file(s->log);
    ASSERT_CONTAINS(log, "refused connection from uid 65534");
    refused = count_lines_with(log, "refused release from uid 65534");
    /* The burst, and the few the rate allowed while the test went on. */
    if (refused < 15 || refused > 80)
        TEST_FAIL("%zu refusals of ~300 logged", refused);
    for (int i = 0; i < 8; i++)
        lockd_conn_close(rc[i]);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
}

/*
 * Leases belong to the uid that handed them over.  Reproduced before: uid
 * 65534 registered its own process P, root handed a root disk over for P,
 * and the owner being 65534's, 65534 saw root's lease and released it while
 * P ran.  Now 65534 neither sees nor releases root's lease on P, root's
 * lease is not counted against 65534, and root's registering P again with
 * no name or uuid keeps P's.
 */
struct belong {
    const char *sock, *space;
    int32_t guest;
    uint64_t root_id;
    int step;
};

static void
become_nobody(void)
{
    if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
        TEST_FAIL("dropping privileges: %s", strerror(errno));
}

static int
nobody_guest_main(void *arg)
{
    become_nobody();
    return guest_main(arg);
}

static int
belong_main(void *arg)
{
    const struct belong *b = arg;
    lockd_space *sp = NULL;
    struct disks d;
    struct rows rs;
    lockd_conn *c;

    become_nobody();
    c = conn_open(b->sock);
    if (b->step == 0) {
        ASSERT_OK(lockd_conn_register(c, b->guest, -1, UUID1, "nobody's guest"));
        lockd_conn_close(c);
        return 0;
    }
    rs = rows_list(c, b->guest);
    ASSERT_INT_EQ(rs.n, 0);
    free(rs.r);
    assert_counts(status_on(c), 1, 0);
    ASSERT_INT_EQ(lockd_conn_release(c, b->guest, 1, &b->root_id), 0);
    ASSERT_INT_EQ(lockd_conn_release(c, b->guest, 0, NULL), 0);
    /* Its own lease on P: its own to see and release. */
    ASSERT_OK(lockd_space_open(b->space, LOCKD_OPEN_CREATE, &sp));
    disks_make(&d, sp, "mine", 1);
    ASSERT_OK(hand_over(c, sp, b->guest, &d, NULL));
    rs = rows_list(c, b->guest);
    ASSERT_INT_EQ(rs.n, 1);
    ASSERT_INT_EQ(rs.r[0].id, d.id[0]);
    ASSERT_INT_EQ(rs.r[0].uid, NOBODY);
    free(rs.r);
    assert_counts(status_on(c), 1, 1);
    lockd_space_close(sp);
    lockd_conn_close(c);
    return 0;
}

HELPER_CASE(leases_belong_to_uid)
{
    lockd_space *sp = space_open_rooted();
    struct belong b;
    struct guest p;
    struct disks d;
    struct rows rs;
    struct fsd *s;
    lockd_conn *c;
    int pipefd[2];

    nobody_setup();
    s = open_helper_new();
    fsd_start_ready(s);
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        TEST_FAIL("pipe: %s", strerror(errno));
    p.pid = spawn(nobody_guest_main, &pipefd[0], &pipefd[0], 1);
    close(pipefd[0]);
    p.wfd = pipefd[1];
    ASSERT_TRUE(WAIT_UNTIL(proc_sleeping(p.pid), 5000));

    b = (struct belong){s->sock, test_path("uspace"), p.pid, 0, 0};
    ASSERT_INT_EQ(test_wait(spawn(belong_main, &b, NULL, 0)), 0);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, p.pid, -1, NULL, NULL));
    disks_make(&d, sp, "roots", 1);
    ASSERT_OK(hand_over(c, sp, p.pid, &d, NULL));
    b.root_id = d.id[0];
    b.step = 1;
    ASSERT_INT_EQ(test_wait(spawn(belong_main, &b, NULL, 0)), 0);

    ASSERT_INT_EQ(probe(sp, d.key[0]), LOCKD_EXCLUSIVE);
    rs = rows_list(c, p.pid);
    ASSERT_INT_EQ(rs.n, 2);
    ASSERT_INT_EQ(rows_find_id(&rs, d.id[0])->uid, 0);
    ASSERT_STR_EQ(rs.r[0].name, "nobody's guest");
    ASSERT_STR_EQ(rs.r[0].uuid, UUID1);
    free(rs.r);
    guest_end(&p);
    ASSERT_TRUE(WAIT_UNTIL(probe(sp, d.key[0]) == LOCKD_FREE, 5000));
    lockd_conn_close(c);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * The index of open file descriptions is rebuilt after a re-exec (the
 * restore leaves it to the first hand-over, to keep the gap short): the
 * same description is still refused to another owner and still a retry for
 * its own, and a release after the re-exec leaves the index right.
 */
HELPER_CASE(ofd_index_after_reexec)
{
    lockd_space *sp = space_open_rooted();
    uint64_t id, id2;
    struct disks d;
    struct guest g1, g2;
    struct fsd *s;
    lockd_lease *l;
    lockd_conn *c;
    ino_t ino;

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 0);
    fsd_start_ready(s);
    guest_start(&g1);
    guest_start(&g2);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g1.pid, -1, NULL, "guest-1"));
    ASSERT_OK(lockd_conn_register(c, g2.pid, -1, NULL, "guest-2"));
    disks_make(&d, sp, "idx", 2);
    ASSERT_OK(lockd_acquire(sp, 2, d.keys, NULL, LOCKD_TRY, &l));
    ASSERT_OK(lockd_conn_handoff(c, g1.pid, l, NULL, NULL));
    lockd_conn_close(c);
    ino = fsd_install(s);
    ASSERT_OK(kill(s->pid, SIGUSR1));
    ASSERT_TRUE(WAIT_UNTIL(fsd_exe_ino(s->pid) == ino, 10000));
    c = conn_open(s->sock);
    /* A release after the re-exec, before any hand-over rebuilt the index
     * (it unlocks our copies too: one description). */
    ASSERT_INT_EQ(lockd_conn_release(c, g1.pid, 0, NULL), 2);
    ASSERT_OK(lockd_lease_release(l));
    ASSERT_OK(lockd_acquire(sp, 2, d.keys, NULL, LOCKD_TRY, &l));
    ASSERT_OK(lockd_conn_handoff(c, g1.pid, l, NULL, NULL));
    ino = fsd_install(s);
    ASSERT_OK(kill(s->pid, SIGUSR1));
    ASSERT_TRUE(WAIT_UNTIL(fsd_exe_ino(s->pid) == ino, 10000));
    lockd_conn_close(c);
    c = conn_open(s->sock);
    ASSERT_ERR(lockd_conn_handoff(c, g2.pid, l, NULL, NULL), EEXIST);
    {
        uint64_t ids[2], again[2];

        ASSERT_OK(lockd_conn_handoff(c, g1.pid, l, NULL, ids));
        ASSERT_OK(lockd_conn_handoff(c, g1.pid, l, NULL, again));
        ASSERT_INT_EQ(again[0], ids[0]);
        ASSERT_INT_EQ(again[1], ids[1]);
        id = ids[0], id2 = ids[1];
    }
    assert_counts(status_on(c), 2, 2);
    ASSERT_INT_EQ(lockd_conn_release(c, g1.pid, 1, &id), 1);
    ASSERT_INT_EQ(lockd_conn_release(c, g1.pid, 1, &id2), 1);
    ASSERT_OK(lockd_lease_release(l));
    ASSERT_INT_EQ(disks_probe_count(sp, &d, LOCKD_FREE), 2);
    lockd_conn_close(c);
    guest_end(&g1);
    guest_end(&g2);
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * SIGTERM and SIGINT outside a stop: with the leases in systemd's store the
 * helper exits 75, which the unit restarts (RestartForceExitStatus=) and the
 * store is kept for: every lease is adopted again, never free.  Without a
 * store there is nothing to keep them: it exits 0 and they are free.
 */
HELPER_CASE(sigterm_with_store)
{
    struct watch *w;
    struct one t;
    pid_t wpid;

    one_start(&t, 64, "term", 2, NULL);
    ASSERT_TRUE(WAIT_UNTIL(fsd_stash_count(t.s, 'L') == 2, 5000));
    w = watch_start(&t.d, 0, t.d.n, &wpid);
    watch_rounds(w, 2);
    ASSERT_INT_EQ(fsd_kill(t.s, SIGTERM), 75);
    watch_rounds(w, 2);
    fsd_start_ready(t.s);
    ASSERT_INT_EQ(fsd_kill(t.s, SIGINT), 75);
    fsd_start_ready(t.s);
    watch_rounds(w, 2);
    watch_stop(w, wpid);
    lockd_conn_close(t.c);
    t.c = conn_open(t.s->sock);
    assert_listed(t.c, t.g.pid, &t.d);
    ASSERT_CONTAINS(read_file(t.s->log), "exiting on a signal with 2 leases");
    one_end(&t);

    /* No store: the signal ends it all. */
    one_start(&t, 0, "term-nostore", 1, NULL);
    ASSERT_INT_EQ(fsd_kill(t.s, SIGTERM), 0);
    ASSERT_INT_EQ(probe(t.sp, t.d.key[0]), LOCKD_FREE);
    fsd_start_ready(t.s);
    lockd_conn_close(t.c);
    t.c = conn_open(t.s->sock);
    one_end(&t);
}

/* Every row of a listing, for comparing listings field by field. */
static void
rows_sorted(lockd_conn *c, struct rows *rs)
{
    *rs = rows_list(c, 0);
    for (size_t i = 1; i < rs->n; i++)
        for (size_t j = i; j > 0 && rs->r[j - 1].id > rs->r[j].id; j--) {
            struct row t = rs->r[j];

            rs->r[j] = rs->r[j - 1], rs->r[j - 1] = t;
        }
}

static void
assert_same_rows(const struct rows *a, const struct rows *b, const char *when)
{
    if (a->n != b->n)
        TEST_FAIL("%s: %zu rows, %zu before", when, b->n, a->n);
    for (size_t i = 0; i < a->n; i++) {
        const struct row *x = &a->r[i], *y = &b->r[i];

        if (x->id != y->id || x->mode != y->mode || x->pid != y->pid || x->uid != y->uid ||
            strcmp(x->key, y->key) || strcmp(x->disk, y->disk) || strcmp(x->uuid, y->uuid) ||
            strcmp(x->name, y->name))
            TEST_FAIL("%s: row %zu (id %llu, %s) is not what it was", when, i,
                      (unsigned long long)x->id, x->disk);
    }
}

/*
 * One run through everything that carries state: the fd store, a re-exec,
 * a hand-over after it, a crash, and a cold restart's adoption.  Each lease
 * keeps its id, mode (exclusive and shared), key, disk, owner pid, uid,
 * uuid and name, compared field by field; ids handed out after a re-exec
 * and after a crash never repeat an earlier one.
 */
HELPER_CASE(state_through_everything)
{
    lockd_space *sp = space_open_rooted();
    struct rows before, after;
    struct disks d1, d2, d3, d4;
    struct guest g1, g2;
    struct fsd *s;
    lockd_conn *c;
    ino_t ino;

    s = fsd_new("helper", FSD_ACTIVATE | FSD_NOTIFY, 64);
    fsd_start_ready(s);
    guest_start(&g1);
    guest_start(&g2);
    c = conn_open(s->sock);
    ASSERT_OK(lockd_conn_register(c, g1.pid, pidfd_of(g1.pid), UUID1, "guest-1"));
    ASSERT_OK(lockd_conn_register(c, g2.pid, -1, NULL, "guest two"));
    disks_make(&d1, sp, "every-a", 3);
    d1.modes[1] = LOCKD_SHARED;
    disks_make(&d2, sp, "every-b", 1);
    ASSERT_OK(hand_over(c, sp, g1.pid, &d1, NULL));
    ASSERT_OK(hand_over(c, sp, g2.pid, &d2, NULL));
    ASSERT_TRUE(WAIT_UNTIL(fsd_stash_count(s, 'L') == 4, 5000));
    rows_sorted(c, &before);

    ino = fsd_install(s);
    ASSERT_OK(kill(s->pid, SIGUSR1));
    ASSERT_TRUE(WAIT_UNTIL(fsd_exe_ino(s->pid) == ino, 10000));
    rows_sorted(c, &after);
    assert_same_rows(&before, &after, "after a re-exec");
    free(after.r);

    /* A hand-over after the re-exec: new ids, none like an earlier one. */
    disks_make(&d3, sp, "every-c", 1);
    ASSERT_OK(hand_over(c, sp, g2.pid, &d3, NULL));
    for (size_t i = 0; i < before.n; i++)
        ASSERT_TRUE(before.r[i].id != d3.id[0]);
    free(before.r);
    rows_sorted(c, &before);
    ASSERT_INT_EQ(before.n, 5);

    /* A crash: adopted from the store, the same rows. */
    ASSERT_TRUE(WAIT_UNTIL(fsd_stash_count(s, 'L') == 5, 5000));
    lockd_conn_close(c);
    ASSERT_INT_EQ(fsd_kill(s, SIGKILL), 128 + SIGKILL);
    fsd_start_ready(s);
    c = conn_open(s->sock);
    rows_sorted(c, &after);
    assert_same_rows(&before, &after, "after a crash");
    free(after.r);
    disks_make(&d4, sp, "every-d", 1);
    ASSERT_OK(hand_over(c, sp, g1.pid, &d4, NULL));
    for (size_t i = 0; i < before.n; i++)
        ASSERT_TRUE(before.r[i].id != d4.id[0]);
    ASSERT_INT_EQ(probe(sp, d1.key[1]), LOCKD_SHARED);
    ASSERT_INT_EQ(probe(sp, d1.key[0]), LOCKD_EXCLUSIVE);
    free(before.r);
    lockd_conn_close(c);
    guest_end(&g1);
    guest_end(&g2);
    ASSERT_TRUE(WAIT_UNTIL(disks_probe_count(sp, &d1, LOCKD_FREE) == 3 &&
                               probe(sp, d3.key[0]) == LOCKD_FREE &&
                               probe(sp, d4.key[0]) == LOCKD_FREE,
                           5000));
    ASSERT_INT_EQ(fsd_stop(s), 0);
    FSD_ASSERT_CLEAN(s);
    fsd_fini(s);
    lockd_space_close(sp);
}

/*
 * An fd whose close blocks must not freeze the helper (found by attack): a
 * TCP socket to a listener that never accepts, its send buffer full and
 * SO_LINGER set, sent along with a request the helper refuses, while the
 * helper is stopped so that its close is the last one.  The helper still
 * answers at once, and a guest's exit still frees its lease.
 */
HELPER_CASE(lingering_socket_sent)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct linger lg = {1, 600};
    socklen_t alen = sizeof(a);
    static char junk[65536];
    uint8_t msg[RAW_HDR];
    int lfd, tfd, sock;
    struct one t;

    one_start(&t, 0, "linger", 1, NULL);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_OK(sys(lfd));
    ASSERT_OK(sys(bind(lfd, (struct sockaddr *)&a, sizeof(a))));
    ASSERT_OK(sys(listen(lfd, 1)));
    ASSERT_OK(sys(getsockname(lfd, (struct sockaddr *)&a, &alen)));
    tfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    ASSERT_OK(sys(tfd));
    ASSERT_TRUE(connect(tfd, (struct sockaddr *)&a, sizeof(a)) == 0 || errno == EINPROGRESS);
    ASSERT_TRUE(WAIT_UNTIL(send(tfd, junk, 1, MSG_NOSIGNAL) == 1, 5000));
    while (send(tfd, junk, sizeof(junk), MSG_NOSIGNAL) > 0)
        ;
    ASSERT_OK(sys(setsockopt(tfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))));

    sock = raw_connect(t.s->sock);
    ASSERT_OK(kill(t.s->pid, SIGSTOP));
    raw_ok(msg, RAW_STATUS, 42, 1, 0); /* a status announcing 1 fd: refused */
    ASSERT_OK(raw_send(sock, msg, sizeof(msg), &tfd, 1));
    close(tfd); /* the helper's copy is now the last */
    ASSERT_OK(kill(t.s->pid, SIGCONT));
    {
        int64_t t0 = test_now_ms();

        assert_counts(status_at(t.s->sock), 1, 1);
        if (test_now_ms() - t0 > 10000)
            TEST_FAIL("the helper took %lld ms to answer", (long long)(test_now_ms() - t0));
    }
    close(sock);
    close(lfd);
    one_end(&t);
}

/* `test-helper NAME` runs only the case NAME. */
#define RUN(only, fn, sec)                                                          \
    do {                                                                            \
        if (!(only) || strcmp((only), #fn) == 0)                                    \
            TEST_RUN_TIMEOUT(fn, sec);                                              \
    } while (0)

int
main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : NULL;
    struct rlimit rl;

    if (argc >= 3 && strcmp(argv[1], "--fake-helper") == 0)
        fake_helper(argv[2], argc > 3 ? argv[3] : "");
    /* The load test's poller needs 19,000 fds. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    RUN(only, harness_selfcheck, 60);
    RUN(only, notify_basics, 60);
    RUN(only, crash_manager, 60);
    RUN(only, crash_helper_fdstore, 60);
    RUN(only, crash_helper_store_bound, 60);
    RUN(only, crash_helper_no_store, 60);
    RUN(only, stash_rotation, 120);
    RUN(only, stash_inflight_bound, 120);
    /* valgrind runs one thread at a time, and a thread in a system call it
     * does not know to block (close(), here in FUSE's FLUSH) keeps the turn:
     * every thread of the helper then waits for the stall, which is
     * valgrind's limit, not the helper's.  The case runs in check and
     * check-asan. */
    if (!getenv("LOCKD_TEST_VALGRIND"))
        RUN(only, hung_filesystem, 60);
    else if (!only || strcmp(only, "hung_filesystem") == 0)
        printf("# hung_filesystem: not under valgrind (its threads take turns)\n");
    RUN(only, keeper_crash, 60);
    RUN(only, reexec_under_load, 120);
    RUN(only, refusals, 60);
    RUN(only, stale_notice, 60);
    RUN(only, handoff_rollback, 60);
    RUN(only, handoff_rollback_stash, 60);
    RUN(only, handoff_retried, 60);
    RUN(only, handoff_in_its_space, 60);
    RUN(only, handoff_names_in_callers_order, 60);
    RUN(only, client_out_of_step, 60);
    RUN(only, credentials, 60);
    RUN(only, malformed, 60);
    RUN(only, fd_exhaustion, 60);
    RUN(only, register_out_of_fds, 60);
    RUN(only, idle_exit_reactivation, 60);
    RUN(only, systemd_units, 60);
    RUN(only, socket_path_not_socket, 60);
    RUN(only, notice_all_refused, 60);
    RUN(only, log_escapes_names, 60);
    RUN(only, lost_lease_listed, 60);
    RUN(only, verbose_logs_leases, 60);
    RUN(only, adopt_checks_locks, 60);
    RUN(only, loss_actions, 60);
    RUN(only, hook_as_registering_uid, 60);
    RUN(only, exec_or_kill, 60);
    RUN(only, exec_or_kill_hook_cannot_start, 60);
    RUN(only, conn_in_place, 60);
    RUN(only, direct_leases, 60);
    RUN(only, named_space_leases, 60);
    RUN(only, one_ofd_one_lease, 60);
    RUN(only, ids_new_after_cold_start, 60);
    RUN(only, adopt_free_record_kinds, 60);
    RUN(only, reexec_checks_binary, 60);
    RUN(only, user_caps, 60);
    RUN(only, leases_belong_to_uid, 60);
    RUN(only, ofd_index_after_reexec, 60);
    RUN(only, sigterm_with_store, 60);
    RUN(only, state_through_everything, 60);
    RUN(only, lingering_socket_sent, 60);
    return test_done();
}
