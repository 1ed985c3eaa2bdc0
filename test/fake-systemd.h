/* SPDX-License-Identifier: MIT */
/*
 * fake-systemd.h: a test plays systemd 252 for lockd-helper.
 *
 * systemd-socket-activate execs the helper in place and never listens again,
 * and a real service manager cannot be started inside a test, so this file
 * does what PID 1 does for a Type=notify service with a .socket unit,
 * FileDescriptorStoreMax= and Restart=on-failure, and no more:
 *
 *   - it owns the listening SOCK_SEQPACKET socket (mode 0600, like
 *     SocketMode=0600) and a NOTIFY_SOCKET (AF_UNIX datagrams, SO_PASSCRED);
 *   - it spawns the helper with LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES for
 *     the listening socket followed by every stored fd, in the order systemd
 *     252 uses (its store is a list that each new fd is prepended to), every
 *     other fd closed, the signal mask cleared, stdin /dev/null and
 *     stdout/stderr appended to a log file;
 *   - it receives every notification as it arrives (the kernel queues only
 *     max_dgram_qlen = 10 datagrams and sd_notify() blocks when the queue is
 *     full, so a harness that read them only when asked would deadlock the
 *     helper) and applies systemd 252's rules, from
 *     manager_dispatch_notify_fd() and service_notify_message():
 *       * a message of 4096 bytes or more, with a NUL inside, with truncated
 *         control data, or from a pid that is not the main pid
 *         (NotifyAccess=main) is ignored, its fds closed;
 *       * READY=1, STATUS=, WATCHDOG=1 are recorded;
 *       * FDSTOREREMOVE=1 + FDNAME= closes every stored fd of that name;
 *       * FDSTORE=1 stores every fd of the message under its one FDNAME=
 *         (a name over 255 characters, with ':' or a control character is
 *         invalid: the fds are stored as "stored"; no name: "stored"), in
 *         no particular order (systemd iterates a hash set), each fd first
 *         compared with every stored one (kcmp: the same open file
 *         description is a duplicate and closed); past
 *         FileDescriptorStoreMax= the rest are closed; fds in a message
 *         without FDSTORE=1 are closed;
 *       * a stored fd pushed without FDPOLL=0 is polled (epoll, events 0) and
 *         dropped on EPOLLHUP/EPOLLERR (a pidfd hangs up when its process is
 *         reaped); regular files cannot be polled (epoll_ctl() says EPERM)
 *         and are kept, as systemd does;
 *   - when the helper exits cleanly (status 0, or SIGHUP/SIGINT/SIGTERM/
 *     SIGPIPE) the service is stopped and the store emptied; when it fails
 *     (any other status or signal) the store is kept for the restart, which
 *     the test asks for with fsd_start() when it wants it (so that it can
 *     act while the helper is down);
 *   - a restart execs for real, so LISTEN_FDNAMES longer than MAX_ARG_STRLEN
 *     (128 KiB with "LISTEN_FDNAMES=" and the NUL) fails with E2BIG, as the
 *     restart of a real service would;
 *   - with FSD_REACTIVATE, when the helper is not running and a client
 *     connects (the listening socket is readable), it starts the helper,
 *     as a socket unit does.
 * Everything systemd would log as a warning about the service (an ignored
 * message, an invalid name, a full store, a failed exec), and a push of a
 * name that is already stored (allowed, but the helper could not tell the
 * two apart when they come back), is a "violation": counted, and the first
 * few described in violation[], so that a test can assert that none
 * happened.
 *
 * The fake systemd is a process of its own, forked by fsd_new(): it alone
 * holds the stored fds (a copy in the test would keep leases held), it is
 * the helper's parent (it reaps it through a signalfd: valgrind knows no
 * pidfd_open()), and it is single-threaded, like the test.  Its state is in
 * a shared mapping, struct fsd, under a process-shared mutex; every event
 * broadcasts a process-shared condition variable, and tests wait with
 * FSD_WAIT(s, condition, ms), reading fields of s.  The test asks it to
 * start the helper, empty the store or quit with a command; it signals the
 * helper itself, by pid.
 *
 * The helper binary is copied into the scratch directory and started from
 * there (fsd_install() replaces the copy with a fresh inode, for upgrade and
 * re-exec tests); the original is $LOCKD_HELPER_BIN, else
 * $LOCKD_TOP/lockd-helper, else lockd-helper in the parent of the directory
 * holding the test binary.
 */
#ifndef LOCKD_FAKE_SYSTEMD_H
#define LOCKD_FAKE_SYSTEMD_H

#include "test.h"

#include <assert.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#define FSD_FDS_MAX      253    /* SCM_MAX_FD: the kernel's limit per message */
#define FSD_NOTIFY_FDS   768    /* NOTIFY_FD_MAX in systemd 252's manager.c */
#define FSD_NOTIFY_MAX   4096   /* NOTIFY_BUFFER_MAX (PIPE_BUF) */
#define FSD_FDNAME_MAX   255    /* FDNAME_MAX */
#define FSD_VIOLATION_SZ 4096
#define FSD_STORE_CAP    24576  /* slots, holes included: more than any fd limit here */
#define FSD_SOCKET_NAME  "lockd-helper.socket" /* a socket's default FileDescriptorName= */

/* fsd.flags */
#define FSD_ACTIVATE   0x1u /* pass the listening socket; else --socket PATH */
#define FSD_NOTIFY     0x2u /* set NOTIFY_SOCKET */
#define FSD_REACTIVATE 0x4u /* start the helper when a client connects to a stopped one */

/* Commands from the test to its fake systemd. */
enum { FSD_CMD_START = 1, FSD_CMD_CLEAR, FSD_CMD_QUIT, FSD_CMD_STASH_L, FSD_CMD_STASH_P };

struct fsd_stored {
    int fd;      /* in the fake systemd's process; -1: removed (a hole) */
    int poll;    /* pushed without FDPOLL=0 */
    uint64_t id; /* epoll cookie */
    char name[FSD_FDNAME_MAX + 1];
};

