/* SPDX-License-Identifier: MIT */
/*
 * lockd.h: leases that keep two virtual machines off one disk.
 *
 * Overview
 * ========
 * A lockspace is a directory shared by every host that may start a guest on a
 * given set of disks (a local directory for one host, an NFS export for many).
 * A lease is a zero-byte file in it named by its key: the lowercase hex SHA-256
 * of the disk's path (or of any resource string).  A lease is held while an
 * open file description of that file carries an fcntl() lock on byte 0, length
 * 1: a write lock for an exclusive lease, a read lock for a shared one.  That is
 * byte for byte what libvirt's virtlockd does, so lockd and virtlockd hosts can
 * share a lockspace and exclude each other.
 *
 * lockd takes open-file-description (OFD) locks, never classic POSIX locks: an
 * OFD lock belongs to the open file, not to the process, so a lease survives
 * being passed to another process (lockd-helper) over a UNIX socket and the
 * death of the process that took it; lockd.c explains this at length.
 *
 * The library is two files, lockd.h and lockd.c, needing only libc and
 * libsodium; compile lockd.c into your program or link liblockd.
 *
 * Calling sequence
 * ================
 *     lockd_space *space;
 *     lockd_lease *lease;
 *     char key[LOCKD_KEY_SIZE];
 *
 *     r = lockd_space_open(NULL, LOCKD_OPEN_CREATE, &space);
 *     r = lockd_space_key(space, "/var/lib/images/guest.qcow2", key);
 *     const char *keys[] = { key };
 *     r = lockd_acquire(space, 1, keys, NULL, LOCKD_TRY, &lease);
 *     ...                         the disk is ours; start the guest
 *     lockd_lease_release(lease); the disk is free again
 *     lockd_space_close(space);
 *
 * To keep a lease after the process that took it exits, pass its fd
 * (lockd_lease_fd()) to another process over SCM_RIGHTS and then call
 * lockd_lease_forget(): this process lets go of its copy, the lock stays.
 * The helper protocol (lockd-helper(8)) does exactly that.
 *
 * Errors
 * ======
 * Every function that can fail returns 0 (or a documented non-negative value)
 * on success and a negative errno value on failure; errno itself is not
 * meaningful afterwards.  Output parameters are named ret_* and are written only
 * on success.  The errors common to all lease calls are:
 *   -EINVAL       a NULL argument, unknown flag bits, a relative or empty path,
 *                 a key that is not 64 lowercase hex digits
 *   -ENAMETOOLONG a path or resource name over LOCKD_NAME_MAX bytes
 *   -EAGAIN       busy: another holder's lease conflicts (the only meaning of
 *                 -EAGAIN here)
 *   -ETIMEDOUT    a wait with a timeout ran out
 *   -EINPROGRESS  a try found a gc holding the lockspace's index for longer
 *                 than LOCKD_INDEX_WAIT_MS while it had to create a lease
 *                 file: the lease may well be free; try again
 *   -ENOLCK       the lockspace's filesystem does not support OFD locks (lockd
 *                 never falls back to classic POSIX locks)
 *   -ELOOP        a symlink was planted in the lockspace where a lease should be
 *   -EISDIR       a directory was planted there
 *   -ENXIO        a FIFO, socket or device was planted there (or as the
 *                 lockspace's index).  lockd looks at what a name refers to
 *                 (O_PATH) before it opens it, and never opens any of these:
 *                 a device may act on open.
 *   -EROFS, -EACCES  the lockspace cannot be written
 *   -EMFILE, -ENFILE the process or system is out of file descriptors
 *   -ENOMEM       out of memory
 * and any other errno the kernel gives for the underlying call.  A failed call
 * never changes which leases the caller holds.
 *
 * Threads
 * =======
 * A lockd_space may be used by several threads at once; it holds no mutable
 * state after lockd_space_open() but an atomic count of the leases taken
 * through it.  A lockd_lease belongs to one
 * thread at a time.  Leases exclude each other whoever holds them: two threads,
 * or two lockspace handles of one process, contend like two processes do.  The
 * library installs no signal handlers and starts no threads; a wait is done
 * in the calling thread.
 */
#ifndef LOCKD_H
#define LOCKD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef LOCKD_API
#if defined(__GNUC__)
#define LOCKD_API __attribute__((visibility("default")))
#else
#define LOCKD_API
#endif
#endif

#define LOCKD_VERSION_MAJOR  0
#define LOCKD_VERSION_MINOR  1
#define LOCKD_VERSION_PATCH  0
#define LOCKD_VERSION_STRING "0.1.0"

/* The version of the library actually linked, "MAJOR.MINOR.PATCH". */
LOCKD_API const char *lockd_version(void);

/* A key is 64 lowercase hex digits; LOCKD_KEY_SIZE includes the NUL. */
#define LOCKD_KEY_SIZE 65

/* In an lvm or scsi lockspace a key is the device's name, raw, as
 * virtlockd names the file: at most LOCKD_BLOCK_KEY_SIZE bytes with the
 * NUL (scsi_id's longest id is 255 bytes). */
#define LOCKD_BLOCK_KEY_SIZE 256

/* Longest path or resource name accepted, in bytes, without the NUL. */
#define LOCKD_NAME_MAX 4095

typedef struct lockd_space lockd_space;
typedef struct lockd_lease lockd_lease;

/* ------------------------------------------------------------------------
 * Lockspaces
 */

