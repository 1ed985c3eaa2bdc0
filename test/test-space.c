/* SPDX-License-Identifier: MIT */
/*
 * test-space.c: lockspaces.  The settings file that pins a lockspace's key
 * mode (written once, first writer wins, even when several hosts race), the
 * default directory, read-only lockspaces, and a table of bad input in which
 * every refusal must leave everything as it was: the leases held, the files in
 * the lockspace and the caller's file descriptors.
 */
#include "test.h"
#include "util.h"

#include <dirent.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "lockd.h"

#define SETTINGS_FILE ".lockd-lockspace"
#define INDEX_FILE    ".lockd-index"
#define NOBODY        65534

/* ------------------------------------------------------------------------
 * Helpers
 */

/* snprintf for paths: a path that does not fit fails the test. */
__attribute__((format(printf, 3, 4))) static void
path_printf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= size)
        TEST_FAIL("path too long: %s", fmt);
}

static void
write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        TEST_FAIL("write %s: %s", path, strerror(errno));
    close(fd);
}

/* The whole of a small file, NUL terminated, into buf. */
static void
read_text(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0)
        TEST_FAIL("open %s: %s", path, strerror(errno));
    n = read(fd, buf, size - 1);
    if (n < 0)
        TEST_FAIL("read %s: %s", path, strerror(errno));
    buf[n] = '\0';
    close(fd);
}

static int
is_regular(const char *path)
{
    struct stat st;

    return lstat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Names in dir other than "." and "..", counted; each must be one of the
 * allowed names (NULL-terminated list), else the test fails. */
static int
dir_names_only(const char *dir, const char *const *allowed)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;

    if (!d)
        TEST_FAIL("opendir %s: %s", dir, strerror(errno));
    while ((de = readdir(d))) {
        const char *const *a;

        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        for (a = allowed; *a && strcmp(*a, de->d_name) != 0; a++)
            ;
        if (!*a)
            TEST_FAIL("unexpected file %s/%s", dir, de->d_name);
        n++;
    }
    closedir(d);
    return n;
}

static const char *const no_names[] = { NULL };
static const char *const settings_names[] = { SETTINGS_FILE, INDEX_FILE, NULL };

/*
 * A snapshot of a tree: one line per file with its type, mode, size, mtime
 * and symlink target, sorted.  Two snapshots are equal if nothing was
 * created, removed, written or replaced in between.
 */
static struct {
    char **line;
    size_t n, cap, root_len;
} snap;

static int
snap_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    char target[PATH_MAX] = "", line[2 * PATH_MAX + 128];
    ssize_t n;

    (void)flag, (void)ftw;
    if (S_ISLNK(st->st_mode) && (n = readlink(path, target, sizeof(target) - 1)) >= 0)
        target[n] = '\0';
    snprintf(line, sizeof(line), "%s %o %lld %lld.%09ld %s", path + snap.root_len,
             (unsigned)st->st_mode, (long long)st->st_size, (long long)st->st_mtim.tv_sec,
             st->st_mtim.tv_nsec, target);
    if (snap.n == snap.cap) {
        snap.cap = snap.cap ? 2 * snap.cap : 64;
        snap.line = realloc(snap.line, snap.cap * sizeof(*snap.line));
        if (!snap.line)
            TEST_FAIL("out of memory");
    }
    if (!(snap.line[snap.n++] = strdup(line)))
        TEST_FAIL("out of memory");
    return 0;
}

static int
snap_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The snapshot of root as one string; the caller frees it. */
static char *
snapshot(const char *root)
{
    size_t len = 1;
    char *s;

    snap.n = 0;
    snap.root_len = strlen(root);
    if (nftw(root, snap_one, 16, FTW_PHYS) < 0)
        TEST_FAIL("nftw %s: %s", root, strerror(errno));
    qsort(snap.line, snap.n, sizeof(*snap.line), snap_cmp);
    for (size_t i = 0; i < snap.n; i++)
        len += strlen(snap.line[i]) + 1;
    if (!(s = malloc(len)))
        TEST_FAIL("out of memory");
    *s = '\0';
    for (size_t i = 0; i < snap.n; i++) {
        strcat(strcat(s, snap.line[i]), "\n");
        free(snap.line[i]);
    }
    free(snap.line);
    memset(&snap, 0, sizeof(snap));
    return s;
}

static void
assert_same_tree(const char *what, const char *before, const char *root)
{
    char *now = snapshot(root);

    if (strcmp(before, now) != 0)
        TEST_FAIL("%s changed the tree under %s:\n--- before\n%s--- after\n%s", what, root,
                  before, now);
    free(now);
}

/* An address no lockd call returns: ret_* parameters are preset to it to
 * check that a failed call leaves them alone. */
static char untouched;
#define UNTOUCHED(type) ((type *)(void *)&untouched)

/* lockd_space_open that must fail: checks ret_space was not written. */
static int
open_fails(const char *dir, uint32_t flags)
{
    lockd_space *s = UNTOUCHED(lockd_space);
    int r = lockd_space_open(dir, flags, &s);

    if (r == 0) {
        lockd_space_close(s);
        return 0;
    }
    if (s != UNTOUCHED(lockd_space))
        TEST_FAIL("lockd_space_open(%s) = %d wrote ret_space", dir ? dir : "NULL", r);
    return r;
}

static int
probe_with_fresh_handle(const char *dir, const char *key)
{
    lockd_space *s = NULL;
    int r;

    ASSERT_OK(lockd_space_open(dir, LOCKD_OPEN_READONLY, &s));
    r = lockd_probe(s, key, NULL);
    lockd_space_close(s);
    return r;
}

/* Acquire one key; on success release at once (the caller expected failure
 * and reports the 0). */
static int
acquire_one(lockd_space *s, const char *key, int mode, int timeout_ms)
{
    const char *keys[] = { key };
    lockd_lease *l = UNTOUCHED(lockd_lease);
    int r = lockd_acquire(s, 1, keys, &mode, timeout_ms, &l);

    if (r == 0)
        lockd_lease_release(l);
    else if (l != UNTOUCHED(lockd_lease))
        TEST_FAIL("lockd_acquire = %d wrote ret_lease", r);
    return r;
}

static int
acquire_two_mode(lockd_space *s, const char *k1, const char *k2, int timeout_ms, int mode)
{
    const char *keys[] = { k1, k2 };
    const int modes[] = { mode, mode };
    lockd_lease *l = NULL;
    int r = lockd_acquire(s, 2, keys, modes, timeout_ms, &l);

    if (r == 0)
        lockd_lease_release(l);
    return r;
}

static int
acquire_two(lockd_space *s, const char *k1, const char *k2, int timeout_ms)
{
    return acquire_two_mode(s, k1, k2, timeout_ms, LOCKD_EXCLUSIVE);
}

/* Create lease files for the keys, then let them go: they exist, unheld. */
static void
precreate(lockd_space *s, const char *k1, const char *k2)
{
    ASSERT_OK(acquire_two(s, k1, k2, LOCKD_TRY));
}

/* Child side of the one-byte pipes the tests synchronise on. */
static void
pipe_signal(int fd)
{
    if (write(fd, "x", 1) != 1)
        _exit(3);
}

static void
pipe_wait_eof(int fd)
{
    char c;

    while (read(fd, &c, 1) > 0 || errno == EINTR)
        ;
}

static void
xpipe(int p[2])
{
    if (pipe2(p, O_CLOEXEC) < 0)
        TEST_FAIL("pipe: %s", strerror(errno));
}

static void
read_n(int fd, int n)
{
    char c;

    for (int i = 0; i < n; i++)
        if (read(fd, &c, 1) != 1)
            TEST_FAIL("a child died before it was ready");
}

/*
 * In the calling (forked) process only: a private mount namespace in which
 * src is also visible, read-only, at mnt.  root ignores file modes, so only a
 * read-only mount makes a lockspace truly unwritable.
 */
/* The kernel ignores the source and type of these mount calls; they are
 * given anyway, because valgrind checks every pointer argument. */
static void
bind_readonly(const char *src, const char *mnt)
{
    if (mount(src, mnt, "none", MS_BIND, NULL) < 0)
        TEST_FAIL("bind mount %s: %s", src, strerror(errno));
    if (mount("none", mnt, "none", MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)
        TEST_FAIL("remount %s read-only: %s", mnt, strerror(errno));
}

static void
private_mounts(void)
{
    if (unshare(CLONE_NEWNS) < 0)
        TEST_FAIL("unshare(CLONE_NEWNS): %s", strerror(errno));
    if (mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) < 0)
        TEST_FAIL("make / private: %s", strerror(errno));
}

