/* SPDX-License-Identifier: MIT */
/*
 * bench-lease: what a lease costs, next to the system calls it cannot avoid.
 *
 *   floor A  open an existing lease file, OFD-lock byte 0, unlock, close: the
 *            least any lock manager in the virtlockd format must do.
 *   lockd    lockd_acquire() + lockd_lease_release() of that existing lease,
 *            starting from its key: goal at most 1.7 times floor A (lockd adds
 *            an fstat() that the file is regular, the fstatat() inode check
 *            and its bookkeeping).
 *   keys     lockd_space_key() in each mode; canonical pays for realpath(3).
 *   floor B  create a new file (O_CREAT, 0600), lock, unlock, close.
 *   lockd    acquire + release of new leases: goal at most 2 times floor B
 *            (lockd first tries without O_CREAT, then creates under the
 *            shared index lock).
 *   gc       lockd_gc() of 100,000 unheld lease files, against plain
 *            unlinkat() of as many files.
 *   direct   lockd_acquire_direct() + release of an image file itself,
 *            against floor D: open the image by path, OFD-lock byte 0,
 *            unlock, close (lockd adds an O_PATH look first). No goal.
 *
 * A floor and its lockd figure are timed in alternating chunks of CHUNK
 * operations within each round, so that a change in the machine's load hits
 * both alike; each figure is the median of its rounds.  Creating files can
 * be very slow on a loaded journalling filesystem (hundreds of microseconds
 * each), so the two figures that create many files shrink their counts to
 * fit a time budget, and say so; --full insists on the full counts.
 *
 * Everything runs in a scratch directory under $TMPDIR or /tmp, removed at
 * the end.  Exit status 0 unless something failed; a missed goal is printed.
 */
#include "bench.h"

#include "lockd.h"

#define LEASE_FLAGS (O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)

#define EXISTING_OPS 20000 /* operations per round on the existing lease */
#define KEY_OPS      100000
#define CANON_OPS    20000
#define NEW_LEASES   10000 /* new leases per round */
#define GC_FILES     100000
#define GC_ROUNDS    3 /* each round creates GC_FILES twice: keep it short */
#define CHUNK        1000 /* floor and lockd alternate every CHUNK operations */

/* Seconds the create-heavy figures may take; the rest takes a few more. */
#define NEW_BUDGET_S 15.0
#define GC_BUDGET_S  25.0

/* --full: the full counts whatever the time it takes. */
static int full;

struct ctx {
    lockd_space *space;
    int dfd;               /* the directory the floor works in */
    const char *name;      /* the one existing lease (key) */
    const char *path;      /* a disk path, for the key figures */
    char (*keys)[LOCKD_KEY_SIZE];
    const lockd_lease *lease; /* a held lease, for the check figure */
};

/* One operation of a figure; i counts operations within the round. */
typedef void (*op_fn)(struct ctx *c, size_t i);

static void
lock_unlock_close(int fd)
{
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1 };

    BENCH_SYS(fcntl(fd, F_OFD_SETLK, &fl));
    fl.l_type = F_UNLCK;
    BENCH_SYS(fcntl(fd, F_OFD_SETLK, &fl));
    BENCH_SYS(close(fd));
}

static void
floor_existing(struct ctx *c, size_t i)
{
    int fd = openat(c->dfd, c->name, LEASE_FLAGS);

    (void)i;
    BENCH_SYS(fd);
    lock_unlock_close(fd);
}

static void
lockd_existing(struct ctx *c, size_t i)
{
    const char *keys[] = { c->name };
    lockd_lease *lease;

    (void)i;
    BENCH_OK(lockd_acquire(c->space, 1, keys, NULL, LOCKD_TRY, &lease));
    BENCH_OK(lockd_lease_release(lease));
}

static void
lockd_existing_shared(struct ctx *c, size_t i)
{
    const char *keys[] = { c->name };
    const int modes[] = { LOCKD_SHARED };
    lockd_lease *lease;

    (void)i;
    BENCH_OK(lockd_acquire(c->space, 1, keys, modes, LOCKD_TRY, &lease));
    BENCH_OK(lockd_lease_release(lease));
}

static void
lockd_check(struct ctx *c, size_t i)
{
    (void)i;
    BENCH_OK(lockd_lease_check(c->lease, 0));
}