/* One shared mapping; everything after the lock is read and written under
 * it, by the test and by the fake systemd. */
struct fsd {
    pthread_mutex_t lock;
    pthread_cond_t cond;

    /* Configuration: set by fsd_new(), may be changed before fsd_start(). */
    unsigned flags;
    unsigned store_max;      /* FileDescriptorStoreMax=; also --fd-store-max if > 0 */
    uint64_t watchdog_usec;  /* WATCHDOG_USEC=, 0 for none */
    char args[16][64];       /* extra arguments, before the fake systemd's own */
    int nargs;
    char bin[PATH_MAX];      /* what is executed */
    int bin_is_copy;         /* bin is the copy: fsd_start() installs it if missing */
    char sock[108];          /* the listening socket's path */
    char notify[108];
    char log[PATH_MAX];

    /* The test's side. */
    pid_t harness;           /* the fake systemd's pid */
    int wake;                /* the test's end of the command socketpair */
    unsigned cmd, cmd_seq, cmd_done;
    int cmd_result;

    /* State, written by the fake systemd. */
    pid_t pid;               /* the running helper, 0 if none */
    pid_t last_pid;          /* the one before, whose last words may still arrive */
    unsigned starts, exits;
    int last_status;         /* exit code, or 128 + signal; -1 before any exit */
    int last_start_error;    /* 0, or -errno of the last failed start (-E2BIG) */
    int ready;               /* READY=1 since the last start */
    unsigned long watchdogs, messages, dups, drops, remove_misses;
    char status[1024];
    unsigned violations;
    char violation[FSD_VIOLATION_SZ];
    uint64_t next_id;
    size_t nstore;           /* stored fds */
    size_t nslots;           /* slots used in store[], holes included */
    /* In push order: the last live slot is the head of systemd's list. */
    struct fsd_stored store[FSD_STORE_CAP];
};

/* The fake systemd's own fds (it is a process of its own: one per process). */
static struct {
    int listen_fd, notify_fd, epoll_fd, signal_fd, wake_fd, devnull_fd, log_fd;
} fsd_h;

/* ------------------------------------------------------------------------
 * Small things
 */

static inline void
fsd_violation(struct fsd *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static inline void
fsd_violation(struct fsd *s, const char *fmt, ...)
{
    size_t len = strlen(s->violation);
    va_list ap;

    s->violations++;
    if (len + 2 >= sizeof(s->violation))
        return;
    va_start(ap, fmt);
    vsnprintf(s->violation + len, sizeof(s->violation) - len - 1, fmt, ap);
    va_end(ap);
    len = strlen(s->violation);
    if (len + 1 < sizeof(s->violation))
        strcat(s->violation, "\n");
}

/* systemd's fdname_is_valid(): printable ASCII without ':', at most 255. */
static inline int
fsd_fdname_valid(const char *p)
{
    const char *s = p;

    for (; *p; p++)
        if ((unsigned char)*p < ' ' || (unsigned char)*p >= 127 || *p == ':')
            return 0;
    return p - s <= FSD_FDNAME_MAX;
}

/* systemd's same_fd() with kcmp(2): the same open file description. */
static inline int
fsd_same_fd(int a, int b)
{
    pid_t me = getpid();
    long r = syscall(SYS_kcmp, me, me, 0 /* KCMP_FILE */, a, b);

    if (r < 0)
        TEST_FAIL("kcmp: %s", strerror(errno));
    return r == 0;
}

/* The directory the tree was built in: $LOCKD_TOP, else the parent of the
 * directory holding this test binary.  The Makefile should export LOCKD_TOP. */
static inline void
fsd_top(char *buf, size_t cap)
{
    const char *env = getenv("LOCKD_TOP");
    char exe[PATH_MAX];
    char *slash;
    ssize_t n;

    if (env && *env) {
        if (snprintf(buf, cap, "%s", env) >= (int)cap)
            TEST_FAIL("LOCKD_TOP too long");
        return;
    }
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n < 0)
        TEST_FAIL("readlink /proc/self/exe: %s", strerror(errno));
    exe[n] = '\0';
    for (int i = 0; i < 2; i++) {
        slash = strrchr(exe, '/');
        if (!slash)
            TEST_FAIL("cannot find the tree from %s", exe);
        *slash = '\0';
    }
    if (snprintf(buf, cap, "%s", exe[0] ? exe : "/") >= (int)cap)
        TEST_FAIL("path too long: %s", exe);
}

static inline void
fsd_helper_source(char *buf, size_t cap)
{
    const char *env = getenv("LOCKD_HELPER_BIN");
    char top[PATH_MAX - 64];

    if (env && *env) {
        if (snprintf(buf, cap, "%s", env) >= (int)cap)
            TEST_FAIL("LOCKD_HELPER_BIN too long");
        return;
    }
    fsd_top(top, sizeof(top));
    if (snprintf(buf, cap, "%s/lockd-helper", top) >= (int)cap)
        TEST_FAIL("path too long: %s", top);
}

/*
 * Install a fresh copy of src at dst (written aside, then renamed over, so a
 * process running the old copy keeps its inode and dst gets a new one).
 * Returns the new inode number.
 */
static inline ino_t
fsd_copy_file(const char *src, const char *dst)
{
    char tmp[PATH_MAX + 8], buf[65536];
    struct stat st;
    int in, out;
    ssize_t n;

    snprintf(tmp, sizeof(tmp), "%s.new", dst);
    in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        TEST_FAIL("open %s: %s (build it first: make lockd-helper)", src, strerror(errno));
    out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    if (out < 0)
        TEST_FAIL("create %s: %s", tmp, strerror(errno));
    while ((n = read(in, buf, sizeof(buf))) > 0)
        if (write(out, buf, (size_t)n) != n)
            TEST_FAIL("write %s: %s", tmp, strerror(errno));
    if (n < 0 || fchmod(out, 0755) < 0 || fstat(out, &st) < 0)
        TEST_FAIL("copy to %s: %s", tmp, strerror(errno));
    close(in);
    /* Closed before anything can exec it: an fd open for writing makes
     * execve() fail with ETXTBSY. */
    if (close(out) < 0 || rename(tmp, dst) < 0)
        TEST_FAIL("install %s: %s", dst, strerror(errno));
    return st.st_ino;
}

