/* SPDX-License-Identifier: MIT */
/*
 * lockd-libvirt.c: a libvirt lock-driver plugin that protects a guest's disks
 * with lockd leases held by lockd-helper(8).
 *
 * Put lockd-libvirt.so where libvirtd loads lock drivers and say, in
 * /etc/libvirt/qemu.conf:
 *
 *     lock_manager = "lockd-libvirt"
 *
 * (lockd-helper.so, its name before, is a link to it: then the settings
 * file is qemu-lockd-helper.conf.)  The settings live in
 * /etc/libvirt/qemu-lockd-libvirt.conf (all optional; lvm_lockspace_dir
 * and scsi_lockspace_dir as virtlockd's, see guest_block_keys()):
 *
 *     lockspace = "/var/lib/lockd/files"   the lockspace directory (alias
 *                                           file_lockspace_dir, virtlockd's
 *                                           name); unset: direct leases, on
 *                                           the disks themselves
 *     key_mode = "verbatim"                 or "canonical"; unset: the mode the
 *                                           lockspace records (verbatim if none)
 *     lvm_lockspace_dir, scsi_lockspace_dir unset: block devices named by
 *                                           LV UUID / SCSI id (virtlockd's)
 *     helper_socket = "/run/lockd/helper.sock"
 *     auto_disk_leases = 1                  a lease per writable disk
 *     require_lease_for_disks = 0           default: !auto_disk_leases
 *     migration_check = 0                   1: a resume refuses a disk that
 *                                           changed hands since the pause
 *                                           (see "Migration" below)
 *
 * How libvirt drives a lock plugin (libvirt 9.0.0 as shipped in Debian 12,
 * checked against libvirt's src/locking/lock_driver.h, lock_manager.c,
 * domain_lock.c and src/qemu/qemu_process.c, and by watching it run):
 *
 * - qemu.conf's lock_manager = "NAME" makes the QEMU driver dlopen()
 *   NAME.so (RTLD_NOW | RTLD_LOCAL) from $LIBVIRT_LOCK_MANAGER_PLUGIN_DIR or
 *   LIBDIR/libvirt/lock-driver (/usr/lib/x86_64-linux-gnu/libvirt/lock-driver
 *   here), dlsym() "virLockDriverImpl" and call its drvInit(1000000,
 *   "/etc/libvirt/qemu-NAME.conf", 0).  A load or init failure stops
 *   libvirtd.  The names "nop", "lockd" and "sanlock" are libvirt's own.
 * - The driver table and the parameter struct are declared below from that
 *   header (which no Debian package installs), with static size checks.
 * - Every lock operation builds a fresh manager object: drvNew(type 0 =
 *   domain, params uuid (UUID), name (STRING), id (UINT), pid (UINT), uri
 *   (CSTRING, may be NULL)), then drvAddResource() per resource, one call,
 *   drvFree().  So nothing survives between calls in privateData.  The "UINT"
 *   parameters are stored by libvirt through the int member of the union.
 * - Resources: DISK (type 0, the path as written in the domain XML, no
 *   parameters; only file, block and dir disks with a path) and LEASE (type 1,
 *   name = the <key>, parameters path (STRING), offset (ULONG), lockspace
 *   (STRING, absent when the XML has none)).  Flags READONLY (1) and SHARED
 *   (2, <shareable/>).
 * - Guest start: in the child forked for QEMU, after fork and before exec,
 *   with pid = getpid() (the pid QEMU will have), drvAcquire(flags =
 *   REGISTER_ONLY (1) | RESTRICT (2)) with every resource: QEMU always starts
 *   paused.  Then, in libvirtd, when the CPUs first start and on every resume,
 *   drvAcquire(flags = 0) with every resource; drvRelease(flags = 0) with
 *   every resource on pause.  On a running guest: drvAcquire / drvRelease with
 *   exactly one image or lease (hotplug, unplug, media change, snapshots,
 *   block-job pivot).  drvInquire only for migration (the source, at
 *   Begin), and only from a plugin whose driver flags say it uses lock state:
 *   its state rides in the migration cookie to the destination's acquire;
 *   a release's state is kept for the next resume.  Nothing is called when
 *   the guest exits or when libvirtd reconnects after a restart.  Seen in
 *   libvirtd's debug log: `virsh suspend` calls drvRelease twice (once when
 *   libvirt stops the CPUs, once for QEMU's STOP event), so a release must be
 *   harmless when repeated; a read-only disk is added with flags 1.
 * - drvAcquire's action is the guest's <on_lockfailure> (every call, the
 *   child's too); *fd (set to -1 by libvirt first) is a descriptor the
 *   plugin may leak into QEMU.  drvNew and drvAddResource of the child's
 *   call run in the child as well.
 * - Errors: libvirt's own plugins call virReportErrorHelper(), which libvirt
 *   exports from libvirt.so.0 only under a per-release version tag
 *   (LIBVIRT_PRIVATE_9.0.0).  Linking against that tag would tie this plugin
 *   to one libvirt release, so it is looked up at run time with
 *   dlsym(RTLD_DEFAULT): libvirtd links libvirt.so.0, so it is in the global
 *   scope.  Its message reaches virsh as "error: <kind>: <message>", e.g.
 *   "error: resource busy: lockd: ..." for a refusal in libvirtd; a refusal
 *   in the forked child (REGISTER_ONLY) is written by libvirt to the guest's
 *   log and shown as "error: internal error: Process exited prior to exec:
 *   libvirt: Lock Driver error : operation failed: lockd: ...".  Without the
 *   symbol (an unknown libvirt) the message goes to stderr.
 * - A configuration error at drvInit fails the QEMU driver's initialisation,
 *   and libvirtd exits ("Driver state initialization failed").
 *
 * What this plugin does with those calls:
 * - REGISTER_ONLY: connect to lockd-helper and register the QEMU-to-be as an
 *   owner (uuid and name for people to read); take no lease: an incoming
 *   migration's QEMU starts while the source still holds them.  This runs
 *   between fork and exec of a threaded libvirtd, so only async-signal-safe
 *   calls (see child_guest).  If it fails (no helper), say why in QEMU's
 *   log and carry on: the acquire when the CPUs start registers again and
 *   refuses the guest, with a message that reliably reaches virsh (see
 *   drv_acquire()).  A guest never runs without its leases.
 * - acquire: take each lease here with LOCKD_TRY (a busy disk refuses the
 *   guest at once, naming the disk and the holder where the local helper
 *   knows it), hand the fds to the helper for the QEMU pid, and let go of our
 *   copies.  The helper then holds them until QEMU exits or we release them,
 *   whatever happens to libvirtd meanwhile.  Leases the owner already holds
 *   are skipped, so a repeated acquire is harmless.
 * - release: ask the helper which leases the owner holds, and release those
 *   whose keys match the listed resources; never all of the owner's.
 * - Read-only disks get no lease, <shareable/> disks a shared one, a <lease>
 *   element the lease <key> (used as is if it is 64 lowercase hex digits,
 *   else hashed like a resource name) in the lockspace directory
 *   <target path>/<lockspace>, or <target path> without a <lockspace>.
 * - <on_lockfailure> becomes the helper's action when a lease is found lost
 *   (its filesystem lost the lock): see guest_on_loss().  libvirt's own
 *   lockd driver ignores it.
 */
#define _GNU_SOURCE
#include "lockd.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PLUGIN_NAME "lockd-libvirt"

/* ------------------------------------------------------------------------
 * libvirt's lock-driver ABI (lock_driver.h), declared here
 */

#define VLM_VERSION_MAJOR 1 /* VIR_LOCK_MANAGER_VERSION = major * 1000000 + ... */
#define VLM_VERSION 1000000u

#define VLM_OBJECT_DOMAIN 0 /* VIR_LOCK_MANAGER_OBJECT_TYPE_DOMAIN */

#define VLM_RESOURCE_DISK 0  /* VIR_LOCK_MANAGER_RESOURCE_TYPE_DISK */
#define VLM_RESOURCE_LEASE 1 /* VIR_LOCK_MANAGER_RESOURCE_TYPE_LEASE */

#define VLM_RES_READONLY 0x1u /* VIR_LOCK_MANAGER_RESOURCE_READONLY */
#define VLM_RES_SHARED 0x2u   /* VIR_LOCK_MANAGER_RESOURCE_SHARED */

#define VLM_ACQUIRE_REGISTER_ONLY 0x1u /* VIR_LOCK_MANAGER_ACQUIRE_REGISTER_ONLY */
#define VLM_ACQUIRE_RESTRICT 0x2u      /* VIR_LOCK_MANAGER_ACQUIRE_RESTRICT */

#define VLM_NEW_STARTED 0x1u /* VIR_LOCK_MANAGER_NEW_STARTED */

#define VLM_USES_STATE 0x1u /* VIR_LOCK_MANAGER_USES_STATE, in the driver's flags */

