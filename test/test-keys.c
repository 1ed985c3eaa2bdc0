/* SPDX-License-Identifier: MIT */
/*
 * test-keys.c: lease keys.  A key must be the lowercase hex SHA-256 of the
 * resource name's bytes, exactly what virtlockd computes, or a lockd host and
 * a virtlockd host would lock two different files for one disk.  So every key
 * here is compared with what the system's sha256sum(1) says at run time, not
 * only with constants; a few constants (computed once with sha256sum) check
 * that sha256sum and lockd agree with the outside world too.
 */
#include "test.h"
#include "util.h"

#include <limits.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/sysmacros.h>

#include "lockd.h"

/* SHA-256 of len bytes at buf as sha256sum(1) prints it, into out (65 bytes).
 * The bytes go through a pipe, so no shell quoting can alter them. */
static void
sha256sum_of(const void *buf, size_t len, char *out)
{
    int in[2], res[2], st;
    char line[128];
    size_t got = 0;
    ssize_t r;
    pid_t pid;

    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(res, O_CLOEXEC) < 0)
        TEST_FAIL("pipe: %s", strerror(errno));
    pid = fork();
    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0) {
        if (dup2(in[0], 0) < 0 || dup2(res[1], 1) < 0)
            _exit(127);
        execlp("sha256sum", "sha256sum", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(res[1]);
    /* sha256sum reads all its input before it writes, and the longest input
     * here fits a pipe buffer, so writing first cannot deadlock. */
    for (size_t off = 0; off < len; off += (size_t)r) {
        r = write(in[1], (const char *)buf + off, len - off);
        if (r < 0)
            TEST_FAIL("write to sha256sum: %s", strerror(errno));
    }
    close(in[1]);
    while (got < sizeof(line) - 1 &&
           (r = read(res[0], line + got, sizeof(line) - 1 - got)) > 0)
        got += (size_t)r;
    close(res[0]);
    st = test_wait(pid);
    if (st != 0 || got < 64)
        TEST_FAIL("sha256sum exited %d after %zu bytes of output", st, got);
    memcpy(out, line, 64);
    out[64] = '\0';
}

static void
sha256sum_str(const char *s, char *out)
{
    sha256sum_of(s, strlen(s), out);
}

static lockd_space *
open_space(const char *name, uint32_t flags)
{
    lockd_space *s = NULL;

    ASSERT_OK(lockd_space_open(test_path(name), flags, &s));
    return s;
}

/* The key of path in space must equal sha256sum of expect_name. */
static void
check_space_key(lockd_space *s, const char *path, const char *expect_name)
{
    char key[LOCKD_KEY_SIZE], want[LOCKD_KEY_SIZE];

    memset(key, 'x', sizeof(key));
    ASSERT_OK(lockd_space_key(s, path, key));
    ASSERT_INT_EQ(strlen(key), 64);
    ASSERT_TRUE(lockd_key_valid(key));
    sha256sum_str(expect_name, want);
    if (strcmp(key, want) != 0)
        TEST_FAIL("key of \"%.80s\" is %s, sha256sum of \"%.80s\" is %s", path, key,
                  expect_name, want);
}

static void
check_resource_key(const void *name, size_t len)
{
    char key[LOCKD_KEY_SIZE], want[LOCKD_KEY_SIZE];

    ASSERT_OK(lockd_key_resource(name, len, key));
    sha256sum_of(name, len, want);
    ASSERT_STR_EQ(key, want);
}

/* A 4000-byte absolute path of 99-character components. */
static void
make_long_path(char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = i % 100 == 0 ? '/' : (char)('a' + i % 26);
    buf[len] = '\0';
}

/* `printf %s /var/lib/libvirt/images/a.qcow2 | sha256sum`, once. */
static const char known_vectors_a_qcow2[] =
    "8a9ed4672f9e8af6f6077d1e4b861dbd7dc204cd206401d3e55a8476e2a1a203";

/* Paths whose verbatim key is sha256sum of the path itself.  Verbatim means
 * verbatim: repeated slashes, "." and ".." are hashed as written, which is
 * what virtlockd does. */
static const char *const golden_paths[] = {
    "/var/lib/libvirt/images/a.qcow2",
    "/var/lib/libvirt/images/guest disk.img",
    "/srv/\xc3\xa9t\xc3\xa9/disque-\xe2\x82\xac.raw",
    "/",
    "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
    "/a//b/./c/../d.img",
    "/tab\there/new\nline",
};

static void
test_verbatim_golden(void)
{
    lockd_space *s = open_space("space", LOCKD_OPEN_CREATE);
    char long_path[4001];

    ASSERT_INT_EQ(lockd_space_mode(s), LOCKD_MODE_VERBATIM);
    for (size_t i = 0; i < sizeof(golden_paths) / sizeof(golden_paths[0]); i++)
        check_space_key(s, golden_paths[i], golden_paths[i]);
    make_long_path(long_path, 4000);
    check_space_key(s, long_path, long_path);
    lockd_space_close(s);
}

/*
 * Spellings of one disk that libvirt hands its lock manager as written.
 * libvirt has a path sanitiser (virFileSanitizePath(): repeated slashes
 * folded except a leading "//", trailing ones dropped), but its domain XML
 * parser does not apply it to disk sources: virDomainStorageSourceParse()
 * copies <source file=...> and <source dev=...> verbatim (libvirt 9.0.0,
 * Debian 12's, and 11.3.0 alike), virDomainLockManagerAddImage() passes
 * src->path on unchanged, and virtlockd's lock_driver_lockd.c hashes that
 * string.  So each spelling's key is sha256sum of the spelling itself, and
 * no two of them share a lease (lockdctl warns of them).
 */
static const char *const libvirt_spellings[] = {
    "/var/lib/libvirt/images/a.qcow2",    /* the plain one */
    "//var/lib/libvirt/images/a.qcow2",   /* sanitiser would keep: leading // */
    "///var/lib/libvirt/images/a.qcow2",  /* sanitiser would fold to / */
    "/var/lib//libvirt/images/a.qcow2",   /* sanitiser would fold */
    "/var/lib/libvirt/images/a.qcow2/",   /* sanitiser would drop the / */
    "/var/lib/./libvirt/images/a.qcow2",  /* "." folded by nobody */
    "/var/lib/../lib/libvirt/images/a.qcow2",
};

static void
test_libvirt_spellings(void)
{
    const size_t n = sizeof(libvirt_spellings) / sizeof(libvirt_spellings[0]);
    lockd_space *s = open_space("space", LOCKD_OPEN_CREATE);
    char keys[sizeof(libvirt_spellings) / sizeof(libvirt_spellings[0])][LOCKD_KEY_SIZE];

    for (size_t i = 0; i < n; i++) {
        check_space_key(s, libvirt_spellings[i], libvirt_spellings[i]);
        ASSERT_OK(lockd_space_key(s, libvirt_spellings[i], keys[i]));
        for (size_t j = 0; j < i; j++)
            if (strcmp(keys[i], keys[j]) == 0)
                TEST_FAIL("%s and %s share a key", libvirt_spellings[i],
                          libvirt_spellings[j]);
    }
    ASSERT_STR_EQ(keys[0], known_vectors_a_qcow2);
    lockd_space_close(s);
}

/* The same names as resources: lockd_key_resource hashes the same bytes. */
static void
test_resource_golden(void)
{
    char long_name[4001], max_name[LOCKD_NAME_MAX + 1];

    for (size_t i = 0; i < sizeof(golden_paths) / sizeof(golden_paths[0]); i++)
        check_resource_key(golden_paths[i], strlen(golden_paths[i]));
    make_long_path(long_name, 4000);
    check_resource_key(long_name, 4000);
    /* Resources need not look like paths. */
    check_resource_key("rbd:pool/image@snap", strlen("rbd:pool/image@snap"));
    check_resource_key("iqn.2003-01.org.example:disk1 lun 3", 35);
    check_resource_key("x", 1);
    /* Exactly LOCKD_NAME_MAX bytes is accepted. */
    memset(max_name, 'r', LOCKD_NAME_MAX);
    check_resource_key(max_name, LOCKD_NAME_MAX);
    /* Only len bytes count, not what follows them. */
    check_resource_key("abcdef", 3);
}

/* Constants computed once with `printf %s PATH | sha256sum`: sha256sum and
 * lockd must both agree with them. */
static const struct {
    const char *name;
    const char *key;
} known_vectors[] = {
    { "/var/lib/libvirt/images/a.qcow2", known_vectors_a_qcow2 },
    { "/", "8a5edab282632443219e051e4ade2d1d5bbc671c781051bf1437897cbdfea0f1" },
    { "/srv/\xc3\xa9t\xc3\xa9/disque-\xe2\x82\xac.raw",
      "e48116a380cccd2fc9cac8d8a1b2a8444e1834dfba743745e34e1e4d7b4a1296" },
};

static void
test_known_vectors(void)
{
    lockd_space *s = open_space("space", LOCKD_OPEN_CREATE);
    char key[LOCKD_KEY_SIZE], sum[LOCKD_KEY_SIZE];

    for (size_t i = 0; i < sizeof(known_vectors) / sizeof(known_vectors[0]); i++) {
        sha256sum_str(known_vectors[i].name, sum);
        ASSERT_STR_EQ(sum, known_vectors[i].key);
        ASSERT_OK(lockd_space_key(s, known_vectors[i].name, key));
        ASSERT_STR_EQ(key, known_vectors[i].key);
        ASSERT_OK(lockd_key_resource(known_vectors[i].name, strlen(known_vectors[i].name),
                                     key));
        ASSERT_STR_EQ(key, known_vectors[i].key);
    }
    lockd_space_close(s);
}

static void
write_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    if (fd < 0)
        TEST_FAIL("create %s: %s", path, strerror(errno));
    close(fd);
}

