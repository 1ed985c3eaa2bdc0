/* SPDX-License-Identifier: MIT */
/*
 * lockdctl.h: what the two files of lockdctl share, and nothing more.
 *
 * lockdctl.c has the command line and every command but `doctor`, which is
 * in lockdctl-doctor.c: its checks (mountinfo, the lock test, fd limits) have
 * nothing to do with taking leases, and they were half of one file.  This
 * header is internal to the program and is not installed; lockd's interface
 * is lockd.h.  Everything not declared here stays static in its file.
 */
#ifndef LOCKDCTL_H
#define LOCKDCTL_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

/* Exit statuses (sysexits.h numbers, spelled out so they read as a contract). */
#define EXIT_BUSY 75        /* EX_TEMPFAIL: held elsewhere, or the wait ran out */
#define EXIT_UNAVAILABLE 69 /* EX_UNAVAILABLE: no helper where one is needed */
#define EXIT_USAGE 64       /* EX_USAGE */
#define EXIT_FAIL 1

#define SETTINGS_NAME ".lockd-lockspace"

/* Everything the command line can say, after parsing. */
struct opts {
    char *dir;          /* lockspace, absolute; NULL if none given or implied */
    uint32_t mode_flag; /* 0, LOCKD_OPEN_VERBATIM or LOCKD_OPEN_CANONICAL */
    char *socket;       /* helper socket, or NULL if there is none to look for */
    int json;
    int resource;
    int shared;
    int wait_ms;     /* LOCKD_TRY, LOCKD_FOREVER or ms */
    char *wait_text; /* as given, for messages */
    int conflict_code;
    const char *name;
    const char *uuid;
    int32_t pid;
    int force; /* stop-helper --force */
    int direct; /* --direct: leases on the disks themselves, no lockspace */
    int on_loss;            /* LOCKD_ON_LOSS_*, or -1: not given (the helper's default) */
    const char *on_loss_cmd; /* exec:CMD's CMD */
    int create_ok;           /* --create-ok: a disk may not exist yet */
    int test;                /* who --test: the exit status says, nothing printed */
    int dir_given;           /* --dir or LOCKD_DIR, not the default */
    uint32_t min_age_ms;     /* gc --min-age */
    int list_filter;         /* list: 0 (all), LIST_HELD or LIST_FREE */
};

#define LIST_HELD 1 /* --held */
#define LIST_FREE 2 /* --free */

/* In lockdctl.c.  A usage error: the message, a pointer to --help, and
 * EXIT_USAGE. */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* In lockdctl.c.  s as a JSON string on stdout, valid UTF-8 whatever bytes
 * s holds; NULL as null. */
void json_str(const char *s);

/* In lockdctl.c.  s for a terminal: every byte that is not part of a
 * printable UTF-8 character (controls, C1 controls, stray bytes) as \xHH.
 * text_escaped() returns it as a new string, or NULL (out of memory). */
void put_text(FILE *f, const char *s);

/* In lockdctl.c.  A --json command calls this once it has printed its whole
 * document, if the document itself says what failed (who, list, doctor):
 * it is kept whatever the exit status, instead of an error object. */
void json_complete(void);
char *text_escaped(const char *s);

/* In lockdctl.c.  When o->dir is NULL (no --dir, LOCKD_DIR or HOME): the
 * message and EXIT_FAIL, for a command about to open a lockspace; else 0. */
int no_lockspace(const struct opts *o);

/* In lockdctl.c.  Whether something exists at the helper's socket path. */
int socket_present(const char *path);

/* ------------------------------------------------------------------------
 * In lockdctl.c, for `list` (lockdctl-list.c), which shows what `who` and
 * `status` show, for every lease file: the same words, the same JSON.
 */

struct lockd_space;
struct lockd_holder_info;

/* "lockdctl: " and the message on stderr. */
void errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Why a lease call failed (-errno), in words. */
const char *lease_reason(int r);