/* Flags for lockd_space_open(). */
#define LOCKD_OPEN_CREATE    0x1u /* create the directory (and parents) if missing */
#define LOCKD_OPEN_VERBATIM  0x2u /* ask for the verbatim key mode explicitly */
#define LOCKD_OPEN_CANONICAL 0x4u /* ask for the canonical key mode explicitly */
#define LOCKD_OPEN_READONLY  0x8u /* only compute keys, probe, list: write nothing */
#define LOCKD_OPEN_LVM 0x10u      /* ask for the lvm key mode explicitly */
#define LOCKD_OPEN_SCSI 0x20u     /* ask for the scsi key mode explicitly */

/* Key modes, as returned by lockd_space_mode(). */
#define LOCKD_MODE_VERBATIM  0 /* the absolute path as given (virtlockd's way) */
#define LOCKD_MODE_CANONICAL 1 /* realpath(3) of the path: one host only */
#define LOCKD_MODE_LVM 2       /* block devices by LVM LV UUID, raw (lvm_lockspace_dir) */
#define LOCKD_MODE_SCSI 3      /* block devices by SCSI id, raw (scsi_lockspace_dir) */

/*
 * The default lockspace directory, as a string the caller frees: $LOCKD_DIR
 * if set and not empty, else /var/lib/lockd/files for root and
 * ${XDG_STATE_HOME:-$HOME/.local/state}/lockd/files for other users (an
 * XDG_STATE_HOME or HOME that is not absolute is passed over).  The
 * environment is read with secure_getenv(3).  Nothing is created or checked
 * on disk.  Errors: -EINVAL (ret_dir NULL, or LOCKD_DIR is set to a relative
 * path), -ENAMETOOLONG (LOCKD_DIR over LOCKD_NAME_MAX bytes), -ENOENT (not
 * root and neither XDG_STATE_HOME nor HOME is usable), -ENOMEM.
 */
LOCKD_API int lockd_default_dir(char **ret_dir);

/*
 * Open the lockspace in directory dir, or in lockd_default_dir() when dir is
 * NULL (whose errors it then returns).
 *
 * The lockspace's settings file (.lockd-lockspace) records its key mode.  If
 * it exists, its mode is used; asking explicitly for the other mode fails with
 * -EMEDIUMTYPE and nothing is opened.  If it does not exist, the mode asked
 * for is used (verbatim unless LOCKD_OPEN_CANONICAL), and, unless
 * LOCKD_OPEN_READONLY, the settings file is written now, atomically: of two
 * openers racing on a fresh lockspace exactly one writes it and the other
 * adopts its mode (or, if it asked explicitly for the other one, fails with
 * -EMEDIUMTYPE).  A read-only opener never writes anything; without a settings
 * file lockd_space_recorded() tells it the mode is only assumed.
 *
 * Errors: -EINVAL (dir relative or empty, unknown flags, both mode flags,
 * LOCKD_OPEN_CREATE with LOCKD_OPEN_READONLY),
 * -ENOENT (the directory is missing and LOCKD_OPEN_CREATE was not given),
 * -ENOTDIR (dir, or a parent, is not a directory), -EMEDIUMTYPE (mode
 * mismatch, above), -EPROTO (the settings file is not one lockd understands:
 * a newer format, or anything but the exact two lines lockd writes, each
 * with its newline; also after three lost races to write it),
 * -ELOOP (a symlink planted as the settings file), -ENXIO (a FIFO, socket or
 * device planted there: looked at, never opened), -EROFS/-EACCES (the
 * settings file had to be written and could not be), -ENAMETOOLONG,
 * -ENOMEM, -EMFILE.
 * On success *ret_space owns one directory fd (O_CLOEXEC) until
 * lockd_space_close() and the end of the last lease taken through it.
 */
LOCKD_API int lockd_space_open(const char *dir, uint32_t flags, lockd_space **ret_space);

/* Close a lockspace handle.  Leases taken through it stay valid and held,
 * and keep its directory fd open until the last of them ends. */
LOCKD_API void lockd_space_close(lockd_space *space);

/* LOCKD_MODE_VERBATIM or LOCKD_MODE_CANONICAL; -EINVAL for NULL. */
LOCKD_API int lockd_space_mode(const lockd_space *space);

/* 1 if the mode was read from the settings file (or written by this handle),
 * 0 if it is only the mode asked for, because a read-only opener found none;
 * -EINVAL for NULL. */
LOCKD_API int lockd_space_recorded(const lockd_space *space);

/* The lockspace's directory, as opened (absolute).  Owned by space. */
LOCKD_API const char *lockd_space_dir(const lockd_space *space);

/* The lockspace's directory fd, for callers that want to fstatfs() it.
 * Owned by space: do not close it.  -EINVAL for NULL. */
LOCKD_API int lockd_space_fd(const lockd_space *space);

/* ------------------------------------------------------------------------
 * Keys
 */

/*
 * The key of disk path in space's key mode, written to ret_key (NUL
 * terminated, LOCKD_KEY_SIZE bytes).
 *   verbatim:  SHA-256 of path exactly as given; path must be absolute.
 *   canonical: SHA-256 of realpath(path); for a path where nothing exists yet,
 *              of realpath(its directory) + "/" + its last component.
 * Errors: -EINVAL (NULL, empty or relative path; a path ending in "/", "." or
 * ".." when canonical and nothing exists there), -ENAMETOOLONG, and in
 * canonical mode what realpath(3) reports: -ENOENT for a dangling symlink or a
 * missing directory, -ELOOP, -EACCES, -ENOTDIR; -EMEDIUMTYPE in an lvm or
 * scsi lockspace (lockd_space_block_key() names its leases).
 */
