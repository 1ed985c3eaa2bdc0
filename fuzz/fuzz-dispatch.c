/* SPDX-License-Identifier: MIT */
/*
 * fuzz-dispatch.c: libFuzzer target for lockd-helper's whole request path,
 * driven as clients drive it.  It includes lockd-helper.c without its
 * main(), sets up the helper's state as main() would (epoll, the fdinfo
 * probe, the reserve; no systemd, no fd store), and connects two clients to
 * it over SOCK_SEQPACKET socketpairs added with conn_add(): one of this
 * process's uid, and one whose socket a child running as uid 1000 created
 * (so SO_PEERCRED names uid 1000 for real, when we are root).
 *
 * The input is a short program: a header byte (verbose logging, small
 * per-uid caps), then operations.  Requests are encoded by the client's own
 * code in lockd.c (lockd_conn_register(), lockd_conn_handoff() with real
 * lease fds, lockd_conn_release(), lockd_conn_release_notice(), the FORGET
 * rollback, lockd_conn_list(), lockd_conn_owners(), lockd_conn_status(), or
 * proto_begin()/wr_*() for single pages at a cursor and the NOTICE with no
 * ids that the client API refuses to send), and every reply is read back by
 * the client's decoders.  sendmsg() from a client socket is wrapped (through
 * lockd.c's syscall seam) so that the helper's own event handler runs right
 * after it: epoll_wait() on the helper's epoll fd and on_event(), which
 * calls on_conn(), proto_recv(), the decoder and dispatch().  So a field the
 * client writes in another order than the helper reads, or a reply the
 * client cannot parse, shows at once.  RAW sends fuzzed bytes (with fds) and
 * checks the answer the helper owes: none for a NOTICE, a dropped connection
 * for a message that is not lockd's, else one reply echoing type and serial
 * whose status is the decoder's verdict.
 *
 * Lease fds are real: a lockspace in a temporary directory, leases taken
 * once with lockd_acquire() (NEXCL exclusive keys, and NSHARED descriptions
 * of one shared key), re-locked at the start of each run.  A hand-over can
 * also carry a pipe, a memfd (locked or not), a fresh description of a lease
 * file, the lockspace directory or a pidfd, the same description twice, a
 * lease under another key or mode; UNLOCK drops the lock through our copy so
 * that the helper must find its lease LOST.  Owners are this process, a
 * long-lived child of our uid, the uid-1000 child, pid 1, a zombie, a pid
 * that does not exist, and a child that SPAWN starts (posix_spawn of cat)
 * and KILL ends (its pidfd event must then release its owner).  STOP stops
 * the helper (root only, -EBUSY unless forced); SQUEEZE makes the helper
 * handle the next message with RLIMIT_NOFILE lowered to leave 0-3 fds, so
 * that its EMFILE paths run; RECONNECT hangs up or tries another connection
 * past the uid's cap; the header byte can set small per-uid caps and a tiny
 * description index (collisions, growth).
 *
 * Each outcome the helper's rules decide is predicted from the state before
 * the request and the kernel's view (fdinfo locks, kcmp): REGISTER,
 * HANDOFF, RELEASE, NOTICE and FORGET must answer exactly that, LIST, OWNERS
 * and STATUS must list exactly what the caller may see, a lease listed as
 * held must hold its lock, and the helper's tables must stay consistent
 * (owner lists, counts, the free list, the one-description index, per-uid
 * counts).  After each run every owner is freed the way the helper frees
 * one and the connections dropped: no lease, owner, index entry or fd may
 * remain.  Any failure prints a line on fd 2 and aborts.
 *
 * Environment: FUZZ_DISPATCH_TRACE=1 prints a line per operation (to read a
 * crash input).  (Its first find: an empty message with fds leaked them all
 * in the helper, a lease's description among them; proto_recv() now closes
 * them.)
 */
#define _GNU_SOURCE
#include <sys/socket.h>
#include <sys/types.h>

static ssize_t fz_sendmsg(int sock, const struct msghdr *mh, int flags);
static ssize_t fz_recvmsg(int sock, struct msghdr *mh, int flags);
#define LOCKD_SYS_SENDMSG fz_sendmsg
#define LOCKD_SYS_RECVMSG fz_recvmsg

#define LOCKD_HELPER_NO_MAIN 1
#include "../lockd-helper.c"

#include "fuzz.h"

#include <grp.h>
#include <sanitizer/common_interface_defs.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>

static void space_remove(void);

#define FAIL(...)                                                                   \
    do {                                                                            \
        dprintf(2, "fuzz-dispatch: FAIL at line %d: ", __LINE__);                   \
        dprintf(2, __VA_ARGS__);                                                    \
        dprintf(2, "\n");                                                           \
        space_remove();                                                             \
        abort();                                                                    \
    } while (0)
/* FUZZ_DISPATCH_TRACE=1 in the environment: one line per operation. */
static int trace;
#define TRACE(...)                                                                  \
    do {                                                                            \
        if (trace)                                                                  \
            dprintf(2, __VA_ARGS__);                                                \
    } while (0)
