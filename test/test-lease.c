/* SPDX-License-Identifier: MIT */
/*
 * test-lease.c: who can hold a lease when, across processes, threads and
 * lockspace handles; waiting, all-or-nothing, release and forget; living
 * beside virtlockd's classic POSIX locks; and the OFD property the whole
 * design rests on: a lease follows its open file description, not the
 * process that took it.
 *
 * Every contender other than the case itself is an "agent" (util.h): a forked
 * process (or a thread) that runs one lease operation per command received
 * over a pipe and answers over another.  An agent acknowledges each command
 * before running it, so a case knows when a wait has begun, and it keeps no
 * fd of the case's besides its pipes (a stray inherited copy of a lease fd
 * would keep a lease alive and hide exactly the bugs looked for here).
 * Nothing sleeps for a fixed time: cases wait on pipes, on waitpid() and, to
 * see that a waiter is blocked, on /proc.
 */
#include "test.h"
#include "util.h"

#include <stdint.h>
#include <sys/socket.h>

#include <sys/prctl.h>

#include "lockd.h"

/* ------------------------------------------------------------------------
 * Who may hold a lease with whom
 */

static const int mode_list[] = {LOCKD_EXCLUSIVE, LOCKD_SHARED};

static int
expect_for(int held, int want)
{
    return held == LOCKD_SHARED && want == LOCKD_SHARED ? 0 : -EAGAIN;
}

/* One cell of the matrix across processes: holder holds, other asks. */
static void
matrix_cell(const char *key, int held, int want)
{
    struct agent holder, other;
    int32_t pid = -1;
    int r;

    agent_start(&holder, -1);
    agent_start(&other, -1);
    ASSERT_INT_EQ(agent_acquire(&holder, key, held, LOCKD_TRY), 0);
    r = agent_acquire(&other, key, want, LOCKD_TRY);
    ASSERT_INT_EQ(r, expect_for(held, want));
    /* A third process sees the lease as held, in the holder's mode; OFD
     * locks have no owning process, so no pid. */
    ASSERT_INT_EQ(probe_elsewhere(key, &pid), held);
    ASSERT_INT_EQ(pid, 0);
    if (r == 0)
        ASSERT_INT_EQ(agent_do(&other, OP_RELEASE, NULL, 0, 0).r, 0);
    ASSERT_INT_EQ(agent_do(&holder, OP_RELEASE, NULL, 0, 0).r, 0);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
    /* Refused only while held: once released, the other gets it. */
    ASSERT_INT_EQ(agent_acquire(&other, key, want, LOCKD_TRY), 0);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), want);
    ASSERT_INT_EQ(agent_acquire(&holder, key, held, LOCKD_TRY), expect_for(want, held));
    agent_stop(&holder);
    agent_stop(&other);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
}

static void
test_matrix_processes(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    size_t i, j;

    ASSERT_OK(lockd_space_key(space, "/vm/guest-a.qcow2", key));
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
    for (i = 0; i < 2; i++)
        for (j = 0; j < 2; j++)
            matrix_cell(key, mode_list[i], mode_list[j]);
    lockd_space_close(space);
}

/*
 * The same matrix inside one process: the holder is another thread (threaded)
 * or this thread, and takes the lease through handle a; this thread asks
 * through handle b.  OFD locks belong to open file descriptions, so these
 * contend exactly as processes do (classic POSIX locks would grant both).
 */
static void
matrix_local(lockd_space *a, lockd_space *b, int threaded, int held, int want)
{
    char key[LOCKD_KEY_SIZE];
    lockd_lease *mine = NULL, *other = NULL;
    struct agent t;
    int r;

    key_of("rbd:pool/image-local", key);
    if (threaded) {
        agent_start_thread(&t, a);
        ASSERT_INT_EQ(agent_acquire(&t, key, held, LOCKD_TRY), 0);
    } else
        ASSERT_OK(acquire1(a, key, held, LOCKD_TRY, &other));
    r = acquire1(b, key, want, LOCKD_TRY, &mine);
    ASSERT_INT_EQ(r, expect_for(held, want));
    ASSERT_INT_EQ(lockd_probe(b, key, NULL), held);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), held);
    if (r == 0)
        ASSERT_OK(lockd_lease_release(mine));
    if (threaded) {
        ASSERT_INT_EQ(agent_do(&t, OP_RELEASE, NULL, 0, 0).r, 0);
        agent_stop(&t);
    } else
        ASSERT_OK(lockd_lease_release(other));
    ASSERT_INT_EQ(lockd_probe(a, key, NULL), LOCKD_FREE);
    ASSERT_OK(acquire1(b, key, want, LOCKD_TRY, &mine));
    ASSERT_OK(lockd_lease_release(mine));
}

static void
matrix_local_all(lockd_space *a, lockd_space *b, int threaded)
{
    size_t i, j;

    for (i = 0; i < 2; i++)
        for (j = 0; j < 2; j++)
            matrix_local(a, b, threaded, mode_list[i], mode_list[j]);
}

static void
test_matrix_threads(void)
{
    lockd_space *space = space_open();

    matrix_local_all(space, space, 1);
    lockd_space_close(space);
}

/* Two handles, the second spelling the lockspace differently ("/./"): with
 * classic POSIX locks this is how virtlockd grants one disk twice. */
static void
test_matrix_handles(void)
{
    lockd_space *a = space_open(), *b = NULL;
    char other[sizeof(test_scratch) + 8];

    snprintf(other, sizeof(other), "%s/./ls", test_scratch);
    ASSERT_OK(lockd_space_open(other, 0, &b));
    matrix_local_all(a, b, 0);
    matrix_local_all(a, b, 1);
    lockd_space_close(a);
    lockd_space_close(b);
}

/* ------------------------------------------------------------------------
 * Waiting
 */

static void
timed_out_case(lockd_space *space, const char *key, int held, int want)
{
    struct agent holder;
    lockd_lease *lease = NULL;
    int64_t t0, ms;
    int fds;

    agent_start(&holder, -1);
    ASSERT_INT_EQ(agent_acquire(&holder, key, held, LOCKD_TRY), 0);
    fds = count_fds();
    t0 = test_now_ms();
    ASSERT_ERR(acquire1(space, key, want, 200, &lease), ETIMEDOUT);
    ms = test_now_ms() - t0;
    if (ms < 190 || ms >= 5000)
        TEST_FAIL("a 200 ms wait took %lld ms", (long long)ms);
    ASSERT_INT_EQ(count_fds(), fds);
    /* Still the holder's, untouched by the failed wait. */
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), held);
    agent_stop(&holder);
    ASSERT_OK(acquire1(space, key, want, 200, &lease));
    ASSERT_OK(lockd_lease_release(lease));
}