LOCKD_API int lockd_space_key(const lockd_space *space, const char *path, char *ret_key);

/*
 * The key of a resource that is not a path (an RBD image, an iSCSI LUN, an LV
 * UUID): SHA-256 of the len bytes at name.  Errors: -EINVAL (NULL, len 0, or a
 * NUL byte among the len bytes), -ENAMETOOLONG (len > LOCKD_NAME_MAX).
 */
LOCKD_API int lockd_key_resource(const void *name, size_t len, char *ret_key);

/*
 * LVM and SCSI lockspaces (key modes lvm and scsi, virtlockd's
 * lvm_lockspace_dir and scsi_lockspace_dir): a block device's lease file
 * is named by the device, raw, not hashed, as virtlockd names it:
 *   lvm:  what `lvs --noheadings --nosuffix --options uuid PATH` prints,
 *         the LV UUID with its dashes (38 characters), from
 *         SYSFS/dev/block/MAJ:MIN/dm/uuid; only for the spellings lvs
 *         understands, /dev/VG/LV and /dev/mapper/VG-LV (/dev/dm-N and
 *         /dev/disk/by-* get none, as in virtlockd), and not for an LV's
 *         internal layers;
 *   scsi: what `scsi_id --replace-whitespace --whitelisted --device PATH`
 *         prints (typically "3" and the NAA id in hex), computed from the
 *         VPD pages the kernel keeps (device/vpd_pg83, vpd_pg80, vendor,
 *         model) with scsi_id's priorities; a partition gets its disk's, a
 *         multipath map its paths' (which must agree).
 * Only paths that begin with "/dev" are looked at (libvirt's test).  The
 * name of path in mode (LOCKD_MODE_LVM or LOCKD_MODE_SCSI) goes to ret_key
 * (size bytes; LOCKD_BLOCK_KEY_SIZE is enough); sysfs_root is "/sys" when
 * NULL, or a tree of the same shape (tests).  Errors: -ENODATA (the device
 * has no name of that kind: virtlockd then tries its next lockspace, and so
 * should the caller), -EINVAL, -ERANGE (size too small), -EIO (the paths of
 * a multipath map disagree), and those of stat(2) and of reading sysfs.
 * Nothing is run and nothing needs root.
 */
LOCKD_API int lockd_block_key(const char *sysfs_root, const char *path, int mode,
                              char *ret_key, size_t size);

/* lockd_block_key() in space's key mode, from /sys; -EMEDIUMTYPE in a
 * lockspace of another mode.  The name is the key lockd_acquire(),
 * lockd_probe() and lockd_holder() take in that lockspace; the helper lists
 * such a lease under lockd_key_resource() of the name. */
LOCKD_API int lockd_space_block_key(const lockd_space *space, const char *path,
                                    char *ret_key, size_t size);

/* 1 if key is 64 lowercase hex digits and a NUL, else 0. */
LOCKD_API int lockd_key_valid(const char *key);

/* ------------------------------------------------------------------------
 * Leases
 */

/* Lease modes, per key (lockd_acquire()'s modes[]) and as probed. */
#define LOCKD_EXCLUSIVE 0
#define LOCKD_SHARED    1
#define LOCKD_FREE      2 /* lockd_probe() only: nobody holds it */
#define LOCKD_LOST      3 /* lockd_conn_list() only: the helper keeps the lease's
                           * fd, but a check found its lock gone (another copy of
                           * it was unlocked, a filesystem lost it): the guest
                           * runs unprotected */

/* timeout_ms values for lockd_acquire() besides a positive number of ms. */
#define LOCKD_TRY     0  /* fail without waiting for a holder (-EAGAIN) */
#define LOCKD_FOREVER -1 /* wait until granted (F_OFD_SETLKW) */

/* How long a LOCKD_TRY acquire that has to create a lease file waits for a
 * gc that holds the lockspace's index, in ms, before -EINPROGRESS.  gc holds
 * the index for one short batch of files at a time. */
#define LOCKD_INDEX_WAIT_MS 100

/*
 * Take the leases named by keys[0..n-1], all or nothing.  modes is NULL for
 * all exclusive, or gives LOCKD_EXCLUSIVE or LOCKD_SHARED per key.  The keys
 * are sorted and duplicates merged first (a key given twice is one lease,
 * exclusive if either asked for it), so concurrent callers never deadlock.
 *
 * timeout_ms: LOCKD_TRY, LOCKD_FOREVER, or a positive number of milliseconds.
 * A try never waits for a holder; it may wait for a gc of the lockspace, up
 * to LOCKD_INDEX_WAIT_MS (below), and twice that at most.
 * A timed wait retries with a capped backoff (at most 20 ms between tries), so
 * it is not fair: a steady stream of short holders can starve it.  A wait
 * forever blocks in the kernel, interrupted only by a signal that kills the
 * process (lockd retries EINTR).
 *
 * A missing lease file is created (mode 0600) under a shared lock on the
 * lockspace's index, so a concurrent lockd_gc() cannot remove it in between
 * (a try waits up to LOCKD_INDEX_WAIT_MS for a gc batch to end, a timed
 * acquire within its timeout, a wait forever as long as it takes; a try
 * that finds a lease locked looks again behind the index too, since gc
 * locks each lease for a moment to judge it);
 * after each grant lockd checks that the file's name still refers to the inode
 * it locked (gc, or a virtlockd peer, may have unlinked it) and starts over if
 * not.
 *
 * Errors: those listed at the top, notably -EAGAIN (busy, LOCKD_TRY),
 * -ETIMEDOUT, -EINPROGRESS (LOCKD_TRY only: a gc held the index, above),
 * -ENOLCK, -ELOOP/-EISDIR/-ENXIO (something planted), -EROFS,
 * -EMFILE; -EBADF if space was opened LOCKD_OPEN_READONLY; -ESTALE if the
 * lease file was replaced under every one of 1000 grants in a row
 * (something unlinks it as fast as it is locked); -EINVAL for n == 0,
 * n > LOCKD_ACQUIRE_MAX, an invalid key or mode or timeout.  On failure
 * nothing is held.  On success *ret_lease owns one O_CLOEXEC fd per distinct
 * key, and a reference to space (so that lockd_conn_handoff() can show the
 * helper the lockspace): the lease may outlive lockd_space_close(), which
 * then leaves the directory's fd open until the last lease of that handle
 * is released or forgotten.
 */