#define CHECK(x)                                                                    \
    do {                                                                            \
        if (!(x))                                                                   \
            FAIL("%s", #x);                                                         \
    } while (0)

#define MAX_OPS  48
#define NEXCL    6
#define NSHARED  16
#define NMASTER  (NEXCL + NSHARED)
#define NKEYS    (NEXCL + 1)
#define USER_UID 1000
#define NIDS     32

/* ------------------------------------------------------------------------
 * The input
 */

struct in {
    const uint8_t *p;
    size_t n;
};

static uint8_t
in_u8(struct in *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static uint16_t
in_u16(struct in *in)
{
    return (uint16_t)(in_u8(in) | in_u8(in) << 8);
}

static void
in_bytes(struct in *in, void *out, size_t n)
{
    size_t k = n < in->n ? n : in->n;

    memcpy(out, in->p, k);
    memset((uint8_t *)out + k, 0, n - k);
    in->p += k;
    in->n -= k;
}

static uint64_t
in_u64(struct in *in)
{
    uint64_t v;

    in_bytes(in, &v, sizeof(v));
    return v;
}

/* ------------------------------------------------------------------------
 * The world: lease descriptions, processes, clients
 */

struct master {
    int fd;
    int mode;
    int key; /* index into keys */
};

static lockd_space *space;
static char space_dir[64];
static char keys[NKEYS][LOCKD_KEY_SIZE];
static struct master masters[NMASTER];

enum { P_SELF, P_CHILD, P_USER, P_SPAWN, P_ZOMBIE, P_NONE, P_INIT, NPROCS };

struct proc {
    int32_t pid;
    int pidfd; /* -1: none */
    uint32_t uid;
    int alive;
    int ctl; /* P_CHILD, P_USER, P_SPAWN: closing it ends the child */
};

static struct proc procs[NPROCS];
static int have_user; /* a uid-1000 child (we are root) */

struct client {
    struct lockd_conn conn; /* the client library's connection */
    int hfd;                /* the helper's end */
    uint32_t uid;
};

static struct client clients[2];
static unsigned nsent;        /* messages sent from a client socket */
#define FD_SEEN_MAX 4096
static int allow_noreply;     /* a client receive may find nothing */
static int run_pipe[2] = {-1, -1};
static uint64_t ids[NIDS];
static unsigned nids;
static uint64_t last_cursor;

static int
is_client(int fd)
{
    return fd >= 0 && (fd == clients[0].conn.sock || fd == clients[1].conn.sock);
}

static void pump(void);

/*
 * SQUEEZE: the helper handles the next message with only `squeeze - 1` fd
 * numbers free (RLIMIT_NOFILE lowered for that turn of its loop), so that
 * receiving fds (MSG_CTRUNC), opening fdinfo or /proc and pidfd_open() fail
 * with EMFILE.  squeezed says that the last client call met it: -EMFILE is
 * then a right answer too, with nothing changed.
 */
static int squeeze, squeezed;

static void
pump_squeezed(void)
{
    struct rlimit old, rl;
    uint8_t used[FD_SEEN_MAX];
    int limit = 0, free_fds = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;

    if (!d)
        FAIL("opendir /proc/self/fd");
    memset(used, 0, sizeof(used));
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && atoi(e->d_name) < FD_SEEN_MAX &&
            atoi(e->d_name) != dirfd(d))
            used[atoi(e->d_name)] = 1;
    closedir(d);
    /* The lowest limit under which squeeze - 1 fd numbers are free. */
    while (limit < FD_SEEN_MAX && (free_fds < squeeze - 1 || used[limit])) {
        free_fds += !used[limit];
        limit++;
    }
    /* ... and every fd we hold below it: no fd above it may be in use for
     * the helper's sake (dup3() onto its probe fd is below anyway). */
    if (getrlimit(RLIMIT_NOFILE, &old) < 0)
        FAIL("getrlimit");
    rl = old;
    rl.rlim_cur = (rlim_t)limit;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        FAIL("setrlimit %d: %s", limit, strerror(errno));
    squeezed = 1;
    squeeze = 0;
    pump();
    if (setrlimit(RLIMIT_NOFILE, &old) < 0)
        FAIL("setrlimit");
}

/* A client's sendmsg: the helper runs its event loop once right after it. */
static ssize_t
fz_sendmsg(int sock, const struct msghdr *mh, int flags)
{
    ssize_t n = sendmsg(sock, mh, flags);

    if (n >= 0 && is_client(sock)) {
        nsent++;
        if (squeeze)
            pump_squeezed();
        else
            pump();
    }
    return n;
}

/* A client's recvmsg never waits: the helper has run, so its answer is
 * there or it is not coming. */
static ssize_t
fz_recvmsg(int sock, struct msghdr *mh, int flags)
{
    ssize_t n;

    if (!is_client(sock))
        return recvmsg(sock, mh, flags);
    n = recvmsg(sock, mh, flags | MSG_DONTWAIT);
    if (n < 0 && errno == EAGAIN && !allow_noreply)
        FAIL("the helper sent no reply to a request that needs one");
    return n;
}

/* One turn of the helper's loop, as run() does it, until nothing is ready. */
static void
pump(void)
{
    struct epoll_event evs[64];
    int n, i, turns;

    for (turns = 0; turns < 16; turns++) {
        n = epoll_wait(H.epoll_fd, evs, 64, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        for (i = 0; i < n; i++)
            on_event(&evs[i]);
    }
    FAIL("the helper's epoll stays ready after 16 turns: its loop would spin");
}

/* ------------------------------------------------------------------------
 * The kernel's view, read independently of the helper's code
 */

/* Whether fd is a regular file whose open file description holds an OFD
 * lock of mode on byte 0, length 1, per its fdinfo. */
static int
truth_locked(int fd, int mode)
{
    char path[64], buf[4096], *line;
    struct stat st;
    ssize_t n;
    int f;

    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return 0;
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        FAIL("open %s: %s", path, strerror(errno));
    n = read(f, buf, sizeof(buf) - 1);
    close(f);
    if (n < 0)
        FAIL("read %s", path);
    buf[n] = '\0';
    for (line = buf; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        char type[16], adv[16], access[16], end[24];
        long long start;

        if (strncmp(line, "lock:", 5) != 0)
            continue;
        if (sscanf(line, "lock:\t%*d: %15s %15s %15s %*d %*s %lld %23s", type, adv, access,
                   &start, end) != 5)
            FAIL("cannot read the lock line of fd %d: %.80s", fd, line);
        if (strcmp(type, "OFDLCK") == 0 && start == 0 && strcmp(end, "0") == 0 &&
            strcmp(access, mode == LOCKD_SHARED ? "READ" : "WRITE") == 0)
            return 1;
    }
    return 0;
}

static int
same_desc(int a, int b)
{
    return syscall(SYS_kcmp, H.pid, H.pid, KCMP_FILE, a, b) == 0;
}

static int
fd_valid(int fd)
{
    return fd >= 0 && fcntl(fd, F_GETFD) >= 0;
}

/* The fds open now, as a bitmap of the first FD_SEEN (for naming a leak),
 * and how many in all. */
#define FD_SEEN FD_SEEN_MAX

static int master_of(int fd);

static int
count_fds(uint8_t *seen)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    if (!d)
        FAIL("opendir /proc/self/fd");
    if (seen)
        memset(seen, 0, FD_SEEN);
    while ((e = readdir(d))) {
        int fd = atoi(e->d_name);

        if (e->d_name[0] == '.' || fd == dirfd(d))
            continue;
        n++;
        if (seen && fd < FD_SEEN)
            seen[fd] = 1;
    }
    closedir(d);
    return n;
}

static void
fds_leaked(const uint8_t *before, const uint8_t *after)
{
    for (int fd = 0; fd < FD_SEEN; fd++)
        if (after[fd] && !before[fd] && fd != procs[P_SPAWN].pidfd &&
            fd != procs[P_SPAWN].ctl) {
            char path[64], target[256];
            ssize_t n;

            snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
            n = readlink(path, target, sizeof(target) - 1);
            target[n < 0 ? 0 : n] = '\0';
            dprintf(2, "fuzz-dispatch: fd %d left open: %s%s\n", fd, target,
                    master_of(fd) >= 0 ? " (a lease's description)" : "");
        }
}

/* ------------------------------------------------------------------------
 * The helper's state, looked at from outside
 */

static struct owner *
h_owner(int32_t pid)
{
    for (uint32_t i = 0; i < H.nowner_slots; i++)
        if (H.owners[i].pid && H.owners[i].pid == pid)
            return &H.owners[i];
    return NULL;
}

/* The live lease with this id, by a scan (lease_by_id() is under test). */
static uint32_t
h_lease_by_id(uint64_t id)
{
    for (uint32_t i = 0; i < H.nlease_slots; i++)
        if (H.leases[i].gen && lease_id(i) == id)
            return i;
    return NONE;
}

/* The live lease on fd's open file description, by a scan. */
static uint32_t
h_lease_on(int fd)
{
    for (uint32_t i = 0; i < H.nlease_slots; i++)
        if (H.leases[i].gen && same_desc(H.leases[i].fd, fd))
            return i;
    return NONE;
}

/* Root sees everything; another uid the owners it registered and the
 * leases it handed over. */
static int
h_visible(uint32_t conn_uid, const struct owner *o)
{
    return conn_uid == 0 || conn_uid == o->uid;
}

static int
h_lease_visible(uint32_t conn_uid, const struct lease *l)
{
    return conn_uid == 0 || conn_uid == l->uid;
}

/* The leases of o that conn_uid sees and that are not lost. */
static uint32_t
h_held_seen(uint32_t conn_uid, const struct owner *o)
{
    uint32_t n = 0;

    for (uint32_t s = 0; s < H.nlease_slots; s++)
        n += H.leases[s].gen && &H.owners[H.leases[s].owner] == o && !H.leases[s].lost &&
             h_lease_visible(conn_uid, &H.leases[s]);
    return n;
}

static struct uid_count *
h_uid(uint32_t uid)
{
    for (uint32_t i = 0; i < H.nuids; i++)
        if (H.uids[i].uid == uid)
            return &H.uids[i];
    return NULL;
}

/* The master whose description fd is, or -1. */
static int
master_of(int fd)
{
    for (int m = 0; m < NMASTER; m++)
        if (same_desc(masters[m].fd, fd))
            return m;
    return -1;
}

/* The description index (an open-addressing table by inode number, of
 * lease slots and of groups of them in kcmp order): every entry where a
 * lookup from its hash finds it, groups of two or more in strict kcmp
 * order, the counts right.  Returns how many leases it holds. */
static uint32_t
ofd_check(void)
{
    uint32_t used = 0, leases = 0, groups = 0;

    for (uint32_t p = 0; p < O.cap; p++) {
        uint32_t e = O.tab[p];
        uint64_t ino;

        if (e == NONE)
            continue;
        used++;
        if (e & OFD_GROUP) {
            const struct ofd_group *g = &O.groups[e & ~OFD_GROUP];

            CHECK((e & ~OFD_GROUP) < O.ngroups && g->slots && g->n >= 2 && g->n <= g->cap);
            groups++;
            for (uint32_t k = 0; k < g->n; k++) {
                CHECK(g->slots[k] < H.nlease_slots && H.leases[g->slots[k]].gen);
                CHECK(H.leases[g->slots[k]].ino == H.leases[g->slots[0]].ino);
                if (k && ofd_cmp(H.leases[g->slots[k - 1]].fd, H.leases[g->slots[k]].fd) >= 0)
                    FAIL("description index group at %u is not in kcmp order", p);
            }
            leases += g->n;
        } else {
            CHECK(e < H.nlease_slots && H.leases[e].gen);
            leases++;
        }
        ino = H.leases[ofd_rep(e)].ino;
        if (ofd_pos(ino) != p)
            FAIL("description index entry at %u (inode %llu) is not where a lookup looks (%u)",
                 p, (unsigned long long)ino, ofd_pos(ino));
    }
    if (used != O.used)
        FAIL("description index: %u entries, its count says %u", used, O.used);
    if (groups + O.nfree != O.ngroups)
        FAIL("description index: %u groups in use, %u free, %u made", groups, O.nfree,
             O.ngroups);
    return leases;
}

/* Set when an operation may have added leases: the pairwise check that no
 * two are one description is then worth its kcmp() calls. */
static int leases_added;

/* A STOP succeeded: the helper would exit, so the run ends. */
static int stopped;

static void
check_state(void)
{
    uint32_t nowners = 0, nleases = 0, nlost = 0, nfree = 0, nindexed = 0, i, s;

    CHECK(H.nowner_slots == 0 || H.owners);
    for (i = 0; i < H.nowner_slots; i++) {
        const struct owner *o = &H.owners[i];
        uint32_t n = 0, lost = 0, prev = NONE;

        if (!o->pid) {
            CHECK(o->head == NONE || o->head == 0);
            continue;
        }
        nowners++;
        CHECK(fd_valid(o->pidfd));
        CHECK(h_owner(o->pid) == o); /* one owner per pid */
        for (s = o->head; s != NONE; prev = s, s = H.leases[s].next) {
            const struct lease *l;

            CHECK(s < H.nlease_slots && n <= H.nlease_slots);
            l = &H.leases[s];
            CHECK(l->gen != 0 && l->owner == i && l->prev == prev);
            CHECK(l->mode == LOCKD_EXCLUSIVE || l->mode == LOCKD_SHARED);
            n++;
            lost += l->lost;
        }
        if (n != o->nleases || lost != o->nlost)
            FAIL("owner pid %d: %u leases and %u lost in its list, counts say %u and %u",
                 (int)o->pid, n, lost, o->nleases, o->nlost);
        nleases += n;
        nlost += lost;
    }
    if (nowners != H.nowners || nleases != H.nleases || nlost != H.nlost)
        FAIL("counts: %u owners %u leases %u lost, H says %u %u %u", nowners, nleases, nlost,
             H.nowners, H.nleases, H.nlost);
    for (i = 0, s = 0; i < H.nlease_slots; i++) {
        const struct lease *l = &H.leases[i];

        if (!l->gen)
            continue;
        s++;
        if (!fd_valid(l->fd))
            FAIL("lease slot %u holds fd %d, which is not open", i, l->fd);
        CHECK(l->owner < H.nowner_slots && H.owners[l->owner].pid);
        {
            struct stat st;

            if (fstat(l->fd, &st) < 0 || (uint64_t)st.st_ino != l->ino)
                FAIL("lease slot %u: inode %llu recorded, its fd's is %llu", i,
                     (unsigned long long)l->ino, (unsigned long long)st.st_ino);
        }
        if (!O.stale && ofd_find(l->fd, l->ino) != i)
            FAIL("lease slot %u: the description index finds slot %u", i,
                 ofd_find(l->fd, l->ino));
        for (uint32_t j = i + 1; leases_added && j < H.nlease_slots; j++)
            if (H.leases[j].gen && same_desc(l->fd, H.leases[j].fd))
                FAIL("lease slots %u and %u are one open file description", i, j);
    }
    CHECK(s == nleases);
    leases_added = 0;
    for (s = H.lease_free; s != NONE; s = H.leases[s].next) {
        CHECK(s < H.nlease_slots && H.leases[s].gen == 0 && nfree <= H.nlease_slots);
        nfree++;
    }
    if (nfree != H.nlease_slots - H.nleases)
        FAIL("free list holds %u of %u free slots", nfree, H.nlease_slots - H.nleases);
    nindexed = ofd_check();
    if (!O.stale && nindexed != H.nleases)
        FAIL("the description index holds %u leases, there are %u", nindexed, H.nleases);
    for (i = 0; i < H.nuids; i++) {
        const struct uid_count *u = &H.uids[i];
        uint32_t leases = 0, owners = 0, conns = 0;

        for (uint32_t k = 0; k < H.nowner_slots; k++)
            owners += H.owners[k].pid && H.owners[k].uid == u->uid;
        for (uint32_t k = 0; k < H.nlease_slots; k++)
            leases += H.leases[k].gen && H.leases[k].uid == u->uid;
        for (uint32_t k = 0; k < CONN_MAX; k++)
            conns += H.conns[k].fd >= 0 && H.conns[k].uid == u->uid;
        if (leases != u->leases || owners != u->owners || conns != u->conns)
            FAIL("uid %u: %u leases %u owners %u conns, its counts say %u %u %u", u->uid,
                 leases, owners, conns, u->leases, u->owners, u->conns);
    }
    for (i = 0, s = 0; i < CONN_MAX; i++)
        s += H.conns[i].fd >= 0;
    CHECK(s == H.nconns);
}

/* ------------------------------------------------------------------------
 * Clients
 */

/* A socketpair whose peer credentials are uid 1000's: the uid-1000 child
 * creates it and passes both ends. */
static void
user_pair(int sv[2])
{
    uint8_t b = 'S';
    size_t n = 0;
    int fds[PROTO_FDS_MAX];

    if (proto_send(procs[P_USER].ctl, &b, 1, NULL, 0) < 0 ||
        proto_recv(procs[P_USER].ctl, &b, 1, fds, &n, MSG_CMSG_CLOEXEC) != 1 || n != 2 ||
        read(procs[P_USER].ctl, &b, 1) != 1 || b != 'c')
        FAIL("the uid-%d child did not pass a socketpair", USER_UID);
    sv[0] = fds[0];
    sv[1] = fds[1];
}

static int
client_alive(const struct client *c)
{
    for (int i = 0; i < CONN_MAX; i++)
        if (H.conns[i].fd >= 0 && H.conns[i].fd == c->hfd)
            return 1;
    return 0;
}

static struct conn *
client_hconn(const struct client *c)
{
    for (int i = 0; i < CONN_MAX; i++)
        if (H.conns[i].fd >= 0 && H.conns[i].fd == c->hfd)
            return &H.conns[i];
    return NULL;
}

static void
client_open(int i)
{
    struct client *c = &clients[i];
    uint32_t before = H.nconns;
    int sv[2], r;

    if (i == 1 && have_user)
        user_pair(sv);
    else if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        FAIL("socketpair: %s", strerror(errno));
    /* The helper's end as accept4() gives it: non-blocking, close-on-exec. */
    (void)fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    r = conn_add(sv[0]);
    if (r < 0)
        FAIL("conn_add: %s", strerror(-r));
    CHECK(H.nconns == before + 1);
    memset(&c->conn, 0, offsetof(struct lockd_conn, buf));
    c->conn.sock = sv[1];
    c->hfd = sv[0];
    c->uid = client_hconn(c)->uid;
    CHECK(c->uid == (i == 1 && have_user ? USER_UID : getuid()));
}

/* The client hangs up; the helper must drop the connection. */
static void
client_close(int i)
{
    struct client *c = &clients[i];

    safe_close(c->conn.sock);
    c->conn.sock = -1;
    pump();
    if (client_alive(c))
        FAIL("the helper kept a connection its client closed");
}

/* Nothing may be waiting unread on a client's socket after an operation. */
static void
client_idle(const struct client *c)
{
    char b;
    ssize_t n;

    if (c->conn.sock < 0)
        return;
    n = recv(c->conn.sock, &b, 1, MSG_DONTWAIT | MSG_PEEK);
    if (n >= 0)
        FAIL(n ? "an unexpected message from the helper" : "the helper hung up");
    CHECK(errno == EAGAIN);
}

static struct client *
pick_client(struct in *in)
{
    return &clients[in_u8(in) & 1];
}

/* Start a client call: returns how many messages had been sent. */
static unsigned
call_start(struct client *c)
{
    CHECK(!c->conn.broken);
    squeezed = 0;
    return nsent;
}

/* A client call's failure must be the helper's own clean answer to a
 * request it could decode: a reply the client could not read marks the
 * connection broken, and -EPROTO is either the helper refusing what the
 * client encoded or the client refusing what the helper answered. */
static void
call_check(struct client *c, unsigned sent_before, int r, const char *what)
{
    if (r >= 0 || nsent == sent_before)
        return;
    if (c->conn.broken)
        FAIL("%s: the client failed on the helper's reply: %s", what, strerror(-r));
    if (r == -EPROTO)
        FAIL("%s: -EPROTO: the helper and the client disagree on the wire format", what);
}

static void
id_note(uint64_t id)
{
    ids[nids++ % NIDS] = id;
}

static uint64_t
pick_id(struct in *in)
{
    uint8_t b = in_u8(in);
    uint64_t id = nids ? ids[b % (nids < NIDS ? nids : NIDS)] : 0;

    switch (b >> 5) {
    case 0: case 1: case 2: case 3:
        return id;
    case 4:
        return id + ((uint64_t)1 << ID_SLOT_BITS); /* the next generation */
    case 5:
        return id ^ 1; /* a neighbouring slot */
    case 6:
        return in_u64(in);
    default:
        return (uint64_t)in_u8(in) & 0x1f; /* a small slot, generation 0 */
    }
}

static int32_t
pick_pid(struct in *in, int *ret_sel)
{
    int sel = in_u8(in) % NPROCS;

    if (ret_sel)
        *ret_sel = sel;
    return procs[sel].pid;
}

/* ------------------------------------------------------------------------
 * Processes
 */

static void
close_all_but(int a, int b)
{
    int lo = a < b ? a : b, hi = a < b ? b : a;

    if (lo > 3)
        (void)syscall(SYS_close_range, 3, lo - 1, 0);
    if (hi > lo + 1)
        (void)syscall(SYS_close_range, lo + 1, hi - 1, 0);
    (void)syscall(SYS_close_range, hi + 1, ~0U, 0);
}

/* A child that lives until its ctl fd closes; a uid-1000 one also makes
 * socketpairs on request. */
static void
child_start(struct proc *p, uid_t uid, int forever)
{
    int sv[2], ready[2];
    pid_t pid;
    char b;

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0 ||
        pipe2(ready, O_CLOEXEC) < 0)
        FAIL("child_start: %s", strerror(errno));
    pid = fork();
    if (pid < 0)
        FAIL("fork: %s", strerror(errno));
    if (pid == 0) {
        int pair[2];

        if (forever)
            (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        close_all_but(sv[1], ready[1]);
        if (uid != getuid() && (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0))
            _exit(1);
        (void)!write(ready[1], "r", 1);
        close(ready[1]);
        for (;;) {
            struct iovec iov = {&b, 1};
            struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
            union {
                char buf[CMSG_SPACE(2 * sizeof(int))];
                struct cmsghdr align;
            } ctl;
            struct cmsghdr *cm;

            if (read(sv[1], &b, 1) <= 0)
                _exit(0);
            if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
                _exit(1);
            memset(&ctl, 0, sizeof(ctl));
            mh.msg_control = ctl.buf;
            mh.msg_controllen = sizeof(ctl.buf);
            cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(2 * sizeof(int));
            memcpy(CMSG_DATA(cm), pair, sizeof(pair));
            if (sendmsg(sv[1], &mh, 0) != 1)
                _exit(1);
            /* Only then say so: a copy kept here would hide a hang-up. */
            close(pair[0]);
            close(pair[1]);
            if (write(sv[1], "c", 1) != 1)
                _exit(1);
        }
    }
    close(sv[1]);
    close(ready[1]);
    if (read(ready[0], &b, 1) != 1)
        FAIL("child %d did not start", (int)pid);
    close(ready[0]);
    p->pid = pid;
    p->pidfd = xpidfd_open(pid);
    p->uid = uid;
    p->alive = 1;
    p->ctl = sv[0];
    CHECK(p->pidfd >= 0);
}

/* End a child started for the run and wait until it is a zombie; the
 * helper's loop then sees its pidfd. */
static void
child_end(struct proc *p)
{
    siginfo_t si;

    safe_close(p->ctl);
    p->ctl = -1;
    while (waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR)
        ;
    p->alive = 0;
}

/* Fds the harness keeps from one run to the next (the spawned child's
 * pidfd and pipe), for the fd count. */
static int kept_fds;

static void
child_reap(struct proc *p)
{
    if (p->ctl >= 0)
        child_end(p);
    (void)waitpid(p->pid, NULL, 0);
    safe_close(p->pidfd);
    p->pidfd = -1;
    p->pid = 0x3ffffff0; /* none */
    kept_fds -= 2;
}

/*
 * The child SPAWN starts, which KILL ends: cat(1) reading a pipe, started
 * with posix_spawn() (a fork() of this process costs ~10 ms); for uid 1000
 * through setpriv(1), waited for until its uid has changed.  It lives on
 * into later runs until KILL, so that only a KILL costs a new process.
 */
static void
spawn_start(struct proc *p, uid_t uid)
{
    char *const cat[] = {"cat", NULL};
    char *const priv[] = {"setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
                          "--", "/bin/cat", NULL};
    posix_spawn_file_actions_t fa;
    int pp[2], r;
    pid_t pid;

    if (pipe2(pp, O_CLOEXEC) < 0)
        FAIL("pipe2");
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pp[0], 0);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    r = posix_spawn(&pid, uid == getuid() ? "/bin/cat" : "/usr/bin/setpriv", &fa, NULL,
                    uid == getuid() ? cat : priv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pp[0]);
    if (r != 0)
        FAIL("posix_spawn: %s", strerror(r));
    p->pid = pid;
    p->pidfd = xpidfd_open(pid);
    p->ctl = pp[1];
    p->uid = uid;
    p->alive = 1;
    CHECK(p->pidfd >= 0);
    kept_fds += 2;
    for (int tries = 0; tries < 100000; tries++) {
        uint32_t now;

        if (proc_real_uid(pid, &now) < 0)
            FAIL("spawned child %d is gone", (int)pid);
        if (now == uid)
            return;
        sched_yield();
    }
    FAIL("spawned child %d never became uid %u", (int)pid, (unsigned)uid);
}