static void
test_wait_timeout(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];

    ASSERT_OK(lockd_space_key(space, "/vm/timeout.img", key));
    timed_out_case(space, key, LOCKD_EXCLUSIVE, LOCKD_EXCLUSIVE);
    timed_out_case(space, key, LOCKD_SHARED, LOCKD_EXCLUSIVE);
    timed_out_case(space, key, LOCKD_EXCLUSIVE, LOCKD_SHARED);
    lockd_space_close(space);
}

/* Lock byte `byte` of .lockd-index through a description of our own, as a
 * gc batch holds it (byte 0) or as it waits for creators (byte 1). */
static int
index_byte(int fd, int cmd, short type, off_t byte)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

    return fcntl(fd, cmd, &fl) < 0 ? -errno : 0;
}

/* Whether another description holds a lock on byte `byte` of fd's file. */
static int
index_byte_taken(int fd, off_t byte)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

    ASSERT_OK(sys(fcntl(fd, F_OFD_GETLK, &fl)));
    return fl.l_type != F_UNLCK;
}

/*
 * While a gc batch holds the index, an acquire of an existing lease does not
 * care; one that must create its lease file waits: a try up to
 * LOCKD_INDEX_WAIT_MS and then -EINPROGRESS (never -EAGAIN: the lease is
 * free), a timed one until its timeout, an endless one until the batch ends.
 * A creator that waits holds byte 1 shared, so gc cannot start its next
 * batch (it waits for byte 1 exclusively) before the creator is through.
 */
static void
test_index_held_by_gc(void)
{
    lockd_space *space = space_open();
    char old[LOCKD_KEY_SIZE], new[LOCKD_KEY_SIZE];
    const char *k;
    struct agent waiter;
    lockd_lease *l = NULL;
    int64_t t0;
    int ifd;

    ASSERT_OK(lockd_space_key(space, "/vm/old.img", old));
    ASSERT_OK(lockd_space_key(space, "/vm/new.img", new));
    k = old;
    ASSERT_OK(lockd_acquire(space, 1, &k, NULL, LOCKD_TRY, &l));
    ASSERT_OK(lockd_lease_release(l));
    ifd = openat(lockd_space_fd(space), ".lockd-index", O_RDWR | O_CLOEXEC);
    ASSERT_OK(sys(ifd));
    ASSERT_OK(index_byte(ifd, F_OFD_SETLK, F_WRLCK, 0));

    ASSERT_OK(lockd_acquire(space, 1, &k, NULL, LOCKD_TRY, &l));
    ASSERT_OK(lockd_lease_release(l));
    k = new;
    t0 = test_now_ms();
    ASSERT_ERR(lockd_acquire(space, 1, &k, NULL, LOCKD_TRY, &l), EINPROGRESS);
    ASSERT_TRUE(test_now_ms() - t0 >= LOCKD_INDEX_WAIT_MS - 1);
    ASSERT_ERR(lockd_acquire(space, 1, &k, NULL, 150, &l), ETIMEDOUT);
    ASSERT_INT_EQ(probe_elsewhere(new, NULL), LOCKD_FREE);

    /* A creator waiting in another process holds byte 1 shared ... */
    agent_start(&waiter, -1);
    agent_begin(&waiter, OP_ACQUIRE, new, LOCKD_EXCLUSIVE, 60000);
    ASSERT_TRUE(WAIT_UNTIL(index_byte_taken(ifd, 1), 5000));
    ASSERT_ERR(index_byte(ifd, F_OFD_SETLK, F_WRLCK, 1), EAGAIN);
    /* ... so "gc", done with its batch, cannot start the next one until the
     * creator is through. */
    ASSERT_OK(index_byte(ifd, F_OFD_SETLK, F_UNLCK, 0));
    ASSERT_INT_EQ(agent_end(&waiter).r, 0);
    ASSERT_TRUE(WAIT_UNTIL(index_byte(ifd, F_OFD_SETLK, F_WRLCK, 1) == 0, 5000));
    ASSERT_INT_EQ(probe_elsewhere(new, NULL), LOCKD_EXCLUSIVE);
    agent_stop(&waiter);
    close(ifd);
    lockd_space_close(space);
}

/* A gc in a process of its own, until done. */
static int
gc_child(void *arg)
{
    lockd_space *space = NULL;

    (void)arg;
    /* Not the case's copy of the index (with its lock), and not past the
     * case: a failed case must not leave a gc waiting forever. */
    close_all_but(NULL, 0);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() == 1)
        return 1;
    if (lockd_space_open(space_dir(), 0, &space) < 0 ||
        lockd_gc(space, NULL, NULL, NULL, NULL) < 0)
        return 1;
    lockd_space_close(space);
    return 0;
}

/*
 * What the index must not do (found by review): something that holds byte 0
 * shared for long without byte 1 (an older lockd creator, a leaked fd) may
 * delay gc, but gc waiting behind it must not hold up new creators; and a
 * busy lease is busy (-EAGAIN, with its holder) even while a gc or an older
 * lockd's gc holds the index past LOCKD_INDEX_WAIT_MS, never -EINPROGRESS.
 */
