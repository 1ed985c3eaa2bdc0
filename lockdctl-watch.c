/* SPDX-License-Identifier: MIT */
/*
 * lockdctl-watch.c: the lease watcher of `lockdctl run` without a helper.
 *
 * Without a helper, CMD (this process, after the exec) holds its leases by
 * inheriting their fds, and nobody looks at them again: on a network
 * filesystem a client that loses its server loses the locks, and another
 * host may be granted the disk while CMD writes it.  So run leaves a
 * watcher behind, a process of its own (forked twice: CMD never sees it as
 * a child), which checks every lease each WATCH_PERIOD_MS and, at the first
 * loss, does what --on-loss says to CMD.
 *
 * The watcher keeps no copy of a lease fd: a copy would keep the lease
 * held after CMD exits, and a script that runs two commands on one disk in
 * a row would find it busy.  On a local filesystem it reads CMD's fdinfo
 * (lockd_check_fd_of()); on a network one it must ask through the fd, so
 * each check takes a copy from CMD (pidfd_getfd(2)), checks it and closes
 * it, and for that moment (a round trip, once a second) a lease may
 * outlive CMD.  A check that does not answer within WATCH_DEADLINE_MS (a
 * server that stopped answering) counts as a loss.  It ends when CMD does,
 * or after it acted.
 */
#define _GNU_SOURCE
#include "lockdctl.h"
#include "lockd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WATCH_PERIOD_MS   1000
#define WATCH_DEADLINE_MS 5000
#define HOOK_DEADLINE_MS  30000

struct watched {
    int fd; /* its number in CMD */
    int mode;
    int remote; /* on a network filesystem: checked through a copy */
    uint64_t dev, ino;
    const char *name;
    char key[LOCKD_KEY_SIZE];
};

/* One check, on a thread of its own: the loop waits for it with a deadline
 * and leaves it behind if it hangs (the process exits soon after). */
struct check {
    pthread_mutex_t mu;
    pthread_cond_t done_cv;
    int fd, mode, result, done;
};