/* ------------------------------------------------------------------------
 * Fds to hand over
 */

#define MAX_ITEMS 3

struct item {
    int fd;
    int own; /* ours to close after sending */
    int mode;
    char key[LOCKD_KEY_SIZE];
    char *name;
};

static int
run_pipe_fd(void)
{
    if (run_pipe[0] < 0 && pipe2(run_pipe, O_CLOEXEC) < 0)
        FAIL("pipe2");
    return run_pipe[0];
}

/* An fd of some kind, for a hand-over or a raw message. */
static int
pick_fd(struct in *in, const struct item *prev, size_t nprev, int *ret_own, int *ret_mode,
        int *ret_key)
{
    uint8_t b = in_u8(in), k = in_u8(in);
    int m = k % NMASTER, fd;

    *ret_own = 0;
    *ret_mode = masters[m].mode;
    *ret_key = masters[m].key;
    switch (b % 12) {
    default: /* 0-5: a master lease: exclusive more often than not */
        if (b % 12 < 3)
            m = k % NEXCL;
        *ret_mode = masters[m].mode;
        *ret_key = masters[m].key;
        return masters[m].fd;
    case 6: /* an fd already in this request: one description twice */
        if (nprev) {
            const struct item *p = &prev[k % nprev];

            *ret_mode = p->mode;
            *ret_key = -2 - (int)(k % nprev); /* its key, unless changed */
            return p->fd;
        }
        *ret_mode = masters[0].mode;
        *ret_key = masters[0].key;
        return masters[0].fd;
    case 7:
        return run_pipe_fd();
    case 8: /* a memfd, unlocked, write-locked or read-locked */
        fd = memfd_create("fuzz-lease", MFD_CLOEXEC);
        if (fd < 0)
            FAIL("memfd_create");
        *ret_own = 1;
        *ret_key = -1;
        *ret_mode = k & 1;
        if (k % 3)
            (void)lease_lock(fd, F_OFD_SETLK, k % 3 == 1 ? F_WRLCK : F_RDLCK, NULL);
        return fd;
    case 9: { /* a fresh description of a lease file, locked if it can be */
        struct stat st;

        fd = lease_open(lockd_space_fd(space), keys[masters[m].key], &st);
        if (fd < 0)
            FAIL("lease_open: %s", strerror(-fd));
        if (k & 0x80)
            (void)lease_lock(fd, F_OFD_SETLK,
                             masters[m].mode == LOCKD_SHARED ? F_RDLCK : F_WRLCK, NULL);
        *ret_own = 1;
        return fd;
    }
    case 10:
        return lockd_space_fd(space);
    case 11:
        return procs[k % 2 ? P_SELF : P_CHILD].pidfd;
    }
}