/* Replace the helper copy with a fresh inode of the same binary (an
 * "upgrade"); returns its inode, which /proc/PID/exe shows after an exec. */
static inline ino_t
fsd_install(struct fsd *s)
{
    char src[PATH_MAX];

    fsd_helper_source(src, sizeof(src));
    return fsd_copy_file(src, s->bin);
}

/* The inode of the program pid runs, 0 if the process is gone.  Under
 * valgrind /proc/pid/exe is valgrind's tool, and the program is the file
 * mapped first (the tool is loaded high, the program at its usual place). */
static inline ino_t
fsd_exe_ino(pid_t pid)
{
    char path[64], line[512];
    unsigned long long ino = 0;
    struct stat st;
    FILE *f;

    if (!getenv("LOCKD_TEST_VALGRIND")) {
        snprintf(path, sizeof(path), "/proc/%d/exe", (int)pid);
        return stat(path, &st) == 0 ? st.st_ino : 0;
    }
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    if (!(f = fopen(path, "re")))
        return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "%*s %*s %*s %*s %llu", &ino) == 1 && ino != 0)
            break;
    fclose(f);
    return (ino_t)ino;
}

/* A robust mutex: if the other side died holding it, say so. */
static inline void
fsd_lock(struct fsd *s)
{
    int r = pthread_mutex_lock(&s->lock);

    if (r == EOWNERDEAD) {
        pthread_mutex_consistent(&s->lock);
        TEST_FAIL("the fake systemd or the test died holding the lock");
    }
    if (r != 0)
        TEST_FAIL("pthread_mutex_lock: %s", strerror(r));
}

static inline void
fsd_unlock(struct fsd *s)
{
    pthread_mutex_unlock(&s->lock);
}

/* ------------------------------------------------------------------------
 * The store (fds in the fake systemd's process; names visible to both)
 */

static inline void
fsd_store_unlink(struct fsd *s, size_t i)
{
    struct fsd_stored *e = &s->store[i];

    assert(e->fd >= 0);
    if (e->poll)
        (void)epoll_ctl(fsd_h.epoll_fd, EPOLL_CTL_DEL, e->fd, NULL);
    close(e->fd);
    e->fd = -1;
    s->nstore--;
}

/* Squeeze out the holes, keeping the order. */
static inline void
fsd_store_compact(struct fsd *s)
{
    size_t k = 0;

    for (size_t i = 0; i < s->nslots; i++)
        if (s->store[i].fd >= 0)
            s->store[k++] = s->store[i];
    s->nslots = k;
}

/* service_add_fd_store(): 1 stored, 0 duplicate (closed), -EXFULL (not
 * consumed). */
static inline int
fsd_store_add(struct fsd *s, int fd, const char *name, int do_poll)
{
    struct fsd_stored *e;

    if (s->nstore >= s->store_max)
        return -EXFULL;
    for (size_t i = 0; i < s->nslots; i++)
        if (s->store[i].fd >= 0 && fsd_same_fd(s->store[i].fd, fd)) {
            s->dups++;
            close(fd);
            return 0;
        }
    if (s->nslots == FSD_STORE_CAP)
        fsd_store_compact(s);
    if (s->nslots == FSD_STORE_CAP)
        TEST_FAIL("fake systemd: store of %d fds full", FSD_STORE_CAP);
    e = &s->store[s->nslots++];
    e->fd = fd;
    e->poll = 0;
    e->id = ++s->next_id;
    snprintf(e->name, sizeof(e->name), "%s", name);
    if (do_poll) {
        struct epoll_event ev = {.events = 0, .data.u64 = e->id};

        if (epoll_ctl(fsd_h.epoll_fd, EPOLL_CTL_ADD, fd, &ev) == 0)
            e->poll = 1;
        else if (errno != EPERM) /* EPERM: not pollable (a regular file) */
            TEST_FAIL("epoll_ctl: %s", strerror(errno));
    }
    s->nstore++;
    return 1;
}

/* Empty the store, as stopping the service does. */
static inline void
fsd_store_clear_locked(struct fsd *s)
{
    for (size_t i = 0; i < s->nslots; i++)
        if (s->store[i].fd >= 0)
            fsd_store_unlink(s, i);
    s->nslots = 0;
}

/* Stored fds whose name starts with prefix ("" for all).  Under lock. */
static inline size_t
fsd_count_locked(const struct fsd *s, const char *prefix)
{
    size_t n = 0, len = strlen(prefix);

    for (size_t i = 0; i < s->nslots; i++)
        if (s->store[i].fd >= 0 && strncmp(s->store[i].name, prefix, len) == 0)
            n++;
    return n;
}

/*
 * lockd-helper's stash (a stored socket named "S<n>", whose queue holds its
 * lease fds and pidfds, 9 bytes of name each): how many distinct entries of
 * kind ('L' or 'P') the queues of all stored stashes hold, live or not yet
 * rotated out.  Peeks with SO_PEEK_OFF, as the helper does after a crash,
 * and leaves each queue as it was.  In the fake systemd, under lock: tests
 * call fsd_stash_count().
 */
static inline size_t
fsd_stash_count_here(const struct fsd *s, char kind)
{
    uint64_t seen[4096];
    size_t nseen = 0;

    for (size_t i = 0; i < s->nslots; i++) {
        int off = 0, fd = s->store[i].fd;

        if (fd < 0 || s->store[i].name[0] != 'S')
            continue;
        if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off)) < 0)
            TEST_FAIL("SO_PEEK_OFF on a stash: %s", strerror(errno));
        for (;;) {
            uint8_t data[253 * 9 + 1];
            union {
                char buf[CMSG_SPACE(253 * sizeof(int))];
                struct cmsghdr align;
            } u;
            struct iovec iov = {data, sizeof(data)};
            struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                               .msg_controllen = sizeof(u.buf)};
            ssize_t n = recvmsg(fd, &m, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

            if (n <= 0)
                break;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                    for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); k++)
                        close(((int *)CMSG_DATA(c))[k]);
            for (ssize_t e = 0; e + 9 <= n; e += 9) {
                uint64_t gen;
                size_t k;

                if (data[e] != (uint8_t)kind)
                    continue;
                memcpy(&gen, data + e + 1, 8);
                for (k = 0; k < nseen && seen[k] != gen; k++)
                    ;
                if (k == nseen && nseen < sizeof(seen) / sizeof(seen[0]))
                    seen[nseen++] = gen;
            }
        }
        off = -1;
        (void)setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off));
    }
    return nseen;
}