static void
test_index_never_hides_busy(void)
{
    lockd_space *space = space_open();
    char held[LOCKD_KEY_SIZE], fresh[LOCKD_KEY_SIZE];
    struct agent holder;
    const char *k;
    lockd_lease *l = NULL;
    pid_t gc;
    int ifd;

    ASSERT_OK(lockd_space_key(space, "/vm/held.img", held));
    ASSERT_OK(lockd_space_key(space, "/vm/fresh.img", fresh));
    ifd = openat(lockd_space_fd(space), ".lockd-index", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_OK(sys(ifd));

    /* An old creator's shared hold; gc starts and waits behind it. */
    ASSERT_OK(index_byte(ifd, F_OFD_SETLK, F_RDLCK, 0));
    k = held; /* a lease file for gc to look at */
    ASSERT_OK(lockd_acquire(space, 1, &k, NULL, LOCKD_TRY, &l));
    ASSERT_OK(lockd_lease_release(l));
    gc = test_fork(gc_child, NULL);
    ASSERT_TRUE(WAIT_UNTIL(proc_sleeping(gc), 5000));
    k = fresh;
    ASSERT_OK(lockd_acquire(space, 1, &k, NULL, LOCKD_TRY, &l));
    ASSERT_OK(lockd_lease_release(l));
    ASSERT_OK(index_byte(ifd, F_OFD_SETLK, F_UNLCK, 0));
    ASSERT_INT_EQ(test_wait(gc), 0);

    /* A held lease while the index is held exclusively, as an older gc
     * holds it for its whole run: busy, not "gc in progress". */
    agent_start(&holder, -1);
    ASSERT_INT_EQ(agent_acquire(&holder, held, LOCKD_EXCLUSIVE, LOCKD_TRY), 0);
    ASSERT_OK(index_byte(ifd, F_OFD_SETLK, F_WRLCK, 0));
    k = held;
    ASSERT_ERR(lockd_acquire(space, 1, &k, NULL, LOCKD_TRY, &l), EAGAIN);
    ASSERT_OK(index_byte(ifd, F_OFD_SETLK, F_UNLCK, 0));
    agent_stop(&holder);
    close(ifd);
    lockd_space_close(space);
}

/*
 * A waiter gets the lease when the holder lets go: by releasing it (kill 0)
 * or by dying (kill 1).  The case checks the waiter really is waiting before
 * the holder lets go, so the grant cannot be a plain first try.
 */
static void
wait_case(lockd_space *space, const char *key, int timeout, int kill_holder)
{
    struct agent holder, waiter;
    struct reply rep;
    struct stat st;

    agent_start(&holder, -1);
    agent_start(&waiter, -1);
    ASSERT_INT_EQ(agent_acquire(&holder, key, LOCKD_EXCLUSIVE, LOCKD_TRY), 0);
    agent_begin(&waiter, OP_ACQUIRE, key, LOCKD_EXCLUSIVE, timeout);
    ASSERT_TRUE(WAIT_UNTIL(proc_sleeping(waiter.pid), 5000));
    if (timeout == LOCKD_FOREVER) {
        stat_key(space, key, &st);
        ASSERT_TRUE(WAIT_UNTIL(lock_waiter_on(&st), 5000));
    }
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_EXCLUSIVE);
    if (kill_holder)
        agent_kill(&holder);
    else
        ASSERT_INT_EQ(agent_do(&holder, OP_RELEASE, NULL, 0, 0).r, 0);
    rep = agent_end(&waiter);
    ASSERT_INT_EQ(rep.r, 0);
    ASSERT_TRUE(rep.ms < 10000);
    /* The waiter holds it now, on the file its name refers to. */
    ASSERT_INT_EQ(agent_do(&waiter, OP_CHECK, key, 0, 0).r, 0);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(try_elsewhere(key, LOCKD_SHARED), -EAGAIN);
    if (!kill_holder)
        agent_stop(&holder);
    agent_stop(&waiter);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
}

static void
test_wait_release_forever(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];

    key_of("wait-release-forever", key);
    wait_case(space, key, LOCKD_FOREVER, 0);
    lockd_space_close(space);
}

static void
test_wait_release_timed(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];

    key_of("wait-release-timed", key);
    wait_case(space, key, 10000, 0);
    lockd_space_close(space);
}

static void
test_wait_holder_killed_forever(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];

    key_of("wait-kill-forever", key);
    wait_case(space, key, LOCKD_FOREVER, 1);
    lockd_space_close(space);
}

static void
test_wait_holder_killed_timed(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];

    key_of("wait-kill-timed", key);
    wait_case(space, key, 10000, 1);
    lockd_space_close(space);
}

/* ------------------------------------------------------------------------
 * Several keys in one call
 */