/* ------------------------------------------------------------------------
 * Settings
 */

/* A fresh lockspace records the creator's mode; later openers follow it. */
static void
check_settings_pinned(uint32_t create_mode, int mode, uint32_t other_mode)
{
    const char *dir = test_path("space");
    lockd_space *s = NULL;
    char *before;

    ASSERT_TRUE(!exists(dir));
    ASSERT_OK(lockd_space_open(dir, LOCKD_OPEN_CREATE | create_mode, &s));
    ASSERT_INT_EQ(lockd_space_mode(s), mode);
    ASSERT_INT_EQ(lockd_space_recorded(s), 1);
    ASSERT_STR_EQ(lockd_space_dir(s), dir);
    ASSERT_TRUE(lockd_space_fd(s) >= 0);
    lockd_space_close(s);
    ASSERT_TRUE(is_regular(test_path("space/" SETTINGS_FILE)));
    /* Written aside and linked into place: no temporary file is left. */
    ASSERT_TRUE(dir_names_only(dir, settings_names) >= 1);
    before = snapshot(test_scratch);

    /* No mode asked: the recorded one, whatever the default is. */
    for (uint32_t f = 0; f <= LOCKD_OPEN_READONLY; f += LOCKD_OPEN_READONLY) {
        ASSERT_OK(lockd_space_open(dir, f, &s));
        ASSERT_INT_EQ(lockd_space_mode(s), mode);
        ASSERT_INT_EQ(lockd_space_recorded(s), 1);
        lockd_space_close(s);
    }
    ASSERT_OK(lockd_space_open(dir, create_mode ? create_mode : LOCKD_OPEN_VERBATIM, &s));
    ASSERT_INT_EQ(lockd_space_mode(s), mode);
    lockd_space_close(s);

    /* The other mode, asked explicitly, is refused however it is asked. */
    ASSERT_ERR(open_fails(dir, other_mode), EMEDIUMTYPE);
    ASSERT_ERR(open_fails(dir, other_mode | LOCKD_OPEN_CREATE), EMEDIUMTYPE);
    ASSERT_ERR(open_fails(dir, other_mode | LOCKD_OPEN_READONLY), EMEDIUMTYPE);
    assert_same_tree("opening a settled lockspace", before, test_scratch);
    free(before);
}

static void
test_settings_verbatim_default(void)
{
    check_settings_pinned(0, LOCKD_MODE_VERBATIM, LOCKD_OPEN_CANONICAL);
}

static void
test_settings_verbatim_explicit(void)
{
    check_settings_pinned(LOCKD_OPEN_VERBATIM, LOCKD_MODE_VERBATIM, LOCKD_OPEN_CANONICAL);
}

static void
test_settings_canonical(void)
{
    check_settings_pinned(LOCKD_OPEN_CANONICAL, LOCKD_MODE_CANONICAL, LOCKD_OPEN_VERBATIM);
}

/* An existing directory without settings gets them from its first writer,
 * CREATE or not. */
static void
test_settings_existing_dir(void)
{
    const char *dir = test_path("space");
    lockd_space *s = NULL;

    xmkdir(dir);
    ASSERT_OK(lockd_space_open(dir, LOCKD_OPEN_CANONICAL, &s));
    ASSERT_INT_EQ(lockd_space_recorded(s), 1);
    lockd_space_close(s);
    ASSERT_TRUE(is_regular(test_path("space/" SETTINGS_FILE)));
    ASSERT_OK(lockd_space_open(dir, 0, &s));
    ASSERT_INT_EQ(lockd_space_mode(s), LOCKD_MODE_CANONICAL);
    lockd_space_close(s);
}

/* A read-only opener writes nothing and says the mode is only assumed. */
static void
test_settings_readonly_writes_nothing(void)
{
    const char *dir = test_path("space");
    lockd_space *s = NULL;
    char key[LOCKD_KEY_SIZE];
    char *before;

    xmkdir(dir);
    before = snapshot(test_scratch);
    ASSERT_OK(lockd_space_open(dir, LOCKD_OPEN_READONLY, &s));
    ASSERT_INT_EQ(lockd_space_mode(s), LOCKD_MODE_VERBATIM);
    ASSERT_INT_EQ(lockd_space_recorded(s), 0);
    key_of("some disk", key);
    ASSERT_INT_EQ(lockd_probe(s, key, NULL), LOCKD_FREE);
    ASSERT_OK(lockd_space_key(s, "/dev/sda", key));
    lockd_space_close(s);

    ASSERT_OK(lockd_space_open(dir, LOCKD_OPEN_READONLY | LOCKD_OPEN_CANONICAL, &s));
    ASSERT_INT_EQ(lockd_space_mode(s), LOCKD_MODE_CANONICAL);
    ASSERT_INT_EQ(lockd_space_recorded(s), 0);
    lockd_space_close(s);

    ASSERT_OK(lockd_space_open(dir, LOCKD_OPEN_READONLY | LOCKD_OPEN_VERBATIM, &s));
    ASSERT_INT_EQ(lockd_space_mode(s), LOCKD_MODE_VERBATIM);
    ASSERT_INT_EQ(lockd_space_recorded(s), 0);
    /* Taking or collecting leases would write: a read-only handle refuses. */
    {
        const char *keys[] = {key};
        lockd_lease *l = NULL;

        ASSERT_ERR(lockd_acquire(s, 1, keys, NULL, LOCKD_TRY, &l), EBADF);
        ASSERT_TRUE(l == NULL);
        ASSERT_ERR(lockd_gc(s, NULL, NULL, NULL, NULL), EBADF);
    }
    lockd_space_close(s);

    ASSERT_INT_EQ(dir_names_only(dir, no_names), 0);
    ASSERT_ERR(open_fails(test_path("missing"), LOCKD_OPEN_READONLY), ENOENT);
    assert_same_tree("read-only opens", before, test_scratch);
    free(before);
}

/* Settings files that are not, byte for byte, what lockd writes: each is
 * refused by every kind of opener, and nothing in the lockspace changes. */
static const char *const bad_settings[] = {
    "lockd-lockspace1key-modecanonical",
    "lockd-lockspace 1key-mode canonical\n",
    "lockd-lockspace 1\nkey-mode canonical",
    "lockd-lockspace 1\nkey-mode canonical\ngarbage",
    "lockd-lockspace 1\nkey-mode canonical\n\n",
    "lockd-lockspace 1\nkey-mode canonical\nkey-mode verbatim\n",
    "lockd-lockspace 1\nkey-mode canonical\nkey-mode canonical\n",
    "lockd-lockspace 1\nkey-mode canonical\ncolour blue\n",
    "lockd-lockspace 1\ncolour blue\nkey-mode canonical\n",
    "key-mode canonical\nlockd-lockspace 1\n",
    "lockd-lockspace 1\n",
    "lockd-lockspace  1\nkey-mode canonical\n",
    "lockd-lockspace 01\nkey-mode canonical\n",
    "lockd-lockspace +1\nkey-mode canonical\n",
    " lockd-lockspace 1\nkey-mode canonical\n",
    "lockd-lockspace 1\r\nkey-mode canonical\r\n",
    "lockd-lockspace 1\nkey-mode\tcanonical\n",
    "lockd-lockspace 1\nkey-mode canonical \n",
    "lockd-lockspace 1\nkey-mode canonicalx\n",
    "lockd-lockspace 2\nkey-mode canonical\n",
};

static void
settings_refused(size_t i)
{
    static const uint32_t how[] = {0, LOCKD_OPEN_READONLY, LOCKD_OPEN_CANONICAL,
                                   LOCKD_OPEN_VERBATIM | LOCKD_OPEN_CREATE};
    char dir[PATH_MAX], path[PATH_MAX];
    lockd_space *s = NULL;
    char *before;
    size_t j;

    path_printf(dir, sizeof(dir), "%s/bad-%zu", test_scratch, i);
    path_printf(path, sizeof(path), "%s/" SETTINGS_FILE, dir);
    xmkdir(dir);
    write_text(path, bad_settings[i]);
    before = snapshot(dir);
    for (j = 0; j < sizeof(how) / sizeof(how[0]); j++) {
        int r = lockd_space_open(dir, how[j], &s);

        if (r != -EPROTO)
            TEST_FAIL("bad_settings[%zu]: lockd_space_open(%#x) = %d, expected -EPROTO",
                      i, how[j], r);
    }
    assert_same_tree("a refused settings file", before, dir);
    free(before);
}