static inline int
fsd_has_locked(const struct fsd *s, const char *name)
{
    for (size_t i = 0; i < s->nslots; i++)
        if (s->store[i].fd >= 0 && strcmp(s->store[i].name, name) == 0)
            return 1;
    return 0;
}

/* The name of the k-th stored fd in systemd's list order (newest first),
 * which is the order a restart passes them in.  Under lock. */
static inline const char *
fsd_name_at_locked(const struct fsd *s, size_t k)
{
    for (size_t i = s->nslots; i-- > 0;)
        if (s->store[i].fd >= 0 && k-- == 0)
            return s->store[i].name;
    return NULL;
}

/* ------------------------------------------------------------------------
 * Notifications
 */

/* The value of the first line "KEY=...". */
static inline const char *
fsd_tag(char **tags, size_t n, const char *key)
{
    size_t len = strlen(key);

    for (size_t i = 0; i < n; i++)
        if (strncmp(tags[i], key, len) == 0)
            return tags[i] + len;
    return NULL;
}

static inline int
fsd_has_tag(char **tags, size_t n, const char *tag)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(tags[i], tag) == 0)
            return 1;
    return 0;
}

/* Stores fds in no particular order, as systemd's hash set gives them. */
static inline void
fsd_do_fdstore(struct fsd *s, char **tags, size_t ntags, int *fds, size_t nfds)
{
    const char *name = fsd_tag(tags, ntags, "FDNAME=");
    int do_poll = !fsd_has_tag(tags, ntags, "FDPOLL=0");

    if (name && !fsd_fdname_valid(name)) {
        fsd_violation(s, "FDSTORE=1 with invalid FDNAME=%.300s: stored as \"stored\"", name);
        name = NULL;
    } else if (!name && nfds > 0)
        fsd_violation(s, "FDSTORE=1 without FDNAME=: stored as \"stored\"");
    if (name && nfds > 0 && fsd_has_locked(s, name))
        fsd_violation(s, "FDNAME=%s pushed while a stored fd has that name", name);
    for (size_t i = nfds; i > 1; i--) {
        size_t j = (size_t)random() % i;
        int t = fds[i - 1];

        fds[i - 1] = fds[j];
        fds[j] = t;
    }
    for (size_t i = 0; i < nfds; i++) {
        if (fsd_store_add(s, fds[i], name ? name : "stored", do_poll) == -EXFULL) {
            fsd_violation(s, "cannot store more fds than FileDescriptorStoreMax=%u "
                          "(FDNAME=%s), closing %zu", s->store_max, name ? name : "",
                          nfds - i);
            break;
        }
        fds[i] = -1;
    }
}

static inline void
fsd_do_remove(struct fsd *s, char **tags, size_t ntags)
{
    const char *name = fsd_tag(tags, ntags, "FDNAME=");
    int found = 0;

    if (!name || !fsd_fdname_valid(name)) {
        fsd_violation(s, "FDSTOREREMOVE=1 without a valid FDNAME=");
        return;
    }
    for (size_t i = 0; i < s->nslots; i++)
        if (s->store[i].fd >= 0 && strcmp(s->store[i].name, name) == 0) {
            fsd_store_unlink(s, i);
            found = 1;
        }
    if (!found)
        s->remove_misses++;
}

/* service_notify_message(), for an authorized message. */
static inline void
fsd_dispatch(struct fsd *s, char *buf, int *fds, size_t nfds)
{
    char *tags[64], *save = NULL, *t;
    size_t ntags = 0;
    const char *status;

    for (t = strtok_r(buf, "\n", &save); t && ntags < 64; t = strtok_r(NULL, "\n", &save))
        tags[ntags++] = t;
    if (fsd_has_tag(tags, ntags, "READY=1"))
        s->ready = 1;
    status = fsd_tag(tags, ntags, "STATUS=");
    if (status)
        snprintf(s->status, sizeof(s->status), "%s", status);
    if (fsd_has_tag(tags, ntags, "WATCHDOG=1"))
        s->watchdogs++;
    if (fsd_has_tag(tags, ntags, "FDSTOREREMOVE=1"))
        fsd_do_remove(s, tags, ntags);
    if (fsd_has_tag(tags, ntags, "FDSTORE=1"))
        fsd_do_fdstore(s, tags, ntags, fds, nfds);
    else if (nfds > 0)
        fsd_violation(s, "%zu fds sent without FDSTORE=1: closed", nfds);
    for (size_t i = 0; i < nfds; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* manager_dispatch_notify_fd(): one datagram; 0 when the queue is empty. */
static inline int
fsd_recv_one(struct fsd *s)
{
    union {
        char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * FSD_NOTIFY_FDS)];
        struct cmsghdr align;
    } ctl;
    char buf[FSD_NOTIFY_MAX + 1];
    struct iovec iov = {buf, sizeof(buf) - 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                        .msg_controllen = sizeof(ctl.buf)};
    struct ucred *cred = NULL;
    int *fds = NULL;
    size_t nfds = 0;
    ssize_t n;

    n = recvmsg(fsd_h.notify_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        TEST_FAIL("recvmsg notify: %s", strerror(errno));
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            fds = (int *)CMSG_DATA(c);
            nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS)
            cred = (struct ucred *)CMSG_DATA(c);
    }
    s->messages++;
    if (mh.msg_flags & MSG_CTRUNC)
        fsd_violation(s, "notification with truncated control data (too many fds?)");
    else if (!cred || (cred->pid != s->pid && cred->pid != s->last_pid))
        fsd_violation(s, "notification from pid %d, not the main pid %d: ignored",
                      cred ? (int)cred->pid : -1, (int)s->pid);
    else if ((size_t)n >= FSD_NOTIFY_MAX || (mh.msg_flags & MSG_TRUNC))
        fsd_violation(s, "notification of %zd bytes exceeds %d: ignored", n, FSD_NOTIFY_MAX);
    else if (n > 1 && memchr(buf, 0, (size_t)n - 1))
        fsd_violation(s, "notification with a NUL inside: ignored");
    else if (nfds > FSD_FDS_MAX)
        fsd_violation(s, "notification with %zu fds", nfds);
    else {
        buf[n] = '\0';
        fsd_dispatch(s, buf, fds, nfds);
        return 1;
    }
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
    return 1;
}