static int
cmp_key(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Three keys, sorted. */
static void
three_keys(char keys[3][LOCKD_KEY_SIZE])
{
    key_of("/vm/multi-a.img", keys[0]);
    key_of("/vm/multi-b.img", keys[1]);
    key_of("/vm/multi-c.img", keys[2]);
    qsort(keys, 3, LOCKD_KEY_SIZE, cmp_key);
}

/* Another process holds keys[busy]; asking for all three fails and leaves
 * nothing held and no fd open, whether the busy key comes first, in the
 * middle (after one was taken) or last (after two were). */
static void
all_or_nothing_case(lockd_space *space, char keys[3][LOCKD_KEY_SIZE], size_t busy,
                    int timeout, int err)
{
    const char *k[] = {keys[2], keys[0], keys[1]};
    lockd_lease *lease = NULL;
    struct agent holder;
    size_t i;
    int fds;

    agent_start(&holder, -1);
    ASSERT_INT_EQ(agent_acquire(&holder, keys[busy], LOCKD_EXCLUSIVE, LOCKD_TRY), 0);
    fds = count_fds();
    ASSERT_INT_EQ(lockd_acquire(space, 3, k, NULL, timeout, &lease), -err);
    ASSERT_TRUE(lease == NULL);
    ASSERT_INT_EQ(count_fds(), fds);
    for (i = 0; i < 3; i++)
        ASSERT_INT_EQ(probe_elsewhere(keys[i], NULL),
                      i == busy ? LOCKD_EXCLUSIVE : LOCKD_FREE);
    for (i = 0; i < 3; i++)
        if (i != busy)
            ASSERT_INT_EQ(try_elsewhere(keys[i], LOCKD_EXCLUSIVE), 0);
    agent_stop(&holder);
    ASSERT_OK(lockd_acquire(space, 3, k, NULL, LOCKD_TRY, &lease));
    ASSERT_INT_EQ(lockd_lease_count(lease), 3);
    ASSERT_OK(lockd_lease_release(lease));
}

static void
test_all_or_nothing(void)
{
    lockd_space *space = space_open();
    char keys[3][LOCKD_KEY_SIZE];
    size_t busy;

    three_keys(keys);
    for (busy = 0; busy < 3; busy++) {
        all_or_nothing_case(space, keys, busy, LOCKD_TRY, EAGAIN);
        all_or_nothing_case(space, keys, busy, 50, ETIMEDOUT);
    }
    lockd_space_close(space);
}

/* A shared holder elsewhere does not stop a mixed request that wants that
 * key shared too. */
static void
test_multi_shared_with_holder(void)
{
    lockd_space *space = space_open();
    char keys[3][LOCKD_KEY_SIZE];
    const char *k[] = {keys[0], keys[1], keys[2]};
    const int modes[] = {LOCKD_EXCLUSIVE, LOCKD_SHARED, LOCKD_EXCLUSIVE};
    lockd_lease *lease = NULL;
    struct agent holder;

    three_keys(keys);
    agent_start(&holder, -1);
    ASSERT_INT_EQ(agent_acquire(&holder, keys[1], LOCKD_SHARED, LOCKD_TRY), 0);
    ASSERT_OK(lockd_acquire(space, 3, k, modes, LOCKD_TRY, &lease));
    ASSERT_INT_EQ(lockd_lease_mode(lease, 0), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(lockd_lease_mode(lease, 1), LOCKD_SHARED);
    ASSERT_INT_EQ(lockd_lease_mode(lease, 2), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(probe_elsewhere(keys[0], NULL), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(probe_elsewhere(keys[1], NULL), LOCKD_SHARED);
    ASSERT_INT_EQ(probe_elsewhere(keys[2], NULL), LOCKD_EXCLUSIVE);
    ASSERT_OK(lockd_lease_release(lease));
    agent_stop(&holder);
    lockd_space_close(space);
}

static void
dedup_case(lockd_space *space, const char *key, int m1, int m2, int expect)
{
    const char *k[] = {key, key};
    const int modes[] = {m1, m2};
    lockd_lease *lease = NULL;
    int fds = count_fds();

    ASSERT_OK(lockd_acquire(space, 2, k, modes, LOCKD_TRY, &lease));
    ASSERT_INT_EQ(lockd_lease_count(lease), 1);
    ASSERT_INT_EQ(lockd_lease_mode(lease, 0), expect);
    ASSERT_STR_EQ(lockd_lease_key(lease, 0), key);
    ASSERT_TRUE(lockd_lease_fd(lease, 0) >= 0);
    ASSERT_INT_EQ(lockd_lease_fd(lease, 1), -EINVAL);
    /* One lease fd: the lease shares its lockspace's directory fd. */
    ASSERT_INT_EQ(count_fds(), fds + 1);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), expect);
    ASSERT_OK(lockd_lease_release(lease));
    ASSERT_INT_EQ(count_fds(), fds);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
}

static void
test_duplicate_keys(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    const char *k[2];
    lockd_lease *lease = NULL;

    key_of("/vm/dup.img", key);
    k[0] = k[1] = key;
    ASSERT_OK(lockd_acquire(space, 2, k, NULL, LOCKD_TRY, &lease));
    ASSERT_INT_EQ(lockd_lease_count(lease), 1);
    ASSERT_INT_EQ(lockd_lease_mode(lease, 0), LOCKD_EXCLUSIVE);
    ASSERT_OK(lockd_lease_release(lease));
    dedup_case(space, key, LOCKD_SHARED, LOCKD_EXCLUSIVE, LOCKD_EXCLUSIVE);
    dedup_case(space, key, LOCKD_EXCLUSIVE, LOCKD_SHARED, LOCKD_EXCLUSIVE);
    dedup_case(space, key, LOCKD_SHARED, LOCKD_SHARED, LOCKD_SHARED);
    lockd_space_close(space);
}

static void
test_keys_sorted(void)
{
    lockd_space *space = space_open();
    char keys[3][LOCKD_KEY_SIZE];
    const char *k[] = {keys[2], keys[0], keys[1], keys[0]};
    const int modes[] = {LOCKD_SHARED, LOCKD_SHARED, LOCKD_EXCLUSIVE, LOCKD_SHARED};
    lockd_lease *lease = NULL;
    size_t i;

    three_keys(keys);
    ASSERT_OK(lockd_acquire(space, 4, k, modes, LOCKD_TRY, &lease));
    ASSERT_INT_EQ(lockd_lease_count(lease), 3);
    for (i = 0; i < 3; i++)
        ASSERT_STR_EQ(lockd_lease_key(lease, i), keys[i]);
    ASSERT_TRUE(lockd_lease_key(lease, 3) == NULL);
    ASSERT_INT_EQ(lockd_lease_mode(lease, 0), LOCKD_SHARED);
    ASSERT_INT_EQ(lockd_lease_mode(lease, 1), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(lockd_lease_mode(lease, 2), LOCKD_SHARED);
    ASSERT_TRUE(lockd_lease_fd(lease, 0) != lockd_lease_fd(lease, 1));
    ASSERT_TRUE(lockd_lease_fd(lease, 1) != lockd_lease_fd(lease, 2));
    ASSERT_TRUE(lockd_lease_fd(lease, 0) != lockd_lease_fd(lease, 2));
    for (i = 0; i < 3; i++)
        ASSERT_INT_EQ(same_file(lockd_space_fd(space), keys[i], lockd_lease_fd(lease, i)),
                      0);
    ASSERT_OK(lockd_lease_release(lease));
    lockd_space_close(space);
}

/* ------------------------------------------------------------------------
 * Letting go
 */

static void
test_release_frees(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    lockd_lease *lease = NULL;
    int fds = count_fds();

    key_of("/vm/release.img", key);
    ASSERT_OK(acquire1(space, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &lease));
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(lockd_lease_release(lease), 0);
    ASSERT_INT_EQ(count_fds(), fds);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
    ASSERT_INT_EQ(try_elsewhere(key, LOCKD_EXCLUSIVE), 0);
    ASSERT_INT_EQ(lockd_lease_release(NULL), 0);
    lockd_lease_forget(NULL);
    lockd_space_close(space);
}

/* Leases outlive the handle they were taken through: closing it keeps the
 * directory fd they share open until the last of them ends, released or
 * forgotten. */
static void
test_lease_outlives_space(void)
{
    char k1[LOCKD_KEY_SIZE], k2[LOCKD_KEY_SIZE];
    lockd_lease *a = NULL, *b = NULL;
    int fds = count_fds();
    lockd_space *space = space_open();

    key_of("/vm/outlive-1.img", k1);
    key_of("/vm/outlive-2.img", k2);
    ASSERT_OK(acquire1(space, k1, LOCKD_EXCLUSIVE, LOCKD_TRY, &a));
    ASSERT_OK(acquire1(space, k2, LOCKD_SHARED, LOCKD_TRY, &b));
    ASSERT_INT_EQ(count_fds(), fds + 3);
    lockd_space_close(space);
    ASSERT_INT_EQ(count_fds(), fds + 3);
    ASSERT_INT_EQ(probe_elsewhere(k1, NULL), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(lockd_lease_release(a), 0);
    ASSERT_INT_EQ(count_fds(), fds + 2);
    ASSERT_INT_EQ(probe_elsewhere(k1, NULL), LOCKD_FREE);
    ASSERT_INT_EQ(probe_elsewhere(k2, NULL), LOCKD_SHARED);
    lockd_lease_forget(b);
    ASSERT_INT_EQ(count_fds(), fds);
    ASSERT_INT_EQ(probe_elsewhere(k2, NULL), LOCKD_FREE);
}

/* Forget with no other copy of the fd: closing the last one frees it. */
static void
test_forget_last_copy_frees(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    lockd_lease *lease = NULL;
    int fds = count_fds();

    key_of("/vm/forget.img", key);
    ASSERT_OK(acquire1(space, key, LOCKD_SHARED, LOCKD_TRY, &lease));
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_SHARED);
    lockd_lease_forget(lease);
    ASSERT_INT_EQ(count_fds(), fds);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
    ASSERT_INT_EQ(try_elsewhere(key, LOCKD_EXCLUSIVE), 0);
    lockd_space_close(space);
}

/* Forget after a child got a copy of the fd: the child holds the lease until
 * it exits, then it is free. */
static void
test_forget_child_copy_holds(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    lockd_lease *lease = NULL;
    struct agent child;
    int copy;

    key_of("/vm/forget-child.img", key);
    ASSERT_OK(acquire1(space, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &lease));
    copy = dup(lockd_lease_fd(lease, 0));
    ASSERT_OK(copy);
    agent_start(&child, copy); /* keeps the dup, drops everything else */
    close(copy);
    lockd_lease_forget(lease);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(try_elsewhere(key, LOCKD_SHARED), -EAGAIN);
    ASSERT_ERR(acquire1(space, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &lease), EAGAIN);
    agent_stop(&child);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
    ASSERT_OK(acquire1(space, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &lease));
    ASSERT_OK(lockd_lease_release(lease));
    lockd_space_close(space);
}

/* ------------------------------------------------------------------------
 * virtlockd's classic POSIX locks
 */

static int
posix_refused(int r)
{
    return r == -EAGAIN || r == -EACCES;
}

static void
test_posix_write_lock_excludes_lockd(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    lockd_lease *lease = NULL;
    struct agent v;
    int32_t pid = -1;

    ASSERT_OK(lockd_space_key(space, "/var/lib/libvirt/images/v.qcow2", key));
    agent_start(&v, -1);
    ASSERT_INT_EQ(agent_do(&v, OP_POSIX_LOCK, key, F_WRLCK, 0).r, 0);
    ASSERT_ERR(acquire1(space, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &lease), EAGAIN);
    ASSERT_ERR(acquire1(space, key, LOCKD_SHARED, LOCKD_TRY, &lease), EAGAIN);
    /* A classic lock has an owning process, and probe names it. */
    ASSERT_INT_EQ(lockd_probe(space, key, &pid), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(pid, v.pid);
    pid = -1;
    ASSERT_INT_EQ(probe_elsewhere(key, &pid), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(pid, v.pid);
    ASSERT_INT_EQ(agent_do(&v, OP_POSIX_UNLOCK, NULL, 0, 0).r, 0);
    ASSERT_INT_EQ(lockd_probe(space, key, &pid), LOCKD_FREE);
    ASSERT_INT_EQ(pid, 0);
    ASSERT_OK(acquire1(space, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &lease));
    ASSERT_OK(lockd_lease_release(lease));
    agent_stop(&v);
    lockd_space_close(space);
}

static void
test_lockd_excludes_posix_locks(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    lockd_lease *lease = NULL;
    struct agent v;

    ASSERT_OK(lockd_space_key(space, "/var/lib/libvirt/images/w.qcow2", key));
    agent_start(&v, -1);
    ASSERT_OK(acquire1(space, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &lease));
    ASSERT_TRUE(posix_refused(agent_do(&v, OP_POSIX_LOCK, key, F_WRLCK, 0).r));
    ASSERT_TRUE(posix_refused(agent_do(&v, OP_POSIX_LOCK, key, F_RDLCK, 0).r));
    ASSERT_OK(lockd_lease_release(lease));
    ASSERT_OK(acquire1(space, key, LOCKD_SHARED, LOCKD_TRY, &lease));
    ASSERT_TRUE(posix_refused(agent_do(&v, OP_POSIX_LOCK, key, F_WRLCK, 0).r));
    /* Readers share: a POSIX read lock beside a lockd shared lease. */
    ASSERT_INT_EQ(agent_do(&v, OP_POSIX_LOCK, key, F_RDLCK, 0).r, 0);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_SHARED);
    ASSERT_OK(lockd_lease_release(lease));
    ASSERT_ERR(acquire1(space, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &lease), EAGAIN);
    ASSERT_OK(acquire1(space, key, LOCKD_SHARED, LOCKD_TRY, &lease));
    ASSERT_INT_EQ(agent_do(&v, OP_POSIX_UNLOCK, NULL, 0, 0).r, 0);
    ASSERT_INT_EQ(lockd_probe(space, key, NULL), LOCKD_SHARED);
    ASSERT_OK(lockd_lease_release(lease));
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
    agent_stop(&v);
    lockd_space_close(space);
}

/* ------------------------------------------------------------------------
 * A lease follows its open file description
 */

struct pair {
    struct agent first, second;
    int sv[2];
};

/* first takes key and sends the lease fd to second, which keeps it. */
static void
pair_handover(struct pair *p, const char *key)
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p->sv) < 0)
        TEST_FAIL("socketpair: %s", strerror(errno));
    agent_start(&p->first, p->sv[0]);
    agent_start(&p->second, p->sv[1]);
    close(p->sv[0]);
    close(p->sv[1]);
    ASSERT_INT_EQ(agent_acquire(&p->first, key, LOCKD_EXCLUSIVE, LOCKD_TRY), 0);
    ASSERT_INT_EQ(agent_do(&p->first, OP_SEND, NULL, 0, 0).r, 0);
    ASSERT_INT_EQ(agent_do(&p->second, OP_RECV, NULL, 0, 0).r, 0);
}

/* The taker is SIGKILLed; the receiver's copy keeps the lease; an unlock
 * through that copy frees it though the copy stays open. */
static void
test_ofd_survives_sender_death(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    lockd_lease *lease = NULL;
    struct pair p;

    key_of("/vm/handover-kill.img", key);
    pair_handover(&p, key);
    agent_kill(&p.first);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(try_elsewhere(key, LOCKD_EXCLUSIVE), -EAGAIN);
    ASSERT_INT_EQ(try_elsewhere(key, LOCKD_SHARED), -EAGAIN);
    ASSERT_INT_EQ(agent_do(&p.second, OP_OFD_UNLOCK, NULL, 0, 0).r, 0);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
    ASSERT_OK(acquire1(space, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &lease));
    ASSERT_OK(lockd_lease_release(lease));
    agent_stop(&p.second);
    lockd_space_close(space);
}

/* The taker releases while the receiver still has its copy open: the unlock
 * applies to the open file description, so the lease is free. */
static void
test_ofd_release_frees_other_copy(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    lockd_lease *lease = NULL;
    struct pair p;

    key_of("/vm/handover-release.img", key);
    pair_handover(&p, key);
    ASSERT_INT_EQ(agent_do(&p.first, OP_RELEASE, NULL, 0, 0).r, 0);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
    ASSERT_OK(acquire1(space, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &lease));
    ASSERT_OK(lockd_lease_release(lease));
    agent_stop(&p.second);
    agent_stop(&p.first);
    lockd_space_close(space);
}

/* The taker forgets: the receiver's copy holds the lease until it exits. */
static void
test_ofd_forget_keeps_other_copy(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE];
    lockd_lease *lease = NULL;
    struct pair p;

    key_of("/vm/handover-forget.img", key);
    pair_handover(&p, key);
    ASSERT_INT_EQ(agent_do(&p.first, OP_FORGET, NULL, 0, 0).r, 0);
    agent_stop(&p.first);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_EXCLUSIVE);
    ASSERT_ERR(acquire1(space, key, LOCKD_SHARED, LOCKD_TRY, &lease), EAGAIN);
    agent_stop(&p.second);
    ASSERT_INT_EQ(probe_elsewhere(key, NULL), LOCKD_FREE);
    lockd_space_close(space);
}

