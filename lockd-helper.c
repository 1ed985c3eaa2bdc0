/* SPDX-License-Identifier: MIT */
/*
 * lockd-helper: holds lease fds for guest processes, so that no lease is
 * lost when the manager that took it crashes, when the helper re-execs, or
 * (with systemd's fd store) when the helper itself crashes.
 *
 * The helper never takes a lock and never opens a lease path.  A manager
 * acquires leases with the library, in its own process, and hands their fds
 * over; the helper checks each (a regular file carrying an OFD lock of the
 * announced mode, per /proc/self/fdinfo) and keeps it until the owner (the
 * guest process, watched through a pidfd) exits or a manager releases it.
 * Releasing is F_UNLCK then close: a close alone frees nothing while another
 * copy of the open file description exists.
 *
 * It is one thread around one epoll loop, and every handler is bounded and
 * non-blocking, so no client ever waits on another (virtlockd stalls every
 * client for seconds while it cleans up after a dead guest).
 *
 * lockd.c is built into this file: the wire codec lives there, once.
 */
#define LOCKD_PROTO_SERVER 1
static void fd_dispose(int fd, int unlock);
#define LOCKD_RECEIVED_CLOSE(fd) fd_dispose((fd), 0)
#include "lockd.c" /* NOLINT(bugprone-suspicious-include): built in, on purpose */
#include "lockd-helper-fs.h"

#include <getopt.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <spawn.h>

#include <linux/kcmp.h>
#include <linux/sockios.h>

#include <systemd/sd-daemon.h>

#include "lockd-keeper.h"

#define CONN_MAX        1024
#define LEASES_PER_UID  65536 /* root */
/* Defaults of what one uid other than root may hold (--user-leases,
 * --user-owners, --user-connections); and what is kept for root alone. */
#define LEASES_PER_USER 4096
#define OWNERS_PER_USER 1024
#define CONNS_PER_USER  64
#define ROOT_CONNS      64   /* of CONN_MAX, never given to other uids */
#define ROOT_FDS        1024 /* of RLIMIT_NOFILE, never given to other uids */
/* Refusals logged per uid: a burst of LOG_BURST lines, then one each
 * LOG_INTERVAL_NS; the rest are counted and the count logged later. */
#define LOG_BURST       20
#define LOG_INTERVAL_NS (100 * 1000000LL)
#define RESERVE_FDS     8     /* kept open to answer -EMFILE when out of fds */
#define EXIT_KEEP       75    /* exited on SIGTERM with leases in the fd store */
#define LIST_PAGE_BYTES (PROTO_BODY_MAX - 4096)
#define STATE_ENV       "LOCKD_HELPER_STATE_FD"
#define NONE            UINT32_MAX
#define LEASE_SLOTS_MAX (1u << 20) /* more than any fd limit allows leases */

/* epoll tags: kind in the top byte, an index below. */
#define TAG_LISTEN (1ull << 56)
#define TAG_SIGNAL (2ull << 56)
#define TAG_CONN   (3ull << 56)
#define TAG_OWNER  (4ull << 56)
#define TAG_SELFTEST (5ull << 56)
#define TAG_WATCH  (6ull << 56)
#define TAG_HOOK   (7ull << 56)
#define TAG_MASK   (0xffull << 56)

/*
 * A lease the helper holds: 88 bytes plus its disk name, so 19,000 leases
 * fit in about 1.7 MiB.  Its id (lease_id()) is its generation, offset by
 * the epoch, above its slot: gen comes from one counter that only grows (and
 * is carried across re-exec and crashes), so a stale release notice cannot
 * touch a newer lease.
 */
struct lease {
    uint64_t gen;   /* 0: slot free; never reused, never wraps */
    int fd;
    uint32_t owner; /* owner slot */
    uint32_t uid;   /* of the client that handed it over: it sees, releases,
                     * and is counted for this lease (root: all) */
    uint32_t prev, next; /* the owner's list; free list through next */
    uint8_t mode;
    uint8_t rdev;   /* watched through its filesystem: H.rdevs[rdev - 1]; 0: not */
    uint8_t named : 1;  /* in systemd's fd store under its own name (older releases) */
    uint8_t lost : 1;   /* a check found its lock gone (lease_mark_lost()) */
    uint8_t local : 1;  /* seen at its hand-over on a filesystem whose close
                         * never waits (fsw_close_is_local()): closed on the loop */
    uint8_t asked : 1;  /* its lock was proven by asking a FUSE server
                         * (fd_has_lease() PROVE_ASK), not read in fdinfo */
    uint32_t stash_seq; /* the fd stash's message that holds a copy; 0: none */
    uint32_t space; /* its lockspace directory: space_intern(), or SPACE_* */
    uint64_t ino;   /* its file's inode number, for the OFD index */
    uint8_t key[PROTO_KEY_BYTES];
    char *disk;
};

struct owner {
    int32_t pid; /* 0: slot free */
    uint64_t gen; /* unique, like a lease's: names its pidfd in the fd store */
    uint32_t uid; /* of the client that registered it */
    int pidfd;
    uint32_t head; /* first lease */
    uint32_t nleases, nlost; /* nlost of the nleases are lost */
    uint8_t named; /* pidfd in the fd store under its own name (older releases) */
    uint8_t on_loss; /* LOCKD_ON_LOSS_*: what owner_act() does */
    uint8_t acted;   /* it did it: once per owner */
    int64_t act_due_ns; /* a loss found in fdinfo: act then if still lost; 0: none */
    int act_err;        /* the loss's error for that late action (0: fdinfo's) */
    uint32_t stash_seq; /* as a lease's */
    uint32_t hook_uid;  /* who registered the hook: it runs as that uid */
    uint8_t uuid[PROTO_UUID_BYTES];
    char *name;
    char *hook; /* the command of LOCKD_ON_LOSS_EXEC and _EXEC_OR_KILL */
};

struct conn {
    int fd; /* -1: slot free */
    uint32_t uid;
    int32_t pid;
    /* The lockspace it showed (SPACE): each fd it hands over must be the
     * file of its key in that directory.  NULL: none shown. */
    char *space_path;
    uint64_t space_dev, space_ino, space_mnt;
    int direct; /* it showed no lockspace (SPACE without an fd): direct leases */
    int named;  /* the lockspace names files after devices (lvm, scsi): a key
                 * is the SHA-256 of the file's name */
    /* That directory, kept when its filesystem is local (fsw_close_is_local():
     * a lookup there never waits for a server), else -1. */
    int space_fd;
};

/* A lease's space when its connection showed no lockspace: it matches no
 * lockspace a listing asks for.  SPACE_ANY: restored from an older state,
 * which did not record one: it matches every lockspace. */
#define SPACE_ANY  0
#define SPACE_NONE UINT32_MAX

/* A filesystem whose leases the watch checks through it (lease_watch()). */
struct rdev {
    uint64_t dev;
    uint32_t nleases;   /* watched leases on it: held, not lost */
    uint32_t cursor;    /* the lease slot the next batch starts from */
    uint32_t left;      /* leases still to check this period (or in a full pass,
                         * after a loss was found), in batches */
    uint32_t batch;     /* the batch it waits for; 0: none */
    int64_t queued_ns, due_ns;
    uint8_t how;        /* FSW_WATCH_* */
    uint8_t overdue;    /* that batch is past the deadline: its leases are lost */
};

/* A hook running (owner_act()): killed at due_ns. */
struct hook {
    pid_t pid;
    int pidfd;
    int64_t due_ns;
    int32_t owner_pid;
    uint64_t owner_gen; /* the owner's, so that a reused pid is not taken for it */
};

#define RDEV_MAX  64
#define HOOKS_MAX 64

struct uid_count {
    uint32_t uid, leases, owners, conns;
    int64_t log_tat_ns;   /* log_refusal()'s rate limit */
    uint64_t log_dropped; /* refusals not logged since the last one that was */
};

static struct {
    /* configuration */
    const char *socket_path;
    mode_t socket_mode;
    int timeout_sec;
    int verbose;
    uint32_t store_max;        /* the unit's FileDescriptorStoreMax= */
    uint32_t store_leases_max; /* how many leases the stash may cover */
    uint32_t user_leases, user_owners, user_conns; /* caps per uid but root */
    uint32_t fd_limit; /* RLIMIT_NOFILE, after raising it */
    char *self_path;
    char **argv;
    uint8_t *keeper_args; /* argv[i] was --keeper: the keeper's child runs without */

    /* fds */
    int listen_fd, epoll_fd, signal_fd, fdinfo_dir;
    int probe_fd, probe_info, null_fd; /* see fd_has_lease() */
    int bound; /* we bound socket_path ourselves: unlink it at exit */
    int reserve[RESERVE_FDS];

    /* state */
    struct lease *leases;
    uint32_t lease_cap;    /* slots allocated */
    uint32_t nlease_slots; /* slots initialised: in use or on the free list */
    uint32_t lease_free, nleases, nlost;
    int64_t check_due_ns; /* when the next sweep starts (sweep_step()) */
    int64_t check_period_ns, check_timeout_ns, hook_timeout_ns; /* --check-*, --hook-timeout */
    struct rdev rdevs[RDEV_MAX];
    uint32_t nrdevs, watch_batches;
    int64_t watch_due_ns; /* the next watch_step() that has something to do */
    int answer_fd;        /* fsw_answer_fd() */
    struct hook hooks[HOOKS_MAX];
    uint32_t nhooks;
    uint32_t nact_due; /* owners whose act_due_ns is set */
    uint32_t sweep_at;    /* the next slot it checks; NONE: no sweep under way */
    uint32_t owner_hint;   /* the owner found last: requests come in runs */
    uint64_t next_gen;
    uint64_t id_epoch; /* random at a cold start: see lease_id() */
    struct owner *owners;
    uint32_t nowner_slots, nowners;
    struct conn conns[CONN_MAX];
    uint32_t nconns;
    struct uid_count *uids;
    uint32_t nuids;
    struct {
        uint64_t dev, ino;
    } *spaces; /* the lockspaces leases were handed over in; see space_intern() */
    uint32_t nspaces;

    /* systemd */
    int notify; /* NOTIFY_SOCKET is set */
    uint64_t watchdog_usec;
    int64_t last_watchdog_ns, status_due_ns, idle_since_ns;
    int status_dirty;
    int fs_watch;      /* an fd is still queued for its filesystem: fs_check() */
    int64_t reexec_retry_ns; /* a re-exec waits for those queues to empty */
    int64_t fs_check_ns;
    int nstuck;        /* filesystems fs_check() found stuck */
    int store_on; /* fd store in use */
    int store_full_logged;
    uint32_t store_leases; /* leases in the stash */
    int stash_tx, stash_rx; /* the stash: see "systemd's fd store" */
    uint64_t stash_name;    /* stored as "S<stash_name>" */
    int stash_sndbuf;
    struct stash_msg *stash_msgs; /* a ring: the queued messages, in order */
    uint32_t stash_cap, stash_head, stash_count, stash_next_seq;
    uint32_t stash_live, stash_dead; /* entries, over all queued messages */
    int stash_due, stash_urgent;     /* compact: soon; before the next answer */
    struct {
        uint64_t name;
        int fd;
    } old_stash[8]; /* adopted or a previous image's: removed once replaced */
    uint32_t nold_stash;
    int state_fd;       /* the store's state memfd, -1 if none */
    uint64_t state_start, state_end;

    pid_t pid; /* ours, for kcmp() */
    pid_t selftest_pid; /* the successor's --self-test, before a re-exec */
    int selftest_pidfd; /* -1: none under way */
    int64_t selftest_due_ns;
    int quit, reexec, reexec_go; /* asked for; self-test passed */
    int quit_signal; /* SIGTERM or SIGINT, not a STOP request or --timeout */
    int restoring; /* state_restore() is linking leases */
    int compact_due; /* the fd store's state log has grown: compact it */
    int listen_paused; /* out of fds: not accepting until the reserve refills */
    /* A decoded request points into `in`, so replies are written to `out`:
     * a reply never overwrites what it answers.  (State snapshots have a
     * buffer of their own, and are taken between events.) */
    uint8_t in[PROTO_HDR_SIZE + PROTO_BODY_MAX];
    struct proto_req req; /* the request decoded from `in` */
    uint8_t out[PROTO_HDR_SIZE + PROTO_BODY_MAX];
} H = {.listen_fd = -1, .epoll_fd = -1, .signal_fd = -1, .fdinfo_dir = -1, .state_fd = -1,
       .probe_fd = -1, .probe_info = -1, .null_fd = -1, .selftest_pidfd = -1,
       .stash_tx = -1, .stash_rx = -1, .stash_next_seq = 1, .store_leases_max = UINT32_MAX,
       .check_period_ns = 1000000000LL, .check_timeout_ns = 5000000000LL,
       .hook_timeout_ns = 30000000000LL, .answer_fd = -1,
       .lease_free = NONE, .sweep_at = NONE, .next_gen = 1, .socket_mode = 0600,
       .user_leases = LEASES_PER_USER, .user_owners = OWNERS_PER_USER,
       .user_conns = CONNS_PER_USER, .fd_limit = 1024};

/* ------------------------------------------------------------------------
 * Logging: one line each, with the sd-daemon priority prefix journald reads.
 */

/*
 * Owner names, disk names and paths come from clients: a newline in one
 * would start a line of the client's choosing ("<0>..." reads as an
 * emergency to journald).  So every control byte and backslash of the
 * formatted line is written as \xHH: one event, one line, whatever it names.
 */
static void __attribute__((format(printf, 2, 3)))
log_line(int prio, const char *fmt, ...)
{
    static char buf[2 * LOCKD_NAME_MAX + 1024], out[4 * sizeof(buf) + 8];
    static int tty = -1;
    size_t n;
    va_list ap;

    if (prio >= 7 && !H.verbose)
        return;
    va_start(ap, fmt);
    /* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized): a false positive */
    (void)vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* The "<3>" journald reads is noise on a terminal. */
    if (tty < 0)
        tty = isatty(STDERR_FILENO);
    n = tty ? 0 : (size_t)snprintf(out, sizeof(out), "<%d>", prio);
    n = log_escape(out, sizeof(out), n, buf);
    out[n++] = '\n';
    /* One write per line: stderr is unbuffered. */
    (void)fwrite(out, 1, n, stderr);
}

#define PLURAL(n) ((n) == 1 ? "" : "s")

#define log_err(...)    log_line(3, __VA_ARGS__)
#define log_warn(...)   log_line(4, __VA_ARGS__)
#define log_notice(...) log_line(5, __VA_ARGS__)
#define log_info(...)   log_line(6, __VA_ARGS__)
#define log_debug(...)  log_line(7, __VA_ARGS__)

static struct uid_count *uid_find(uint32_t uid, int create);

/*
 * A refusal of a request from uid (or another line a client can cause at
 * will, such as a lost lease of its own), logged at prio: at most LOG_BURST lines
 * at once and one per LOG_INTERVAL_NS after that, per uid, so that one
 * client cannot flood the journal (or drown another uid's refusals); the
 * lines left out are counted, and the count goes with the next one logged.
 */
static void __attribute__((format(printf, 3, 4)))
log_refusal(uint32_t uid, int prio, const char *fmt, ...)
{
    static char buf[2 * LOCKD_NAME_MAX + 512];
    struct uid_count *u = uid_find(uid, 1);
    int64_t now = now_ns();
    va_list ap;

    if (u) {
        if (u->log_tat_ns < now)
            u->log_tat_ns = now;
        if (u->log_tat_ns - now > LOG_BURST * LOG_INTERVAL_NS) {
            u->log_dropped++;
            return;
        }
        u->log_tat_ns += LOG_INTERVAL_NS;
    }
    va_start(ap, fmt);
    /* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized): a false positive */
    (void)vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (u && u->log_dropped) {
        log_line(prio, "%s (and %llu more refusals of uid %u not logged)", buf,
                 (unsigned long long)u->log_dropped, uid);
        u->log_dropped = 0;
    } else
        log_line(prio, "%s", buf);
}

/* ------------------------------------------------------------------------
 * Small tools
 */

static int
set_cloexec(int fd, int on)
{
    int fl = fcntl(fd, F_GETFD);

    if (fl < 0)
        return negerrno();
    fl = on ? fl | FD_CLOEXEC : fl & ~FD_CLOEXEC;
    return fcntl(fd, F_SETFD, fl) < 0 ? negerrno() : 0;
}

static int
xpidfd_open(pid_t pid)
{
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);

    return fd < 0 ? negerrno() : fd;
}

/* Whether the process behind a pidfd has exited: its pidfd polls readable. */
static int
pidfd_dead(int pidfd)
{
    struct pollfd p = {.fd = pidfd, .events = POLLIN};

    return poll(&p, 1, 0) > 0;
}

/* Read /proc/self/fdinfo/<fd> into buf (NUL-terminated). */
static int
fdinfo_read(int fd, char *buf, size_t size)
{
    char name[16];
    ssize_t n;
    int f;

    snprintf(name, sizeof(name), "%d", fd);
    f = open_retry(H.fdinfo_dir, name, O_RDONLY | O_CLOEXEC, 0);
    if (f < 0)
        return f;
    do
        n = read(f, buf, size - 1);
    while (n < 0 && errno == EINTR);
    safe_close(f);
    if (n < 0)
        return negerrno();
    buf[n] = '\0';
    return 0;
}

/* The pid a pidfd refers to, from its fdinfo "Pid:" line. */
static int32_t
pidfd_pid(int pidfd)
{
    char buf[1024], *p;
    int r = fdinfo_read(pidfd, buf, sizeof(buf));

    /* Out of fds is the helper's trouble, not a bad pidfd: say so. */
    if (r == -EMFILE || r == -ENFILE)
        return r;
    if (r < 0 || !(p = strstr(buf, "\nPid:\t")))
        return -EBADF;
    return (int32_t)strtol(p + 6, NULL, 10);
}

/* How long a hand-over waits for a FUSE server to answer for its lock. */
#define PROVE_WAIT_MS 1000

/*
 * Whether fd carries an OFD lock on byte 0, length 1, of mode: the kernel
 * lists the locks of each open file description in its fdinfo (fs/locks.c,
 * lock_get_status), e.g. "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:12 0 0".
 *
 * Opening /proc/self/fdinfo/N for every fd handed over costs an open and a
 * close each (most of the helper's time per lease).  Instead the helper keeps
 * /proc/self/fdinfo/P open for one reserved fd number P, dup3()s the fd to
 * check onto P and reads that file again from offset 0: the kernel looks up
 * fd P when the file is read, not when it was opened.
 * probe_release() then puts /dev/null back on P: the helper keeps no stray
 * copy of any fd (one of a refused fd would keep its lock alive after its
 * manager died; one of a released lease would keep its file open).  That
 * close of the copy is why only a file on a local filesystem is checked so:
 * on FUSE or NFS it would wait for the server (lockd-helper-fs.h).
 *
 * On a FUSE filesystem whose server keeps the locks there is no record in
 * fdinfo: how: PROVE_ASK asks the server (a hand-over, an adoption) and
 * answers 2 if it says held; PROVE_ASKED takes a lease that was proven so
 * as held (the periodic check: asking every server for every lease every
 * period is the lock-loss watch's job); PROVE_FDINFO believes fdinfo alone
 * (a lease whose lock fdinfo showed: a FUSE filesystem that keeps its locks
 * in the kernel).
 */
enum { PROVE_FDINFO, PROVE_ASKED, PROVE_ASK };