static void
xsymlink(const char *target, const char *path)
{
    if (symlink(target, path) < 0)
        TEST_FAIL("symlink %s: %s", path, strerror(errno));
}

static const char *
xrealpath(const char *path)
{
    static char bufs[4][PATH_MAX];
    static unsigned slot;
    char *b = bufs[slot++ % 4];

    if (!realpath(path, b))
        TEST_FAIL("realpath %s: %s", path, strerror(errno));
    return b;
}

/*
 * Scratch layout shared by the symlink cases:
 *   real/disk.img        a file
 *   link.img -> real/disk.img
 *   alias -> real        a symlinked directory
 *   dangling.img -> real/nothing-here
 * The scratch dir itself may sit under a symlink (TMPDIR), so the expected
 * names come from realpath(3), not from test_scratch.
 */
static void
make_symlink_tree(void)
{
    xmkdir(test_path("real"));
    write_file(test_path("real/disk.img"));
    xsymlink(test_path("real/disk.img"), test_path("link.img"));
    xsymlink("real", test_path("alias"));
    xsymlink(test_path("real/nothing-here"), test_path("dangling.img"));
}

static void
test_canonical_symlinks(void)
{
    lockd_space *s;
    char key[LOCKD_KEY_SIZE], name[PATH_MAX + 32];
    const char *target;

    make_symlink_tree();
    s = open_space("space", LOCKD_OPEN_CREATE | LOCKD_OPEN_CANONICAL);
    ASSERT_INT_EQ(lockd_space_mode(s), LOCKD_MODE_CANONICAL);
    target = xrealpath(test_path("real/disk.img"));

    check_space_key(s, test_path("real/disk.img"), target);
    check_space_key(s, test_path("link.img"), target);
    check_space_key(s, test_path("alias/disk.img"), target);
    check_space_key(s, test_path("alias/../real/./disk.img"), target);

    /* A file that does not exist yet: realpath of its directory + its name. */
    if (snprintf(name, sizeof(name), "%s/new disk.img", xrealpath(test_path("real"))) >=
        (int)sizeof(name))
        TEST_FAIL("scratch path too long");
    check_space_key(s, test_path("alias/new disk.img"), name);
    check_space_key(s, test_path("real/new disk.img"), name);

    /* The root, and a directory-ish path that exists. */
    check_space_key(s, "/", "/");
    check_space_key(s, test_path("alias"), xrealpath(test_path("real")));

    /* Nothing at the top level: the directory is "/" itself. */
    ASSERT_TRUE(!exists("/lockd-test-no-such-image.img"));
    check_space_key(s, "/lockd-test-no-such-image.img", "/lockd-test-no-such-image.img");

    memset(key, 'x', sizeof(key));
    ASSERT_ERR(lockd_space_key(s, test_path("dangling.img"), key), ENOENT);
    /* Nothing there, and no name to join to the directory. */
    ASSERT_ERR(lockd_space_key(s, test_path("real/new-dir/"), key), EINVAL);
    ASSERT_ERR(lockd_space_key(s, test_path("real/new-dir/."), key), EINVAL);
    ASSERT_ERR(lockd_space_key(s, test_path("real/new-dir/.."), key), EINVAL);
    ASSERT_ERR(lockd_space_key(s, test_path("missing-dir/disk.img"), key), ENOENT);
    ASSERT_ERR(lockd_space_key(s, "real/disk.img", key), EINVAL);
    ASSERT_ERR(lockd_space_key(s, "./link.img", key), EINVAL);
    ASSERT_ERR(lockd_space_key(s, "", key), EINVAL);
    /* A failed call writes nothing to ret_key. */
    for (size_t i = 0; i < sizeof(key); i++)
        ASSERT_INT_EQ(key[i], 'x');
    lockd_space_close(s);
}