static inline void
fsd_drain(struct fsd *s)
{
    while (fsd_recv_one(s))
        ;
}

/* ------------------------------------------------------------------------
 * Spawning
 */

/* systemd's shift_fds(): move fds[i] to 3 + i, closing the originals. */
static inline int
fsd_shift_fds(int *fds, size_t n)
{
    for (size_t start = 0;;) {
        long restart = -1;

        for (size_t i = start; i < n; i++) {
            int nfd;

            if (fds[i] == (int)i + 3)
                continue;
            nfd = fcntl(fds[i], F_DUPFD, (int)i + 3);
            if (nfd < 0)
                return -1;
            close(fds[i]);
            fds[i] = nfd;
            if (nfd != (int)i + 3 && restart < 0)
                restart = (long)i;
        }
        if (restart < 0)
            return 0;
        start = (size_t)restart;
    }
}

static inline int
fsd_cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;

    return x < y ? -1 : x > y;
}

/* Close every fd above 2 but those in keep[] (sorted). */
static inline void
fsd_close_others(const int *keep, size_t nkeep)
{
    int prev = 2;

    for (size_t i = 0; i < nkeep; i++) {
        if (keep[i] > prev + 1)
            syscall(SYS_close_range, prev + 1, keep[i] - 1, 0);
        if (keep[i] > prev)
            prev = keep[i];
    }
    syscall(SYS_close_range, prev + 1, ~0U, 0);
}

/* In the child: only async-signal-safe calls from here to execve(). */
static inline void
fsd_child(int *fds, size_t n, const int *keep, size_t nkeep, int err_w, char **argv,
          char **envp, char *pidvar)
{
    pid_t me = getpid();
    char digits[16];
    sigset_t none;
    size_t k = 0;
    int e;

    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0 || dup2(fsd_h.devnull_fd, 0) < 0 ||
        dup2(fsd_h.log_fd, 1) < 0 || dup2(fsd_h.log_fd, 2) < 0)
        goto fail;
    fsd_close_others(keep, nkeep);
    e = fcntl(err_w, F_DUPFD_CLOEXEC, (int)n + 3);
    if (e < 0)
        goto fail;
    close(err_w);
    err_w = e;
    if (fsd_shift_fds(fds, n) < 0)
        goto fail;
    /* What was already in place still has our FD_CLOEXEC. */
    for (size_t i = 0; i < n; i++)
        if (fcntl((int)i + 3, F_SETFD, 0) < 0)
            goto fail;
    if (pidvar) {
        char *p = pidvar + strlen("LISTEN_PID=");

        do
            digits[k++] = (char)('0' + me % 10);
        while ((me /= 10) > 0);
        while (k > 0)
            *p++ = digits[--k];
        *p = '\0';
    }
    execve(argv[0], argv, envp);
fail:
    e = errno;
    if (write(err_w, &e, sizeof(e)) < 0)
        _exit(126);
    _exit(127);
}