static void
test_settings_strict(void)
{
    lockd_space *s = NULL;
    char good[64];
    size_t i;

    for (i = 0; i < sizeof(bad_settings) / sizeof(bad_settings[0]); i++)
        settings_refused(i);
    /* The same bytes with their newlines in place are accepted: the
     * refusals above are about the shape, not the words. */
    xmkdir(test_path("good"));
    ASSERT_OK(lockd_space_open(test_path("good"), LOCKD_OPEN_CANONICAL, &s));
    lockd_space_close(s);
    read_text(test_path("good/" SETTINGS_FILE), good, sizeof(good));
    ASSERT_STR_EQ(good, "lockd-lockspace 1\nkey-mode canonical\n");
    ASSERT_OK(lockd_space_open(test_path("good"), LOCKD_OPEN_READONLY, &s));
    ASSERT_INT_EQ(lockd_space_mode(s), LOCKD_MODE_CANONICAL);
    lockd_space_close(s);
}

/* A character device or a FIFO planted at a lease's name, as the index or as
 * the settings file is refused with -ENXIO and never opened: inotify, which
 * reports every open of a node (and no O_PATH look), sees none.  (A device
 * may act on open; a lock on one would exclude nobody.) */
static void
planted_lease_refused(lockd_space *s, const char *key)
{
    lockd_holder_info info;
    lockd_lease *l = NULL;

    ASSERT_ERR(acquire1(s, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &l), ENXIO);
    ASSERT_ERR(acquire1(s, key, LOCKD_SHARED, 50, &l), ENXIO);
    ASSERT_ERR(acquire1(s, key, LOCKD_EXCLUSIVE, LOCKD_FOREVER, &l), ENXIO);
    ASSERT_ERR(lockd_probe(s, key, NULL), ENXIO);
    ASSERT_ERR(lockd_holder(s, key, &info), ENXIO);
    ASSERT_TRUE(l == NULL);
}

static void
planted_index_refused(lockd_space *s, int ifd, mode_t type)
{
    char fresh[LOCKD_KEY_SIZE], old[LOCKD_KEY_SIZE];
    lockd_lease *l = NULL;

    key_of("fresh", fresh);
    key_of("existing", old);
    plant_watched(ifd, space_dir(), INDEX_FILE, type);
    /* A new lease needs the index: refused, and no lease file made. */
    ASSERT_ERR(acquire1(s, fresh, LOCKD_EXCLUSIVE, LOCKD_TRY, &l), ENXIO);
    ASSERT_ERR(acquire1(s, fresh, LOCKD_EXCLUSIVE, 50, &l), ENXIO);
    ASSERT_TRUE(faccessat(lockd_space_fd(s), fresh, F_OK, AT_SYMLINK_NOFOLLOW) < 0);
    ASSERT_ERR(lockd_gc(s, NULL, NULL, NULL, NULL), ENXIO);
    ASSERT_ERR(lockd_gc_ex(s, 0, NULL, NULL, NULL, NULL, NULL, NULL), ENXIO);
    /* An existing lease takes no index lock: still granted.  Then the
     * planted index goes, for the next case. */
    ASSERT_OK(acquire1(s, old, LOCKD_EXCLUSIVE, LOCKD_TRY, &l));
    ASSERT_OK(lockd_lease_release(l));
    ASSERT_OK(sys(unlinkat(lockd_space_fd(s), INDEX_FILE, 0)));
}