static void
key_of_path(struct ctx *c, size_t i)
{
    char key[LOCKD_KEY_SIZE];

    (void)i;
    BENCH_OK(lockd_space_key(c->space, c->path, key));
}

static void
floor_new(struct ctx *c, size_t i)
{
    int fd = openat(c->dfd, c->keys[i], LEASE_FLAGS | O_CREAT, 0600);

    BENCH_SYS(fd);
    lock_unlock_close(fd);
}

static void
lockd_new(struct ctx *c, size_t i)
{
    const char *keys[] = { c->keys[i] };
    lockd_lease *lease;

    BENCH_OK(lockd_acquire(c->space, 1, keys, NULL, LOCKD_TRY, &lease));
    BENCH_OK(lockd_lease_release(lease));
}

/* Time n operations of fn; returns ns per operation. */
static double
time_round(op_fn fn, struct ctx *c, size_t n)
{
    int64_t t0 = bench_now_ns();
    size_t i;

    for (i = 0; i < n; i++)
        fn(c, i);
    return (double)(bench_now_ns() - t0) / (double)n;
}

/* Time n operations of fa (on ca) and of fb (on cb), alternating every CHUNK;
 * ns per operation of each to *ret_a and *ret_b. */
static void
time_pair(op_fn fa, struct ctx *ca, op_fn fb, struct ctx *cb, size_t n, double *ret_a,
          double *ret_b)
{
    int64_t ta = 0, tb = 0, t0;
    size_t i, j, end;

    for (i = 0; i < n; i = end) {
        end = i + CHUNK < n ? i + CHUNK : n;
        t0 = bench_now_ns();
        for (j = i; j < end; j++)
            fa(ca, j);
        ta += bench_now_ns() - t0;
        t0 = bench_now_ns();
        for (j = i; j < end; j++)
            fb(cb, j);
        tb += bench_now_ns() - t0;
    }
    *ret_a = (double)ta / (double)n;
    *ret_b = (double)tb / (double)n;
}

/* Remove the n files named by keys from dfd (between rounds, untimed). */
static void
unlink_keys(int dfd, char (*keys)[LOCKD_KEY_SIZE], size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        BENCH_SYS(unlinkat(dfd, keys[i], 0));
}

/* n keys of distinct resources "<prefix>-<i>". */
static char (*make_keys(const char *prefix, size_t n))[LOCKD_KEY_SIZE]
{
    char (*keys)[LOCKD_KEY_SIZE] = calloc(n, sizeof(*keys));
    char name[128];
    size_t i;

    if (!keys)
        BENCH_DIE("out of memory");
    for (i = 0; i < n; i++) {
        int len = snprintf(name, sizeof(name), "%s-%zu", prefix, i);

        BENCH_OK(lockd_key_resource(name, (size_t)len, keys[i]));
    }
    return keys;
}

static int
open_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    BENCH_SYS(fd);
    return fd;
}

/* Floor A and lockd on an existing lease, rounds interleaved so that noise
 * falls on both alike.  Returns 1 if the goal was met. */
static int
bench_existing(lockd_space *space)
{
    char key[LOCKD_KEY_SIZE];
    const char *keys[] = { key };
    double fl[BENCH_ROUNDS], lk[BENCH_ROUNDS];
    struct ctx c = { .space = space, .dfd = lockd_space_fd(space), .name = key };
    lockd_lease *lease;
    int r;

    BENCH_OK(lockd_key_resource("bench-existing", 14, key));
    BENCH_OK(lockd_acquire(space, 1, keys, NULL, LOCKD_TRY, &lease));
    BENCH_OK(lockd_lease_release(lease));
    time_round(floor_existing, &c, EXISTING_OPS / 10); /* warm up */
    time_round(lockd_existing, &c, EXISTING_OPS / 10);
    for (r = 0; r < BENCH_ROUNDS; r++)
        time_pair(floor_existing, &c, lockd_existing, &c, EXISTING_OPS, &fl[r], &lk[r]);
    bench_print_ns("floor A: open existing + OFD lock + unlock + close",
                   bench_median(fl, BENCH_ROUNDS));
    return bench_print_ratio("lockd: acquire + release existing (TRY, 1 key)",
                             bench_median(lk, BENCH_ROUNDS), bench_median(fl, BENCH_ROUNDS),
                             "floor A", 1.7);
}