static int
fd_has_lease(int fd, int mode, const struct statx *stx, int how)
{
    const char *want = mode == LOCKD_SHARED ? " READ " : " WRITE ";
    struct statx own;
    char buf[4096];
    ssize_t n;

    if (!stx) { /* the caller has none taken */
        if (fsw_statx(fd, &own) < 0)
            return 0;
        stx = &own;
    }
    if (!S_ISREG(stx->stx_mode) && !S_ISBLK(stx->stx_mode)) /* a block device: direct */
        return 0;
    if (!fsw_close_is_local(stx)) {
        /* FUSE and NFS flush on every close, of a copy too: its own entry
         * is read, and nothing of it is closed on the loop. */
        int r = fdinfo_read(fd, buf, sizeof(buf));

        if (r < 0)
            return r;
        /* A FUSE filesystem that implements locks sends them to its
         * server and the kernel keeps no record (GlusterFS): the server is
         * asked, off the loop (fsw_prove_lock()). */
        if (fdinfo_has_lock(buf, want))
            return 1;
        if (how == PROVE_FDINFO || !fsw_is_fuse(stx))
            return 0;
        if (how == PROVE_ASKED)
            return 1;
        r = fsw_prove_lock(fd, stx, mode == LOCKD_SHARED ? F_RDLCK : F_WRLCK, PROVE_WAIT_MS);
        return r == 1 ? 2 : r;
    } else {
        if (dup3(fd, H.probe_fd, O_CLOEXEC) < 0)
            return negerrno();
        do
            n = pread(H.probe_info, buf, sizeof(buf) - 1, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            return negerrno(); /* not the client's fault */
        buf[n] = '\0';
    }
    return fdinfo_has_lock(buf, want);
}

static void
probe_release(void)
{
    (void)dup3(H.null_fd, H.probe_fd, O_CLOEXEC);
}

static int
probe_setup(void)
{
    char name[16];

    H.null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    H.probe_fd = fcntl(H.null_fd, F_DUPFD_CLOEXEC, 3);
    if (H.null_fd < 0 || H.probe_fd < 0)
        return -errno;
    snprintf(name, sizeof(name), "%d", H.probe_fd);
    H.probe_info = open_retry(H.fdinfo_dir, name, O_RDONLY | O_CLOEXEC, 0);
    return H.probe_info < 0 ? H.probe_info : 0;
}

static int64_t
mono_ns(void)
{
    return now_ns();
}

/* ------------------------------------------------------------------------
 * Owners, leases, per-uid counts
 */

static struct uid_count *
uid_find(uint32_t uid, int create)
{
    struct uid_count *u;
    uint32_t i;

    for (i = 0; i < H.nuids; i++)
        if (H.uids[i].uid == uid)
            return &H.uids[i];
    if (!create)
        return NULL;
    u = realloc(H.uids, (H.nuids + 1) * sizeof(*u));
    if (!u)
        return NULL;
    H.uids = u;
    H.uids[H.nuids] = (struct uid_count){.uid = uid};
    return &H.uids[H.nuids++];
}

static struct owner *
owner_find(int32_t pid)
{
    uint32_t i;

    if (H.owner_hint < H.nowner_slots && H.owners[H.owner_hint].pid == pid)
        return &H.owners[H.owner_hint];
    for (i = 0; i < H.nowner_slots; i++)
        if (H.owners[i].pid == pid) {
            H.owner_hint = i;
            return &H.owners[i];
        }
    return NULL;
}

/* Root sees every owner; anyone else only those its uid registered. */
static int
may_see(const struct conn *c, const struct owner *o)
{
    return c->uid == 0 || c->uid == o->uid;
}

/* Leases belong to the uid that handed them over, whoever registered the
 * owner: root may hand a disk to a user's process without that user seeing
 * or releasing it. */
static int
may_see_lease(const struct conn *c, const struct lease *l)
{
    return c->uid == 0 || c->uid == l->uid;
}

static uint32_t
owner_slot(const struct owner *o)
{
    return (uint32_t)(o - H.owners);
}

/*
 * A lease id is 44 bits of generation, offset by the epoch, above 20 bits of
 * slot: the slot finds the lease at once, the generation tells it from any
 * earlier lease in that slot.  Generations only grow (2^44 of them: at a
 * million hand-overs a second, half a year without a restart) and are
 * carried across re-exec and crashes; the epoch is drawn at random at each
 * cold start, so an id from before a restart that lost the state matches a
 * new lease with a chance of one in 2^44.
 */
#define ID_SLOT_BITS 20
#define ID_GEN_MASK  ((UINT64_C(1) << (64 - ID_SLOT_BITS)) - 1)
_Static_assert(LEASE_SLOTS_MAX == 1u << ID_SLOT_BITS, "a slot fits its bits of an id");

static uint64_t
lease_id(uint32_t slot)
{
    return ((H.leases[slot].gen + H.id_epoch) & ID_GEN_MASK) << ID_SLOT_BITS | slot;
}

/* The lease slot an id names, or NONE if it is not a live lease. */
static uint32_t
lease_by_id(uint64_t id)
{
    uint32_t slot = (uint32_t)(id & ((1u << ID_SLOT_BITS) - 1));

    if (slot >= H.nlease_slots || H.leases[slot].gen == 0 || lease_id(slot) != id)
        return NONE;
    return slot;
}

static int
grow(void **arr, uint32_t *nslots, size_t size)
{
    uint32_t n = *nslots ? *nslots * 2 : 64;
    void *p = realloc(*arr, (size_t)n * size);

    if (!p)
        return -ENOMEM;
    memset((char *)p + (size_t)*nslots * size, 0, (size_t)(n - *nslots) * size);
    *arr = p;
    *nslots = n;
    return 0;
}

/* Rebuild the free list from the slots not in use, lowest first. */
static void
lease_freelist_rebuild(void)
{
    uint32_t i;

    H.lease_free = NONE;
    for (i = H.nlease_slots; i-- > 0;)
        if (H.leases[i].gen == 0) {
            H.leases[i].fd = -1;
            H.leases[i].next = H.lease_free;
            H.lease_free = i;
        }
}

/*
 * Lease slots are allocated in doubling chunks but initialised only up to a
 * high-water mark (nlease_slots), so the untouched end of the array is never
 * made resident: memory per lease stays near the 64 bytes of its entry.
 */
static int
lease_cap_grow(uint32_t need)
{
    uint32_t n = H.lease_cap ? H.lease_cap : 64;
    void *p;

    /* A slot is 20 bits of a lease id (lease_id()): never more slots. */
    if (need > LEASE_SLOTS_MAX)
        return -EMFILE;
    while (n < need)
        n *= 2;
    if (n > LEASE_SLOTS_MAX)
        n = LEASE_SLOTS_MAX;
    if (n == H.lease_cap)
        return 0;
    p = realloc(H.leases, (size_t)n * sizeof(*H.leases));
    if (!p)
        return -ENOMEM;
    H.leases = p;
    H.lease_cap = n;
    return 0;
}

/* Initialise slots up to (not including) upto as free, unlinked. */
static void
lease_hw_extend(uint32_t upto)
{
    for (; H.nlease_slots < upto; H.nlease_slots++) {
        memset(&H.leases[H.nlease_slots], 0, sizeof(*H.leases));
        H.leases[H.nlease_slots].fd = -1;
    }
}

/* Make sure n slots can be taken, so that taking them cannot fail. */
static int
lease_slots_reserve(uint32_t n)
{
    uint32_t have = 0, slot;

    for (slot = H.lease_free; slot != NONE && have < n; slot = H.leases[slot].next)
        have++;
    if (have + (H.lease_cap - H.nlease_slots) >= n)
        return 0;
    return lease_cap_grow(H.nlease_slots + (n - have));
}

static int
lease_slot_alloc(uint32_t *ret)
{
    if (H.lease_free != NONE) {
        *ret = H.lease_free;
        H.lease_free = H.leases[*ret].next;
        return 0;
    }
    if (lease_cap_grow(H.nlease_slots + 1) < 0)
        return -EMFILE;
    *ret = H.nlease_slots;
    lease_hw_extend(H.nlease_slots + 1);
    return 0;
}

/* Take lease slot `slot`, as dictated by a saved state.  The free list is
 * rebuilt once restoring is over, instead of being searched per slot. */
static int
lease_slot_claim(uint32_t slot)
{
    if (lease_cap_grow(slot + 1) < 0)
        return -ENOMEM;
    lease_hw_extend(slot + 1);
    return H.leases[slot].gen == 0 ? 0 : -EEXIST;
}

static void store_push_lease(uint32_t slot);
static void lease_watch(uint32_t slot);
static void lease_unwatch(struct lease *l);
static void store_remove_lease(uint32_t slot, int unlocked);
static void store_remove_named(int named, char kind, uint64_t gen);
static void stash_settle(void);
static void store_push_owner(struct owner *o);
static void store_remove_owner(struct owner *o);
/* What state_log_lease() records. */
#define STATE_LEASE_ADDED     1
#define STATE_FREE_RELEASED   2 /* unlocked and closed */
#define STATE_FREE_TAKEN_BACK 3 /* closed: its client keeps the lock */

static void state_log_lease(uint32_t slot, int how);
static void state_log_owner(const struct owner *o, int add);
static int store_state_init(void);

static void
changed(void)
{
    H.status_dirty = 1;
}

/* ------------------------------------------------------------------------
 * One open file description, one lease
 *
 * Two leases on one open file description would be one lock listed twice:
 * releasing either unlocks both, and the other stays listed but not held.
 * So the helper indexes its lease fds by inode number, in an open-addressing
 * table of lease slots (about 8 bytes a lease): nearly every inode has one
 * lease, found with one kcmp(2).  The leases of one file (a shared disk,
 * or anything else with that inode number) go in a group kept in the
 * kernel's order of open file descriptions (kcmp KCMP_FILE orders them), so
 * a lookup is a binary search there, never a scan: a hand-over of 253 fds
 * costs a few thousand kcmp() calls at most, whatever the helper holds.
 * kcmp alone decides whether two fds are one description; the inode number
 * only says where to look.
 */
#define OFD_GROUP 0x80000000u /* a table entry naming a group, not a slot */

struct ofd_group {
    uint32_t n, cap;
    uint32_t *slots; /* lease slots, in kcmp order of their fds; n >= 2 */
};

static struct {
    uint32_t *tab; /* NONE, a lease slot, or OFD_GROUP | group index */
    uint32_t cap, used;
    struct ofd_group *groups;
    uint32_t ngroups, *free_groups, nfree;
    int stale; /* leases were restored without it: ofd_rebuild() first */
} O;

/* kcmp order of two of our fds: <0, 0 (the same description), >0. */
static int
ofd_cmp(int a, int b)
{
    long r = syscall(SYS_kcmp, H.pid, H.pid, KCMP_FILE, a, b);

    return r == 0 ? 0 : r == 1 ? -1 : 1;
}

static uint32_t
ofd_hash(uint64_t ino)
{
    return (uint32_t)((ino * UINT64_C(0x9e3779b97f4a7c15)) >> 32) & (O.cap - 1);
}

/* A lease of the inode an entry stands for. */
static uint32_t
ofd_rep(uint32_t e)
{
    return e & OFD_GROUP ? O.groups[e & ~OFD_GROUP].slots[0] : e;
}

/* The table position of inode ino's entry, or of the empty one where it
 * would go. */
static uint32_t
ofd_pos(uint64_t ino)
{
    uint32_t i = ofd_hash(ino);

    while (O.tab[i] != NONE && H.leases[ofd_rep(O.tab[i])].ino != ino)
        i = (i + 1) & (O.cap - 1);
    return i;
}

/* Where fd's description is among g's slots: 1 and its position, or 0 and
 * the position it would take. */
static int
ofd_locate(const struct ofd_group *g, int fd, uint32_t *ret_pos)
{
    uint32_t lo = 0, hi = g->n;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = ofd_cmp(H.leases[g->slots[mid]].fd, fd);

        if (c == 0) {
            *ret_pos = mid;
            return 1;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *ret_pos = lo;
    return 0;
}

/* The lease that fd (whose inode number is ino) already is, or NONE. */
static uint32_t
ofd_find(int fd, uint64_t ino)
{
    uint32_t e, pos;

    if (!O.cap || (e = O.tab[ofd_pos(ino)]) == NONE)
        return NONE;
    if (!(e & OFD_GROUP))
        return ofd_cmp(H.leases[e].fd, fd) == 0 ? e : NONE;
    return ofd_locate(&O.groups[e & ~OFD_GROUP], fd, &pos)
               ? O.groups[e & ~OFD_GROUP].slots[pos]
               : NONE;
}

static int
ofd_grow(void)
{
    uint32_t cap = O.cap ? 2 * O.cap : 1024, old = O.cap, i;
    uint32_t *tab = malloc((size_t)cap * sizeof(*tab)), *prev = O.tab;

    if (!tab)
        return -ENOMEM;
    memset(tab, 0xff, (size_t)cap * sizeof(*tab));
    O.tab = tab, O.cap = cap;
    for (i = 0; i < old; i++)
        if (prev[i] != NONE)
            O.tab[ofd_pos(H.leases[ofd_rep(prev[i])].ino)] = prev[i];
    free(prev);
    return 0;
}

/* A new group of two slots, in kcmp order; returns its entry or NONE. */
static uint32_t
ofd_group_new(uint32_t a, uint32_t b)
{
    struct ofd_group *g;
    uint32_t gi;

    if (O.nfree)
        gi = O.free_groups[--O.nfree];
    else {
        struct ofd_group *v = realloc(O.groups, (O.ngroups + 1) * sizeof(*v));
        uint32_t *f = realloc(O.free_groups, (O.ngroups + 1) * sizeof(*f));

        if (v)
            O.groups = v;
        if (f)
            O.free_groups = f;
        if (!v || !f)
            return NONE;
        gi = O.ngroups++;
    }
    g = &O.groups[gi];
    g->slots = malloc(4 * sizeof(*g->slots));
    if (!g->slots) {
        O.free_groups[O.nfree++] = gi;
        return NONE;
    }
    g->n = 2, g->cap = 4;
    g->slots[0] = ofd_cmp(H.leases[a].fd, H.leases[b].fd) < 0 ? a : b;
    g->slots[1] = g->slots[0] == a ? b : a;
    return OFD_GROUP | gi;
}

/* Index lease slot (its ino filled in). */
static int
ofd_insert(uint32_t slot)
{
    uint32_t i, e, pos;
    struct ofd_group *g;

    if ((O.used + 1) * 2 > O.cap && ofd_grow() < 0)
        return -ENOMEM;
    i = ofd_pos(H.leases[slot].ino);
    e = O.tab[i];
    if (e == NONE) {
        O.tab[i] = slot;
        O.used++;
        return 0;
    }
    if (!(e & OFD_GROUP)) {
        if (ofd_cmp(H.leases[e].fd, H.leases[slot].fd) == 0)
            return 0; /* a description already indexed */
        e = ofd_group_new(e, slot);
        if (e == NONE)
            return -ENOMEM;
        O.tab[i] = e;
        return 0;
    }
    g = &O.groups[e & ~OFD_GROUP];
    if (ofd_locate(g, H.leases[slot].fd, &pos))
        return 0;
    if (g->n == g->cap) {
        uint32_t *v = realloc(g->slots, (g->cap ? 2 * g->cap : 4) * sizeof(*v));

        if (!v)
            return -ENOMEM;
        g->slots = v, g->cap = g->cap ? 2 * g->cap : 4;
    }
    memmove(g->slots + pos + 1, g->slots + pos, (g->n - pos) * sizeof(*g->slots));
    g->slots[pos] = slot;
    g->n++;
    return 0;
}

/* Take table position i out, moving later entries of its run back so that
 * every entry stays reachable from its hash (linear probing). */
static void
ofd_delete_at(uint32_t i)
{
    uint32_t j = i, h;

    O.tab[i] = NONE;
    O.used--;
    for (;;) {
        j = (j + 1) & (O.cap - 1);
        if (O.tab[j] == NONE)
            return;
        h = ofd_hash(H.leases[ofd_rep(O.tab[j])].ino);
        /* Move it back if its home is not within (i, j]. */
        if ((j > i && (h <= i || h > j)) || (j < i && h <= i && h > j)) {
            O.tab[i] = O.tab[j];
            O.tab[j] = NONE;
            i = j;
        }
    }
}

static void
ofd_remove(uint32_t slot)
{
    uint32_t i, e, pos;
    struct ofd_group *g;

    if (!O.cap || O.stale)
        return;
    i = ofd_pos(H.leases[slot].ino);
    e = O.tab[i];
    if (e == slot) {
        ofd_delete_at(i);
        return;
    }
    if (e == NONE || !(e & OFD_GROUP))
        return;
    g = &O.groups[e & ~OFD_GROUP];
    if (!ofd_locate(g, H.leases[slot].fd, &pos) || g->slots[pos] != slot)
        return;
    memmove(g->slots + pos, g->slots + pos + 1, (g->n - pos - 1) * sizeof(*g->slots));
    if (--g->n > 1)
        return;
    O.tab[i] = g->slots[0]; /* one left: a plain entry again */
    free(g->slots);
    g->slots = NULL;
    O.free_groups[O.nfree++] = e & ~OFD_GROUP;
}

/*
 * A restore (re-exec, fd store) links thousands of leases while no client
 * is answered, so it leaves the index stale (ofd_insert() per lease would
 * lengthen the re-exec gap), and the first hand-over after it builds the
 * index whole.
 */
static int
ofd_rebuild(void)
{
    uint32_t i;
    int r = 0;

    if (!O.stale)
        return 0;
    for (i = 0; i < O.cap; i++)
        if (O.tab[i] != NONE && (O.tab[i] & OFD_GROUP)) {
            free(O.groups[O.tab[i] & ~OFD_GROUP].slots);
            O.groups[O.tab[i] & ~OFD_GROUP].slots = NULL;
            O.free_groups[O.nfree++] = O.tab[i] & ~OFD_GROUP;
        }
    if (O.tab)
        memset(O.tab, 0xff, (size_t)O.cap * sizeof(*O.tab));
    O.used = 0;
    O.stale = 0;
    for (i = 0; i < H.nlease_slots && r == 0; i++) {
        struct lease *l = &H.leases[i];
        struct statx stx;

        if (!l->gen)
            continue;
        if (!l->ino && fsw_statx(l->fd, &stx) == 0)
            l->ino = stx.stx_ino;
        r = ofd_insert(i);
    }
    if (r < 0)
        O.stale = 1;
    return r;
}

/* Link a filled-in lease slot into its owner and the counts. */
static void
lease_link(uint32_t slot)
{
    struct lease *l = &H.leases[slot];
    struct owner *o = &H.owners[l->owner];
    struct uid_count *u = uid_find(l->uid, 1);

    l->prev = NONE;
    l->next = o->head;
    if (o->head != NONE)
        H.leases[o->head].prev = slot;
    o->head = slot;
    o->nleases++;
    H.nleases++;
    if (u)
        u->leases++;
    if (H.restoring)
        O.stale = 1;
    else if (ofd_insert(slot) < 0)
        log_err("out of memory indexing lease %llu", (unsigned long long)l->gen);
    lease_watch(slot);
    changed();
}

/*
 * --verbose: one line at <7> per event of a lease (lockd-helper(8),
 * "Logging" lists them): "EVENT lease ID: disk D, key K, MODE, owner pid P
 * (NAME), uid U: WHY".  Not rate-limited: a debugging aid, off by default.
 */
static void
lease_log(uint32_t slot, const char *event, const char *why)
{
    const struct lease *l = &H.leases[slot];
    const struct owner *o = &H.owners[l->owner];
    char key[LOCKD_KEY_SIZE];

    if (!H.verbose)
        return;
    key_to_hex(l->key, key);
    log_debug("%s lease %llu: disk %s, key %s, %s, owner pid %d (%s), uid %u: %s", event,
              (unsigned long long)lease_id(slot), l->disk && *l->disk ? l->disk : "-",
              key, l->mode == LOCKD_SHARED ? "shared" : "exclusive", (int)o->pid,
              o->name ? o->name : "", l->uid, why);
}

/* Let go of one lease: unlock (unless the client that handed it over takes
 * it back, keeping the lock through its own copy), close, forget. */
static void
lease_free_how(uint32_t slot, const char *why, int unlock)
{
    struct lease *l = &H.leases[slot];
    struct owner *o = &H.owners[l->owner];
    struct uid_count *u = uid_find(l->uid, 0);

    lease_log(slot, "released", why);
    /* The state log says "gone" before the store lets go; a crash in
     * between leaves the fd in the store with a FREE record after it, and
     * adoption finishes the job as it was begun: a release unlocks, a
     * take-back only closes (restore_free). */
    state_log_lease(slot, unlock ? STATE_FREE_RELEASED : STATE_FREE_TAKEN_BACK);
    store_remove_lease(slot, unlock);
    ofd_remove(slot);
    if (l->local)
        fsw_close_local(l->fd, unlock); /* the statx of fd_dispose() spared */
    else
        fd_dispose(l->fd, unlock);
    if (l->prev != NONE)
        H.leases[l->prev].next = l->next;
    else
        o->head = l->next;
    if (l->next != NONE)
        H.leases[l->next].prev = l->prev;
    o->nleases--;
    H.nleases--;
    if (l->lost)
        o->nlost--, H.nlost--;
    lease_unwatch(l);
    if (u && u->leases)
        u->leases--;
    free(l->disk);
    memset(l, 0, sizeof(*l));
    l->fd = -1;
    l->next = H.lease_free;
    H.lease_free = slot;
    changed();
}

static void
lease_free(uint32_t slot, const char *why)
{
    lease_free_how(slot, why, 1);
}

static void
owner_release_all(struct owner *o, const char *why)
{
    while (o->head != NONE)
        lease_free(o->head, why);
}

static void
owner_free(struct owner *o, const char *why)
{
    struct uid_count *u;

    log_info("owner pid %d (%s) gone: %s", (int)o->pid, o->name ? o->name : "", why);
    owner_release_all(o, why);
    state_log_owner(o, 0);
    store_remove_owner(o);
    if (o->pidfd >= 0) {
        (void)epoll_ctl(H.epoll_fd, EPOLL_CTL_DEL, o->pidfd, NULL);
        safe_close(o->pidfd);
    }
    free(o->name);
    free(o->hook);
    if (o->act_due_ns)
        H.nact_due--;
    u = uid_find(o->uid, 0);
    if (u && u->owners)
        u->owners--;
    memset(o, 0, sizeof(*o));
    o->pidfd = -1;
    H.nowners--;
    changed();
}

static int
owner_watch(struct owner *o)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_OWNER | owner_slot(o)};

    return epoll_ctl(H.epoll_fd, EPOLL_CTL_ADD, o->pidfd, &ev) < 0 ? negerrno() : 0;
}

static struct owner *
owner_new(int32_t pid, uint32_t uid, int pidfd)
{
    struct owner *o = owner_find(0);
    struct uid_count *u;

    if (!o) {
        uint32_t old = H.nowner_slots, i;

        if (grow((void **)&H.owners, &H.nowner_slots, sizeof(*H.owners)) < 0)
            return NULL;
        for (i = old; i < H.nowner_slots; i++)
            H.owners[i].pidfd = -1;
        o = &H.owners[old];
    }
    o->pid = pid;
    o->gen = H.next_gen++;
    o->uid = uid;
    o->hook_uid = uid;
    o->pidfd = pidfd;
    o->head = NONE;
    o->nleases = 0;
    o->nlost = 0;
    H.nowners++;
    u = uid_find(uid, 1);
    if (u)
        u->owners++;
    changed();
    return o;
}

/* ------------------------------------------------------------------------
 * Requests
 */

static int
set_name(char **dst, const char *s, size_t len)
{
    char *p = strndup(s, len);

    if (!p)
        return -ENOMEM;
    free(*dst);
    *dst = p;
    return 0;
}

/* ------------------------------------------------------------------------
 * Checking what is held
 *
 * The helper never takes a lock, but a lease it holds can stop being held
 * without it: another copy of the open file description was unlocked (a
 * manager released its copy after a hand-over it took for failed; a copy
 * adopted after a crash had been unlocked meanwhile), or a network
 * filesystem's client lost its server and the server gave the lock up.  So
 * what the helper reports as held it has checked: every lease when adopted,
 * each row of a listing as it is written, all of them in fdinfo every
 * 2 x --check-period (sweep_step()), and those whose lock lives on a
 * server through their filesystem (lease_watch(), watch_step()).  A lease
 * found not held is lost: listed as LOCKD_LOST, logged at <2> with its
 * owner, disk and errno, left out of the held counts, and its owner's
 * action runs (owner_act()).  A check never locks or unlocks, and a lost
 * lease is never taken again.
 */

static void owner_act(struct owner *o, uint32_t slot, int err, char *what, size_t size);

/*
 * A lock missing from fdinfo was let go through another copy of its
 * description: by a process the lease was given to.  That is how a manager
 * that kept its copies releases (lockd_conn_release_notice(): unlock, then
 * the notice), so the notice may simply not be here yet; and on a local
 * filesystem nothing else takes a lock away.  So such a loss is acted on
 * one --check-period later, if the lease is still lost and not released
 * by then (act_due()).  A loss found through the filesystem is acted on at
 * once: there the guest is writing a disk another host may be granted.
 */

/* Why a lease is lost, for its log line: err is 0 (no lock found), or the
 * -errno its filesystem answered, or -ETIMEDOUT (no answer in time). */
static void
loss_reason(int err, char *buf, size_t size)
{
    if (err == 0)
        snprintf(buf, size, "its lock is gone");
    else if (err == -ENOLCK)
        snprintf(buf, size, "its filesystem's server shows it not held (ENOLCK)");
    else if (err == -ETIMEDOUT)
        snprintf(buf, size, "its filesystem did not answer a check within %lld ms (ETIMEDOUT)",
                 (long long)(H.check_timeout_ns / 1000000));
    else
        snprintf(buf, size, "its filesystem says %s (%s)",
                 strerrorname_np(-err) ? strerrorname_np(-err) : "?", strerror(-err));
}

static void
lease_mark_lost(uint32_t slot, int err)
{
    struct lease *l = &H.leases[slot];
    struct owner *o = &H.owners[l->owner];
    char key[LOCKD_KEY_SIZE], why[160], what[160];

    l->lost = 1;
    lease_unwatch(l);
    o->nlost++, H.nlost++;
    key_to_hex(l->key, key);
    loss_reason(err, why, sizeof(why));
    if (err == 0 && !o->acted) {
        if (!o->act_due_ns) {
            o->act_due_ns = mono_ns() + H.check_period_ns;
            o->act_err = 0;
            H.nact_due++;
        }
        snprintf(what, sizeof(what), "its on-loss action follows in %lld ms unless it is released",
                 (long long)(H.check_period_ns / 1000000));
    } else
        owner_act(o, slot, err, what, sizeof(what));
    /* Rate-limited per uid like a refusal: a client can make its own
     * leases lost as fast as it likes (found by attack: 130,000 lines of
     * priority 2 in 5 s). */
    /* Every loss, where the <2> line below may be left out by its limit. */
    lease_log(slot, "lost", why);
    log_refusal(l->uid, 2, "lost lease %s (key %s) of owner pid %d (%s): %s; %s",
                l->disk && *l->disk ? l->disk : "-", key, (int)o->pid, o->name ? o->name : "",
                why, what);
    changed();
}