/* A canonical path has one key whatever the mode. */
static void
test_canonical_equals_verbatim(void)
{
    lockd_space *c, *v;
    char kc[LOCKD_KEY_SIZE], kv[LOCKD_KEY_SIZE];
    const char *target;

    make_symlink_tree();
    c = open_space("canon", LOCKD_OPEN_CREATE | LOCKD_OPEN_CANONICAL);
    v = open_space("verb", LOCKD_OPEN_CREATE | LOCKD_OPEN_VERBATIM);
    target = xrealpath(test_path("real/disk.img"));
    ASSERT_OK(lockd_space_key(c, target, kc));
    ASSERT_OK(lockd_space_key(v, target, kv));
    ASSERT_STR_EQ(kc, kv);
    ASSERT_OK(lockd_space_key(c, test_path("link.img"), kc));
    ASSERT_STR_EQ(kc, kv);
    lockd_space_close(c);
    lockd_space_close(v);
}

/* Verbatim never looks at the filesystem: a symlink has its own key, and a
 * dangling one or a missing directory is no error. */
static void
test_verbatim_symlinks(void)
{
    lockd_space *s;
    char klink[LOCKD_KEY_SIZE], ktarget[LOCKD_KEY_SIZE], kalias[LOCKD_KEY_SIZE];

    make_symlink_tree();
    s = open_space("space", LOCKD_OPEN_CREATE);
    ASSERT_INT_EQ(lockd_space_mode(s), LOCKD_MODE_VERBATIM);
    check_space_key(s, test_path("link.img"), test_path("link.img"));
    check_space_key(s, test_path("alias/disk.img"), test_path("alias/disk.img"));
    check_space_key(s, test_path("dangling.img"), test_path("dangling.img"));
    check_space_key(s, test_path("missing-dir/x.img"), test_path("missing-dir/x.img"));
    ASSERT_OK(lockd_space_key(s, test_path("link.img"), klink));
    ASSERT_OK(lockd_space_key(s, test_path("real/disk.img"), ktarget));
    ASSERT_OK(lockd_space_key(s, test_path("alias/disk.img"), kalias));
    ASSERT_TRUE(strcmp(klink, ktarget) != 0);
    ASSERT_TRUE(strcmp(kalias, ktarget) != 0);
    ASSERT_ERR(lockd_space_key(s, "link.img", klink), EINVAL);
    lockd_space_close(s);
}