/* A lease as lockd_acquire() would have made it, but of any fds, keys and
 * modes, for lockd_conn_handoff(). */
static lockd_lease *
fake_lease(const struct item *it, size_t n)
{
    lockd_lease *l = calloc(1, sizeof(*l) + n * (sizeof(l->ent[0]) + sizeof(l->slot[0])));

    if (!l)
        FAIL("calloc");
    l->slot = (uint32_t *)(void *)(l->ent + n);
    l->space = NULL; /* no lockspace: the helper skips the directory check */
    l->n = l->given = n;
    for (size_t i = 0; i < n; i++) {
        memcpy(l->ent[i].key, it[i].key, LOCKD_KEY_SIZE);
        l->ent[i].mode = it[i].mode;
        l->ent[i].fd = it[i].fd;
        l->slot[i] = (uint32_t)i;
    }
    return l;
}

/* A disk name: none, empty, short fuzzed, or as long as allowed. */
static char *
pick_name(struct in *in, size_t max)
{
    uint8_t b = in_u8(in);
    size_t len;
    char *s;

    switch (b & 3) {
    case 0:
        return NULL;
    case 1:
        len = 0;
        break;
    case 2:
        len = b >> 2;
        break;
    default:
        len = max - (b >> 2 & 1);
        break;
    }
    s = malloc(len + 1);
    if (!s)
        FAIL("malloc");
    in_bytes(in, s, (b & 3) == 2 ? len : 0);
    for (size_t i = 0; i < len; i++)
        if ((b & 3) == 3)
            s[i] = (char)('a' + i % 26);
        else if (!s[i])
            s[i] = '/';
    s[len] = '\0';
    return s;
}

/* ------------------------------------------------------------------------
 * Operations
 */

static void
check_owner_fields(const struct owner *o, const uint8_t *uuid, const char *name)
{
    char want[37], got[37];

    uuid_format(uuid, want);
    uuid_format(o->uuid, got);
    if (memcmp(o->uuid, uuid, PROTO_UUID_BYTES) != 0)
        FAIL("owner pid %d: uuid %s, registered %s", (int)o->pid, got, want);
    if (strcmp(o->name ? o->name : "", name ? name : "") != 0)
        FAIL("owner pid %d: name not as registered", (int)o->pid);
}

static void
op_register(struct in *in)
{
    struct client *c = pick_client(in);
    int sel, pfsel = in_u8(in) % 6, us = in_u8(in), pidfd = -1, pidfd_of = -1, want;
    int32_t pid = pick_pid(in, &sel);
    uint8_t raw_uuid[PROTO_UUID_BYTES] = {0}, u[PROTO_UUID_BYTES];
    static const uint8_t zero_uuid[PROTO_UUID_BYTES];
    uint8_t old_uuid[PROTO_UUID_BYTES];
    char uuid_text[37], *name, *old_name = NULL;
    const char *uuid = NULL;
    struct owner *o = h_owner(pid);
    size_t nlen = in_u8(in);
    unsigned sent;
    int r;

    /* A pidfd: of the process named, of another, or not a pidfd at all. */
    switch (pfsel) {
    case 1:
        pidfd = procs[sel].pidfd, pidfd_of = sel;
        break;
    case 2:
        pidfd = procs[P_SELF].pidfd, pidfd_of = P_SELF;
        break;
    case 3:
        pidfd = procs[P_USER].pidfd, pidfd_of = P_USER;
        break;
    case 4:
        pidfd = run_pipe_fd();
        break;
    case 5:
        pidfd = masters[0].fd;
        break;
    }
    if (us & 1) {
        in_bytes(in, raw_uuid, sizeof(raw_uuid));
        uuid_format(raw_uuid, uuid_text);
        uuid = uuid_text;
    } else if (us & 2)
        uuid = "";
    CHECK(uuid_parse(uuid, u) == 0 && (!(us & 1) || memcmp(u, raw_uuid, sizeof(u)) == 0));
    if (us & 4)
        nlen += in_u8(in) % 8; /* past LOCKD_OWNER_NAME_MAX: the client refuses */
    name = malloc(nlen + 1);
    if (!name)
        FAIL("malloc");
    in_bytes(in, name, nlen);
    for (size_t i = 0; i < nlen; i++)
        if (!name[i])
            name[i] = ' ';
    name[nlen] = '\0';

    if (o) {
        memcpy(old_uuid, o->uuid, sizeof(old_uuid));
        old_name = strdup(o->name ? o->name : "");
    }
    /* What the helper must answer. */
    if (nlen > LOCKD_OWNER_NAME_MAX)
        want = -EINVAL; /* the client's own refusal */
    else if (o && procs[sel].pid == pid && !procs[sel].alive)
        FAIL("owner pid %d is dead but was not released", (int)pid);
    else if (o)
        want = h_visible(c->uid, o) ? 0 : -EPERM;
    else if (c->uid != 0 && (!h_uid(c->uid) || h_uid(c->uid)->owners >= H.user_owners))
        want = -EDQUOT;
    else if (pidfd >= 0 && (pidfd_of < 0 || procs[pidfd_of].pid != pid))
        want = -ESRCH;
    else if (!procs[sel].alive)
        want = -ESRCH;
    else if (c->uid != 0 && procs[sel].uid != c->uid)
        want = -EPERM;
    else
        want = 0;

    sent = call_start(c);
    r = lockd_conn_register(&c->conn, pid, pidfd, uuid, name);
    call_check(c, sent, r, "REGISTER");
    TRACE("REGISTER uid %u pid %d (proc %d) pidfd %d: %d%s\n", c->uid, (int)pid, sel, pfsel, r,
          squeezed ? " (squeezed)" : "");
    if (squeezed && (r == -EMFILE || r == -ENFILE) && want != r) {
        CHECK(h_owner(pid) == o); /* nothing changed */
        free(old_name);
        free(name);
        return;
    }
    if (r != want)
        FAIL("REGISTER pid %d (proc %d) pidfd %d (of %d) from uid %u: %s, expected %s",
             (int)pid, sel, pidfd >= 0, pidfd_of, c->uid, strerror(-r), strerror(-want));
    if (r == 0) {
        struct owner *n = h_owner(pid);

        CHECK(n);
        /* Registering again changes only what is given: a uuid that is not
         * all zero, a name that is not empty. */
        check_owner_fields(n, o && !memcmp(u, zero_uuid, sizeof(u)) ? old_uuid : u,
                           o && !nlen ? old_name : name);
        if (!o)
            CHECK(n->uid == c->uid && n->nleases == 0);
    }
    free(old_name);
    free(name);
}

static void
op_handoff(struct in *in)
{
    struct client *c = pick_client(in);
    int sel;
    int32_t pid = pick_pid(in, &sel);
    size_t n = 1 + in_u8(in) % MAX_ITEMS, i, j;
    struct item it[MAX_ITEMS];
    uint32_t again[MAX_ITEMS];
    uint64_t got[MAX_ITEMS];
    const char *names[MAX_ITEMS];
    struct owner *o = h_owner(pid);
    struct uid_count *u;
    uint32_t before = H.nleases, fresh = 0;
    uint64_t next_gen = H.next_gen;
    lockd_lease *l;
    unsigned sent;
    int want = 0, r;

    for (i = 0; i < n; i++) {
        int key, tweak;

        it[i].fd = pick_fd(in, it, i, &it[i].own, &it[i].mode, &key);
        tweak = in_u8(in);
        if (tweak & 1) /* claim the other mode */
            it[i].mode ^= 1;
        if (key <= -2 && !(tweak & 2)) /* the same fd again, as the same lease */
            memcpy(it[i].key, it[-2 - key].key, LOCKD_KEY_SIZE);
        else if (key < 0 || (tweak & 2)) { /* another key, or one of our own */
            uint8_t kb[PROTO_KEY_BYTES];

            if (tweak & 4) {
                in_bytes(in, kb, sizeof(kb));
                key_to_hex(kb, it[i].key);
            } else
                memcpy(it[i].key, keys[(tweak >> 3) % NKEYS], LOCKD_KEY_SIZE);
        } else
            memcpy(it[i].key, keys[key], LOCKD_KEY_SIZE);
        it[i].name = pick_name(in, tweak & 0x80 ? LOCKD_NAME_MAX + 1 : LOCKD_NAME_MAX);
        names[i] = it[i].name;
    }

    /* What the helper must answer, from the kernel's view of each fd. */
    for (i = 0; i < n; i++)
        if (it[i].name && strlen(it[i].name) > LOCKD_NAME_MAX)
            want = -ENAMETOOLONG; /* the client's own refusal */
    if (want == 0 && (!o || !h_visible(c->uid, o)))
        want = -ESRCH;
    if (want == 0) { /* counted for the uid that hands them over */
        u = h_uid(c->uid);
        if (!u || u->leases + n > (c->uid == 0 ? LEASES_PER_UID : H.user_leases))
            want = -EDQUOT;
    }
    for (i = 0; i < n && want == 0; i++)
        if (!truth_locked(it[i].fd, it[i].mode))
            want = -EBADFD;
    for (i = 0; i < n && want == 0; i++) {
        const struct lease *h;

        again[i] = h_lease_on(it[i].fd);
        if (again[i] == NONE) {
            fresh++;
            continue;
        }
        h = &H.leases[again[i]];
        if (&H.owners[h->owner] != o || h->mode != it[i].mode || h->uid != c->uid)
            want = -EEXIST;
        else {
            char hex[LOCKD_KEY_SIZE];

            key_to_hex(h->key, hex);
            if (strcmp(hex, it[i].key) != 0)
                want = -EEXIST;
        }
    }
    for (i = 0; i < n && want == 0; i++)
        for (j = i + 1; j < n; j++)
            if (same_desc(it[i].fd, it[j].fd))
                want = -EEXIST;

    l = fake_lease(it, n);
    sent = call_start(c);
    r = lockd_conn_handoff(&c->conn, pid, l, names, got);
    call_check(c, sent, r, "HANDOFF");
    TRACE("HANDOFF uid %u pid %d (proc %d) %zu items: %d (expected %d)%s\n", c->uid, (int)pid,
          sel, n, r, want, squeezed ? " (squeezed)" : "");
    if (squeezed && r == -EMFILE)
        want = r;
    if (r != want)
        FAIL("HANDOFF of %zu to pid %d (proc %d) from uid %u: %s, expected %s", n, (int)pid,
             sel, c->uid, strerror(-r), strerror(-want));
    if (r == 0) {
        for (i = 0; i < n; i++) {
            uint32_t s = h_lease_by_id(got[i]);
            const struct lease *h;
            char hex[LOCKD_KEY_SIZE];

            if (s == NONE)
                FAIL("HANDOFF answered id %llx, which is no lease",
                     (unsigned long long)got[i]);
            h = &H.leases[s];
            key_to_hex(h->key, hex);
            CHECK(&H.owners[h->owner] == o && h->mode == it[i].mode && !h->lost);
            CHECK(h->uid == c->uid);
            CHECK(strcmp(hex, it[i].key) == 0);
            CHECK(strcmp(h->disk, it[i].name ? it[i].name : "") == 0 || again[i] != NONE);
            CHECK(same_desc(h->fd, it[i].fd));
            if (again[i] != NONE ? s != again[i] : h->gen < next_gen)
                FAIL("HANDOFF item %zu: id %llx is not the %s lease", i,
                     (unsigned long long)got[i], again[i] != NONE ? "existing" : "new");
            for (j = 0; j < i; j++)
                CHECK(got[j] != got[i]);
            id_note(got[i]);
        }
        CHECK(H.nleases == before + fresh);
    } else
        CHECK(H.nleases == before);
    free(l);
    for (i = 0; i < n; i++) {
        if (it[i].own)
            safe_close(it[i].fd);
        free(it[i].name);
    }
}