/* ---- The watch: leases whose lock lives on a server ----
 *
 * A FUSE filesystem that sends locks to its server (GlusterFS) and NFS keep
 * the lock there, so fdinfo cannot see it go.  Each such filesystem (an
 * rdev) gets, every --check-period, its share of leases checked by its
 * worker (fsw_watch(), in batches of WATCH_BATCH one after the other): at
 * least one lease, and enough that every lease is checked within
 * WATCH_SWEEP_NS.  One lease per period is enough to notice
 * a client that lost its server: GlusterFS then fails every call on every
 * lock fd of that client (ENOTCONN, then EBADFD), and a loss found starts a
 * full pass over the filesystem's leases at once, batch after batch.  A
 * batch not answered within --check-timeout is a loss signal for every
 * lease on that filesystem: its server cannot show that any is held.
 */
#define WATCH_BATCH    16
#define WATCH_SWEEP_NS (60 * 1000000000LL)

static void
lease_unwatch(struct lease *l)
{
    if (l->rdev) {
        H.rdevs[l->rdev - 1].nleases--;
        l->rdev = 0;
    }
}

/* Start watching lease slot if its lock lives on a server: a FUSE lease
 * proven by asking (asked), or an NFS one. */
static void
lease_watch(uint32_t slot)
{
    struct lease *l = &H.leases[slot];
    struct statx stx;
    uint64_t dev;
    uint32_t i;
    int how;

    if (l->rdev || l->lost || l->local || fsw_statx(l->fd, &stx) < 0)
        return;
    how = l->asked ? FSW_WATCH_FUSE : fsw_is_nfs(&stx) ? FSW_WATCH_NFS : 0;
    if (!how)
        return;
    dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
    /* A device number comes back for another mount once one is gone (FUSE,
     * NFS): an entry is its filesystem's only while it has leases or a
     * batch under way; an idle one is taken for the next. */
    for (i = 0; i < H.nrdevs && !(H.rdevs[i].dev == dev && H.rdevs[i].how == how &&
                                  (H.rdevs[i].nleases || H.rdevs[i].batch));
         i++)
        ;
    if (i == H.nrdevs)
        for (i = 0; i < H.nrdevs && (H.rdevs[i].nleases || H.rdevs[i].batch); i++)
            ;
    if (i < H.nrdevs && !H.rdevs[i].nleases && !H.rdevs[i].batch)
        H.rdevs[i] = (struct rdev){.dev = dev, .how = (uint8_t)how};
    if (i == H.nrdevs) {
        if (H.nrdevs == RDEV_MAX) {
            log_err("lease %llu not watched: more than %d network filesystems",
                    (unsigned long long)l->gen, RDEV_MAX);
            return;
        }
        H.rdevs[i] = (struct rdev){.dev = dev, .how = (uint8_t)how};
        H.nrdevs++;
    }
    H.rdevs[i].nleases++;
    l->rdev = (uint8_t)(i + 1);
    if (H.watch_due_ns > mono_ns() + H.check_period_ns)
        H.watch_due_ns = mono_ns() + H.check_period_ns;
}

/* Every lease of rdev k is lost: its batch is past the deadline. */
static void
rdev_overdue(uint32_t k)
{
    uint32_t i;

    log_err("network filesystem (dev %u:%u) did not answer a lock check within %lld ms: "
            "its %u lease%s count%s as lost",
            major(H.rdevs[k].dev), minor(H.rdevs[k].dev),
            (long long)(H.check_timeout_ns / 1000000), H.rdevs[k].nleases,
            PLURAL(H.rdevs[k].nleases), H.rdevs[k].nleases == 1 ? "s" : "");
    for (i = 0; i < H.nlease_slots && H.rdevs[k].nleases; i++)
        if (H.leases[i].gen && H.leases[i].rdev == k + 1)
            lease_mark_lost(i, -ETIMEDOUT);
}

/* Queue rdev k's next batch of r->left; returns how many leases it holds. */
static uint32_t
rdev_batch(struct rdev *r, uint32_t k, int64_t now)
{
    int fds[WATCH_BATCH];
    short types[WATCH_BATCH];
    uint64_t tags[WATCH_BATCH];
    uint32_t want = r->left < WATCH_BATCH ? r->left : WATCH_BATCH, n = 0, seen;

    for (seen = 0; n < want && seen < H.nlease_slots; seen++, r->cursor++) {
        const struct lease *l;

        if (r->cursor >= H.nlease_slots)
            r->cursor = 0;
        l = &H.leases[r->cursor];
        if (!l->gen || l->rdev != k + 1)
            continue;
        /* The worker's own copy: the loop may release the lease meanwhile.
         * Out of fds, the rest waits for the next period. */
        fds[n] = fcntl(l->fd, F_DUPFD_CLOEXEC, 3);
        if (fds[n] < 0)
            break;
        types[n] = l->mode == LOCKD_SHARED ? F_RDLCK : F_WRLCK;
        tags[n++] = lease_id(r->cursor);
    }
    r->left = n >= r->left || n < want ? 0 : r->left - n;
    if (n == 0)
        return 0;
    if (++H.watch_batches == 0)
        H.watch_batches = 1;
    if (fsw_watch((dev_t)r->dev, r->how, H.watch_batches, fds, types, tags, n) < 0)
        return 0;
    r->batch = H.watch_batches;
    r->queued_ns = now;
    r->overdue = 0;
    return n;
}

static void watch_drain(void);

static void
watch_step(void)
{
    int64_t now = mono_ns(), due = INT64_MAX;
    uint32_t k;

    if (now < H.watch_due_ns)
        return;
    /* Answers that came while the loop was busy elsewhere are not late:
     * taken in before any batch is judged overdue. */
    watch_drain();
    for (k = 0; k < H.nrdevs; k++) {
        struct rdev *r = &H.rdevs[k];

        if (r->batch) {
            int64_t late = r->queued_ns + H.check_timeout_ns;

            if (now >= late && !r->overdue) {
                r->overdue = 1;
                rdev_overdue(k);
            } else if (!r->overdue && late < due)
                due = late;
            continue;
        }
        if (!r->nleases)
            continue;
        if (!r->left && now >= r->due_ns) { /* this period's share of a sweep */
            uint64_t share = ((uint64_t)r->nleases * (uint64_t)H.check_period_ns +
                              WATCH_SWEEP_NS - 1) / WATCH_SWEEP_NS;

            r->left = share ? (uint32_t)share : 1;
            r->due_ns = now + H.check_period_ns;
        }
        if (r->left && rdev_batch(r, k, now) > 0 && r->queued_ns + H.check_timeout_ns < due)
            due = r->queued_ns + H.check_timeout_ns;
        if (!r->batch && r->due_ns < due)
            due = r->due_ns;
    }
    H.watch_due_ns = due;
}

/* Take the watch's answers in: each lease found lost is marked so (and
 * starts a pass over its filesystem), each batch answered is done. */
static void
watch_drain(void)
{
    struct fsw_answer a[256];
    size_t n, i;

    while ((n = fsw_answers(a, sizeof(a) / sizeof(a[0]))) > 0)
        for (i = 0; i < n; i++) {
            uint32_t slot, k;

            if (a[i].tag == 0) { /* batch a[i].result is done */
                for (k = 0; k < H.nrdevs; k++)
                    if (H.rdevs[k].batch == (uint32_t)a[i].result)
                        H.rdevs[k].batch = 0, H.rdevs[k].overdue = 0;
                continue;
            }
            slot = lease_by_id(a[i].tag);
            if (slot == NONE || H.leases[slot].lost || a[i].result == 1)
                continue;
            /* The helper's own trouble judges nothing. */
            if (a[i].result == -ENOMEM || a[i].result == -EMFILE || a[i].result == -ENFILE ||
                a[i].result == -EINTR)
                continue;
            k = H.leases[slot].rdev;
            /* 0: the server shows no lock of this lease's, or another's:
             * found through the filesystem, so acted on at once. */
            lease_mark_lost(slot, a[i].result == 0 ? -ENOLCK : a[i].result);
            if (k) /* look at every other lease on that filesystem, now */
                H.rdevs[k - 1].left = H.rdevs[k - 1].nleases;
        }
}

/* The watch's answers (TAG_WATCH). */
static void
on_watch(void)
{
    watch_drain();
    H.watch_due_ns = 0;
    watch_step();
}

/* Check lease slot's lock now (~2 us, fdinfo); mark it lost if it is gone.
 * A failure to read fdinfo is the helper's own trouble and judges nothing. */
static void
lease_verify(uint32_t slot, int ask)
{
    struct lease *l = &H.leases[slot];
    int r;

    if (l->lost)
        return;
    r = fd_has_lease(l->fd, l->mode, NULL,
                     ask ? PROVE_ASK : l->asked ? PROVE_ASKED : PROVE_FDINFO);
    probe_release();
    if (r == 0)
        lease_mark_lost(slot, 0);
    else if (ask && r > 0 && l->asked != (r == 2)) {
        lease_unwatch(l);
        l->asked = r == 2;
        lease_watch(slot);
    }
}

/* After a crash: every adopted lease, as a hand-over is checked. */
static void
lease_verify_all(void)
{
    uint32_t i;

    for (i = 0; i < H.nlease_slots; i++)
        if (H.leases[i].gen)
            lease_verify(i, 1);
}

/*
 * The fdinfo sweep, SWEEP_CHUNK slots at a time (a few ms) between
 * events, so that 19,000 leases never stall the loop: each sweep starts
 * 2 x --check-period after the last one started.  While one is under way
 * (sweep_at is not NONE) the loop does not sleep.
 */
#define SWEEP_CHUNK 512

static void
sweep_step(void)
{
    uint32_t end;

    if (H.sweep_at == NONE) {
        if (H.nleases == H.nlost || mono_ns() < H.check_due_ns)
            return;
        H.sweep_at = 0;
        H.check_due_ns = mono_ns() + 2 * H.check_period_ns;
    }
    end = H.nlease_slots - H.sweep_at > SWEEP_CHUNK ? H.sweep_at + SWEEP_CHUNK
                                                      : H.nlease_slots;
    for (; H.sweep_at < end; H.sweep_at++)
        if (H.leases[H.sweep_at].gen)
            lease_verify(H.sweep_at, 0);
    if (H.sweep_at >= H.nlease_slots)
        H.sweep_at = NONE;
}

/* ---- What happens to an owner whose lease is lost ---- */

/* Signal the process of pidfd, which is pid.  Where pidfd_send_signal(2)
 * is unknown (valgrind does not know it), kill(2) while the pidfd says the
 * process lives: a pid reused between the two is the window left. */
static int
pidfd_signal(int pidfd, pid_t pid, int sig)
{
    if (pidfd >= 0 && syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) == 0)
        return 0;
    if (pidfd >= 0 && errno != ENOSYS)
        return negerrno();
    if (pidfd >= 0 && pidfd_dead(pidfd))
        return -ESRCH;
    return kill(pid, sig) < 0 ? negerrno() : 0;
}

/*
 * Run o's hook for lease slot, asynchronously: forked, as the uid that
 * registered it (never root for another uid), with fds 0-2 only (the
 * child closes every other before exec: a hook never holds a lease), the
 * signal mask and SIGPIPE reset, and the owner, disk, key and error in its
 * environment.  Killed at --hook-timeout.  Returns its pid or -errno.
 */