static inline void
fsd_env_add(char **envp, size_t *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static inline void
fsd_env_add(char **envp, size_t *n, const char *fmt, ...)
{
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vasprintf(&envp[*n], fmt, ap);
    va_end(ap);
    if (r < 0)
        TEST_FAIL("out of memory");
    (*n)++;
}

/* The environment: ours without the variables systemd sets, plus those. */
static inline char **
fsd_build_env(struct fsd *s, const char *const *names, size_t n, char **ret_pidvar)
{
    extern char **environ;
    static const char *const drop[] = {"LISTEN_PID=", "LISTEN_FDS=", "LISTEN_FDNAMES=",
                                       "NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID=",
                                       "LOCKD_HELPER_STATE_FD=", "LOCKD_SOCKET="};
    size_t cnt = 0, k = 0, len = 1;
    char **envp;

    while (environ[cnt])
        cnt++;
    envp = calloc(cnt + 8, sizeof(*envp));
    if (!envp)
        TEST_FAIL("out of memory");
    for (size_t i = 0; i < cnt; i++) {
        size_t j;

        for (j = 0; j < sizeof(drop) / sizeof(drop[0]); j++)
            if (strncmp(environ[i], drop[j], strlen(drop[j])) == 0)
                break;
        if (j == sizeof(drop) / sizeof(drop[0]) && !(envp[k++] = strdup(environ[i])))
            TEST_FAIL("out of memory");
    }
    *ret_pidvar = NULL;
    if (n > 0) {
        char *joined, *p;

        for (size_t i = 0; i < n; i++)
            len += strlen(names[i]) + 1;
        joined = p = malloc(len);
        if (!joined)
            TEST_FAIL("out of memory");
        for (size_t i = 0; i < n; i++)
            p += sprintf(p, "%s%s", i ? ":" : "", names[i]);
        /* Room for the pid, written in the child. */
        fsd_env_add(envp, &k, "LISTEN_PID=%-20s", "");
        *ret_pidvar = envp[k - 1];
        fsd_env_add(envp, &k, "LISTEN_FDS=%zu", n);
        fsd_env_add(envp, &k, "LISTEN_FDNAMES=%s", joined);
        free(joined);
    }
    if (s->flags & FSD_NOTIFY)
        fsd_env_add(envp, &k, "NOTIFY_SOCKET=%s", s->notify);
    if (s->watchdog_usec)
        fsd_env_add(envp, &k, "WATCHDOG_USEC=%llu", (unsigned long long)s->watchdog_usec);
    return envp;
}

static inline char **
fsd_build_argv(struct fsd *s, char *store_max)
{
    static char wrap[1024];
    char **argv = calloc((size_t)s->nargs + 8 + 32, sizeof(*argv));
    int k;

    if (!argv)
        TEST_FAIL("out of memory");
    k = (int)test_wrapper(wrap, sizeof(wrap), argv, 32);
    argv[k++] = s->bin;
    for (int i = 0; i < s->nargs; i++)
        argv[k++] = s->args[i];
    if (!(s->flags & FSD_ACTIVATE)) {
        argv[k++] = (char *)"--socket";
        argv[k++] = s->sock;
    }
    if (s->store_max > 0 && (s->flags & FSD_NOTIFY)) {
        argv[k++] = (char *)"--fd-store-max";
        argv[k++] = store_max;
    }
    return argv;
}

static inline void
fsd_free_strv(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* Start the helper: 0, or -errno of the exec (-E2BIG when LISTEN_FDNAMES
 * is too long), which is also a violation.  In the fake systemd. */
static inline int
fsd_spawn_locked(struct fsd *s)
{
    size_t n = ((s->flags & FSD_ACTIVATE) ? 1 : 0) + s->nstore, k = 0;
    int *fds = calloc(n + 1, sizeof(int)), *keep = calloc(n + 2, sizeof(int));
    const char **names = calloc(n + 1, sizeof(char *));
    char store_max[16], *pidvar, **envp, **argv;
    int errp[2], err = 0;
    ssize_t got;
    pid_t pid;

    if (!fds || !keep || !names)
        TEST_FAIL("out of memory");
    if (s->pid != 0)
        TEST_FAIL("fake systemd: helper %d still running", (int)s->pid);
    if (s->flags & FSD_ACTIVATE) {
        fds[k] = fsd_h.listen_fd;
        names[k++] = FSD_SOCKET_NAME;
    }
    for (size_t i = s->nslots; i-- > 0;)
        if (s->store[i].fd >= 0) {
            fds[k] = s->store[i].fd;
            names[k++] = s->store[i].name;
        }
    snprintf(store_max, sizeof(store_max), "%u", s->store_max);
    envp = fsd_build_env(s, names, n, &pidvar);
    /* The kernel refuses an environment string longer than MAX_ARG_STRLEN
     * (32 pages, NUL included) with E2BIG, and so would the exec below; it
     * is checked first only because valgrind cannot survive a failed
     * execve() in a child it runs. */
    for (char **e = envp; *e; e++)
        if (strlen(*e) + 1 > 32 * (size_t)sysconf(_SC_PAGESIZE)) {
            fsd_free_strv(envp);
            free(names);
            free(keep);
            free(fds);
            s->last_start_error = -E2BIG;
            fsd_violation(s, "start failed: execve: %s", strerror(E2BIG));
            return -E2BIG;
        }
    argv = fsd_build_argv(s, store_max);
    if (pipe2(errp, O_CLOEXEC) < 0)
        TEST_FAIL("pipe: %s", strerror(errno));
    if (n > 0)
        memcpy(keep, fds, n * sizeof(int));
    keep[n] = errp[1];
    qsort(keep, n + 1, sizeof(int), fsd_cmp_int);
    pid = fork();
    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0)
        fsd_child(fds, n, keep, n + 1, errp[1], argv, envp, pidvar);
    close(errp[1]);
    do
        got = read(errp[0], &err, sizeof(err));
    while (got < 0 && errno == EINTR);
    close(errp[0]);
    fsd_free_strv(envp);
    free(argv);
    free(names);
    free(keep);
    free(fds);
    s->ready = 0;
    s->status[0] = '\0';
    if (got > 0) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        s->last_start_error = -err;
        fsd_violation(s, "start failed: execve: %s", strerror(err));
        return -err;
    }
    s->last_start_error = 0;
    s->pid = pid;
    s->starts++;
    return 0;
}

/* ------------------------------------------------------------------------
 * The fake systemd's process
 */

static inline int
fsd_clean_exit(int st)
{
    return st == 0 || st == 128 + SIGHUP || st == 128 + SIGINT || st == 128 + SIGTERM ||
           st == 128 + SIGPIPE;
}

/* SIGCHLD: if the helper exited, its last notifications are queued
 * already, and systemd reads them before it handles the SIGCHLD: so do we. */
static inline void
fsd_sigchld_locked(struct fsd *s)
{
    struct signalfd_siginfo si;
    int st;

    while (read(fsd_h.signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
        ;
    if (s->pid == 0 || waitpid(s->pid, &st, WNOHANG) != s->pid)
        return;
    fsd_drain(s);
    s->last_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    s->last_pid = s->pid;
    s->pid = 0;
    s->exits++;
    if (fsd_clean_exit(s->last_status))
        fsd_store_clear_locked(s);
}

static inline void
fsd_dropped_locked(struct fsd *s)
{
    struct epoll_event ev[64];
    int n = epoll_wait(fsd_h.epoll_fd, ev, 64, 0);

    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < s->nslots; j++)
            if (s->store[j].fd >= 0 && s->store[j].id == ev[i].data.u64) {
                /* on_fd_store_io(): EPOLLHUP or EPOLLERR, "closing". */
                s->drops++;
                fsd_store_unlink(s, j);
                break;
            }
}

/* A command from the test; returns 1 to quit. */
static inline int
fsd_command_locked(struct fsd *s)
{
    char c;
    ssize_t n;

    while ((n = recv(fsd_h.wake_fd, &c, 1, MSG_DONTWAIT)) > 0)
        ;
    if (n == 0)
        return 1; /* the test is gone */
    if (s->cmd_done == s->cmd_seq)
        return 0;
    s->cmd_result = 0;
    if (s->cmd == FSD_CMD_START)
        s->cmd_result = fsd_spawn_locked(s);
    else if (s->cmd == FSD_CMD_STASH_L || s->cmd == FSD_CMD_STASH_P)
        s->cmd_result = (int)fsd_stash_count_here(s, s->cmd == FSD_CMD_STASH_L ? 'L' : 'P');
    else if (s->cmd == FSD_CMD_CLEAR)
        fsd_store_clear_locked(s);
    s->cmd_done = s->cmd_seq;
    return s->cmd == FSD_CMD_QUIT;
}

/* Quit: a helper still running is killed (by its pid) and reaped, the
 * store emptied, so nothing a test held survives it. */
static inline void
fsd_quit_locked(struct fsd *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR)
            ;
        s->pid = 0;
    }
    fsd_store_clear_locked(s);
}