enum vlm_param_type {
    VLM_PARAM_STRING,
    VLM_PARAM_CSTRING,
    VLM_PARAM_INT,
    VLM_PARAM_LONG,
    VLM_PARAM_UINT,
    VLM_PARAM_ULONG,
    VLM_PARAM_DOUBLE,
    VLM_PARAM_UUID,
};

struct vlm_param {
    int type;
    const char *key;
    union {
        int iv;
        long long l;
        unsigned int ui;
        unsigned long long ul;
        double d;
        char *str;
        const char *cstr;
        unsigned char uuid[16];
    } value;
};

struct vlm_driver;

struct vlm_manager {
    struct vlm_driver *driver;
    void *privateData;
};

struct vlm_driver {
    unsigned int version;
    unsigned int flags;
    int (*drvInit)(unsigned int version, const char *configFile, unsigned int flags);
    int (*drvDeinit)(void);
    int (*drvNew)(struct vlm_manager *man, unsigned int type, size_t nparams,
                  struct vlm_param *params, unsigned int flags);
    void (*drvFree)(struct vlm_manager *man);
    int (*drvAddResource)(struct vlm_manager *man, unsigned int type, const char *name,
                          size_t nparams, struct vlm_param *params, unsigned int flags);
    int (*drvAcquire)(struct vlm_manager *man, const char *state, unsigned int flags,
                      int action, int *fd);
    int (*drvRelease)(struct vlm_manager *man, char **state, unsigned int flags);
    int (*drvInquire)(struct vlm_manager *man, char **state, unsigned int flags);
};

/* The layout libvirt 9.0.0 on x86_64 (LP64) was built with. */
_Static_assert(sizeof(void *) != 8 || sizeof(struct vlm_param) == 32,
               "virLockManagerParam");
_Static_assert(sizeof(void *) != 8 || offsetof(struct vlm_param, value) == 16,
               "virLockManagerParam.value");
_Static_assert(sizeof(void *) != 8 || sizeof(struct vlm_driver) == 72, "virLockDriver");
_Static_assert(sizeof(void *) != 8 || offsetof(struct vlm_driver, drvInquire) == 64,
               "virLockDriver.drvInquire");
_Static_assert(sizeof(struct vlm_manager) == 2 * sizeof(void *), "virLockManager");

/* virterror.h (public, stable): the error domain and the codes used. */
#define VIR_FROM_LOCKING 42
#define VIR_ERR_INTERNAL_ERROR 1
#define VIR_ERR_OPERATION_FAILED 9
#define VIR_ERR_CONFIG_UNSUPPORTED 67
#define VIR_ERR_RESOURCE_BUSY 87

typedef void (*vir_report_fn)(int domcode, int errcode, const char *filename,
                              const char *funcname, size_t linenr, const char *fmt, ...);

/* ------------------------------------------------------------------------
 * State
 */

struct plugin_config {
    char *file;      /* the settings file libvirt named (qemu-<lock_manager>.conf) */
    char *lockspace; /* lockspace directory for disk leases; NULL: direct leases */
    char *lvm_dir;   /* lvm_lockspace_dir: /dev LVs named by LV UUID, or NULL */
    char *scsi_dir;  /* scsi_lockspace_dir: /dev SCSI disks named by SCSI id, or NULL */
    int key_mode;         /* -1 (not set), LOCKD_MODE_VERBATIM, LOCKD_MODE_CANONICAL */
    char *helper_socket;  /* NULL: the library's default */
    int auto_disk_leases; /* a lease per writable disk */
    int migration_check;  /* carry lease generations in libvirt's lock state (off) */
    int require_lease_for_disks; /* refuse writable disks without any lease */
};

/* One lease a guest asks for. */
struct resource {
    char *name;   /* disk path, or the <lease> key, as libvirt gave it */
    char *dir;    /* lockspace directory of a <lease>; NULL: the disk lockspace */
    int mode;     /* LOCKD_EXCLUSIVE or LOCKD_SHARED */
    int is_lease; /* a <lease> element, not a disk */
    int direct;   /* a disk's lease on the disk itself: no lockspace is configured */
    int granted;  /* guest_acquire() took it in this call (its generation moved by one) */
    int checked;  /* state_check() found it in the lock state */
    int named; /* LOCKD_MODE_LVM or _SCSI: a block device's lease in lvm_lockspace_dir or
                * scsi_lockspace_dir (dir), named by the device; else 0 */
    char key[LOCKD_BLOCK_KEY_SIZE]; /* its key, or its name in an lvm or scsi lockspace */
    char list_key[LOCKD_KEY_SIZE];  /* the key the helper lists it under */
};

/* One manager object: a guest and the resources of one call. */
struct guest {
    char uuid[37];
    char name[LOCKD_OWNER_NAME_MAX + 1];
    char uri[256]; /* libvirt's connection URI of the guest's driver, or "" */
    int32_t pid;
    size_t n;
    struct resource *res;
    int rw_disks; /* writable exclusive disks seen while auto_disk_leases is off */
};

extern struct vlm_driver virLockDriverImpl;

/* Set by drvInit, read-only afterwards; libvirtd calls from many threads. */
static struct plugin_config config;
static unsigned int init_refs;
static vir_report_fn vir_report;
static pid_t init_pid; /* libvirtd's pid: another one is the child forked for QEMU */
static const char *sysfs_root; /* NULL: /sys; $LOCKD_TEST_SYSFS_ROOT for tests */
static char *socket_path;      /* the helper's socket, resolved at drvInit */

/*
 * The child libvirt forks for QEMU calls drvNew, drvAddResource and
 * drvAcquire(REGISTER_ONLY) between fork() and exec(), in a copy of a
 * threaded libvirtd: malloc(), stdio and any lock another thread held at
 * the fork may deadlock there.  So the child uses only this static guest
 * and connection memory (its own copies: nothing is shared with
 * libvirtd), system calls, and messages written with write(2).
 */
static struct guest child_guest;
static unsigned char child_conn[LOCKD_CONN_SIZE] __attribute__((aligned(16)));

static int
in_child(void)
{
    return getpid() != init_pid;
}

/* Write the strings, up to a NULL, and a newline to stderr (QEMU's log,
 * in the child): async-signal-safe. */
static void
child_say(const char *first, ...)
{
    const char *p;
    va_list ap;

    va_start(ap, first);
    for (p = first; p; p = va_arg(ap, const char *))
        (void)!write(STDERR_FILENO, p, strlen(p));
    va_end(ap);
    (void)!write(STDERR_FILENO, "\n", 1);
}

/* ------------------------------------------------------------------------
 * Errors
 */

/*
 * Report one line to libvirt (and so to virsh), prefixed "lockd: ".  code is
 * a VIR_ERR_* value.  Without libvirt's reporter the line goes to stderr.
 * Messages longer than 1023 bytes are cut.
 */
