/* SPDX-License-Identifier: MIT */
/*
 * util.h: helpers that several test programs had each carried a copy of,
 * kept here once so that a fix reaches every program that uses them.  Only
 * code that was the same in every copy lives here; a helper that one program
 * needs with different behaviour stays in that program under its own name.
 *
 * Include it right after test.h.  Like test.h it holds only static inline
 * functions, so a program that uses a few of them still compiles without
 * unused-function warnings.  It holds:
 *   - small libc wrappers in the tests' convention (>= 0, or -errno), and a
 *     copy of a program for a step that runs as another uid;
 *   - the case's lockspace (test_path("ls")) and keys of resource names;
 *   - what /proc says about a process and about waiting lock requests;
 *   - "agents": forked processes (or threads) that run one lease operation
 *     per command, for the cases that need other holders and waiters
 *     (test-lease.c, test-gc.c).
 */
#ifndef LOCKD_TEST_UTIL_H
#define LOCKD_TEST_UTIL_H

#include "test.h"

#include <dirent.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>

#include "lockd.h"

#define ASSERT_CONTAINS(hay, needle)                                                     \
    do {                                                                                 \
        const char *_h = (hay), *_n = (needle);                                          \
        if (!strstr(_h, _n))                                                             \
            TEST_FAIL("\"%s\" not found in:\n%s", _n, _h);                               \
    } while (0)

/* ------------------------------------------------------------------------
 * libc, files and fds
 */

/* A libc call's result as the tests' convention: >= 0, or -errno. */
static inline int
sys(int r)
{
    return r < 0 ? -errno : r;
}