static void
test_resource_errors(void)
{
    static char big[LOCKD_NAME_MAX + 2];
    char key[LOCKD_KEY_SIZE];

    memset(key, 'x', sizeof(key));
    ASSERT_ERR(lockd_key_resource("ab\0cd", 5, key), EINVAL);
    ASSERT_ERR(lockd_key_resource("abcd\0", 5, key), EINVAL);
    ASSERT_ERR(lockd_key_resource("\0", 1, key), EINVAL);
    ASSERT_ERR(lockd_key_resource("abc", 0, key), EINVAL);
    ASSERT_ERR(lockd_key_resource(NULL, 3, key), EINVAL);
    ASSERT_ERR(lockd_key_resource("abc", 3, NULL), EINVAL);
    memset(big, 'r', sizeof(big));
    ASSERT_ERR(lockd_key_resource(big, LOCKD_NAME_MAX + 1, key), ENAMETOOLONG);
    ASSERT_ERR(lockd_key_resource(big, sizeof(big), key), ENAMETOOLONG);
    ASSERT_ERR(lockd_key_resource(big, SIZE_MAX, key), ENAMETOOLONG);
    for (size_t i = 0; i < sizeof(key); i++)
        ASSERT_INT_EQ(key[i], 'x');
    /* After all that, the boundary still works. */
    check_resource_key(big, LOCKD_NAME_MAX);
}

