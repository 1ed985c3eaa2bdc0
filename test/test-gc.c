/* SPDX-License-Identifier: MIT */
/*
 * test-gc.c: lockd_gc() removes exactly the lease files nobody holds, and
 * never pulls a name out from under a holder: not while lockd acquirers and
 * gc race in several processes and threads, not while virtlockd-style peers
 * unlink and re-create lease files behind lockd's back.  An acquirer that was
 * granted a lock on a file unlinked meanwhile must notice and start over.
 *
 * Holders and waiters are "agents" (forked processes that run one operation
 * per command, see util.h); the race cases fork their own workers, which
 * prove their invariants while holding a lease and record any breach in
 * shared memory.  Nothing sleeps for a fixed time.
 */
#include "test.h"
#include "util.h"

#include <assert.h>
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>

#include "lockd.h"

/* ------------------------------------------------------------------------
 * The lockspace's files
 */

static int
exists_at(lockd_space *space, const char *name)
{
    struct stat st;

    return fstatat(lockd_space_fd(space), name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

static void
create_file(lockd_space *space, const char *name)
{
    int fd = openat(lockd_space_fd(space), name,
                    O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);

    ASSERT_OK(sys(fd));
    close(fd);
}

/* The number of names in the lockspace that are keys. */
static unsigned
count_key_files(lockd_space *space)
{
    int fd = openat(lockd_space_fd(space), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct dirent *de;
    unsigned n = 0;
    DIR *d;

    ASSERT_OK(sys(fd));
    d = fdopendir(fd);
    if (!d)
        TEST_FAIL("fdopendir: %s", strerror(errno));
    while ((de = readdir(d)))
        n += lockd_key_valid(de->d_name);
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------------
 * What gc removes and what it keeps
 */

#define GC_KEYS 8

static void
gc_keys(char keys[GC_KEYS][LOCKD_KEY_SIZE])
{
    char disk[64];
    size_t i;

    for (i = 0; i < GC_KEYS; i++) {
        snprintf(disk, sizeof(disk), "/vm/gc-%zu.img", i);
        key_of(disk, keys[i]);
    }
}

/* Names gc must never touch: not keys (wrong case, wrong length, not hex),
 * or lockd's own files. */
static void
plant_other_files(lockd_space *space, const char *key, char names[5][80])
{
    size_t i;

    snprintf(names[0], sizeof(names[0]), "notes.txt");
    snprintf(names[1], sizeof(names[1]), "%s", key);
    for (i = 0; names[1][i]; i++)
        names[1][i] = (char)(names[1][i] >= 'a' ? names[1][i] - 'a' + 'A' : names[1][i]);
    snprintf(names[2], sizeof(names[2]), "%.63s", key);
    snprintf(names[3], sizeof(names[3]), "%s0", key);
    snprintf(names[4], sizeof(names[4]), ".lockd-lockspace.1234.deadbeef");
    for (i = 0; i < 5; i++)
        create_file(space, names[i]);
}

/* The cast of test_gc_removes_unheld_keeps_held(): k0..k2 were taken and
 * released, k3 is held exclusive and k4 shared elsewhere, k5 by a
 * virtlockd-style POSIX lock, k6 by a process since SIGKILLed, k7 by the case
 * itself (gc's own lock attempt conflicts with that too). */
struct gc_cast {
    char k[GC_KEYS][LOCKD_KEY_SIZE];
    char others[5][80];
    struct agent excl, shared, posix;
    lockd_lease *mine;
};

static int
gc_cast_held(size_t i)
{
    return i == 3 || i == 4 || i == 5 || i == 7;
}

static void
gc_cast_set_up(lockd_space *space, struct gc_cast *c)
{
    lockd_lease *lease = NULL;
    struct agent dead;
    size_t i;

    gc_keys(c->k);
    for (i = 0; i < 3; i++) {
        ASSERT_OK(acquire1(space, c->k[i], LOCKD_EXCLUSIVE, LOCKD_TRY, &lease));
        ASSERT_OK(lockd_lease_release(lease));
    }
    agent_start(&c->excl, -1);
    agent_start(&c->shared, -1);
    agent_start(&c->posix, -1);
    agent_start(&dead, -1);
    ASSERT_INT_EQ(agent_acquire(&c->excl, c->k[3], LOCKD_EXCLUSIVE, LOCKD_TRY), 0);
    ASSERT_INT_EQ(agent_acquire(&c->shared, c->k[4], LOCKD_SHARED, LOCKD_TRY), 0);
    ASSERT_INT_EQ(agent_do(&c->posix, OP_POSIX_LOCK, c->k[5], F_WRLCK, 0).r, 0);
    ASSERT_INT_EQ(agent_acquire(&dead, c->k[6], LOCKD_EXCLUSIVE, LOCKD_TRY), 0);
    agent_kill(&dead);
    ASSERT_OK(acquire1(space, c->k[7], LOCKD_EXCLUSIVE, LOCKD_TRY, &c->mine));
    plant_other_files(space, c->k[0], c->others);
    ASSERT_TRUE(exists_at(space, ".lockd-lockspace"));
    ASSERT_TRUE(exists_at(space, ".lockd-index"));
}

/* After a gc: exactly the held leases are left, still held, on the very files
 * their names refer to; every other file is untouched. */
static void
gc_cast_check(lockd_space *space, struct gc_cast *c)
{
    int32_t pid = -1;
    size_t i;

    for (i = 0; i < GC_KEYS; i++)
        ASSERT_INT_EQ(exists_at(space, c->k[i]), gc_cast_held(i));
    for (i = 0; i < 5; i++)
        ASSERT_TRUE(exists_at(space, c->others[i]));
    ASSERT_TRUE(exists_at(space, ".lockd-lockspace"));
    ASSERT_TRUE(exists_at(space, ".lockd-index"));
    ASSERT_INT_EQ(agent_do(&c->excl, OP_CHECK, c->k[3], 0, 0).r, 0);
    ASSERT_INT_EQ(agent_do(&c->shared, OP_CHECK, c->k[4], 0, 0).r, 0);
    ASSERT_INT_EQ(agent_do(&c->posix, OP_CHECK, c->k[5], 0, 0).r, 0);
    ASSERT_INT_EQ(same_file(lockd_space_fd(space), c->k[7], lockd_lease_fd(c->mine, 0)),
                  0);
    ASSERT_INT_EQ(probe_elsewhere(c->k[3], NULL), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(probe_elsewhere(c->k[4], NULL), LOCKD_SHARED);
    ASSERT_INT_EQ(probe_elsewhere(c->k[5], &pid), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(pid, c->posix.pid);
    ASSERT_INT_EQ(probe_elsewhere(c->k[7], NULL), LOCKD_EXCLUSIVE);
}

static void
test_gc_removes_unheld_keeps_held(void)
{
    lockd_space *space = space_open();
    uint64_t removed = 99, kept = 99;
    struct gc_cast c;
    size_t i;
    int fds;

    /* Empty: nothing to do, and both counts written. */
    ASSERT_OK(lockd_gc(space, NULL, NULL, &removed, &kept));
    ASSERT_INT_EQ(removed, 0);
    ASSERT_INT_EQ(kept, 0);

    gc_cast_set_up(space, &c);
    fds = count_fds();
    ASSERT_OK(lockd_gc(space, NULL, NULL, &removed, &kept));
    ASSERT_INT_EQ(count_fds(), fds);
    ASSERT_INT_EQ(removed, 4);
    ASSERT_INT_EQ(kept, 4);
    gc_cast_check(space, &c);
    /* Again: nothing more to remove; either count may be NULL. */
    ASSERT_OK(lockd_gc(space, NULL, NULL, NULL, &kept));
    ASSERT_INT_EQ(kept, 4);
    ASSERT_OK(lockd_gc(space, NULL, NULL, &removed, NULL));
    ASSERT_INT_EQ(removed, 0);
    gc_cast_check(space, &c);

    /* Let go of everything: the rest goes, the other files stay. */
    agent_stop(&c.excl);
    agent_stop(&c.shared);
    agent_stop(&c.posix);
    ASSERT_OK(lockd_lease_release(c.mine));
    ASSERT_OK(lockd_gc(space, NULL, NULL, &removed, &kept));
    ASSERT_INT_EQ(removed, 4);
    ASSERT_INT_EQ(kept, 0);
    ASSERT_INT_EQ(count_key_files(space), 0);
    for (i = 0; i < 5; i++)
        ASSERT_TRUE(exists_at(space, c.others[i]));
    ASSERT_ERR(lockd_gc(NULL, NULL, NULL, NULL, NULL), EINVAL);
    lockd_space_close(space);
}

/* Things planted under key names (a symlink, a directory, a FIFO, a
 * character device) are not lease files: gc neither removes them nor follows
 * them, never opens them (inotify would see it), and counts them apart from
 * held leases. */
static void
test_gc_leaves_planted_alone(void)
{
    lockd_space *space = space_open();
    char k[GC_KEYS][LOCKD_KEY_SIZE], target[sizeof(test_scratch) + 16];
    int dirfd = lockd_space_fd(space), ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    uint64_t removed = 99, held = 99, young = 99, other = 99, kept = 99;
    struct stat st;

    ASSERT_OK(sys(ifd));
    gc_keys(k);
    snprintf(target, sizeof(target), "%s/target", test_scratch);
    ASSERT_OK(sys(close(open(target, O_RDWR | O_CREAT | O_CLOEXEC, 0600))));
    ASSERT_OK(sys(symlinkat(target, dirfd, k[0])));
    ASSERT_OK(sys(mkdirat(dirfd, k[1], 0700)));
    plant_watched(ifd, space_dir(), k[2], S_IFIFO);
    plant_watched(ifd, space_dir(), k[4], S_IFCHR);
    create_file(space, k[3]);
    ASSERT_OK(lockd_gc_ex(space, 0, NULL, NULL, &removed, &held, &young, &other));
    ASSERT_INT_EQ(removed, 1);
    ASSERT_INT_EQ(held, 0);
    ASSERT_INT_EQ(young, 0);
    ASSERT_INT_EQ(other, 4);
    ASSERT_OK(lockd_gc(space, NULL, NULL, &removed, &kept));
    ASSERT_INT_EQ(removed, 0);
    ASSERT_INT_EQ(kept, 4);
    assert_never_opened(ifd);
    ASSERT_OK(sys(fstatat(dirfd, k[0], &st, AT_SYMLINK_NOFOLLOW)));
    ASSERT_TRUE(S_ISLNK(st.st_mode));
    ASSERT_OK(sys(stat(target, &st)));
    ASSERT_OK(sys(fstatat(dirfd, k[1], &st, AT_SYMLINK_NOFOLLOW)));
    ASSERT_TRUE(S_ISDIR(st.st_mode));
    ASSERT_OK(sys(fstatat(dirfd, k[2], &st, AT_SYMLINK_NOFOLLOW)));
    ASSERT_TRUE(S_ISFIFO(st.st_mode));
    ASSERT_OK(sys(fstatat(dirfd, k[4], &st, AT_SYMLINK_NOFOLLOW)));
    ASSERT_TRUE(S_ISCHR(st.st_mode));
    ASSERT_TRUE(!exists_at(space, k[3]));
    close(ifd);
    lockd_space_close(space);
}

/* Milliseconds since the file key was last created or changed. */
static int64_t
age_ms(lockd_space *space, const char *key)
{
    struct timespec now;
    struct stat st;

    stat_key(space, key, &st);
    clock_gettime(CLOCK_REALTIME, &now);
    return ((int64_t)now.tv_sec - st.st_ctim.tv_sec) * 1000 +
           (now.tv_nsec - st.st_ctim.tv_nsec) / 1000000;
}

/* With a minimum age, gc leaves unheld lease files younger than it alone,
 * counts them as young (a held one counts as held, whatever its age), and
 * removes the older unheld ones. */
static void
test_gc_min_age(void)
{
    lockd_space *space = space_open();
    uint64_t removed = 99, held = 99, young = 99, other = 99;
    char k[GC_KEYS][LOCKD_KEY_SIZE];
    lockd_lease *l = NULL;

    gc_keys(k);
    create_file(space, k[0]);
    create_file(space, k[1]);
    ASSERT_OK(acquire1(space, k[2], LOCKD_EXCLUSIVE, LOCKD_TRY, &l));
    ASSERT_OK(lockd_gc_ex(space, 60000, NULL, NULL, &removed, &held, &young, &other));
    ASSERT_INT_EQ(removed, 0);
    ASSERT_INT_EQ(held, 1);
    ASSERT_INT_EQ(young, 2);
    ASSERT_INT_EQ(other, 0);
    ASSERT_INT_EQ(count_key_files(space), 3);

    /* k[0..2] grow older than 1.5 s; k[3], made now, is younger. */
    ASSERT_TRUE(WAIT_UNTIL(age_ms(space, k[0]) > 1500 && age_ms(space, k[1]) > 1500 &&
                               age_ms(space, k[2]) > 1500,
                           10000));
    create_file(space, k[3]);
    ASSERT_OK(lockd_gc_ex(space, 1500, NULL, NULL, &removed, &held, &young, &other));
    ASSERT_INT_EQ(removed, 2);
    ASSERT_INT_EQ(held, 1);
    ASSERT_INT_EQ(young, 1);
    ASSERT_TRUE(exists_at(space, k[2]) && exists_at(space, k[3]));
    ASSERT_TRUE(!exists_at(space, k[0]) && !exists_at(space, k[1]));

    /* 0: every unheld file goes now. */
    ASSERT_OK(lockd_gc_ex(space, 0, NULL, NULL, &removed, &held, &young, NULL));
    ASSERT_INT_EQ(removed, 1);
    ASSERT_INT_EQ(held, 1);
    ASSERT_INT_EQ(young, 0);
    ASSERT_OK(lockd_lease_release(l));
    lockd_space_close(space);
}

struct progress_log {
    uint64_t done[8];
    int calls;
    int stop_with;
    int dirfd;      /* > 0: check the index is not held in each call */
    int index_held; /* calls made with it held */
};

/* Whether another description could take the index exclusively now. */
static int
index_free(int dirfd)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    int fd = openat(dirfd, ".lockd-index", O_RDWR | O_CLOEXEC);

    ASSERT_OK(sys(fd));
    ASSERT_OK(sys(fcntl(fd, F_OFD_GETLK, &fl)));
    close(fd);
    return fl.l_type == F_UNLCK;
}

static int
progress_cb(uint64_t done, void *userdata)
{
    struct progress_log *log = userdata;

    if (log->calls < 8)
        log->done[log->calls] = done;
    log->calls++;
    /* Called with the index let go: a stalled callback stalls no creator. */
    log->index_held += log->dirfd > 0 && !index_free(log->dirfd);
    return log->stop_with;
}

static void
make_lease_files(lockd_space *space, unsigned n)
{
    char disk[64], key[LOCKD_KEY_SIZE];
    unsigned i;

    for (i = 0; i < n; i++) {
        snprintf(disk, sizeof(disk), "/vm/many-%u.img", i);
        key_of(disk, key);
        create_file(space, key);
    }
}

/* A stopped gc returns the callback's value, writes no counts, and keeps what
 * it removed removed: exactly the files it had looked at, all unheld here. */
static void
gc_stopped(lockd_space *space, int stop_with, unsigned before)
{
    struct progress_log log = {.stop_with = stop_with};
    uint64_t removed = 12345, kept = 12345;

    ASSERT_INT_EQ(lockd_gc(space, progress_cb, &log, &removed, &kept), stop_with);
    ASSERT_INT_EQ(log.calls, 1);
    ASSERT_INT_EQ(log.done[0], 1024);
    ASSERT_INT_EQ(removed, 12345);
    ASSERT_INT_EQ(kept, 12345);
    ASSERT_INT_EQ(count_key_files(space), before - log.done[0]);
}

static void
test_gc_progress(void)
{
    lockd_space *space = space_open();
    struct progress_log log = {.stop_with = 0, .dirfd = lockd_space_fd(space)};
    uint64_t removed = 0, kept = 99;

    make_lease_files(space, 3000);
    create_file(space, "notes.txt");
    ASSERT_OK(lockd_gc(space, progress_cb, &log, &removed, &kept));
    ASSERT_INT_EQ(log.calls, 2);
    ASSERT_INT_EQ(log.index_held, 0);
    ASSERT_INT_EQ(log.done[0], 1024);
    ASSERT_INT_EQ(log.done[1], 2048);
    ASSERT_INT_EQ(removed, 3000);
    ASSERT_INT_EQ(kept, 0);
    ASSERT_INT_EQ(count_key_files(space), 0);

    make_lease_files(space, 3000);
    gc_stopped(space, 7, 3000);
    gc_stopped(space, -ECANCELED, 3000 - 1024);
    ASSERT_OK(lockd_gc(space, NULL, NULL, &removed, &kept));
    ASSERT_INT_EQ(removed, 3000 - 2048);
    ASSERT_INT_EQ(count_key_files(space), 0);
    ASSERT_TRUE(exists_at(space, "notes.txt"));
    lockd_space_close(space);
}

struct total_log {
    uint64_t done[4], total[4];
    int calls;
};

static int
total_cb(uint64_t done, uint64_t total, void *userdata)
{
    struct total_log *log = userdata;

    if (log->calls < 4)
        log->done[log->calls] = done, log->total[log->calls] = total;
    log->calls++;
    return 0;
}

/* lockd_gc_ex()'s progress tells the total: the keys there when gc began,
 * not the other names. */
static void
test_gc_progress_total(void)
{
    lockd_space *space = space_open();
    struct total_log log = {.calls = 0};
    uint64_t removed = 0;

    make_lease_files(space, 2100);
    create_file(space, "notes.txt");
    ASSERT_OK(lockd_gc_ex(space, 0, total_cb, &log, &removed, NULL, NULL, NULL));
    ASSERT_INT_EQ(log.calls, 2);
    ASSERT_INT_EQ(log.done[0], 1024);
    ASSERT_INT_EQ(log.total[0], 2100);
    ASSERT_INT_EQ(log.done[1], 2048);
    ASSERT_INT_EQ(log.total[1], 2100);
    ASSERT_INT_EQ(removed, 2100);
    lockd_space_close(space);
}

/* ------------------------------------------------------------------------
 * virtlockd unlinks lease files behind lockd's back
 */

/* X holds key with a classic POSIX write lock, as virtlockd does, and a lockd
 * acquirer waits on that file.  X unlinks it and then unlocks: virtlockd's
 * release.  The waiter is granted a lock on a file that no name refers to any
 * more, and must notice and take the lease on a new file at the name. */
static void
unlinked_while_waiting(int timeout)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    struct agent x, w;
    struct stat st;

    ASSERT_OK(lockd_space_key(space, "/var/lib/libvirt/images/habit.qcow2", key));
    agent_start(&x, -1);
    agent_start(&w, -1);
    ASSERT_INT_EQ(agent_do(&x, OP_POSIX_LOCK, key, F_WRLCK, 0).r, 0);
    stat_key(space, key, &st);
    agent_begin(&w, OP_ACQUIRE, key, LOCKD_EXCLUSIVE, timeout);
    ASSERT_TRUE(WAIT_UNTIL(proc_sleeping(w.pid), 5000));
    if (timeout == LOCKD_FOREVER)
        ASSERT_TRUE(WAIT_UNTIL(lock_waiter_on(&st), 5000));
    ASSERT_INT_EQ(agent_do(&x, OP_POSIX_UNLINK, key, 0, 0).r, 0);
    ASSERT_INT_EQ(agent_do(&x, OP_POSIX_UNLOCK, NULL, 0, 0).r, 0);
    ASSERT_INT_EQ(agent_end(&w).r, 0);
    ASSERT_INT_EQ(agent_do(&w, OP_CHECK, key, 0, 0).r, 0);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(try_elsewhere(key, LOCKD_SHARED), -EAGAIN);
    agent_stop(&x);
    agent_stop(&w);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
    lockd_space_close(space);
}

static void
test_unlinked_while_waiting_forever(void)
{
    unlinked_while_waiting(LOCKD_FOREVER);
}

static void
test_unlinked_while_waiting_timed(void)
{
    unlinked_while_waiting(10000);
}

/* As above, but before X unlocks another virtlockd-style peer Y re-creates
 * the file and locks it.  The waiter, granted the dead file, must start over
 * and wait for Y's file (for a wait forever, /proc/locks shows it blocked on
 * Y's inode), and end up holding exactly that file. */
static void
recreated_while_waiting(int timeout)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    struct agent x, y, w;
    struct reply rep;
    struct stat st;
    int32_t pid = -1;
    uint64_t ino;

    ASSERT_OK(lockd_space_key(space, "/var/lib/libvirt/images/habit2.qcow2", key));
    agent_start(&x, -1);
    agent_start(&y, -1);
    agent_start(&w, -1);
    ASSERT_INT_EQ(agent_do(&x, OP_POSIX_LOCK, key, F_WRLCK, 0).r, 0);
    stat_key(space, key, &st);
    agent_begin(&w, OP_ACQUIRE, key, LOCKD_EXCLUSIVE, timeout);
    ASSERT_TRUE(WAIT_UNTIL(proc_sleeping(w.pid), 5000));
    if (timeout == LOCKD_FOREVER)
        ASSERT_TRUE(WAIT_UNTIL(lock_waiter_on(&st), 5000));
    ASSERT_INT_EQ(agent_do(&x, OP_POSIX_UNLINK, key, 0, 0).r, 0);
    rep = agent_do(&y, OP_POSIX_LOCK, key, F_WRLCK, 0);
    ASSERT_INT_EQ(rep.r, 0);
    ino = rep.ino;
    ASSERT_INT_EQ(agent_do(&x, OP_POSIX_UNLOCK, NULL, 0, 0).r, 0);
    stat_key(space, key, &st);
    ASSERT_INT_EQ(st.st_ino, ino);
    if (timeout == LOCKD_FOREVER)
        ASSERT_TRUE(WAIT_UNTIL(lock_waiter_on(&st), 5000));
    ASSERT_INT_EQ(probe_elsewhere(key, &pid), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(pid, y.pid);
    ASSERT_INT_EQ(agent_do(&y, OP_POSIX_UNLOCK, NULL, 0, 0).r, 0);
    ASSERT_INT_EQ(agent_end(&w).r, 0);
    rep = agent_do(&w, OP_CHECK, key, 0, 0);
    ASSERT_INT_EQ(rep.r, 0);
    ASSERT_INT_EQ(rep.ino, ino);
    ASSERT_INT_EQ(try_elsewhere(key, LOCKD_EXCLUSIVE), -EAGAIN);
    agent_stop(&x);
    agent_stop(&y);
    agent_stop(&w);
    lockd_space_close(space);
}

static void
test_recreated_while_waiting_forever(void)
{
    recreated_while_waiting(LOCKD_FOREVER);
}

static void
test_recreated_while_waiting_timed(void)
{
    recreated_while_waiting(10000);
}

/* ------------------------------------------------------------------------
 * Races: gc against acquirers and virtlockd-style peers
 *
 * Every holder, while it holds a lease, proves two things in memory shared by
 * all processes: (a) per key, exclusive holders go 0 -> 1 with no shared
 * holder beside them, and shared holders see no exclusive one; (b) the file
 * it holds is linked and is the one the key names (fstat of its fd against
 * fstatat of the name), before and after yielding the CPU.  A breach is
 * recorded and fails the case.
 */

#define RACE_KEYS_MAX 8
#define RACE_MS 6000
#define RACE_FLOOR_MS 60000

struct race {
    atomic_int excl[RACE_KEYS_MAX];
    atomic_int shared[RACE_KEYS_MAX];
    atomic_long taken;       /* lockd leases held and checked */
    atomic_long busy;        /* tries refused */
    atomic_long gc_waits;    /* tries that met a long gc batch (-EINPROGRESS) */
    atomic_long posix_taken; /* virtlockd-style holds checked */
    atomic_long stale;       /* virtlockd-style locks on a file unlinked meanwhile */
    atomic_long removed;     /* lease files gc removed */
    atomic_long gc_runs;
    atomic_int stop;
    atomic_int failed;
    int nkeys;
    char keys[RACE_KEYS_MAX][LOCKD_KEY_SIZE];
    char why[256];
};

static struct race *
race_new(int nkeys)
{
    struct race *rc = mmap(NULL, sizeof(*rc), PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    char disk[64];
    int i;

    if (rc == MAP_FAILED)
        TEST_FAIL("mmap: %s", strerror(errno));
    memset(rc, 0, sizeof(*rc));
    rc->nkeys = nkeys;
    /* Create the lockspace before the workers race for it.  No handle is
     * kept: each worker opens its own, and a forked copy of ours would be
     * reported lost by valgrind when the worker exits. */
    lockd_space_close(space_open());
    for (i = 0; i < nkeys; i++) {
        snprintf(disk, sizeof(disk), "/vm/race-%d.img", i);
        key_of(disk, rc->keys[i]);
    }
    return rc;
}

static void race_fail(struct race *rc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
race_fail(struct race *rc, const char *fmt, ...)
{
    va_list ap;

    if (atomic_exchange(&rc->failed, 1) == 0) {
        va_start(ap, fmt);
        vsnprintf(rc->why, sizeof(rc->why), fmt, ap);
        va_end(ap);
    }
    atomic_store(&rc->stop, 1);
}

static void
hold_enter(struct race *rc, int i, int mode)
{
    if (mode == LOCKD_SHARED) {
        atomic_fetch_add(&rc->shared[i], 1);
        if (atomic_load(&rc->excl[i]) != 0)
            race_fail(rc, "key %d: a shared holder beside an exclusive one", i);
        return;
    }
    if (atomic_fetch_add(&rc->excl[i], 1) != 0)
        race_fail(rc, "key %d: two exclusive holders at once", i);
    if (atomic_load(&rc->shared[i]) != 0)
        race_fail(rc, "key %d: an exclusive holder beside a shared one", i);
}

static void
hold_leave(struct race *rc, int i, int mode)
{
    atomic_fetch_sub(mode == LOCKD_SHARED ? &rc->shared[i] : &rc->excl[i], 1);
}

static void
check_held(struct race *rc, int dirfd, int i, int fd, const char *who)
{
    int r = same_file(dirfd, rc->keys[i], fd);

    if (r == -ESTALE)
        race_fail(rc, "key %d: %s holds an unlinked file", i, who);
    else if (r == -ENOENT)
        race_fail(rc, "key %d: %s holds a file whose name is gone", i, who);
    else if (r == -EXDEV)
        race_fail(rc, "key %d: %s holds a file its name no longer refers to", i, who);
    else if (r < 0)
        race_fail(rc, "key %d: %s: fstat: %s", i, who, strerror(-r));
}

static int
race_index(const struct race *rc, const char *key)
{
    int i;

    for (i = 0; i < rc->nkeys; i++)
        if (strcmp(rc->keys[i], key) == 0)
            return i;
    return -1;
}

/* Hold every lease in lease for a moment, proving (a) and (b), then release. */
static void
race_hold(struct race *rc, lockd_space *space, lockd_lease *lease)
{
    size_t n = lockd_lease_count(lease), j;
    int dirfd = lockd_space_fd(space), idx[2], r;

    for (j = 0; j < n; j++) {
        idx[j] = race_index(rc, lockd_lease_key(lease, j));
        if (idx[j] < 0)
            TEST_FAIL("a lease on a key never asked for");
        hold_enter(rc, idx[j], lockd_lease_mode(lease, j));
        check_held(rc, dirfd, idx[j], lockd_lease_fd(lease, j), "a lockd holder");
    }
    sched_yield();
    for (j = 0; j < n; j++) {
        check_held(rc, dirfd, idx[j], lockd_lease_fd(lease, j), "a lockd holder");
        hold_leave(rc, idx[j], lockd_lease_mode(lease, j));
    }
    r = lockd_lease_release(lease);
    if (r < 0)
        race_fail(rc, "release: %s", strerror(-r));
    atomic_fetch_add(&rc->taken, 1);
}

struct worker {
    struct race *rc;
    lockd_space *space;
    unsigned seed;
    pthread_t thread;
};

/* One try: one key, or now and then two, each exclusive or (a third of the
 * time) shared, without waiting. */
static void
race_lockd_once(struct worker *w)
{
    struct race *rc = w->rc;
    const char *keys[2];
    int modes[2], a, b, r;
    size_t n = rand_r(&w->seed) % 4 == 0 ? 2 : 1, j;
    lockd_lease *lease = NULL;

    a = (int)(rand_r(&w->seed) % (unsigned)rc->nkeys);
    b = (a + 1 + (int)(rand_r(&w->seed) % (unsigned)(rc->nkeys - 1))) % rc->nkeys;
    keys[0] = rc->keys[a];
    keys[1] = rc->keys[b];
    for (j = 0; j < 2; j++)
        modes[j] = rand_r(&w->seed) % 3 == 0 ? LOCKD_SHARED : LOCKD_EXCLUSIVE;
    r = lockd_acquire(w->space, n, keys, modes, LOCKD_TRY, &lease);
    if (r == -EAGAIN) {
        atomic_fetch_add(&rc->busy, 1);
        return;
    }
    if (r == -EINPROGRESS) { /* not busy: a gc batch outlasted the try's wait */
        atomic_fetch_add(&rc->gc_waits, 1);
        return;
    }
    if (r < 0) {
        race_fail(rc, "acquire: %s", strerror(-r));
        return;
    }
    race_hold(rc, w->space, lease);
}

static void *
race_lockd_thread(void *arg)
{
    struct worker *w = arg;

    while (!atomic_load(&w->rc->stop))
        race_lockd_once(w);
    return NULL;
}

/* A lockd worker process: nthreads threads sharing one lockspace handle. */
static void
race_lockd_process(struct race *rc, int nthreads)
{
    struct worker w[4];
    lockd_space *space = NULL;
    int i, r;

    assert(nthreads >= 1 && nthreads <= 4);
    r = lockd_space_open(space_dir(), 0, &space);
    if (r < 0) {
        race_fail(rc, "lockd_space_open: %s", strerror(-r));
        return;
    }
    for (i = 0; i < nthreads; i++) {
        w[i] = (struct worker){
            .rc = rc, .space = space, .seed = (unsigned)getpid() * 7919u + (unsigned)i};
        if (i > 0 && (r = pthread_create(&w[i].thread, NULL, race_lockd_thread, &w[i])))
            TEST_FAIL("pthread_create: %s", strerror(r));
    }
    race_lockd_thread(&w[0]);
    for (i = 1; i < nthreads; i++)
        pthread_join(w[i].thread, NULL);
    lockd_space_close(space);
}

static void
race_gc_process(struct race *rc)
{
    lockd_space *space = NULL;
    uint64_t removed;
    int r;

    r = lockd_space_open(space_dir(), 0, &space);
    if (r < 0) {
        race_fail(rc, "lockd_space_open: %s", strerror(-r));
        return;
    }
    while (!atomic_load(&rc->stop)) {
        r = lockd_gc(space, NULL, NULL, &removed, NULL);
        if (r < 0) {
            race_fail(rc, "gc: %s", strerror(-r));
            break;
        }
        atomic_fetch_add(&rc->removed, (long)removed);
        atomic_fetch_add(&rc->gc_runs, 1);
    }
    lockd_space_close(space);
}

/* One round of a virtlockd-style peer: open (creating), classic F_SETLK
 * write lock, hold, then virtlockd's release: unlink while still locked,
 * unlock, close.  virtlockd does not look again after locking (a hole of its
 * own); this peer does, so that what it then proves concerns lockd's gc. */
static void
race_posix_once(struct race *rc, int dirfd, unsigned *seed)
{
    int i = (int)(rand_r(seed) % (unsigned)rc->nkeys), fd, r;

    fd = openat(dirfd, rc->keys[i], O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        race_fail(rc, "open: %s", strerror(errno));
        return;
    }
    r = byte0_lock(fd, F_SETLK, F_WRLCK);
    if (r == -EAGAIN || r == -EACCES ||
        (r == 0 && same_file(dirfd, rc->keys[i], fd) < 0)) {
        atomic_fetch_add(r == 0 ? &rc->stale : &rc->busy, 1);
        close(fd); /* drops a classic lock */
        return;
    }
    if (r < 0) {
        race_fail(rc, "F_SETLK: %s", strerror(-r));
        close(fd);
        return;
    }
    hold_enter(rc, i, LOCKD_EXCLUSIVE);
    check_held(rc, dirfd, i, fd, "a POSIX holder");
    sched_yield();
    check_held(rc, dirfd, i, fd, "a POSIX holder");
    hold_leave(rc, i, LOCKD_EXCLUSIVE);
    if (unlinkat(dirfd, rc->keys[i], 0) < 0)
        race_fail(rc, "key %d: unlink of a held lease file: %s", i, strerror(errno));
    (void)byte0_lock(fd, F_SETLK, F_UNLCK);
    close(fd);
    atomic_fetch_add(&rc->posix_taken, 1);
}

static void
race_posix_process(struct race *rc)
{
    unsigned seed = (unsigned)getpid() * 104729u;
    int dirfd = open(space_dir(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (dirfd < 0) {
        race_fail(rc, "open lockspace: %s", strerror(errno));
        return;
    }
    while (!atomic_load(&rc->stop))
        race_posix_once(rc, dirfd, &seed);
    close(dirfd);
}

/*
 * A creator: takes leases of its own (no one else ever asks for them), so
 * the only thing it can meet is gc, which keeps removing them; nearly every
 * acquire creates the lease file anew.  A busy answer would be a lie: a try
 * must succeed or say a gc batch outlasted its wait (-EINPROGRESS), and a
 * timed or endless wait must always succeed.
 */
#define CREATOR_KEYS 300

static void
race_creator_process(struct race *rc, int timeout_ms)
{
    lockd_space *space = NULL;
    char (*keys)[LOCKD_KEY_SIZE] = calloc(CREATOR_KEYS, LOCKD_KEY_SIZE), disk[96];
    unsigned k = 0;
    int r;

    if (!keys || (r = lockd_space_open(space_dir(), 0, &space)) < 0) {
        race_fail(rc, "creator start: %s", keys ? strerror(-r) : "out of memory");
        free(keys);
        return;
    }
    for (k = 0; k < CREATOR_KEYS; k++) {
        snprintf(disk, sizeof(disk), "/vm/creator-%d-%u.img", (int)getpid(), k);
        key_of(disk, keys[k]);
    }
    for (k = 0; !atomic_load(&rc->stop); k = (k + 1) % CREATOR_KEYS) {
        const char *key = keys[k];
        lockd_lease *lease = NULL;

        r = lockd_acquire(space, 1, &key, NULL, timeout_ms, &lease);
        if (r == -EINPROGRESS && timeout_ms == LOCKD_TRY) {
            atomic_fetch_add(&rc->gc_waits, 1);
            continue;
        }
        if (r < 0) {
            race_fail(rc, "a creator (timeout %d ms) was refused a lease nobody holds: %s",
                      timeout_ms, strerror(-r));
            break;
        }
        r = same_file(lockd_space_fd(space), key, lockd_lease_fd(lease, 0));
        if (r < 0)
            race_fail(rc, "a creator holds a file its name has left: %s", strerror(-r));
        r = lockd_lease_release(lease);
        if (r < 0)
            race_fail(rc, "release: %s", strerror(-r));
        atomic_fetch_add(&rc->taken, 1);
    }
    lockd_space_close(space);
    free(keys);
}

enum { RACE_GC, RACE_POSIX, RACE_LOCKD, RACE_CREATOR };

static pid_t
race_spawn(struct race *rc, int kind, int nthreads)
{
    pid_t pid;

    fflush(NULL);
    pid = fork();
    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid > 0)
        return pid;
    if (kind == RACE_GC)
        race_gc_process(rc);
    else if (kind == RACE_POSIX)
        race_posix_process(rc);
    else if (kind == RACE_CREATOR)
        race_creator_process(rc, nthreads);
    else
        race_lockd_process(rc, nthreads);
    _exit(0);
}

struct race_goal {
    long taken, removed, gc_runs, posix_taken;
};

static int
race_reached(struct race *rc, const struct race_goal *g)
{
    return atomic_load(&rc->taken) >= g->taken &&
           atomic_load(&rc->removed) >= g->removed &&
           atomic_load(&rc->gc_runs) >= g->gc_runs &&
           atomic_load(&rc->posix_taken) >= g->posix_taken;
}

static void
race_report(struct race *rc, char *buf, size_t size)
{
    snprintf(buf, size,
             "%ld leases, %ld busy, %ld met a long gc batch, %ld POSIX holds, %ld stale, "
             "%ld gc runs, %ld removed",
             atomic_load(&rc->taken), atomic_load(&rc->busy), atomic_load(&rc->gc_waits),
             atomic_load(&rc->posix_taken), atomic_load(&rc->stale),
             atomic_load(&rc->gc_runs), atomic_load(&rc->removed));
}

/* After the race: every lease is free and a last gc clears them all. */
static void
race_aftermath(struct race *rc)
{
    lockd_space *space = NULL;
    uint64_t removed, kept;
    int k;

    for (k = 0; k < rc->nkeys; k++) {
        ASSERT_INT_EQ(atomic_load(&rc->excl[k]) + atomic_load(&rc->shared[k]), 0);
        ASSERT_INT_EQ(probe_elsewhere(rc->keys[k], NULL), LOCKD_FREE);
    }
    ASSERT_OK(lockd_space_open(space_dir(), 0, &space));
    ASSERT_OK(lockd_gc(space, NULL, NULL, &removed, &kept));
    ASSERT_INT_EQ(kept, 0);
    ASSERT_INT_EQ(count_key_files(space), 0);
    lockd_space_close(space);
}

/* Let the race run until goal is reached or a breach is recorded (at most
 * RACE_MS, or longer until floor is reached), stop everyone, and judge.  Reaching at least floor is required:
 * a race in which nothing happened proves nothing. */
static void
race_finish(struct race *rc, const pid_t *pids, size_t n, const struct race_goal *goal,
            const struct race_goal *floor)
{
    int64_t t0 = test_now_ms();
    char report[256];
    size_t i;
    int bad = 0;

    (void)WAIT_UNTIL(atomic_load(&rc->failed) || race_reached(rc, goal), RACE_MS);
    /* On a loaded machine the goal may take longer: go on until at least
     * the floor is reached (the case's alarm is the last word). */
    (void)WAIT_UNTIL(atomic_load(&rc->failed) || race_reached(rc, floor), RACE_FLOOR_MS);
    atomic_store(&rc->stop, 1);
    for (i = 0; i < n; i++)
        bad |= test_wait(pids[i]) != 0;
    race_report(rc, report, sizeof(report));
    printf("# %lld ms: %s\n", (long long)(test_now_ms() - t0), report);
    if (atomic_load(&rc->failed))
        TEST_FAIL("%s (%s)", rc->why, report);
    if (bad)
        TEST_FAIL("a race worker failed");
    if (!race_reached(rc, floor))
        TEST_FAIL("too little happened: %s", report);
    race_aftermath(rc);
    munmap(rc, sizeof(*rc));
}

/* Four lockd processes, one of them with three threads, take and release
 * eight keys while a fifth process runs gc in a loop. */
static void
test_gc_race_acquirers(void)
{
    struct race *rc = race_new(8);
    const struct race_goal goal = {.taken = 20000, .removed = 1000, .gc_runs = 1000};
    const struct race_goal floor = {.taken = 1000, .removed = 20, .gc_runs = 20};
    pid_t pids[5];

    pids[0] = race_spawn(rc, RACE_GC, 0);
    pids[1] = race_spawn(rc, RACE_LOCKD, 3);
    pids[2] = race_spawn(rc, RACE_LOCKD, 1);
    pids[3] = race_spawn(rc, RACE_LOCKD, 1);
    pids[4] = race_spawn(rc, RACE_LOCKD, 1);
    race_finish(rc, pids, 5, &goal, &floor);
}

/* Two virtlockd-style peers unlink and re-create lease files under the same
 * few keys while lockd processes (one with two threads) take them and gc
 * runs in a loop: gc must never remove a file that was re-created and locked
 * after it looked, and no holder may ever hold a file its name has left. */
static void
test_gc_race_virtlockd_peers(void)
{
    struct race *rc = race_new(3);
    const struct race_goal goal = {
        .taken = 5000, .removed = 200, .gc_runs = 1000, .posix_taken = 2000};
    const struct race_goal floor = {
        .taken = 200, .removed = 10, .gc_runs = 20, .posix_taken = 200};
    pid_t pids[5];

    pids[0] = race_spawn(rc, RACE_GC, 0);
    pids[1] = race_spawn(rc, RACE_POSIX, 0);
    pids[2] = race_spawn(rc, RACE_POSIX, 0);
    pids[3] = race_spawn(rc, RACE_LOCKD, 2);
    pids[4] = race_spawn(rc, RACE_LOCKD, 1);
    race_finish(rc, pids, 5, &goal, &floor);
}

/* Creators that try, wait with a timeout and wait forever, each on leases
 * of its own, while two processes run gc in a loop: gc takes the index per
 * batch and lets waiting creators in between, and no answer says busy. */
static void
test_gc_race_creators(void)
{
    struct race *rc = race_new(1);
    const struct race_goal goal = {.taken = 20000, .removed = 10000, .gc_runs = 300};
    const struct race_goal floor = {.taken = 1000, .removed = 500, .gc_runs = 20};
    pid_t pids[5];

    pids[0] = race_spawn(rc, RACE_GC, 0);
    pids[1] = race_spawn(rc, RACE_GC, 0);
    pids[2] = race_spawn(rc, RACE_CREATOR, LOCKD_TRY);
    pids[3] = race_spawn(rc, RACE_CREATOR, 5000);
    pids[4] = race_spawn(rc, RACE_CREATOR, LOCKD_FOREVER);
    race_finish(rc, pids, 5, &goal, &floor);
}

int
main(void)
{
    TEST_RUN(test_gc_removes_unheld_keeps_held);
    TEST_RUN(test_gc_leaves_planted_alone);
    TEST_RUN(test_gc_min_age);
    TEST_RUN(test_gc_progress);
    TEST_RUN(test_gc_progress_total);
    TEST_RUN(test_unlinked_while_waiting_forever);
    TEST_RUN(test_unlinked_while_waiting_timed);
    TEST_RUN(test_recreated_while_waiting_forever);
    TEST_RUN(test_recreated_while_waiting_timed);
    TEST_RUN(test_gc_race_acquirers);
    TEST_RUN(test_gc_race_virtlockd_peers);
    TEST_RUN(test_gc_race_creators);
    return test_done();
}