/* ------------------------------------------------------------------------
 * The lease fd and file
 */

static void
check_lease_file(lockd_space *space, const char *key, int fd, int record)
{
    struct stat st, byname;
    int flags = fcntl(fd, F_GETFD);
    lockd_holder_info hi;

    ASSERT_OK(sys(flags));
    ASSERT_TRUE(flags & FD_CLOEXEC);
    ASSERT_OK(sys(fstat(fd, &st)));
    ASSERT_TRUE(S_ISREG(st.st_mode));
    /* Empty, as virtlockd makes them, until held exclusively: then the
     * holder record (test_holder_records). */
    if (record) {
        ASSERT_OK(lockd_holder(space, key, &hi));
        ASSERT_TRUE(st.st_size > 0 && st.st_size < 4096);
    } else {
        ASSERT_ERR(lockd_holder(space, key, &hi), ENODATA);
        ASSERT_INT_EQ(st.st_size, 0);
    }
    ASSERT_INT_EQ(st.st_mode & 07777, 0600);
    ASSERT_INT_EQ(st.st_uid, geteuid());
    ASSERT_OK(sys(fstatat(lockd_space_fd(space), key, &byname, AT_SYMLINK_NOFOLLOW)));
    ASSERT_INT_EQ(byname.st_ino, st.st_ino);
    ASSERT_INT_EQ(byname.st_dev, st.st_dev);
}