#define LOCKD_ACQUIRE_MAX 4096
LOCKD_API int lockd_acquire(lockd_space *space, size_t n, const char *const *keys,
                            const int *modes, int timeout_ms, lockd_lease **ret_lease);

/*
 * Direct leases, as virtlockd takes them when it has no lockspace
 * (file_lockspace_dir unset: Debian's default): the lock is on the disk
 * itself, byte 0, length 1 of the image file or block device node (OFD,
 * never QEMU's own bytes 100-103 and 200-203, so QEMU's image locking is
 * unaffected; a virtlockd holding the same disk directly conflicts with
 * it).  Nothing is ever written to the disk: no holder record.  On a block
 * device node the lock is the node's, which is one host's: two hosts that
 * see one LUN do not exclude each other this way (use a lockspace on
 * shared storage for that).  A lease on an image file on shared storage
 * excludes across hosts like any lease there.
 *
 * Take direct leases on the n disks paths[] (absolute; symlinks followed),
 * all or nothing, modes and timeout_ms as lockd_acquire().  Each must be a
 * regular file or a block device: looked at through O_PATH first, so that
 * nothing else is ever opened.  An exclusive lease opens its disk O_RDWR,
 * a shared one O_RDONLY.  lockd_lease_key() gives each path's verbatim key
 * (its SHA-256), lockd_lease_path() the path.  The same string twice is
 * one lease; one disk under two names is -EINVAL (it would exclude itself).
 * Errors: -EINVAL, -EAGAIN (busy), -ETIMEDOUT, -ENOENT, -EACCES, -EISDIR,
 * -ENXIO (neither a regular file nor a block device), -ENOLCK, -ENOMEM,
 * -EMFILE.  lockd_conn_handoff() hands direct leases to a helper of this
 * release (-EPROTONOSUPPORT from an older one), each named by its path.
 */
LOCKD_API int lockd_acquire_direct(size_t n, const char *const *paths, const int *modes,
                                   int timeout_ms, lockd_lease **ret_lease);

/* The disk of direct lease i (in lockd_lease_key() order), owned by lease;
 * NULL for a lease in a lockspace, or i out of range. */
LOCKD_API const char *lockd_lease_path(const lockd_lease *lease, size_t i);

/* lockd_probe() of a direct lease: whether the disk at path is locked, as
 * lockd_acquire_direct() would find it.  Never opens anything but a regular
 * file or block device, and that read-only.  Errors as
 * lockd_acquire_direct(). */
LOCKD_API int lockd_probe_direct(const char *path, int32_t *ret_pid);

/*
 * Release every lease in lease: unlock each (F_UNLCK on its open file
 * description, which frees it even where a copy of the fd lives in another
 * process), close the fds, free lease.  Returns 0, or the first error of an
 * unlock; every fd is closed and lease freed in any case.  NULL is a no-op.
 */
LOCKD_API int lockd_lease_release(lockd_lease *lease);

/*
 * Close this process's fds and free lease WITHOUT unlocking: the leases stay
 * held by whoever has other copies of the file descriptions (the helper, a
 * child), and are freed if nobody does.  NULL is a no-op.
 */
LOCKD_API void lockd_lease_forget(lockd_lease *lease);

/* Number of distinct leases held in lease (after de-duplication). */
LOCKD_API size_t lockd_lease_count(const lockd_lease *lease);

/* Where lockd_acquire()'s keys[i] went: the index, in lockd_lease_key()
 * order, of its lease (two equal keys share one).  -EINVAL for i out of the
 * range of the n keys given. */
LOCKD_API int lockd_lease_index(const lockd_lease *lease, size_t i);

/* The i-th lease (in sorted key order): its key (owned by lease), its mode
 * (LOCKD_EXCLUSIVE or LOCKD_SHARED), its fd (owned by lease: dup or send it,
 * do not close it).  NULL / -EINVAL for i out of range. */
LOCKD_API const char *lockd_lease_key(const lockd_lease *lease, size_t i);
LOCKD_API int lockd_lease_mode(const lockd_lease *lease, size_t i);
LOCKD_API int lockd_lease_fd(const lockd_lease *lease, size_t i);