/* A failed helper call at path: its message, and its exit status. */
void helper_error(const char *path, int r);
int helper_status(int r);

/* NULL for an empty string (JSON's null). */
const char *or_null(const char *s);

/* CLOCK_MONOTONIC in ms. */
int64_t now_ms(void);

/* "free", "shared", "exclusive" or "LOST" for a LOCKD_* mode. */
const char *mode_word(int mode);

/* Open o->dir (flags | --key-mode), saying why not: 0 or the exit status. */
int space_open(const struct opts *o, uint32_t flags, struct lockd_space **ret);

/* Say so when the lockspace's key mode is only assumed. */
void note_unrecorded(const struct opts *o, const struct lockd_space *space);

#define TABLE_COLS 6

/* A table printed in aligned columns, the last one unpadded (util-linux's
 * lsblk style, without the dependency).  table_add() takes ncols strings
 * (NULL or "" print as "-"), copied and escaped (put_text()). */
struct table {
    size_t ncols, nrows, cap;
    char **cells;
};
int table_add(struct table *t, ...);
void table_free(struct table *t);
void table_print(const struct table *t);

/* The helper's holders of a key as text, a lockd_list_fn over struct
 * holders: "guest-a (pid 12, uuid ...), ..." (lost leases left out). */
struct holders {
    char text[1024];
    size_t count;
};
int holder_row(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
               int32_t pid, uint32_t uid, const char *uuid, const char *name);

/* The holder record of key, for a message: "web1 (uuid U, pid 4242) on
 * host hv2 since 10:42:07"; -ENODATA or another error if there is none. */
int record_text(const struct lockd_space *space, const char *key, char *buf, size_t size);

/* The helper's holders of a key as who lists them, a lockd_list_fn over
 * struct who_ctx: JSON objects when o->json, else rows of t (DISK STATE PID
 * NAME UUID HOST). */
struct who_ctx {
    const struct opts *o;
    struct table *t;
    const char *disk;
    const char *state;
    const char *host; /* this one: the helper's holders are here */
    size_t count;     /* holders listed */
    size_t rows;      /* and lost leases: JSON objects written */
};
int who_row(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
            int32_t pid, uint32_t uid, const char *uuid, const char *name);

/* A holder record as a JSON object; the holder the helper does not name as
 * one of who's "holders" objects: hi's, or (hi NULL) a POSIX lock's pid. */
void record_json(const struct lockd_holder_info *hi);
void holder_json(const struct lockd_holder_info *hi, int32_t pid, int comma);

/* In lockdctl-list.c.  The list command: 0, EXIT_FAIL (a file that could
 * not be probed, or the walk failed), EXIT_USAGE for operands. */
int cmd_list(const struct opts *o, int argc, char **argv);

/* In lockdctl-watch.c.  Leave a watcher behind for `run` without a helper:
 * a process that checks lease (which CMD, this process after its exec,
 * inherits) every second and does o->on_loss to this process at the first
 * loss.  names[0..nnames) are the disks in the order given to
 * lockd_acquire().  Returns 0 or -errno (no watcher). */
struct lockd_lease;
int run_watch_start(const struct opts *o, const struct lockd_lease *lease,
                    const char *const *names, size_t nnames, const char *cmd);

/* In lockdctl-watch.c.  For `run` with a helper: mark CMD's environment
 * (LOCKD_RUN) and leave a process behind that, if CMD exits within 30 s
 * while a process it started (and that carries the mark) runs on, says that
 * this process runs without the leases.  Returns 0 or -errno. */
int run_orphan_check_start(const char *cmd);

/* In lockdctl-doctor.c.  The doctor command: 0 when all is well, EXIT_FAIL
 * when a check warns or fails, EXIT_USAGE for operands. */
int cmd_doctor(const struct opts *o, int argc, char **argv);

#endif /* LOCKDCTL_H */