static void
test_planted_nodes_never_opened(void)
{
    int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    char dev[LOCKD_KEY_SIZE], fifo[LOCKD_KEY_SIZE], old[LOCKD_KEY_SIZE];
    lockd_space *s = space_open(), *t = NULL;
    lockd_lease *l = NULL;

    ASSERT_OK(sys(ifd));
    key_of("planted device", dev);
    key_of("planted fifo", fifo);
    key_of("existing", old);
    ASSERT_OK(acquire1(s, old, LOCKD_EXCLUSIVE, LOCKD_TRY, &l)); /* makes the index */
    ASSERT_OK(lockd_lease_release(l));
    ASSERT_OK(sys(unlinkat(lockd_space_fd(s), INDEX_FILE, 0)));
    plant_watched(ifd, space_dir(), dev, S_IFCHR);
    plant_watched(ifd, space_dir(), fifo, S_IFIFO);
    planted_lease_refused(s, dev);
    planted_lease_refused(s, fifo);
    planted_index_refused(s, ifd, S_IFCHR);
    planted_index_refused(s, ifd, S_IFIFO);

    xmkdir(test_path("settings-dev"));
    plant_watched(ifd, test_path("settings-dev"), SETTINGS_FILE, S_IFCHR);
    ASSERT_ERR(lockd_space_open(test_path("settings-dev"), 0, &t), ENXIO);
    ASSERT_ERR(lockd_space_open(test_path("settings-dev"), LOCKD_OPEN_READONLY, &t),
               ENXIO);
    assert_never_opened(ifd);

    /* The watch does see an open: the check above can fail. */
    close(open(test_path("settings-dev/" SETTINGS_FILE), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(read(ifd, (char[4096]){0}, 4096) > 0);
    close(ifd);
    lockd_space_close(s);
}

/* ------------------------------------------------------------------------
 * The settings race: N openers of one fresh lockspace at once
 */

#define RACERS 8
#define ROUNDS 20

enum { RACE_VERBATIM = 10, RACE_CANONICAL = 11, RACE_MISMATCH = 20, RACE_ERROR = 30 };

struct racer {
    const char *dir;
    uint32_t flags;
    int ready, go_rd, go_wr;
};

static int
racer_main(void *arg)
{
    struct racer *a = arg;
    lockd_space *s = NULL;
    int r, mode;

    close(a->go_wr);
    pipe_signal(a->ready);
    pipe_wait_eof(a->go_rd);
    r = lockd_space_open(a->dir, a->flags, &s);
    if (r == -EMEDIUMTYPE)
        return RACE_MISMATCH;
    if (r < 0) {
        fprintf(stderr, "racer: lockd_space_open: %s\n", strerror(-r));
        return RACE_ERROR;
    }
    mode = lockd_space_mode(s);
    r = lockd_space_recorded(s);
    lockd_space_close(s);
    if (r != 1) {
        fprintf(stderr, "racer: mode not recorded\n");
        return RACE_ERROR;
    }
    return mode == LOCKD_MODE_CANONICAL ? RACE_CANONICAL : RACE_VERBATIM;
}

/* Run one round; returns the mode every successful opener agreed on. */
static int
race_round(const char *dir)
{
    struct racer arg[RACERS];
    pid_t pid[RACERS];
    int ready[2], go[2], st[RACERS], agreed = -1, winners = 0;

    xpipe(ready);
    xpipe(go);
    for (int i = 0; i < RACERS; i++) {
        arg[i] = (struct racer){ .dir = dir, .ready = ready[1], .go_rd = go[0],
                                 .go_wr = go[1],
                                 .flags = LOCKD_OPEN_CREATE |
                                          (i % 2 ? LOCKD_OPEN_CANONICAL : 0) };
        pid[i] = test_fork(racer_main, &arg[i]);
    }
    read_n(ready[0], RACERS);
    close(go[1]); /* every racer's read() returns now */
    for (int i = 0; i < RACERS; i++)
        st[i] = test_wait(pid[i]);
    close(ready[0]);
    close(ready[1]);
    close(go[0]);
    for (int i = 0; i < RACERS; i++) {
        if (st[i] == RACE_VERBATIM || st[i] == RACE_CANONICAL) {
            int mode = st[i] - RACE_VERBATIM;

            if (agreed >= 0 && mode != agreed)
                TEST_FAIL("%s: racers disagree on the mode", dir);
            if ((arg[i].flags & LOCKD_OPEN_CANONICAL) && mode != LOCKD_MODE_CANONICAL)
                TEST_FAIL("%s: a canonical asker got verbatim", dir);
            agreed = mode;
            winners++;
        } else if (st[i] == RACE_MISMATCH) {
            /* Only an explicit asker may be refused. */
            if (!(arg[i].flags & LOCKD_OPEN_CANONICAL))
                TEST_FAIL("%s: an opener without a mode got -EMEDIUMTYPE", dir);
        } else {
            TEST_FAIL("%s: racer %d exited %d", dir, i, st[i]);
        }
    }
    ASSERT_TRUE(winners >= 1);
    /* Whoever was refused was refused because verbatim won. */
    for (int i = 0; i < RACERS; i++)
        if (st[i] == RACE_MISMATCH && agreed != LOCKD_MODE_VERBATIM)
            TEST_FAIL("%s: refused although its mode won", dir);
    return agreed;
}

static void
test_settings_race(void)
{
    char dir[PATH_MAX];
    int canonical_wins = 0;

    for (int round = 0; round < ROUNDS; round++) {
        lockd_space *s = NULL;
        int mode;

        /* A missing parent too, so mkdir -p races as well. */
        path_printf(dir, sizeof(dir), "%s/round-%02d/space", test_scratch, round);
        mode = race_round(dir);
        ASSERT_OK(lockd_space_open(dir, LOCKD_OPEN_READONLY, &s));
        ASSERT_INT_EQ(lockd_space_recorded(s), 1);
        ASSERT_INT_EQ(lockd_space_mode(s), mode);
        lockd_space_close(s);
        ASSERT_TRUE(dir_names_only(dir, settings_names) >= 1);
        canonical_wins += mode == LOCKD_MODE_CANONICAL;
    }
    printf("# settings race: canonical won %d of %d rounds\n", canonical_wins, ROUNDS);
}

/* ------------------------------------------------------------------------
 * Bad input changes nothing
 */

static struct {
    lockd_space *space;  /* the table's lockspace, verbatim */
    char dir[PATH_MAX];
    char a[LOCKD_KEY_SIZE];     /* held exclusively by another process */
    char b[LOCKD_KEY_SIZE];     /* lease files that exist, free */
    char c[LOCKD_KEY_SIZE];
    char fresh[LOCKD_KEY_SIZE]; /* no lease file */
    char link[LOCKD_KEY_SIZE];  /* planted: symlink to an existing file */
    char dangle[LOCKD_KEY_SIZE]; /* planted: symlink to a missing file */
    char fifo[LOCKD_KEY_SIZE], sock[LOCKD_KEY_SIZE], subdir[LOCKD_KEY_SIZE];
} bc;

static const char *
bc_path(const char *name)
{
    static char bufs[4][PATH_MAX + LOCKD_KEY_SIZE + 2];
    static unsigned slot;
    char *b = bufs[slot++ % 4];

    path_printf(b, sizeof(bufs[0]), "%s/%s", bc.dir, name);
    return b;
}

static char long_dir[LOCKD_NAME_MAX + 2];

static int
bad_open_null_ret(void)
{
    return lockd_space_open(bc.dir, 0, NULL);
}

static int
bad_open_relative(void)
{
    int r = open_fails("space", 0);

    return r == open_fails("./space", LOCKD_OPEN_CREATE) ? r : 1;
}

static int
bad_open_empty(void)
{
    return open_fails("", LOCKD_OPEN_CREATE);
}

static int
bad_open_file(void)
{
    return open_fails(test_path("plain"), 0);
}

static int
bad_open_under_file(void)
{
    return open_fails(test_path("plain/sub/space"), LOCKD_OPEN_CREATE);
}

static int
bad_open_missing(void)
{
    return open_fails(test_path("missing"), 0);
}

static int
bad_open_both_modes(void)
{
    int r = open_fails(bc.dir, LOCKD_OPEN_VERBATIM | LOCKD_OPEN_CANONICAL);

    return r == open_fails(test_path("missing"), LOCKD_OPEN_CREATE | LOCKD_OPEN_VERBATIM |
                                                     LOCKD_OPEN_CANONICAL)
               ? r
               : 1;
}

static int
bad_open_unknown_flags(void)
{
    int r = open_fails(bc.dir, 0x100);

    if (r != open_fails(test_path("missing"), LOCKD_OPEN_CREATE | 0x80000000u))
        return 1;
    return r;
}

static int
bad_open_long_dir(void)
{
    return open_fails(long_dir, LOCKD_OPEN_CREATE);
}

static int
bad_open_garbage_settings(void)
{
    int r = open_fails(test_path("garbage"), 0);

    if (r != open_fails(test_path("garbage"), LOCKD_OPEN_READONLY) ||
        r != open_fails(test_path("garbage"), LOCKD_OPEN_CANONICAL | LOCKD_OPEN_CREATE))
        return 1;
    return r;
}

static int
bad_open_empty_settings(void)
{
    return open_fails(test_path("empty-settings"), 0);
}

static int
bad_open_truncated_settings(void)
{
    return open_fails(test_path("truncated"), LOCKD_OPEN_READONLY);
}

static int
bad_open_settings_is_dir(void)
{
    return open_fails(test_path("settings-dir"), 0);
}

static int
bad_acquire_null_space(void)
{
    const char *keys[] = { bc.fresh };
    lockd_lease *l;

    return lockd_acquire(NULL, 1, keys, NULL, LOCKD_TRY, &l);
}

static int
bad_acquire_null_keys(void)
{
    lockd_lease *l;

    return lockd_acquire(bc.space, 1, NULL, NULL, LOCKD_TRY, &l);
}

static int
bad_acquire_null_ret(void)
{
    const char *keys[] = { bc.fresh };

    return lockd_acquire(bc.space, 1, keys, NULL, LOCKD_TRY, NULL);
}

static int
bad_acquire_null_key(void)
{
    return acquire_two(bc.space, bc.fresh, NULL, LOCKD_TRY);
}

static int
bad_acquire_mode_7(void)
{
    return acquire_one(bc.space, bc.fresh, 7, LOCKD_TRY);
}

static int
bad_acquire_mode_free(void)
{
    return acquire_one(bc.space, bc.fresh, LOCKD_FREE, LOCKD_TRY);
}

static int
bad_acquire_mode_negative(void)
{
    return acquire_one(bc.space, bc.b, -1, LOCKD_TRY);
}

static int
bad_acquire_n0(void)
{
    const char *keys[] = { bc.fresh };
    lockd_lease *l;

    return lockd_acquire(bc.space, 0, keys, NULL, LOCKD_TRY, &l);
}

static int
bad_acquire_too_many(void)
{
    static const char *keys[LOCKD_ACQUIRE_MAX + 1];
    lockd_lease *l;

    for (size_t i = 0; i <= LOCKD_ACQUIRE_MAX; i++)
        keys[i] = bc.fresh;
    return lockd_acquire(bc.space, LOCKD_ACQUIRE_MAX + 1, keys, NULL, LOCKD_TRY, &l);
}

static int
bad_acquire_key_63(void)
{
    static const char key[] =
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde";

    return acquire_one(bc.space, key, LOCKD_EXCLUSIVE, LOCKD_TRY);
}

static int
bad_acquire_key_upper(void)
{
    char key[LOCKD_KEY_SIZE];

    memcpy(key, bc.fresh, sizeof(key));
    for (int i = 0; i < 64; i++)
        if (key[i] >= 'a')
            key[i] = (char)(key[i] - 'a' + 'A');
    return acquire_one(bc.space, key, LOCKD_EXCLUSIVE, LOCKD_TRY);
}

static int
bad_acquire_key_dotdot(void)
{
    /* test_scratch/etc exists, so an unchecked key would create a file there. */
    return acquire_one(bc.space, "../etc/passwd", LOCKD_EXCLUSIVE, LOCKD_TRY);
}

static int
bad_acquire_key_slash(void)
{
    char key[LOCKD_KEY_SIZE];

    /* 64 characters, the rest hex: only the slashes and dots are wrong. */
    memcpy(key, bc.fresh, sizeof(key));
    memcpy(key, "../etc/", 7);
    return acquire_one(bc.space, key, LOCKD_SHARED, LOCKD_TRY);
}

static int
bad_acquire_key_settings(void)
{
    return acquire_one(bc.space, SETTINGS_FILE, LOCKD_EXCLUSIVE, LOCKD_TRY);
}

static int
bad_acquire_good_then_bad(void)
{
    return acquire_two(bc.space, bc.fresh, "../etc/passwd", LOCKD_FOREVER);
}

static int
bad_acquire_timeout(void)
{
    int r = acquire_one(bc.space, bc.fresh, LOCKD_EXCLUSIVE, -2);

    return r == acquire_one(bc.space, bc.b, LOCKD_SHARED, INT_MIN) ? r : 1;
}

static int
bad_probe_args(void)
{
    int r = lockd_probe(NULL, bc.b, NULL);

    if (r != lockd_probe(bc.space, NULL, NULL) ||
        r != lockd_probe(bc.space, "../etc/passwd", NULL) ||
        r != lockd_probe(bc.space, SETTINGS_FILE, NULL))
        return 1;
    return r;
}

static int
bad_gc_null(void)
{
    return lockd_gc(NULL, NULL, NULL, NULL, NULL);
}

static int
bad_key_relative(void)
{
    char key[LOCKD_KEY_SIZE];

    return lockd_space_key(bc.space, "images/disk.img", key);
}

static int
bad_key_empty(void)
{
    char key[LOCKD_KEY_SIZE];

    return lockd_space_key(bc.space, "", key);
}

static int
bad_key_null(void)
{
    char key[LOCKD_KEY_SIZE];
    int r = lockd_space_key(bc.space, NULL, key);

    if (r != lockd_space_key(NULL, "/a", key) || r != lockd_space_key(bc.space, "/a", NULL))
        return 1;
    return r;
}

static int
bad_key_too_long(void)
{
    char key[LOCKD_KEY_SIZE];

    return lockd_space_key(bc.space, long_dir, key);
}

static int
bad_resource_nul(void)
{
    char key[LOCKD_KEY_SIZE];

    return lockd_key_resource("rbd:pool/\0image", 15, key);
}

static int
bad_resource_too_long(void)
{
    char key[LOCKD_KEY_SIZE];

    return lockd_key_resource(long_dir, LOCKD_NAME_MAX + 1, key);
}

static int
bad_planted_symlink(void)
{
    int r = acquire_one(bc.space, bc.link, LOCKD_EXCLUSIVE, LOCKD_TRY);

    if (r != acquire_one(bc.space, bc.link, LOCKD_SHARED, 50) ||
        r != lockd_probe(bc.space, bc.link, NULL))
        return 1;
    return r;
}

static int
bad_planted_dangling_symlink(void)
{
    /* O_CREAT through the link would create "victim" outside the lockspace. */
    int r = acquire_one(bc.space, bc.dangle, LOCKD_EXCLUSIVE, LOCKD_TRY);

    if (exists(test_path("victim")))
        TEST_FAIL("a lease was created through a planted symlink");
    return r;
}

static int
bad_planted_with_good(void)
{
    /* b sorts either side of link: whichever is taken first is let go. */
    int r = acquire_two(bc.space, bc.b, bc.link, LOCKD_TRY);

    return r == acquire_two(bc.space, bc.link, bc.c, LOCKD_FOREVER) ? r : 1;
}

static int
bad_planted_fifo(void)
{
    int64_t t0 = test_now_ms();
    int r = acquire_one(bc.space, bc.fifo, LOCKD_EXCLUSIVE, LOCKD_FOREVER);

    if (r != acquire_one(bc.space, bc.fifo, LOCKD_SHARED, LOCKD_TRY) ||
        r != lockd_probe(bc.space, bc.fifo, NULL))
        return 1;
    if (test_now_ms() - t0 > 2000)
        TEST_FAIL("a planted FIFO blocked for %lld ms", (long long)(test_now_ms() - t0));
    return r;
}

static int
bad_planted_socket(void)
{
    int r = acquire_one(bc.space, bc.sock, LOCKD_EXCLUSIVE, LOCKD_TRY);

    return r == lockd_probe(bc.space, bc.sock, NULL) ? r : 1;
}

static int
bad_planted_dir(void)
{
    int r = acquire_one(bc.space, bc.subdir, LOCKD_EXCLUSIVE, LOCKD_TRY);

    if (r != acquire_one(bc.space, bc.subdir, LOCKD_SHARED, LOCKD_TRY) ||
        r != lockd_probe(bc.space, bc.subdir, NULL))
        return 1;
    return r;
}

static int
bad_busy(void)
{
    /* b is taken (or not, depending on the sort) before a is found busy. */
    int r = acquire_two(bc.space, bc.a, bc.b, LOCKD_TRY);

    return r == acquire_two(bc.space, bc.c, bc.a, LOCKD_TRY) ? r : 1;
}

static int
bad_busy_timeout(void)
{
    int r = acquire_two(bc.space, bc.b, bc.a, 30);

    return r == acquire_one(bc.space, bc.a, LOCKD_SHARED, 1) ? r : 1;
}

/* Forked cases report -errno as the exit status errno. */
static int
run_forked(int (*fn)(void *))
{
    int st = test_wait(test_fork(fn, NULL));

    return st >= 128 ? 1 : -st;
}

static int
readonly_child(void *arg)
{
    lockd_space *s = NULL;
    const char *mnt = test_path("romnt");
    int r;

    (void)arg;
    private_mounts();
    bind_readonly(bc.dir, mnt);
    /* A writing opener: the settings exist, so opening writes nothing. */
    ASSERT_OK(lockd_space_open(mnt, 0, &s));
    ASSERT_INT_EQ(lockd_probe(s, bc.a, NULL), LOCKD_EXCLUSIVE);
    r = acquire_one(s, bc.fresh, LOCKD_EXCLUSIVE, LOCKD_TRY);
    if (r != acquire_one(s, bc.b, LOCKD_SHARED, LOCKD_TRY))
        return 1;
    lockd_space_close(s);
    return -r;
}

static int
bad_readonly(void)
{
    return run_forked(readonly_child);
}

/* The lowest free fd number: with RLIMIT_NOFILE set to it, no open succeeds. */
static int
lowest_free_fd(void)
{
    int fd = dup(0);

    if (fd < 0)
        TEST_FAIL("dup: %s", strerror(errno));
    close(fd);
    return fd;
}

static void
set_nofile(rlim_t soft)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        TEST_FAIL("getrlimit: %s", strerror(errno));
    rl.rlim_cur = soft;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        TEST_FAIL("setrlimit: %s", strerror(errno));
}

/* Out of fds: every call fails with -EMFILE and holds nothing afterwards;
 * with enough fds the same call succeeds. */
static int
emfile_child(void *arg)
{
    struct rlimit saved;
    int base = count_fds(), low = lowest_free_fd(), r, ok_at = -1;
    lockd_space *s = UNTOUCHED(lockd_space);

    (void)arg;
    if (getrlimit(RLIMIT_NOFILE, &saved) < 0)
        return 2;
    set_nofile((rlim_t)low);
    r = lockd_space_open(bc.dir, 0, &s);
    set_nofile(saved.rlim_cur);
    ASSERT_ERR(r, EMFILE);
    ASSERT_TRUE(s == UNTOUCHED(lockd_space));
    for (int extra = 0; extra <= 4 && ok_at < 0; extra++) {
        /* Shared: an exclusive grant writes its holder record, a change
         * to the tree that test_bad_input's check forbids. */
        set_nofile((rlim_t)(low + extra));
        r = acquire_two_mode(bc.space, bc.b, bc.c, LOCKD_TRY, LOCKD_SHARED);
        set_nofile(saved.rlim_cur);
        if (r == 0)
            ok_at = extra;
        else if (r != -EMFILE)
            TEST_FAIL("with %d spare fds: %s", extra, strerror(-r));
        /* Whatever was taken before the failure was let go. */
        ASSERT_INT_EQ(lockd_probe(bc.space, bc.b, NULL), LOCKD_FREE);
        ASSERT_INT_EQ(lockd_probe(bc.space, bc.c, NULL), LOCKD_FREE);
        ASSERT_INT_EQ(count_fds(), base);
    }
    /* Two leases need two fds: with one spare the second open failed. */
    if (ok_at < 0)
        TEST_FAIL("two leases not taken even with 4 spare fds");
    if (ok_at < 2)
        TEST_FAIL("two leases taken with %d spare fds", ok_at);
    return EMFILE;
}

static int
bad_emfile(void)
{
    return run_forked(emfile_child);
}

struct bad_case {
    const char *name;
    int err;
    int (*call)(void);
};

static const struct bad_case bad_cases[] = {
    { "open: NULL ret_space", EINVAL, bad_open_null_ret },
    { "open: relative dir", EINVAL, bad_open_relative },
    { "open: empty dir", EINVAL, bad_open_empty },
    { "open: dir is a regular file", ENOTDIR, bad_open_file },
    { "open: CREATE under a regular file", ENOTDIR, bad_open_under_file },
    { "open: missing dir without CREATE", ENOENT, bad_open_missing },
    { "open: both mode flags", EINVAL, bad_open_both_modes },
    { "open: unknown flags", EINVAL, bad_open_unknown_flags },
    { "open: dir longer than LOCKD_NAME_MAX", ENAMETOOLONG, bad_open_long_dir },
    { "open: garbage settings", EPROTO, bad_open_garbage_settings },
    { "open: empty settings", EPROTO, bad_open_empty_settings },
    { "open: truncated settings", EPROTO, bad_open_truncated_settings },
    { "open: settings is a directory", EPROTO, bad_open_settings_is_dir },
    { "acquire: NULL space", EINVAL, bad_acquire_null_space },
    { "acquire: NULL keys", EINVAL, bad_acquire_null_keys },
    { "acquire: NULL ret_lease", EINVAL, bad_acquire_null_ret },
    { "acquire: NULL key in keys", EINVAL, bad_acquire_null_key },
    { "acquire: mode 7", EINVAL, bad_acquire_mode_7 },
    { "acquire: mode LOCKD_FREE", EINVAL, bad_acquire_mode_free },
    { "acquire: mode -1", EINVAL, bad_acquire_mode_negative },
    { "acquire: n == 0", EINVAL, bad_acquire_n0 },
    { "acquire: n > LOCKD_ACQUIRE_MAX", EINVAL, bad_acquire_too_many },
    { "acquire: 63-digit key", EINVAL, bad_acquire_key_63 },
    { "acquire: uppercase key", EINVAL, bad_acquire_key_upper },
    { "acquire: key ../etc/passwd", EINVAL, bad_acquire_key_dotdot },
    { "acquire: 64-char key with /", EINVAL, bad_acquire_key_slash },
    { "acquire: key .lockd-lockspace", EINVAL, bad_acquire_key_settings },
    { "acquire: good key then bad key", EINVAL, bad_acquire_good_then_bad },
    { "acquire: timeout -2 and INT_MIN", EINVAL, bad_acquire_timeout },
    { "probe: NULL and invalid keys", EINVAL, bad_probe_args },
    { "gc: NULL space", EINVAL, bad_gc_null },
    { "key: relative path", EINVAL, bad_key_relative },
    { "key: empty path", EINVAL, bad_key_empty },
    { "key: NULL arguments", EINVAL, bad_key_null },
    { "key: path longer than LOCKD_NAME_MAX", ENAMETOOLONG, bad_key_too_long },
    { "resource: NUL byte", EINVAL, bad_resource_nul },
    { "resource: longer than LOCKD_NAME_MAX", ENAMETOOLONG, bad_resource_too_long },
    { "planted symlink", ELOOP, bad_planted_symlink },
    { "planted dangling symlink", ELOOP, bad_planted_dangling_symlink },
    { "planted symlink beside a good key", ELOOP, bad_planted_with_good },
    { "planted FIFO", ENXIO, bad_planted_fifo },
    { "planted socket", ENXIO, bad_planted_socket },
    { "planted directory", EISDIR, bad_planted_dir },
    { "busy: held key beside a free one", EAGAIN, bad_busy },
    { "busy: timed wait", ETIMEDOUT, bad_busy_timeout },
    { "read-only lockspace", EROFS, bad_readonly },
    { "out of fds", EMFILE, bad_emfile },
};

/* Holds lease a until its hold pipe reaches EOF. */
struct holder {
    int ready, hold_rd, hold_wr;
};

static int
holder_main(void *arg)
{
    struct holder *h = arg;
    const char *keys[] = { bc.a };
    lockd_space *s = NULL;
    lockd_lease *l = NULL;

    close(h->hold_wr);
    ASSERT_OK(lockd_space_open(bc.dir, 0, &s));
    ASSERT_OK(lockd_acquire(s, 1, keys, NULL, LOCKD_TRY, &l));
    pipe_signal(h->ready);
    pipe_wait_eof(h->hold_rd);
    ASSERT_OK(lockd_lease_release(l));
    lockd_space_close(s);
    return 0;
}

static void
plant_socket(const char *key)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    /* Bound by a relative name: the absolute one may not fit sun_path. */
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", key);
    if (fd < 0 || chdir(bc.dir) < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        chdir(test_scratch) < 0)
        TEST_FAIL("plant socket: %s", strerror(errno));
    close(fd);
}