/* Every shared description at once, with long names: a hand-over in
 * several messages (handoff_fit), and a LIST of several pages.  One item
 * may be made bad, so that a later message fails and the client takes the
 * earlier ones back with FORGET. */
static void
op_bulk(struct in *in)
{
    struct client *c = pick_client(in);
    int32_t pid = pick_pid(in, NULL);
    uint8_t bad = in_u8(in);
    struct item it[NSHARED];
    const char *names[NSHARED];
    uint64_t got[NSHARED];
    uint32_t before = H.nleases, had[NSHARED];
    lockd_lease *l;
    unsigned sent;
    int r;

    for (size_t i = 0; i < NSHARED; i++) {
        it[i].fd = masters[NEXCL + i].fd;
        it[i].own = 0;
        it[i].mode = LOCKD_SHARED;
        memcpy(it[i].key, keys[NEXCL], LOCKD_KEY_SIZE);
        it[i].name = malloc(LOCKD_NAME_MAX + 1);
        if (!it[i].name)
            FAIL("malloc");
        memset(it[i].name, 'a' + (int)i, LOCKD_NAME_MAX);
        it[i].name[LOCKD_NAME_MAX] = '\0';
        names[i] = it[i].name;
        had[i] = h_lease_on(it[i].fd);
    }
    if (bad & 1)
        it[(bad >> 1) % NSHARED].mode = LOCKD_EXCLUSIVE; /* not what it holds */
    l = fake_lease(it, NSHARED);
    sent = call_start(c);
    r = lockd_conn_handoff(&c->conn, pid, l, names, got);
    call_check(c, sent, r, "HANDOFF (bulk)");
    TRACE("BULK uid %u pid %d: %d\n", c->uid, (int)pid, r);
    if (r == 0) {
        for (size_t i = 0; i < NSHARED; i++) {
            uint32_t s = h_lease_by_id(got[i]);

            CHECK(s != NONE && same_desc(H.leases[s].fd, it[i].fd));
            id_note(got[i]);
        }
    } else {
        /* All or nothing: no new lease is left behind.  (One that existed
         * before and came back as "the same hand-over again" in an earlier
         * message may have been taken back.) */
        CHECK(r == -ESRCH || r == -EBADFD || r == -EEXIST || r == -EDQUOT ||
              (squeezed && r == -EMFILE));
        for (size_t i = 0; i < NSHARED; i++)
            if (had[i] == NONE && h_lease_on(it[i].fd) != NONE)
                FAIL("bulk HANDOFF failed (%s) but left item %zu held", strerror(-r), i);
        CHECK(H.nleases <= before);
    }
    free(l);
    for (size_t i = 0; i < NSHARED; i++)
        free(it[i].name);
}

/* RELEASE, NOTICE or FORGET of some ids (count 0: RELEASE all, FORGET none,
 * NOTICE refused). */
static void
op_release(struct in *in, uint16_t type)
{
    struct client *c = pick_client(in);
    int sel;
    int32_t pid = pick_pid(in, &sel);
    size_t n = in_u8(in) % 5, i, want = 0;
    uint64_t list[4];
    uint32_t slots[8], nslots = 0, before = H.nleases;
    int desc[8], locked[8];
    uint64_t gone[8];
    struct owner *o = h_owner(pid);
    int visible = o && h_visible(c->uid, o), r = 0;
    unsigned sent;

    for (i = 0; i < n; i++) {
        list[i] = pick_id(in);
        if (lease_by_id(list[i]) != h_lease_by_id(list[i]))
            FAIL("lease_by_id(%llx) finds slot %u, a scan finds %u",
                 (unsigned long long)list[i], lease_by_id(list[i]), h_lease_by_id(list[i]));
    }
    /* What goes: the owner's leases named (each once), or all of them. */
    /* What goes: the owner's leases named (each once), or all of them,
     * of those the caller's uid handed over (root: all). */
    if (visible && n == 0 && type == PROTO_RELEASE) {
        uint32_t all = 0;

        for (uint32_t s = o->head; s != NONE; s = H.leases[s].next)
            if (h_lease_visible(c->uid, &H.leases[s]) && all++ < 8)
                slots[nslots++] = s;
        if (all > 8)
            nslots = 0, visible = 2, want = all; /* more than we track: count only */
    }
    for (i = 0; visible && i < n; i++) {
        uint32_t s = h_lease_by_id(list[i]), k;

        if (s == NONE || &H.owners[H.leases[s].owner] != o ||
            !h_lease_visible(c->uid, &H.leases[s]))
            continue;
        for (k = 0; k < nslots && slots[k] != s; k++)
            ;
        if (k == nslots)
            slots[nslots++] = s;
    }
    if (visible != 2)
        want = nslots;
    for (i = 0; i < nslots; i++) {
        gone[i] = lease_id(slots[i]);
        desc[i] = master_of(H.leases[slots[i]].fd);
        locked[i] = desc[i] >= 0 && truth_locked(masters[desc[i]].fd, masters[desc[i]].mode);
    }

    sent = call_start(c);
    if (type == PROTO_RELEASE)
        r = lockd_conn_release(&c->conn, pid, n, list);
    else if (type == PROTO_FORGET)
        r = release_all(&c->conn, PROTO_FORGET, pid, n, list);
    else if (n > 0)
        r = lockd_conn_release_notice(&c->conn, pid, n, list);
    else {
        /* The notice the client API refuses to send: written by its
         * encoder all the same.  The helper must refuse it silently. */
        struct proto_wr wr;

        conn_begin(&c->conn, &wr, PROTO_NOTICE, 0);
        wr_i32(&wr, pid);
        wr_u16(&wr, 0);
        CHECK(proto_finish(&wr) == 0);
        allow_noreply = 1;
        CHECK(proto_send(c->conn.sock, wr.buf, wr.len, NULL, 0) == 0);
        allow_noreply = 0;
        if (H.nleases != before)
            FAIL("a NOTICE without ids released %u leases", before - H.nleases);
        return;
    }
    call_check(c, sent, r, type == PROTO_RELEASE ? "RELEASE" : type == PROTO_FORGET ? "FORGET"
                                                                                      : "NOTICE");
    TRACE("release type %u uid %u pid %d %zu ids: %d (expected %zu)\n", type, c->uid,
          (int)pid, n, r, want);
    if (type == PROTO_NOTICE) {
        CHECK(r == 0);
        if (!visible)
            want = 0;
    } else if (!o || !h_visible(c->uid, o)) {
        if (r != -ESRCH)
            FAIL("release for pid %d (proc %d), not an owner uid %u sees: %s", (int)pid,
                 sel, c->uid, strerror(-r));
        want = 0;
    } else if (r < 0 || (size_t)r != want)
        FAIL("type %u release of %zu ids for pid %d: answered %d, expected %zu", type, n,
             (int)pid, r, want);
    if (H.nleases != before - want)
        FAIL("type %u release: %u leases went, expected %zu", type, before - H.nleases, want);
    for (i = 0; i < nslots; i++) {
        if (h_lease_by_id(gone[i]) != NONE || lease_by_id(gone[i]) != NONE)
            FAIL("lease %llx is still there after its release", (unsigned long long)gone[i]);
        if (desc[i] < 0)
            continue;
        if (type == PROTO_FORGET && locked[i] &&
            !truth_locked(masters[desc[i]].fd, masters[desc[i]].mode))
            FAIL("FORGET unlocked the description it should only have closed");
        if (type != PROTO_FORGET && truth_locked(masters[desc[i]].fd, masters[desc[i]].mode))
            FAIL("a released lease is still locked");
    }
}

/* LIST and OWNERS rows, checked against the helper's tables as they are. */
struct rows {
    const struct client *c;
    int32_t pid;
    const char *key;
    uint8_t *seen; /* per slot */
    uint32_t nseen;
    uint64_t lo, hi; /* slots a page may hold */
    unsigned n;
};

static int
row_lease(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
          int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    struct rows *rs = userdata;
    uint32_t s = h_lease_by_id(id);
    const struct lease *l;
    const struct owner *o;
    char hex[LOCKD_KEY_SIZE], ut[37];

    if (s == NONE)
        FAIL("LIST row of id %llx, which is no lease", (unsigned long long)id);
    l = &H.leases[s];
    o = &H.owners[l->owner];
    if (!h_lease_visible(rs->c->uid, l))
        FAIL("LIST showed uid %u a lease uid %u handed over", rs->c->uid, l->uid);
    CHECK(!rs->pid || rs->pid == o->pid);
    key_to_hex(l->key, hex);
    CHECK(!rs->key || strcmp(rs->key, hex) == 0);
    CHECK(strcmp(key, hex) == 0);
    CHECK(s >= rs->lo && s < rs->hi && s < rs->nseen);
    if (rs->seen[s]++)
        FAIL("LIST listed lease %llx twice", (unsigned long long)id);
    if (mode != (l->lost ? LOCKD_LOST : l->mode))
        FAIL("LIST mode %d for a lease of mode %d, lost %d", mode, l->mode, l->lost);
    if (mode != LOCKD_LOST && !truth_locked(l->fd, l->mode))
        FAIL("LIST shows lease %llx as held, but its lock is gone", (unsigned long long)id);
    uuid_format(o->uuid, ut);
    CHECK(pid == o->pid && uid == l->uid && strcmp(uuid, ut) == 0);
    CHECK(strcmp(name, o->name ? o->name : "") == 0);
    CHECK(strcmp(disk, l->disk ? l->disk : "") == 0);
    id_note(id);
    rs->n++;
    return 0;
}