/* With umask 0, so a mode the library did not ask for would show. */
static void
test_lease_fd_and_file(void)
{
    lockd_space *space = space_open();
    char keys[3][LOCKD_KEY_SIZE];
    const char *k[] = {keys[0], keys[1], keys[2]};
    const int modes[] = {LOCKD_EXCLUSIVE, LOCKD_SHARED, LOCKD_EXCLUSIVE};
    lockd_lease *lease = NULL;
    size_t i;

    umask(0);
    three_keys(keys);
    ASSERT_OK(lockd_acquire(space, 3, k, modes, LOCKD_TRY, &lease));
    for (i = 0; i < 3; i++)
        check_lease_file(space, keys[i], lockd_lease_fd(lease, i), i != 1);
    ASSERT_OK(lockd_lease_release(lease));
    /* Existing files are reused as they are, and still fine. */
    ASSERT_OK(lockd_acquire(space, 3, k, NULL, LOCKD_TRY, &lease));
    for (i = 0; i < 3; i++)
        check_lease_file(space, keys[i], lockd_lease_fd(lease, i), 1);
    ASSERT_OK(lockd_lease_release(lease));
    lockd_space_close(space);
}

/*
 * Holder records: each exclusive grant writes one (host, machine-id, pid,
 * since, version, epoch, generation), lockd_lease_set_holder() names the
 * owner and the disk without a new generation, the generation counts
 * exclusive grants of one file under one epoch, a shared grant writes
 * nothing, a file made again starts a new epoch, and what a client wrote
 * is escaped and bounded.
 */