static inline void __attribute__((noreturn))
fsd_main(struct fsd *s)
{
    sigset_t mask;
    int quit = 0;

    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        TEST_FAIL("sigprocmask: %s", strerror(errno));
    fsd_h.signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    fsd_h.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (fsd_h.signal_fd < 0 || fsd_h.epoll_fd < 0)
        TEST_FAIL("fake systemd: %s", strerror(errno));
    srandom((unsigned)getpid());
    while (!quit) {
        struct pollfd p[5] = {
            {fsd_h.wake_fd, POLLIN, 0},
            {fsd_h.notify_fd, POLLIN, 0},
            {fsd_h.epoll_fd, POLLIN, 0},
            {fsd_h.signal_fd, POLLIN, 0},
            {(s->flags & FSD_REACTIVATE) && s->pid == 0 && s->last_start_error == 0
                 ? fsd_h.listen_fd : -1, POLLIN, 0},
        };

        if (poll(p, 5, -1) < 0 && errno != EINTR)
            TEST_FAIL("poll: %s", strerror(errno));
        fsd_lock(s);
        if (p[3].revents)
            fsd_sigchld_locked(s);
        if (p[1].revents)
            fsd_drain(s);
        if (p[2].revents)
            fsd_dropped_locked(s);
        if (p[4].revents && s->pid == 0)
            (void)fsd_spawn_locked(s);
        if (p[0].revents)
            quit = fsd_command_locked(s);
        if (quit)
            fsd_quit_locked(s);
        pthread_cond_broadcast(&s->cond);
        fsd_unlock(s);
    }
    _exit(0);
}

/* ------------------------------------------------------------------------
 * What tests call
 */

static inline void
fsd_cond_wait(struct fsd *s, int64_t end_ms)
{
    struct timespec ts = {.tv_sec = end_ms / 1000, .tv_nsec = (end_ms % 1000) * 1000000};
    int r = pthread_cond_timedwait(&s->cond, &s->lock, &ts);

    if (r == EOWNERDEAD) {
        pthread_mutex_consistent(&s->lock);
        TEST_FAIL("the fake systemd died holding the lock");
    }
    if (r == ETIMEDOUT && waitpid(s->harness, &r, WNOHANG) == s->harness)
        TEST_FAIL("the fake systemd %d died: status %d (signal %d)", (int)s->harness,
                  WIFEXITED(r) ? WEXITSTATUS(r) : -1, WIFSIGNALED(r) ? WTERMSIG(r) : 0);
}

/*
 * Wait until cond (an expression over s's fields, evaluated under its lock)
 * holds, for up to ms milliseconds: 1 if it did, 0 on timeout.
 */
#define FSD_WAIT(s, cond, ms)                                                       \
    ({                                                                              \
        int64_t _fend = test_now_ms() + (ms);                                       \
        int _fok = 0;                                                               \
        fsd_lock(s);                                                                \
        for (;;) {                                                                  \
            if (cond) {                                                             \
                _fok = 1;                                                           \
                break;                                                              \
            }                                                                       \
            if (test_now_ms() >= _fend)                                             \
                break;                                                              \
            fsd_cond_wait(s, _fend);                                                \
        }                                                                           \
        fsd_unlock(s);                                                              \
        _fok;                                                                       \
    })

static inline int
fsd_bind(int type, const char *path, mode_t mode, int listen_too)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);

    if (fd < 0 || strlen(path) >= sizeof(sa.sun_path))
        TEST_FAIL("socket for %s: %s", path, strerror(errno));
    strcpy(sa.sun_path, path);
    (void)unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, mode) < 0 ||
        (listen_too && listen(fd, SOMAXCONN) < 0))
        TEST_FAIL("bind %s: %s", path, strerror(errno));
    return fd;
}

static inline void
fsd_sync_init(struct fsd *s)
{
    pthread_mutexattr_t ma;
    pthread_condattr_t ca;

    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&s->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_condattr_init(&ca);
    pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
}

/*
 * Start a fake systemd named name: its files are name.sock, name.notify and
 * name.log in the scratch directory, and the helper is started from
 * bin/lockd-helper there.  The helper is not started yet: adjust the
 * configuration fields, then fsd_start().
 */