/* Lockspace directories whose settings file is bad in one way each. */
static void
make_bad_settings(void)
{
    char good[256];
    size_t len;

    xmkdir(test_path("garbage"));
    write_text(test_path("garbage/" SETTINGS_FILE), "garbage\n\x01\xff");
    xmkdir(test_path("empty-settings"));
    write_text(test_path("empty-settings/" SETTINGS_FILE), "");
    xmkdir(test_path("settings-dir"));
    xmkdir(test_path("settings-dir/" SETTINGS_FILE));
    /* The first half of a good settings file, as a torn write would leave. */
    read_text(bc_path(SETTINGS_FILE), good, sizeof(good));
    len = strlen(good);
    ASSERT_TRUE(len >= 4);
    good[len / 2] = '\0';
    xmkdir(test_path("truncated"));
    write_text(test_path("truncated/" SETTINGS_FILE), good);
}

static void
make_bad_fixtures(void)
{
    path_printf(bc.dir, sizeof(bc.dir), "%s", test_path("space"));
    ASSERT_OK(lockd_space_open(bc.dir, LOCKD_OPEN_CREATE, &bc.space));
    key_of("disk a", bc.a);
    key_of("disk b", bc.b);
    key_of("disk c", bc.c);
    key_of("disk fresh", bc.fresh);
    key_of("planted link", bc.link);
    key_of("planted dangling link", bc.dangle);
    key_of("planted fifo", bc.fifo);
    key_of("planted socket", bc.sock);
    key_of("planted dir", bc.subdir);
    precreate(bc.space, bc.b, bc.c);
    write_text(test_path("plain"), "not a directory\n");
    write_text(test_path("precious"), "precious data\n");
    xmkdir(test_path("etc"));
    xmkdir(test_path("romnt"));
    if (symlink(test_path("precious"), bc_path(bc.link)) < 0 ||
        symlink(test_path("victim"), bc_path(bc.dangle)) < 0 ||
        mkfifo(bc_path(bc.fifo), 0600) < 0 || mkdir(bc_path(bc.subdir), 0700) < 0)
        TEST_FAIL("plant: %s", strerror(errno));
    plant_socket(bc.sock);
    make_bad_settings();
    long_dir[0] = '/';
    memset(long_dir + 1, 'd', LOCKD_NAME_MAX);
    long_dir[LOCKD_NAME_MAX + 1] = '\0';
}