/*
 * What the holder record costs an exclusive acquire: the same lease taken
 * shared (which writes no record) against exclusive, in one run, and each
 * against floor A.  No goal.
 */
static void
bench_record(lockd_space *space, size_t ops, int rounds)
{
    char key[LOCKD_KEY_SIZE];
    double fl[BENCH_ROUNDS], ex[BENCH_ROUNDS], sh[BENCH_ROUNDS], f, e, h;
    struct ctx c = { .space = space, .dfd = lockd_space_fd(space), .name = key };
    int r;

    BENCH_OK(lockd_key_resource("bench-record", 12, key));
    lockd_existing(&c, 0);
    for (r = 0; r < rounds; r++) {
        time_pair(floor_existing, &c, lockd_existing, &c, ops, &fl[r], &ex[r]);
        sh[r] = time_round(lockd_existing_shared, &c, ops);
    }
    f = bench_median(fl, (size_t)rounds);
    e = bench_median(ex, (size_t)rounds);
    h = bench_median(sh, (size_t)rounds);
    printf("%-*s %10.0f ns/op  %5.2fx floor A (no goal)\n", BENCH_LABEL_WIDTH,
           "lockd: exclusive, holder record written", e, e / f);
    printf("%-*s %10.0f ns/op  %5.2fx floor A (no goal)\n", BENCH_LABEL_WIDTH,
           "lockd: shared (writes no record)", h, h / f);
    printf("%-*s %10.0f ns/op  %5.2fx floor A (no goal)\n", BENCH_LABEL_WIDTH,
           "  the record: exclusive - shared", e - h, (e - h) / f);
}