/*
 * Whether lease i (in lockd_lease_key() order), which the caller holds,
 * still holds its lock: for a manager without the helper, which should
 * call it periodically on a network filesystem, where a client that loses
 * its server loses its locks without anyone letting go.  Never takes a
 * lock.  Returns 0 if held, or
 * why not:
 *   -ENOLCK   the lock is gone (unlocked through another copy of the
 *             description; on a FUSE filesystem: nobody holds it at all)
 *   -EBUSY    another holder has a conflicting lock (another host was
 *             granted the disk)
 *   -EBADFD, -ENOTCONN, -EIO, -ESTALE, ...  the filesystem's own answer:
 *             its client lost the server or the lock's state (GlusterFS:
 *             ENOTCONN when the connection drops, EBADFD after)
 * -EINVAL for i out of range.  It waits as long as the filesystem does
 * (a FUSE or NFS server that stopped answering): call it from a thread
 * with a deadline, and count a check that does not answer in time as lost.
 * On FUSE it opens and closes a second description of the lease file,
 * which drops this process's POSIX locks on that file (lockd takes none).
 */
LOCKD_API int lockd_lease_check(const lockd_lease *lease, size_t i);

/* The same for an fd that carries a lease of mode (LOCKD_EXCLUSIVE or
 * LOCKD_SHARED): a copy of a lease fd this process got some other way. */
LOCKD_API int lockd_check_fd(int fd, int mode);

/*
 * The same for descriptor fd of process pid, without taking a copy (a
 * copy would keep the lease held past that process's exit): read from
 * /proc/PID/fdinfo, which needs the right to read that process's fds (the
 * same uid, or root).  Local filesystems only: -EREMOTE where the kernel's
 * record is not the whole story (a network filesystem): check a copy with
 * lockd_check_fd() there.  Errors also -EBADF (no such fd), -ESRCH, -EACCES.
 */
LOCKD_API int lockd_check_fd_of(int32_t pid, int fd, int mode);

/*
 * Holder records.  After each exclusive grant lockd_acquire() writes a small
 * record into the lease file (the lock stays on byte 0, length 1, so
 * virtlockd peers are unaffected): this host's name and machine-id, the
 * acquiring pid, the time, lockd's version, and a generation that each
 * exclusive grant of that file increments, under an epoch drawn at random
 * when the file got its first record (a lease file deleted and created
 * again starts a new epoch: compare both).  lockd_lease_set_holder() adds
 * the owner's name, uuid and pid and the disk's name.  Shared leases write
 * none.  A record names the last lockd holder: it holds the disk only while
 * the lease is held, so read lockd_probe() first (`lockdctl who` shows a
 * record only on an exclusively held disk).
 */
#define LOCKD_HOLDER_NAME_MAX 512 /* bytes of the disk's name kept in a record */

/* Longest owner name, in bytes. */
#define LOCKD_OWNER_NAME_MAX 255

typedef struct lockd_holder_info {
    char host[256];
    char machine_id[33];
    char owner[4 * LOCKD_OWNER_NAME_MAX + 1]; /* control bytes stay \xHH escaped */
    char uuid[37];
    int32_t pid;
    int64_t since; /* seconds since the epoch */
    char version[32];
    uint64_t epoch;      /* random, per lease file */
    uint64_t generation; /* exclusive grants of it, from 1 */
    char resource[4 * LOCKD_HOLDER_NAME_MAX + 1];
} lockd_holder_info;

/*
 * Name the holder in the records of lease's exclusive leases: owner (at
 * most LOCKD_OWNER_NAME_MAX bytes) and uuid (36 characters) may be NULL;
 * pid the guest's; names, if not NULL, the disks' names in the order of the
 * keys given to lockd_acquire() (as lockd_conn_handoff() takes them), cut
 * to LOCKD_HOLDER_NAME_MAX bytes.  The generation stays the grant's.  A
 * record that cannot be written is not an error (it only names the
 * holder).  Errors: -EINVAL.
 */
LOCKD_API int lockd_lease_set_holder(lockd_lease *lease, const char *owner, const char *uuid,
                                     int32_t pid, const char *const *names);

/*
 * Read the holder record of lease key in space, taking no lock, past this
 * client's page cache.  Errors: -ENOENT (no lease file), -ENODATA (no
 * record: never held exclusively by lockd, or only by an older release or
 * by virtlockd), -EINVAL, and those of open(2) and read(2).
 */
LOCKD_API int lockd_holder(const lockd_space *space, const char *key, lockd_holder_info *ret);

/*
 * Whether the lease key is held, without taking it: returns LOCKD_FREE,
 * LOCKD_SHARED or LOCKD_EXCLUSIVE.  A missing lease file is LOCKD_FREE.  If
 * ret_pid is not NULL it receives the holder's pid where the kernel knows it
 * (a classic POSIX lock, as virtlockd takes) and 0 otherwise (OFD locks have
 * no owning process).  Leases held by this process count like anyone's.
 * Never creates or writes anything.  Errors: -EINVAL, -ENOLCK, -ELOOP,
 * -EISDIR, -ENXIO, -EACCES, -EMFILE.
 */
LOCKD_API int lockd_probe(const lockd_space *space, const char *key, int32_t *ret_pid);