/* After a listing: every lease the request selects in [lo, hi) was seen. */
static void
rows_complete(const struct rows *rs)
{
    for (uint32_t s = 0; s < H.nlease_slots; s++) {
        const struct lease *l = &H.leases[s];
        const struct owner *o;
        char hex[LOCKD_KEY_SIZE];

        if (!l->gen || s < rs->lo || s >= rs->hi)
            continue;
        o = &H.owners[l->owner];
        key_to_hex(l->key, hex);
        if (!h_lease_visible(rs->c->uid, l) || (rs->pid && o->pid != rs->pid) ||
            (rs->key && strcmp(rs->key, hex) != 0))
            continue;
        if (s >= rs->nseen || !rs->seen[s])
            FAIL("LIST left out lease slot %u of pid %d", s, (int)o->pid);
    }
}

static void
rows_init(struct rows *rs, const struct client *c)
{
    memset(rs, 0, sizeof(*rs));
    rs->c = c;
    rs->nseen = H.nlease_slots > H.nowner_slots ? H.nlease_slots : H.nowner_slots;
    rs->seen = calloc(rs->nseen + 1, 1);
    if (!rs->seen)
        FAIL("calloc");
    rs->hi = UINT64_MAX;
}

static void
pick_filter(struct in *in, int32_t *pid, const char **key, char *buf)
{
    uint8_t f = in_u8(in);

    *pid = f & 1 ? procs[in_u8(in) % NPROCS].pid : 0;
    *key = NULL;
    if (f & 2) {
        if (f & 4) {
            uint8_t kb[PROTO_KEY_BYTES];

            in_bytes(in, kb, sizeof(kb));
            key_to_hex(kb, buf);
        } else
            memcpy(buf, keys[in_u8(in) % NKEYS], LOCKD_KEY_SIZE);
        *key = buf;
    }
}

static void
op_list(struct in *in)
{
    struct client *c = pick_client(in);
    char kbuf[LOCKD_KEY_SIZE];
    struct rows rs;
    unsigned sent;
    int r;

    rows_init(&rs, c);
    pick_filter(in, &rs.pid, &rs.key, kbuf);
    sent = call_start(c);
    r = lockd_conn_list(&c->conn, rs.pid, rs.key, row_lease, &rs);
    call_check(c, sent, r, "LIST");
    if (r != 0)
        FAIL("LIST: %s", strerror(-r));
    rows_complete(&rs);
    TRACE("LIST uid %u pid %d key %.8s: %u rows\n", c->uid, (int)rs.pid, rs.key ? rs.key : "-",
          rs.n);
    free(rs.seen);
}

/* One LIST page from a cursor, as lockd_conn_list() asks for each page. */
static void
op_list_page(struct in *in)
{
    struct client *c = pick_client(in);
    char kbuf[LOCKD_KEY_SIZE];
    uint8_t kb[PROTO_KEY_BYTES] = {0}, cs = in_u8(in);
    uint64_t cursor, next;
    struct proto_wr wr;
    struct proto_rd rd;
    struct rows rs;
    unsigned sent;
    int r;

    rows_init(&rs, c);
    pick_filter(in, &rs.pid, &rs.key, kbuf);
    cursor = cs & 0x80 ? last_cursor : cs & 0x40 ? in_u64(in) : cs % (H.nlease_slots + 2);
    if (rs.key)
        hex_to_key(rs.key, kb);
    sent = call_start(c);
    conn_begin(&c->conn, &wr, PROTO_LIST, 0);
    wr_i32(&wr, rs.pid);
    wr_u8(&wr, rs.key != NULL);
    wr_put(&wr, kb, sizeof(kb));
    wr_u64(&wr, cursor);
    r = conn_call(&c->conn, &wr, NULL, 0, &rd);
    call_check(c, sent, r, "LIST page");
    CHECK(r == 0);
    next = rd_u64(&rd);
    rs.lo = cursor;
    rs.hi = next ? next : UINT64_MAX;
    if (next && next <= cursor)
        FAIL("LIST page from %llu says the next starts at %llu", (unsigned long long)cursor,
             (unsigned long long)next);
    r = list_rows(&rd, row_lease, &rs);
    if (r != 0)
        FAIL("the client cannot parse a LIST page: %s", strerror(-r));
    rows_complete(&rs);
    if (next && rs.n == 0)
        FAIL("an empty LIST page with a next cursor");
    last_cursor = next;
    TRACE("LIST page uid %u from %llu: %u rows, next %llu\n", c->uid,
          (unsigned long long)cursor, rs.n, (unsigned long long)next);
    free(rs.seen);
}

static int
row_owner(void *userdata, int32_t pid, uint32_t uid, const char *uuid, const char *name,
          uint32_t leases)
{
    struct rows *rs = userdata;
    const struct owner *o = h_owner(pid);
    uint32_t s;
    char ut[37];

    if (!o)
        FAIL("OWNERS row of pid %d, which is no owner", (int)pid);
    s = (uint32_t)(o - H.owners);
    if (!h_visible(rs->c->uid, o))
        FAIL("OWNERS showed uid %u an owner of uid %u", rs->c->uid, o->uid);
    CHECK(s >= rs->lo && s < rs->hi && s < rs->nseen);
    if (rs->seen[s]++)
        FAIL("OWNERS listed pid %d twice", (int)pid);
    uuid_format(o->uuid, ut);
    CHECK(uid == o->uid && strcmp(uuid, ut) == 0 && strcmp(name, o->name ? o->name : "") == 0);
    if (leases != h_held_seen(rs->c->uid, o))
        FAIL("OWNERS: pid %d holds %u for uid %u, it has %u leases (%u lost), %u seen and "
             "held", (int)pid, leases, rs->c->uid, o->nleases, o->nlost,
             h_held_seen(rs->c->uid, o));
    rs->n++;
    return 0;
}

static void
owners_complete(const struct rows *rs)
{
    for (uint32_t s = 0; s < H.nowner_slots; s++)
        if (H.owners[s].pid && h_visible(rs->c->uid, &H.owners[s]) && s >= rs->lo &&
            s < rs->hi && (s >= rs->nseen || !rs->seen[s]))
            FAIL("OWNERS left out pid %d", (int)H.owners[s].pid);
}

static void
op_owners(struct in *in)
{
    struct client *c = pick_client(in);
    uint8_t cs = in_u8(in);
    struct rows rs;
    unsigned sent;
    int r;

    rows_init(&rs, c);
    sent = call_start(c);
    if (!(cs & 1)) {
        r = lockd_conn_owners(&c->conn, row_owner, &rs);
        call_check(c, sent, r, "OWNERS");
        CHECK(r == 0);
    } else {
        uint64_t cursor = cs & 2 ? in_u64(in) : (uint64_t)(cs >> 2) % (H.nowner_slots + 2);
        uint64_t next;
        struct proto_wr wr;
        struct proto_rd rd;

        conn_begin(&c->conn, &wr, PROTO_OWNERS, 0);
        wr_u64(&wr, cursor);
        r = conn_call(&c->conn, &wr, NULL, 0, &rd);
        call_check(c, sent, r, "OWNERS page");
        CHECK(r == 0);
        next = rd_u64(&rd);
        rs.lo = cursor;
        rs.hi = next ? next : UINT64_MAX;
        CHECK(!next || next > cursor);
        r = owner_rows(&rd, row_owner, &rs);
        if (r != 0)
            FAIL("the client cannot parse an OWNERS page: %s", strerror(-r));
    }
    owners_complete(&rs);
    TRACE("OWNERS uid %u: %u rows\n", c->uid, rs.n);
    free(rs.seen);
}

static void
op_status(struct in *in)
{
    struct client *c = pick_client(in);
    uint64_t owners = 0, leases = 0, stored = 0, wo = 0, wl = 0;
    unsigned sent = call_start(c);
    int r = lockd_conn_status(&c->conn, &owners, &leases, &stored);

    call_check(c, sent, r, "STATUS");
    CHECK(r == 0);
    for (uint32_t i = 0; i < H.nowner_slots; i++) {
        const struct owner *o = &H.owners[i];

        if (!o->pid || !h_visible(c->uid, o))
            continue;
        wo++;
        wl += h_held_seen(c->uid, o);
    }
    TRACE("STATUS uid %u: %llu owners %llu leases\n", c->uid, (unsigned long long)owners,
          (unsigned long long)leases);
    if (owners != wo || leases != wl || stored != 0)
        FAIL("STATUS for uid %u: %llu owners %llu leases %llu stored, expected %llu %llu 0",
             c->uid, (unsigned long long)owners, (unsigned long long)leases,
             (unsigned long long)stored, (unsigned long long)wo, (unsigned long long)wl);
}

/* Fuzzed bytes, with fds; the helper owes an answer by the protocol's
 * rules, and the client's decoders must read it. */