static void
test_space_key_errors(void)
{
    static char big[LOCKD_NAME_MAX + 2];
    lockd_space *s = open_space("space", LOCKD_OPEN_CREATE);
    char key[LOCKD_KEY_SIZE];

    ASSERT_ERR(lockd_space_key(NULL, "/a", key), EINVAL);
    ASSERT_ERR(lockd_space_key(s, NULL, key), EINVAL);
    ASSERT_ERR(lockd_space_key(s, "/a", NULL), EINVAL);
    ASSERT_ERR(lockd_space_key(s, "", key), EINVAL);
    ASSERT_ERR(lockd_space_key(s, "a/b", key), EINVAL);
    make_long_path(big, LOCKD_NAME_MAX + 1);
    ASSERT_ERR(lockd_space_key(s, big, key), ENAMETOOLONG);
    big[LOCKD_NAME_MAX] = '\0';
    check_space_key(s, big, big);
    lockd_space_close(s);
}

static void
test_key_valid(void)
{
    static const char *const bad[] = {
        "",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",   /* 63 */
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0", /* 65 */
        "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
        "0123456789abcdeg0123456789abcdef0123456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdef/123456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdef 123456789abcdef0123456789abcdef",
        "../etc/passwd",
        "../../../../../../../../../../../../../../../../../../etc/passwd",
        ".lockd-lockspace",
        ".lockd-index",
    };
    char key[LOCKD_KEY_SIZE];

    ASSERT_INT_EQ(lockd_key_valid(
                      "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
                  1);
    ASSERT_INT_EQ(lockd_key_valid(known_vectors[0].key), 1);
    ASSERT_OK(lockd_key_resource("some resource", 13, key));
    ASSERT_INT_EQ(lockd_key_valid(key), 1);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (lockd_key_valid(bad[i]) != 0)
            TEST_FAIL("lockd_key_valid(\"%s\") != 0", bad[i]);
    ASSERT_INT_EQ(lockd_key_valid(NULL), 0);
    /* Every non-hex byte is refused in every position. */
    for (int c = 1; c < 256; c++) {
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))
            continue;
        memcpy(key, known_vectors[1].key, LOCKD_KEY_SIZE);
        key[c % 64] = (char)c;
        if (lockd_key_valid(key) != 0)
            TEST_FAIL("lockd_key_valid accepts byte 0x%02x", c);
    }
}

/*
 * Block devices in lvm and scsi lockspaces: the names virtlockd gives them
 * (lvs, scsi_id), computed from the sample sysfs trees of test/sysfs/ (see
 * its README: where each sample's bytes come from; the SCSI names were
 * checked against Debian 12's scsi_id) for every line of keys.txt.  The
 * paths are made block device nodes of the line's number on a tmpfs /dev of
 * a private mount namespace, in a child, so that nothing of the machine's
 * /dev is touched.
 */
static char sysfs_dir[PATH_MAX - 128]; /* room for a tree and file name after it */