static void
test_holder_records(void)
{
    lockd_space *space = space_open();
    char key[LOCKD_KEY_SIZE], host[256], longname[2000], evil[] = "web\n<0>1\\";
    const char *k[] = {key}, *names[] = {longname};
    const int shared[] = {LOCKD_SHARED};
    lockd_lease *lease = NULL;
    lockd_holder_info hi, first;
    struct stat st;
    uint64_t epoch;

    key_of("/vm/record.img", key);
    ASSERT_ERR(lockd_holder(space, key, &hi), ENOENT);
    ASSERT_OK(sys(gethostname(host, sizeof(host))));
    ASSERT_OK(lockd_acquire(space, 1, k, NULL, LOCKD_TRY, &lease));
    ASSERT_OK(lockd_holder(space, key, &first));
    ASSERT_STR_EQ(first.host, host);
    ASSERT_INT_EQ(strlen(first.machine_id), 32);
    ASSERT_INT_EQ(first.pid, getpid());
    ASSERT_STR_EQ(first.owner, "");
    ASSERT_STR_EQ(first.version, lockd_version());
    ASSERT_INT_EQ(first.generation, 1);
    ASSERT_TRUE(first.epoch != 0);
    ASSERT_TRUE(first.since > time(NULL) - 60 && first.since <= time(NULL));

    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    ASSERT_OK(lockd_lease_set_holder(lease, evil, "6f1c2d3e-0000-4000-8000-00000000abcd", 4242,
                                     names));
    ASSERT_OK(lockd_holder(space, key, &hi));
    ASSERT_STR_EQ(hi.owner, "web\\x0a<0>1\\"); /* the newline stays escaped */
    ASSERT_STR_EQ(hi.uuid, "6f1c2d3e-0000-4000-8000-00000000abcd");
    ASSERT_INT_EQ(hi.pid, 4242);
    ASSERT_INT_EQ(strlen(hi.resource), LOCKD_HOLDER_NAME_MAX);
    ASSERT_INT_EQ(hi.generation, 1);
    ASSERT_INT_EQ(hi.epoch, first.epoch);
    ASSERT_INT_EQ(lockd_lease_set_holder(lease, NULL, "not-a-uuid", 1, NULL), -EINVAL);
    ASSERT_OK(lockd_lease_release(lease));
    /* Free again: the record stays, and names its last holder. */
    ASSERT_OK(lockd_holder(space, key, &hi));
    ASSERT_INT_EQ(hi.pid, 4242);

    /* The next exclusive grant: the next generation, a record of its own,
     * and no tail of the longer one before it. */
    ASSERT_OK(lockd_acquire(space, 1, k, NULL, LOCKD_TRY, &lease));
    ASSERT_OK(lockd_holder(space, key, &hi));
    ASSERT_INT_EQ(hi.generation, 2);
    ASSERT_INT_EQ(hi.epoch, first.epoch);
    ASSERT_STR_EQ(hi.owner, "");
    ASSERT_STR_EQ(hi.resource, "");
    ASSERT_OK(sys(fstat(lockd_lease_fd(lease, 0), &st)));
    ASSERT_TRUE(st.st_size < 400);
    ASSERT_OK(lockd_lease_release(lease));
    /* A shared grant writes nothing. */
    ASSERT_OK(lockd_acquire(space, 1, k, shared, LOCKD_TRY, &lease));
    ASSERT_OK(lockd_lease_release(lease));
    ASSERT_OK(lockd_holder(space, key, &hi));
    ASSERT_INT_EQ(hi.generation, 2);
    /* A file made again (gc removed it) starts a new epoch. */
    epoch = hi.epoch;
    ASSERT_OK(lockd_gc(space, NULL, NULL, NULL, NULL));
    ASSERT_ERR(lockd_holder(space, key, &hi), ENOENT);
    ASSERT_OK(lockd_acquire(space, 1, k, NULL, LOCKD_TRY, &lease));
    ASSERT_OK(lockd_holder(space, key, &hi));
    ASSERT_INT_EQ(hi.generation, 1);
    ASSERT_TRUE(hi.epoch != epoch);
    ASSERT_OK(lockd_lease_release(lease));
    ASSERT_ERR(lockd_holder(space, "nokey", &hi), EINVAL);
    /* What another host wrote is parsed line by line: a line without '='
     * names nothing and takes nothing from the next. */
    {
        static const char crafted[] = "lockd-holder 1\nhost\nowner=X\npid=7\nsince=9";
        char other[LOCKD_KEY_SIZE];
        int fd;

        key_of("/vm/crafted.img", other);
        fd = openat(lockd_space_fd(space), other, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        ASSERT_OK(sys(fd));
        ASSERT_INT_EQ(write(fd, crafted, sizeof(crafted) - 1), (ssize_t)sizeof(crafted) - 1);
        close(fd);
        ASSERT_OK(lockd_holder(space, other, &hi));
        ASSERT_STR_EQ(hi.host, "");
        ASSERT_STR_EQ(hi.owner, "X");
        ASSERT_INT_EQ(hi.pid, 7);
        ASSERT_INT_EQ(hi.since, 0); /* a last line cut short is not trusted */
    }
    lockd_space_close(space);
}

/*
 * lockd_lease_check() and lockd_check_fd_of() on a local lockspace: held;
 * -ENOLCK once its lock is gone (another copy of the description
 * unlocked); -EBADF for no such fd; -EINVAL for a lease index out of range.
 */
static void
test_lease_check(void)
{
    struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1 };
    lockd_space *space = space_open();
    char keys[2][LOCKD_KEY_SIZE];
    const char *k[] = { keys[0], keys[1] };
    const int modes[] = { LOCKD_EXCLUSIVE, LOCKD_SHARED };
    lockd_lease *lease = NULL;
    size_t i;

    key_of("/vm/check-a.img", keys[0]);
    key_of("/vm/check-b.img", keys[1]);
    ASSERT_OK(lockd_acquire(space, 2, k, modes, LOCKD_TRY, &lease));
    for (i = 0; i < 2; i++) {
        ASSERT_OK(lockd_lease_check(lease, i));
        ASSERT_OK(lockd_check_fd_of(getpid(), lockd_lease_fd(lease, i), lockd_lease_mode(lease, i)));
    }
    ASSERT_ERR(lockd_lease_check(lease, 2), EINVAL);
    for (i = 0; i < 2; i++) {
        int copy = fcntl(lockd_lease_fd(lease, i), F_DUPFD_CLOEXEC, 3);

        ASSERT_OK(sys(copy));
        ASSERT_OK(sys(fcntl(copy, F_OFD_SETLK, &fl)));
        close(copy);
        ASSERT_ERR(lockd_lease_check(lease, i), ENOLCK);
        ASSERT_ERR(lockd_check_fd_of(getpid(), lockd_lease_fd(lease, i),
                                     lockd_lease_mode(lease, i)),
                   ENOLCK);
    }
    ASSERT_ERR(lockd_check_fd_of(getpid(), 999, LOCKD_EXCLUSIVE), EBADF);
    ASSERT_ERR(lockd_check_fd(-1, LOCKD_EXCLUSIVE), EINVAL);
    ASSERT_OK(lockd_lease_release(lease));
    lockd_space_close(space);
}

/*
 * Direct leases: the lock on the disk itself (byte 0, an OFD lock), no
 * lockspace: an image file and a loop device, through a symlink too;
 * nothing written to the disk; anything but a regular file or a block
 * device refused; and a classic POSIX lock on byte 0 (virtlockd's direct
 * lease) excludes a direct lease and the other way round.
 */
static int
posix_lock_in_child(const char *path, int *ret_pipe)
{
    int go[2], done[2];
    pid_t pid;
    char c;

    ASSERT_OK(sys(pipe(go)));
    ASSERT_OK(sys(pipe(done)));
    pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        struct flock fl = {
            .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
        int fd = open(path, O_RDWR | O_CLOEXEC);

        close(go[0]);
        close(done[1]);
        c = fd >= 0 && fcntl(fd, F_SETLK, &fl) == 0 ? 'y' : 'n';
        (void)!write(go[1], &c, 1);
        (void)!read(done[0], &c, 1); /* until the parent closes it */
        _exit(0);
    }
    close(go[1]);
    close(done[0]);
    ASSERT_INT_EQ(read(go[0], &c, 1), 1);
    close(go[0]);
    *ret_pipe = done[1];
    return c == 'y' ? pid : -pid;
}