static inline struct fsd *
fsd_new(const char *name, unsigned flags, unsigned store_max)
{
    struct fsd *s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                         -1, 0);
    pid_t parent = getpid(), child;
    int wake[2], one = 1;

    if (s == MAP_FAILED)
        TEST_FAIL("mmap: %s", strerror(errno));
    fsd_sync_init(s);
    s->flags = flags;
    s->store_max = store_max;
    s->last_status = -1;
    snprintf(s->sock, sizeof(s->sock), "%s.sock", test_path(name));
    snprintf(s->notify, sizeof(s->notify), "%s.notify", test_path(name));
    snprintf(s->log, sizeof(s->log), "%s.log", test_path(name));
    (void)mkdir(test_path("bin"), 0755);
    snprintf(s->bin, sizeof(s->bin), "%s", test_path("bin/lockd-helper"));
    s->bin_is_copy = 1;
    fsd_h.listen_fd = flags & FSD_ACTIVATE ? fsd_bind(SOCK_SEQPACKET, s->sock, 0600, 1) : -1;
    fsd_h.notify_fd = fsd_bind(SOCK_DGRAM, s->notify, 0600, 0);
    if (setsockopt(fsd_h.notify_fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0)
        TEST_FAIL("SO_PASSCRED: %s", strerror(errno));
    fsd_h.devnull_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    fsd_h.log_fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fsd_h.devnull_fd < 0 || fsd_h.log_fd < 0 ||
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, wake) < 0)
        TEST_FAIL("fsd_new: %s", strerror(errno));
    fsd_h.wake_fd = wake[1];
    child = fork();
    if (child < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (child == 0) {
        int keep[5] = {fsd_h.listen_fd, fsd_h.notify_fd, fsd_h.devnull_fd, fsd_h.log_fd,
                       fsd_h.wake_fd};

        /* Dies with the test, and holds none of the test's fds. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(1);
        qsort(keep, 5, sizeof(int), fsd_cmp_int);
        fsd_close_others(keep, 5);
        fsd_main(s);
    }
    if (fsd_h.listen_fd >= 0)
        close(fsd_h.listen_fd);
    close(fsd_h.notify_fd);
    close(fsd_h.devnull_fd);
    close(fsd_h.log_fd);
    close(wake[1]);
    s->wake = wake[0];
    s->harness = child; /* only here: the mapping is shared with the child */
    return s;
}

static inline void
fsd_arg(struct fsd *s, const char *arg)
{
    assert(s->nargs < 16 && strlen(arg) < sizeof(s->args[0]));
    strcpy(s->args[s->nargs++], arg);
}

/* Have the fake systemd run cmd; returns its result. */
static inline int
fsd_command(struct fsd *s, unsigned cmd)
{
    unsigned seq;
    int r;

    fsd_lock(s);
    s->cmd = cmd;
    seq = ++s->cmd_seq;
    fsd_unlock(s);
    if (send(s->wake, "c", 1, MSG_NOSIGNAL) != 1)
        TEST_FAIL("the fake systemd is gone: %s", strerror(errno));
    if (!FSD_WAIT(s, s->cmd_done == seq, 30000))
        TEST_FAIL("the fake systemd did not answer");
    fsd_lock(s);
    r = s->cmd_result;
    fsd_unlock(s);
    return r;
}

/* fsd_stash_count_here(), from a test: not under lock. */
static inline size_t
fsd_stash_count(struct fsd *s, char kind)
{
    return (size_t)fsd_command(s, kind == 'L' ? FSD_CMD_STASH_L : FSD_CMD_STASH_P);
}

/* Start (or restart) the helper: 0 or -errno, see fsd_spawn_locked(). */
static inline int
fsd_start(struct fsd *s)
{
    if (s->bin_is_copy && access(s->bin, X_OK) < 0)
        (void)fsd_install(s);
    return fsd_command(s, FSD_CMD_START);
}

/* Start the helper and wait for READY=1 (with FSD_NOTIFY) or for its
 * socket to accept connections. */
static inline void
fsd_start_ready(struct fsd *s)
{
    int r = fsd_start(s);

    if (r < 0)
        TEST_FAIL("starting %s: %s\n%s", s->bin, strerror(-r), s->violation);
    if (s->flags & FSD_NOTIFY) {
        if (!FSD_WAIT(s, s->ready || s->pid == 0, 10000) || !FSD_WAIT(s, s->ready, 0))
            TEST_FAIL("helper sent no READY=1 (exit status %d)", s->last_status);
    } else {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

        strcpy(sa.sun_path, s->sock);
        if (!WAIT_UNTIL(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, 10000))
            TEST_FAIL("helper never listened on %s", s->sock);
        close(fd);
    }
}

/* Send sig to the helper (by its pid) and wait for the fake systemd to
 * reap it: returns the exit status (128 + signal when killed). */
static inline int
fsd_kill(struct fsd *s, int sig)
{
    unsigned exits;
    pid_t pid;

    fsd_lock(s);
    pid = s->pid;
    exits = s->exits;
    fsd_unlock(s);
    if (pid <= 0)
        TEST_FAIL("fsd_kill: no helper running");
    if (kill(pid, sig) < 0)
        TEST_FAIL("kill %d: %s", (int)pid, strerror(errno));
    if (!FSD_WAIT(s, s->exits != exits, 20000))
        TEST_FAIL("helper %d did not exit on signal %d", (int)pid, sig);
    return s->last_status;
}

/* "systemctl stop": SIGTERM, wait, and the store emptied whatever the
 * status. */
static inline int
fsd_stop(struct fsd *s)
{
    int st = fsd_kill(s, SIGTERM);

    (void)fsd_command(s, FSD_CMD_CLEAR);
    return st;
}

/* End the fake systemd: a helper still running is killed (by its pid), the
 * store emptied. */
static inline void
fsd_fini(struct fsd *s)
{
    int st;

    (void)fsd_command(s, FSD_CMD_QUIT);
    st = test_wait(s->harness);
    if (st != 0)
        TEST_FAIL("the fake systemd exited with status %d", st);
    close(s->wake);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    munmap(s, sizeof(*s));
}

/* Take (and reset) the violations so far: their count, and their text in
 * buf. */
static inline unsigned
fsd_violations_take(struct fsd *s, char *buf, size_t cap)
{
    unsigned n;

    fsd_lock(s);
    n = s->violations;
    snprintf(buf, cap, "%s", s->violation);
    s->violations = 0;
    s->violation[0] = '\0';
    fsd_unlock(s);
    return n;
}

/* Fail the test if systemd would have warned about anything. */
#define FSD_ASSERT_CLEAN(s)                                                         \
    do {                                                                            \
        fsd_lock(s);                                                                \
        if ((s)->violations)                                                        \
            TEST_FAIL("%u systemd rule violation(s):\n%s", (s)->violations,          \
                      (s)->violation);                                              \
        fsd_unlock(s);                                                              \
        test_no_valgrind_report((s)->log);                                          \
    } while (0)

#endif