static int
hook_start(const struct owner *o, const struct lease *l, int err)
{
    char env[7][LOCKD_NAME_MAX + 64], key[LOCKD_KEY_SIZE], uuid[40], pwbuf[4096];
    char *envp[8], *argv[] = {(char *)"sh", (char *)"-c", o->hook, NULL};
    struct passwd pw, *pwp = NULL;
    struct epoll_event ev = {.events = EPOLLIN};
    sigset_t none;
    uint32_t i;
    gid_t gid;
    pid_t pid;
    int pidfd;

    if (H.nhooks == HOOKS_MAX)
        return -EAGAIN;
    if (getpwuid_r(o->hook_uid, &pw, pwbuf, sizeof(pwbuf), &pwp) != 0 || !pwp)
        return -ENOENT; /* no group to run it with */
    gid = pw.pw_gid;
    key_to_hex(l->key, key);
    uuid_format(o->uuid, uuid);
    snprintf(env[0], sizeof(env[0]), "LOCKD_OWNER_PID=%d", (int)o->pid);
    snprintf(env[1], sizeof(env[1]), "LOCKD_OWNER_NAME=%s", o->name ? o->name : "");
    snprintf(env[2], sizeof(env[2]), "LOCKD_OWNER_UUID=%s", uuid);
    snprintf(env[3], sizeof(env[3]), "LOCKD_DISK=%s", l->disk ? l->disk : "");
    snprintf(env[4], sizeof(env[4]), "LOCKD_KEY=%s", key);
    snprintf(env[5], sizeof(env[5]), "LOCKD_ERROR=%s",
             err == 0 ? "ENOLCK" : strerrorname_np(-err) ? strerrorname_np(-err) : "EIO");
    snprintf(env[6], sizeof(env[6]), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for (i = 0; i < 7; i++)
        envp[i] = env[i];
    envp[7] = NULL;
    sigemptyset(&none);
    fflush(stderr);
    pid = fork();
    if (pid < 0)
        return negerrno();
    if (pid == 0) {
        /* Only async-signal-safe calls: the helper has threads. */
        (void)syscall(SYS_close_range, 3u, ~0u, 0u);
        (void)sigprocmask(SIG_SETMASK, &none, NULL);
        (void)signal(SIGPIPE, SIG_DFL);
        if (geteuid() != o->hook_uid &&
            (setgroups(1, &gid) < 0 || setresgid(gid, gid, gid) < 0 ||
             setresuid(o->hook_uid, o->hook_uid, o->hook_uid) < 0))
            _exit(126);
        if (chdir("/") < 0)
            _exit(126);
        execve("/bin/sh", argv, envp);
        _exit(127);
    }
    /* Without a pidfd (out of fds) it is still tracked: hooks_check()
     * reaps it and kills it at its deadline by pid. */
    pidfd = xpidfd_open(pid);
    ev.data.u64 = TAG_HOOK | (uint32_t)pid;
    if (pidfd >= 0)
        (void)epoll_ctl(H.epoll_fd, EPOLL_CTL_ADD, pidfd, &ev);
    H.hooks[H.nhooks++] = (struct hook){.pid = pid,
                                        .pidfd = pidfd,
                                        .due_ns = mono_ns() + H.hook_timeout_ns,
                                        .owner_pid = o->pid,
                                        .owner_gen = o->gen};
    return pid;
}

/*
 * The hook of owner pid failed or outlasted --hook-timeout: an
 * exec-or-kill owner is killed now, through its pidfd.  An owner gone
 * meanwhile is left alone, and so is another with its pid since.
 */
static void
hook_failed(int32_t owner_pid, uint64_t owner_gen)
{
    struct owner *o = owner_find(owner_pid);
    int r;

    if (!o || o->gen != owner_gen || !o->acted ||
        o->on_loss != LOCKD_ON_LOSS_EXEC_OR_KILL)
        return;
    r = pidfd_signal(o->pidfd, o->pid, SIGKILL);
    if (r < 0)
        log_err(
            "owner pid %d (%s): its on-loss hook failed, and it could not be killed: %s",
            (int)o->pid, o->name ? o->name : "", strerror(-r));
    else
        log_warn("owner pid %d (%s): its on-loss hook failed: killed it (SIGKILL)",
                 (int)o->pid, o->name ? o->name : "");
}

/* A hook ended (TAG_HOOK): reap it, log how. */
static void
hook_done(pid_t pid)
{
    uint32_t i;
    int st;

    for (i = 0; i < H.nhooks && H.hooks[i].pid != pid; i++)
        ;
    if (i == H.nhooks || waitpid(pid, &st, WNOHANG) != pid)
        return;
    if (WIFEXITED(st))
        log_notice("on-loss hook of owner pid %d (pid %d) exited %d", (int)H.hooks[i].owner_pid,
                   (int)pid, WEXITSTATUS(st));
    else
        log_warn("on-loss hook of owner pid %d (pid %d) killed by signal %d",
                 (int)H.hooks[i].owner_pid, (int)pid, WTERMSIG(st));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        hook_failed(H.hooks[i].owner_pid, H.hooks[i].owner_gen);
    if (H.hooks[i].pidfd >= 0) {
        (void)epoll_ctl(H.epoll_fd, EPOLL_CTL_DEL, H.hooks[i].pidfd, NULL);
        safe_close(H.hooks[i].pidfd);
    }
    H.hooks[i] = H.hooks[--H.nhooks];
}

/* Hooks past --hook-timeout are killed (and reaped by hook_done()). */
static void
hooks_check(int64_t now)
{
    uint32_t i;

    for (i = 0; i < H.nhooks;) {
        uint32_t before = H.nhooks;

        if (H.hooks[i].pidfd < 0) { /* no pidfd: looked at here */
            hook_done(H.hooks[i].pid);
            if (H.nhooks < before)
                continue; /* reaped: slot i holds another now */
        }
        if (H.hooks[i].due_ns && now >= H.hooks[i].due_ns) {
            log_warn("on-loss hook of owner pid %d (pid %d) still runs after %lld s: killed",
                     (int)H.hooks[i].owner_pid, (int)H.hooks[i].pid,
                     (long long)(H.hook_timeout_ns / 1000000000));
            (void)pidfd_signal(H.hooks[i].pidfd, H.hooks[i].pid, SIGKILL);
            H.hooks[i].due_ns = 0;
        }
        i++;
    }
}

/* The owners whose fdinfo-found loss has waited its period: those with a
 * lease still lost get their action now. */
static void
act_due(int64_t now)
{
    uint32_t i, slot;

    for (i = 0; i < H.nowner_slots && H.nact_due; i++) {
        struct owner *o = &H.owners[i];
        char what[160];

        if (!o->pid || !o->act_due_ns || now < o->act_due_ns)
            continue;
        o->act_due_ns = 0;
        H.nact_due--;
        for (slot = o->head; slot != NONE && !H.leases[slot].lost; slot = H.leases[slot].next)
            ;
        if (slot == NONE || o->acted)
            continue; /* released meanwhile: nothing was lost */
        owner_act(o, slot, o->act_err, what, sizeof(what));
        if (!o->acted)
            continue; /* its hook waits its turn again */
        log_refusal(H.leases[slot].uid, 2, "owner pid %d (%s): lease %s still lost: %s",
                    (int)o->pid, o->name ? o->name : "",
                    H.leases[slot].disk && *H.leases[slot].disk ? H.leases[slot].disk : "-", what);
    }
}

/* What lease slot's loss does to its owner o (once per owner); what it did
 * goes to what, for the loss's log line. */
static void
owner_act(struct owner *o, uint32_t slot, int err, char *what, size_t size)
{
    static const char *const names[] = {"kill", "stop", "report", "exec", "exec-or-kill"};
    int r;

    if (o->acted) {
        snprintf(what, size, "on-loss action %s done already",
                 names[o->on_loss <= LOCKD_ON_LOSS_EXEC_OR_KILL ? o->on_loss : 0]);
        return;
    }
    o->acted = 1;
#ifdef LOCKD_HELPER_NO_MAIN
    /* The fuzz targets: a fuzzed owner's action would signal the fuzzer's
     * own processes, or run a fuzzed shell command. */
    snprintf(what, size, "on-loss action %s not taken in a fuzz build",
             names[o->on_loss <= LOCKD_ON_LOSS_EXEC_OR_KILL ? o->on_loss : 0]);
    state_log_owner(o, 1);
    return;
#endif
    switch (o->on_loss) {
    case LOCKD_ON_LOSS_STOP:
        r = pidfd_signal(o->pidfd, o->pid, SIGSTOP);
        if (r < 0)
            snprintf(what, size, "could not stop it: %s", strerror(-r));
        else
            snprintf(what, size, "stopped it (SIGSTOP; kill -CONT %d resumes it)", (int)o->pid);
        break;
    case LOCKD_ON_LOSS_REPORT:
        snprintf(what, size, "the guest runs unprotected (on-loss action: report)");
        break;
    case LOCKD_ON_LOSS_EXEC:
    case LOCKD_ON_LOSS_EXEC_OR_KILL:
        r = hook_start(o, &H.leases[slot], err);
        if (r == -EAGAIN) {
            /* HOOKS_MAX hooks run (a mass loss): this one waits its turn,
             * tried again each 100 ms by act_due() while still lost. */
            o->acted = 0;
            if (!o->act_due_ns)
                H.nact_due++;
            o->act_due_ns = mono_ns() + 100000000;
            o->act_err = err;
            snprintf(what, size, "its on-loss hook waits for one of %d running to end",
                     HOOKS_MAX);
            return;
        }
        if (r < 0 && o->on_loss == LOCKD_ON_LOSS_EXEC_OR_KILL) {
            /* No hook to succeed: the kill it stood in for. */
            int k = pidfd_signal(o->pidfd, o->pid, SIGKILL);

            snprintf(what, size, "could not start its on-loss hook (%s): %s",
                     strerror(-r),
                     k < 0 ? "and could not kill it either" : "killed it (SIGKILL)");
        } else if (r < 0)
            snprintf(what, size, "could not start its on-loss hook: %s", strerror(-r));
        else
            snprintf(what, size, "started its on-loss hook (pid %d, as uid %u)%s", r,
                     o->hook_uid,
                     o->on_loss == LOCKD_ON_LOSS_EXEC_OR_KILL
                         ? "; it is killed unless the hook succeeds"
                         : "");
        break;
    default:
        r = pidfd_signal(o->pidfd, o->pid, SIGKILL);
        if (r < 0)
            snprintf(what, size, "could not kill it: %s", strerror(-r));
        else
            snprintf(what, size, "killed it (SIGKILL)");
    }
    state_log_owner(o, 1);
}

/* The real uid of pid, from /proc/PID/status. */
static int
proc_real_uid(int32_t pid, uint32_t *ret)
{
    char path[64], buf[4096], *p;
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    fd = open_retry(AT_FDCWD, path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return fd == -ENOENT ? -ESRCH : fd;
    n = read(fd, buf, sizeof(buf) - 1);
    safe_close(fd);
    if (n <= 0)
        return -ESRCH;
    buf[n] = '\0';
    p = strstr(buf, "\nUid:\t");
    if (!p)
        return -ESRCH;
    *ret = (uint32_t)strtoul(p + 6, NULL, 10);
    return 0;
}

/* Whether uid may make the helper hold n more fds: every uid but root
 * leaves ROOT_FDS of the helper's limit alone (beside what the helper needs
 * itself), so that no user can make root's next hand-over fail. */
static int
fds_room(uint32_t uid, uint32_t n)
{
    uint64_t used = (uint64_t)H.nleases + H.nowners + H.nconns + 64;

    return uid == 0 || used + n + ROOT_FDS <= H.fd_limit;
}

/* REGISTER's action on loss, if it names one: the hook runs as the uid that
 * gave it. */
static int
set_on_loss(const struct conn *c, struct owner *o, const struct proto_req *req)
{
    char *hook = NULL;

    if (!req->has_on_loss)
        return 0;
    if (req->command_len && !(hook = strndup(req->command, req->command_len)))
        return -ENOMEM;
    free(o->hook);
    o->hook = hook;
    o->on_loss = req->on_loss;
    o->hook_uid = c->uid;
    return 0;
}

/*
 * REGISTER: pidfd is the one sent along, or -1.  The uid check reads
 * /proc/PID/status and then makes sure the pidfd's process is still alive,
 * so that a pid reused in between cannot pass as the checked process.
 */
static int
do_register(struct conn *c, const struct proto_req *req, int pidfd)
{
    struct owner *o = owner_find(req->pid);
    uint32_t real_uid;
    int r;

    if (o && pidfd_dead(o->pidfd)) {
        owner_free(o, "exited");
        o = NULL;
    }
    if (o) {
        static const uint8_t no_uuid[PROTO_UUID_BYTES];

        safe_close(pidfd);
        if (!may_see(c, o))
            return -EPERM;
        /* Again: only what is given changes (a hot-plug that names no
         * uuid or name must not erase the guest's identity). */
        if (memcmp(req->uuid, no_uuid, PROTO_UUID_BYTES) != 0)
            memcpy(o->uuid, req->uuid, PROTO_UUID_BYTES);
        r = req->name_len ? set_name(&o->name, req->name, req->name_len) : 0;
        if (r == 0)
            r = set_on_loss(c, o, req);
        if (r == 0)
            state_log_owner(o, 1);
        return r;
    }
    if (c->uid != 0) {
        struct uid_count *u = uid_find(c->uid, 1);

        if (!u || u->owners >= H.user_owners || !fds_room(c->uid, 1)) {
            safe_close(pidfd);
            return !u ? -ENOMEM : -EDQUOT;
        }
    }
    if (pidfd >= 0 && (r = pidfd_pid(pidfd)) != req->pid) {
        safe_close(pidfd);
        /* not a pidfd, or another process's; or no fd to look with */
        return r == -EMFILE || r == -ENFILE ? r : -ESRCH;
    }
    if (pidfd < 0)
        pidfd = xpidfd_open(req->pid);
    if (pidfd < 0)
        return pidfd;
    r = proc_real_uid(req->pid, &real_uid);
    if (r == 0 && pidfd_dead(pidfd))
        r = -ESRCH;
    if (r == 0 && c->uid != 0 && real_uid != c->uid)
        r = -EPERM;
    if (r == 0 && !(o = owner_new(req->pid, c->uid, pidfd)))
        r = -ENOMEM;
    if (r < 0) {
        safe_close(pidfd);
        return r;
    }
    memcpy(o->uuid, req->uuid, PROTO_UUID_BYTES);
    r = set_name(&o->name, req->name, req->name_len);
    if (r == 0)
        r = set_on_loss(c, o, req);
    if (r == 0)
        r = owner_watch(o);
    if (r < 0) {
        owner_free(o, "could not register");
        return r;
    }
    log_info("owner pid %d (%s) registered by uid %u", (int)o->pid, o->name, c->uid);
    state_log_owner(o, 1);
    /* Its pidfd goes to the fd store with its first lease, not before: an
     * owner without leases has nothing to keep across a crash. */
    return 0;
}

/* The name of fd as the kernel has it (d_path: no filesystem is asked). */
static int
fd_path(int fd, char *buf, size_t size)
{
    char link[32];
    ssize_t n;

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, buf, size - 1);
    if (n < 0)
        return negerrno();
    if ((size_t)n == size - 1)
        return -ENAMETOOLONG;
    buf[n] = '\0';
    return 0;
}

/*
 * Whether fd is the disk of a direct lease named disk (disk_len bytes) and
 * key: key is the path's verbatim key, and the path names fd's file (a
 * regular file or a block device) now, symlinks followed as QEMU and
 * virtlockd follow them.
 */
static int
is_direct(int fd, const char *disk, size_t disk_len, const char *key,
          const struct statx *stx)
{
    char path[PATH_MAX], want[LOCKD_KEY_SIZE], now[PATH_MAX];

    if (disk_len == 0 || disk_len >= sizeof(path) || disk[0] != '/' ||
        (!S_ISREG(stx->stx_mode) && !S_ISBLK(stx->stx_mode)))
        return 0;
    memcpy(path, disk, disk_len);
    path[disk_len] = '\0';
    if (strlen(path) != disk_len || lockd_key_resource(path, disk_len, want) < 0 ||
        strcmp(want, key) != 0)
        return 0;
    /* The kernel's name of fd is the path itself: nothing to look up. */
    if (fd_path(fd, now, sizeof(now)) == 0 && strcmp(now, path) == 0)
        return 1;
    /* Another spelling (a symlink: /dev/disk/by-id/...): the client's path
     * may cross any filesystem, one whose server hangs included, so it is
     * looked up by a worker, never on the loop. */
    return fsw_name_is(stx, path, 1, PROVE_WAIT_MS) == 1;
}

/*
 * Whether stx is on the lockspace's mount: a file bind-mounted over
 * <dir>/<key> (or a user's own mount over <dir>) has the right name but is
 * not the lockspace's.  (Not by device: on overlayfs a file shows its
 * layer's device, its directory the overlay's; the device only where the
 * kernel gives no mount id.)
 */
static int
on_space_mount(const struct conn *c, const struct statx *stx)
{
    return (c->space_mnt && (stx->stx_mask & STATX_MNT_ID))
               ? stx->stx_mnt_id == c->space_mnt
               : makedev(stx->stx_dev_major, stx->stx_dev_minor) == c->space_dev;
}

/*
 * in_space() for a lockspace that names its files after devices (lvm,
 * scsi): fd's name is <dir>/<name>, where name hashes to key.
 */
static int
in_named_space(const struct conn *c, int fd, const char *key, const struct statx *stx)
{
    char path[PATH_MAX], want[LOCKD_KEY_SIZE];
    size_t len = strlen(c->space_path);
    const char *name;
    struct statx at;

    if (!S_ISREG(stx->stx_mode) || !on_space_mount(c, stx) ||
        fd_path(fd, path, sizeof(path)) < 0 || strncmp(path, c->space_path, len) != 0 ||
        path[len] != '/' || len == 1)
        return 0;
    name = path + len + 1;
    if (!name_key_valid(name) || lockd_key_resource(name, strlen(name), want) < 0 ||
        strcmp(want, key) != 0)
        return 0;
    /* The name as the kernel has it may be stale (renamed since): look it up. */
    return c->space_fd < 0 ||
           (statx(c->space_fd, name, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC,
                  STATX_TYPE | STATX_INO, &at) == 0 &&
            S_ISREG(at.stx_mode) && at.stx_ino == stx->stx_ino &&
            at.stx_dev_major == stx->stx_dev_major &&
            at.stx_dev_minor == stx->stx_dev_minor);
}

/*
 * Whether fd is the lease file of key in the lockspace c showed: on that
 * directory's mount, and named <dir>/<key> now (a memfd, a file of that
 * name elsewhere, or one unlinked since is not).  Without a shown
 * lockspace there is nothing to compare with, and the lease is listed under
 * none (SPACE_NONE).
 */
static int
in_space(const struct conn *c, int fd, const char *key, const struct statx *stx)
{
    char path[PATH_MAX];
    size_t len;

    if (!c->space_path)
        return !S_ISBLK(stx->stx_mode); /* only a direct lease is a device */
    if (c->named)
        return in_named_space(c, fd, key, stx);
    if (!on_space_mount(c, stx))
        return 0;
    /* On a local filesystem the file at <dir>/<key>, looked up from the
     * directory itself, must be fd's inode: half the cost of reading fd's
     * name from /proc (2.1 against 3.9 us here).  A hard link elsewhere
     * of that file passes, as it should: it is the same file and lock. */
    if (c->space_fd >= 0) {
        struct statx at;

        return statx(c->space_fd, key, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC,
                     STATX_TYPE | STATX_INO, &at) == 0 &&
               S_ISREG(at.stx_mode) && at.stx_ino == stx->stx_ino &&
               at.stx_dev_major == stx->stx_dev_major && at.stx_dev_minor == stx->stx_dev_minor;
    }
    if (fd_path(fd, path, sizeof(path)) < 0)
        return 0;
    len = strlen(c->space_path);
    if (strncmp(path, c->space_path, len) != 0 ||
        (len == 1 ? path[1] == '/' : path[len] != '/'))
        return 0;
    if (strcmp(path + len + (len > 1), key) == 0)
        return 1;
    /* The kernel's name of a FUSE file can read "<name> (deleted)" when it
     * is not: a lookup through another dentry (two processes creating one
     * lease file at once, found on GlusterFS) makes the kernel drop the
     * first one.  The name is then looked up, by the worker, since the
     * server may be asked. */
    {
        static const char del[] = " (deleted)";
        size_t klen = strlen(key), at = len + (len > 1);

        if (!fsw_is_fuse(stx) || strlen(path + at) != klen + sizeof(del) - 1 ||
            strncmp(path + at, key, klen) != 0 || strcmp(path + at + klen, del) != 0)
            return 0;
        path[at + klen] = '\0';
        return fsw_name_is(stx, path, 0, PROVE_WAIT_MS) == 1;
    }
}

/* Each hand-over item's statx, taken once by check_item(); check_ofds()
 * orders the items by it (with ofd_sort_fds).  And whether its lock was
 * proven by asking its FUSE server. */
static struct statx ofd_sort_st[PROTO_FDS_MAX];
static uint8_t item_asked[PROTO_FDS_MAX];

/* Refuse a hand-over whose fd is not what it claims; returns 0 or -errno. */
static int
check_item(const struct conn *c, const struct proto_req *req, size_t i, int fd)
{
    const struct proto_item *it = &req->items[i];
    struct statx *stx = &ofd_sort_st[i];
    char key[LOCKD_KEY_SIZE];
    int r = fsw_statx(fd, stx) < 0 ? 0 : fd_has_lease(fd, it->mode, stx, PROVE_ASK);

    item_asked[i] = r == 2;
    if (r == 2)
        r = 1;
    key_to_hex(it->key, key);
    if (r == 1 && (c->direct ? is_direct(fd, it->disk, it->disk_len, key, stx)
                             : in_space(c, fd, key, stx)))
        return 0;
    if (r == 1 && c->direct) {
        log_refusal(
            c->uid, 4,
            "refused direct lease %.*s (%s) for pid %d from uid %u: fd is "
            "not that disk (a regular file or block device that path names, whose "
            "verbatim key is the key)",
            (int)it->disk_len, it->disk, key, (int)req->pid, c->uid);
        return -EBADFD;
    }
    if (r == 1) {
        char path[PATH_MAX];

        if (fd_path(fd, path, sizeof(path)) < 0)
            snprintf(path, sizeof(path), "?");
        log_refusal(c->uid, 4, "refused lease %.*s (%s) for pid %d from uid %u: fd is not "
                    "the file of that key in the lockspace %s, but %s",
                    (int)it->disk_len, it->disk, key, (int)req->pid, c->uid, c->space_path,
                    path);
        return -EBADFD;
    }
    log_refusal(c->uid, 4, "refused lease %.*s (%s) for pid %d from uid %u: %s",
                (int)it->disk_len, it->disk, key, (int)req->pid, c->uid,
                r < 0 ? strerror(-r)
                : it->mode == LOCKD_SHARED
                    ? "fd is not a file holding an OFD read lock on byte 0"
                    : "fd is not a file holding an OFD write lock on byte 0");
    return r < 0 ? r : -EBADFD;
}

/* Order of hand-over items by their fds' inode, then open file description
 * (kcmp), for finding two items that are one description. */
static const int *ofd_sort_fds;

static int
ofd_item_cmp(const void *pa, const void *pb)
{
    uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
    const struct statx *x = &ofd_sort_st[a], *y = &ofd_sort_st[b];

    if (x->stx_dev_major != y->stx_dev_major)
        return x->stx_dev_major < y->stx_dev_major ? -1 : 1;
    if (x->stx_dev_minor != y->stx_dev_minor)
        return x->stx_dev_minor < y->stx_dev_minor ? -1 : 1;
    if (x->stx_ino != y->stx_ino)
        return x->stx_ino < y->stx_ino ? -1 : 1;
    return ofd_cmp(ofd_sort_fds[a], ofd_sort_fds[b]);
}

/*
 * One open file description is one lease.  An item whose description the
 * helper already holds is the same hand-over sent again (a manager that lost
 * the reply retries) only if it is the same owner's lease of the same key
 * and mode: *again gets that lease, and the request gets its id back.  Any
 * other reuse (another owner, another key, or two items of one request) is
 * refused: releasing one would unlock the other.  Returns 0 or -EEXIST.
 */
static int
check_ofds(const struct conn *c, const struct owner *o, const struct proto_req *req,
           const int *fds, uint32_t *again)
{
    uint32_t order[PROTO_FDS_MAX], i;
    const char *why = NULL;

    if (ofd_rebuild() < 0)
        return -ENOMEM;
    for (i = 0; i < req->count; i++)
        order[i] = i; /* check_item() took each statx */
    for (i = 0; i < req->count && !why; i++) {
        const struct lease *l;

        again[i] = ofd_find(fds[i], ofd_sort_st[i].stx_ino);
        if (again[i] == NONE)
            continue;
        l = &H.leases[again[i]];
        if (l->owner != owner_slot(o) || l->mode != req->items[i].mode ||
            l->uid != c->uid || memcmp(l->key, req->items[i].key, PROTO_KEY_BYTES) != 0)
            why = "its open file description is already another lease";
    }
    if (!why && req->count > 1) {
        ofd_sort_fds = fds;
        qsort(order, req->count, sizeof(order[0]), ofd_item_cmp);
        for (i = 1; i < req->count && !why; i++)
            if (ofd_item_cmp(&order[i - 1], &order[i]) == 0)
                why = "two of its items are one open file description";
    }
    if (!why)
        return 0;
    log_refusal(c->uid, 4, "refused a hand-over for pid %d from uid %u: %s", (int)req->pid,
                c->uid, why);
    return -EEXIST;
}

/* The number (from 1) of the lockspace (dev, ino): a lease keeps 4 bytes,
 * not 16, and there are few lockspaces.  SPACE_ANY if out of memory. */
static uint32_t
space_intern(uint64_t dev, uint64_t ino)
{
    void *v;
    uint32_t i;

    for (i = 0; i < H.nspaces; i++)
        if (H.spaces[i].dev == dev && H.spaces[i].ino == ino)
            return i + 1;
    if (H.nspaces + 1 >= SPACE_NONE)
        return SPACE_ANY;
    v = realloc(H.spaces, (H.nspaces + 1) * sizeof(*H.spaces));
    if (!v)
        return SPACE_ANY;
    H.spaces = v;
    H.spaces[H.nspaces].dev = dev;
    H.spaces[H.nspaces].ino = ino;
    return ++H.nspaces;
}

/*
 * HANDOFF: every fd is checked, and every allocation made, before any lease
 * is taken over, so the request is all or nothing without an undo path.
 */
static int
do_handoff(struct conn *c, const struct proto_req *req, const int *fds, struct proto_wr *wr)
{
    struct owner *o = owner_find(req->pid);
    char *disks[PROTO_FDS_MAX], where[PATH_MAX + 16] = "";
    uint32_t again[PROTO_FDS_MAX], limit, i, slot = NONE, space;
    struct uid_count *u;
    int r = 0;

    /* An owner that has just died is not polled for here: its pidfd event
     * is level-triggered and releases whatever is handed over meanwhile. */
    if (!o || !may_see(c, o))
        return -ESRCH;
    u = uid_find(c->uid, 1);
    limit = c->uid == 0 ? LEASES_PER_UID : H.user_leases;
    if (!u)
        return -ENOMEM;
    if (u->leases + req->count > limit || !fds_room(c->uid, req->count))
        return -EDQUOT;
    space = c->space_path ? space_intern(c->space_dev, c->space_ino) : SPACE_NONE;
    if (space == SPACE_ANY)
        return -ENOMEM;
    for (i = 0; i < req->count && r == 0; i++)
        r = check_item(c, req, i, fds[i]);
    probe_release();
    if (r == 0)
        r = check_ofds(c, o, req, fds, again);
    if (r < 0)
        return r;
    if (H.verbose && c->space_path)
        snprintf(where, sizeof(where), "in lockspace %s", c->space_path);
    else if (H.verbose)
        snprintf(where, sizeof(where), c->direct ? "direct" : "lockspace not shown");
    for (i = 0; i < req->count; i++)
        if (!(disks[i] = strndup(req->items[i].disk, req->items[i].disk_len)))
            break;
    r = i == req->count ? lease_slots_reserve(req->count) : -ENOMEM;
    if (r < 0) {
        while (i-- > 0)
            free(disks[i]);
        return r;
    }
    for (i = 0; i < req->count; i++) {
        struct lease *l;

        slot = again[i];
        if (slot != NONE && H.leases[slot].lost) {
            /* check_item() just found its lock: held again, through
             * another copy of the description. */
            H.leases[slot].lost = 0;
            o->nlost--, H.nlost--;
            changed();
        }
        if (slot != NONE) { /* the same hand-over again: same answer */
            lease_log(slot, "handed over", "again (the lease it already was)");
            fd_dispose(fds[i], 0);
            free(disks[i]);
            wr_u64(wr, lease_id(slot));
            continue;
        }
        (void)lease_slot_alloc(&slot); /* cannot fail: reserved above */
        l = &H.leases[slot];
        l->gen = H.next_gen++;
        l->fd = fds[i];
        l->owner = owner_slot(o);
        l->uid = c->uid;
        l->ino = ofd_sort_st[i].stx_ino; /* check_item() took it */
        l->local = fsw_close_is_local(&ofd_sort_st[i]) != 0;
        l->asked = item_asked[i];
        l->space = space;
        l->mode = req->items[i].mode;
        l->disk = disks[i];
        memcpy(l->key, req->items[i].key, PROTO_KEY_BYTES);
        lease_link(slot);
        lease_log(slot, "handed over", where);
        state_log_lease(slot, STATE_LEASE_ADDED);
        store_push_lease(slot);
        wr_u64(wr, lease_id(slot));
    }
    return 0;
}

/*
 * SPACE: the client shows the lockspace directory its hand-overs come from
 * (lockd_conn_handoff() does, once per connection and lockspace).  Its
 * identity and name are kept, and on a local filesystem the fd too (for
 * in_space()).
 */
static int
do_space(struct conn *c, int fd, int named)
{
    char path[PATH_MAX], *copy;
    struct statx stx;
    int r;

    if (fd < 0) { /* direct leases from now on */
        free(c->space_path);
        c->space_path = NULL;
        safe_close(c->space_fd);
        c->space_fd = -1;
        c->direct = 1;
        return 0;
    }
    c->direct = 0;
    c->named = named != 0;
    if (fsw_statx(fd, &stx) < 0 || !S_ISDIR(stx.stx_mode))
        return -ENOTDIR;
    r = fd_path(fd, path, sizeof(path));
    if (r < 0)
        return r;
    if (path[0] != '/' || strstr(path, " (deleted)"))
        return -ENOENT;
    copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    free(c->space_path);
    c->space_path = copy;
    c->space_dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
    c->space_ino = stx.stx_ino;
    c->space_mnt = stx.stx_mask & STATX_MNT_ID ? stx.stx_mnt_id : 0;
    safe_close(c->space_fd);
    /* Without it (out of fds, or not local) in_space() reads names. */
    c->space_fd = fsw_close_is_local(&stx) ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
    return 0;
}

static int
do_release(struct conn *c, const struct proto_req *req, struct proto_wr *wr)
{
    struct owner *o = owner_find(req->pid);
    uint32_t n = 0, i;

    /* A notice may arrive late, after the same owner was handed new leases:
     * "all of this owner" would free those.  Notices name lease ids. */
    if (req->count == 0 && req->hdr.type == PROTO_NOTICE)
        return -EINVAL;
    if (!o || !may_see(c, o))
        return -ESRCH;
    if (req->count == 0 && req->hdr.type != PROTO_FORGET) {
        uint32_t l, next;

        for (l = o->head; l != NONE; l = next) {
            next = H.leases[l].next;
            if (may_see_lease(c, &H.leases[l])) {
                lease_free(l, "released by request");
                n++;
            }
        }
    }
    for (i = 0; i < req->count; i++) {
        uint32_t slot = lease_by_id(proto_req_id(req, i));

        if (slot == NONE || H.leases[slot].owner != owner_slot(o) ||
            !may_see_lease(c, &H.leases[slot]))
            continue; /* stale, another owner's or uid's: never touched */
        if (req->hdr.type == PROTO_FORGET)
            lease_free_how(slot, "taken back by its client", 0);
        else
            lease_free(slot, "released by request");
        n++;
    }
    if (wr)
        wr_u32(wr, n);
    return 0;
}

/* The leases of o that c sees and that are held (not lost). */
static uint32_t
owner_held_seen(const struct conn *c, const struct owner *o)
{
    uint32_t l, n = 0;

    if (c->uid == 0)
        return o->nleases - o->nlost;
    for (l = o->head; l != NONE; l = H.leases[l].next)
        n += may_see_lease(c, &H.leases[l]) && !H.leases[l].lost;
    return n;
}

/* A row of a LIST or OWNERS page: writes the row for slot, or returns 1 to
 * skip a slot the request does not select. */
typedef int (*row_fn)(const struct conn *c, const struct proto_req *req, uint32_t slot,
                      struct proto_wr *wr);

static int
lease_row(const struct conn *c, const struct proto_req *req, uint32_t slot,
          struct proto_wr *wr)
{
    const struct lease *l = &H.leases[slot];
    const struct owner *o = &H.owners[l->owner];

    if (l->gen == 0 || !may_see_lease(c, l) || (req->pid && o->pid != req->pid) ||
        (req->key && memcmp(req->key, l->key, PROTO_KEY_BYTES) != 0))
        return 1;
    /* A key is a disk in one lockspace: asked for the holders of a key by
     * a connection that showed its lockspace, a lease of that key in another
     * directory (or handed over without a lockspace) is another disk's.  (A
     * listing by owner shows all of the owner's, whichever lockspace.) */
    if (req->key && c->space_path && l->space != SPACE_ANY &&
        (l->space == SPACE_NONE || H.spaces[l->space - 1].dev != c->space_dev ||
         H.spaces[l->space - 1].ino != c->space_ino))
        return 1;
    /* Listed as held only if it is, now. */
    lease_verify(slot, 0);
    wr_u64(wr, lease_id(slot));
    wr_u8(wr, l->lost ? LOCKD_LOST : l->mode);
    wr_put(wr, l->key, PROTO_KEY_BYTES);
    wr_i32(wr, o->pid);
    wr_u32(wr, l->uid);
    wr_put(wr, o->uuid, PROTO_UUID_BYTES);
    wr_cstr(wr, o->name);
    wr_cstr(wr, l->disk);
    return 0;
}

static int
owner_row(const struct conn *c, const struct proto_req *req, uint32_t slot,
          struct proto_wr *wr)
{
    const struct owner *o = &H.owners[slot];

    (void)req;
    if (o->pid == 0 || !may_see(c, o))
        return 1;
    wr_i32(wr, o->pid);
    wr_u32(wr, o->uid);
    wr_put(wr, o->uuid, PROTO_UUID_BYTES);
    wr_cstr(wr, o->name);
    wr_u32(wr, owner_held_seen(c, o));
    return 0;
}

/*
 * One page of rows from slot req->cursor on: u64 next cursor (0 when this is
 * the last page), u16 count, rows.  A page ends where the next row would not
 * fit, so no reply outgrows a message; the cursor is just a slot number, so
 * the helper keeps no state between pages.
 */
static void
page(const struct conn *c, const struct proto_req *req, uint32_t nslots, row_fn row,
     struct proto_wr *wr)
{
    size_t at_cursor = wr->len, at_count, before;
    uint64_t slot;
    uint16_t count = 0;

    wr_u64(wr, 0);
    at_count = wr->len;
    wr_u16(wr, 0);
    for (slot = req->cursor; slot < nslots; slot++) {
        before = wr->len;
        if (row(c, req, (uint32_t)slot, wr) > 0)
            continue;
        if (count == UINT16_MAX || wr->bad || wr->len > LIST_PAGE_BYTES) {
            wr->len = before;
            wr->bad = 0;
            memcpy(wr->buf + at_cursor, &slot, 8); /* the next page starts here */
            break;
        }
        count++;
    }
    memcpy(wr->buf + at_count, &count, 2);
}

static void
reply(struct conn *c, const struct proto_hdr *req, int status, struct proto_wr *wr)
{
    int r;

    if (status < 0) {
        wr->len = 0;
        wr->bad = 0;
        proto_begin(wr, req->type, req->serial, status, 0);
    } else
        memcpy(wr->buf + 12, &status, sizeof(status));
    stash_settle(); /* a taken-back lease's copy leaves the stash first */
    r = proto_finish(wr);
    if (r == 0)
        r = proto_send(c->fd, wr->buf, wr->len, NULL, 0);
    if (r < 0)
        log_debug("reply to uid %u pid %d failed: %s", c->uid, (int)c->pid, strerror(-r));
}

static const char *
type_name(uint16_t type)
{
    static const char *const names[] = {"?",    "register", "handoff", "release",
                                        "notice", "list",   "owners",  "status",
                                        "forget", "stop",   "stuck",  "space"};

    return type < sizeof(names) / sizeof(names[0]) ? names[type] : "?";
}

/* STATUS: root sees the totals; anyone else the counts of the owners its
 * uid registered, like every other listing. */
static void
status_counts(const struct conn *c, struct proto_wr *wr)
{
    uint64_t owners = 0, leases = 0, stored = 0;
    uint32_t i, l;

    if (c->uid == 0) {
        owners = H.nowners;
        leases = H.nleases - H.nlost;
        stored = H.store_on ? H.store_leases : 0;
    }
    for (i = 0; c->uid != 0 && i < H.nowner_slots; i++) {
        if (!H.owners[i].pid || !may_see(c, &H.owners[i]))
            continue;
        owners++;
        leases += owner_held_seen(c, &H.owners[i]);
        for (l = H.owners[i].head; l != NONE; l = H.leases[l].next)
            stored += may_see_lease(c, &H.leases[l]) && H.leases[l].stash_seq;
    }
    wr_u64(wr, owners);
    wr_u64(wr, leases);
    wr_u64(wr, stored);
}

/*
 * STOP: root stops the helper on purpose.  Refused while owners hold leases
 * unless forced; then every lease is released (unlocked: the guests run
 * unprotected, and a manager's copy must not keep one alive by accident)
 * and the loop ends after this reply.  Under systemd the unit refuses
 * `systemctl stop` (RefuseManualStop=), so this is how it is stopped, and
 * exiting 0 leaves it stopped (Restart=on-failure).
 */
static int
do_stop(const struct conn *c, const struct proto_req *req)
{
    uint32_t i, owners = 0;

    if (c->uid != 0)
        return -EPERM;
    for (i = 0; i < H.nowner_slots; i++)
        owners += H.owners[i].pid && H.owners[i].nleases > 0;
    if (owners > 0 && !req->force)
        return -EBUSY;
    log_warn("stopping on request of uid %u pid %d: %u guest%s with %u lease%s lose%s "
             "their protection",
             c->uid, (int)c->pid, owners, PLURAL(owners), H.nleases, PLURAL(H.nleases),
             owners == 1 ? "s" : "");
    for (i = 0; i < H.nowner_slots; i++)
        if (H.owners[i].pid)
            owner_free(&H.owners[i], "the helper was stopped on request");
    H.quit = 1;
    return 0;
}

/* Handle one received request; fds are ours to keep or close. */
static void
dispatch(struct conn *c, const struct proto_req *req, int *fds, size_t nfds, int r)
{
    struct proto_wr wr = {.buf = H.out, .cap = sizeof(H.out)};
    size_t i;

    proto_begin(&wr, req->hdr.type, req->hdr.serial, 0, 0);
    if (r == 0) {
        switch (req->hdr.type) {
        case PROTO_REGISTER:
            r = do_register(c, req, nfds ? fds[0] : -1);
            nfds = 0; /* do_register took the pidfd */
            break;
        case PROTO_HANDOFF:
            r = do_handoff(c, req, fds, &wr);
            if (r == 0)
                nfds = 0; /* kept */
            break;
        case PROTO_RELEASE:
        case PROTO_NOTICE:
        case PROTO_FORGET:
            r = do_release(c, req, req->hdr.type != PROTO_NOTICE ? &wr : NULL);
            break;
        case PROTO_LIST:
            page(c, req, H.nlease_slots, lease_row, &wr);
            break;
        case PROTO_OWNERS:
            page(c, req, H.nowner_slots, owner_row, &wr);
            break;
        case PROTO_STATUS:
            status_counts(c, &wr);
            break;
        case PROTO_STOP:
            r = do_stop(c, req);
            break;
        case PROTO_SPACE:
            r = do_space(c, nfds ? fds[0] : -1, req->named);
            break;
        case PROTO_STUCK: {
            char text[PROTO_STUCK_TEXT_MAX];
            int n = fsw_stuck(text, sizeof(text));

            wr_u16(&wr, (uint16_t)n);
            wr_cstr(&wr, text);
            break;
        }
        }
    }
    for (i = 0; i < nfds; i++)
        fd_dispose(fds[i], 0); /* a client's fd: its close may block */
    if (r < 0 && r != -EBADFD)
        log_refusal(c->uid, 5, "refused %s from uid %u pid %d: %s", type_name(req->hdr.type),
                    c->uid,
                   (int)c->pid, strerror(-r));
    /* A notice is never answered: its sender reads no reply, and one left
     * in the socket would be taken for the answer to its next request. */
    if (req->hdr.type != PROTO_NOTICE)
        reply(c, &req->hdr, r, &wr);
}

/* ------------------------------------------------------------------------
 * Connections
 */

static void
conn_drop(struct conn *c)
{
    struct uid_count *u = uid_find(c->uid, 0);

    (void)epoll_ctl(H.epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    safe_close(c->fd);
    c->fd = -1;
    free(c->space_path);
    c->space_path = NULL;
    safe_close(c->space_fd);
    c->space_fd = -1;
    H.nconns--;
    if (u && u->conns)
        u->conns--;
    if (H.nconns == 0 && H.nleases == 0)
        H.idle_since_ns = mono_ns();
}

static void
reserve_fill(void)
{
    int i;

    for (i = 0; i < RESERVE_FDS; i++)
        if (H.reserve[i] < 0)
            H.reserve[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void
reserve_free(void)
{
    int i;

    for (i = 0; i < RESERVE_FDS; i++) {
        safe_close(H.reserve[i]);
        H.reserve[i] = -1;
    }
}

/* After fds ran out: refill the reserve and, once it is whole, accept
 * connections again. */
static void
reserve_listen_again(void)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_LISTEN};

    reserve_fill();
    if (H.listen_paused && H.reserve[RESERVE_FDS - 1] >= 0 &&
        epoll_ctl(H.epoll_fd, EPOLL_CTL_MOD, H.listen_fd, &ev) == 0)
        H.listen_paused = 0;
}

static int
conn_add(int fd)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    struct epoll_event ev = {.events = EPOLLIN};
    struct uid_count *u;
    uint32_t i;

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return negerrno();
    u = uid_find(cred.uid, 1);
    if (!u)
        return -ENOMEM;
    for (i = 0; i < CONN_MAX && H.conns[i].fd >= 0; i++)
        ;
    /* One uid cannot take every connection: root's room is kept. */
    if (i == CONN_MAX ||
        (cred.uid != 0 && (u->conns >= H.user_conns || H.nconns >= CONN_MAX - ROOT_CONNS))) {
        log_refusal(cred.uid, 4, "refused connection from uid %u pid %d: %u of its own open, "
                    "%u in all (at most %u per uid, %d kept for root)", cred.uid,
                    (int)cred.pid, u->conns, H.nconns, H.user_conns, ROOT_CONNS);
        return -EUSERS;
    }
    ev.data.u64 = TAG_CONN | i;
    if (epoll_ctl(H.epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return negerrno();
    H.conns[i] = (struct conn){.fd = fd, .uid = cred.uid, .pid = cred.pid, .space_fd = -1};
    H.nconns++;
    u->conns++;
    return (int)i;
}

/*
 * Accept one connection.  Out of descriptors, give back the reserve so that
 * the client can still be told so: its first request is answered -EMFILE
 * (by on_conn, when recvmsg loses the fds or the reply says why), instead of
 * the connection being left to hang in the backlog.
 */
static void
on_listen(void)
{
    int fd = accept4(H.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

    if (fd < 0 && (errno == EMFILE || errno == ENFILE) && H.reserve[0] >= 0) {
        log_err("out of file descriptors: %u lease%s held", H.nleases, PLURAL(H.nleases));
        reserve_free();
        fd = accept4(H.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    }
    if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
        /* Still none: stop watching the (level-triggered) listening socket
         * until the reserve can be refilled, or the loop would spin. */
        struct epoll_event ev = {.events = 0, .data.u64 = TAG_LISTEN};

        if (epoll_ctl(H.epoll_fd, EPOLL_CTL_MOD, H.listen_fd, &ev) == 0)
            H.listen_paused = 1;
        return;
    }
    if (fd < 0)
        return;
    if (conn_add(fd) < 0)
        safe_close(fd);
}

static void
on_conn(struct conn *c)
{
    struct proto_req *req = &H.req;
    int fds[PROTO_FDS_MAX];
    size_t nfds = 0;
    ssize_t n;
    int r;

    n = proto_recv(c->fd, H.in, sizeof(H.in), fds, &nfds, 0);
    if (n == -ETIMEDOUT) /* proto_recv's EAGAIN: nothing there after all */
        return;
    if (n <= 0) {
        if (n < 0)
            log_refusal(c->uid, 5, "dropped connection of uid %u pid %d: %s", c->uid,
                        (int)c->pid,
                       strerror((int)-n));
        conn_drop(c);
        return;
    }
    r = proto_decode_request(H.in, (size_t)n, nfds, req);
    if (nfds == PROTO_FDS_LOST)
        nfds = 0;
    if (r < 0 && req->hdr.magic != PROTO_MAGIC) {
        /* Not lockd talking: there is nobody to answer. */
        log_refusal(c->uid, 5, "dropped connection of uid %u pid %d: not a lockd message",
                    c->uid,
                   (int)c->pid);
        close_all(fds, nfds);
        conn_drop(c);
    } else
        dispatch(c, req, fds, nfds, r);
}

/* ------------------------------------------------------------------------
 * State: the re-exec hand-over and the fd store's record
 *
 * A state is a header and a sequence of records in a memfd:
 *   header  "lockdst\0", u32 version, u32 0, u64 start, u64 end
 *   records u8 type, u16 length, body; between start and end
 *     OWNER   i32 pid, u64 gen, u32 uid, i32 pidfd, u8 flags, uuid, str name,
 *             u8 on_loss, u8 acted, u32 hook uid, str hook
 *     GONE    i32 pid, u64 gen                 an owner removed
 *     LEASE   u32 slot, u64 gen, i32 fd, i32 owner pid, u8 flags, u8 mode,
 *             key, str disk, u64 owner gen, u32 uid (that handed it over),
 *             u64 inode number (for the OFD index)
 *     FREE    u32 slot, u8 unlocked            a lease let go: released
 *                                              (1), or taken back by its
 *                                              client, lock kept (0)
 *   flags: bit 0, the fd is in systemd's fd store (under its own name, an
 *   older release's way); LEASE bit 1, its lock was proven by asking its
 *   FUSE server (struct lease's asked); bit 2, its filesystem is local
 *   (struct lease's local).  Fields past the first release's end a record
 *   and are read only when present.
 *     LISTEN  i32 fd, i32 bound (the helper bound the socket path itself)
 *     CONN    i32 fd, u32 uid, i32 pid
 *     GEN     u64 next generation
 *     EPOCH   u64 lease id epoch (lease_id())
 * A lease names its owner by generation (the pid is only a hint: a pid can
 * be reused, a generation cannot).  Fields after those a reader knows are
 * skipped, and so are unknown records: the owner gen, the lease uid, the FREE flag and
 * EPOCH came after the first release, whose states lack them (a FREE then means
 * released, a lease's owner is found by pid, and a new epoch is drawn).
 * For re-exec the helper writes a snapshot of everything, with fd numbers.
 * For the fd store it keeps one memfd, appending a record per change and
 * moving `start` past a fresh snapshot when the log has grown; fd numbers
 * there are -1, the fds come back from systemd by name: L<gen> for a lease,
 * P<gen> for an owner's pidfd (gens are never reused, so a name can never
 * be confused with a later lease in the same slot or a later owner with the
 * same pid).
 * A single pwrite() of the header switches atomically: a process dies only
 * between system calls.  Later releases must keep reading version 1.
 */
#define STATE_MAGIC   "lockdst"
#define STATE_VERSION 1
#define STATE_HDR     32
#define STATE_MAX     (256u << 20) /* far beyond 2^20 leases of 4 KiB names */

enum { ST_OWNER = 1, ST_GONE, ST_LEASE, ST_FREE, ST_LISTEN, ST_CONN, ST_GEN, ST_EPOCH };

static void
rec_begin(struct proto_wr *wr, uint8_t type)
{
    wr_u8(wr, type);
    wr_u16(wr, 0);
}

/* Fill in the length of the record that starts at `at`. */
static void
rec_end(struct proto_wr *wr, size_t at)
{
    uint16_t len = (uint16_t)(wr->len - at - 3);

    if (!wr->bad)
        memcpy(wr->buf + at + 1, &len, 2);
}

/* The largest OWNER record: its fixed fields, a name and a hook. */
#define OWNER_REC_MAX (64 + LOCKD_OWNER_NAME_MAX + LOCKD_COMMAND_MAX)

static void
rec_owner(struct proto_wr *wr, const struct owner *o, int with_fds)
{
    size_t at = wr->len;

    rec_begin(wr, ST_OWNER);
    wr_i32(wr, o->pid);
    wr_u64(wr, o->gen);
    wr_u32(wr, o->uid);
    wr_i32(wr, with_fds ? o->pidfd : -1);
    wr_u8(wr, o->named);
    wr_put(wr, o->uuid, PROTO_UUID_BYTES);
    wr_cstr(wr, o->name);
    wr_u8(wr, o->on_loss);
    wr_u8(wr, o->acted);
    wr_u32(wr, o->hook_uid);
    wr_cstr(wr, o->hook);
    rec_end(wr, at);
}

static void
rec_lease(struct proto_wr *wr, uint32_t slot, int with_fds)
{
    const struct lease *l = &H.leases[slot];
    size_t at = wr->len;

    rec_begin(wr, ST_LEASE);
    wr_u32(wr, slot);
    wr_u64(wr, l->gen);
    wr_i32(wr, with_fds ? l->fd : -1);
    wr_i32(wr, H.owners[l->owner].pid);
    wr_u8(wr, (uint8_t)(l->named | l->asked << 1 | l->local << 2));
    wr_u8(wr, l->mode);
    wr_put(wr, l->key, PROTO_KEY_BYTES);
    wr_cstr(wr, l->disk);
    wr_u64(wr, H.owners[l->owner].gen);
    wr_u32(wr, l->uid);
    wr_u64(wr, l->ino);
    /* A lockspace's identity: (0, 0) none recorded, (~0, 0) none shown. */
    wr_u64(wr, l->space == SPACE_NONE  ? UINT64_MAX
               : l->space == SPACE_ANY ? 0
                                       : H.spaces[l->space - 1].dev);
    wr_u64(wr, l->space == SPACE_NONE || l->space == SPACE_ANY ? 0 : H.spaces[l->space - 1].ino);
    rec_end(wr, at);
}

static void
rec_small(struct proto_wr *wr, uint8_t type, const void *p, size_t n)
{
    size_t at = wr->len;

    rec_begin(wr, type);
    wr_put(wr, p, n);
    rec_end(wr, at);
}

/* Write everything, as records, to fd at offset; returns the end offset. */
static int64_t
state_snapshot(int fd, uint64_t offset, int with_fds)
{
    static uint8_t buf[PROTO_HDR_SIZE + PROTO_BODY_MAX]; /* never a reply's buffer */
    struct proto_wr wr = {.buf = buf, .cap = sizeof(buf)};
    uint32_t i;

#define FLUSH_IF(need)                                                              \
    do {                                                                            \
        if (wr.cap - wr.len < (need)) {                                             \
            if (pwrite(fd, wr.buf, wr.len, (off_t)offset) != (ssize_t)wr.len)       \
                return -EIO;                                                        \
            offset += wr.len;                                                       \
            wr.len = 0;                                                             \
        }                                                                           \
    } while (0)

    rec_small(&wr, ST_GEN, &H.next_gen, 8);
    rec_small(&wr, ST_EPOCH, &H.id_epoch, 8);
    if (with_fds) {
        int32_t lv[2] = {H.listen_fd, H.bound};

        rec_small(&wr, ST_LISTEN, lv, sizeof(lv));
        for (i = 0; i < CONN_MAX; i++)
            if (H.conns[i].fd >= 0) {
                const struct conn *c = &H.conns[i];
                size_t at = wr.len;

                FLUSH_IF(64 + PATH_MAX);
                rec_begin(&wr, ST_CONN);
                wr_i32(&wr, c->fd);
                wr_i32(&wr, (int32_t)c->uid);
                wr_i32(&wr, c->pid);
                if (c->space_path) {
                    wr_u64(&wr, c->space_dev);
                    wr_u64(&wr, c->space_ino);
                    wr_cstr(&wr, c->space_path);
                    wr_u64(&wr, c->space_mnt);
                }
                rec_end(&wr, at);
            }
    }
    for (i = 0; i < H.nowner_slots; i++)
        if (H.owners[i].pid) {
            FLUSH_IF(OWNER_REC_MAX);
            rec_owner(&wr, &H.owners[i], with_fds);
        }
    for (i = 0; i < H.nlease_slots; i++)
        if (H.leases[i].gen) {
            FLUSH_IF(128 + LOCKD_NAME_MAX);
            rec_lease(&wr, i, with_fds);
        }
    /* A record that did not fit would leave out every record after it. */
    if (wr.bad)
        return -EIO;
    FLUSH_IF(wr.cap);
#undef FLUSH_IF
    return (int64_t)offset;
}

static int
state_header(int fd, uint64_t start, uint64_t end)
{
    uint8_t h[STATE_HDR] = STATE_MAGIC;
    uint32_t v = STATE_VERSION;

    memcpy(h + 8, &v, 4);
    memcpy(h + 16, &start, 8);
    memcpy(h + 24, &end, 8);
    return pwrite(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h) ? 0 : -EIO;
}

/* Append one record to the store's state log. */
static void
state_append(struct proto_wr *wr)
{
    if (H.state_fd < 0)
        return;
    if (wr->bad) { /* never: each caller's buffer holds its largest record */
        log_err("a state record did not fit its buffer: not written");
        return;
    }
    if (pwrite(H.state_fd, wr->buf, wr->len, (off_t)H.state_end) != (ssize_t)wr->len ||
        state_header(H.state_fd, H.state_start, H.state_end + wr->len) < 0) {
        log_err("cannot write the fd store's state: %s", strerror(errno));
        return;
    }
    H.state_end += wr->len;
}

static void state_compact(void);

static void
state_log_owner(const struct owner *o, int add)
{
    uint8_t buf[OWNER_REC_MAX];
    struct proto_wr wr = {.buf = buf, .cap = sizeof(buf)};

    if (H.state_fd < 0)
        return;
    if (add)
        rec_owner(&wr, o, 0);
    else {
        size_t at = wr.len;

        rec_begin(&wr, ST_GONE);
        wr_i32(&wr, o->pid);
        wr_u64(&wr, o->gen);
        rec_end(&wr, at);
    }
    state_append(&wr);
}

static void
state_log_lease(uint32_t slot, int how)
{
    uint8_t buf[128 + LOCKD_NAME_MAX];
    struct proto_wr wr = {.buf = buf, .cap = sizeof(buf)};

    if (H.state_fd < 0)
        return;
    if (how == STATE_LEASE_ADDED)
        rec_lease(&wr, slot, 0);
    else {
        size_t at = wr.len;

        rec_begin(&wr, ST_FREE);
        wr_u32(&wr, slot);
        wr_u8(&wr, how == STATE_FREE_RELEASED);
        rec_end(&wr, at);
    }
    state_append(&wr);
    /* Keep the log within a few snapshots' size: compaction writes a fresh
     * snapshot after the log and moves `start` to it in one header write. */
    if (H.state_end - H.state_start > 4 * ((uint64_t)H.nleases * 96 + 65536))
        H.compact_due = 1; /* after this event, when the state is whole again */
}

static void
state_compact(void)
{
    int64_t end = state_snapshot(H.state_fd, H.state_end, 0);

    if (end < 0 || state_header(H.state_fd, H.state_end, (uint64_t)end) < 0) {
        log_err("cannot compact the fd store's state");
        return;
    }
    /* Give the dead part back to the kernel; the file stays sparse. */
    (void)fallocate(H.state_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, STATE_HDR,
                    (off_t)(H.state_end - STATE_HDR));
    H.state_start = H.state_end;
    H.state_end = (uint64_t)end;
}

/* Where restored records say an fd lives: a number (re-exec), or a name in
 * what systemd handed back (the stash's entries, or an fd stored under its
 * own name by an older release), looked up in a sorted index. */
struct named_fd {
    char kind;
    uint8_t by_name; /* stored under its own name, not in a stash */
    uint64_t number;
    int fd;
};

struct adopt {
    int reexec;
    struct named_fd *named;
    size_t nnamed, cap;
};

static int
named_cmp(const void *a, const void *b)
{
    const struct named_fd *x = a, *y = b;

    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    return x->number < y->number ? -1 : x->number > y->number;
}

static int
named_add(struct adopt *a, char kind, uint64_t number, int fd, int by_name)
{
    if (a->nnamed == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        struct named_fd *n = realloc(a->named, cap * sizeof(*n));

        if (!n)
            return -ENOMEM;
        a->named = n;
        a->cap = cap;
    }
    a->named[a->nnamed++] = (struct named_fd){kind, (uint8_t)by_name, number, fd};
    return 0;
}

/* Sort the index; a copy of an entry (two stashes after a crash in the
 * middle of a switch) is closed: every copy is the same open file
 * description, so the one kept holds its lock. */
static void
named_sort(struct adopt *a)
{
    size_t i, k = 0;

    if (a->nnamed == 0)
        return;
    qsort(a->named, a->nnamed, sizeof(*a->named), named_cmp);
    for (i = 1; i < a->nnamed; i++) {
        if (named_cmp(&a->named[i], &a->named[k]) == 0) {
            a->named[k].by_name |= a->named[i].by_name;
            safe_close(a->named[i].fd);
        } else
            a->named[++k] = a->named[i];
    }
    a->nnamed = k + 1;
}

/* The fd a record names; *by_name says whether it was stored under its
 * own name (which must leave the store once it is stashed). */
static int
adopt_fd(struct adopt *a, int fd_in_record, char kind, uint64_t number, uint8_t *by_name)
{
    struct named_fd key = {kind, 0, number, -1}, *n;

    *by_name = 0;
    if (a->reexec) /* our own previous image wrote it: no check per fd */
        return fd_in_record >= 3 ? fd_in_record : -EBADF;
    n = a->named ? bsearch(&key, a->named, a->nnamed, sizeof(key), named_cmp) : NULL;
    if (!n || n->fd < 0)
        return -ENOENT;
    key.fd = n->fd;
    *by_name = n->by_name;
    n->fd = -1; /* claimed */
    return key.fd;
}

/* The owner of generation gen; pid is where to look first.  A state links
 * by generation: a pid may have been reused by a later owner. */
static struct owner *
owner_of_gen(int32_t pid, uint64_t gen)
{
    struct owner *o = owner_find(pid);
    uint32_t i;

    if (o && o->gen == gen)
        return o;
    for (i = 0; i < H.nowner_slots; i++)
        if (H.owners[i].pid && H.owners[i].gen == gen)
            return &H.owners[i];
    return NULL;
}

static int
restore_owner(struct proto_rd *rd, struct adopt *a)
{
    int32_t pid = rd_i32(rd), fd;
    uint64_t gen = rd_u64(rd);
    uint32_t uid = rd_u32(rd);
    int32_t pidfd = rd_i32(rd);
    uint8_t flags = rd_u8(rd);
    const uint8_t *uuid = rd_take(rd, PROTO_UUID_BYTES);
    uint16_t nl;
    const char *name = rd_str(rd, LOCKD_OWNER_NAME_MAX, &nl);
    struct owner *o;
    uint8_t by_name;
    struct proto_req act = {.has_on_loss = 0};
    struct conn by = {.uid = uid};
    uint8_t acted = 0;

    if (rd->left >= 8) { /* the action on loss (not in an older state) */
        act.has_on_loss = 1;
        act.on_loss = rd_u8(rd);
        acted = rd_u8(rd);
        by.uid = rd_u32(rd);
        act.command = rd_str(rd, LOCKD_COMMAND_MAX, &act.command_len);
    }
    if (rd->bad || pid <= 0 || gen == 0 || act.on_loss > LOCKD_ON_LOSS_EXEC_OR_KILL)
        return -EPROTO;
    if (gen >= H.next_gen)
        H.next_gen = gen + 1;
    o = owner_find(pid);
    if (o) { /* an update of uuid, name and action */
        memcpy(o->uuid, uuid, PROTO_UUID_BYTES);
        o->acted |= acted;
        return set_name(&o->name, name, nl) < 0 ? -ENOMEM : set_on_loss(&by, o, &act);
    }
    fd = adopt_fd(a, pidfd, 'P', gen, &by_name);
    /* A pidfd whose process has been reaped shows "Pid: -1": that owner is
     * adopted all the same, and settle_restored() releases its leases. */
    if (fd >= 0 && pidfd_pid(fd) != pid && pidfd_pid(fd) != -1) {
        safe_close(fd);
        fd = -EBADF;
    }
    if (fd < 0) {
        /* Not in the store: an owner that had no lease yet (its pidfd goes
         * there with its first), or one that left before the crash (its
         * GONE record follows).  A lease whose fd comes back without an
         * owner is what matters, and restore_lease() says so. */
        log_debug("owner pid %d: no pidfd handed back", (int)pid);
        return 0;
    }
    o = owner_new(pid, uid, fd);
    if (!o)
        return -ENOMEM;
    o->gen = gen;
    o->named = a->reexec ? flags & 1 : by_name;
    o->acted = acted;
    memcpy(o->uuid, uuid, PROTO_UUID_BYTES);
    return set_name(&o->name, name, nl) < 0 ? -ENOMEM : set_on_loss(&by, o, &act);
}

static int
restore_lease(struct proto_rd *rd, struct adopt *a)
{
    uint32_t slot = rd_u32(rd);
    uint64_t gen = rd_u64(rd);
    int32_t fd = rd_i32(rd), pid = rd_i32(rd);
    uint8_t flags = rd_u8(rd), mode = rd_u8(rd);
    const uint8_t *key = rd_take(rd, PROTO_KEY_BYTES);
    uint16_t dl;
    const char *disk = rd_str(rd, LOCKD_NAME_MAX, &dl);
    struct owner *o;
    struct lease *l;
    uint64_t ino, space_dev, space_ino;
    uint32_t uid;
    uint8_t by_name;

    if (rd->bad || gen == 0 || mode > LOCKD_SHARED || slot >= LEASE_SLOTS_MAX || pid <= 0)
        return -EPROTO;
    if (gen >= H.next_gen)
        H.next_gen = gen + 1;
    fd = adopt_fd(a, fd, 'L', gen, &by_name);
    if (fd < 0)
        return 0; /* not in the store (past its bound): that lease is gone */
    o = rd->left >= 8 ? owner_of_gen(pid, rd_u64(rd)) : owner_find(pid);
    uid = rd->left >= 4 ? rd_u32(rd) : o ? o->uid : 0;
    ino = rd->left >= 8 ? rd_u64(rd) : 0; /* 0: lease_link() looks */
    space_dev = space_ino = 0; /* not recorded by an older release */
    if (rd->left >= 16) {
        space_dev = rd_u64(rd);
        space_ino = rd_u64(rd);
    }
    if (!o) {
        /* Never close what might be a held lease (see state_restore). */
        log_warn("lease %llu of pid %d has no owner: kept open, unmanaged",
                 (unsigned long long)gen, (int)pid);
        return 0;
    }
    if (lease_slot_claim(slot) < 0)
        return -EPROTO;
    l = &H.leases[slot];
    l->disk = strndup(disk, dl);
    if (!l->disk)
        return -ENOMEM;
    l->gen = gen;
    l->fd = fd;
    l->owner = owner_slot(o);
    l->uid = uid;
    l->ino = ino;
    l->space = space_dev == 0            ? SPACE_ANY
               : space_dev == UINT64_MAX ? SPACE_NONE
                                         : space_intern(space_dev, space_ino);
    l->mode = mode;
    l->named = a->reexec ? flags & 1 : by_name;
    l->asked = (flags >> 1) & 1; /* after a crash lease_verify_all() asks again */
    /* Its filesystem's kind, known at its hand-over: lease_watch() need not
     * look again (a statx each, 20 ms of a re-exec at 19,000 leases). */
    l->local = (flags >> 2) & 1;
    memcpy(l->key, key, PROTO_KEY_BYTES);
    lease_link(slot);
    return 0;
}

/* Undo the lease records of slot: a FREE record in the log.  unlocked is
 * the record's flag: 1 (or absent, in an older state) released, 0 taken
 * back by its client, who holds the lock through its own copy. */
static void
restore_free(uint32_t slot, int unlocked)
{
    if (slot < H.nlease_slots && H.leases[slot].gen) {
        /* Its fd was removed from the store after the record was written,
         * or is still there if we crashed in between: finish the job. */
        if (unlocked)
            lease_free(slot, "released before the restart");
        else
            lease_free_how(slot, "taken back before the restart", 0);
    }
}

static int
restore_record(uint8_t type, struct proto_rd *rd, struct adopt *a)
{
    int32_t v[3];
    struct owner *o;

    switch (type) {
    case ST_GEN: {
        uint64_t gen = rd_u64(rd);

        if (gen > H.next_gen)
            H.next_gen = gen;
        return 0;
    }
    case ST_EPOCH:
        H.id_epoch = rd_u64(rd) & ID_GEN_MASK;
        return 0;
    case ST_OWNER:
        return restore_owner(rd, a);
    case ST_GONE:
        v[0] = rd_i32(rd);
        if (v[0] <= 0) /* pid 0 would name a free owner slot */
            return -EPROTO;
        o = rd->left >= 8 ? owner_of_gen(v[0], rd_u64(rd)) : owner_find(v[0]);
        if (o && !rd->bad)
            owner_free(o, "gone before the restart");
        return 0;
    case ST_LEASE:
        return restore_lease(rd, a);
    case ST_FREE:
        v[0] = (int32_t)rd_u32(rd);
        restore_free((uint32_t)v[0], rd->left >= 1 ? rd_u8(rd) : 1);
        return 0;
    case ST_LISTEN:
        v[0] = rd_i32(rd), v[1] = rd_i32(rd);
        if (a->reexec && !rd->bad && fcntl(v[0], F_GETFD) >= 0) {
            H.listen_fd = v[0];
            H.bound = v[1] != 0; /* so the new image removes the socket at exit */
        }
        return 0;
    case ST_CONN:
        v[0] = rd_i32(rd), v[1] = rd_i32(rd), v[2] = rd_i32(rd);
        if (a->reexec && !rd->bad && fcntl(v[0], F_GETFD) >= 0) {
            int k = conn_add(v[0]);

            if (k < 0)
                safe_close(v[0]);
            else if (rd->left >= 18) { /* the lockspace it showed */
                uint64_t dev = rd_u64(rd), ino = rd_u64(rd);
                uint16_t len;
                const char *p = rd_str(rd, PATH_MAX, &len);

                if (!rd->bad && len > 0 && (H.conns[k].space_path = strndup(p, len))) {
                    H.conns[k].space_dev = dev;
                    H.conns[k].space_ino = ino;
                    H.conns[k].space_mnt = rd->left >= 8 ? rd_u64(rd) : 0;
                }
            }
        }
        return 0;
    default:
        return 0; /* a record a newer release added: skip it */
    }
}

/*
 * Read a state from fd and rebuild owners and leases from it.  Nothing is
 * ever locked again: the fds carry their locks.  An fd the state does not
 * mention is left open, because it might be a lease: closing it could free
 * a disk while its guest runs.
 */
static int
state_restore(int fd, struct adopt *a)
{
    uint8_t h[STATE_HDR], *buf;
    uint64_t start, end, off;
    uint32_t version;
    ssize_t n;
    int r = 0;

    if (pread(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h) || memcmp(h, STATE_MAGIC, 8) != 0)
        return -EPROTO;
    memcpy(&version, h + 8, 4);
    memcpy(&start, h + 16, 8);
    memcpy(&end, h + 24, 8);
    if (version != STATE_VERSION || start < STATE_HDR || end < start ||
        end - start > STATE_MAX)
        return -EPROTO;
    /* Read it all at once: one pread per record made re-exec slow. */
    buf = malloc(end - start ? end - start : 1);
    if (!buf)
        return -ENOMEM;
    for (off = 0; off < end - start; off += (uint64_t)n) {
        n = pread(fd, buf + off, end - start - off, (off_t)(start + off));
        if (n <= 0) {
            free(buf);
            return -EPROTO;
        }
    }
    H.restoring = 1;
    for (off = 0; off < end - start && r >= 0;) {
        uint16_t len;
        struct proto_rd rd;

        if (end - start - off < 3)
            break;
        memcpy(&len, buf + off + 1, 2);
        if (off + 3 + len > end - start) {
            r = -EPROTO;
            break;
        }
        rd = (struct proto_rd){buf + off + 3, len, 0};
        r = restore_record(buf[off], &rd, a);
        off += 3 + (uint64_t)len;
    }
    H.restoring = 0;
    if (r >= 0 && off != end - start)
        r = -EPROTO;
    free(buf);
    lease_freelist_rebuild();
    return r;
}

/* The fuzz target reaches the state parser through this. */
static int __attribute__((unused))
state_parse_for_fuzz(int fd)
{
    struct adopt a = {.reexec = 0};

    return state_restore(fd, &a);
}

/* ------------------------------------------------------------------------
 * systemd's fd store: the state memfd and one stash
 *
 * One stored fd per lease does not scale in systemd 252 (measured: PID 1
 * compares each pushed fd with every stored one, 225 s of its CPU for 19,000;
 * a restart at 19,000 fails on its own fd limit and the store is emptied).
 * So the store holds two fds whatever the lease count: "state", the memfd
 * the records go to, and "S<n>", the receiving end of a socketpair whose
 * queue holds every lease fd and owner pidfd.  The helper sends them there
 * with SCM_RIGHTS and never receives them: the kernel keeps an fd in a
 * queued message open, and the queue lives as long as the store holds the
 * socket.  A message's bytes name its fds, 9 bytes each: a kind ('L' lease,
 * 'P' pidfd) and the generation the state's records know it by.
 *
 * A message cannot be taken out of the middle of a queue.  A lease let go
 * is unlocked first (fsw_dispose()), so its queued copy holds nothing, and
 * stash_compact() rotates the queue now and then: the live entries of a
 * window of messages at the head are sent again to the tail, at most 253 in
 * one message, and only then is the window received and dropped.  So each
 * stashed fd is queued at all times, and the queue never holds more than
 * its live fds and one window (queued fds count against the sender's
 * RLIMIT_NOFILE unless it has CAP_SYS_RESOURCE, which the unit does not
 * grant).  A lease taken back by its client (not unlocked) is rotated out
 * before the answer: the client's close must free its lock.
 *
 * After a crash the new helper peeks the old queue (SO_PEEK_OFF, so that it
 * stays whole), adopts, and builds a fresh stash before it lets the old one
 * go.  A re-exec builds a fresh one too and removes the old by name.
 */
#define STASH_BATCH 253 /* SCM_MAX_FD */
#define STASH_ENTRY 9
#define STASH_DEAD_SLACK 1024

struct stash_msg {
    uint32_t seq;
    uint16_t n, live;
};

static struct stash_msg *
stash_msg(uint32_t seq)
{
    uint32_t first;

    if (!seq || H.stash_count == 0)
        return NULL;
    first = H.stash_msgs[H.stash_head].seq;
    if (seq - first >= H.stash_count)
        return NULL;
    return &H.stash_msgs[(H.stash_head + (seq - first)) % H.stash_cap];
}

/* Room for one more message's record, before it is sent. */
static int
stash_ring_room(void)
{
    struct stash_msg *m;
    uint32_t cap, i;

    if (H.stash_count < H.stash_cap)
        return 0;
    cap = H.stash_cap ? H.stash_cap * 2 : 256;
    m = malloc((size_t)cap * sizeof(*m));
    if (!m)
        return -ENOMEM;
    for (i = 0; H.stash_cap && i < H.stash_count; i++)
        m[i] = H.stash_msgs[(H.stash_head + i) % H.stash_cap];
    free(H.stash_msgs);
    H.stash_msgs = m;
    H.stash_cap = cap;
    H.stash_head = 0;
    return 0;
}

/* Send n fds with their names to the stash's tail: its sequence number, or
 * -errno (-EAGAIN: the socket's buffer is full). */
static int64_t
stash_send(const char *kinds, const uint64_t *gens, const int *fds, size_t n)
{
    uint8_t data[STASH_BATCH * STASH_ENTRY];
    union {
        char buf[CMSG_SPACE(STASH_BATCH * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {data, n * STASH_ENTRY};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = CMSG_SPACE(n * sizeof(int))};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    struct stash_msg *rec;
    size_t i;

    if (n == 0 || n > STASH_BATCH || stash_ring_room() < 0)
        return -ENOMEM;
    for (i = 0; i < n; i++) {
        data[i * STASH_ENTRY] = (uint8_t)kinds[i];
        memcpy(data + i * STASH_ENTRY + 1, &gens[i], 8);
    }
    /* An odd count leaves 4 bytes of padding the kernel copies in. */
    memset(u.buf, 0, m.msg_controllen);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(n * sizeof(int));
    memcpy(CMSG_DATA(c), fds, n * sizeof(int));
    if (sendmsg(H.stash_tx, &m, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        return negerrno();
    rec = &H.stash_msgs[(H.stash_head + H.stash_count) % H.stash_cap];
    *rec = (struct stash_msg){H.stash_next_seq, (uint16_t)n, (uint16_t)n};
    H.stash_count++;
    H.stash_live += (uint32_t)n;
    H.stash_next_seq++;
    if (H.stash_next_seq == 0) /* 0 means "not stashed" */
        H.stash_next_seq = 1;
    return rec->seq;
}

/* Receive and drop the message at the head, fds and all: without a
 * control buffer the kernel closes them without installing them. */
static int
stash_drop_head(void)
{
    uint8_t data[STASH_BATCH * STASH_ENTRY];
    struct stash_msg *h = &H.stash_msgs[H.stash_head];

    if (recv(H.stash_rx, data, sizeof(data), MSG_DONTWAIT) < 0)
        return negerrno();
    H.stash_dead -= (uint32_t)(h->n - h->live);
    H.stash_live -= h->live;
    H.stash_head = (H.stash_head + 1) % H.stash_cap;
    H.stash_count--;
    return 0;
}

/* The owners and leases stashed in messages [first, last) are sent again
 * in one message; first..last hold at most STASH_BATCH live entries. */
static int
stash_resend(uint32_t first, uint32_t last, uint32_t live)
{
    char kinds[STASH_BATCH];
    uint64_t gens[STASH_BATCH];
    int fds[STASH_BATCH];
    uint32_t *where[STASH_BATCH];
    size_t n = 0, k;
    int64_t seq;
    uint32_t i;

    for (i = 0; i < H.nowner_slots && n < live; i++) {
        struct owner *o = &H.owners[i];

        if (o->pid && o->stash_seq && o->stash_seq - first < last - first) {
            kinds[n] = 'P', gens[n] = o->gen, fds[n] = o->pidfd;
            where[n++] = &o->stash_seq;
        }
    }
    for (i = 0; i < H.nlease_slots && n < live; i++) {
        struct lease *l = &H.leases[i];

        if (l->gen && l->stash_seq && l->stash_seq - first < last - first) {
            kinds[n] = 'L', gens[n] = l->gen, fds[n] = l->fd;
            where[n++] = &l->stash_seq;
        }
    }
    if (n != live)
        log_err("fd stash: %u entries counted live, %zu found", live, n);
    if (n == 0)
        return 0;
    /* The old window's count goes when it is dropped; the new one counts
     * these from now: live entries are counted twice for a moment. */
    seq = stash_send(kinds, gens, fds, n);
    if (seq < 0)
        return (int)seq;
    for (k = 0; k < n; k++) {
        struct stash_msg *m = stash_msg(*where[k]);

        if (m) { /* moved, not dead: out of the old message's counts */
            m->live--;
            m->n--;
            H.stash_live--;
        }
        *where[k] = (uint32_t)seq;
    }
    return 0;
}

/*
 * Rotate the whole queue once, window by window: what is dead goes, what
 * lives comes back at the tail in full messages.  A failure leaves the rest
 * as it was: every live entry is still queued at least once.
 */
static void
stash_compact(void)
{
    uint32_t end = H.stash_next_seq;

    H.stash_due = H.stash_urgent = 0;
    while (H.stash_count > 0 && H.stash_msgs[H.stash_head].seq != end) {
        uint32_t first = H.stash_msgs[H.stash_head].seq, last = first, live = 0, i;
        struct stash_msg *m;
        int r;

        while (last != end && (m = stash_msg(last)) && live + m->live <= STASH_BATCH) {
            live += m->live;
            last++;
        }
        r = live > 0 ? stash_resend(first, last, live) : 0;
        if (r < 0) {
            log_err("fd stash: cannot rotate: %s", strerror(-r));
            return;
        }
        for (i = first; i != last; i++)
            if (stash_drop_head() < 0) {
                log_err("fd stash: cannot drop a rotated message: %s", strerror(errno));
                return;
            }
    }
}

/* Before a push: a buffer three-quarters full is compacted first (at most
 * 553 single-fd messages fit in Linux's default 416 KiB, about 24,000 fds
 * in full ones). */
static void
stash_make_room(void)
{
    int used = 0;

    if (ioctl(H.stash_tx, SIOCOUTQ, &used) == 0 && used > H.stash_sndbuf / 4 * 3)
        stash_compact();
}

static int
stash_full(void)
{
    if (!H.store_full_logged)
        log_warn("fd store full (%u lease%s): further leases survive a re-exec but not a "
                 "crash of the helper",
                 H.store_leases, PLURAL(H.store_leases));
    H.store_full_logged = 1;
    changed();
    return -ENOSPC;
}

static int
stash_put(char kind, uint64_t gen, int fd, uint32_t *seq)
{
    int64_t r;

    if (!H.store_on || H.stash_tx < 0 || *seq)
        return 0;
    if (kind == 'L' && H.store_leases >= H.store_leases_max)
        return stash_full();
    stash_make_room();
    r = stash_send(&kind, &gen, &fd, 1);
    if (r == -EAGAIN || r == -ETOOMANYREFS || r == -ENOBUFS)
        return stash_full();
    if (r < 0) {
        log_err("fd stash: %s", strerror((int)-r));
        return (int)r;
    }
    *seq = (uint32_t)r;
    return 0;
}

/* An entry goes dead; urgent: its fd's lock is not released, so its queued
 * copy must go before the client is answered (stash_settle()). */
static void
stash_forget(uint32_t *seq, int urgent)
{
    struct stash_msg *m = stash_msg(*seq);

    *seq = 0;
    if (!m)
        return;
    m->live--;
    H.stash_live--;
    H.stash_dead++;
    if (urgent)
        H.stash_urgent = 1;
    if (H.stash_dead > H.stash_live + STASH_DEAD_SLACK)
        H.stash_due = 1;
}

/* Before an answer and after each event. */
static void
stash_settle(void)
{
    if (H.stash_urgent || H.stash_due)
        stash_compact();
}

static void
store_push_owner(struct owner *o)
{
    (void)stash_put('P', o->gen, o->pidfd, &o->stash_seq);
}

static void
store_remove_owner(struct owner *o)
{
    stash_forget(&o->stash_seq, 0);
    store_remove_named(o->named, 'P', o->gen);
    o->named = 0;
}

static void
store_push_lease(uint32_t slot)
{
    struct lease *l = &H.leases[slot];
    struct owner *o = &H.owners[l->owner];

    if (!H.store_on || l->stash_seq)
        return;
    /* The pidfd first: a lease adopted without its owner is not managed. */
    store_push_owner(o);
    if (o->stash_seq && stash_put('L', l->gen, l->fd, &l->stash_seq) == 0 && l->stash_seq) {
        H.store_leases++;
        changed();
    }
}

static void
store_remove_lease(uint32_t slot, int unlocked)
{
    struct lease *l = &H.leases[slot];

    if (l->stash_seq) {
        H.store_leases--;
        changed();
    }
    stash_forget(&l->stash_seq, !unlocked);
    store_remove_named(l->named, 'L', l->gen);
    l->named = 0;
}

/* A lease or pidfd stored under its own name by an older release (one
 * stored fd each): removed once it is stashed or let go. */
static void
store_remove_named(int named, char kind, uint64_t gen)
{
    char msg[64];

    if (!named || !H.store_on)
        return;
    snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%c%llu", kind, (unsigned long long)gen);
    (void)sd_notify(0, msg);
}

/*
 * A new stash: a socketpair whose receiving end goes to the store as
 * "S<n>" (n unique), filled with every owner and lease in full messages.
 * Only then is the old one (adopted, or a previous image's) removed.
 */
static int
stash_create(void)
{
    int sp[2], v = 16 << 20;
    socklen_t len = sizeof(v);
    char msg[64];

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
        return negerrno();
    /* As large as net.core.wmem_max allows; the kernel doubles it. */
    (void)setsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
    if (getsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &v, &len) < 0)
        v = 212992;
    (void)shutdown(sp[1], SHUT_WR);
    H.stash_name = H.next_gen++;
    snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=S%llu\nFDPOLL=0",
             (unsigned long long)H.stash_name);
    if (sd_pid_notify_with_fds(0, 0, msg, &sp[1], 1) <= 0) {
        safe_close(sp[0]);
        safe_close(sp[1]);
        return -EIO;
    }
    H.stash_tx = sp[0];
    H.stash_rx = sp[1];
    H.stash_sndbuf = v;
    return 0;
}

/* An owner's or lease's entry, found by generation (stash_migrate()). */
struct genref {
    char kind;
    uint64_t gen;
    int fd;
    uint32_t *seq;
};

static int
genref_cmp(const void *a, const void *b)
{
    const struct genref *x = a, *y = b;

    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    return x->gen < y->gen ? -1 : x->gen > y->gen;
}

static struct genref *
genref_index(size_t *ret_n)
{
    struct genref *v = malloc(((size_t)H.nowners + H.nleases + 1) * sizeof(*v));
    size_t n = 0;
    uint32_t i;

    if (!v)
        return NULL;
    for (i = 0; i < H.nowner_slots; i++)
        if (H.owners[i].pid)
            v[n++] = (struct genref){'P', H.owners[i].gen, H.owners[i].pidfd,
                                     &H.owners[i].stash_seq};
    for (i = 0; i < H.nlease_slots; i++)
        if (H.leases[i].gen)
            v[n++] = (struct genref){'L', H.leases[i].gen, H.leases[i].fd,
                                     &H.leases[i].stash_seq};
    qsort(v, n, sizeof(*v), genref_cmp);
    *ret_n = n;
    return v;
}

/*
 * Move what an old stash (adopted after a crash, or a previous image's)
 * holds into the new one, a message at a time: its live entries are sent
 * again from the helper's own fds, and only then is the message dropped.
 * So each is queued at every instant, and at most one message's worth
 * twice: queued fds count against RLIMIT_NOFILE, and two whole stashes of
 * 19,000 would not fit under the unit's 20,000.  An entry no owner or lease
 * claims is dropped (the state is authoritative: its lease was unlocked
 * when let go, or taken back by a client that holds its own copy).
 * Returns 0 once rx is empty, -errno if a message could not be moved (rx
 * then stays in the store).
 */
static int
stash_migrate(int rx)
{
    size_t nref, k;
    struct genref *ref = genref_index(&nref);
    int off = -1, r = 0;

    if (!ref)
        return -ENOMEM;
    /* Peek the head each time, without its fds: we have our own. */
    (void)setsockopt(rx, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off));
    for (;;) {
        uint8_t data[STASH_BATCH * STASH_ENTRY + 1];
        char kinds[STASH_BATCH];
        uint64_t gens[STASH_BATCH];
        int fds[STASH_BATCH];
        uint32_t *where[STASH_BATCH];
        size_t n = 0;
        int64_t seq;
        ssize_t len = recv(rx, data, sizeof(data), MSG_PEEK | MSG_DONTWAIT);

        if (len == 0 || (len < 0 && errno == EAGAIN))
            break;
        if (len < 0) {
            r = negerrno();
            break;
        }
        for (k = 0; k + STASH_ENTRY <= (size_t)len && n < STASH_BATCH; k += STASH_ENTRY) {
            struct genref key = {(char)data[k], 0, -1, NULL}, *g;

            memcpy(&key.gen, data + k + 1, 8);
            g = bsearch(&key, ref, nref, sizeof(*ref), genref_cmp);
            if (!g || *g->seq)
                continue; /* dead, or moved already */
            kinds[n] = g->kind, gens[n] = g->gen, fds[n] = g->fd;
            where[n++] = g->seq;
        }
        if (n > 0) {
            seq = stash_send(kinds, gens, fds, n);
            if (seq < 0) {
                r = (int)seq;
                break;
            }
            for (k = 0; k < n; k++) {
                *where[k] = (uint32_t)seq;
                H.store_leases += kinds[k] == 'L';
            }
        }
        if (recv(rx, data, sizeof(data), MSG_DONTWAIT) < 0) { /* drop it, fds and all */
            r = negerrno();
            break;
        }
    }
    free(ref);
    return r;
}

/* Everything not yet stashed, in full messages. */
static void
stash_fill(void)
{
    char kinds[STASH_BATCH];
    uint64_t gens[STASH_BATCH];
    int fds[STASH_BATCH];
    uint32_t *where[STASH_BATCH], i, pass;
    size_t n = 0, k;
    int64_t seq;

    for (pass = 0; pass < 2; pass++) {
        uint32_t nslots = pass == 0 ? H.nowner_slots : H.nlease_slots;

        for (i = 0; i <= nslots; i++) {
            if (i < nslots && pass == 0) {
                struct owner *o = &H.owners[i];

                if (o->pid && !o->stash_seq && o->nleases) {
                    kinds[n] = 'P', gens[n] = o->gen, fds[n] = o->pidfd;
                    where[n++] = &o->stash_seq;
                }
            } else if (i < nslots) {
                struct lease *l = &H.leases[i];

                if (l->gen && !l->stash_seq && H.owners[l->owner].stash_seq &&
                    H.store_leases + n < H.store_leases_max) {
                    kinds[n] = 'L', gens[n] = l->gen, fds[n] = l->fd;
                    where[n++] = &l->stash_seq;
                }
            }
            if (n == STASH_BATCH || (i == nslots && n > 0)) {
                seq = stash_send(kinds, gens, fds, n);
                if (seq < 0) {
                    (void)stash_full();
                    return;
                }
                for (k = 0; k < n; k++) {
                    *where[k] = (uint32_t)seq;
                    if (kinds[k] == 'L')
                        H.store_leases++;
                }
                n = 0;
            }
        }
    }
    for (i = 0; i < H.nlease_slots; i++)
        if (H.leases[i].gen && !H.leases[i].stash_seq) {
            (void)stash_full();
            break;
        }
}

/* Take over a state memfd as the store's record: read where it ends. */
static int
state_fd_adopt(int fd)
{
    uint8_t h[STATE_HDR];

    if (pread(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h) || memcmp(h, STATE_MAGIC, 8) != 0)
        return -EPROTO;
    memcpy(&H.state_start, h + 16, 8);
    memcpy(&H.state_end, h + 24, 8);
    (void)set_cloexec(fd, 1);
    H.state_fd = fd;
    return 0;
}

/*
 * Start using the store: its state memfd is the one adopted, if any (after a
 * crash or re-exec), with a fresh snapshot appended, or a new one pushed.
 * Then a new stash gets every owner and lease, as far as its bound allows,
 * and only then do the old stashes and any fd an older release stored under
 * its own name leave the store.
 */
static void
store_start(int adopted_state)
{
    char msg[64];
    uint32_t i;

    if (adopted_state >= 0 && state_fd_adopt(adopted_state) == 0)
        state_compact();
    else if (store_state_init() < 0) {
        log_err("cannot create the fd store's state: the store is not used");
        H.store_on = 0;
        return;
    }
    if (stash_create() < 0) {
        log_err("cannot create the fd stash: the store is not used, leases survive a "
                "re-exec but not a crash");
        H.store_on = 0;
        return;
    }
    /* The old stashes' entries first, each moved before it is dropped;
     * then whatever is in none (an older build's named fds, a lease past
     * the bound before). */
    for (i = 0; i < H.nold_stash; i++) {
        int r = H.old_stash[i].fd >= 0 ? stash_migrate(H.old_stash[i].fd) : 0;

        if (r < 0) {
            log_err("fd stash S%llu: cannot move its leases (%s): it stays in the store",
                    (unsigned long long)H.old_stash[i].name, strerror(-r));
            continue;
        }
        snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=S%llu",
                 (unsigned long long)H.old_stash[i].name);
        (void)sd_notify(0, msg);
        safe_close(H.old_stash[i].fd);
    }
    H.nold_stash = 0;
    stash_fill();
    for (i = 0; i < H.nowner_slots; i++)
        if (H.owners[i].pid && H.owners[i].named && H.owners[i].stash_seq) {
            store_remove_named(1, 'P', H.owners[i].gen);
            H.owners[i].named = 0;
        }
    for (i = 0; i < H.nlease_slots; i++)
        if (H.leases[i].gen && H.leases[i].named && H.leases[i].stash_seq) {
            store_remove_named(1, 'L', H.leases[i].gen);
            H.leases[i].named = 0;
        }
}

/* Create the store's state memfd, write a snapshot, push it. */
static int
store_state_init(void)
{
    int64_t end;
    int fd = memfd_create("lockd-helper-state", MFD_CLOEXEC);

    if (fd < 0)
        return negerrno();
    end = state_snapshot(fd, STATE_HDR, 0);
    if (end < 0 || state_header(fd, STATE_HDR, (uint64_t)end) < 0) {
        safe_close(fd);
        return -EIO;
    }
    if (sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=state\nFDPOLL=0", &fd, 1) <= 0) {
        safe_close(fd);
        return -EIO;
    }
    H.state_fd = fd;
    H.state_start = STATE_HDR;
    H.state_end = (uint64_t)end;
    return 0;
}

/* ------------------------------------------------------------------------
 * Start-up: socket, adoption
 */

static int
is_listening_seqpacket(int fd)
{
    return sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, NULL, 0) > 0;
}

static int
bind_socket(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char dir[sizeof(sa.sun_path)], *slash;
    struct stat st;
    int fd, r;

    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    memcpy(dir, path, strlen(path) + 1);
    slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        r = mkdir_parents(dir);
        if (r < 0)
            return r;
    }
    /* Only a socket is ever replaced: a typo in --socket must not destroy a
     * disk image or whatever else lives at the path. */
    if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
        return -ENOTSOCK;
    /* A socket file nobody answers on is a leftover; a live one is another
     * helper, which we must not steal from. */
    fd = conn_connect(path);
    if (fd >= 0) {
        safe_close(fd);
        return -EADDRINUSE;
    }
    if (fd == -ECONNREFUSED)
        (void)unlink(path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return negerrno();
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, H.socket_mode) < 0 ||
        listen(fd, 128) < 0) {
        r = negerrno();
        safe_close(fd);
        return r;
    }
    H.bound = 1;
    return fd;
}

/* A stored fd's name: "L123" or "P45" (stored under its own name by an
 * older release), "S67" (a stash), or 0 if it is none of these. */
static char
named_parse(const char *name, uint64_t *ret)
{
    char *end;

    if ((name[0] != 'L' && name[0] != 'P' && name[0] != 'S') || name[1] < '0' ||
        name[1] > '9')
        return 0;
    *ret = strtoull(name + 1, &end, 10);
    return *end == '\0' ? name[0] : 0;
}

/* Index a stash's entries without emptying it: successive peeks walk the
 * queue (SO_PEEK_OFF), so that it stays whole until a new one replaces it.
 * Returns how many fds it gave. */
static int
stash_peek_all(int fd, struct adopt *a)
{
    int off = 0, got = 0;

    if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off)) < 0)
        return negerrno();
    for (;;) {
        uint8_t data[STASH_BATCH * STASH_ENTRY + 1];
        union {
            char buf[CMSG_SPACE(STASH_BATCH * sizeof(int))];
            struct cmsghdr align;
        } u;
        struct iovec iov = {data, sizeof(data)};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                           .msg_controllen = sizeof(u.buf)};
        struct cmsghdr *c;
        size_t nfds = 0, i;
        int fds[STASH_BATCH];
        ssize_t n = recvmsg(fd, &m, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

        if (n == 0 || (n < 0 && errno == EAGAIN))
            return got; /* the end; 0: its writer is gone */
        if (n < 0)
            return negerrno();
        for (c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                memcpy(fds, CMSG_DATA(c), nfds * sizeof(int));
            }
        if ((size_t)n != nfds * STASH_ENTRY || (m.msg_flags & (MSG_CTRUNC | MSG_TRUNC)))
            log_warn("fd stash: a message of %zd bytes with %zu fds: its fds are kept open, "
                     "not managed",
                     n, nfds);
        else
            for (i = 0; i < nfds; i++) {
                uint64_t gen;

                memcpy(&gen, data + i * STASH_ENTRY + 1, 8);
                if (named_add(a, (char)data[i * STASH_ENTRY], gen, fds[i], 0) < 0)
                    return -ENOMEM; /* what is not indexed stays open */
            }
        got += (int)nfds;
    }
}