static void
test_direct(void)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    char img[4096], link[4096], key[LOCKD_KEY_SIZE], loop[64] = "", cmd[4200];
    const char *one[1], *two[2];
    const int shared[] = {LOCKD_SHARED};
    lockd_lease *a = NULL, *b = NULL;
    struct stat st;
    int32_t pid = 0;
    int p, fd;
    FILE *f;

    snprintf(img, sizeof(img), "%s", test_path("disk.img"));
    snprintf(link, sizeof(link), "%s", test_path("link.img"));
    ASSERT_OK(sys(fd = open(img, O_CREAT | O_WRONLY | O_CLOEXEC, 0600)));
    close(fd);
    ASSERT_OK(sys(symlink(img, link)));
    one[0] = img;
    ASSERT_OK(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &a));
    ASSERT_STR_EQ(lockd_lease_path(a, 0), img);
    ASSERT_OK(lockd_key_resource(img, strlen(img), key));
    ASSERT_STR_EQ(lockd_lease_key(a, 0), key);
    ASSERT_INT_EQ(lockd_probe_direct(img, &pid), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(pid, 0); /* an OFD lock has no owning process */
    ASSERT_INT_EQ(lockd_probe_direct(link, NULL), LOCKD_EXCLUSIVE);
    one[0] = link;
    ASSERT_ERR(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &b), EAGAIN);
    ASSERT_ERR(lockd_acquire_direct(1, one, shared, LOCKD_TRY, &b), EAGAIN);
    ASSERT_ERR(lockd_acquire_direct(1, one, NULL, 50, &b), ETIMEDOUT);
    ASSERT_OK(lockd_lease_check(a, 0));
    ASSERT_OK(sys(stat(img, &st)));
    ASSERT_INT_EQ(st.st_size, 0); /* nothing written: no holder record */
    ASSERT_OK(lockd_lease_set_holder(a, "guest", NULL, 1, NULL));
    ASSERT_OK(sys(stat(img, &st)));
    ASSERT_INT_EQ(st.st_size, 0);
    ASSERT_OK(lockd_lease_release(a));
    ASSERT_INT_EQ(lockd_probe_direct(img, NULL), LOCKD_FREE);
    /* One disk under two names would exclude itself. */
    two[0] = img, two[1] = link;
    ASSERT_ERR(lockd_acquire_direct(2, two, NULL, LOCKD_TRY, &a), EINVAL);
    ASSERT_INT_EQ(lockd_probe_direct(img, NULL), LOCKD_FREE);
    /* Shared with shared. */
    one[0] = img;
    ASSERT_OK(lockd_acquire_direct(1, one, shared, LOCKD_TRY, &a));
    one[0] = link;
    ASSERT_OK(lockd_acquire_direct(1, one, shared, LOCKD_TRY, &b));
    ASSERT_INT_EQ(lockd_probe_direct(img, NULL), LOCKD_SHARED);
    ASSERT_ERR(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &a), EAGAIN);
    ASSERT_OK(lockd_lease_release(a));
    ASSERT_OK(lockd_lease_release(b));
    /* Refused without opening: not a file or block device. */
    one[0] = "/dev/null";
    ASSERT_ERR(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &a), ENXIO);
    ASSERT_ERR(lockd_probe_direct("/dev/null", NULL), ENXIO);
    one[0] = test_scratch;
    ASSERT_ERR(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &a), EISDIR);
    one[0] = "relative.img";
    ASSERT_ERR(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &a), EINVAL);
    one[0] = test_path("nosuch.img");
    ASSERT_ERR(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &a), ENOENT);
    /* virtlockd's direct lease: a classic POSIX lock on byte 0. */
    p = posix_lock_in_child(img, &fd);
    ASSERT_TRUE(p > 0);
    one[0] = img;
    ASSERT_ERR(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &a), EAGAIN);
    ASSERT_INT_EQ(lockd_probe_direct(img, &pid), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(pid, p);
    close(fd);
    ASSERT_INT_EQ(test_wait(p), 0);
    ASSERT_OK(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &a));
    p = posix_lock_in_child(img, &fd);
    ASSERT_TRUE(p < 0); /* lockd's lease refuses virtlockd */
    close(fd);
    ASSERT_INT_EQ(test_wait(-p), 0);
    ASSERT_OK(lockd_lease_release(a));
    /* A block device: a loop device over a file. */
    snprintf(cmd, sizeof(cmd), "truncate -s 1M %s && losetup -f --show %s",
             test_path("loop.img"), test_path("loop.img"));
    f = popen(cmd, "r");
    ASSERT_TRUE(f != NULL);
    if (!fgets(loop, sizeof(loop), f))
        loop[0] = '\0';
    pclose(f);
    loop[strcspn(loop, "\n")] = '\0';
    ASSERT_TRUE(strncmp(loop, "/dev/loop", 9) == 0);
    one[0] = loop;
    ASSERT_OK(lockd_acquire_direct(1, one, NULL, LOCKD_TRY, &a));
    ASSERT_INT_EQ(lockd_probe_direct(loop, NULL), LOCKD_EXCLUSIVE);
    ASSERT_ERR(lockd_acquire_direct(1, one, shared, LOCKD_TRY, &b), EAGAIN);
    ASSERT_OK(sys(fd = open(loop, O_RDONLY | O_CLOEXEC)));
    fl.l_type = F_RDLCK;
    ASSERT_INT_EQ(fcntl(fd, F_SETLK, &fl), -1); /* a POSIX peer on the node */
    close(fd);
    ASSERT_OK(lockd_lease_check(a, 0));
    ASSERT_OK(lockd_lease_release(a));
    ASSERT_INT_EQ(lockd_probe_direct(loop, NULL), LOCKD_FREE);
    snprintf(cmd, sizeof(cmd), "losetup -d %s", loop);
    ASSERT_INT_EQ(system(cmd), 0);
}

int
main(void)
{
    TEST_RUN(test_matrix_processes);
    TEST_RUN(test_matrix_threads);
    TEST_RUN(test_matrix_handles);
    TEST_RUN(test_wait_timeout);
    TEST_RUN(test_index_held_by_gc);
    TEST_RUN(test_index_never_hides_busy);
    TEST_RUN(test_wait_release_forever);
    TEST_RUN(test_wait_release_timed);
    TEST_RUN(test_wait_holder_killed_forever);
    TEST_RUN(test_wait_holder_killed_timed);
    TEST_RUN(test_all_or_nothing);
    TEST_RUN(test_multi_shared_with_holder);
    TEST_RUN(test_duplicate_keys);
    TEST_RUN(test_keys_sorted);
    TEST_RUN(test_release_frees);
    TEST_RUN(test_forget_last_copy_frees);
    TEST_RUN(test_lease_outlives_space);
    TEST_RUN(test_forget_child_copy_holds);
    TEST_RUN(test_posix_write_lock_excludes_lockd);
    TEST_RUN(test_lockd_excludes_posix_locks);
    TEST_RUN(test_ofd_survives_sender_death);
    TEST_RUN(test_ofd_release_frees_other_copy);
    TEST_RUN(test_ofd_forget_keeps_other_copy);
    TEST_RUN(test_lease_fd_and_file);
    TEST_RUN(test_holder_records);
    TEST_RUN(test_lease_check);
    TEST_RUN(test_direct);
    return test_done();
}