static void
floor_direct(struct ctx *c, size_t i)
{
    int fd = open(c->path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

    (void)i;
    BENCH_SYS(fd);
    lock_unlock_close(fd);
}

static void
lockd_direct(struct ctx *c, size_t i)
{
    const char *paths[] = {c->path};
    lockd_lease *lease;

    (void)i;
    BENCH_OK(lockd_acquire_direct(1, paths, NULL, LOCKD_TRY, &lease));
    BENCH_OK(lockd_lease_release(lease));
}

/* A direct lease (the lock on the image itself) against floor D. */
static void
bench_direct(void)
{
    double fl[BENCH_ROUNDS], dl[BENCH_ROUNDS], f, d;
    struct ctx c = {.path = bench_path("direct.img")};
    int r, fd = open(c.path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);

    BENCH_SYS(fd);
    BENCH_SYS(close(fd));
    time_round(floor_direct, &c, EXISTING_OPS / 10); /* warm up */
    for (r = 0; r < BENCH_ROUNDS; r++)
        time_pair(floor_direct, &c, lockd_direct, &c, EXISTING_OPS, &fl[r], &dl[r]);
    f = bench_median(fl, BENCH_ROUNDS);
    d = bench_median(dl, BENCH_ROUNDS);
    bench_print_ns("floor D: open image + OFD lock + unlock + close", f);
    printf("%-*s %10.0f ns/op  %5.2fx floor D (no goal)\n", BENCH_LABEL_WIDTH,
           "lockd: direct lease on the image", d, d / f);
}

/*
 * --space DIR: the figures that matter on another filesystem (a GlusterFS
 * mount, from check-cluster --bench): floor A, exclusive with its record,
 * shared, and lockd_lease_check() of a held lease.  Few operations: one
 * lock there is a network round trip.
 */
static int
bench_space(const char *dir)
{
    lockd_space *space;
    lockd_lease *lease;
    char key[LOCKD_KEY_SIZE];
    const char *keys[] = { key };
    struct ctx c = { 0 };
    double ck[5];
    int r;

    BENCH_OK(lockd_space_open(dir, LOCKD_OPEN_CREATE, &space));
    printf("# lockspace %s (%s)\n", dir, bench_fs_name(dir));
    bench_record(space, 200, 5);
    BENCH_OK(lockd_key_resource("bench-check", 11, key));
    BENCH_OK(lockd_acquire(space, 1, keys, NULL, LOCKD_TRY, &lease));
    c.lease = lease;
    for (r = 0; r < 5; r++)
        ck[r] = time_round(lockd_check, &c, 200);
    bench_print_ns("lockd_lease_check of a held lease", bench_median(ck, 5));
    BENCH_OK(lockd_lease_release(lease));
    lockd_space_close(space);
    return 0;
}

/* Key derivation in each mode; no floor, no goal. */
static void
bench_keys(lockd_space *verbatim)
{
    double v[BENCH_ROUNDS], k[BENCH_ROUNDS];
    struct ctx c = { .space = verbatim };
    char image[sizeof(bench_scratch) + 64];
    lockd_space *canonical;
    int fd, r;

    BENCH_OK(lockd_space_open(bench_path("canonical"),
                              LOCKD_OPEN_CREATE | LOCKD_OPEN_CANONICAL, &canonical));
    /* canonical resolves every component of an image that exists */
    BENCH_SYS(mkdir(bench_path("images"), 0700));
    snprintf(image, sizeof(image), "%s", bench_path("images/guest-0001.qcow2"));
    BENCH_SYS(fd = open(image, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
    close(fd);
    for (r = 0; r < BENCH_ROUNDS; r++) {
        c.space = verbatim;
        c.path = "/var/lib/libvirt/images/guest-0001.qcow2";
        v[r] = time_round(key_of_path, &c, KEY_OPS);
        c.space = canonical;
        c.path = image;
        k[r] = time_round(key_of_path, &c, CANON_OPS);
    }
    lockd_space_close(canonical);
    bench_print_ns("key: lockd_space_key verbatim", bench_median(v, BENCH_ROUNDS));
    bench_print_ns("key: lockd_space_key canonical (realpath)", bench_median(k, BENCH_ROUNDS));
}

/* How many of want operations costing op_ns each, done times over, fit in
 * budget_s seconds (at least 1000); want itself with --full. */
static size_t
fit_budget(size_t want, double op_ns, int times, double budget_s)
{
    double fit = budget_s * 1e9 / (op_ns * times);

    if (full || fit >= (double)want)
        return want;
    return fit < 1000 ? 1000 : (size_t)fit / 1000 * 1000;
}

/* Print why a count is smaller than asked, if it is. */
static void
note_scaled(const char *what, size_t n, size_t want, double create_ns)
{
    if (n < want)
        printf("# %s: %zu instead of %zu, to fit the time budget: creating a file here "
               "takes %.0f us (--full for all)\n", what, n, want, create_ns / 1000);
}

/* Floor B and lockd on new files: each round creates n of each, alternating
 * in chunks, then empties both directories (untimed).  Returns 1 if the goal
 * was met; *ret_create_ns gets the floor's cost, for sizing gc. */
static int
bench_new(lockd_space *space, double *ret_create_ns)
{
    double fl[BENCH_ROUNDS], lk[BENCH_ROUNDS], est;
    struct ctx lc = { .space = space, .dfd = lockd_space_fd(space) };
    struct ctx fc;
    char label[128];
    size_t n;
    int r;

    BENCH_SYS(mkdir(bench_path("plain-new"), 0700));
    lc.keys = make_keys("bench-new", NEW_LEASES);
    fc = lc;
    fc.dfd = open_dir(bench_path("plain-new"));
    /* Calibrate: lockd costs about twice the floor, and the files are
     * removed again, so a round costs about 4 floors per lease. */
    est = time_round(floor_new, &fc, 200);
    unlink_keys(fc.dfd, fc.keys, 200);
    n = fit_budget(NEW_LEASES, est, 4 * BENCH_ROUNDS, NEW_BUDGET_S);
    note_scaled("new leases per round", n, NEW_LEASES, est);
    for (r = 0; r < BENCH_ROUNDS; r++) {
        time_pair(floor_new, &fc, lockd_new, &lc, n, &fl[r], &lk[r]);
        unlink_keys(fc.dfd, fc.keys, n);
        unlink_keys(lc.dfd, lc.keys, n);
    }
    close(fc.dfd);
    free(lc.keys);
    *ret_create_ns = bench_median(fl, BENCH_ROUNDS);
    snprintf(label, sizeof(label), "floor B: create new + lock + unlock + close (%zu)", n);
    bench_print_ns(label, bench_median(fl, BENCH_ROUNDS));
    snprintf(label, sizeof(label), "lockd: acquire + release new lease (%zu)", n);
    return bench_print_ratio(label, bench_median(lk, BENCH_ROUNDS),
                             bench_median(fl, BENCH_ROUNDS), "floor B", 2.0);
}

/* n empty files named by keys in dfd, made directly (untimed). */
static void
create_files(int dfd, char (*keys)[LOCKD_KEY_SIZE], size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        int fd = openat(dfd, keys[i], O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);

        BENCH_SYS(fd);
        close(fd);
    }
}

/* One gc round in a fresh lockspace; returns ns per file. */
static double
gc_round(int r, char (*keys)[LOCKD_KEY_SIZE], size_t n)
{
    const char *dir = bench_path("gc-%d", r);
    uint64_t removed = 0, kept = 0;
    lockd_space *space;
    int64_t t0;

    BENCH_OK(lockd_space_open(dir, LOCKD_OPEN_CREATE, &space));
    create_files(lockd_space_fd(space), keys, n);
    t0 = bench_now_ns();
    BENCH_OK(lockd_gc(space, NULL, NULL, &removed, &kept));
    t0 = bench_now_ns() - t0;
    if (removed != n || kept != 0)
        BENCH_DIE("gc removed %llu, kept %llu of %zu unheld files",
                  (unsigned long long)removed, (unsigned long long)kept, n);
    lockd_space_close(space);
    bench_rmrf(dir);
    return (double)t0 / (double)n;
}

/* The floor of one gc round: unlinkat() of as many files; ns per file. */
static double
unlink_round(int r, char (*keys)[LOCKD_KEY_SIZE], size_t n)
{
    const char *dir = bench_path("unlink-%d", r);
    int64_t t0;
    int dfd;

    BENCH_SYS(mkdir(dir, 0700));
    dfd = open_dir(dir);
    create_files(dfd, keys, n);
    t0 = bench_now_ns();
    unlink_keys(dfd, keys, n);
    t0 = bench_now_ns() - t0;
    close(dfd);
    bench_rmrf(dir);
    return (double)t0 / (double)n;
}

/* gc against plain unlinkat, in fresh directories each round; create_ns is
 * what creating a file costs here (floor B), to fit the budget. */
static void
bench_gc(double create_ns)
{
    char (*keys)[LOCKD_KEY_SIZE] = make_keys("bench-gc", GC_FILES);
    double g[GC_ROUNDS], u[GC_ROUNDS], gns, uns;
    char label[128];
    size_t n;
    int r;

    /* Each round creates n files twice and removes them twice. */
    n = fit_budget(GC_FILES, create_ns, 4 * GC_ROUNDS, GC_BUDGET_S);
    note_scaled("gc files per round", n, GC_FILES, create_ns);
    for (r = 0; r < GC_ROUNDS; r++) {
        u[r] = unlink_round(r, keys, n);
        g[r] = gc_round(r, keys, n);
    }
    free(keys);
    uns = bench_median(u, GC_ROUNDS);
    gns = bench_median(g, GC_ROUNDS);
    snprintf(label, sizeof(label), "floor C: unlinkat (%zu files)", n);
    bench_print_rate(label, 1e9 / uns, "files");
    snprintf(label, sizeof(label), "lockd: gc of %zu unheld lease files", n);
    printf("%-*s %10.0f files/s  %5.2fx floor C time per file (no goal)\n",
           BENCH_LABEL_WIDTH, label, 1e9 / gns, gns / uns);
}

int
main(int argc, char **argv)
{
    lockd_space *space;
    double create_ns;
    int missed = 0;

    if (argc == 3 && strcmp(argv[1], "--space") == 0) {
        setvbuf(stdout, NULL, _IOLBF, 0);
        return bench_space(argv[2]);
    }
    if (argc > 2 || (argc == 2 && strcmp(argv[1], "--full") != 0)) {
        fprintf(stderr, "usage: %s [--full | --space DIR]\n", argv[0]);
        return 1;
    }
    full = argc == 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    bench_scratch_make();
    bench_header("bench-lease: lockd leases against the bare system calls", argc, argv);
    BENCH_OK(lockd_space_open(bench_path("space"), LOCKD_OPEN_CREATE, &space));
    missed += !bench_existing(space);
    bench_record(space, EXISTING_OPS, BENCH_ROUNDS);
    bench_direct();
    bench_keys(space);
    missed += !bench_new(space, &create_ns);
    bench_gc(create_ns);
    lockd_space_close(space);
    printf("# %d goal%s missed\n", missed, missed == 1 ? "" : "s");
    bench_cleanup();
    return 0;
}