/*
 * Take what systemd passed: the listening socket and, after a restart, what
 * the fd store kept: the state memfd ("state") and the stash, whose queue
 * holds the lease fds and owner pidfds (or, from an older release, each of
 * them under its own name).  Returns the state memfd (the caller keeps
 * using it), -1 if there was none.  If the state cannot be read, every fd is
 * left open and every stash in the store: each may be a lease.
 */
static int
adopt_listen_fds(void)
{
    struct adopt a = {.reexec = 0};
    char **names = NULL;
    int n, i, state = -1, r, unclaimed = 0;

    n = sd_listen_fds_with_names(1, &names);
    if (n <= 0)
        return -1;
    for (i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *name = names && names[i] ? names[i] : "";
        uint64_t number;
        char kind;

        if (H.listen_fd < 0 && is_listening_seqpacket(fd))
            H.listen_fd = fd;
        else if (strcmp(name, "state") == 0 && state < 0)
            state = fd;
        else if ((kind = named_parse(name, &number)) == 'S' &&
                 H.nold_stash < sizeof(H.old_stash) / sizeof(H.old_stash[0])) {
            r = stash_peek_all(fd, &a);
            if (r < 0)
                log_err("cannot read the fd stash %s: %s; it is kept", name, strerror(-r));
            else {
                H.old_stash[H.nold_stash].name = number;
                H.old_stash[H.nold_stash++].fd = fd;
            }
        } else if (kind == 'L' || kind == 'P') {
            if (named_add(&a, kind, number, fd, 1) < 0)
                log_warn("passed fd %d (%s) not indexed: kept open", fd, name);
        } else
            log_warn("passed fd %d (%s) not understood: kept open", fd, name);
    }
    named_sort(&a);
    r = state >= 0 ? state_restore(state, &a) : -ENOENT;
    if (state >= 0 && r < 0)
        log_err("cannot read the fd store's state (%s): every stored fd is kept open, so no "
                "lease is lost, but they are not managed",
                strerror(-r));
    for (i = 0; (size_t)i < a.nnamed; i++) {
        if (a.named[i].fd < 0)
            continue;
        if (r >= 0 && !a.named[i].by_name) {
            /* A queued copy of a lease let go before the restart (its
             * records compacted away): unlocked then, or taken back by a
             * client that holds its own copy.  The state says so. */
            fd_dispose(a.named[i].fd, 0);
            unclaimed++;
            continue;
        }
        log_warn("stored fd %c%llu has no record: kept open", a.named[i].kind,
                 (unsigned long long)a.named[i].number);
    }
    if (unclaimed)
        log_info("%d stashed fds of leases let go before the restart: closed", unclaimed);
    if (r < 0 && H.nold_stash) {
        log_warn("the fd stash stays in the store, unmanaged, since the state is unreadable");
        H.nold_stash = 0;
    }
    for (i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
    free(a.named);
    return state;
}

static int
adopt_reexec_state(void)
{
    const char *env = getenv(STATE_ENV);
    struct adopt a = {.reexec = 1};
    int fd, r;

    if (!env)
        return 0;
    fd = atoi(env);
    unsetenv(STATE_ENV);
    if (fd < 3 || fcntl(fd, F_GETFD) < 0)
        return -EBADF;
    r = state_restore(fd, &a);
    safe_close(fd);
    if (r < 0)
        log_err("cannot read the state of the previous image (%s): every inherited fd is "
                "kept open, so no lease is lost, but they are not managed",
                strerror(-r));
    return r;
}

/* After restoring: owners that died meanwhile release now; every held fd
 * goes back on the right side of FD_CLOEXEC. */
static void
settle_restored(int from_store)
{
    uint32_t i;

    for (i = 0; i < H.nowner_slots; i++) {
        struct owner *o = &H.owners[i];

        if (!o->pid)
            continue;
        (void)set_cloexec(o->pidfd, 1);
        if (pidfd_dead(o->pidfd))
            owner_free(o, "exited while the helper was away");
        else if (owner_watch(o) < 0)
            log_err("cannot watch owner pid %d", (int)o->pid);
    }
    /* sd_listen_fds() set FD_CLOEXEC on what systemd passed; lease fds are
     * kept without it, ready for the next re-exec (a lease fd carries no
     * other fd flag).  After a re-exec they never had it. */
    for (i = 0; from_store && i < H.nlease_slots; i++)
        if (H.leases[i].gen)
            (void)fcntl(H.leases[i].fd, F_SETFD, 0);
    /* Adopted fds are checked as a hand-over is: a copy of one may have
     * been unlocked while the helper was away.  After a crash, before the
     * first answer; after a re-exec (nothing was away) by a sweep started
     * at once, so the re-exec gap stays short. */
    if (from_store)
        lease_verify_all();
    H.check_due_ns = 0;
    for (i = 0; i < CONN_MAX; i++)
        if (H.conns[i].fd >= 0)
            (void)set_cloexec(H.conns[i].fd, 1);
}

/* ------------------------------------------------------------------------
 * Re-exec on SIGUSR1
 */

/*
 * Replace this image by the binary at the path we were started from (after
 * an upgrade that is the new one; /proc/self/exe would still be the old).
 * Every lease fd is already open without FD_CLOEXEC; the pidfds, listening
 * socket and connections are made to survive too, and the state travels in
 * a memfd.  No lease is released at any point: the fds never close.  If the
 * exec fails, everything is put back and we carry on.
 */
/*
 * Before replacing this image, run the binary at the start-up path in a
 * child with --self-test: an upgrade that left a binary which cannot start
 * (a missing library, a truncated file, another architecture) is refused
 * and logged, and the old image carries on with every lease.  The loop goes
 * on answering meanwhile: the child's pidfd is one more epoll source, and
 * the re-exec happens when it has exited 0 (selftest_done()).  The child is
 * spawned without a copy of the address space and gets no fd but 0-2: no
 * lease, pidfd or socket.
 */
#define SELF_TEST_MS 5000

static void selftest_done(int wait);

static void
selftest_start(void)
{
    char *const argv[] = {H.self_path, (char *)"--self-test", NULL};
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_SELFTEST};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none;
    pid_t pid;
    int r;

    if (H.selftest_pidfd >= 0)
        return; /* one is under way: its success re-execs */
    sigemptyset(&none);
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    r = posix_spawn(&pid, H.self_path, &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (r != 0) {
        log_err("re-exec refused: cannot run %s --self-test: %s", H.self_path, strerror(r));
        return;
    }
    H.selftest_pid = pid;
    H.selftest_pidfd = xpidfd_open(pid);
    H.selftest_due_ns = mono_ns() + (int64_t)SELF_TEST_MS * 1000000;
    if (H.selftest_pidfd < 0 ||
        epoll_ctl(H.epoll_fd, EPOLL_CTL_ADD, H.selftest_pidfd, &ev) < 0) {
        /* Without a pidfd to watch, wait for it here (a few ms). */
        if (H.selftest_pidfd >= 0)
            safe_close(H.selftest_pidfd);
        H.selftest_pidfd = -1;
        selftest_done(1);
    }
}

/* The self-test child exited (or ran out of time, or cannot be watched:
 * wait for it).  Re-exec if it passed. */
static void
selftest_done(int wait)
{
    int st = 0;
    pid_t w = waitpid(H.selftest_pid, &st, wait ? 0 : WNOHANG);

    if (w == 0) { /* out of time */
        (void)kill(H.selftest_pid, SIGKILL);
        (void)waitpid(H.selftest_pid, &st, 0);
        log_err("re-exec refused: %s --self-test did not finish in %d ms; still running "
                "the old image", H.self_path, SELF_TEST_MS);
    } else if (w < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        log_err("re-exec refused: %s --self-test %s %d; still running the old image",
                H.self_path, w > 0 && WIFSIGNALED(st) ? "was killed by signal" : "exited",
                w < 0 ? -1 : WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    if (H.selftest_pidfd >= 0) {
        (void)epoll_ctl(H.epoll_fd, EPOLL_CTL_DEL, H.selftest_pidfd, NULL);
        safe_close(H.selftest_pidfd);
    }
    H.selftest_pidfd = -1;
    H.selftest_pid = 0;
    /* At the end of this loop round, when every event is handled. */
    H.reexec_go = w > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* --self-test: what a new image needs before it may take over: fdinfo to
 * check locks with, a memfd for the state.  Exit 0 if all is there. */
static int
self_test(void)
{
    int fd = memfd_create("lockd-helper-self-test", MFD_CLOEXEC);

    H.fdinfo_dir = open("/proc/self/fdinfo", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || H.fdinfo_dir < 0 || probe_setup() < 0) {
        fprintf(stderr, "lockd-helper: self-test failed: %s\n", strerror(errno));
        return 1;
    }
    printf("lockd-helper %s: self-test passed\n", LOCKD_VERSION_STRING);
    return 0;
}

static void
do_reexec(void)
{
    char num[16];
    int64_t end;
    uint32_t i;
    int fd;

    /* An fd still queued for its filesystem would be inherited by the new
     * image, which knows nothing of it (a lease fd has no FD_CLOEXEC), and
     * execve() waits for a worker stuck in close(2). */
    if (!fsw_idle(FSW_WAIT_MS)) {
        log_warn("re-exec postponed: a filesystem has closes and unlocks waiting (lockdctl "
                 "status names it); trying again in 1 s");
        H.reexec_retry_ns = mono_ns() + 1000000000;
        return;
    }
    /* A running hook would be a child the new image does not know: never
     * reaped, never killed at its deadline. */
    if (H.nhooks) {
        log_warn("re-exec postponed: %u on-loss hook%s still running; trying again in 1 s",
                 H.nhooks, H.nhooks == 1 ? "" : "s");
        H.reexec_retry_ns = mono_ns() + 1000000000;
        return;
    }
    fd = memfd_create("lockd-helper-reexec", 0);
    if (fd < 0) {
        log_err("re-exec: memfd_create: %s", strerror(errno));
        return;
    }
    end = state_snapshot(fd, STATE_HDR, 1);
    if (end < 0 || state_header(fd, STATE_HDR, (uint64_t)end) < 0) {
        log_err("re-exec: cannot write state");
        safe_close(fd);
        return;
    }
    for (i = 0; i < H.nowner_slots; i++)
        if (H.owners[i].pid)
            (void)set_cloexec(H.owners[i].pidfd, 0);
    for (i = 0; i < CONN_MAX; i++)
        if (H.conns[i].fd >= 0)
            (void)set_cloexec(H.conns[i].fd, 0);
    (void)set_cloexec(H.listen_fd, 0);
    if (H.state_fd >= 0)
        (void)set_cloexec(H.state_fd, 0);
    snprintf(num, sizeof(num), "%d", fd);
    setenv(STATE_ENV, num, 1);
    if (H.state_fd >= 0) {
        snprintf(num, sizeof(num), "%d", H.state_fd);
        setenv("LOCKD_HELPER_STORE_STATE_FD", num, 1);
    }
    if (H.stash_rx >= 0) {
        char old[48];

        /* The new image moves its entries to a stash of its own, a message
         * at a time (stash_migrate()), and removes it from the store. */
        (void)set_cloexec(H.stash_rx, 0);
        snprintf(old, sizeof(old), "%llu:%d", (unsigned long long)H.stash_name, H.stash_rx);
        setenv("LOCKD_HELPER_OLD_STASH", old, 1);
    }
    log_notice("re-exec %s: %u owner%s, %u lease%s", H.self_path, H.nowners,
               PLURAL(H.nowners), H.nleases, PLURAL(H.nleases));
    fflush(stderr);
    execv(H.self_path, H.argv);
    log_err("re-exec %s failed: %s; carrying on", H.self_path, strerror(errno));
    unsetenv(STATE_ENV);
    unsetenv("LOCKD_HELPER_STORE_STATE_FD");
    unsetenv("LOCKD_HELPER_OLD_STASH");
    if (H.stash_rx >= 0)
        (void)set_cloexec(H.stash_rx, 1);
    safe_close(fd);
    for (i = 0; i < H.nowner_slots; i++)
        if (H.owners[i].pid)
            (void)set_cloexec(H.owners[i].pidfd, 1);
    for (i = 0; i < CONN_MAX; i++)
        if (H.conns[i].fd >= 0)
            (void)set_cloexec(H.conns[i].fd, 1);
    (void)set_cloexec(H.listen_fd, 1);
    if (H.state_fd >= 0)
        (void)set_cloexec(H.state_fd, 1);
}

/* The path to exec for re-exec: argv[0] made absolute against the start-up
 * directory, or found in PATH, without resolving symlinks. */
static char *
find_self(const char *argv0)
{
    char cwd[PATH_MAX], *p = NULL;
    const char *path;

    if (strchr(argv0, '/')) {
        if (argv0[0] == '/')
            return strdup(argv0);
        if (!getcwd(cwd, sizeof(cwd)) || asprintf(&p, "%s/%s", cwd, argv0) < 0)
            return NULL;
        return p;
    }
    path = getenv("PATH");
    while (path && *path) {
        size_t len = strcspn(path, ":");

        if (asprintf(&p, "%.*s/%s", (int)len, path, argv0) < 0)
            return NULL;
        if (access(p, X_OK) == 0)
            return p;
        free(p);
        p = NULL;
        path += len + (path[len] == ':');
    }
    return NULL;
}

/* ------------------------------------------------------------------------
 * The loop
 */

/*
 * Let go of an fd (unlocking it first if unlock) off the loop when its
 * filesystem may block: lockd-helper-fs.h.  One still queued is watched:
 * fs_check() says when its filesystem is stuck, and when it answers again.
 */
static void
fd_dispose(int fd, int unlock)
{
    if (!fsw_dispose(fd, unlock) && !H.fs_watch) {
        H.fs_watch = 1;
        H.fs_check_ns = mono_ns() + (int64_t)FSW_WAIT_MS * 2000000;
    }
}

static void
fs_check(void)
{
    char text[2048];
    int n = fsw_stuck(text, sizeof(text));

    if (n > H.nstuck)
        log_err("filesystem not answering, closes and unlocks wait (leases on it are freed "
                "when it answers): %.*s",
                (int)strcspn(text, "\n"), text);
    else if (n < H.nstuck)
        log_notice("%d filesystem%s stuck (was %d)", n, n == 1 ? "" : "s", H.nstuck);
    if (n != H.nstuck)
        changed();
    H.nstuck = n;
    if (n == 0 && fsw_idle(0))
        H.fs_watch = 0;
    H.fs_check_ns = mono_ns() + 250000000;
}

static void
status_send(void)
{
    char msg[512];

    H.status_dirty = 0;
    if (!H.notify)
        return;
    snprintf(msg, sizeof(msg), "STATUS=%u owner%s, %u lease%s, %u in fd store%s",
             H.nowners, PLURAL(H.nowners), H.nleases - H.nlost,
             PLURAL(H.nleases - H.nlost), H.store_on ? H.store_leases : 0,
             H.store_full_logged ? " (full)" : "");
    if (H.nlost)
        snprintf(msg + strlen(msg), sizeof(msg) - strlen(msg), ", %u LOST", H.nlost);
    if (H.nstuck) {
        char text[256];

        (void)fsw_stuck(text, sizeof(text));
        snprintf(msg + strlen(msg), sizeof(msg) - strlen(msg), ", stuck: %.*s",
                 (int)strcspn(text, " \n"), text);
    }
    (void)sd_notify(0, msg);
}

static void
on_signal(void)
{
    struct signalfd_siginfo si;

    while (read(H.signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        /* SIGHUP is what an init system sends for "reload": re-exec too,
         * never exit with the leases. */
        if (si.ssi_signo == SIGUSR1 || si.ssi_signo == SIGHUP)
            H.reexec = 1;
        else
            H.quit = H.quit_signal = 1;
    }
}

/* Make *t (ns from now until the loop must wake; -1: never) no later than
 * due. */
static void
sooner(int64_t *t, int64_t due, int64_t now)
{
    if (*t < 0 || due - now < *t)
        *t = due > now ? due - now : 0;
}

static int
loop_timeout_ms(void)
{
    int64_t now = mono_ns(), t = -1;
    uint32_t i;

    if (H.watchdog_usec)
        sooner(&t, H.last_watchdog_ns + (int64_t)H.watchdog_usec * 500, now);
    if (H.status_dirty && H.notify)
        sooner(&t, H.status_due_ns, now);
    if (H.timeout_sec > 0 && H.nleases == 0 && H.nconns == 0)
        sooner(&t, H.idle_since_ns + (int64_t)H.timeout_sec * 1000000000, now);
    if (H.selftest_pidfd >= 0)
        sooner(&t, H.selftest_due_ns, now);
    if (H.reexec_retry_ns)
        sooner(&t, H.reexec_retry_ns, now);
    if (H.fs_watch)
        sooner(&t, H.fs_check_ns, now);
    if (H.nrdevs)
        sooner(&t, H.watch_due_ns, now);
    for (i = 0; i < H.nhooks; i++) {
        /* One without a pidfd is reaped by looking, every 100 ms. */
        if (H.hooks[i].pidfd < 0)
            sooner(&t, now + 100000000, now);
        else if (H.hooks[i].due_ns)
            sooner(&t, H.hooks[i].due_ns, now);
    }
    for (i = 0; H.nact_due && i < H.nowner_slots; i++)
        if (H.owners[i].pid && H.owners[i].act_due_ns)
            sooner(&t, H.owners[i].act_due_ns, now);
    if (H.sweep_at != NONE)
        t = 0;
    else if (H.nleases > H.nlost)
        sooner(&t, H.check_due_ns, now);
    if (t < 0)
        return -1;
    return t / 1000000 + 1 > INT_MAX ? INT_MAX : (int)(t / 1000000 + 1);
}

static void
on_timers(void)
{
    int64_t now = mono_ns();

    if (H.watchdog_usec && now - H.last_watchdog_ns >= (int64_t)H.watchdog_usec * 500) {
        (void)sd_notify(0, "WATCHDOG=1");
        H.last_watchdog_ns = now;
    }
    sweep_step();
    watch_step();
    if (H.nhooks)
        hooks_check(now);
    if (H.nact_due)
        act_due(now);
    if (H.fs_watch && now >= H.fs_check_ns)
        fs_check();
    if (H.reexec_retry_ns && now >= H.reexec_retry_ns) {
        H.reexec_retry_ns = 0;
        H.reexec_go = 1;
    }
    if (H.selftest_pidfd >= 0 && now >= H.selftest_due_ns)
        selftest_done(0);
    /* STATUS at most every 100 ms: a burst of hand-offs is one update. */
    if (H.status_dirty && now >= H.status_due_ns) {
        status_send();
        H.status_due_ns = now + 100000000;
    }
    if (H.timeout_sec > 0 && H.nleases == 0 && H.nconns == 0 && !H.fs_watch &&
        now - H.idle_since_ns >= (int64_t)H.timeout_sec * 1000000000) {
        log_info("idle for %d s: exiting", H.timeout_sec);
        H.quit = 1;
    }
}

static void
on_event(const struct epoll_event *ev)
{
    uint64_t tag = ev->data.u64 & TAG_MASK;
    uint32_t idx = (uint32_t)ev->data.u64;

    if (tag == TAG_LISTEN)
        on_listen();
    else if (tag == TAG_SIGNAL)
        on_signal();
    else if (tag == TAG_SELFTEST && H.selftest_pidfd >= 0)
        selftest_done(0);
    else if (tag == TAG_WATCH)
        on_watch();
    else if (tag == TAG_HOOK)
        hook_done((pid_t)idx);
    else if (tag == TAG_CONN && idx < CONN_MAX && H.conns[idx].fd >= 0)
        on_conn(&H.conns[idx]);
    else if (tag == TAG_OWNER && idx < H.nowner_slots && H.owners[idx].pid &&
             pidfd_dead(H.owners[idx].pidfd))
        /* Checked again: an earlier event of this batch may have freed the
         * dead owner and given its slot to a new, live one. */
        owner_free(&H.owners[idx], "exited");
}

static int
run(void)
{
    struct epoll_event evs[64];
    int n, i;

    while (!H.quit) {
        n = epoll_wait(H.epoll_fd, evs, 64, loop_timeout_ms());
        if (n < 0 && errno != EINTR)
            return negerrno();
        for (i = 0; i < n; i++)
            on_event(&evs[i]);
        if (H.nconns || H.nleases)
            H.idle_since_ns = mono_ns();
        if (H.reserve[RESERVE_FDS - 1] < 0 || H.listen_paused)
            reserve_listen_again();
        if (H.compact_due && H.state_fd >= 0) {
            H.compact_due = 0;
            state_compact();
        }
        stash_settle();
        on_timers();
        if (H.reexec) {
            H.reexec = 0;
            selftest_start();
        }
        if (H.reexec_go) {
            H.reexec_go = 0;
            do_reexec();
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * main
 */

static void
usage(FILE *f)
{
    fprintf(f,
            "Usage: lockd-helper [OPTION]...\n"
            "Hold lockd lease fds for guest processes (see lockd-helper(8)).\n"
            "\n"
            "  -S, --socket PATH       listen on PATH unless systemd passes a socket\n"
            "                          (default: $LOCKD_SOCKET, /run/lockd/helper.sock for root,\n"
            "                          $XDG_RUNTIME_DIR/lockd/helper.sock for others)\n"
            "  -m, --socket-mode MODE  permissions of a socket it binds (octal, default 0600)\n"
            "  -t, --timeout SEC       exit after SEC idle seconds with no lease held\n"
            "      --fd-store-max N    keep leases in systemd's fd store (N: the unit's\n"
            "                          FileDescriptorStoreMax=; the helper stores 2 fds\n"
            "                          whatever the lease count, and needs N >= 3)\n"
            "      --store-leases N    cover at most N leases there (default: all that fit)\n"
            "      --keeper            without systemd: run as a keeper process that restarts\n"
            "                          the helper after a crash and holds its stored fds, so\n"
            "                          no lease is lost (lockd-helper(8))\n"
            "      --user-leases N     leases one uid other than root may hold (4096)\n"
            "      --user-owners N     owners one uid other than root may register (1024)\n"
            "      --user-connections N  connections one uid other than root may open (64)\n"
            "      --check-period MS   check leases on network filesystems through the\n"
            "                          filesystem every MS ms (1000); the local sweep runs\n"
            "                          every 2 x MS\n"
            "      --check-timeout MS  a check not answered within MS ms (5000) counts as\n"
            "                          the loss of every lease on that filesystem\n"
            "      --hook-timeout SEC  kill an on-loss hook still running after SEC s (30)\n"
            "  -v, --verbose           log every lease, not just refusals and owner events\n"
            "  -h, --help              show this help\n"
            "  -V, --version           show the version\n"
            "\n"
            "      --self-test         check that this binary can take over, and exit\n"
            "\n"
            "Signals: SIGUSR1 and SIGHUP re-execute the helper in place without dropping a\n"
            "lease, after running the binary with --self-test; SIGTERM exits, and the\n"
            "leases it alone holds become free unless systemd's fd store keeps them.\n");
}

static int
parse_uint(const char *s, int base, unsigned long max, unsigned long *ret)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, base);
    if (errno || end == s || *end || v > max || s[0] == '-')
        return -EINVAL;
    *ret = v;
    return 0;
}

static int
parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 'S'},
        {"socket-mode", required_argument, NULL, 'm'},
        {"timeout", required_argument, NULL, 't'},
        {"fd-store-max", required_argument, NULL, 'F'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"self-test", no_argument, NULL, 'T'},
        {"user-leases", required_argument, NULL, 'L'},
        {"user-owners", required_argument, NULL, 'O'},
        {"user-connections", required_argument, NULL, 'C'},
        {"store-leases", required_argument, NULL, 'B'},
        {"keeper", no_argument, NULL, 'K'},
        {"check-period", required_argument, NULL, 'P'},
        {"check-timeout", required_argument, NULL, 'D'},
        {"hook-timeout", required_argument, NULL, 'H'},
        {NULL, 0, NULL, 0},
    };
    unsigned long v;
    int c;

    while ((c = getopt_long(argc, argv, "S:m:t:vhV", opts, NULL)) != -1) {
        switch (c) {
        case 'S':
            /* -S was --fd-store-max once: "-S 8" must not bind a socket
             * named 8 and run without the fd store, unseen. */
            if (strspn(optarg, "0123456789") == strlen(optarg)) {
                fprintf(stderr,
                        "lockd-helper: -S %s: -S is the socket now (as in "
                        "lockdctl); the fd store is --fd-store-max\n",
                        optarg);
                exit(64);
            }
            H.socket_path = optarg;
            break;
        case 'm':
            if (parse_uint(optarg, 8, 0777, &v) < 0)
                goto bad;
            H.socket_mode = (mode_t)v;
            break;
        case 't':
            if (parse_uint(optarg, 10, 86400 * 365, &v) < 0)
                goto bad;
            H.timeout_sec = (int)v;
            break;
        case 'F':
            if (parse_uint(optarg, 10, 1u << 20, &v) < 0)
                goto bad;
            H.store_max = (uint32_t)v;
            break;
        case 'B':
            if (parse_uint(optarg, 10, UINT32_MAX, &v) < 0)
                goto bad;
            H.store_leases_max = (uint32_t)v;
            break;
        case 'L':
        case 'O':
        case 'C':
            if (parse_uint(optarg, 10, 1u << 20, &v) < 0)
                goto bad;
            *(c == 'L' ? &H.user_leases : c == 'O' ? &H.user_owners : &H.user_conns) =
                (uint32_t)v;
            break;
        case 'P':
        case 'D':
            if (parse_uint(optarg, 10, 3600 * 1000, &v) < 0 || v < 10)
                goto bad;
            *(c == 'P' ? &H.check_period_ns : &H.check_timeout_ns) = (int64_t)v * 1000000;
            break;
        case 'H':
            if (parse_uint(optarg, 10, 86400, &v) < 0 || v < 1)
                goto bad;
            H.hook_timeout_ns = (int64_t)v * 1000000000;
            break;
        case 'K':
            /* No argument is ever permuted (any non-option is refused
             * below), so this is the one just read, however abbreviated. */
            if (!H.keeper_args)
                H.keeper_args = calloc((size_t)argc, 1);
            if (!H.keeper_args) {
                fprintf(stderr, "lockd-helper: out of memory\n");
                exit(1);
            }
            H.keeper_args[optind - 1] = 1;
            break;
        case 'v':
            H.verbose = 1;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("lockd-helper %s\n", LOCKD_VERSION_STRING);
            exit(0);
        case 'T':
            exit(self_test());
        default:
            if (optopt == 's')
                fprintf(stderr, "lockd-helper: the socket is -S or --socket, as in "
                                "lockdctl\n");
            usage(stderr);
            exit(64);
        }
    }
    if (optind != argc) {
        fprintf(stderr, "lockd-helper: unexpected argument '%s'\n", argv[optind]);
        exit(64);
    }
    return 0;
bad:
    fprintf(stderr, "lockd-helper: invalid value '%s' for --%s\n", optarg,
            c == 'm'   ? "socket-mode"
            : c == 't' ? "timeout"
            : c == 'L' ? "user-leases"
            : c == 'O' ? "user-owners"
            : c == 'B' ? "store-leases"
            : c == 'C' ? "user-connections"
            : c == 'P' ? "check-period"
            : c == 'D' ? "check-timeout"
            : c == 'H' ? "hook-timeout"
                       : "fd-store-max");
    exit(64);
}

static void
raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        H.fd_limit = rl.rlim_cur > UINT32_MAX ? UINT32_MAX : (uint32_t)rl.rlim_cur;
}

static int
setup_loop(void)
{
    struct epoll_event ev = {.events = EPOLLIN};
    sigset_t mask;

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        return negerrno();
    signal(SIGPIPE, SIG_IGN);
    H.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    H.signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    H.fdinfo_dir = open("/proc/self/fdinfo", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (H.epoll_fd < 0 || H.signal_fd < 0 || H.fdinfo_dir < 0)
        return negerrno();
    ev.data.u64 = TAG_SIGNAL;
    if (epoll_ctl(H.epoll_fd, EPOLL_CTL_ADD, H.signal_fd, &ev) < 0)
        return negerrno();
    H.answer_fd = fsw_answer_fd();
    if (H.answer_fd < 0)
        return H.answer_fd;
    ev.data.u64 = TAG_WATCH;
    if (epoll_ctl(H.epoll_fd, EPOLL_CTL_ADD, H.answer_fd, &ev) < 0)
        return negerrno();
    return 0;
}

/* Bind --socket, or the default path: the listening fd, or -errno
 * (logged). */
static int
listen_bind(void)
{
    char *def = NULL;
    int r, fd;

    if (!H.socket_path) {
        r = lockd_default_socket(&def);
        if (r == -EINVAL)
            log_err("LOCKD_SOCKET is not an absolute path: give --socket");
        else if (r < 0)
            log_err("no socket path: set --socket or XDG_RUNTIME_DIR");
        if (r < 0)
            return r;
        H.socket_path = def;
    }
    fd = bind_socket(H.socket_path);
    if (fd == -ENOTSOCK)
        log_err("cannot listen on %s: something other than a socket is there; "
                "refusing to replace it", H.socket_path);
    else if (fd < 0)
        log_err("cannot listen on %s: %s", H.socket_path, strerror(-fd));
    return fd;
}

static int
setup_listen(void)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_LISTEN};

    if (H.listen_fd < 0) {
        H.listen_fd = listen_bind();
        if (H.listen_fd < 0)
            return H.listen_fd;
    }
    (void)set_cloexec(H.listen_fd, 1);
    /* Non-blocking, so a connection that goes away before accept() cannot
     * stall the loop. */
    (void)fcntl(H.listen_fd, F_SETFL, fcntl(H.listen_fd, F_GETFL) | O_NONBLOCK);
    if (epoll_ctl(H.epoll_fd, EPOLL_CTL_ADD, H.listen_fd, &ev) < 0)
        return negerrno();
    return 0;
}

#ifndef LOCKD_HELPER_NO_MAIN
/*
 * --keeper: bind the socket here, then become the keeper (lockd-keeper.h),
 * which runs this binary without --keeper as its child and owns the socket
 * file.  Under systemd the fd store does the same job, and two keepers of
 * one helper would fight: refused.
 */
static int
keeper_main(int argc, char **argv)
{
    char **child;
    int fd, i, n = 0, r;

    if (getenv("NOTIFY_SOCKET") || getenv("LISTEN_FDS")) {
        fprintf(stderr, "lockd-helper: --keeper is for running without systemd; "
                        "systemd's fd store does this job\n");
        return 64;
    }
    if (!H.self_path || H.self_path[0] != '/') {
        log_err("cannot find my own path (%s): --keeper cannot start the helper", argv[0]);
        return 1;
    }
    child = calloc((size_t)argc + 1, sizeof(*child));
    if (!child) {
        log_err("start-up failed: %s", strerror(ENOMEM));
        return 1;
    }
    for (i = 0; i < argc; i++)
        if (!H.keeper_args[i])
            child[n++] = argv[i];
    fd = listen_bind();
    r = fd < 0 ? fd : keeper_run(fd, H.socket_path, H.self_path, child);
    free(child);
    return r < 0 ? 1 : 0;
}

int
main(int argc, char **argv)
{
    const char *wd;
    int i, r, state, reexec;

    parse_args(argc, argv);
    H.argv = argv;
    H.self_path = find_self(argv[0]);
    if (H.keeper_args)
        return keeper_main(argc, argv);
    H.pid = getpid();
    for (i = 0; i < CONN_MAX; i++)
        H.conns[i].fd = -1;
    for (i = 0; i < RESERVE_FDS; i++)
        H.reserve[i] = -1;
    if (!H.self_path)
        log_warn("cannot find my own path (%s): SIGUSR1 re-exec disabled", argv[0]);
    raise_nofile();
    r = setup_loop();
    if (r == 0)
        r = probe_setup();
    if (r < 0) {
        log_err("start-up failed: %s", strerror(-r));
        return 1;
    }
    H.notify = getenv("NOTIFY_SOCKET") != NULL;
    /* The store keeps the state, the stash and, for a moment, the stash
     * that replaces it. */
    H.store_on = H.notify && H.store_max >= 3;
    wd = getenv("WATCHDOG_USEC");
    if (wd && sd_watchdog_enabled(0, &H.watchdog_usec) <= 0)
        H.watchdog_usec = 0;
    reexec = getenv(STATE_ENV) != NULL;
    /* A cold start draws a new id epoch; a state adopted below brings back
     * the one its leases' ids were given in. */
    if (getrandom(&H.id_epoch, sizeof(H.id_epoch), 0) != (ssize_t)sizeof(H.id_epoch))
        H.id_epoch = (uint64_t)mono_ns() ^ (uint64_t)getpid() << 32;
    H.id_epoch &= ID_GEN_MASK;
    if (reexec) {
        const char *sfd = getenv("LOCKD_HELPER_STORE_STATE_FD");
        const char *old = getenv("LOCKD_HELPER_OLD_STASH");

        (void)adopt_reexec_state();
        /* The store's state memfd stays the same one across re-exec. */
        state = sfd ? atoi(sfd) : -1;
        unsetenv("LOCKD_HELPER_STORE_STATE_FD");
        if (old) {
            char *colon;

            H.old_stash[0].name = strtoull(old, &colon, 10);
            H.old_stash[0].fd = *colon == ':' ? atoi(colon + 1) : -1;
            if (H.old_stash[0].fd < 3 || fcntl(H.old_stash[0].fd, F_GETFD) < 0)
                H.old_stash[0].fd = -1;
            else
                (void)set_cloexec(H.old_stash[0].fd, 1);
            H.nold_stash = 1;
            unsetenv("LOCKD_HELPER_OLD_STASH");
        }
    } else
        state = adopt_listen_fds();
    settle_restored(!reexec);
    r = setup_listen();
    if (r < 0)
        return 1;
    if (H.store_on)
        store_start(state);
    else if (state >= 0)
        safe_close(state);
    reserve_fill();
    H.idle_since_ns = H.last_watchdog_ns = mono_ns();
    (void)sd_notify(0, "READY=1");
    status_send();
    log_info("ready: %u owner%s, %u lease%s", H.nowners, PLURAL(H.nowners), H.nleases,
             PLURAL(H.nleases));
    r = run();
    if (H.bound && H.socket_path)
        (void)unlink(H.socket_path);
    /* SIGTERM outside a stop (a `systemctl kill`, an OOM-style cleanup):
     * the leases are in systemd's store, and a clean exit would have it
     * empty the store and free them.  EXIT_KEEP makes the unit restart the
     * helper (RestartForceExitStatus=), which takes them back; during a
     * stop job (host shutdown) systemd restarts nothing (SuccessExitStatus=
     * keeps the unit from reading as failed). */
    if (r >= 0 && H.quit_signal && H.store_on && H.nleases > 0) {
        log_notice("exiting on a signal with %u lease%s in systemd's fd store: status %d, "
                   "for a restart that takes them back", H.nleases, PLURAL(H.nleases),
                   EXIT_KEEP);
        return EXIT_KEEP;
    }
    return r < 0 ? 1 : 0;
}
#endif
