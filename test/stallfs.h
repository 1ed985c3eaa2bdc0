/* SPDX-License-Identifier: MIT */
/*
 * stallfs.h: a test starts test/stallfs (a passthrough FUSE filesystem that
 * hangs on demand, see stallfs.c), talks to its control socket and stops it.
 *
 *   pid = stallfs_start(prog, backing, mnt, ctl);   mnt and backing exist
 *   stallfs_cmd(ctl, "stall", reply, sizeof(reply));
 *   ... an operation on mnt blocks; stallfs_cmd(ctl, "wait flush", ...) ...
 *   stallfs_cmd(ctl, "go", reply, sizeof(reply));
 *   stallfs_stop(pid, ctl, mnt);
 *
 * stallfs runs as root and mounts directly.  It is the test's child, and is
 * only ever signalled by its pid.  Include after test.h (or with _GNU_SOURCE
 * defined before any system header).
 */
#ifndef LOCKD_STALLFS_H
#define LOCKD_STALLFS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STALLFS_TIMEOUT_MS 10000

static inline long long
stallfs_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int
stallfs_left_ms(long long deadline)
{
    long long left = deadline - stallfs_now_ms();

    return left > 0 ? (int)left : 0;
}

/* The last resort: detach the mount so that nothing new enters it, then
 * kill the server, which aborts the connection and fails what still waits in
 * it (a process blocked in flush included). */
static inline void
stallfs_kill(pid_t pid, const char *mnt)
{
    if (mnt)
        (void)umount2(mnt, MNT_DETACH);
    (void)kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

/* Waits up to ms for pid to exit and reaps it: 1 with *status set, 0 if it
 * still runs.  A pidfd when there is one; valgrind knows no pidfd_open(), so
 * else waitpid(WNOHANG) every 10 ms. */
static inline int
stallfs_wait(pid_t pid, int ms, int *status)
{
    long long deadline = stallfs_now_ms() + ms;
    int pidfd = -1;
    pid_t r;

#ifdef SYS_pidfd_open
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
#endif
    if (pidfd >= 0) {
        struct pollfd p = {.fd = pidfd, .events = POLLIN};
        int n;

        while ((n = poll(&p, 1, stallfs_left_ms(deadline))) < 0 && errno == EINTR)
            ;
        close(pidfd);
        if (n <= 0)
            return 0;
    }
    for (;;) {
        r = waitpid(pid, status, pidfd >= 0 ? 0 : WNOHANG);
        if (r == pid)
            return 1;
        if (r < 0 && errno != EINTR)
            return 0;
        if (r == 0) {
            if (stallfs_left_ms(deadline) == 0)
                return 0;
            (void)nanosleep(&(struct timespec){.tv_nsec = 10 * 1000000L}, NULL);
        }
    }
}

/* Reads the first line of fd into buf (NUL-terminated, without its newline)
 * by the deadline (0: none): 1, 0 at end of file or timeout, -errno. */
static inline int
stallfs_read_line(int fd, char *buf, size_t size, long long deadline)
{
    size_t len = 0;

    while (len + 1 < size) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, deadline ? stallfs_left_ms(deadline) : -1);
        ssize_t got;

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        got = read(fd, buf + len, 1); /* byte by byte: no more than the line */
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -errno;
        if (got == 0)
            return 0;
        if (buf[len] == '\n') {
            buf[len] = '\0';
            return 1;
        }
        len++;
    }
    return -EMSGSIZE;
}

/* Starts prog BACKING MNT CTL with a pipe on its stdout and waits up to
 * STALLFS_TIMEOUT_MS for its "ready".  Returns its pid, or -1 (said on
 * stderr, the child killed and reaped). */
static inline pid_t
stallfs_start(const char *prog, const char *backing, const char *mnt, const char *ctl)
{
    char *const argv[] = {(char *)prog, (char *)backing, (char *)mnt, (char *)ctl, NULL};
    char line[64];
    int p[2], r;
    pid_t pid;

    if (pipe2(p, O_CLOEXEC) < 0) {
        fprintf(stderr, "stallfs_start: pipe: %s\n", strerror(errno));
        return -1;
    }
    pid = fork();
    if (pid < 0) {
        fprintf(stderr, "stallfs_start: fork: %s\n", strerror(errno));
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        /* dup2() onto itself would leave O_CLOEXEC set. */
        if (p[1] == STDOUT_FILENO ? fcntl(p[1], F_SETFD, 0) < 0 : dup2(p[1], STDOUT_FILENO) < 0)
            _exit(127);
        execv(prog, argv);
        _exit(127);
    }
    close(p[1]);
    r = stallfs_read_line(p[0], line, sizeof(line), stallfs_now_ms() + STALLFS_TIMEOUT_MS);
    close(p[0]);
    if (r == 1 && strcmp(line, "ready") == 0)
        return pid;
    if (r < 0)
        fprintf(stderr, "stallfs_start: %s: %s\n", prog, strerror(-r));
    else
        fprintf(stderr, "stallfs_start: %s: %s\n", prog,
                r == 1 ? "unexpected output" : "exited or timed out before \"ready\"");
    /* Not stallfs_kill(): without its "ready" mnt may not be its mount. */
    (void)kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    return -1;
}

static inline int
stallfs_send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* stallfs_cmd() by a deadline (0: none); -ETIMEDOUT after it. */
static inline int
stallfs_cmd_by(const char *ctl, const char *cmd, char *reply, size_t size, long long deadline)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd, r;

    if (size == 0)
        return -EINVAL;
    reply[0] = '\0';
    if (strlen(ctl) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, ctl, strlen(ctl) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    r = stallfs_send_all(fd, cmd, strlen(cmd));
    if (r == 0)
        r = stallfs_send_all(fd, "\n", 1);
    if (r == 0) {
        r = stallfs_read_line(fd, reply, size, deadline);
        if (r == 0)
            r = deadline && stallfs_left_ms(deadline) == 0 ? -ETIMEDOUT : -ECONNRESET;
        else if (r == 1)
            r = 0;
    }
    close(fd);
    return r;
}

/* Sends one command, reads its one-line reply into reply (without the
 * newline).  Returns 0 or -errno.  No timeout: "wait" blocks until the
 * operation comes, and the test's alarm bounds it. */
static inline int
stallfs_cmd(const char *ctl, const char *cmd, char *reply, size_t size)
{
    return stallfs_cmd_by(ctl, cmd, reply, size, 0);
}

/* "go", "quit", and up to STALLFS_TIMEOUT_MS in all for stallfs to answer,
 * unmount and exit; else the mount is detached and stallfs killed.  Returns
 * 0 if it exited cleanly (status 0). */
static inline int
stallfs_stop(pid_t pid, const char *ctl, const char *mnt)
{
    long long deadline = stallfs_now_ms() + STALLFS_TIMEOUT_MS;
    char reply[64];
    int status = 0, r;

    (void)stallfs_cmd_by(ctl, "go", reply, sizeof(reply), deadline);
    r = stallfs_cmd_by(ctl, "quit", reply, sizeof(reply), deadline);
    if (r < 0)
        fprintf(stderr, "stallfs_stop: quit: %s\n", strerror(-r));
    if (!stallfs_wait(pid, stallfs_left_ms(deadline), &status)) {
        fprintf(stderr, "stallfs_stop: %d did not exit, killed\n", (int)pid);
        stallfs_kill(pid, mnt);
        return -ETIMEDOUT;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "stallfs_stop: %d exited with status 0x%x\n", (int)pid, status);
        return -ECHILD;
    }
    return r;
}

#endif