static void
check_nothing_changed(const struct bad_case *c, const char *tree, int fds)
{
    if (count_fds() != fds)
        TEST_FAIL("%s: %d open fds, %d before", c->name, count_fds(), fds);
    assert_same_tree(c->name, tree, test_scratch);
    if (probe_with_fresh_handle(bc.dir, bc.a) != LOCKD_EXCLUSIVE)
        TEST_FAIL("%s: lease a is no longer held", c->name);
    if (probe_with_fresh_handle(bc.dir, bc.b) != LOCKD_FREE ||
        probe_with_fresh_handle(bc.dir, bc.c) != LOCKD_FREE)
        TEST_FAIL("%s: a lease was left held", c->name);
}

static void
test_bad_input(void)
{
    struct holder h;
    int hold[2], ready[2], fds;
    char precious[64];
    static char *tree; /* static: still reachable in the forked cases */
    pid_t pid;

    make_bad_fixtures();
    xpipe(hold);
    xpipe(ready);
    h = (struct holder){ .ready = ready[1], .hold_rd = hold[0], .hold_wr = hold[1] };
    pid = test_fork(holder_main, &h);
    close(hold[0]);
    close(ready[1]);
    read_n(ready[0], 1);
    close(ready[0]);
    ASSERT_INT_EQ(probe_with_fresh_handle(bc.dir, bc.a), LOCKD_EXCLUSIVE);

    tree = snapshot(test_scratch);
    fds = count_fds();
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *c = &bad_cases[i];
        int r = c->call();

        if (r != -c->err)
            TEST_FAIL("%s: got %d (%s), expected -%d (%s)", c->name, r,
                      r < 0 ? strerror(-r) : "success or mismatch", c->err,
                      strerror(c->err));
        check_nothing_changed(c, tree, fds);
    }
    read_text(test_path("precious"), precious, sizeof(precious));
    ASSERT_STR_EQ(precious, "precious data\n");
    ASSERT_TRUE(sizeof(bad_cases) / sizeof(bad_cases[0]) >= 20);

    /* The holder really was the one holding a. */
    close(hold[1]);
    ASSERT_INT_EQ(test_wait(pid), 0);
    ASSERT_INT_EQ(probe_with_fresh_handle(bc.dir, bc.a), LOCKD_FREE);
    lockd_space_close(bc.space);
    free(tree);
}