static void *
check_main(void *arg)
{
    struct check *c = arg;
    int r = lockd_check_fd(c->fd, c->mode);

    close(c->fd);
    pthread_mutex_lock(&c->mu);
    c->result = r;
    c->done = 1;
    pthread_cond_signal(&c->done_cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* lockd_check_fd() of copy (closed in any case), or -ETIMEDOUT. */
static int
check_with_deadline(int copy, int mode)
{
    struct check *c = calloc(1, sizeof(*c));
    struct timespec until;
    pthread_condattr_t ca;
    pthread_t t;
    int r;

    if (!c) {
        close(copy);
        return -ENOMEM;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->done_cv, &ca);
    c->fd = copy;
    c->mode = mode;
    if (pthread_create(&t, NULL, check_main, c) != 0) {
        close(copy);
        free(c);
        return -EAGAIN;
    }
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += WATCH_DEADLINE_MS / 1000;
    pthread_mutex_lock(&c->mu);
    while (!c->done && pthread_cond_timedwait(&c->done_cv, &c->mu, &until) == 0)
        ;
    r = c->done ? c->result : -ETIMEDOUT;
    pthread_mutex_unlock(&c->mu);
    if (r == -ETIMEDOUT)
        pthread_detach(t); /* still in the filesystem: c stays its */
    else {
        pthread_join(t, NULL);
        free(c);
    }
    return r;
}

/* The identity of fd, or of path if not "", as the kernel has it: a
 * network filesystem's server is not asked (fstat(2) on a FUSE file may
 * wait for it, and fail when the client lost it, which is no sign that CMD
 * let the lease go). */
static int
identify(int fd, const char *path, uint64_t *ret_dev, uint64_t *ret_ino)
{
    struct statx stx;

    if (statx(fd, path, (*path ? 0 : AT_EMPTY_PATH) | AT_STATX_DONT_SYNC, STATX_INO, &stx) < 0)
        return -errno;
    *ret_dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
    *ret_ino = stx.stx_ino;
    return 0;
}

static void
say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
say(const char *fmt, ...)
{
    char buf[1024], *text;
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    (void)vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* A process's name (comm) is its own to choose: escaped, as every name
     * lockdctl shows.  One write per line. */
    text = text_escaped(buf);
    if (!text)
        return;
    n = (size_t)snprintf(buf, sizeof(buf), "lockdctl: %s", text);
    free(text);
    if (n > sizeof(buf) - 2)
        n = sizeof(buf) - 2;
    buf[n++] = '\n';
    (void)!write(STDERR_FILENO, buf, n);
}

/* exec:CMD, as ourselves, with the facts in its environment; waited for up
 * to HOOK_DEADLINE_MS, then killed.  Returns 0 if it exited 0, else -1. */
static int
run_hook(const char *hook, pid_t owner, const char *name, const char *uuid,
         const struct watched *w, int err)
{
    const char *e = strerrorname_np(-err);
    char pidtext[16];
    pid_t pid;
    int st, i;

    snprintf(pidtext, sizeof(pidtext), "%d", (int)owner);
    pid = fork();
    if (pid < 0) {
        say("%s: cannot run the on-loss hook: %s", w->name, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setenv("LOCKD_OWNER_PID", pidtext, 1);
        setenv("LOCKD_OWNER_NAME", name ? name : "", 1);
        setenv("LOCKD_OWNER_UUID", uuid ? uuid : "", 1);
        setenv("LOCKD_DISK", w->name, 1);
        setenv("LOCKD_KEY", w->key, 1);
        setenv("LOCKD_ERROR", e ? e : "EIO", 1);
        execl("/bin/sh", "sh", "-c", hook, (char *)NULL);
        _exit(127);
    }
    for (i = 0; i < HOOK_DEADLINE_MS / 10; i++) {
        struct timespec ts = {0, 10 * 1000000};

        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
        nanosleep(&ts, NULL);
    }
    say("%s: the on-loss hook still runs after %d s: killed", w->name, HOOK_DEADLINE_MS / 1000);
    kill(pid, SIGKILL);
    (void)waitpid(pid, &st, 0);
    return -1;
}

/* What --on-loss says, once. */
static void
act(const struct opts *o, int pidfd, pid_t owner, const char *cmd, const struct watched *w,
    int err)
{
    const char *why = err == -ENOLCK   ? "its lock is gone"
                      : err == -EBUSY ? "another holder has it"
                                      : NULL;
    char buf[160];

    if (!why) {
        snprintf(buf, sizeof(buf), "its filesystem says %s (%s)",
                 strerrorname_np(-err) ? strerrorname_np(-err) : "?", strerror(-err));
        why = buf;
    }
    switch (o->on_loss) {
    case LOCKD_ON_LOSS_STOP:
        say("%s: lease lost: %s; stopping %s (pid %d; kill -CONT %d resumes it)", w->name, why,
            cmd, (int)owner, (int)owner);
        (void)syscall(SYS_pidfd_send_signal, pidfd, SIGSTOP, NULL, 0);
        break;
    case LOCKD_ON_LOSS_REPORT:
        say("%s: lease lost: %s; %s (pid %d) runs on unprotected", w->name, why, cmd,
            (int)owner);
        break;
    case LOCKD_ON_LOSS_EXEC:
    case LOCKD_ON_LOSS_EXEC_OR_KILL:
        say("%s: lease lost: %s; running the on-loss hook", w->name, why);
        if (run_hook(o->on_loss_cmd, owner, o->name ? o->name : cmd, o->uuid, w, err) ==
                0 ||
            o->on_loss == LOCKD_ON_LOSS_EXEC)
            break;
        say("%s: the on-loss hook failed; killing %s (pid %d)", w->name, cmd, (int)owner);
        (void)syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
        break;
    default:
        say("%s: lease lost: %s; killing %s (pid %d)", w->name, why, cmd, (int)owner);
        (void)syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    }
}

/* Whether w's fd in CMD still holds the lease's file (not another file CMD
 * put at that number). */
static int
still_there(pid_t owner, const struct watched *w)
{
    char fdpath[64];
    uint64_t dev, ino;

    snprintf(fdpath, sizeof(fdpath), "/proc/%d/fd/%d", (int)owner, w->fd);
    return identify(AT_FDCWD, fdpath, &dev, &ino) == 0 && dev == w->dev && ino == w->ino;
}

/*
 * Check w once: 0 held (or nothing to judge: the watcher's own trouble),
 * 1 not to be watched any longer (CMD closed that fd or put another file
 * there: its children may hold the lease now; or CMD does not let itself
 * be looked at), or the loss, -errno.
 */
static int
check_one(int pidfd, pid_t owner, struct watched *w, const char *cmd)
{
    uint64_t dev, ino;
    int copy, r;

    /* On a local filesystem the kernel's record says it all, read without
     * a copy of CMD's fd: no moment when the watcher keeps the lease
     * alive. */
    if (!w->remote) {
        r = lockd_check_fd_of(owner, w->fd, w->mode);
        if (r == -EBADF || r == -EREMOTE || !still_there(owner, w))
            return 1;
    } else {
        copy = (int)syscall(SYS_pidfd_getfd, pidfd, w->fd, 0);
        if (copy < 0 && errno == EPERM)
            say("%s: cannot watch its lease: %s does not allow it (EPERM)", w->name, cmd);
        if (copy < 0 || identify(copy, "", &dev, &ino) < 0 || dev != w->dev || ino != w->ino) {
            if (copy >= 0)
                close(copy);
            return 1;
        }
        r = check_with_deadline(copy, w->mode);
    }
    return r == -ENOMEM || r == -EMFILE || r == -ENFILE || r == -EAGAIN || r == -EACCES ? 0
                                                                                       : r;
}

static void
watch_loop(const struct opts *o, int pidfd, pid_t owner, const char *cmd, struct watched *w,
           size_t n)
{
    size_t live = n, i;

    while (live > 0) {
        struct pollfd p = {.fd = pidfd, .events = POLLIN};

        if (poll(&p, 1, WATCH_PERIOD_MS) != 0)
            return; /* CMD exited (or the pidfd failed: nothing to watch) */
        for (i = 0; i < n; i++) {
            int r = w[i].fd < 0 ? 0 : check_one(pidfd, owner, &w[i], cmd);

            if (r == 1) {
                w[i].fd = -1;
                live--;
            }
            if (r >= 0)
                continue;
            /* CMD may have exited while the check ran: then nothing was lost. */
            p.revents = 0;
            if (poll(&p, 1, 0) != 0)
                return;
            act(o, pidfd, owner, cmd, &w[i], r);
            return;
        }
    }
}

/*
 * Fork a process that runs beside CMD (this process, after its exec) without
 * being its child: forked twice, so that a CMD that waits for any child
 * never reaps it.  It keeps stderr for its messages and keepfd; stdin and
 * stdout go to /dev/null (a pipe CMD writes to ends when CMD does) and every
 * other fd is closed, lease fds included: closing a copy never unlocks.
 * Returns 0 in that process, 1 here with *ret_pid its pid (or 0 if it could
 * not be told), or -errno.
 */
static int
fork_behind(int keepfd, pid_t *ret_pid)
{
    pid_t pid, grandchild = 0;
    int st, pp[2];

    if (pipe2(pp, O_CLOEXEC) < 0)
        return -errno;
    pid = fork();
    if (pid < 0) {
        close(pp[0]);
        close(pp[1]);
        return -errno;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);

        grandchild = fork();
        if (grandchild != 0) { /* say who it is, then go */
            (void)!write(pp[1], &grandchild, sizeof(grandchild));
            _exit(0);
        }
        if (null >= 0) {
            dup2(null, STDIN_FILENO);
            dup2(null, STDOUT_FILENO);
        }
        if (keepfd > 3)
            (void)syscall(SYS_close_range, 3u, (unsigned)keepfd - 1, 0u);
        (void)syscall(SYS_close_range, (unsigned)keepfd + 1, ~0u, 0u);
        return 0;
    }
    close(pp[1]);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (read(pp[0], &grandchild, sizeof(grandchild)) != (ssize_t)sizeof(grandchild) ||
        grandchild < 0)
        grandchild = 0;
    close(pp[0]);
    *ret_pid = grandchild;
    return 1;
}

int
run_watch_start(const struct opts *o, const lockd_lease *lease, const char *const *names,
                size_t nnames, const char *cmd)
{
    size_t n = lockd_lease_count(lease), i;
    struct watched *w = calloc(n ? n : 1, sizeof(*w));
    pid_t owner = getpid(), watcher = 0;
    int pidfd, r;

    if (!w)
        return -ENOMEM;
    for (i = 0; i < n; i++) {
        int k;

        w[i].fd = lockd_lease_fd(lease, i);
        w[i].mode = lockd_lease_mode(lease, i);
        /* Which way it is checked, known now (its filesystem just
         * answered): later a statfs could wait for a server, outside the
         * checks' deadline. */
        w[i].remote = lockd_check_fd_of(owner, w[i].fd, w[i].mode) == -EREMOTE;
        r = identify(w[i].fd, "", &w[i].dev, &w[i].ino);
        if (r < 0) {
            free(w);
            return r;
        }
        snprintf(w[i].key, sizeof(w[i].key), "%s", lockd_lease_key(lease, i));
        w[i].name = w[i].key;
        for (k = 0; (size_t)k < nnames; k++) /* the name of its first key */
            if (lockd_lease_index(lease, (size_t)k) == (int)i && names[k]) {
                w[i].name = names[k];
                break;
            }
    }
    pidfd = (int)syscall(SYS_pidfd_open, owner, 0);
    if (pidfd < 0) {
        free(w);
        return -errno;
    }
    r = fork_behind(pidfd, &watcher);
    if (r == 0) {
        prctl(PR_SET_NAME, "lockdctl-watch");
        signal(SIGINT, SIG_IGN); /* a ^C for CMD is not ours */
        watch_loop(o, pidfd, owner, cmd, w, n);
        _exit(0);
    }
    close(pidfd);
    free(w);
    if (r < 0)
        return r;
    /* pidfd_getfd() needs ptrace access to CMD: under Yama's ptrace_scope 1
     * only an ancestor has it, unless CMD names its watcher (which lasts
     * across the exec).  EINVAL: no Yama here. */
    if (watcher > 0)
        (void)prctl(PR_SET_PTRACER, (unsigned long)watcher, 0, 0, 0);
    return 0;
}

/* ------------------------------------------------------------------------
 * A CMD that daemonizes
 */

/*
 * With a helper, run's leases belong to CMD's process and end when it
 * exits.  A CMD that daemonizes (qemu -daemonize, a script that puts its
 * work in the background) exits at once and leaves a child running the
 * guest, without its leases.  That child cannot be seen from here (CMD is
 * this process, not a child of ours), but it can be recognised: CMD starts
 * with RUN_ENV set to a token of this run, and every process it starts
 * inherits it in /proc/PID/environ (the environment as it was at exec,
 * whatever the process did to its variables since).  So a process behind
 * CMD waits up to ORPHAN_WINDOW_MS for CMD to exit, and if it did, looks for
 * a process that carries the token and says that it runs unprotected.
 */
#define RUN_ENV "LOCKD_RUN"
#define ORPHAN_WINDOW_MS 30000
#define ORPHAN_SETTLE_MS 300

/* Whether /proc/PID/environ (procfd: /proc) holds the entry want: 1, 0,
 * or -1 when it showed none (a process in the middle of an exec shows an
 * empty one, as does a kernel thread; one we may not read, too). */
static int
environ_has(int procfd, const char *pid, const char *want)
{
    char path[sizeof(((struct dirent *)0)->d_name) + 16], *buf = NULL, *p, *end;
    size_t size = 0, cap = 0, wlen = strlen(want) + 1;
    ssize_t n;
    int fd, found = 0;

    snprintf(path, sizeof(path), "%s/environ", pid);
    fd = openat(procfd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ESRCH ? 0 : -1;
    for (;;) {
        if (size == cap) {
            char *b = cap < (1u << 20) ? realloc(buf, cap ? 2 * cap : 4096) : NULL;

            if (!b)
                break;
            buf = b;
            cap = cap ? 2 * cap : 4096;
        }
        n = read(fd, buf + size, cap - size);
        if (n <= 0)
            break;
        size += (size_t)n;
    }
    close(fd);
    for (p = buf, end = buf + size; p && p < end && !found;) {
        found = (size_t)(end - p) >= wlen && memcmp(p, want, wlen) == 0;
        p = memchr(p, '\0', (size_t)(end - p));
        p = p ? p + 1 : NULL;
    }
    free(buf);
    return found ? 1 : size ? 0 : -1;
}

/* A small /proc file, read at once into buf (NUL-terminated); its length,
 * or -1. */
static ssize_t
proc_read(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, size - 1) : -1;

    if (fd >= 0)
        close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return n;
}

/* The start time (in clock ticks since boot) and parent of /proc/PID ("self"
 * or a number), from its stat; 0 if it cannot be read. */
static unsigned long long
proc_start(const char *pid, long *ret_ppid)
{
    char path[sizeof(((struct dirent *)0)->d_name) + 16], buf[1024], *p;
    unsigned long long start = 0;

    snprintf(path, sizeof(path), "/proc/%s/stat", pid);
    *ret_ppid = 0;
    if (proc_read(path, buf, sizeof(buf)) <= 0)
        return 0;
    /* After the ")" that ends the name: state ppid ... (field 22: start). */
    p = strrchr(buf, ')');
    if (!p || sscanf(p + 1,
                     " %*c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d "
                     "%*d %*d %*d %*d %llu",
                     ret_ppid, &start) != 2)
        return 0;
    return start;
}

/* A process found carrying the mark, pinned by a pidfd. */
struct orphan {
    long pid;
    int pidfd;
};

/* Its name, from /proc/PID/comm ("" if gone). */
static void
comm_of(long pid, char *buf, size_t size)
{
    char path[64];
    ssize_t n;

    snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
    n = proc_read(path, buf, size);
    if (n > 0 && buf[n - 1] == '\n')
        buf[n - 1] = '\0';
}

/*
 * The processes that carry entry, other than CMD's and lockdctl's own (a
 * nested run's watcher carries its parent's mark), at most max of them;
 * how many.  *unsure is set if a process started since CMD showed no
 * environment: it may be CMD's child in the middle of an exec.
 */
static size_t
orphans_find(pid_t owner, unsigned long long owner_start, const char *entry,
             struct orphan *found, size_t max, int *unsure)
{
    struct dirent *de;
    DIR *proc = opendir("/proc");
    char comm[64];
    size_t n = 0;

    *unsure = 0;
    if (!proc)
        return 0;
    while ((de = readdir(proc)) != NULL && n < max) {
        char *end;
        long pid = strtol(de->d_name, &end, 10), ppid;
        int has, pidfd;

        if (*end || pid <= 0 || pid == getpid() || pid == owner)
            continue;
        has = environ_has(dirfd(proc), de->d_name, entry);
        if (has < 0 && proc_start(de->d_name, &ppid) >= owner_start &&
            ppid != 2 /* kthreadd's: a kernel thread */)
            *unsure = 1;
        if (has <= 0)
            continue;
        comm_of(pid, comm, sizeof(comm));
        if (strncmp(comm, "lockdctl-", 9) == 0)
            continue;
        pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
        if (pidfd < 0)
            continue;
        found[n].pid = pid;
        found[n++].pidfd = pidfd;
    }
    closedir(proc);
    return n;
}

static void
orphan_check(int pidfd, pid_t owner, unsigned long long owner_start, const char *cmd,
             const char *entry)
{
    static const int again_ms[] = {0, 10, 50, 200};
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    struct orphan found[3];
    struct timespec t0, t1;
    char comm[64];
    double after;
    size_t i, n = 0;
    int unsure = 1;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (poll(&p, 1, ORPHAN_WINDOW_MS) <= 0)
        return; /* still running, as a guest's process should */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    after = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    for (i = 0; i < sizeof(again_ms) / sizeof(again_ms[0]) && unsure && n == 0; i++) {
        (void)poll(NULL, 0, again_ms[i]);
        n = orphans_find(owner, owner_start, entry, found, 3, &unsure);
    }
    if (n == 0)
        return;
    /* A process that was only passing through (a subshell, a child about
     * to exit) is gone a moment later: only one still running is named. */
    (void)poll(NULL, 0, ORPHAN_SETTLE_MS);
    for (i = 0; i < n; i++) {
        struct pollfd q = {.fd = found[i].pidfd, .events = POLLIN};

        if (poll(&q, 1, 0) == 0) {
            comm_of(found[i].pid, comm, sizeof(comm));
            say("%s (pid %d) exited after %.1f s and left pid %ld (%s) running: its "
                "leases ended with pid %d, so pid %ld runs unprotected; a command that "
                "daemonizes needs `lockdctl acquire --pid %ld DISK...` (see lockdctl(1))",
                cmd, (int)owner, after, found[i].pid, comm, (int)owner, found[i].pid,
                found[i].pid);
        }
        close(found[i].pidfd);
    }
}

int
run_orphan_check_start(const char *cmd)
{
    char entry[96], *env;
    unsigned long long token = 0, start;
    pid_t owner = getpid(), pid;
    long ppid;
    int pidfd, r;

    if (getrandom(&token, sizeof(token), GRND_NONBLOCK) != (ssize_t)sizeof(token))
        token ^= (unsigned long long)time(NULL) << 20 ^ (unsigned long long)owner;
    snprintf(entry, sizeof(entry), "%s=%d.%016llx", RUN_ENV, (int)owner, token);
    env = strdup(entry); /* putenv() keeps it: CMD's environment */
    if (!env || putenv(env) != 0) {
        free(env);
        return -ENOMEM;
    }
    start = proc_start("self", &ppid);
    pidfd = (int)syscall(SYS_pidfd_open, owner, 0);
    if (pidfd < 0)
        return -errno;
    r = fork_behind(pidfd, &pid);
    if (r == 0) {
        prctl(PR_SET_NAME, "lockdctl-orphan");
        signal(SIGINT, SIG_IGN);
        orphan_check(pidfd, owner, start, cmd, entry);
        _exit(0);
    }
    close(pidfd);
    return r < 0 ? r : 0;
}