/*
 * Delete the lease files in space that nobody holds.  Works in batches of
 * a few milliseconds: for each, it takes the lockspace's index exclusively
 * (after every creator already waiting for it), then for each lease file
 * takes its exclusive lock without waiting and, if granted and the name
 * still refers to the inode locked, unlinks it; then lets the index go, so
 * that acquires creating new lease files never wait long.  One gc runs in a
 * lockspace at a time (a second waits for the first), and progress is
 * called with the index let go.  Held leases and every file
 * whose name is not a key are left alone.  progress, if not NULL, is called
 * every 1024 files with the number looked at so far; a non-zero return stops
 * gc early and is returned.  On success *ret_removed and *ret_kept (each may
 * be NULL) get the number of lease files removed and left in place (held,
 * gone meanwhile, or not gc's to judge: planted, or unreadable to us).
 * Errors: -EROFS, -EACCES, -ENOLCK, -EMFILE, -ENOMEM, -EBADF (space was
 * opened LOCKD_OPEN_READONLY), -ELOOP/-EISDIR/-ENXIO (something other than a
 * regular file planted as the index, which is then never opened or locked),
 * or the progress callback's value.  Files removed before an error stay
 * removed.  lockd_gc() is lockd_gc_ex() with a minimum age of 0.
 */
typedef int (*lockd_progress_fn)(uint64_t done, void *userdata);
LOCKD_API int lockd_gc(lockd_space *space, lockd_progress_fn progress, void *userdata,
                       uint64_t *ret_removed, uint64_t *ret_kept);

/*
 * lockd_gc() with a minimum age, a total for progress, and the files left
 * in place told apart.  A lease file created or written (ctime or mtime, by
 * this host's clock) less than min_age_ms ago is left alone, whoever made
 * it: gc cannot see a peer that has opened a file and not yet locked it,
 * and a peer that does not check, once its lock is granted, that the name
 * still refers to the file it locked (lockd and virtlockd do) would then
 * hold a lease on a file gc unlinked, beside whoever creates the next one.
 * The age covers the moments after a peer creates a file; it cannot cover
 * one that opens an old file and is slow to lock it (lockdctl(1), "gc").
 * LOCKD_GC_MIN_AGE_MS is what lockdctl gc uses; 0 judges every file now, as
 * lockd_gc() does.
 *
 * progress, if not NULL, is called every 1024 files with the number looked
 * at so far and the total: the names that were keys when gc began, counted
 * in a first pass over the directory (names only, nothing opened), so done
 * may pass total if lease files are created meanwhile.
 *
 * On success, each of these that is not NULL gets the number of lease
 * files: *ret_removed removed; *ret_held left because someone holds them;
 * *ret_young left because they are younger than min_age_ms; *ret_other
 * left because they are not gc's to judge (a symlink, directory, FIFO,
 * socket or device planted under a key's name, never opened; a file we may
 * not open).  Files that vanished while gc looked are in none of them.
 * Errors as lockd_gc(), and -ELOOP/-EISDIR/-ENXIO if something other than a
 * regular file was planted as the lockspace's index (it is not opened).
 */
#define LOCKD_GC_MIN_AGE_MS 5000
typedef int (*lockd_gc_progress_fn)(uint64_t done, uint64_t total, void *userdata);
LOCKD_API int lockd_gc_ex(lockd_space *space, uint32_t min_age_ms,
                          lockd_gc_progress_fn progress, void *userdata,
                          uint64_t *ret_removed, uint64_t *ret_held, uint64_t *ret_young,
                          uint64_t *ret_other);

/* ------------------------------------------------------------------------
 * The helper: handing leases to lockd-helper(8)
 *
 * A lease taken in this process dies with it unless another process holds a
 * copy of its fd.  lockd-helper is that process: a manager connects, registers
 * the process the leases protect (the owner: a guest's QEMU), and hands the
 * lease fds over.  The helper keeps them until the owner exits or the manager
 * releases them, whatever happens to the manager meanwhile.  Owners are named
 * by pid; the helper tracks each through a pidfd, so a pid reused after the
 * owner's death never inherits its leases.
 *
 * A non-root caller may register only processes whose real uid is its own,
 * hands leases over only to owners its uid registered, and sees and releases
 * only the leases its uid handed over: a lease belongs to the uid that handed
 * it over and counts against that uid's limit, whoever registered its owner
 * (root may hand a disk over for a user's process; that user neither sees
 * nor releases it).  Root acts on all.
 *
 * Errors common to these calls: -ECONNREFUSED / -ENOENT (no helper at the
 * socket), -EPROTO (a malformed reply), -EPROTONOSUPPORT (the helper speaks
 * another protocol version), -ETIMEDOUT (no reply within 30 s), -EPIPE /
 * -ECONNRESET (the helper went away), -EPERM (the credentials rules above),
 * -ESRCH (no such owner, or no such live process), -EMFILE (the helper is
 * out of descriptors), and -EINVAL for bad arguments.  After -ETIMEDOUT,
 * -EPROTO or a transport error the connection is out of step with the
 * helper and is shut down: every later call on it gives -ENOTCONN, and the
 * caller reconnects.  An error the helper answered (-EPERM, -ESRCH, ...)
 * leaves the connection usable.
 */

typedef struct lockd_conn lockd_conn;


/*
 * The default helper socket, as a string the caller frees: $LOCKD_SOCKET if
 * set and not empty, else /run/lockd/helper.sock for root and
 * $XDG_RUNTIME_DIR/lockd/helper.sock for other users, read with
 * secure_getenv(3).  Errors: -EINVAL (ret_path NULL, or LOCKD_SOCKET is
 * relative), -ENAMETOOLONG, -ENOENT (not root, and XDG_RUNTIME_DIR is unset
 * or not absolute: such a user has no helper), -ENOMEM.
 */
LOCKD_API int lockd_default_socket(char **ret_path);

