/* SPDX-License-Identifier: MIT */
/*
 * lockd-helper-fs: the calls of lockd-helper that can block on a lease's
 * filesystem, made off its loop.
 *
 * Closing an fd can wait for its filesystem: FUSE sends FLUSH on every
 * close(2), NFS sends CLOSE, and an unlock on a filesystem whose locks live
 * on a server (NFS, a FUSE daemon that implements locks) waits for that
 * server.  A hard-mounted NFS server that stops answering, or a FUSE daemon
 * that stalls, would freeze every client of every lockspace if the helper's
 * one loop made those calls.  So each filesystem (st_dev) gets a worker
 * thread with a queue, and the loop hands it the fd.
 *
 * The loop waits for each, up to FSW_WAIT_MS, so that its answer reflects
 * it (a released lease is free, a refused fd is not kept); past that the
 * filesystem counts as stuck, the loop goes on without waiting for it again
 * until it has caught up, and fsw_stuck() names it.  The lease stays locked
 * meanwhile, which is the safe side: it is freed late, never early.  A file
 * on a local filesystem (fsw_close_is_local()) is closed on the loop.
 *
 * Everything else the helper asks of an fd never reaches the filesystem:
 * statx(2) with AT_STATX_DONT_SYNC reads the inode the kernel has, and
 * /proc/self/fdinfo the kernel's lock list (measured with a FUSE daemon
 * stalled on purpose: neither waits, fstat(2) does).
 *
 * Only lockd-helper's loop thread calls these.
 */
#ifndef LOCKD_HELPER_FS_H
#define LOCKD_HELPER_FS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#define FSW_WAIT_MS 50 /* how long a release waits for its unlock */
#define FSW_MAX     64 /* workers; past that an fd is closed on the loop */

/* statx(2) of fd that never waits for its filesystem: type, inode, device. */
int fsw_statx(int fd, struct statx *ret);

/*
 * Whether a close(2) of a file on this filesystem never waits for anything:
 * a local one whose files have no flush (ext2/3/4, xfs, btrfs, tmpfs, f2fs).
 * FUSE and NFS flush on every close, even of a dup, so the helper reads
 * such an fd's /proc/self/fdinfo entry without making a copy to close.
 */
int fsw_close_is_local(const struct statx *stx);

/*
 * Let go of fd, which is the caller's no more: with unlock non-zero, first
 * F_UNLCK its OFD lock, then close it.  A regular file on a filesystem that
 * may block (not fsw_close_is_local()) goes to that filesystem's worker and
 * is waited for, at most FSW_WAIT_MS, unless the filesystem is stuck
 * already; anything else is done here.  Returns 1 if it is done, 0 if it is
 * still queued.
 */
int fsw_dispose(int fd, int unlock);

/* The same for an fd known to be a regular file on a filesystem of which
 * fsw_close_is_local() said yes (its statx taken earlier): done here. */
void fsw_close_local(int fd, int unlock);

/*
 * Whether fd (a regular file on a FUSE filesystem; stx its statx) holds an
 * OFD lock of type (F_RDLCK or F_WRLCK) on byte 0, asked of the filesystem's
 * server by its worker, never locking anything (lockd-helper-fs.c,
 * prove_lock()): 1, 0, or -errno; -ETIMEDOUT if no answer came within
 * wait_ms, or the filesystem is stuck already.
 */
int fsw_prove_lock(int fd, const struct statx *stx, short type, int wait_ms);

/*
 * Whether path names the inode stx describes (a file of its type on the
 * same device; symlinks followed if follow), looked up by the worker of
 * stx's filesystem, which may ask its server, or hang in another
 * filesystem the path crosses: the loop waits for none of that. 1, 0
 * (another file, or none), or -errno; -ETIMEDOUT if no answer came within
 * wait_ms, or the filesystem is stuck already.
 */
int fsw_name_is(const struct statx *stx, const char *path, int follow, int wait_ms);

/* Whether stx's filesystem is FUSE (its type "fuse" or "fuse.*"). */
int fsw_is_fuse(const struct statx *stx);

/* Whether stx's filesystem is NFS (its type "nfs" or "nfs4"). */
int fsw_is_nfs(const struct statx *stx);

/*
 * The lock-loss watch: checks of held leases through their filesystem,
 * queued on its worker and answered later, so the loop never waits for a
 * server.  fsw_watch() queues one job that checks each of the n fds (the
 * caller's copies: the worker closes them) for a lock of types[i] (F_RDLCK
 * or F_WRLCK) on byte 0, the way how says:
 *   FSW_WATCH_FUSE  F_OFD_GETLK through the fd (another holder's
 *                   conflicting lock, or an error: lost) and through a
 *                   second open file description of the file (nobody's
 *                   lock at all: lost); never locks anything
 *   FSW_WATCH_NFS   F_OFD_GETLK through the fd, which the client asks
 *                   the server: another host's lock, or an error, is lost
 * The job goes to dev's worker.  Each fd's answer, and then one with tag 0
 * and result batch (the job is done), are queued for fsw_answers(); fsw_answer_fd() becomes readable.
 * Returns 0, or -errno (the copies are closed).
 */
enum { FSW_WATCH_FUSE = 1, FSW_WATCH_NFS = 2 };

struct fsw_answer {
    uint64_t tag; /* the caller's, per fd; 0: the end of job `result` */
    int result;   /* 1 held, 0 not held, -errno */
};

int fsw_watch(dev_t dev, int how, uint32_t batch, const int *fds, const short *types,
              const uint64_t *tags, size_t n);

/* An eventfd, readable while answers wait; -errno if it cannot be made. */
int fsw_answer_fd(void);

/* Take up to max answers, in the order they came; returns how many. */
size_t fsw_answers(struct fsw_answer *out, size_t max);

/* Whether every queue is empty; waits up to wait_ms for it. */
int fsw_idle(int wait_ms);

/*
 * Filesystems whose worker has been busy with one fd for longer than
 * FSW_WAIT_MS: one line each, "<mount point> (dev M:N): stuck for S s, N
 * waiting", written to buf (always NUL-terminated).  Returns how many.
 */
int fsw_stuck(char *buf, size_t size);

#endif /* LOCKD_HELPER_FS_H */