static void
op_raw(struct in *in)
{
    static uint8_t msg[PROTO_HDR_SIZE + PROTO_BODY_MAX], rep[PROTO_HDR_SIZE + PROTO_BODY_MAX];
    static struct proto_req req;
    struct client *c = pick_client(in);
    uint8_t flags = in_u8(in);
    size_t nfds = in_u8(in) % 4, len = in_u16(in), i, rn = 0;
    int fds[4], own[4], rfds[PROTO_FDS_MAX], dec, mode, key;
    uint32_t magic = PROTO_MAGIC, blen;
    struct proto_hdr h, rh;
    struct proto_rd body;
    struct item prev[4];
    ssize_t n;

    if (flags & 0x80)
        len %= 64; /* a short body */
    if (!(flags & 0x40))
        len += PROTO_HDR_SIZE; /* else perhaps not even a header */
    if (len > sizeof(msg))
        len = sizeof(msg);
    in_bytes(in, msg, len);
    for (i = 0; i < nfds; i++) {
        fds[i] = pick_fd(in, prev, i, &own[i], &mode, &key);
        prev[i].fd = fds[i];
        prev[i].mode = mode;
    }
    if (len >= PROTO_HDR_SIZE) {
        uint16_t version = PROTO_VERSION, type;
        uint32_t nf = (uint32_t)nfds;
        int32_t status = 0;

        blen = (uint32_t)(len - PROTO_HDR_SIZE);
        if (flags & 1) {
            memcpy(msg, &magic, 4);
            memcpy(msg + 20, &blen, 4);
        }
        if (flags & 2) {
            memcpy(msg + 4, &version, 2);
            memcpy(msg + 12, &status, 4);
        }
        if (flags & 4)
            memcpy(msg + 16, &nf, 4);
        if (flags & 8) {
            type = (uint16_t)(1 + (flags >> 4) % PROTO_STOP);
            memcpy(msg + 6, &type, 2);
            if (type == PROTO_NOTICE)
                memset(msg + 8, 0, 4);
            else if (!memcmp(msg + 8, "\0\0\0", 4))
                msg[8] = 1;
        }
    }
    /* The decoder's verdict, on a copy: the helper's buffer is its own. */
    dec = proto_decode_request(msg, len, nfds, &req);
    memset(&h, 0, sizeof(h));
    if (len >= PROTO_HDR_SIZE)
        memcpy(&h, msg, sizeof(h));

    allow_noreply = 1;
    squeezed = 0;
    if (proto_send(c->conn.sock, msg, len, fds, nfds) < 0)
        FAIL("raw send: %s", strerror(errno));
    n = proto_recv(c->conn.sock, rep, sizeof(rep), rfds, &rn, MSG_CMSG_CLOEXEC);
    allow_noreply = 0;
    TRACE("RAW %zu bytes %zu fds type %u: decoder %d, got %zd\n", len, nfds,
          len >= PROTO_HDR_SIZE ? h.type : 0, dec, n);
    for (i = 0; i < nfds; i++)
        if (own[i])
            safe_close(fds[i]);

    if (len < PROTO_HDR_SIZE || h.magic != PROTO_MAGIC) {
        /* Not lockd talking (or a hang-up): dropped, no answer. */
        if (n != 0 || client_alive(c))
            FAIL("a message that is not lockd's (%zu bytes) got %zd, connection %s", len, n,
                 client_alive(c) ? "kept" : "dropped");
        safe_close(c->conn.sock);
        c->conn.sock = -1;
        client_open((int)(c - clients));
        return;
    }
    if (!client_alive(c))
        FAIL("the helper dropped a connection for a lockd message (type %u)", h.type);
    if (h.type == PROTO_NOTICE) {
        if (n != -ETIMEDOUT)
            FAIL("a NOTICE was answered (%zd)", n);
        return;
    }
    if (n <= 0)
        FAIL("no reply to a raw message of type %u: %zd", h.type, n);
    CHECK(rn == 0);
    if (proto_parse_hdr(rep, (size_t)n, 0, &rh, &body) != 0)
        FAIL("the client cannot parse a reply's header");
    if (rh.version != PROTO_VERSION || rh.type != h.type || rh.serial != h.serial)
        FAIL("reply type %u serial %u version %u to type %u serial %u", rh.type, rh.serial,
             rh.version, h.type, h.serial);
    if (squeezed && rh.status == -EMFILE)
        return;
    if (dec < 0 && rh.status != dec)
        FAIL("a request the decoder refuses (%s) was answered %d", strerror(-dec), rh.status);
    if (rh.status < 0) {
        CHECK(rh.len == 0 && rh.status >= -4095);
        return;
    }
    CHECK(dec == 0 && rh.status == 0);
    switch (h.type) {
    case PROTO_REGISTER:
        CHECK(body.left == 0);
        break;
    case PROTO_HANDOFF:
        for (i = 0; i < nfds; i++) {
            uint64_t id = rd_u64(&body);

            if (h_lease_by_id(id) == NONE)
                FAIL("raw HANDOFF answered id %llx, which is no lease",
                     (unsigned long long)id);
            id_note(id);
        }
        CHECK(!body.bad && body.left == 0);
        break;
    case PROTO_RELEASE:
    case PROTO_FORGET:
        (void)rd_u32(&body);
        CHECK(!body.bad && body.left == 0);
        break;
    case PROTO_LIST: {
        struct rows rs;
        uint64_t next;

        rows_init(&rs, c);
        rs.pid = req.pid;
        next = rd_u64(&body);
        if (list_rows(&body, row_lease, &rs) != 0)
            FAIL("the client cannot parse a LIST reply");
        (void)next;
        free(rs.seen);
        break;
    }
    case PROTO_OWNERS: {
        struct rows rs;

        rows_init(&rs, c);
        (void)rd_u64(&body);
        if (owner_rows(&body, row_owner, &rs) != 0)
            FAIL("the client cannot parse an OWNERS reply");
        free(rs.seen);
        break;
    }
    case PROTO_STATUS:
        (void)rd_u64(&body), (void)rd_u64(&body), (void)rd_u64(&body);
        CHECK(!body.bad && body.left == 0);
        break;
    case PROTO_STOP:
        CHECK(body.left == 0 && c->uid == 0);
        if (!H.quit || H.nowners || H.nleases)
            FAIL("a raw STOP answered 0 but the helper goes on");
        H.quit = 0;
        stopped = 1;
        break;
    default:
        FAIL("type %u decoded", h.type);
    }
}

/* The client drops or takes back the lock through its own copy. */
static void
op_lock(struct in *in, int unlock)
{
    const struct master *m = &masters[in_u8(in) % NMASTER];
    short type = m->mode == LOCKD_SHARED ? F_RDLCK : F_WRLCK;

    (void)lease_lock(m->fd, F_OFD_SETLK, unlock ? F_UNLCK : type, NULL);
}

/* The periodic check, due now: afterwards no lease whose lock is gone may
 * be counted as held. */
static void
op_sweep(void)
{
    H.check_due_ns = 0;
    H.sweep_at = NONE;
    on_timers();
    for (uint32_t s = 0; s < H.nlease_slots; s++) {
        const struct lease *l = &H.leases[s];

        if (l->gen && !l->lost && !truth_locked(l->fd, l->mode))
            FAIL("after a sweep, lease slot %u is held without its lock", s);
    }
}

static void
op_spawn(struct in *in)
{
    struct proc *p = &procs[P_SPAWN];
    uid_t uid = in_u8(in) & 1 && have_user ? USER_UID : getuid();

    if (p->alive)
        return; /* the one from an earlier run, whatever its uid */
    if (p->pidfd >= 0)
        child_reap(p);
    spawn_start(p, uid);
}

/* The spawned child exits: the helper's loop must release its owner.
 * Only with the operand 'K': each costs a new process at the next SPAWN. */
static void
op_kill(struct in *in)
{
    struct proc *p = &procs[P_SPAWN];
    struct owner *o;

    if (in_u8(in) != 'K' || !p->alive)
        return;
    child_end(p);
    pump();
    o = h_owner(p->pid);
    if (o)
        FAIL("owner pid %d exited but the helper still holds it (%u leases)", (int)p->pid,
             o->nleases);
}

/* STOP: root only, refused while owners hold leases unless forced; then
 * every lease is released and the helper's loop ends (the run ends too). */
static int
op_stop(struct in *in)
{
    struct client *c = pick_client(in);
    int force = in_u8(in) & 1, busy = 0, want = 0, held[NMASTER], r;
    unsigned sent;

    for (uint32_t i = 0; i < H.nowner_slots; i++)
        busy |= H.owners[i].pid && H.owners[i].nleases > 0;
    for (int m = 0; m < NMASTER; m++)
        held[m] = h_lease_on(masters[m].fd) != NONE;
    if (c->uid != 0)
        want = -EPERM;
    else if (busy && !force)
        want = -EBUSY;
    sent = call_start(c);
    r = lockd_conn_stop(&c->conn, force);
    call_check(c, sent, r, "STOP");
    TRACE("STOP uid %u force %d: %d\n", c->uid, force, r);
    if (r != want)
        FAIL("STOP from uid %u, force %d, owners busy %d: %s, expected %s", c->uid, force,
             busy, strerror(-r), strerror(-want));
    if (r < 0) {
        CHECK(!H.quit);
        return 0;
    }
    if (!H.quit || H.nowners || H.nleases)
        FAIL("STOP answered 0 but the helper goes on (quit %d, %u owners, %u leases)", H.quit,
             H.nowners, H.nleases);
    for (int m = 0; m < NMASTER; m++)
        if (held[m] && truth_locked(masters[m].fd, masters[m].mode))
            FAIL("STOP left the lock of master %d held", m);
    H.quit = 0;
    stopped = 1;
    return 1;
}

/* RECONNECT: a client hangs up and comes back; or another connection of
 * its uid is tried, which conn_add() must refuse past the uid's cap (root's
 * room is kept), and is dropped again at once. */
static void
op_reconnect(struct in *in)
{
    uint8_t b = in_u8(in);
    int i = b & 1, sv[2], r, want;
    struct uid_count *u;

    if (!(b & 2)) {
        client_close(i);
        client_open(i);
        return;
    }
    if (i == 1 && have_user)
        user_pair(sv);
    else if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        FAIL("socketpair");
    u = h_uid(clients[i].uid);
    want = clients[i].uid != 0 && u &&
                   (u->conns >= H.user_conns || H.nconns >= CONN_MAX - ROOT_CONNS)
               ? -EUSERS
               : 0;
    r = conn_add(sv[0]);
    if (r > 0)
        r = 0; /* its slot */
    TRACE("extra connection of uid %u: %d\n", clients[i].uid, r);
    if (r != want)
        FAIL("conn_add for uid %u: %s, expected %s", clients[i].uid, strerror(-r),
             strerror(-want));
    if (r == 0) {
        for (int k = 0; k < CONN_MAX; k++)
            if (H.conns[k].fd == sv[0])
                conn_drop(&H.conns[k]);
    } else
        safe_close(sv[0]);
    safe_close(sv[1]);
}

/* ------------------------------------------------------------------------
 * Set-up, runs, clean-up
 */

enum {
    OP_REGISTER,
    OP_HANDOFF,
    OP_RELEASE,
    OP_LIST,
    OP_NOTICE,
    OP_FORGET,
    OP_LIST_PAGE,
    OP_OWNERS,
    OP_STATUS,
    OP_RAW,
    OP_UNLOCK,
    OP_RELOCK,
    OP_SWEEP,
    OP_SPAWN,
    OP_KILL,
    OP_RECONNECT,
    OP_BULK,
    OP_STOP,
    OP_SQUEEZE,
    NOPS
};

static void
space_remove(void)
{
    DIR *d = space_dir[0] ? opendir(space_dir) : NULL;
    struct dirent *e;

    if (!d)
        return;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' || (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")))
            (void)unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
    (void)rmdir(space_dir);
}

static void
seed_write(const char *dir, const char *name, const uint8_t *p, size_t n)
{
    char path[4096];
    FILE *f;

    snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
    f = fopen(path, "wb");
    if (!f)
        return;
    fwrite(p, 1, n, f);
    fclose(f);
}