/*
 * Connect to the helper at path, or at lockd_default_socket() when path is
 * NULL (whose errors it then returns).  A connection may be used by one
 * thread at a time.  *ret_conn owns one socket (SOCK_CLOEXEC).
 */
LOCKD_API int lockd_conn_open(const char *path, lockd_conn **ret_conn);

/*
 * lockd_conn_open() in memory the caller provides (size >= LOCKD_CONN_SIZE
 * bytes, aligned as malloc() aligns), without allocating: for a child
 * between fork() and exec() of a threaded program (a libvirt hook), where
 * malloc() and stdio may deadlock.  path must be given (the default
 * socket's lookup allocates).  This call, lockd_conn_register(),
 * lockd_conn_register_on_loss() and lockd_conn_close() on such a
 * connection are async-signal-safe: system calls and plain memory only.
 * mem must stay valid until lockd_conn_close(), which does not free it.
 * Errors: -EINVAL (NULL, empty path, mem too small or misaligned), and
 * those of lockd_conn_open().
 */
#define LOCKD_CONN_SIZE (65536 + 256)
LOCKD_API int lockd_conn_open_in(void *mem, size_t size, const char *path,
                                 lockd_conn **ret_conn);

/* Disconnect.  Nothing the helper holds is released: leases belong to
 * owners, not connections.  NULL is a no-op. */
LOCKD_API void lockd_conn_close(lockd_conn *conn);

/*
 * Register process pid as an owner, with uuid (36-character text form, or
 * NULL) and name (at most LOCKD_OWNER_NAME_MAX bytes, or NULL) for people
 * to read.  pidfd is a pidfd of that process (pidfd_open(2)), sent along so
 * that the helper watches exactly this process even if pid is reused; or -1,
 * and the helper opens one from pid itself.  Registering a live owner again
 * is harmless and updates its uuid and name.
 * Errors: -ESRCH (pid is not alive), -EPERM, -EINVAL, and the common ones.
 */
LOCKD_API int lockd_conn_register(lockd_conn *conn, int32_t pid, int pidfd, const char *uuid,
                                  const char *name);

/*
 * What the helper does to an owner when one of its leases is found lost
 * (lockd-helper(8), "Lock loss"): the owner's guest would otherwise write a
 * disk that another host may now be granted.
 */
#define LOCKD_ON_LOSS_KILL   0 /* SIGKILL through its pidfd (the default, as sanlock's) */
#define LOCKD_ON_LOSS_STOP   1 /* SIGSTOP: it freezes and can be resumed (SIGCONT) */
#define LOCKD_ON_LOSS_REPORT 2 /* only mark the lease lost and log it */
#define LOCKD_ON_LOSS_EXEC   3 /* run command (/bin/sh -c) as the registering uid, with
                                * LOCKD_OWNER_PID, LOCKD_OWNER_NAME, LOCKD_OWNER_UUID,
                                * LOCKD_DISK, LOCKD_KEY, LOCKD_ERROR in its environment;
                                * the owner is left running */
#define LOCKD_ON_LOSS_EXEC_OR_KILL                                                       \
    4 /* run command as LOCKD_ON_LOSS_EXEC does, and                                     \
       * SIGKILL the owner unless command exits 0                                        \
       * within the helper's --hook-timeout: for a                                       \
       * hook that pauses the guest and must not                                         \
       * leave it running when it cannot */

/* Longest on-loss command, in bytes. */
#define LOCKD_COMMAND_MAX 4096

/*
 * lockd_conn_register(), choosing the action on lock loss: on_loss is one
 * of LOCKD_ON_LOSS_*, or -1 to leave it as it is (LOCKD_ON_LOSS_KILL for a
 * new owner); command is the hook of LOCKD_ON_LOSS_EXEC and
 * LOCKD_ON_LOSS_EXEC_OR_KILL (not empty, at most
 * LOCKD_COMMAND_MAX bytes) and NULL for the others.  The action runs once
 * per owner, at its first lost lease.  Errors: as lockd_conn_register(),
 * and -EPROTO from a helper too old to know actions (the choice is never
 * dropped silently).
 */
LOCKD_API int lockd_conn_register_on_loss(lockd_conn *conn, int32_t pid, int pidfd,
                                          const char *uuid, const char *name, int on_loss,
                                          const char *command);

/*
 * Hand every lease in lease to the helper, for owner pid.  names, if not
 * NULL, gives a display name (the disk path) per key, in the order of the
 * keys given to lockd_acquire(): names[i] is the name of keys[i], NULL
 * entries allowed; a key given twice takes its first non-NULL name.  The
 * helper checks that each fd is a regular file carrying an OFD lock of the
 * lease's mode, and refuses the whole request otherwise (-EBADFD).  Up to
 * 253 leases go in one message and one round trip; a larger lease is sent
 * in several, all or nothing.  On success ret_ids
 * (lockd_lease_count() entries, may be NULL) receives the helper's lease ids
 * in lockd_lease_key() order (keys[i]'s id is ret_ids[lockd_lease_index(lease,
 * i)]), which are never reused.  lease still owns its fds: call
 * lockd_lease_forget() to let the helper be the only holder, or keep them
 * and release with lockd_conn_release_notice().
 * Errors: -EBADFD, -ESRCH (pid is not a registered owner), -EDQUOT (the
 * per-uid lease limit), -ENAMETOOLONG (a name over LOCKD_NAME_MAX), -EEXIST
 * (an fd is an open file description the helper already holds as another
 * lease: another owner's, or under another key or mode; one description is
 * one lease, or releasing one would unlock the other), and the common ones.
 * Handing over the same lease to the same owner again is harmless and
 * returns the same ids.  On failure the helper keeps none of them and lease still
 * holds every lease (a multi-message hand-over is taken back with a request
 * that closes the helper's copies without unlocking); if the connection
 * broke mid-way, the helper may keep copies until their owner exits.
 */