/*
 * Out of fds while creating a lease: a new lease needs the index and the
 * lease file open at once.  Outside the table because under valgrind, which
 * emulates RLIMIT_NOFILE above the kernel, the file is created before the fd
 * is refused; lockd's part (-EMFILE, nothing held, no fd kept) is the same.
 */
static void
test_emfile_creating(void)
{
    lockd_space *s = NULL;
    struct rlimit saved;
    char key[LOCKD_KEY_SIZE];
    int base, low, r = -EMFILE, extra;

    ASSERT_OK(lockd_space_open(test_path("space"), LOCKD_OPEN_CREATE, &s));
    key_of("created while out of fds", key);
    ASSERT_OK(getrlimit(RLIMIT_NOFILE, &saved));
    base = count_fds();
    low = lowest_free_fd();
    for (extra = 0; extra <= 4 && r == -EMFILE; extra++) {
        set_nofile((rlim_t)(low + extra));
        r = acquire_one(s, key, LOCKD_EXCLUSIVE, LOCKD_TRY);
        set_nofile(saved.rlim_cur);
        ASSERT_INT_EQ(count_fds(), base);
        ASSERT_INT_EQ(lockd_probe(s, key, NULL), LOCKD_FREE);
    }
    ASSERT_OK(r);
    /* Two fds at once: neither none nor one spare was enough. */
    ASSERT_TRUE(extra - 1 >= 2);
    lockd_space_close(s);
}

/* ------------------------------------------------------------------------
 * A read-only lockspace
 */

struct ro_keys {
    char held[LOCKD_KEY_SIZE], free[LOCKD_KEY_SIZE], fresh[LOCKD_KEY_SIZE];
};

/* Through a read-only mount of a settled lockspace: reading works, every
 * write is refused with -EROFS. */
