/* SPDX-License-Identifier: MIT */
/*
 * lockd-keeper: the part of systemd that keeps lockd-helper's leases alive
 * across its crashes, for systems without systemd.  lockd-keeper.h is the
 * manual; this comment says why it looks the way it does.
 *
 * A lease is an OFD lock, and an OFD lock lives as long as some fd refers
 * to its open file description.  The helper keeps one copy of each lease fd
 * in a socket's receive queue (the stash) and hands the receiving end to
 * "the fd store"; whoever holds the store holds the leases while no helper
 * runs.  So the keeper's one job is to hold a few fds and give them back,
 * and its one duty is never to close them by accident: it has no
 * automatic cleanup, frees the store only when a helper exits 0 (the
 * helper's word that nothing is to be kept), and never gives up restarting.
 *
 * Everything else is kept out of it.  It reads no client input (the
 * listening socket and the stored fds are never read), trusts notifications
 * only from its own current child, and is one thread around one poll().
 * The helper, not the keeper, decides what a signal means.
 */
#define _GNU_SOURCE
#include "lockd-keeper.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STORE_MAX      16    /* fds kept; the helper stores 2, 3 for a moment */
#define NOTIFY_MAX     4096  /* systemd's NOTIFY_BUFFER_MAX: larger is ignored */
#define MSG_FDS_MAX    253   /* SCM_MAX_FD: the most one datagram can carry */
#define FDNAME_MAX     255   /* systemd's FDNAME_MAX */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define STABLE_MS      10000 /* an instance that lived this long was not a crash loop */
#define WARN_BURST     10    /* ignored-notification warnings at once... */
#define WARN_EVERY_NS  1000000000LL /* ...then one a second */
#define STORE_FD_MAX   "8"   /* --fd-store-max: store on (>= 3), as the unit sets it */

struct stored {
    int fd;
    char name[FDNAME_MAX + 1];
};

static struct {
    int listen_fd, notify_fd, signal_fd, pidfd;
    pid_t pid;            /* the running helper; 0: none */
    int ready;            /* it said READY=1 */
    int64_t started_ns;   /* when it was started */
    int64_t restart_ns;   /* when the next one starts, if pid is 0 */
    int backoff_ms;       /* the delay after the next quick exit */
    uid_t uid;            /* notifications must come from it: ours */
    char notify_env[80];  /* "@lockd-keeper/<pid>/<random>" */
    struct stored store[STORE_MAX]; /* in store order */
    size_t nstore;
    const char *helper_path;
    char **argv;          /* the helper's, with --fd-store-max appended */
    const char *socket_path;
    dev_t sock_dev;       /* the socket file as it was at the start, */
    ino_t sock_ino;       /* so that only that one is removed */
    int sock_known;
    int64_t warn_tat_ns;  /* the rate limit of ignored-message warnings */
    unsigned long warn_dropped;
} K = {.listen_fd = -1, .notify_fd = -1, .signal_fd = -1, .pidfd = -1,
       .backoff_ms = BACKOFF_MIN_MS};

/* ------------------------------------------------------------------------
 * Small tools
 */

/* Length of the well-formed UTF-8 character at p that is no control (C1
 * included: U+0080-U+009F, whose CSI a terminal acts on), or 0. */
static size_t
utf8_char(const unsigned char *p)
{
    uint32_t c;
    size_t n, i;

    if (*p >= 0xc2 && *p <= 0xdf)
        n = 2, c = *p & 0x1fu;
    else if (*p >= 0xe0 && *p <= 0xef)
        n = 3, c = *p & 0x0fu;
    else if (*p >= 0xf0 && *p <= 0xf4)
        n = 4, c = *p & 0x07u;
    else
        return 0;
    for (i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (p[i] & 0x3fu);
    }
    if (c < 0xa0 || (n == 3 && c < 0x800) || (n == 4 && c < 0x10000) || c > 0x10ffff ||
        (c >= 0xd800 && c <= 0xdfff))
        return 0;
    return n;
}

size_t
log_escape(char *out, size_t size, size_t n, const char *text)
{
    const unsigned char *p;
    size_t k;

    for (p = (const unsigned char *)text; *p && n + 5 < size; p++) {
        k = *p >= 0x80 ? utf8_char(p) : 0;
        if (k > 0 && n + k + 5 < size) {
            memcpy(out + n, p, k);
            n += k;
            p += k - 1;
        } else if (*p < 0x20 || *p >= 0x7f || *p == '\\')
            n += (size_t)snprintf(out + n, size - n, "\\x%02x", *p);
        else
            out[n++] = (char)*p;
    }
    return n;
}