static int
mknod_p(const char *path, unsigned maj, unsigned min)
{
    char dir[PATH_MAX], *p;

    snprintf(dir, sizeof(dir), "%s", path);
    for (p = dir + 1; (p = strchr(p, '/')); p++) {
        *p = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mknod(path, S_IFBLK | 0600, makedev(maj, min)) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

static void
block_golden_child(void)
{
    char list[PATH_MAX], line[1024], tree[64], dev[32], path[512], lvm[300], scsi[300];
    char root[PATH_MAX], got[LOCKD_BLOCK_KEY_SIZE];
    unsigned maj, min, n = 0;
    FILE *f;
    int r;

    if (unshare(CLONE_NEWNS) < 0 ||
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("lockd-test", "/dev", "tmpfs", 0, "mode=0755") < 0)
        TEST_FAIL("private /dev: %s", strerror(errno));
    snprintf(list, sizeof(list), "%s/keys.txt", sysfs_dir);
    f = fopen(list, "re");
    if (!f)
        TEST_FAIL("%s: %s", list, strerror(errno));
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        if (sscanf(line, "%63s %31s %511s %299s %299s", tree, dev, path, lvm, scsi) !=
                5 ||
            sscanf(dev, "%u:%u", &maj, &min) != 2)
            TEST_FAIL("keys.txt: cannot read: %s", line);
        snprintf(root, sizeof(root), "%s/%s", sysfs_dir, tree);
        /* One node per path at a time: a path may be another line's
         * device too. */
        (void)unlink(path);
        if (mknod_p(path, maj, min) < 0)
            TEST_FAIL("mknod %s: %s", path, strerror(errno));
        r = lockd_block_key(root, path, LOCKD_MODE_LVM, got, sizeof(got));
        if (strcmp(lvm, "-") == 0 ? r != -ENODATA : r != 0 || strcmp(got, lvm) != 0)
            TEST_FAIL("%s %s %s: lvm name %s, want %s", tree, dev, path,
                      r == 0 ? got : strerror(-r), lvm);
        r = lockd_block_key(root, path, LOCKD_MODE_SCSI, got, sizeof(got));
        if (strcmp(scsi, "-") == 0 ? r != -ENODATA : r != 0 || strcmp(got, scsi) != 0)
            TEST_FAIL("%s %s %s: scsi name %s, want %s", tree, dev, path,
                      r == 0 ? got : strerror(-r), scsi);
        n++;
    }
    fclose(f);
    if (n < 40)
        TEST_FAIL("keys.txt: only %u lines", n);
    /* Not a block device, not under /dev, a mode without device names. */
    snprintf(root, sizeof(root), "%s/lio-naa6", sysfs_dir);
    ASSERT_ERR(lockd_block_key(root, "/dev/null", LOCKD_MODE_SCSI, got, sizeof(got)),
               ENODATA);
    ASSERT_ERR(lockd_block_key(root, "/srv/x.img", LOCKD_MODE_SCSI, got, sizeof(got)),
               ENODATA);
    ASSERT_ERR(lockd_block_key(root, "/dev/sdb", LOCKD_MODE_VERBATIM, got, sizeof(got)),
               EINVAL);
    ASSERT_ERR(lockd_block_key("rel", "/dev/sdb", LOCKD_MODE_SCSI, got, sizeof(got)),
               EINVAL);
    ASSERT_ERR(lockd_block_key(root, "/dev/sdb", LOCKD_MODE_SCSI, got, 8), ERANGE);
    _exit(0);
}

static void
test_block_golden(void)
{
    pid_t pid = fork();

    ASSERT_TRUE(pid >= 0);
    if (pid == 0)
        block_golden_child();
    ASSERT_INT_EQ(test_wait(pid), 0);
}

/*
 * An lvm or scsi lockspace: its mode is recorded and agreed on, keys are
 * names (not hashes), leases exclude each other by name, a path has no
 * SHA-256 key there, and the real block devices here (a loop device) have
 * no LVM or SCSI name.
 */
static void
test_named_space(void)
{
    const char *keys[] = {"06UgP5-2rhb-w3Bo-3mdR-WeoL-pytO-SAa2ky"};
    char dir[PATH_MAX], key[LOCKD_KEY_SIZE], got[LOCKD_BLOCK_KEY_SIZE];
    lockd_space *s = NULL, *t = NULL;
    lockd_lease *a = NULL, *b = NULL;
    struct stat st;

    snprintf(dir, sizeof(dir), "%s", test_path("lvm"));
    ASSERT_OK(lockd_space_open(dir, LOCKD_OPEN_CREATE | LOCKD_OPEN_LVM, &s));
    ASSERT_INT_EQ(lockd_space_mode(s), LOCKD_MODE_LVM);
    ASSERT_ERR(lockd_space_open(dir, LOCKD_OPEN_SCSI, &t), EMEDIUMTYPE);
    ASSERT_ERR(lockd_space_open(dir, LOCKD_OPEN_LVM | LOCKD_OPEN_SCSI, &t), EINVAL);
    ASSERT_OK(lockd_space_open(dir, 0, &t));
    ASSERT_INT_EQ(lockd_space_mode(t), LOCKD_MODE_LVM);
    ASSERT_ERR(lockd_space_key(s, "/dev/vg0/lv", key), EMEDIUMTYPE);
    ASSERT_OK(lockd_acquire(s, 1, keys, NULL, LOCKD_TRY, &a));
    ASSERT_STR_EQ(lockd_lease_key(a, 0), keys[0]);
    ASSERT_OK(sys(stat(test_path("lvm/06UgP5-2rhb-w3Bo-3mdR-WeoL-pytO-SAa2ky"), &st)));
    ASSERT_ERR(lockd_acquire(t, 1, keys, NULL, LOCKD_TRY, &b), EAGAIN);
    ASSERT_INT_EQ(lockd_probe(t, keys[0], NULL), LOCKD_EXCLUSIVE);
    ASSERT_OK(lockd_lease_release(a));
    {
        /* gc judges names as it judges keys: an unheld one goes, a held
         * one stays. */
        const char *two[] = {"06UgP5-2rhb-w3Bo-3mdR-WeoL-pytO-SAa2ky",
                             "36001405f7c1d2e8a9b4c3d9e1f20a1b0"};
        uint64_t removed = 0, kept = 0;

        ASSERT_OK(lockd_acquire(s, 1, &two[1], NULL, LOCKD_TRY, &a));
        ASSERT_OK(lockd_gc(s, NULL, NULL, &removed, &kept));
        ASSERT_INT_EQ(removed, 1);
        ASSERT_INT_EQ(kept, 1);
        ASSERT_INT_EQ(
            access(test_path("lvm/06UgP5-2rhb-w3Bo-3mdR-WeoL-pytO-SAa2ky"), F_OK), -1);
        ASSERT_OK(lockd_lease_release(a));
    }
    {
        const char *bad[] = {".lockd-index", "a/b", "x\ny", ""};

        for (size_t i = 0; i < 4; i++)
            ASSERT_ERR(lockd_acquire(s, 1, &bad[i], NULL, LOCKD_TRY, &a), EINVAL);
    }
    {
        FILE *f;
        char loop[64] = "", cmd[PATH_MAX + 64];

        snprintf(cmd, sizeof(cmd), "truncate -s 1M %s && losetup -f --show %s",
                 test_path("l.img"), test_path("l.img"));
        f = popen(cmd, "r");
        ASSERT_TRUE(f && fgets(loop, sizeof(loop), f));
        pclose(f);
        loop[strcspn(loop, "\n")] = '\0';
        ASSERT_ERR(lockd_space_block_key(s, loop, got, sizeof(got)), ENODATA);
        ASSERT_ERR(lockd_block_key(NULL, loop, LOCKD_MODE_SCSI, got, sizeof(got)),
                   ENODATA);
        snprintf(cmd, sizeof(cmd), "losetup -d %s", loop);
        ASSERT_INT_EQ(system(cmd), 0);
    }
    lockd_space_close(t);
    lockd_space_close(s);
}

int
main(int argc, char **argv)
{
    char exe[PATH_MAX], *slash;

    /* test/sysfs beside this program's directory (test/): argv[0], as
     * test/run starts it, whatever the working directory. */
    (void)argc;
    if (!realpath(argv[0], exe) || !(slash = strrchr(exe, '/')))
        return 2;
    *slash = '\0';
    if ((size_t)snprintf(sysfs_dir, sizeof(sysfs_dir), "%s/sysfs", exe) >=
        sizeof(sysfs_dir))
        return 2;
    TEST_RUN(test_verbatim_golden);
    TEST_RUN(test_resource_golden);
    TEST_RUN(test_libvirt_spellings);
    TEST_RUN(test_known_vectors);
    TEST_RUN(test_canonical_symlinks);
    TEST_RUN(test_canonical_equals_verbatim);
    TEST_RUN(test_verbatim_symlinks);
    TEST_RUN(test_resource_errors);
    TEST_RUN(test_space_key_errors);
    TEST_RUN(test_key_valid);
    TEST_RUN(test_block_golden);
    TEST_RUN(test_named_space);
    return test_done();
}