static void __attribute__((format(printf, 2, 3))) report(int code, const char *fmt, ...)
{
    char msg[1024], *p;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* One line, whatever a guest or disk name holds. */
    for (p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    if (vir_report)
        vir_report(VIR_FROM_LOCKING, code, __FILE__, __func__, __LINE__, "lockd: %s",
                   msg);
    else
        fprintf(stderr, "%s: lockd: %s\n", PLUGIN_NAME, msg);
}

/* Why a lockspace or lease operation failed, for people. */
static const char *
lease_strerror(int r)
{
    switch (r) {
    case -ENOLCK:
        return "the lockspace's filesystem does not support OFD locks";
    case -ELOOP:
        return "a symlink was planted in the lockspace";
    case -EISDIR:
        return "a directory was planted in the lockspace";
    case -ENXIO:
        return "a FIFO, socket or device was planted in the lockspace";
    case -EPROTO:
        return "the lockspace settings file is not one lockd understands";
    case -EINPROGRESS:
        return "a gc of the lockspace kept its index locked for too long; try again";
    default:
        return strerror(-r);
    }
}

static const char *
mode_name(int mode)
{
    return mode == LOCKD_MODE_CANONICAL ? "canonical" : "verbatim";
}

/* ------------------------------------------------------------------------
 * Configuration: qemu-NAME.conf, in libvirt's conf syntax (name = value,
 * values "strings" or integers, # comments).  An unknown name or a bad value
 * fails drvInit, so a typo stops libvirtd instead of leaving guests
 * unprotected.
 */

static char *
skip_space(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

/* What is left of a line after a value: "" when only blanks or a comment. */
static char *
conf_rest(char *s)
{
    s = skip_space(s);
    return *s == '#' || *s == '\n' || *s == '\r' ? s + strlen(s) : s;
}

/*
 * Parse one value: "string" or 'string' into *ret_str (malloc'd), or a
 * decimal integer into *ret_int with *ret_str NULL.  Returns 0, -EINVAL
 * (malformed, or something after the value) or -ENOMEM.
 */
static int
conf_value(char *s, char **ret_str, long *ret_int)
{
    char *end;

    *ret_str = NULL;
    if (*s == '"' || *s == '\'') {
        end = strchr(s + 1, *s);
        if (!end || *conf_rest(end + 1))
            return -EINVAL;
        *end = '\0';
        *ret_str = strdup(s + 1);
        return *ret_str ? 0 : -ENOMEM;
    }
    errno = 0;
    *ret_int = strtol(s, &end, 10);
    if (errno || end == s || *conf_rest(end))
        return -EINVAL;
    return 0;
}

/* Take str as the absolute path in *slot.  Takes str in any case. */
static int
conf_path(char **slot, char *str)
{
    if (!str || str[0] != '/' || strlen(str) > LOCKD_NAME_MAX) {
        free(str);
        return -EINVAL;
    }
    free(*slot);
    *slot = str;
    return 0;
}

static int
conf_bool(int *slot, const char *str, long v)
{
    if (str || (v != 0 && v != 1))
        return -EINVAL;
    *slot = (int)v;
    return 0;
}

static int
conf_mode(int *slot, const char *str)
{
    if (str && !strcmp(str, "verbatim"))
        *slot = LOCKD_MODE_VERBATIM;
    else if (str && !strcmp(str, "canonical"))
        *slot = LOCKD_MODE_CANONICAL;
    else
        return -EINVAL;
    return 0;
}

/*
 * Apply the setting name = (str or v) to cfg; takes str.  Returns 0, -ENOENT
 * (no such setting) or -EINVAL (a value of the wrong kind).
 */
static int
conf_set(struct plugin_config *cfg, const char *name, char *str, long v)
{
    int r;

    /* file_lockspace_dir: virtlockd's name for it, in qemu-lockd.conf. */
    if (!strcmp(name, "lockspace") || !strcmp(name, "file_lockspace_dir"))
        return conf_path(&cfg->lockspace, str);
    if (!strcmp(name, "helper_socket"))
        return conf_path(&cfg->helper_socket, str);
    if (!strcmp(name, "lvm_lockspace_dir"))
        return conf_path(&cfg->lvm_dir, str);
    if (!strcmp(name, "scsi_lockspace_dir"))
        return conf_path(&cfg->scsi_dir, str);
    if (!strcmp(name, "key_mode"))
        r = conf_mode(&cfg->key_mode, str);
    else if (!strcmp(name, "migration_check"))
        r = conf_bool(&cfg->migration_check, str, v);
    else if (!strcmp(name, "auto_disk_leases"))
        r = conf_bool(&cfg->auto_disk_leases, str, v);
    else if (!strcmp(name, "require_lease_for_disks"))
        r = conf_bool(&cfg->require_lease_for_disks, str, v);
    else
        r = -ENOENT;
    free(str);
    return r;
}

/* One line of the file.  Returns 0 or -1 (reported). */
static int
conf_line(struct plugin_config *cfg, const char *file, unsigned lineno, char *line)
{
    static const char *const expect[] = {"name = value", "a known setting",
                                         "a value of the right kind"};
    char *name = skip_space(line), *s, *str;
    size_t len = strspn(name, "abcdefghijklmnopqrstuvwxyz_");
    long v = 0;
    int r, why = 0;

    if (!*conf_rest(name))
        return 0;
    s = skip_space(name + len);
    if (len > 0 && *s == '=') {
        name[len] = '\0'; /* a blank or the '=' already passed */
        r = conf_value(skip_space(s + 1), &str, &v);
        if (r == -ENOMEM) {
            report(VIR_ERR_INTERNAL_ERROR, "%s: out of memory", file);
            return -1;
        }
        why = 2;
        if (r == 0) {
            r = conf_set(cfg, name, str, v);
            why = r == -ENOENT ? 1 : 2;
        }
        if (r == 0)
            return 0;
    }
    report(VIR_ERR_CONFIG_UNSUPPORTED,
           "%s:%u: expected %s (lockspace or file_lockspace_dir, lvm_lockspace_dir, "
           "scsi_lockspace_dir, key_mode, helper_socket: \"strings\"; migration_check, "
           "auto_disk_leases, require_lease_for_disks: 0 or 1)",
           file, lineno, expect[why]);
    return -1;
}

static void
conf_free(struct plugin_config *cfg)
{
    free(cfg->file);
    free(cfg->lockspace);
    free(cfg->lvm_dir);
    free(cfg->scsi_dir);
    free(cfg->helper_socket);
    memset(cfg, 0, sizeof(*cfg));
}

/* Load file into cfg, defaults first.  A missing file means all defaults.
 * Returns 0 or -1 (reported; cfg then holds nothing). */
static int
conf_load(const char *file, struct plugin_config *cfg)
{
    char *line = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    FILE *f;
    int r = 0;

    memset(cfg, 0, sizeof(*cfg));
    cfg->key_mode = -1;
    cfg->auto_disk_leases = 1;
    cfg->require_lease_for_disks = -1;
    cfg->file = file ? strdup(file) : NULL;
    if (file && !cfg->file) {
        report(VIR_ERR_INTERNAL_ERROR, "out of memory");
        conf_free(cfg);
        return -1;
    }
    f = file ? fopen(file, "re") : NULL;
    if (!f && file && errno != ENOENT) {
        report(VIR_ERR_CONFIG_UNSUPPORTED, "cannot read %s: %s", file, strerror(errno));
        r = -1;
    }
    while (f && r == 0 && getline(&line, &cap, f) >= 0)
        r = conf_line(cfg, file, ++lineno, line);
    free(line);
    if (f)
        fclose(f);
    if (r < 0)
        conf_free(cfg);
    else if (cfg->require_lease_for_disks < 0)
        cfg->require_lease_for_disks = !cfg->auto_disk_leases;
    return r;
}

/* ------------------------------------------------------------------------
 * Guests and their resources
 */

static void
guest_free(struct guest *g)
{
    size_t i;

    if (!g)
        return;
    for (i = 0; i < g->n; i++) {
        free(g->res[i].name);
        free(g->res[i].dir);
    }
    free(g->res);
    free(g);
}

/* The text form of a UUID into out (37 bytes), without stdio. */
static void
uuid_format(const unsigned char *u, char *out)
{
    static const int dash[16] = {[4] = 1, [6] = 1, [8] = 1, [10] = 1};
    static const char hex[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < 16; i++) {
        if (dash[i])
            *out++ = '-';
        *out++ = hex[u[i] >> 4];
        *out++ = hex[u[i] & 15];
    }
    *out = '\0';
}

/* Copy at most size - 1 bytes of src and a NUL: async-signal-safe. */
static void
copy_cut(char *dst, const char *src, size_t size)
{
    size_t n = strnlen(src, size - 1);

    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Read drvNew's parameters into g (async-signal-safe: the child calls it
 * too).  Returns 0, or -1 with the missing parameter's name in *ret_missing. */
static int
guest_params(struct guest *g, size_t nparams, const struct vlm_param *params,
             const char **ret_missing)
{
    size_t i;

    for (i = 0; i < nparams; i++) {
        const struct vlm_param *p = &params[i];

        if (!p->key)
            continue;
        if (!strcmp(p->key, "uuid") && p->type == VLM_PARAM_UUID)
            uuid_format(p->value.uuid, g->uuid);
        else if (!strcmp(p->key, "name") && p->type == VLM_PARAM_STRING && p->value.str &&
                 !g->name[0])
            /* The helper keeps at most LOCKD_OWNER_NAME_MAX bytes of a name. */
            copy_cut(g->name, p->value.str, sizeof(g->name));
        else if (!strcmp(p->key, "pid") &&
                 (p->type == VLM_PARAM_UINT || p->type == VLM_PARAM_INT))
            g->pid = p->value.iv; /* libvirt stores it through .iv */
        else if (!strcmp(p->key, "uri") && p->type == VLM_PARAM_CSTRING &&
                 p->value.cstr && strlen(p->value.cstr) < sizeof(g->uri))
            copy_cut(g->uri, p->value.cstr, sizeof(g->uri));
        /* "id" and anything a later libvirt adds are not needed. */
    }
    *ret_missing = !g->name[0]   ? "name"
                   : g->pid <= 0 ? "pid"
                   : !g->uuid[0] ? "uuid"
                                 : NULL;
    return *ret_missing ? -1 : 0;
}

/* Add one lease to g; takes dir.  Returns 0 or -1 (reported). */
static int
guest_add(struct guest *g, const char *name, char *dir, unsigned int flags)
{
    struct resource *res = realloc(g->res, (g->n + 1) * sizeof(*res));
    char *copy = strdup(name);

    if (res)
        g->res = res;
    if (!res || !copy) {
        free(copy);
        free(dir);
        report(VIR_ERR_INTERNAL_ERROR, "out of memory");
        return -1;
    }
    res = &g->res[g->n++];
    memset(res, 0, sizeof(*res));
    res->name = copy;
    res->dir = dir;
    res->is_lease = dir != NULL;
    res->mode = flags & VLM_RES_SHARED ? LOCKD_SHARED : LOCKD_EXCLUSIVE;
    if (!res->is_lease)
        return 0;
    /* A <key> that is already a lockd key names that lease file, as
     * virtlockd does; any other string is hashed like a resource name. */
    if (lockd_key_valid(name))
        memcpy(res->key, name, LOCKD_KEY_SIZE);
    else if (lockd_key_resource(name, strlen(name), res->key) < 0) {
        report(VIR_ERR_CONFIG_UNSUPPORTED, "lease key '%s' is empty or too long", name);
        return -1;
    }
    memcpy(res->list_key, res->key, LOCKD_KEY_SIZE);
    return 0;
}

/*
 * The lockspace directory of a <lease>: <target path>/<lockspace>, or the
 * target path alone when the XML names no lockspace.  The offset must be 0.
 * Returns the malloc'd directory, or NULL (reported).
 */
static char *
lease_dir(const char *key, size_t nparams, const struct vlm_param *params)
{
    const char *path = NULL, *space = NULL;
    char *dir = NULL;
    size_t i;

    for (i = 0; i < nparams; i++) {
        const struct vlm_param *p = &params[i];

        if (p->key && !strcmp(p->key, "path") && p->type == VLM_PARAM_STRING)
            path = p->value.str;
        else if (p->key && !strcmp(p->key, "lockspace") && p->type == VLM_PARAM_STRING)
            space = p->value.str;
        else if (p->key && !strcmp(p->key, "offset") && p->type == VLM_PARAM_ULONG &&
                 p->value.ul != 0) {
            report(VIR_ERR_CONFIG_UNSUPPORTED,
                   "lease '%s': <target offset> must be 0 for lockd leases", key);
            return NULL;
        }
    }
    if (!path || path[0] != '/' || (space && strchr(space, '/'))) {
        report(VIR_ERR_CONFIG_UNSUPPORTED,
               "lease '%s': needs an absolute <target path> (the lockspace directory) "
               "and a <lockspace> without '/'",
               key);
        return NULL;
    }
    if (space && *space ? asprintf(&dir, "%s/%s", path, space) < 0
                        : !(dir = strdup(path))) {
        report(VIR_ERR_INTERNAL_ERROR, "out of memory");
        return NULL;
    }
    return dir;
}

/* ------------------------------------------------------------------------
 * Lockspaces and keys
 */

/*
 * Open a lockspace: the disk lockspace (config.lockspace, with the configured
 * key mode; created if missing when create is set, read-only otherwise), or,
 * for a <lease>, the directory dir, which must exist and whose key mode does
 * not matter (a lease key is given, not computed from a path).  A key mode
 * that contradicts the recorded one refuses the guest, naming both.
 * Returns 0 or -1 (reported).
 */
static int
space_open(const struct guest *g, const char *dir, int named, int create,
           lockd_space **ret)
{
    uint32_t flags = 0;
    lockd_space *probe;
    int r;

    if (named)
        /* lvm_lockspace_dir or scsi_lockspace_dir: its mode is its kind. */
        flags = (named == LOCKD_MODE_LVM ? LOCKD_OPEN_LVM : LOCKD_OPEN_SCSI) |
                (create ? LOCKD_OPEN_CREATE : LOCKD_OPEN_READONLY);
    else if (!dir) {
        dir = config.lockspace;
        flags = create ? LOCKD_OPEN_CREATE : LOCKD_OPEN_READONLY;
        if (config.key_mode >= 0)
            flags |= config.key_mode == LOCKD_MODE_CANONICAL ? LOCKD_OPEN_CANONICAL
                                                             : LOCKD_OPEN_VERBATIM;
    } else if (!create)
        flags = LOCKD_OPEN_READONLY;
    r = lockd_space_open(dir, flags, ret);
    if (r == -EMEDIUMTYPE && lockd_space_open(dir, LOCKD_OPEN_READONLY, &probe) == 0) {
        report(VIR_ERR_CONFIG_UNSUPPORTED,
               "guest '%s' refused: lockspace %s records key mode %s, but "
               "%s asks for key_mode = \"%s\"",
               g->name, dir, mode_name(lockd_space_mode(probe)),
               config.file ? config.file : "the plugin's settings",
               mode_name(config.key_mode));
        lockd_space_close(probe);
    } else if (r < 0)
        report(VIR_ERR_OPERATION_FAILED, "guest '%s': cannot open lockspace %s: %s",
               g->name, dir, lease_strerror(r));
    return r < 0 ? -1 : 0;
}

/*
 * Name the block devices among g's disks as virtlockd does, in its order:
 * a /dev path gets its LVM name in lvm_lockspace_dir if it has one, else
 * its SCSI name in scsi_lockspace_dir if it has one; the others stay for
 * the file lockspace (or direct leases).  Returns how many are left, or -1
 * (reported: a device whose name cannot be read refuses the guest, as
 * virtlockd refuses it when scsi_id cannot run).
 */
static int
guest_block_keys(struct guest *g)
{
    static const int modes[] = {LOCKD_MODE_LVM, LOCKD_MODE_SCSI};
    size_t i, k;
    int r, left = 0;

    for (i = 0; i < g->n; i++) {
        struct resource *res = &g->res[i];
        const char *dirs[] = {config.lvm_dir, config.scsi_dir};

        if (res->is_lease || res->named)
            continue; /* not a disk, or named by an earlier call on g */
        for (k = 0, r = -ENODATA; k < 2 && r == -ENODATA; k++) {
            if (!dirs[k])
                continue;
            r = lockd_block_key(sysfs_root, res->name, modes[k], res->key,
                                sizeof(res->key));
            if (r == 0 && !(res->dir = strdup(dirs[k])))
                r = -ENOMEM;
            if (r == 0) {
                res->named = modes[k];
                r = lockd_key_resource(res->key, strlen(res->key), res->list_key);
            }
        }
        if (r == -ENODATA) {
            left++;
            continue;
        }
        if (r < 0) {
            report(VIR_ERR_OPERATION_FAILED,
                   "guest '%s' refused: cannot read the %s name of disk %s: %s", g->name,
                   k == 1 ? "LVM" : "SCSI", res->name, strerror(-r));
            return -1;
        }
    }
    return left;
}

/* Compute the key of every disk of g in space.  Returns 0 or -1 (reported). */
static int
guest_disk_keys(struct guest *g, const lockd_space *space)
{
    size_t i;
    int r;

    for (i = 0; i < g->n; i++) {
        if (g->res[i].is_lease || g->res[i].named)
            continue;
        /* A direct lease's key is its path's verbatim key, as the helper
         * lists it. */
        g->res[i].direct = !space;
        r = space ? lockd_space_key(space, g->res[i].name, g->res[i].key)
                  : lockd_key_resource(g->res[i].name, strlen(g->res[i].name),
                                       g->res[i].key);
        if (r < 0) {
            report(VIR_ERR_OPERATION_FAILED, "guest '%s': no lease key for disk %s: %s",
                   g->name, g->res[i].name, strerror(-r));
            return -1;
        }
        memcpy(g->res[i].list_key, g->res[i].key, LOCKD_KEY_SIZE);
    }
    return 0;
}

static int
guest_has_disks(const struct guest *g)
{
    size_t i;

    for (i = 0; i < g->n; i++)
        if (!g->res[i].is_lease)
            return 1;
    return 0;
}

/* Open the disk lockspace if g has disks and compute their keys. */
static int
guest_keys(struct guest *g, int create, lockd_space **ret_space)
{
    int left;

    *ret_space = NULL;
    if (!guest_has_disks(g))
        return 0;
    left = guest_block_keys(g);
    if (left <= 0)
        return left;
    if (!config.lockspace)
        return guest_disk_keys(g, NULL); /* direct leases */
    if (space_open(g, NULL, 0, create, ret_space) < 0)
        return -1;
    if (guest_disk_keys(g, *ret_space) == 0)
        return 0;
    lockd_space_close(*ret_space);
    *ret_space = NULL;
    return -1;
}

static int
same_space(const struct resource *a, const struct resource *b)
{
    return a->direct == b->direct &&
           (a->dir == b->dir || (a->dir && b->dir && !strcmp(a->dir, b->dir)));
}

/* lockd_probe() of res: in space, or on the disk itself for a direct lease. */
static int
res_probe(const struct resource *res, const lockd_space *space, int32_t *ret_pid)
{
    return res->direct ? lockd_probe_direct(res->name, ret_pid)
                       : lockd_probe(space, res->key, ret_pid);
}

/* Index of the first resource with res's key in res's lockspace. */
static size_t
first_of(const struct guest *g, const struct resource *res)
{
    size_t i;

    for (i = 0; &g->res[i] != res; i++)
        if (same_space(&g->res[i], res) && !strcmp(g->res[i].key, res->key))
            break;
    return i;
}

/* ------------------------------------------------------------------------
 * The helper
 */

/* Connect to the helper.  Returns 0, or -1 with the reason in why. */
static int
helper_connect(const struct guest *g, const char *doing, lockd_conn **ret, char *why,
               size_t len)
{
    int r = socket_path ? lockd_conn_open(socket_path, ret) : -ENOENT;

    if (r < 0)
        snprintf(why, len,
                 "%s guest '%s': lockd-helper is unreachable at %s (%s); is it running?",
                 doing, g->name, socket_path ? socket_path : "the default socket",
                 strerror(-r));
    return r < 0 ? -1 : 0;
}

/* Connect and register g's owner (again: that is harmless) with its action
 * on lock loss (on_loss, hook).  Returns 0 with the connection in *ret, or
 * -1 with the reason in why. */
static int
helper_register(const struct guest *g, int on_loss, const char *hook, lockd_conn **ret,
                char *why, size_t len)
{
    int r;

    if (helper_connect(g, "cannot protect", ret, why, len) < 0)
        return -1;
    r = lockd_conn_register_on_loss(*ret, g->pid, -1, g->uuid, g->name, on_loss, hook);
    if (r == -EPROTO && on_loss >= 0)
        snprintf(why, len,
                 "guest '%s' refused: this lockd-helper cannot act on <on_lockfailure> "
                 "(too old: restart it with this release's)",
                 g->name);
    else if (r < 0)
        snprintf(why, len, "guest '%s' refused: lockd-helper did not register pid %d: %s",
                 g->name, (int)g->pid, strerror(-r));
    if (r < 0) {
        lockd_conn_close(*ret);
        *ret = NULL;
        return -1;
    }
    return 0;
}

/*
 * <on_lockfailure>, as libvirt passes it to drvAcquire
 * (virDomainLockFailureAction).
 */
enum {
    VLM_FAILURE_DEFAULT,
    VLM_FAILURE_POWEROFF,
    VLM_FAILURE_RESTART,
    VLM_FAILURE_PAUSE,
    VLM_FAILURE_IGNORE,
};

/* How long the pause hook gives libvirt to suspend the guest, in seconds,
 * before the helper kills it (a guest left running on a lost lease may
 * write a disk another host has been granted). */
#define PAUSE_DEADLINE_SEC 10

/*
 * The helper's action on lock loss for g's <on_lockfailure> action: into
 * *ret_on_loss (-1: the helper's default, kill) and, for pause, the hook
 * into cmd.  default and poweroff: SIGKILL QEMU (libvirt then shows the
 * guest shut off).  pause: a hook asks libvirtd to suspend the guest, as
 * libvirt's own sanlock helper does (look it up by UUID on the driver's
 * URI, virDomainSuspend); it runs in a child of the helper that holds no
 * lease fd, never in the helper's loop, since a suspend calls back into
 * this plugin's release.  If the guest is not paused within
 * PAUSE_DEADLINE_SEC, the hook fails and the helper kills QEMU (SIGSTOP
 * would not do: a stopped QEMU cannot answer libvirt).  ignore: the helper
 * only reports.  restart is refused, as sanlock's plugin refuses it: a
 * restarted guest would ask at once for the lease it just lost.  Returns 0
 * or -1 (reported).
 */
static int
guest_on_loss(const struct guest *g, int action, int *ret_on_loss, char *cmd, size_t size)
{
    const char *uri = g->uri[0] ? g->uri : "qemu:///system";

    cmd[0] = '\0';
    switch (action) {
    case VLM_FAILURE_DEFAULT:
    case VLM_FAILURE_POWEROFF:
        *ret_on_loss = -1; /* kill: what a helper of any release does */
        return 0;
    case VLM_FAILURE_IGNORE:
        *ret_on_loss = LOCKD_ON_LOSS_REPORT;
        return 0;
    case VLM_FAILURE_PAUSE:
        /* The URI goes between single quotes: it must hold none. */
        if (strchr(uri, '\'') || strpbrk(uri, "\n\r")) {
            report(VIR_ERR_CONFIG_UNSUPPORTED,
                   "guest '%s' refused: <on_lockfailure>pause</on_lockfailure> needs a "
                   "libvirt URI without quotes or newlines",
                   g->name);
            return -1;
        }
        *ret_on_loss = LOCKD_ON_LOSS_EXEC_OR_KILL;
        snprintf(cmd, size,
                 "c='%s' u=\"$LOCKD_OWNER_UUID\"; "
                 "timeout -k 1 %d virsh -q -c \"$c\" suspend \"$u\" >/dev/null 2>&1; "
                 "[ \"$(timeout -k 1 5 virsh -q -c \"$c\" domstate \"$u\" 2>/dev/null)\" "
                 "= paused ]",
                 uri, PAUSE_DEADLINE_SEC);
        return 0;
    case VLM_FAILURE_RESTART:
        report(VIR_ERR_CONFIG_UNSUPPORTED,
               "guest '%s' refused: <on_lockfailure>restart</on_lockfailure> is not "
               "supported by lockd (a restarted guest would ask for the lease it lost); "
               "use poweroff, pause or ignore",
               g->name);
        return -1;
    default:
        report(VIR_ERR_CONFIG_UNSUPPORTED,
               "guest '%s' refused: unknown <on_lockfailure> action %d", g->name, action);
        return -1;
    }
}

/* A lease the helper holds for the guest. */
struct held {
    uint64_t id;
    int mode;
    char key[LOCKD_KEY_SIZE];
};

struct held_list {
    size_t n;
    struct held *v;
};

static int
held_row(void *userdata, uint64_t lease_id, int mode, const char *key, const char *disk,
         int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    struct held_list *l = userdata;
    struct held *v = realloc(l->v, (l->n + 1) * sizeof(*v));

    (void)disk, (void)pid, (void)uid, (void)uuid, (void)name;
    if (!v)
        return -ENOMEM;
    l->v = v;
    v[l->n].id = lease_id;
    v[l->n].mode = mode;
    snprintf(v[l->n].key, sizeof(v[l->n].key), "%s", key);
    l->n++;
    return 0;
}

/* The leases the helper holds for g's owner (none if it is not registered). */
static int
helper_held(const struct guest *g, lockd_conn *conn, struct held_list *ret)
{
    int r;

    memset(ret, 0, sizeof(*ret));
    r = lockd_conn_list(conn, g->pid, NULL, held_row, ret);
    if (r == -ESRCH)
        r = 0;
    if (r < 0) {
        free(ret->v);
        memset(ret, 0, sizeof(*ret));
        report(VIR_ERR_OPERATION_FAILED,
               "guest '%s': cannot list its leases in lockd-helper: %s", g->name,
               strerror(-r));
        return -1;
    }
    return 0;
}

/* The helper's lease of the owner with key, or NULL. */
static const struct held *
held_find(const struct held_list *l, const char *key)
{
    size_t i;

    for (i = 0; i < l->n; i++)
        if (!strcmp(l->v[i].key, key))
            return &l->v[i];
    return NULL;
}

/* Who holds a lease, as the local helper knows it. */
struct holder {
    const char *key; /* the lease looked for */
    int mode;
    int32_t pid;
    char uuid[37];
    char name[LOCKD_OWNER_NAME_MAX + 1];
};

static int
holder_row(void *userdata, uint64_t lease_id, int mode, const char *key, const char *disk,
           int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    struct holder *h = userdata;

    (void)lease_id, (void)disk, (void)uid;
    if (strcmp(key, h->key) != 0 || mode == LOCKD_LOST)
        return 0;
    h->mode = mode;
    h->pid = pid;
    snprintf(h->uuid, sizeof(h->uuid), "%s", uuid);
    snprintf(h->name, sizeof(h->name), "%s", name);
    return 1; /* the first holder is enough */
}

/* Refuse g because res is busy, naming the holder where it can be found. */
static void
report_busy(const struct guest *g, const struct resource *res, lockd_conn *conn,
            const lockd_space *space)
{
    struct holder h;
    char who[LOCKD_OWNER_NAME_MAX + 128];
    int32_t pid = 0;
    int r;

    memset(&h, 0, sizeof(h));
    h.key = res->list_key;
    /* The whole listing, filtered here: this is the rare refusal path, and
     * it does not depend on the helper's key filter. */
    if (lockd_conn_list(conn, 0, NULL, holder_row, &h) == 1) {
        int n = snprintf(who, sizeof(who), "held %s by ",
                         h.mode == LOCKD_SHARED ? "shared" : "exclusively");

        if (h.name[0])
            snprintf(who + n, sizeof(who) - n, "'%s' (pid %d%s%s)", h.name, (int)h.pid,
                     h.uuid[0] ? ", uuid " : "", h.uuid);
        else
            snprintf(who + n, sizeof(who) - n, "pid %d", (int)h.pid);
    } else if ((r = res_probe(res, space, &pid)) >= 0 && pid > 0)
        snprintf(who, sizeof(who), "held %s by pid %d (a POSIX lock: virtlockd?)",
                 r == LOCKD_SHARED ? "shared" : "exclusively", (int)pid);
    else
        snprintf(who, sizeof(who),
                 "held by a process this host's lockd-helper does not know "
                 "(another host, or a lease outside the helper)");
    report(VIR_ERR_RESOURCE_BUSY, "guest '%s' refused: %s %s is %s", g->name,
           res->is_lease ? "lease" : "disk", res->name, who);
}

/* ------------------------------------------------------------------------
 * Acquire and release
 */

/*
 * Whether the lease of res is locked by someone, as lockd_probe() sees it:
 * the helper's word that it holds a lease for the guest is not enough to
 * skip taking it (a copy of its open file description may have been
 * unlocked); the lock itself must be there too.
 */
static int
res_probe_held(const struct guest *g, const struct resource *res, lockd_space *space)
{
    lockd_space *own = NULL;
    int r;

    if (res->dir && space_open(g, res->dir, res->named, 0, &own) < 0)
        return 0;
    r = res_probe(res, own ? own : space, NULL);
    lockd_space_close(own);
    return r == LOCKD_EXCLUSIVE || r == LOCKD_SHARED;
}

/* The mode g needs for the key of res: exclusive if any resource with the
 * same key in the same lockspace asks for it. */
static int
res_mode(const struct guest *g, const struct resource *res)
{
    size_t i;

    for (i = 0; i < g->n; i++)
        if (same_space(&g->res[i], res) && !strcmp(g->res[i].key, res->key) &&
            g->res[i].mode == LOCKD_EXCLUSIVE)
            return LOCKD_EXCLUSIVE;
    return res->mode;
}

/* The leases of one lockspace that g takes in one lockd_acquire(). */
struct batch {
    size_t n;
    const char **keys;
    int *modes;
    const char **names;
    size_t *res; /* index in g->res of each */
};

/*
 * Take the leases of batch b in space, without waiting, into *ret: all or
 * nothing, one lockd_acquire().  A busy one refuses the guest, naming the
 * disk and its holder.  Returns 0 or -1 (reported).
 */
#define GC_TRIES 10

static int
batch_acquire(const struct guest *g, const struct batch *b, lockd_conn *conn,
              lockd_space *space, lockd_lease **ret)
{
    const struct resource *first = &g->res[b->res[0]];
    int r = 0, tries;
    size_t i;

    /* -EINPROGRESS: a gc held the index past LOCKD_INDEX_WAIT_MS, which says
     * nothing about the leases; give it a few more chances before refusing. */
    if (first->direct) /* named by their paths */
        r = lockd_acquire_direct(b->n, b->names, b->modes, LOCKD_TRY, ret);
    else
        for (tries = 0; tries < GC_TRIES; tries++)
            if ((r = lockd_acquire(space, b->n, b->keys, b->modes, LOCKD_TRY, ret)) !=
                -EINPROGRESS)
                break;
    if (r == -EAGAIN) {
        /* Which one: the first that a probe finds held (a holder may have
         * let go since; then the first is named). */
        for (i = 0; i < b->n; i++) {
            int p = res_probe(&g->res[b->res[i]], space, NULL);

            if (p == LOCKD_EXCLUSIVE ||
                (p == LOCKD_SHARED && b->modes[i] == LOCKD_EXCLUSIVE))
                break;
        }
        report_busy(g, &g->res[b->res[i < b->n ? i : 0]], conn, space);
    } else if (r < 0 && first->direct) {
        /* Which disk: the first that fails the same way on its own. */
        for (i = 0; i < b->n && res_probe(&g->res[b->res[i]], space, NULL) != r; i++)
            ;
        first = &g->res[b->res[i < b->n ? i : 0]];
        report(VIR_ERR_OPERATION_FAILED,
               "guest '%s' refused: cannot take the direct lease of disk %s%s: %s",
               g->name, first->name,
               i < b->n || b->n == 1 ? "" : " (or another of its disks)",
               r == -ENXIO    ? "neither a regular file nor a block device"
               : r == -EISDIR ? "a directory, not a disk"
                              : strerror(-r));
    } else if (r < 0)
        report(VIR_ERR_OPERATION_FAILED,
               "guest '%s' refused: cannot take the lease of %s %s%s: %s", g->name,
               first->is_lease ? "lease" : "disk", first->name,
               b->n > 1 ? " (or another of its lockspace)" : "", lease_strerror(r));
    return r < 0 ? -1 : 0;
}

/*
 * The leases g needs in the lockspace of resource index first that its
 * owner does not hold yet, into b (arrays of g->n).  A lease the helper
 * keeps without its lock is let go of in the helper first, to be taken
 * anew.
 */
static void
batch_plan(struct guest *g, size_t first, const struct held_list *held, lockd_conn *conn,
           lockd_space *space, struct batch *b)
{
    size_t i;

    b->n = 0;
    for (i = first; i < g->n; i++) {
        const struct resource *res = &g->res[i];
        const struct held *h = held_find(held, res->list_key);
        int mode = res_mode(g, res);

        if (!same_space(res, &g->res[first]) || first_of(g, res) != i)
            continue; /* another lockspace's, or a duplicate */
        if (h && h->mode == LOCKD_LOST)
            /* The helper keeps a lease whose lock is gone: let go of its
             * record and take the disk anew (or be refused: busy). */
            (void)lockd_conn_release(conn, g->pid, 1, &h->id);
        else if (h && (h->mode == LOCKD_EXCLUSIVE || h->mode == mode) &&
                 res_probe_held(g, res, space))
            continue; /* already held: acquiring is idempotent */
        g->res[i].granted = 1;
        b->keys[b->n] = res->key;
        b->modes[b->n] = mode;
        b->names[b->n] = res->name;
        b->res[b->n++] = i;
    }
}

/*
 * Take every lease of g that its owner does not hold yet, all or nothing:
 * one lockd_acquire() per lockspace, and one hand-over of each lockspace's
 * leases to the helper.  Returns 0 or -1 (reported; nothing taken).
 */
static int
guest_acquire(struct guest *g, lockd_conn *conn)
{
    lockd_lease **leases = calloc(g->n, sizeof(lockd_lease *));
    uint64_t *ids = calloc(g->n, sizeof(*ids));
    struct batch b = {0, calloc(g->n, sizeof(char *)), calloc(g->n, sizeof(int)),
                      calloc(g->n, sizeof(char *)), calloc(g->n, sizeof(size_t))};
    struct held_list held = {0, NULL};
    lockd_space *space = NULL;
    size_t i, j, handed = 0, nleases = 0;
    int r = -1;

    if (!leases || !ids || !b.keys || !b.modes || !b.names || !b.res) {
        report(VIR_ERR_INTERNAL_ERROR, "out of memory");
        goto out;
    }
    if (guest_keys(g, 1, &space) < 0 || helper_held(g, conn, &held) < 0)
        goto out;
    for (i = 0; i < g->n; i++) {
        lockd_space *own = NULL, *sp = space;

        for (j = 0; j < i && !same_space(&g->res[j], &g->res[i]); j++)
            ;
        if (j < i)
            continue; /* that lockspace was done with resource j */
        if (g->res[i].dir && space_open(g, g->res[i].dir, g->res[i].named, 1, &own) < 0) {
            r = -1; /* an earlier lockspace's leases go back too */
            goto out;
        }
        if (own)
            sp = own;
        batch_plan(g, i, &held, conn, sp, &b);
        r = b.n ? batch_acquire(g, &b, conn, sp, &leases[nleases]) : 0;
        lockd_space_close(own);
        if (r < 0)
            goto out;
        if (b.n == 0)
            continue;
        r = lockd_conn_handoff(conn, g->pid, leases[nleases], b.names, &ids[handed]);
        if (r < 0) {
            report(VIR_ERR_OPERATION_FAILED,
                   "guest '%s' refused: lockd-helper did not take the lease of %s%s: %s",
                   g->name, b.names[0], b.n > 1 ? " and others" : "", strerror(-r));
            r = -1;
        } else
            handed += lockd_lease_count(leases[nleases]);
        nleases++;
        if (r < 0)
            goto out;
    }
    r = 0;
out:
    if (r < 0 && handed > 0)
        (void)lockd_conn_release(conn, g->pid, handed, ids);
    for (i = 0; i < nleases; i++) {
        /* The helper holds what it was given; on failure nobody does. */
        if (r == 0)
            lockd_lease_forget(leases[i]);
        else
            lockd_lease_release(leases[i]);
    }
    lockd_space_close(space);
    free(held.v);
    free(leases);
    free(ids);
    free(b.keys);
    free(b.modes);
    free(b.names);
    free(b.res);
    return r;
}

/*
 * Release the leases of the listed resources that the helper holds for g's
 * owner; never any other.  Returns 0 or -1 (reported).
 */
static int
guest_release(struct guest *g, lockd_conn *conn)
{
    struct held_list held = {0, NULL};
    lockd_space *space = NULL;
    uint64_t *ids = NULL;
    size_t i, n = 0;
    int r = -1;

    if (guest_keys(g, 0, &space) < 0 || helper_held(g, conn, &held) < 0)
        goto out;
    ids = calloc(held.n ? held.n : 1, sizeof(*ids));
    if (!ids) {
        report(VIR_ERR_INTERNAL_ERROR, "out of memory");
        goto out;
    }
    for (i = 0; i < held.n; i++) {
        size_t j;

        for (j = 0; j < g->n && strcmp(g->res[j].list_key, held.v[i].key) != 0; j++)
            ;
        if (j < g->n)
            ids[n++] = held.v[i].id;
    }
    /* n == 0 must not reach lockd_conn_release(): it would mean "all". */
    r = n > 0 ? lockd_conn_release(conn, g->pid, n, ids) : 0;
    if (r < 0) {
        report(VIR_ERR_OPERATION_FAILED, "guest '%s': lockd-helper did not release: %s",
               g->name, strerror(-r));
        r = -1;
    } else
        r = 0;
out:
    lockd_space_close(space);
    free(held.v);
    free(ids);
    return r;
}

/* ------------------------------------------------------------------------
 * Migration: lease generations in libvirt's lock state (migration_check)
 *
 * libvirt releases a guest's leases at every pause (a suspend, the source
 * at a migration's switchover) and takes them again at resume (on the
 * destination): in between nobody holds the disk, and another holder could
 * take it, write, and let go unseen.  Each exclusive grant of a lease file
 * moves the generation in its holder record by one, so with the check on
 * the state libvirt carries from the release (or inquire) to the resume
 * names each lease's generation, and the resume refuses the guest if the
 * lease was granted to anyone else in between (libvirt's sanlock plugin
 * carries a lease version too, but never checks it).  Off by default:
 * with it, libvirt refuses migrations from hosts without it ("Missing lock
 * state"), such as virtlockd hosts.
 */

#define STATE_MAGIC "lockd1"
#define STATE_TOKEN_MAX (LOCKD_KEY_SIZE + 40) /* " KEY:EPOCH:GEN" */

/* The holder record of res, read in its lockspace (space, or its own). */
static int
res_record(const struct guest *g, const struct resource *res, lockd_space *space,
           lockd_holder_info *ret)
{
    lockd_space *own = NULL;
    int r;

    if (res->dir && space_open(g, res->dir, res->named, 0, &own) < 0)
        return -ENOENT;
    r = lockd_holder(own ? own : space, res->key, ret);
    lockd_space_close(own);
    return r;
}

/*
 * g's lock state: "lockd1" and, per exclusive lease in a lockspace,
 * " KEY:EPOCH:GENERATION" (the key the helper lists it under, its holder
 * record's epoch in hex and generation): hex digits, colons and spaces only,
 * since libvirt puts it into the migration cookie's XML unescaped.  Direct
 * and shared leases have no record: their hand-over is not checked.  Returns the
 * malloc'd state, or NULL (reported).  Every exclusive lease in a lockspace
 * gets a token: one whose record cannot be read, epoch 0 (unknown).
 */
static char *
guest_state(struct guest *g)
{
    lockd_space *space = NULL;
    lockd_holder_info *info = malloc(sizeof(*info));
    char *state = malloc(sizeof(STATE_MAGIC) + g->n * STATE_TOKEN_MAX);
    size_t i, at;

    if (!info || !state) {
        free(info);
        free(state);
        report(VIR_ERR_INTERNAL_ERROR, "out of memory");
        return NULL;
    }
    at = (size_t)sprintf(state, "%s", STATE_MAGIC);
    if (guest_keys(g, 0, &space) < 0) {
        free(info);
        free(state);
        return NULL;
    }
    for (i = 0; i < g->n; i++) {
        const struct resource *res = &g->res[i];

        if (first_of(g, res) != i || res->direct || res_mode(g, res) != LOCKD_EXCLUSIVE)
            continue;
        /* A record that cannot be read goes as epoch 0: the resume then
         * refuses, since it cannot tell whether the disk changed hands. */
        if (res_record(g, res, space, info) < 0)
            info->epoch = info->generation = 0;
        at += (size_t)snprintf(state + at, STATE_TOKEN_MAX, " %s:%016llx:%llu",
                               res->list_key, (unsigned long long)info->epoch,
                               (unsigned long long)info->generation);
    }
    lockd_space_close(space);
    free(info);
    return state;
}

/*
 * After guest_acquire(): whether each lease named in state moved by exactly
 * the grant just made (none if g already held it), under the same epoch.
 * Returns 0, or -1 with the reason in why.
 */
static int
state_check(struct guest *g, const char *state, char *why, size_t len)
{
    lockd_holder_info info;
    lockd_space *space = NULL;
    const char *p = state + strlen(STATE_MAGIC);
    int r = 0;

    if (strncmp(state, STATE_MAGIC, strlen(STATE_MAGIC)) != 0 || (*p && *p != ' ')) {
        snprintf(why, len,
                 "guest '%s' refused: the lock state libvirt passed is not lockd's "
                 "(\"%.40s\"): "
                 "is the source host's plugin another, or without migration_check?",
                 g->name, state);
        return -1;
    }
    if (guest_keys(g, 0, &space) < 0) {
        snprintf(why, len, "guest '%s': its leases cannot be looked at", g->name);
        return -1;
    }
    while (r == 0 && *p == ' ') {
        char key[LOCKD_KEY_SIZE];
        unsigned long long epoch, gen, want;
        size_t i;
        int n = 0;

        if (sscanf(p, " %64[0-9a-f]:%llx:%llu%n", key, &epoch, &gen, &n) != 3 || n <= 0) {
            snprintf(why, len, "guest '%s' refused: malformed lock state at \"%.40s\"",
                     g->name, p);
            r = -1;
            break;
        }
        p += n;
        for (i = 0; i < g->n && strcmp(g->res[i].list_key, key) != 0; i++)
            ;
        if (i == g->n)
            continue; /* not one of this call's disks */
        g->res[i].checked = 1;
        want = gen + (g->res[i].granted ? 1 : 0);
        if (epoch == 0 || res_record(g, &g->res[i], space, &info) < 0) {
            snprintf(why, len,
                     "guest '%s' refused: %s %s has no holder record to tell whether it "
                     "changed hands while the guest was paused or migrating",
                     g->name, g->res[i].is_lease ? "lease" : "disk", g->res[i].name);
            r = -1;
        } else if (info.epoch != epoch || info.generation != want) {
            snprintf(
                why, len,
                "guest '%s' refused: %s %s changed hands while the guest was paused or "
                "migrating (lease generation %llu after this grant, %llu expected%s): "
                "another holder had it, and the guest's view of it may be stale",
                g->name, g->res[i].is_lease ? "lease" : "disk", g->res[i].name,
                (unsigned long long)info.generation, want,
                info.epoch != epoch ? "; its lease file was made anew" : "");
            r = -1;
        }
    }
    if (r == 0 && *p) {
        snprintf(why, len, "guest '%s' refused: malformed lock state at \"%.40s\"",
                 g->name, p);
        r = -1;
    }
    /* Every exclusive lease in a lockspace must be named: a state that
     * leaves one out would let its change of hands through. */
    for (size_t i = 0; r == 0 && i < g->n; i++) {
        const struct resource *res = &g->res[i];

        if (first_of(g, res) == i && !res->direct &&
            res_mode(g, res) == LOCKD_EXCLUSIVE && !res->checked) {
            snprintf(
                why, len,
                "guest '%s' refused: the lock state names no generation for %s %s, so "
                "its hand-over cannot be checked",
                g->name, res->is_lease ? "lease" : "disk", res->name);
            r = -1;
        }
    }
    lockd_space_close(space);
    return r;
}

/* ------------------------------------------------------------------------
 * The driver entry points
 */

static int
drv_init(unsigned int version, const char *config_file, unsigned int flags)
{
    int r;

    if (!vir_report)
        vir_report = (vir_report_fn)dlsym(RTLD_DEFAULT, "virReportErrorHelper");
    if (version / 1000000 != VLM_VERSION_MAJOR || flags != 0) {
        report(VIR_ERR_INTERNAL_ERROR,
               "plugin ABI %u.%u flags 0x%x not supported (1.x.x, 0)", version / 1000000,
               version / 1000 % 1000, flags);
        return -1;
    }
    /* libvirt may load the plugin for several drivers (QEMU, LXC): the first
     * configuration wins, as with libvirt's own lockd driver. */
    if (init_refs > 0) {
        init_refs++;
        return 0;
    }
    if (conf_load(config_file, &config) < 0)
        return -1;
    /* Resolved now: the child forked for QEMU must not allocate. */
    r = config.helper_socket
            ? ((socket_path = strdup(config.helper_socket)) ? 0 : -ENOMEM)
            : lockd_default_socket(&socket_path);
    if (r == -ENOMEM) {
        report(VIR_ERR_INTERNAL_ERROR, "out of memory");
        conf_free(&config);
        return -1;
    }
    init_pid = getpid();
    init_refs = 1;
    /* libvirt asks a plugin for lock state, and passes it on, only when it
     * says it uses one (VIR_LOCK_MANAGER_USES_STATE); read at each call. */
    virLockDriverImpl.flags = config.migration_check ? VLM_USES_STATE : 0;
    /* A test seam: a sysfs tree of sample devices (test/sysfs) in place of
     * /sys, for the LVM and SCSI names; never set in production. */
    sysfs_root = secure_getenv("LOCKD_TEST_SYSFS_ROOT");
    if (!config.lockspace)
        /* libvirtd's log (its stderr): the one place a setting is told at
         * start without failing it. */
        fprintf(stderr,
                "%s: lockd: no lockspace in %s: each disk's lease is taken on the disk "
                "itself "
                "(direct, as virtlockd without file_lockspace_dir); on /dev nodes such a "
                "lease "
                "excludes guests of this host only\n",
                PLUGIN_NAME, config.file ? config.file : "the settings");
    return 0;
}

static int
drv_deinit(void)
{
    if (init_refs > 0 && --init_refs == 0) {
        conf_free(&config);
        free(socket_path);
        socket_path = NULL;
    }
    return 0;
}

static int
drv_new(struct vlm_manager *man, unsigned int type, size_t nparams,
        struct vlm_param *params, unsigned int flags)
{
    const char *missing;
    struct guest *g;

    if (in_child()) {
        /* Between fork and exec: static memory, no report() (see above). */
        if (type != VLM_OBJECT_DOMAIN || (flags & ~VLM_NEW_STARTED)) {
            child_say(PLUGIN_NAME ": lockd: unsupported object type or flags", NULL);
            return -1;
        }
        memset(&child_guest, 0, sizeof(child_guest));
        if (guest_params(&child_guest, nparams, params, &missing) < 0) {
            child_say(PLUGIN_NAME ": lockd: libvirt gave no ", missing, " for the guest",
                      NULL);
            return -1;
        }
        man->privateData = &child_guest;
        return 0;
    }
    if (type != VLM_OBJECT_DOMAIN || (flags & ~VLM_NEW_STARTED)) {
        report(VIR_ERR_INTERNAL_ERROR, "unsupported object type %u or flags 0x%x", type,
               flags);
        return -1;
    }
    g = calloc(1, sizeof(*g));
    if (!g) {
        report(VIR_ERR_INTERNAL_ERROR, "out of memory");
        return -1;
    }
    if (guest_params(g, nparams, params, &missing) < 0) {
        report(VIR_ERR_INTERNAL_ERROR, "libvirt gave no %s for the guest", missing);
        guest_free(g);
        return -1;
    }
    man->privateData = g;
    return 0;
}

static void
drv_free(struct vlm_manager *man)
{
    if (man->privateData != &child_guest)
        guest_free(man->privateData);
    man->privateData = NULL;
}

static int
drv_add_resource(struct vlm_manager *man, unsigned int type, const char *name,
                 size_t nparams, struct vlm_param *params, unsigned int flags)
{
    struct guest *g = man->privateData;
    char *dir;

    if (g == &child_guest)
        return 0; /* registering takes no lease: the acquire at CPU start gets them all */
    if (!name || (flags & ~(VLM_RES_READONLY | VLM_RES_SHARED))) {
        report(VIR_ERR_INTERNAL_ERROR, "unsupported resource flags 0x%x", flags);
        return -1;
    }
    if (flags & VLM_RES_READONLY)
        return 0; /* a read-only disk or lease needs no lease */
    if (type == VLM_RESOURCE_DISK) {
        if (!config.auto_disk_leases) {
            g->rw_disks |= !(flags & VLM_RES_SHARED);
            return 0;
        }
        if (name[0] != '/') {
            report(VIR_ERR_CONFIG_UNSUPPORTED,
                   "guest '%s': disk %s is not an absolute path", g->name, name);
            return -1;
        }
        return guest_add(g, name, NULL, flags);
    }
    if (type == VLM_RESOURCE_LEASE) {
        dir = lease_dir(name, nparams, params);
        return dir ? guest_add(g, name, dir, flags) : -1;
    }
    report(VIR_ERR_INTERNAL_ERROR, "unknown resource type %u for %s", type, name);
    return -1;
}

/*
 * REGISTER_ONLY in the child forked for QEMU: register the QEMU-to-be, with
 * nothing but system calls (see child_guest).  Its action on loss is set
 * when its CPUs start.  A failure is written to QEMU's log and deferred
 * (see drv_acquire()).
 */
static int
child_register(const struct guest *g)
{
    lockd_conn *c;
    int r = socket_path
                ? lockd_conn_open_in(child_conn, sizeof(child_conn), socket_path, &c)
                : -ENOENT;
    const char *e;

    if (r == 0) {
        r = lockd_conn_register(c, g->pid, -1, g->uuid, g->name);
        lockd_conn_close(c);
    }
    if (r < 0) {
        e = strerrorname_np(-r);
        child_say(PLUGIN_NAME ": lockd: cannot register guest '", g->name,
                  "' with lockd-helper at ",
                  socket_path ? socket_path : "the default socket", " (", e ? e : "error",
                  "); the guest will be refused when its CPUs start", NULL);
    }
    return 0;
}

static int
drv_acquire(struct vlm_manager *man, const char *state, unsigned int flags, int action,
            int *fd)
{
    struct guest *g = man->privateData;
    char why[1024], hook[LOCKD_COMMAND_MAX + 1];
    lockd_conn *conn = NULL;
    int r, on_loss;

    /* No state is kept between calls (the helper has it), no descriptor is
     * leaked into QEMU (the helper watches it through a pidfd).  RESTRICT
     * needs nothing: the connection is closed before QEMU is exec'd, so
     * QEMU can make no lock calls. */
    (void)state;
    if (fd)
        *fd = -1;
    if (g == &child_guest)
        return child_register(g);
    if (flags & ~(VLM_ACQUIRE_REGISTER_ONLY | VLM_ACQUIRE_RESTRICT)) {
        report(VIR_ERR_INTERNAL_ERROR, "unsupported acquire flags 0x%x", flags);
        return -1;
    }
    if (config.require_lease_for_disks && g->rw_disks && g->n == 0) {
        report(VIR_ERR_CONFIG_UNSUPPORTED,
               "guest '%s' refused: it has writable disks but no <lease>, and "
               "require_lease_for_disks is set",
               g->name);
        return -1;
    }
    if (guest_on_loss(g, action, &on_loss, hook, sizeof(hook)) < 0)
        return -1;
    if (helper_register(g, on_loss, hook[0] ? hook : NULL, &conn, why, sizeof(why)) < 0) {
        /* Refused here, in libvirtd, the message reliably reaches virsh;
         * in the child (above) it raced virtlogd: about one refusal in 30
         * showed as a bare "Process exited prior to exec". */
        report(VIR_ERR_OPERATION_FAILED, "%s", why);
        return -1;
    }
    r = 0;
    if (!(flags & VLM_ACQUIRE_REGISTER_ONLY) && g->n > 0)
        r = guest_acquire(g, conn);
    if (r == 0 && state && config.migration_check && g->n > 0 &&
        state_check(g, state, why, sizeof(why)) < 0) {
        /* Not resumed: what was just taken goes back. */
        (void)guest_release(g, conn);
        report(VIR_ERR_RESOURCE_BUSY, "%s", why);
        r = -1;
    }
    lockd_conn_close(conn);
    return r < 0 ? -1 : 0;
}

static int
drv_release(struct vlm_manager *man, char **state, unsigned int flags)
{
    struct guest *g = man->privateData;
    lockd_conn *conn = NULL;
    char why[1024];
    int r;

    if (state)
        *state = NULL;
    if (flags != 0) {
        report(VIR_ERR_INTERNAL_ERROR, "unsupported release flags 0x%x", flags);
        return -1;
    }
    if (g->n == 0)
        return 0;
    /* The state a resume (here, or on a migration's destination) checks:
     * taken while the leases are still held. */
    if (state && config.migration_check && !(*state = guest_state(g)))
        return -1;
    if (helper_connect(g, "cannot release the leases of", &conn, why, sizeof(why)) < 0) {
        report(VIR_ERR_OPERATION_FAILED, "%s", why);
        return -1;
    }
    r = guest_release(g, conn);
    lockd_conn_close(conn);
    return r;
}

static int
drv_inquire(struct vlm_manager *man, char **state, unsigned int flags)
{
    struct guest *g = man->privateData;

    if (state)
        *state = NULL;
    if (flags != 0) {
        report(VIR_ERR_INTERNAL_ERROR, "unsupported inquire flags 0x%x", flags);
        return -1;
    }
    /* A migration's Begin on a running source: the state its destination
     * checks at resume. */
    if (state && config.migration_check && g->n > 0 && !(*state = guest_state(g)))
        return -1;
    return 0;
}

/* The one symbol libvirt looks up. */
__attribute__((visibility("default"))) struct vlm_driver virLockDriverImpl = {
    .version = VLM_VERSION,
    .flags = 0,
    .drvInit = drv_init,
    .drvDeinit = drv_deinit,
    .drvNew = drv_new,
    .drvFree = drv_free,
    .drvAddResource = drv_add_resource,
    .drvAcquire = drv_acquire,
    .drvRelease = drv_release,
    .drvInquire = drv_inquire,
};