static void
seed_corpus(const char *dir)
{
    /* Operands follow each operation in the order its op_*() reads them.
     * REGISTER ourselves (client 0, no pidfd, no uuid, empty name); HANDOFF
     * exclusive masters 0 and 1; LIST; OWNERS; STATUS; RELEASE the first id;
     * FORGET with no ids; NOTICE of an id; RELEASE all. */
    static const uint8_t basic[] = {
        0x00,
        OP_REGISTER, 0, 0, 0, P_SELF, 0,
        OP_HANDOFF, 0, P_SELF, 1, 0, 0, 0, 0, 0, 1, 0, 0,
        OP_LIST, 0, 0,
        OP_OWNERS, 0, 0,
        OP_STATUS, 0,
        OP_RELEASE, 0, P_SELF, 1, 0,
        OP_FORGET, 0, P_SELF, 0,
        OP_NOTICE, 0, P_SELF, 1, 1,
        OP_RELEASE, 0, P_SELF, 0,
    };
    /* The uid-1000 client registers its child and hands over a shared
     * lease; root lists it; the lock goes and the lease must show LOST; a
     * sweep; the same hand-over again once the lock is back. */
    static const uint8_t user[] = {
        0x00,
        OP_REGISTER, 1, 0, 0, P_USER, 0,
        OP_HANDOFF, 1, P_USER, 0, 3, NEXCL + 2, 0, 0,
        OP_LIST, 0, 0,
        OP_UNLOCK, NEXCL + 2,
        OP_LIST, 1, 0,
        OP_SWEEP,
        OP_STATUS, 1,
        OP_OWNERS, 0, 0,
        OP_RELOCK, NEXCL + 2,
        OP_HANDOFF, 1, P_USER, 0, 3, NEXCL + 2, 0, 0,
        OP_STATUS, 0,
    };
    /* A child registered with its pidfd, handed a lease, ended. */
    static const uint8_t spawn[] = {
        0x00,
        OP_SPAWN, 0,
        OP_REGISTER, 0, 1, 0, P_SPAWN, 0,
        OP_HANDOFF, 0, P_SPAWN, 0, 0, 2, 0, 0,
        OP_KILL, 'K',
        OP_OWNERS, 0, 0,
        OP_STATUS, 0,
    };
    /* Bulk: a hand-over in several messages, a LIST in several pages. */
    static const uint8_t bulk[] = {
        0x00,
        OP_REGISTER, 0, 0, 0, P_CHILD, 0,
        OP_BULK, 0, P_CHILD, 0,
        OP_LIST_PAGE, 0, 0, 0,
        OP_LIST_PAGE, 0, 0x80, 0,
        OP_LIST, 0, 0,
        OP_BULK, 0, P_CHILD, 0,
        OP_RELEASE, 0, P_CHILD, 0,
        OP_BULK, 0, P_CHILD, 2 * (NSHARED - 1) + 1,
    };
    /* Raw: a REGISTER of pid 1, framed by the flags. */
    static const uint8_t raw[] = {
        0x00,
        OP_RAW, 0, 0x0f, 0, 4 + 16 + 2, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        OP_OWNERS, 0, 0,
    };

    seed_write(dir, "basic", basic, sizeof(basic));
    seed_write(dir, "user", user, sizeof(user));
    seed_write(dir, "spawn", spawn, sizeof(spawn));
    seed_write(dir, "bulk", bulk, sizeof(bulk));
    seed_write(dir, "raw", raw, sizeof(raw));
}

static void
relock_all(void)
{
    for (int m = 0; m < NMASTER; m++) {
        short type = masters[m].mode == LOCKD_SHARED ? F_RDLCK : F_WRLCK;
        int r = lease_lock(masters[m].fd, F_OFD_SETLK, type, NULL);

        if (r < 0)
            FAIL("cannot lock master %d again: %s (a lease left behind?)", m, strerror(-r));
    }
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = corpus_dir(*argc, *argv);
    int r;

    /* The helper logs each refusal; libFuzzer and ASan write to fd 2
     * themselves, so only stdio's stderr is silenced. */
    stderr = fopen("/dev/null", "w");
    trace = getenv("FUZZ_DISPATCH_TRACE") != NULL;
    signal(SIGPIPE, SIG_IGN);
    H.pid = getpid();
    for (int i = 0; i < CONN_MAX; i++)
        H.conns[i].fd = -1;
    for (int i = 0; i < RESERVE_FDS; i++)
        H.reserve[i] = -1;
    raise_nofile();
    H.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    H.fdinfo_dir = open("/proc/self/fdinfo", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (H.epoll_fd < 0 || H.fdinfo_dir < 0 || probe_setup() < 0)
        FAIL("set-up: %s", strerror(errno));
    reserve_fill();
    H.notify = 0;
    H.store_on = 0;
    H.id_epoch = UINT64_C(0x5a5a5a5a5a5) & ID_GEN_MASK;
    clients[0].conn.sock = clients[1].conn.sock = -1;
    clients[0].hfd = clients[1].hfd = -1;

    /* The lockspace and the leases every run hands over. */
    snprintf(space_dir, sizeof(space_dir), "/tmp/fuzz-dispatch-XXXXXX");
    if (!mkdtemp(space_dir))
        FAIL("mkdtemp");
    atexit(space_remove);
    __sanitizer_set_death_callback(space_remove);
    r = lockd_space_open(space_dir, LOCKD_OPEN_CREATE, &space);
    if (r < 0)
        FAIL("lockd_space_open: %s", strerror(-r));
    for (int k = 0; k < NKEYS; k++) {
        char name[16];

        snprintf(name, sizeof(name), "disk-%d", k);
        CHECK(lockd_key_resource(name, strlen(name), keys[k]) == 0);
    }
    for (int m = 0; m < NMASTER; m++) {
        const char *key;
        int mode = m < NEXCL ? LOCKD_EXCLUSIVE : LOCKD_SHARED;
        lockd_lease *l;

        masters[m].key = m < NEXCL ? m : NEXCL;
        masters[m].mode = mode;
        key = keys[masters[m].key];
        r = lockd_acquire(space, 1, &key, &mode, LOCKD_TRY, &l);
        if (r < 0)
            FAIL("lockd_acquire: %s", strerror(-r));
        masters[m].fd = lockd_lease_fd(l, 0);
        free(l); /* keep the fd: it is the description we hand over */
    }

    /* The processes owners can be. */
    for (int i = 0; i < NPROCS; i++)
        procs[i] = (struct proc){.pid = 0x3ffffff0, .pidfd = -1, .ctl = -1};
    procs[P_SELF] = (struct proc){getpid(), xpidfd_open(getpid()), getuid(), 1, -1};
    have_user = getuid() == 0;
    child_start(&procs[P_CHILD], getuid(), 1);
    if (have_user)
        child_start(&procs[P_USER], USER_UID, 1);
    else
        procs[P_USER] = procs[P_CHILD];
    {
        pid_t z = fork();

        if (z == 0)
            _exit(0);
        procs[P_ZOMBIE] = (struct proc){z, -1, getuid(), 0, -1};
        while (waitid(P_PID, (id_t)z, &(siginfo_t){0}, WEXITED | WNOWAIT) < 0 && errno == EINTR)
            ;
        procs[P_ZOMBIE].pidfd = xpidfd_open(z);
    }
    procs[P_INIT] = (struct proc){1, xpidfd_open(1), 0, 1, -1};
    if (proc_real_uid(1, &procs[P_INIT].uid) < 0 || procs[P_INIT].pidfd < 0)
        procs[P_INIT].alive = 0;
    CHECK(procs[P_SELF].pidfd >= 0);
    if (dir && dir_empty(dir))
        seed_corpus(dir);
    return 0;
}

static void
run_end(void)
{
    int i;

    for (uint32_t s = 0; s < H.nowner_slots; s++)
        if (H.owners[s].pid)
            owner_free(&H.owners[s], "fuzz");
    for (i = 0; i < 2; i++) {
        struct conn *hc = client_hconn(&clients[i]);

        if (hc)
            conn_drop(hc);
        safe_close(clients[i].conn.sock);
        clients[i].conn.sock = -1;
        clients[i].hfd = -1;
    }
    safe_close(run_pipe[0]);
    safe_close(run_pipe[1]);
    run_pipe[0] = run_pipe[1] = -1;
    if (procs[P_SPAWN].pidfd >= 0 && !procs[P_SPAWN].alive)
        child_reap(&procs[P_SPAWN]);
    if (H.nleases || H.nowners || H.nlost || H.nconns)
        FAIL("after clean-up: %u leases %u owners %u lost %u conns", H.nleases, H.nowners,
             H.nlost, H.nconns);
    if (ofd_check() != 0 || O.used != 0)
        FAIL("the description index keeps entries after every lease is gone");
    for (uint32_t k = 0; k < H.nuids; k++)
        if (H.uids[k].leases || H.uids[k].owners || H.uids[k].conns)
            FAIL("uid %u keeps counts after clean-up", H.uids[k].uid);
    /* Back to a helper that has just started, so that runs repeat. */
    free(O.tab);
    for (uint32_t g = 0; g < O.ngroups; g++)
        CHECK(!O.groups[g].slots);
    free(O.groups);
    free(O.free_groups);
    memset(&O, 0, sizeof(O));
    free(H.leases);
    H.leases = NULL;
    H.lease_cap = H.nlease_slots = 0;
    H.lease_free = NONE;
    free(H.owners);
    H.owners = NULL;
    H.nowner_slots = H.owner_hint = 0;
    free(H.uids);
    H.uids = NULL;
    H.nuids = 0;
    H.next_gen = 1;
    H.sweep_at = NONE;
    H.check_due_ns = 0;
    H.verbose = 0;
    H.user_leases = LEASES_PER_USER;
    H.user_owners = OWNERS_PER_USER;
    H.user_conns = CONNS_PER_USER;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct in in = {data, size};
    static uint8_t seen_before[FD_SEEN], seen_after[FD_SEEN];
    int fds_before = count_fds(seen_before) - kept_fds, fds_after, nops;
    uint8_t hdr = in_u8(&in);

    relock_all();
    H.verbose = hdr & 1;
    if (hdr & 0x20) { /* a tiny description index: collisions, growth */
        free(O.tab);
        O.cap = 2u << (hdr >> 6);
        O.tab = malloc(O.cap * sizeof(*O.tab));
        if (!O.tab)
            FAIL("malloc");
        memset(O.tab, 0xff, O.cap * sizeof(*O.tab));
    }
    if (hdr & 2) { /* small caps, so that a uid can reach them */
        H.user_leases = 1 + (hdr >> 2) % 4;
        H.user_owners = 1;
        H.user_conns = 1;
    }
    nids = 0;
    squeeze = 0;
    last_cursor = 0;
    stopped = 0;
    client_open(0);
    client_open(1);
    for (nops = 0; in.n && nops < MAX_OPS; nops++) {
        switch (in_u8(&in) % NOPS) {
        case OP_REGISTER: op_register(&in); break;
        case OP_HANDOFF: op_handoff(&in); leases_added = 1; break;
        case OP_RELEASE: op_release(&in, PROTO_RELEASE); break;
        case OP_NOTICE: op_release(&in, PROTO_NOTICE); break;
        case OP_FORGET: op_release(&in, PROTO_FORGET); break;
        case OP_LIST: op_list(&in); break;
        case OP_LIST_PAGE: op_list_page(&in); break;
        case OP_OWNERS: op_owners(&in); break;
        case OP_STATUS: op_status(&in); break;
        case OP_RAW: op_raw(&in); leases_added = 1; break;
        case OP_UNLOCK: op_lock(&in, 1); break;
        case OP_RELOCK: op_lock(&in, 0); break;
        case OP_SWEEP: op_sweep(); break;
        case OP_SPAWN: op_spawn(&in); break;
        case OP_KILL: op_kill(&in); break;
        case OP_RECONNECT: op_reconnect(&in); break;
        case OP_BULK: op_bulk(&in); leases_added = 1; break;
        case OP_STOP: op_stop(&in); break;
        case OP_SQUEEZE: squeeze = 1 + in_u8(&in) % 4; break;
        }
        client_idle(&clients[0]);
        client_idle(&clients[1]);
        check_state();
        CHECK(!H.quit);
        if (stopped)
            break; /* the helper exits after that reply */
    }
    run_end();
    fds_after = count_fds(seen_after) - kept_fds;
    if (fds_after != fds_before)
        fds_leaked(seen_before, seen_after);
    if (fds_after != fds_before)
        FAIL("%d fds open after the run, %d before", fds_after, fds_before);
    return 0;
}