static void
ro_settled(const struct ro_keys *k)
{
    const char *mnt = test_path("ro");
    lockd_space *s = NULL, *w = NULL;
    uint64_t removed = 0, kept = 0;
    int r;

    ASSERT_OK(lockd_space_open(mnt, LOCKD_OPEN_READONLY, &s));
    ASSERT_INT_EQ(lockd_space_recorded(s), 1);
    ASSERT_INT_EQ(lockd_space_mode(s), LOCKD_MODE_VERBATIM);
    ASSERT_INT_EQ(lockd_probe(s, k->held, NULL), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(lockd_probe(s, k->free, NULL), LOCKD_FREE);
    ASSERT_INT_EQ(lockd_probe(s, k->fresh, NULL), LOCKD_FREE);
    /* A read-only handle takes no lease, whatever the mount. */
    ASSERT_ERR(acquire_one(s, k->free, LOCKD_EXCLUSIVE, LOCKD_TRY), EBADF);
    lockd_space_close(s);

    /* Settings exist, so a writing opener needs to write nothing yet. */
    ASSERT_OK(lockd_space_open(mnt, 0, &w));
    ASSERT_INT_EQ(lockd_space_recorded(w), 1);
    ASSERT_ERR(acquire_one(w, k->fresh, LOCKD_EXCLUSIVE, LOCKD_TRY), EROFS);
    ASSERT_ERR(acquire_one(w, k->free, LOCKD_SHARED, LOCKD_FOREVER), EROFS);
    ASSERT_ERR(acquire_one(w, k->held, LOCKD_EXCLUSIVE, LOCKD_TRY), EROFS);
    ASSERT_ERR(acquire_one(w, k->free, LOCKD_EXCLUSIVE, LOCKD_TRY), EROFS);
    r = lockd_gc(w, NULL, NULL, &removed, &kept);
    if (r != -EROFS && !(r == 0 && removed == 0))
        TEST_FAIL("gc on a read-only lockspace: %d, %llu removed", r,
                  (unsigned long long)removed);
    lockd_space_close(w);
}

/* Through a read-only mount of a directory without settings: only a
 * read-only opener gets in. */
static void
ro_bare(void)
{
    const char *mnt = test_path("robare");
    lockd_space *s = NULL;

    ASSERT_ERR(open_fails(mnt, 0), EROFS);
    ASSERT_ERR(open_fails(mnt, LOCKD_OPEN_CREATE), EROFS);
    ASSERT_ERR(open_fails(mnt, LOCKD_OPEN_CANONICAL), EROFS);
    ASSERT_ERR(open_fails(test_path("robare/sub/space"), LOCKD_OPEN_CREATE), EROFS);
    ASSERT_OK(lockd_space_open(mnt, LOCKD_OPEN_READONLY, &s));
    ASSERT_INT_EQ(lockd_space_recorded(s), 0);
    lockd_space_close(s);
}

static int
ro_child(void *arg)
{
    private_mounts();
    bind_readonly(test_path("src"), test_path("ro"));
    bind_readonly(test_path("bare"), test_path("robare"));
    ro_settled(arg);
    ro_bare();
    return 0;
}

static void
test_readonly_lockspace(void)
{
    struct ro_keys k;
    lockd_space *s = NULL;
    lockd_lease *held = NULL;
    const char *keys[1];
    static char *tree; /* static: still reachable in the forked child */

    key_of("ro held", k.held);
    key_of("ro free", k.free);
    key_of("ro fresh", k.fresh);
    ASSERT_OK(lockd_space_open(test_path("src"), LOCKD_OPEN_CREATE, &s));
    precreate(s, k.held, k.free);
    keys[0] = k.held;
    ASSERT_OK(lockd_acquire(s, 1, keys, NULL, LOCKD_TRY, &held));
    xmkdir(test_path("bare"));
    xmkdir(test_path("ro"));
    xmkdir(test_path("robare"));

    tree = snapshot(test_scratch);
    ASSERT_INT_EQ(test_wait(test_fork(ro_child, &k)), 0);
    assert_same_tree("the read-only lockspace", tree, test_scratch);
    ASSERT_INT_EQ(lockd_probe(s, k.held, NULL), LOCKD_EXCLUSIVE);
    ASSERT_OK(lockd_lease_release(held));
    lockd_space_close(s);
    free(tree);
}

/* ------------------------------------------------------------------------
 * Where the lockspace is
 */

static void
test_create_parents(void)
{
    static const char *const only_space[] = { "space", NULL }, *const only_b[] = { "b", NULL };
    const char *dir = test_path("a/b/c/space");
    lockd_space *s = NULL;
    struct stat st;

    ASSERT_ERR(open_fails(dir, 0), ENOENT);
    ASSERT_TRUE(!exists(test_path("a")));
    ASSERT_OK(lockd_space_open(dir, LOCKD_OPEN_CREATE, &s));
    ASSERT_STR_EQ(lockd_space_dir(s), dir);
    ASSERT_TRUE(fstat(lockd_space_fd(s), &st) == 0 && S_ISDIR(st.st_mode));
    lockd_space_close(s);
    ASSERT_TRUE(stat(dir, &st) == 0 && S_ISDIR(st.st_mode));
    ASSERT_TRUE(is_regular(test_path("a/b/c/space/" SETTINGS_FILE)));
    /* The settings live in the lockspace only. */
    ASSERT_INT_EQ(dir_names_only(test_path("a/b/c"), only_space), 1);
    ASSERT_INT_EQ(dir_names_only(test_path("a"), only_b), 1);
}

static void
test_default_dir_env(void)
{
    const char *dir = test_path("env/space");
    lockd_space *s = NULL;

    ASSERT_OK(setenv("LOCKD_DIR", dir, 1));
    ASSERT_OK(lockd_space_open(NULL, LOCKD_OPEN_CREATE, &s));
    ASSERT_STR_EQ(lockd_space_dir(s), dir);
    lockd_space_close(s);
    ASSERT_TRUE(is_regular(test_path("env/space/" SETTINGS_FILE)));
    ASSERT_OK(lockd_space_open(NULL, LOCKD_OPEN_READONLY, &s));
    ASSERT_STR_EQ(lockd_space_dir(s), dir);
    ASSERT_INT_EQ(lockd_space_recorded(s), 1);
    lockd_space_close(s);
}

static void become_nobody(void);

/* A user's default socket is under XDG_RUNTIME_DIR, and without a usable
 * one there is none (-ENOENT), as there is no lockspace without HOME. */
static int
user_socket_child(void *arg)
{
    char *p = NULL;

    (void)arg;
    become_nobody();
    ASSERT_OK(clearenv());
    ASSERT_ERR(lockd_default_socket(&p), ENOENT);
    ASSERT_ERR(lockd_default_dir(&p), ENOENT);
    ASSERT_OK(setenv("XDG_RUNTIME_DIR", "run/user", 1));
    ASSERT_OK(setenv("HOME", "home", 1));
    ASSERT_ERR(lockd_default_socket(&p), ENOENT);
    ASSERT_ERR(lockd_default_dir(&p), ENOENT);
    ASSERT_OK(setenv("XDG_RUNTIME_DIR", "/run/user/65534", 1));
    ASSERT_OK(lockd_default_socket(&p));
    ASSERT_STR_EQ(p, "/run/user/65534/lockd/helper.sock");
    free(p);
    return 0;
}

/* LOCKD_DIR and LOCKD_SOCKET must be absolute: a relative one would name
 * another place after a chdir(), and the header promises absolute paths.
 * Refused, with nothing created; the library exports both defaults. */
static void
test_default_paths_relative_refused(void)
{
    lockd_space *s = NULL;
    lockd_conn *c = NULL;
    char *p = NULL;

    ASSERT_OK(setenv("LOCKD_DIR", "rel/space", 1));
    ASSERT_ERR(lockd_default_dir(&p), EINVAL);
    ASSERT_ERR(lockd_space_open(NULL, LOCKD_OPEN_CREATE, &s), EINVAL);
    ASSERT_TRUE(!exists(test_path("rel")));
    ASSERT_OK(setenv("LOCKD_DIR", "./space", 1));
    ASSERT_ERR(lockd_space_open(NULL, LOCKD_OPEN_READONLY, &s), EINVAL);
    ASSERT_OK(setenv("LOCKD_SOCKET", "helper.sock", 1));
    ASSERT_ERR(lockd_default_socket(&p), EINVAL);
    ASSERT_ERR(lockd_conn_open(NULL, &c), EINVAL);
    ASSERT_ERR(lockd_default_dir(NULL), EINVAL);
    ASSERT_ERR(lockd_default_socket(NULL), EINVAL);

    /* Absolute ones are returned as they are; empty means unset. */
    ASSERT_OK(setenv("LOCKD_DIR", "/srv/locks", 1));
    ASSERT_OK(lockd_default_dir(&p));
    ASSERT_STR_EQ(p, "/srv/locks");
    free(p);
    ASSERT_OK(setenv("LOCKD_SOCKET", "/run/x/helper.sock", 1));
    ASSERT_OK(lockd_default_socket(&p));
    ASSERT_STR_EQ(p, "/run/x/helper.sock");
    free(p);
    if (geteuid() == 0) {
        ASSERT_OK(setenv("LOCKD_DIR", "", 1));
        ASSERT_OK(lockd_default_dir(&p));
        ASSERT_STR_EQ(p, "/var/lib/lockd/files");
        free(p);
        ASSERT_OK(unsetenv("LOCKD_SOCKET"));
        ASSERT_OK(lockd_default_socket(&p));
        ASSERT_STR_EQ(p, "/run/lockd/helper.sock");
        free(p);
        ASSERT_INT_EQ(test_wait(test_fork(user_socket_child, NULL)), 0);
    }
}

/* A non-root user's default lockspace, opened as nobody. */
struct user_env {
    const char *lockd_dir, *xdg, *home, *expect;
};

static void
become_nobody(void)
{
    if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
        TEST_FAIL("become nobody: %s", strerror(errno));
    ASSERT_INT_EQ(geteuid(), NOBODY);
}

static void
set_or_unset(const char *name, const char *value)
{
    if (value)
        ASSERT_OK(setenv(name, value, 1));
    else
        ASSERT_OK(unsetenv(name));
}

static int
user_child(void *arg)
{
    const struct user_env *e = arg;
    char settings[PATH_MAX + 32];
    lockd_space *s = NULL;
    struct stat st;

    set_or_unset("LOCKD_DIR", e->lockd_dir);
    set_or_unset("XDG_STATE_HOME", e->xdg);
    set_or_unset("HOME", e->home);
    become_nobody();
    if (access(test_path("nobody"), W_OK) < 0)
        TEST_FAIL("nobody cannot write %s (TMPDIR not reachable?)", test_path("nobody"));
    ASSERT_OK(lockd_space_open(NULL, LOCKD_OPEN_CREATE, &s));
    ASSERT_STR_EQ(lockd_space_dir(s), e->expect);
    lockd_space_close(s);
    path_printf(settings, sizeof(settings), "%s/" SETTINGS_FILE, e->expect);
    ASSERT_TRUE(stat(settings, &st) == 0 && st.st_uid == NOBODY);
    return 0;
}

static void
check_user_default(const struct user_env *e)
{
    ASSERT_INT_EQ(test_wait(test_fork(user_child, (void *)e)), 0);
}

static void
test_default_dir_user(void)
{
    char xdg[PATH_MAX], home[PATH_MAX], expect[PATH_MAX], other[PATH_MAX];

    /* nobody must reach its directories inside the root-owned scratch dir. */
    ASSERT_OK(chmod(test_scratch, 0755));
    xmkdir(test_path("nobody"));
    ASSERT_OK(chown(test_path("nobody"), NOBODY, NOBODY));
    path_printf(xdg, sizeof(xdg), "%s", test_path("nobody/state"));
    path_printf(home, sizeof(home), "%s", test_path("nobody/home"));
    path_printf(other, sizeof(other), "%s", test_path("nobody/explicit"));

    path_printf(expect, sizeof(expect), "%s/lockd/files", xdg);
    check_user_default(&(struct user_env){ NULL, xdg, home, expect });
    ASSERT_TRUE(is_regular(test_path("nobody/state/lockd/files/" SETTINGS_FILE)));
    ASSERT_TRUE(!exists(home));

    path_printf(expect, sizeof(expect), "%s/.local/state/lockd/files", home);
    check_user_default(&(struct user_env){ NULL, NULL, home, expect });
    ASSERT_TRUE(is_regular(test_path("nobody/home/.local/state/lockd/files/"
                                     SETTINGS_FILE)));

    /* LOCKD_DIR beats both. */
    check_user_default(&(struct user_env){ other, xdg, home, other });
    ASSERT_TRUE(is_regular(test_path("nobody/explicit/" SETTINGS_FILE)));
}

int
main(void)
{
    TEST_RUN(test_settings_verbatim_default);
    TEST_RUN(test_settings_verbatim_explicit);
    TEST_RUN(test_settings_canonical);
    TEST_RUN(test_settings_existing_dir);
    TEST_RUN(test_settings_readonly_writes_nothing);
    TEST_RUN(test_settings_strict);
    TEST_RUN(test_planted_nodes_never_opened);
    TEST_RUN(test_settings_race);
    TEST_RUN_TIMEOUT(test_bad_input, 30);
    TEST_RUN(test_emfile_creating);
    TEST_RUN(test_readonly_lockspace);
    TEST_RUN(test_create_parents);
    TEST_RUN(test_default_dir_env);
    TEST_RUN(test_default_dir_user);
    TEST_RUN(test_default_paths_relative_refused);
    return test_done();
}