/*
 * One line each, with the sd-daemon priority prefix.  Fd names come from
 * the helper, which is trusted, but a control byte in one would still split
 * a line: every control byte and backslash is written as \xHH.
 */
static void __attribute__((format(printf, 2, 3)))
log_line(int prio, const char *fmt, ...)
{
    char buf[1024], out[4 * sizeof(buf) + 32];
    size_t n;
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* The "<3>" journald reads is noise on a terminal. */
    n = isatty(STDERR_FILENO)
            ? (size_t)snprintf(out, sizeof(out), "lockd-keeper: ")
            : (size_t)snprintf(out, sizeof(out), "<%d>lockd-keeper: ", prio);
    n = log_escape(out, sizeof(out), n, buf);
    out[n++] = '\n';
    /* One write per line (stderr is unbuffered), so that the helper's lines
     * never cut into ours. */
    (void)fwrite(out, 1, n, stderr);
}

#define log_err(...)    log_line(3, __VA_ARGS__)
#define log_warn(...)   log_line(4, __VA_ARGS__)
#define log_notice(...) log_line(5, __VA_ARGS__)
#define log_info(...)   log_line(6, __VA_ARGS__)

static int
negerrno(void)
{
    return errno > 0 ? -errno : -EIO;
}

static int64_t
now_ns(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* close() is never retried: on Linux the fd is gone even on EINTR. */
static void
safe_close(int fd)
{
    if (fd >= 0)
        (void)close(fd);
}

static void
close_all(const int *fds, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        safe_close(fds[i]);
}

static int
xpidfd_open(pid_t pid)
{
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);

    /* A pidfd is always close-on-exec (pidfd_open(2)). */
    return fd < 0 ? negerrno() : fd;
}

/* systemd's fdname_is_valid(): printable ASCII without ':' (the separator
 * of LISTEN_FDNAMES), 1 to 255 characters. */
static int
fdname_valid(const char *s)
{
    size_t n = 0;

    for (; s[n]; n++)
        if ((unsigned char)s[n] < ' ' || (unsigned char)s[n] >= 127 || s[n] == ':')
            return 0;
    return n >= 1 && n <= FDNAME_MAX;
}

static const char *
signal_name(int sig)
{
    switch (sig) {
    case SIGTERM:
        return "SIGTERM";
    case SIGINT:
        return "SIGINT";
    case SIGHUP:
        return "SIGHUP";
    case SIGUSR1:
        return "SIGUSR1";
    default:
        return "a signal";
    }
}

/* ------------------------------------------------------------------------
 * Set-up
 */

/*
 * The notify socket: a datagram socket in the abstract namespace, so that
 * no file is left behind and no directory must be writable, under a name
 * nobody can guess and bind first.  SO_PASSCRED makes the kernel attach the
 * sender's credentials to every datagram, whether it sent them or not: that
 * is what the pid check trusts.
 */
static int
notify_open(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    uint64_t rnd;
    char name[sizeof(K.notify_env) - 1]; /* "@" goes before it */
    socklen_t len;
    int one = 1, fd, r;

    if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        return negerrno();
    snprintf(name, sizeof(name), "lockd-keeper/%d/%016llx", (int)getpid(),
             (unsigned long long)rnd);
    assert(strlen(name) + 1 < sizeof(sa.sun_path));
    memcpy(sa.sun_path + 1, name, strlen(name)); /* sun_path[0] = '\0': abstract */
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return negerrno();
    if (bind(fd, (struct sockaddr *)&sa, len) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0) {
        r = negerrno();
        safe_close(fd);
        return r;
    }
    /* sd_notify() reads a leading '@' as the abstract namespace. */
    snprintf(K.notify_env, sizeof(K.notify_env), "@%s", name);
    return fd;
}

/* The four signals the keeper passes on, read from a signalfd so that they
 * are handled in the loop, never in between. */
static int
signals_open(void)
{
    sigset_t mask;
    int fd;

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        return negerrno();
    /* A stderr whose reader went away must not kill the keeper: that would
     * take the leases' crash protection with it. */
    signal(SIGPIPE, SIG_IGN);
    /* Inherited SIG_IGN would have the kernel reap the helper for us, and
     * waitpid() would never say how it ended. */
    signal(SIGCHLD, SIG_DFL);
    fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    return fd < 0 ? negerrno() : fd;
}