LOCKD_API int lockd_conn_handoff(lockd_conn *conn, int32_t pid, const lockd_lease *lease,
                                 const char *const *names, uint64_t *ret_ids);

/*
 * Release leases held by the helper for owner pid: the n lease ids in ids,
 * or every lease of the owner when n is 0 (ids may be NULL).  The helper
 * unlocks and closes each before it answers.  Ids the owner does not hold are
 * skipped.  Returns the number of leases released, or -errno.
 */
LOCKD_API int lockd_conn_release(lockd_conn *conn, int32_t pid, size_t n, const uint64_t *ids);

/*
 * The same, as a one-way notice: no reply is awaited.  For a manager that
 * kept its own copies of the lease fds and has already released them
 * (lockd_lease_release()): the leases are free at that moment, and the
 * notice only lets the helper close its copies.  A notice that arrives late,
 * after the same disk was leased again, names old ids and touches nothing;
 * so a notice must name ids: n == 0 ("all of this owner", which would touch
 * newer leases) is -EINVAL, and the helper refuses such a notice from an
 * older client.  Errors: -EINVAL, and those of sending.
 */
LOCKD_API int lockd_conn_release_notice(lockd_conn *conn, int32_t pid, size_t n,
                                        const uint64_t *ids);

/*
 * One row of a listing: a lease the helper holds, with its owner.  mode is
 * LOCKD_EXCLUSIVE or LOCKD_SHARED for a lease whose lock the helper checked
 * as it wrote the row, or LOCKD_LOST.  uid is the uid that handed the lease
 * over.  uuid is the 36-character text form ("" if none was given); disk is
 * the display name handed over with the lease ("" if none).  Returning
 * non-zero stops the listing, and that value is returned by the listing
 * call.
 */
typedef int (*lockd_list_fn)(void *userdata, uint64_t lease_id, int mode, const char *key,
                             const char *disk, int32_t pid, uint32_t uid, const char *uuid,
                             const char *name);

/*
 * List the leases the helper holds (those the caller may see), for owner pid
 * only if pid > 0, for the lease key only if key is not NULL.  Calls fn once
 * per lease; fn must not use conn (the page it reads from lives in it).
 * Returns 0, fn's non-zero value, or -errno.
 */
LOCKD_API int lockd_conn_list(lockd_conn *conn, int32_t pid, const char *key, lockd_list_fn fn,
                              void *userdata);

/* One registered owner, with the number of leases it holds. */
typedef int (*lockd_owner_fn)(void *userdata, int32_t pid, uint32_t uid, const char *uuid,
                              const char *name, uint32_t leases);

/* List the registered owners the caller may see.  As lockd_conn_list(),
 * and likewise fn must not use conn. */
LOCKD_API int lockd_conn_owners(lockd_conn *conn, lockd_owner_fn fn, void *userdata);

/*
 * The helper's counts, over all owners: registered owners, leases held (lost
 * ones are not counted: see LOCKD_LOST), and
 * how many of those leases are also kept in systemd's fd store (so survive a
 * crash of the helper).  Each ret_* may be NULL.
 */
LOCKD_API int lockd_conn_status(lockd_conn *conn, uint64_t *ret_owners, uint64_t *ret_leases,
                                uint64_t *ret_stored);

/*
 * Show the helper the lockspace this connection works in.  From then on a
 * listing of a key's holders (lockd_conn_list() with key) gives only the
 * leases of that key in this lockspace: a file of the same key in another
 * directory is another disk.
 * lockd_conn_handoff() does this by itself (and the helper checks that each
 * fd handed over is the file of its key in the lockspace it was acquired
 * in); call it before listing the holders of a key.  Errors: -ENOTDIR, and
 * the common ones.
 */
LOCKD_API int lockd_conn_bind(lockd_conn *conn, const lockd_space *space);

/*
 * Filesystems on which the helper waits for a close or an unlock longer
 * than it waits in its loop (FSW_WAIT_MS, 50 ms): a hard-mounted NFS server
 * that stopped answering, a FUSE daemon that stalls.  The helper goes on
 * answering meanwhile; a lease on such a filesystem is freed when it comes
 * back (late, never early).  buf gets one line each, "<mount point> (dev
 * M:N): stuck for S s, N waiting", NUL-terminated and cut to size.  Returns
 * how many (0: none), or -errno.
 */
LOCKD_API int lockd_conn_stuck(lockd_conn *conn, char *buf, size_t size);

/*
 * Stop the helper on purpose (root only): it releases every lease it holds
 * and exits.  Refused with -EBUSY while owners hold leases, unless force is
 * non-zero: then their guests run unprotected.  Call lockd_conn_status()
 * first to say how many.  Errors: -EBUSY, -EPERM (not root), and the common
 * ones.  (Under systemd the unit refuses `systemctl stop`, which would free
 * every lease of every running guest; this is the way to stop it.)
 */
LOCKD_API int lockd_conn_stop(lockd_conn *conn, int force);

#ifdef __cplusplus
}
#endif

#endif /* LOCKD_H */