static inline int
read_full(int fd, void *buf, size_t len)
{
    char *p = buf;

    while (len > 0) {
        ssize_t n = read(fd, p, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EPIPE;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static inline int
write_full(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t n = write(fd, p, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Close every fd from 3 up that is not in keep[] (entries < 0 are ignored),
 * so that a forked agent holds no copy of the case's lease fds.  The range
 * stops at the soft limit, which under valgrind leaves valgrind's own fds
 * alone. */
static inline void
close_all_but(const int *keep, size_t n)
{
    struct rlimit rl;
    unsigned lo = 3, hi, k;
    size_t i;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
        rl.rlim_cur = 65536;
    hi = (unsigned)rl.rlim_cur - 1;
    while (lo <= hi) {
        unsigned next = hi + 1;

        for (i = 0; i < n; i++) {
            k = keep[i] < 0 ? 0 : (unsigned)keep[i];
            if (k >= lo && k < next)
                next = k;
        }
        if (next > lo && close_range(lo, next - 1, 0) < 0)
            TEST_FAIL("close_range: %s", strerror(errno));
        lo = next + 1;
    }
}

/* Open file descriptors of this process (the directory stream's own fd
 * counts every time, so comparisons are fair). */
static inline int
count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    int n = 0;

    if (!d)
        TEST_FAIL("opendir /proc/self/fd: %s", strerror(errno));
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static inline uint64_t
ino_of_fd(int fd)
{
    struct stat st;

    return fstat(fd, &st) < 0 ? 0 : (uint64_t)st.st_ino;
}

/* A classic (cmd F_SETLK...) or OFD (F_OFD_SETLK...) lock of type on byte
 * 0, the byte virtlockd and lockd lock: 0, or -errno. */
static inline int
byte0_lock(int fd, int cmd, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};

    return fcntl(fd, cmd, &fl) < 0 ? -errno : 0;
}

static inline int
exists(const char *path)
{
    struct stat st;

    return lstat(path, &st) == 0;
}

static inline void
xmkdir(const char *path)
{
    if (mkdir(path, 0755) < 0)
        TEST_FAIL("mkdir %s: %s", path, strerror(errno));
}

/*
 * A copy of the program at path, named name in the case's scratch
 * directory, for a step that runs it as another uid: the checkout may sit
 * under a directory that uid cannot traverse (/root is 0700, and so is
 * mkdtemp's), so it runs the copy.  The scratch directory is made
 * traversable (0711) for it.  Returns the copy's path.
 */
static inline const char *
copy_program(const char *path, const char *name)
{
    const char *dst = test_path(name);
    char buf[65536];
    int in, out;
    ssize_t n;

    if (chmod(test_scratch, 0711) < 0)
        TEST_FAIL("chmod %s: %s", test_scratch, strerror(errno));
    in = open(path, O_RDONLY | O_CLOEXEC);
    out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    if (in < 0 || out < 0)
        TEST_FAIL("copy %s to %s: %s", path, dst, strerror(errno));
    while ((n = read(in, buf, sizeof(buf))) > 0)
        if (write_full(out, buf, (size_t)n) < 0)
            TEST_FAIL("write %s: %s", dst, strerror(errno));
    if (n < 0 || close(out) < 0)
        TEST_FAIL("copy %s: %s", path, strerror(errno));
    close(in);
    return dst;
}

/* ------------------------------------------------------------------------
 * The case's lockspace and keys
 */

static inline const char *
space_dir(void)
{
    return test_path("ls");
}

static inline lockd_space *
space_open(void)
{
    lockd_space *space = NULL;

    ASSERT_OK(lockd_space_open(space_dir(), LOCKD_OPEN_CREATE, &space));
    return space;
}

/* The key of the resource name, taken as it is (no path resolution). */
static inline void
key_of(const char *name, char *key)
{
    ASSERT_OK(lockd_key_resource(name, strlen(name), key));
}

static inline void
stat_key(lockd_space *space, const char *key, struct stat *st)
{
    ASSERT_OK(sys(fstatat(lockd_space_fd(space), key, st, AT_SYMLINK_NOFOLLOW)));
}

/* Plant a node of type S_IFCHR (1:3, what /dev/null is: harmless if opened
 * after all) or S_IFIFO at name in dir, and add it to the inotify fd ifd
 * (IN_NONBLOCK), on which any open of it shows up as IN_OPEN.  A look
 * through O_PATH or a stat is not an open and shows nothing. */
static inline void
plant_watched(int ifd, const char *dir, const char *name, mode_t type)
{
    char path[4096];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    ASSERT_OK(sys(mknod(path, type | 0600, type == S_IFCHR ? makedev(1, 3) : 0)));
    ASSERT_OK(sys(inotify_add_watch(ifd, path, IN_OPEN | IN_DONT_FOLLOW)));
}

/* No node planted with plant_watched() on ifd was opened.  (A node
 * unlinked since gives IN_IGNORED, which is not an open.) */
static inline void
assert_never_opened(int ifd)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    const struct inotify_event *ev;
    ssize_t n, at;

    while ((n = read(ifd, buf, sizeof(buf))) > 0)
        for (at = 0; at < n; at += (ssize_t)(sizeof(*ev) + ev->len)) {
            ev = (const struct inotify_event *)(buf + at);
            if (ev->mask & IN_OPEN)
                TEST_FAIL("planted node %d was opened", ev->wd);
        }
    ASSERT_TRUE(n < 0 && errno == EAGAIN);
}

static inline int
acquire1(lockd_space *space, const char *key, int mode, int timeout, lockd_lease **ret)
{
    const char *keys[] = {key};

    return lockd_acquire(space, 1, keys, &mode, timeout, ret);
}

/* Is fd's file the one key names now, and still linked?  0, or -ESTALE
 * (unlinked), -ENOENT (name gone), -EXDEV (name refers to another inode). */
static inline int
same_file(int dirfd, const char *key, int fd)
{
    struct stat a, b;

    if (fstat(fd, &a) < 0)
        return -errno;
    if (a.st_nlink == 0)
        return -ESTALE;
    if (fstatat(dirfd, key, &b, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino ? 0 : -EXDEV;
}

/* ------------------------------------------------------------------------
 * /proc
 */

/* The state letter of process pid in /proc/<pid>/stat ('R', 'S', 'Z'...),
 * or 0 when it cannot be read (the process is gone) or parsed. */
static inline char
proc_state(pid_t pid)
{
    char path[64], buf[512], *p;
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : 0;
}

/* Whether process pid is asleep (state S): after an agent acknowledged an
 * acquire that must wait, that is the wait (in F_OFD_SETLKW, or between the
 * tries of a timed wait). */
static inline int
proc_sleeping(pid_t pid)
{
    return proc_state(pid) == 'S';
}

/* Whether the lock table f (/proc/locks, read from where it stands) shows a
 * blocked lock request ("->") on the file st describes: the kernel's own
 * word that someone waits in F_OFD_SETLKW. */
static inline int
locks_blocked_on(FILE *f, const struct stat *st)
{
    char line[256];
    int found = 0;

    while (!found && fgets(line, sizeof(line), f)) {
        char *tok, *save = NULL;
        unsigned maj, min;
        unsigned long ino;

        if (!strstr(line, "->"))
            continue;
        for (tok = strtok_r(line, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
            if (sscanf(tok, "%x:%x:%lu", &maj, &min, &ino) == 3 &&
                maj == major(st->st_dev) && min == minor(st->st_dev) && ino == st->st_ino)
                found = 1;
    }
    return found;
}

/* locks_blocked_on() of /proc/locks; a /proc/locks that cannot be read fails
 * the test. */
static inline int
lock_waiter_on(const struct stat *st)
{
    FILE *f = fopen("/proc/locks", "re");
    int found;

    if (!f)
        TEST_FAIL("/proc/locks: %s", strerror(errno));
    found = locks_blocked_on(f, st);
    fclose(f);
    return found;
}

/* ------------------------------------------------------------------------
 * Agents
 *
 * An agent is a forked process (or a thread) that runs one lease operation
 * per command received over a pipe and answers over another.  It
 * acknowledges each command before running it, so a case knows when a wait
 * has begun, and a process agent keeps no fd of the case's besides its pipes
 * and the one extra fd it is given (a stray inherited copy of a lease fd
 * would keep a lease alive and hide exactly the bugs the cases look for).
 */

enum {
    OP_ACQUIRE,      /* lockd_acquire() of key in mode with timeout: r, ms */
    OP_RELEASE,      /* lockd_lease_release() of the lease held: r */
    OP_FORGET,       /* lockd_lease_forget() of the lease held */
    OP_PROBE,        /* lockd_probe() of key: r, pid */
    OP_CHECK,        /* the held file is the one key names, and linked: r, ino */
    OP_POSIX_LOCK,   /* as virtlockd: open(O_CREAT), F_SETLK mode on byte 0: r, ino */
    OP_POSIX_UNLOCK, /* F_SETLK F_UNLCK of that lock, then close: r */
    OP_POSIX_UNLINK, /* as virtlockd on its last release: unlink the lease file */
    OP_SEND,         /* send the held lease's fd over the agent's socket: r */
    OP_RECV,         /* receive an fd from the agent's socket and keep it: r, ino */
    OP_OFD_UNLOCK,   /* F_OFD_SETLK F_UNLCK on byte 0 of the received fd: r */
};

struct cmd {
    int op;
    int mode; /* LOCKD_EXCLUSIVE/LOCKD_SHARED, or F_RDLCK/F_WRLCK for OP_POSIX_LOCK */
    int timeout;
    char key[LOCKD_KEY_SIZE];
};

struct reply {
    int r;
    int32_t pid;
    int64_t ms;
    uint64_t ino;
};

struct agent {
    pid_t pid;         /* a process agent, or 0 for a thread agent */
    pthread_t thread;  /* a thread agent */
    int to, from;      /* the case's ends of the command and reply pipes */
    int in, out, sock; /* the agent's ends, and its socket or -1 */
    lockd_space *space;
    lockd_lease *lease; /* what OP_ACQUIRE took */
    int pfd;            /* the POSIX-locked file */
    int rfd;            /* the received fd */
};

static inline int
op_posix_lock(struct agent *a, const struct cmd *c, struct reply *rep)
{
    int fd, r;

    if (a->pfd >= 0)
        return -EBUSY;
    fd = openat(lockd_space_fd(a->space), c->key,
                O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    r = byte0_lock(fd, F_SETLK, (short)c->mode);
    if (r < 0) {
        close(fd);
        return r;
    }
    rep->ino = ino_of_fd(fd);
    a->pfd = fd;
    return 0;
}

static inline int
op_send(struct agent *a)
{
    char data = 'L', ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &data, .iov_len = 1};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = ctl,
                        .msg_controllen = sizeof(ctl)};
    struct cmsghdr *cm;
    int fd;

    if (!a->lease || a->sock < 0)
        return -EBADF;
    memset(ctl, 0, sizeof(ctl));
    cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    fd = lockd_lease_fd(a->lease, 0);
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    return sendmsg(a->sock, &mh, MSG_NOSIGNAL) == 1 ? 0 : -errno;
}

static inline int
op_recv(struct agent *a, struct reply *rep)
{
    char data, ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &data, .iov_len = 1};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = ctl,
                        .msg_controllen = sizeof(ctl)};
    struct cmsghdr *cm;

    if (a->sock < 0 || a->rfd >= 0)
        return -EBADF;
    if (recvmsg(a->sock, &mh, MSG_CMSG_CLOEXEC) != 1)
        return -EPROTO;
    cm = CMSG_FIRSTHDR(&mh);
    if (!cm || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len != CMSG_LEN(sizeof(int)))
        return -EPROTO;
    memcpy(&a->rfd, CMSG_DATA(cm), sizeof(int));
    rep->ino = ino_of_fd(a->rfd);
    return 0;
}

static inline int
op_acquire(struct agent *a, const struct cmd *c, struct reply *rep)
{
    const char *keys[] = {c->key};
    int64_t t0 = test_now_ms();
    int r;

    if (a->lease)
        return -EBUSY;
    r = lockd_acquire(a->space, 1, keys, &c->mode, c->timeout, &a->lease);
    rep->ms = test_now_ms() - t0;
    return r;
}

static inline int
op_check(struct agent *a, const struct cmd *c, struct reply *rep)
{
    int fd = a->lease ? lockd_lease_fd(a->lease, 0) : a->pfd;

    if (fd < 0)
        return -EBADF;
    rep->ino = ino_of_fd(fd);
    return same_file(lockd_space_fd(a->space), c->key, fd);
}

static inline int
agent_run(struct agent *a, const struct cmd *c, struct reply *rep)
{
    int r;

    switch (c->op) {
    case OP_ACQUIRE:
        return op_acquire(a, c, rep);
    case OP_RELEASE:
        r = a->lease ? lockd_lease_release(a->lease) : -EBADF;
        a->lease = NULL;
        return r;
    case OP_FORGET:
        lockd_lease_forget(a->lease);
        a->lease = NULL;
        return 0;
    case OP_PROBE:
        return lockd_probe(a->space, c->key, &rep->pid);
    case OP_CHECK:
        return op_check(a, c, rep);
    case OP_POSIX_LOCK:
        return op_posix_lock(a, c, rep);
    case OP_POSIX_UNLOCK:
        if (a->pfd < 0)
            return -EBADF;
        r = byte0_lock(a->pfd, F_SETLK, F_UNLCK);
        close(a->pfd);
        a->pfd = -1;
        return r;
    case OP_POSIX_UNLINK:
        return unlinkat(lockd_space_fd(a->space), c->key, 0) < 0 ? -errno : 0;
    case OP_SEND:
        return op_send(a);
    case OP_RECV:
        return op_recv(a, rep);
    case OP_OFD_UNLOCK:
        return a->rfd < 0 ? -EBADF : byte0_lock(a->rfd, F_OFD_SETLK, F_UNLCK);
    }
    return -EINVAL;
}

/* The agent's loop: acknowledge, run, answer, until the case closes the
 * command pipe.  Whatever is still held is released on the way out. */
static inline void
agent_serve(struct agent *a)
{
    struct cmd c;
    struct reply rep;

    while (read_full(a->in, &c, sizeof(c)) == 0) {
        memset(&rep, 0, sizeof(rep));
        if (write_full(a->out, &rep, sizeof(rep)) < 0)
            break;
        rep.r = agent_run(a, &c, &rep);
        if (write_full(a->out, &rep, sizeof(rep)) < 0)
            break;
    }
    (void)lockd_lease_release(a->lease);
    if (a->pfd >= 0)
        close(a->pfd);
    if (a->rfd >= 0)
        close(a->rfd);
    close(a->in);
    close(a->out);
}

static inline void
agent_pipes(struct agent *a, int sock)
{
    int c[2], r[2];

    if (pipe2(c, O_CLOEXEC) < 0 || pipe2(r, O_CLOEXEC) < 0)
        TEST_FAIL("pipe2: %s", strerror(errno));
    memset(a, 0, sizeof(*a));
    a->in = c[0], a->to = c[1];
    a->from = r[0], a->out = r[1];
    a->sock = sock;
    a->pfd = a->rfd = -1;
}

/* Start an agent process with its own lockspace handle.  sock (or -1) is an
 * extra fd it keeps: a socket for OP_SEND/OP_RECV, or any fd it should hold. */
static inline void
agent_start(struct agent *a, int sock)
{
    agent_pipes(a, sock);
    fflush(NULL);
    a->pid = fork();
    if (a->pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (a->pid == 0) {
        int keep[] = {a->in, a->out, a->sock};

        close_all_but(keep, 3);
        if (lockd_space_open(space_dir(), 0, &a->space) < 0)
            _exit(3);
        agent_serve(a);
        lockd_space_close(a->space);
        _exit(0);
    }
    close(a->in);
    close(a->out);
}

static inline void *
agent_thread(void *arg)
{
    agent_serve(arg);
    return NULL;
}

/* Start an agent thread in this process, using the lockspace handle space. */
static inline void
agent_start_thread(struct agent *a, lockd_space *space)
{
    int r;

    agent_pipes(a, -1);
    a->space = space;
    r = pthread_create(&a->thread, NULL, agent_thread, a);
    if (r != 0)
        TEST_FAIL("pthread_create: %s", strerror(r));
}

/* Send a command and wait for its acknowledgement: the agent is now running
 * it (and, for an acquire that waits, about to wait). */
static inline void
agent_begin(struct agent *a, int op, const char *key, int mode, int timeout)
{
    struct cmd c = {.op = op, .mode = mode, .timeout = timeout};
    struct reply ack;

    if (key)
        memcpy(c.key, key, LOCKD_KEY_SIZE);
    if (write_full(a->to, &c, sizeof(c)) < 0 || read_full(a->from, &ack, sizeof(ack)) < 0)
        TEST_FAIL("agent %d died before op %d", (int)a->pid, op);
}

static inline struct reply
agent_end(struct agent *a)
{
    struct reply rep;

    if (read_full(a->from, &rep, sizeof(rep)) < 0)
        TEST_FAIL("agent %d died without answering", (int)a->pid);
    return rep;
}

static inline struct reply
agent_do(struct agent *a, int op, const char *key, int mode, int timeout)
{
    agent_begin(a, op, key, mode, timeout);
    return agent_end(a);
}

static inline int
agent_acquire(struct agent *a, const char *key, int mode, int timeout)
{
    return agent_do(a, OP_ACQUIRE, key, mode, timeout).r;
}

/* End an agent that should be well: it releases what it holds and exits 0. */
static inline void
agent_stop(struct agent *a)
{
    close(a->to);
    if (a->pid > 0)
        ASSERT_INT_EQ(test_wait(a->pid), 0);
    else
        pthread_join(a->thread, NULL);
    close(a->from);
}

static inline void
agent_kill(struct agent *a)
{
    ASSERT_TRUE(a->pid > 0);
    ASSERT_OK(kill(a->pid, SIGKILL));
    ASSERT_INT_EQ(test_wait(a->pid), 128 + SIGKILL);
    close(a->to);
    close(a->from);
}

/* lockd_probe() from a process that holds nothing. */
static inline int
probe_elsewhere(const char *key, int32_t *ret_pid)
{
    struct agent a;
    struct reply rep;

    agent_start(&a, -1);
    rep = agent_do(&a, OP_PROBE, key, 0, 0);
    agent_stop(&a);
    if (ret_pid)
        *ret_pid = rep.pid;
    return rep.r;
}

/* Try to take key from a process that holds nothing; let go at once. */
static inline int
try_elsewhere(const char *key, int mode)
{
    struct agent a;
    int r;

    agent_start(&a, -1);
    r = agent_acquire(&a, key, mode, LOCKD_TRY);
    agent_stop(&a);
    return r;
}

#endif