/* helper_argv, then "--fd-store-max 8": the last one given wins in getopt,
 * so the store is on whatever the caller passed. */
static char **
argv_build(char **helper_argv)
{
    size_t n = 0;
    char **v;

    while (helper_argv[n])
        n++;
    v = calloc(n + 3, sizeof(*v));
    if (!v)
        return NULL;
    memcpy(v, helper_argv, n * sizeof(*v));
    v[n] = (char *)"--fd-store-max";
    v[n + 1] = (char *)STORE_FD_MAX;
    return v;
}

/* Remember which socket file is ours, so that the one removed at the end is
 * that one and not one a later helper bound in its place. */
static void
socket_remember(const char *path)
{
    struct stat st;

    if (path && lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        K.sock_dev = st.st_dev;
        K.sock_ino = st.st_ino;
        K.sock_known = 1;
    }
}

static void
socket_remove(void)
{
    struct stat st;

    if (!K.socket_path || lstat(K.socket_path, &st) < 0 || !S_ISSOCK(st.st_mode))
        return;
    if (K.sock_known && (st.st_dev != K.sock_dev || st.st_ino != K.sock_ino))
        return;
    (void)unlink(K.socket_path);
}

static int
setup(void)
{
    int fd;

    /* Checked once here, so that a child is never started unwatched. */
    fd = xpidfd_open(getpid());
    if (fd < 0) {
        log_err("pidfd_open: %s (Linux 5.3 or later is needed)", strerror(-fd));
        return fd;
    }
    safe_close(fd);
    K.notify_fd = notify_open();
    if (K.notify_fd < 0) {
        log_err("cannot create the notify socket: %s", strerror(-K.notify_fd));
        return K.notify_fd;
    }
    K.signal_fd = signals_open();
    if (K.signal_fd < 0) {
        log_err("cannot set up signals: %s", strerror(-K.signal_fd));
        return K.signal_fd;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * The fd store
 */

/* Keep fds under name; what does not fit is closed (the helper holds its
 * own copies, so that costs crash protection, not a lease). */
static void
store_add(const char *name, const int *fds, size_t n)
{
    size_t i, kept = 0;

    for (i = 0; i < n; i++) {
        if (K.nstore == STORE_MAX) {
            safe_close(fds[i]);
            continue;
        }
        K.store[K.nstore].fd = fds[i];
        memcpy(K.store[K.nstore].name, name, strlen(name) + 1);
        K.nstore++;
        kept++;
    }
    if (kept < n)
        log_warn("fd store full (%d fds): %zu fd%s named %s closed, not kept", STORE_MAX,
                 n - kept, n - kept == 1 ? "" : "s", name);
}

/* Close every stored fd of that name; the rest keep their order. */
static void
store_remove(const char *name)
{
    size_t i, j = 0;

    for (i = 0; i < K.nstore; i++) {
        if (strcmp(K.store[i].name, name) == 0)
            safe_close(K.store[i].fd);
        else
            K.store[j++] = K.store[i];
    }
    K.nstore = j;
}

static void
store_clear(void)
{
    size_t i;

    for (i = 0; i < K.nstore; i++)
        safe_close(K.store[i].fd);
    K.nstore = 0;
}

/* ------------------------------------------------------------------------
 * Notifications
 */

/* A warning about an ignored message: a burst, then one a second, so that
 * a process that floods the socket cannot flood the log. */
static void
warn_ignored(const char *why, pid_t pid, uid_t uid, size_t nfds)
{
    int64_t now = now_ns();

    if (K.warn_tat_ns < now)
        K.warn_tat_ns = now;
    if (K.warn_tat_ns - now > (WARN_BURST - 1) * WARN_EVERY_NS) {
        K.warn_dropped++;
        return;
    }
    K.warn_tat_ns += WARN_EVERY_NS;
    if (K.warn_dropped)
        log_warn("notification from pid %d uid %u ignored (%s), %zu fd%s closed (and %lu "
                 "more not logged)",
                 (int)pid, (unsigned)uid, why, nfds, nfds == 1 ? "" : "s",
                 K.warn_dropped);
    else
        log_warn("notification from pid %d uid %u ignored (%s), %zu fd%s closed",
                 (int)pid, (unsigned)uid, why, nfds, nfds == 1 ? "" : "s");
    K.warn_dropped = 0;
}

/* Apply one accepted message, NUL-terminated; its fds are ours to keep or
 * close. */
static void
notify_apply(char *msg, const int *fds, size_t nfds)
{
    const char *name = NULL;
    int fdstore = 0, remove = 0;
    char *line;

    while ((line = strsep(&msg, "\n"))) {
        if (strcmp(line, "FDSTORE=1") == 0)
            fdstore = 1;
        else if (strcmp(line, "FDSTOREREMOVE=1") == 0)
            remove = 1;
        else if (strncmp(line, "FDNAME=", 7) == 0)
            name = line + 7;
        else if (strcmp(line, "READY=1") == 0 && !K.ready) {
            K.ready = 1;
            log_info("helper pid %d is ready", (int)K.pid);
        }
        /* FDPOLL=0: the keeper never polls a stored fd anyway.  STOPPING=1,
         * STATUS=, WATCHDOG=1, MAINPID= and the rest: nothing to do. */
    }
    if (remove) {
        if (name && fdname_valid(name))
            store_remove(name);
        else
            log_warn("FDSTOREREMOVE=1 without a valid FDNAME=: ignored");
    }
    if (fdstore && nfds > 0) {
        if (name && !fdname_valid(name))
            log_warn("FDSTORE=1 with an invalid FDNAME=: stored as \"stored\"");
        store_add(name && fdname_valid(name) ? name : "stored", fds, nfds);
    } else
        close_all(fds, nfds);
}

/* Collect the fds and credentials of a received message.  Returns the
 * number of fds; *ret_cred is NULL if there were no credentials. */
static size_t
notify_cmsgs(struct msghdr *m, int *fds, const struct ucred **ret_cred)
{
    struct cmsghdr *c;
    size_t n = 0, k;

    *ret_cred = NULL;
    for (c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level != SOL_SOCKET)
            continue;
        if (c->cmsg_type == SCM_RIGHTS) {
            k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            if (n + k > MSG_FDS_MAX) /* cannot happen: the buffer holds no more */
                k = MSG_FDS_MAX - n;
            memcpy(fds + n, CMSG_DATA(c), k * sizeof(int));
            n += k;
        } else if (c->cmsg_type == SCM_CREDENTIALS &&
                   c->cmsg_len >= CMSG_LEN(sizeof(struct ucred)))
            *ret_cred = (const struct ucred *)(void *)CMSG_DATA(c);
    }
    return n;
}

/* Receive one message.  Returns 1 if one was handled, 0 if the queue is
 * empty, -errno on another error. */
static int
notify_one(void)
{
    char buf[NOTIFY_MAX + 1];
    union {
        char buf[CMSG_SPACE(sizeof(struct ucred)) +
                 CMSG_SPACE(MSG_FDS_MAX * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {buf, NOTIFY_MAX};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof(u.buf)};
    const struct ucred *cred;
    int fds[MSG_FDS_MAX];
    size_t nfds;
    ssize_t n;

    n = recvmsg(K.notify_fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
    if (n < 0)
        return errno == EAGAIN ? 0 : errno == EINTR ? 1 : negerrno();
    nfds = notify_cmsgs(&m, fds, &cred);
    if (!cred || cred->pid <= 0 || cred->pid != K.pid || cred->uid != K.uid) {
        warn_ignored(!cred ? "no credentials" : "not the helper", cred ? cred->pid : 0,
                     cred ? cred->uid : (uid_t)-1, nfds);
        close_all(fds, nfds);
        return 1;
    }
    /* systemd's rules: a message it would truncate, cut short control data,
     * or a NUL inside is not trusted as a whole. */
    if (n >= NOTIFY_MAX || (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
        memchr(buf, '\0', (size_t)n)) {
        warn_ignored("malformed", cred->pid, cred->uid, nfds);
        close_all(fds, nfds);
        return 1;
    }
    buf[n] = '\0';
    notify_apply(buf, fds, nfds);
    return 1;
}

/* Everything queued, so that a helper that dies right after a FDSTORE=1 is
 * not reaped before its last words are heard. */
static void
notify_drain(void)
{
    int r;

    while ((r = notify_one()) > 0)
        ;
    if (r < 0)
        log_err("notify socket: %s", strerror(-r));
}

/* ------------------------------------------------------------------------
 * Helper instances
 */

/* In the child: fd 3 the listening socket, 4... the stored fds, nothing
 * else from 3 up.  Everything is first copied above the target range, so
 * that no dup2() can overwrite a source that is still needed. */
static int
child_fds(void)
{
    int tmp[1 + STORE_MAX];
    int n = 1 + (int)K.nstore, i;

    for (i = 0; i < n; i++) {
        tmp[i] = fcntl(i == 0 ? K.listen_fd : K.store[i - 1].fd, F_DUPFD_CLOEXEC, 3 + n);
        if (tmp[i] < 0)
            return negerrno();
    }
    /* dup2() leaves FD_CLOEXEC clear on the target: these are inherited. */
    for (i = 0; i < n; i++)
        if (dup2(tmp[i], 3 + i) < 0)
            return negerrno();
    if (close_range((unsigned)(3 + n), ~0U, 0) < 0)
        closefrom(3 + n);
    return 0;
}

/* In the child: what sd_listen_fds_with_names() and sd_notify() read. */
static int
child_env(void)
{
    char num[16], names[sizeof("helper.sock") + STORE_MAX * (FDNAME_MAX + 1)];
    size_t i, len;

    len = (size_t)snprintf(names, sizeof(names), "helper.sock");
    for (i = 0; i < K.nstore; i++)
        len += (size_t)snprintf(names + len, sizeof(names) - len, ":%s", K.store[i].name);
    snprintf(num, sizeof(num), "%d", (int)getpid());
    if (setenv("LISTEN_PID", num, 1) < 0)
        return negerrno();
    snprintf(num, sizeof(num), "%zu", 1 + K.nstore);
    if (setenv("LISTEN_FDS", num, 1) < 0 || setenv("LISTEN_FDNAMES", names, 1) < 0 ||
        setenv("NOTIFY_SOCKET", K.notify_env, 1) < 0)
        return negerrno();
    (void)unsetenv("WATCHDOG_USEC");
    (void)unsetenv("WATCHDOG_PID");
    return 0;
}

/* The child, after fork(): become a helper as systemd would start it.  The
 * keeper is single-threaded, so malloc() (setenv) is safe here. */
static void __attribute__((noreturn))
child_exec(void)
{
    sigset_t none;
    int sig, r;

    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);
    for (sig = 1; sig < NSIG; sig++)
        (void)signal(sig, SIG_DFL); /* SIGKILL, SIGSTOP, RT ones in use: EINVAL, fine */
    r = child_fds();
    if (r == 0)
        r = child_env();
    if (r == 0) {
        execv(K.helper_path, K.argv);
        r = negerrno();
    }
    log_err("cannot start %s: %s", K.helper_path, strerror(-r));
    _exit(127);
}

/* Set when the next instance starts: the delay doubles with each instance
 * that lived less than STABLE_MS (or could not be forked), and starts over
 * after one that lived longer. */
static void
backoff_next(void)
{
    int64_t now = now_ns();
    int quick = now - K.started_ns < (int64_t)STABLE_MS * 1000000;

    if (!quick)
        K.backoff_ms = BACKOFF_MIN_MS;
    K.restart_ns = now + (int64_t)K.backoff_ms * 1000000;
    if (quick && K.backoff_ms > BACKOFF_MAX_MS / 2)
        K.backoff_ms = BACKOFF_MAX_MS;
    else if (quick)
        K.backoff_ms *= 2;
}

/* Start a helper instance.  A failed fork() counts as a quick exit: tried
 * again after the backoff. */
static void
helper_start(void)
{
    pid_t pid = fork();
    int r = pid < 0 ? negerrno() : 0;

    if (pid == 0)
        child_exec();
    K.started_ns = now_ns();
    if (pid < 0) {
        log_err("fork: %s: trying again in %d ms", strerror(-r), K.backoff_ms);
        backoff_next();
        return;
    }
    K.pid = pid;
    K.ready = 0;
    K.pidfd = xpidfd_open(pid);
    /* Only EMFILE or ENOMEM now: then the loop polls waitpid() each second. */
    if (K.pidfd < 0)
        log_err("pidfd_open(%d): %s: checking on it every second", (int)pid,
                strerror(-K.pidfd));
    log_info("started helper pid %d with %zu stored fds", (int)pid, K.nstore);
}

/*
 * The helper may have exited: reap it.  Returns 1 if it exited 0 (the
 * keeper is done), 0 otherwise (still running, or a restart is due).
 * Notifications are drained first, while the child is not yet reaped:
 * its pid still names it, so its last FDSTORE=1 passes the pid check.
 */
static int
helper_reap(void)
{
    int st = 0, r = 0;
    pid_t w;

    notify_drain();
    do
        w = waitpid(K.pid, &st, WNOHANG);
    while (w < 0 && errno == EINTR);
    if (w < 0)
        r = negerrno();
    if (w == 0)
        return 0;
    safe_close(K.pidfd);
    K.pidfd = -1;
    if (w > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        log_info("helper pid %d exited with status 0: letting %zu stored fds go",
                 (int)K.pid, K.nstore);
        K.pid = 0;
        return 1;
    }
    if (w < 0) /* ECHILD: reaped behind our back; how it ended is unknown */
        log_warn("helper pid %d is gone (waitpid: %s): restarting it with %zu stored fds",
                 (int)K.pid, strerror(-r), K.nstore);
    else if (WIFSIGNALED(st))
        log_warn("helper pid %d killed by signal %d: restarting it with %zu stored fds",
                 (int)K.pid, WTERMSIG(st), K.nstore);
    else
        log_warn("helper pid %d exited with status %d: restarting it with %zu stored fds",
                 (int)K.pid, WEXITSTATUS(st), K.nstore);
    K.pid = 0;
    backoff_next();
    return 0;
}

/* ------------------------------------------------------------------------
 * Signals and the loop
 */

/* Pass each signal on.  kill() by pid is safe: the child is reaped only by
 * this loop, so until then its pid cannot name another process. */
static void
on_signal(void)
{
    struct signalfd_siginfo si;

    while (read(K.signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        int sig = (int)si.ssi_signo;

        if (K.pid <= 0)
            log_notice("%s from pid %u while no helper runs: dropped", signal_name(sig),
                       si.ssi_pid);
        else if (kill(K.pid, sig) < 0)
            log_err("cannot pass %s on to helper pid %d: %s", signal_name(sig),
                    (int)K.pid, strerror(errno));
        else
            log_info("%s from pid %u passed on to helper pid %d", signal_name(sig),
                     si.ssi_pid, (int)K.pid);
    }
}

/* Until the next restart, or a second between waitpid() checks when the
 * helper could not be given a pidfd; -1: no deadline. */
static int
loop_timeout_ms(void)
{
    int64_t left;

    if (K.pid > 0)
        return K.pidfd < 0 ? 1000 : -1;
    left = K.restart_ns - now_ns();
    if (left <= 0)
        return 0;
    return (int)((left + 999999) / 1000000);
}

/* Returns when a helper has exited 0. */
static void
loop(void)
{
    for (;;) {
        struct pollfd p[3] = {{.fd = K.notify_fd, .events = POLLIN},
                              {.fd = K.signal_fd, .events = POLLIN},
                              {.fd = K.pidfd, .events = POLLIN}}; /* -1: skipped */
        int n;

        if (K.pid <= 0 && now_ns() >= K.restart_ns)
            helper_start();
        p[2].fd = K.pidfd;
        n = poll(p, 3, loop_timeout_ms());
        if (n < 0 && errno != EINTR && errno != EAGAIN && errno != ENOMEM)
            log_err("poll: %s", strerror(errno)); /* a bug: keep the fds, go on */
        if (n <= 0 && !(K.pid > 0 && K.pidfd < 0))
            continue;
        if (p[0].revents)
            notify_drain();
        if (p[1].revents)
            on_signal();
        if (K.pid > 0 && (p[2].revents || K.pidfd < 0) && helper_reap() == 1)
            return;
    }
}

int
keeper_run(int listen_fd, const char *socket_path, const char *helper_path,
           char **helper_argv)
{
    int r;

    if (listen_fd < 0 || !helper_path || helper_path[0] != '/' || !helper_argv ||
        !helper_argv[0])
        return -EINVAL;
    K.listen_fd = listen_fd;
    K.socket_path = socket_path;
    K.helper_path = helper_path;
    /* The kernel attaches the sender's real uid (scm_send()). */
    K.uid = getuid();
    socket_remember(socket_path);
    K.argv = argv_build(helper_argv);
    if (!K.argv) {
        log_err("start-up failed: %s", strerror(ENOMEM));
        r = -ENOMEM;
    } else
        r = setup();
    if (r == 0) {
        log_info("keeping %s on %s", helper_path, socket_path ? socket_path : "a socket");
        loop();
    }
    /* A helper exited 0, or none was ever started: nothing is to be kept. */
    store_clear();
    socket_remove();
    safe_close(K.notify_fd);
    safe_close(K.signal_fd);
    safe_close(K.listen_fd);
    free(K.argv);
    K.notify_fd = K.signal_fd = K.listen_fd = -1;
    K.argv = NULL;
    return r;
}
