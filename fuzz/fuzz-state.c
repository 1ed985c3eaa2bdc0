/* SPDX-License-Identifier: MIT */
/*
 * fuzz-state.c: libFuzzer target for lockd-helper's state parser, the code
 * that reads the fd store's state memfd after a crash (and, with fd numbers
 * instead of names, the re-exec hand-over), so a new image can read the
 * previous release's state.  It includes lockd-helper.c without its main().
 *
 * The input is written to a memfd and restored as after a restart from
 * systemd's fd store, with stored fds named P1..P4 (pidfds of pid 1, so an
 * owner record for pid 1 is adopted) and L1..L8 (regular files, standing
 * for lease fds).  An empty corpus directory is seeded with a snapshot the
 * helper's own code writes: one owner (pid 1) with two leases, and the
 * same with a lease released and the owner gone appended, as the fd
 * store's log would have them.  Afterwards every owner is freed the way the helper frees
 * one, which releases its leases; fds the state did not claim, or claimed
 * and kept "unmanaged", are closed here.  The re-exec mode (fd numbers
 * taken from the input) is not fuzzed: it would adopt and later close this
 * process's own fds.
 */
#define LOCKD_HELPER_NO_MAIN 1
#include "../lockd-helper.c"

#include "fuzz.h"

#define NAMED 12

static void reset(void);

static void
seed_write(const char *dir, const char *name, int fd, uint64_t end)
{
    char path[4096], buf[65536];
    ssize_t n = pread(fd, buf, end < sizeof(buf) ? end : sizeof(buf), 0);
    FILE *f;

    snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
    f = fopen(path, "wb");
    if (!f || n < 0)
        abort();
    fwrite(buf, 1, (size_t)n, f);
    fclose(f);
}

/* A snapshot by the helper's own writer, then the same with records
 * appended as the store's log appends them. */
static void
seed_corpus(const char *dir)
{
    int fd = memfd_create("seed", MFD_CLOEXEC), pidfd = xpidfd_open(1);
    uint8_t rec[64];
    struct proto_wr wr = {.buf = rec, .cap = sizeof(rec)};
    struct owner *o;
    int64_t end;
    uint32_t slot;

    if (fd < 0 || pidfd < 0 || !(o = owner_new(1, 0, pidfd)))
        abort();
    o->named = 1;
    (void)set_name(&o->name, "guest", 5);
    for (int i = 0; i < 2; i++) {
        struct lease *l;

        if (lease_slot_alloc(&slot) < 0)
            abort();
        l = &H.leases[slot];
        l->gen = (uint32_t)H.next_gen++;
        l->fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        l->owner = owner_slot(o);
        l->mode = (uint8_t)i;
        l->named = 1;
        l->disk = strdup("/images/a.qcow2");
        memset(l->key, 0x11 * (i + 1), PROTO_KEY_BYTES);
        lease_link(slot);
    }
    end = state_snapshot(fd, STATE_HDR, 0);
    if (end < 0 || state_header(fd, STATE_HDR, (uint64_t)end) < 0)
        abort();
    seed_write(dir, "snapshot", fd, (uint64_t)end);
    rec_small(&wr, ST_FREE, &slot, 4);
    rec_small(&wr, ST_GONE, &o->pid, 4);
    if (pwrite(fd, wr.buf, wr.len, end) != (ssize_t)wr.len ||
        state_header(fd, STATE_HDR, (uint64_t)end + wr.len) < 0)
        abort();
    seed_write(dir, "log", fd, (uint64_t)end + wr.len);
    close(fd);
    reset();
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = corpus_dir(*argc, *argv);

    /* The helper logs each refusal; libFuzzer and ASan write to fd 2
     * themselves, so only stdio's stderr is silenced. */
    stderr = fopen("/dev/null", "w");
    for (int i = 0; i < CONN_MAX; i++)
        H.conns[i].fd = -1;
    for (int i = 0; i < RESERVE_FDS; i++)
        H.reserve[i] = -1;
    H.fdinfo_dir = open("/proc/self/fdinfo", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (H.fdinfo_dir < 0)
        return -1;
    if (dir && dir_empty(dir))
        seed_corpus(dir);
    return 0;
}

/* Forget everything restored, as the helper would release it. */
static void
reset(void)
{
    for (uint32_t i = 0; i < H.nowner_slots; i++)
        if (H.owners[i].pid)
            owner_free(&H.owners[i], "fuzz");
    free(H.uids);
    H.uids = NULL;
    H.nuids = 0;
    H.nleases = 0;
    H.nowners = 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct named_fd named[NAMED];
    struct adopt a = {.reexec = 0, .named = named, .nnamed = NAMED};
    int self = xpidfd_open(1), fd, file, mine[NAMED];

    fd = memfd_create("fuzz-state", MFD_CLOEXEC);
    file = memfd_create("fuzz-lease", MFD_CLOEXEC);
    if (self < 0 || fd < 0 || file < 0 || write(fd, data, size) != (ssize_t)size)
        abort();
    for (int i = 0; i < NAMED; i++) {
        named[i].kind = i < 4 ? 'P' : 'L';
        named[i].number = i < 4 ? (uint64_t)i + 1 : (uint64_t)i - 3;
        named[i].fd = mine[i] = dup(i < 4 ? self : file);
    }
    qsort(named, NAMED, sizeof(named[0]), named_cmp);
    (void)state_restore(fd, &a);
    reset();
    /* Claimed fds were closed by the release; the rest are ours to close. */
    for (int i = 0; i < NAMED; i++)
        if (fcntl(mine[i], F_GETFD) >= 0)
            close(mine[i]);
    close(fd);
    close(file);
    close(self);
    return 0;
}
