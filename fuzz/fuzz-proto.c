/* SPDX-License-Identifier: MIT */
/*
 * fuzz-proto.c: libFuzzer target for the helper protocol's parsers, the
 * helper's (proto_parse_hdr(), proto_decode_request()) and the client's
 * (the LIST and OWNERS reply pages).  It includes lockd.c, with the server
 * side of the codec compiled in, to reach its static functions.
 *
 * Input: a flags byte, a byte for how many fds "arrived" with the message
 * (0-253, or 255 for fds lost to MSG_CTRUNC), then the message.  The flags
 * can make the header consistent (magic and length; version and status;
 * the fd count), so that most inputs get past the header and the fuzzer
 * spends its time on bodies; with no flags the bytes are taken as they
 * come.  Besides what ASan and
 * UBSan catch, a decoded request must keep the protocol's promises, and
 * re-encoding it with the client's writer must give back the very bytes
 * (a request parses to its exact length, so there is only one encoding);
 * anything else is a trap.
 */
#define LOCKD_PROTO_SERVER 1
#include "../lockd.c"

#include "fuzz.h"

#define CHECK(x)                                                                    \
    do {                                                                            \
        if (!(x))                                                                   \
            __builtin_trap();                                                       \
    } while (0)

/* Every pointer the decoder hands out lies inside the message; read each
 * byte so that ASan sees any overrun. */
static unsigned
inside(const uint8_t *msg, size_t size, const void *p, size_t n)
{
    const uint8_t *q = p;
    unsigned sum = 0;

    CHECK(q >= msg && n <= size && q - msg <= (ptrdiff_t)(size - n));
    for (size_t i = 0; i < n; i++)
        sum += q[i];
    return sum;
}

/* The body a client would write for req. */
static size_t
encode_body(const struct proto_req *req, uint8_t *buf, size_t cap)
{
    struct proto_wr wr = {.buf = buf, .cap = cap};

    switch (req->hdr.type) {
    case PROTO_REGISTER:
        wr_i32(&wr, req->pid);
        wr_put(&wr, req->uuid, PROTO_UUID_BYTES);
        wr_str(&wr, req->name, req->name_len);
        if (req->has_on_loss) { /* the optional tail */
            wr_u8(&wr, req->on_loss);
            wr_str(&wr, req->command, req->command_len);
        }
        break;
    case PROTO_HANDOFF:
        wr_i32(&wr, req->pid);
        wr_u16(&wr, req->count);
        for (size_t i = 0; i < req->count; i++) {
            wr_u8(&wr, req->items[i].mode);
            wr_put(&wr, req->items[i].key, PROTO_KEY_BYTES);
            wr_str(&wr, req->items[i].disk, req->items[i].disk_len);
        }
        break;
    case PROTO_RELEASE:
    case PROTO_NOTICE:
    case PROTO_FORGET:
        wr_i32(&wr, req->pid);
        wr_u16(&wr, req->count);
        for (size_t i = 0; i < req->count; i++)
            wr_u64(&wr, proto_req_id(req, i));
        break;
    case PROTO_OWNERS:
        wr_u64(&wr, req->cursor);
        break;
    case PROTO_SPACE:
        if (req->named)
            wr_u8(&wr, 1);
        break;
    case PROTO_STATUS:
    case PROTO_STUCK:
        break;
    case PROTO_STOP:
        wr_u8(&wr, req->force);
        break;
    default:
        CHECK(0);
    }
    CHECK(!wr.bad);
    return wr.len;
}

static void
check_request(const uint8_t *msg, size_t size, size_t nfds, const struct proto_req *req)
{
    static uint8_t again[PROTO_BODY_MAX];
    const uint8_t *body = msg + PROTO_HDR_SIZE;
    size_t len;

    CHECK(size >= PROTO_HDR_SIZE && req->hdr.len == size - PROTO_HDR_SIZE);
    CHECK(nfds != PROTO_FDS_LOST && req->hdr.nfds == nfds && nfds <= PROTO_FDS_MAX);
    CHECK(req->hdr.version == PROTO_VERSION && req->hdr.status == 0);
    CHECK(req->hdr.type >= PROTO_REGISTER && req->hdr.type <= PROTO_SPACE);
    CHECK((req->hdr.type == PROTO_NOTICE) == (req->hdr.serial == 0));
    if (req->hdr.type != PROTO_LIST && req->hdr.type != PROTO_OWNERS &&
        req->hdr.type != PROTO_STATUS && req->hdr.type != PROTO_STOP &&
        req->hdr.type != PROTO_STUCK && req->hdr.type != PROTO_SPACE)
        CHECK(req->pid > 0);
    if (req->hdr.type == PROTO_REGISTER) {
        CHECK(nfds <= 1 && req->name_len <= LOCKD_OWNER_NAME_MAX);
        (void)inside(msg, size, req->uuid, PROTO_UUID_BYTES);
        (void)inside(msg, size, req->name, req->name_len);
        CHECK(!memchr(req->name, '\0', req->name_len));
        if (req->has_on_loss) {
            CHECK(req->on_loss <= LOCKD_ON_LOSS_EXEC_OR_KILL &&
                  req->command_len <= LOCKD_COMMAND_MAX);
            CHECK(on_loss_has_hook(req->on_loss) == (req->command_len > 0));
            (void)inside(msg, size, req->command, req->command_len);
            CHECK(!memchr(req->command, '\0', req->command_len));
        }
    } else if (req->hdr.type == PROTO_HANDOFF) {
        CHECK(req->count >= 1 && req->count == nfds);
        for (size_t i = 0; i < req->count; i++) {
            const struct proto_item *it = &req->items[i];

            CHECK(it->mode == LOCKD_EXCLUSIVE || it->mode == LOCKD_SHARED);
            CHECK(it->disk_len <= LOCKD_NAME_MAX && !memchr(it->disk, '\0', it->disk_len));
            (void)inside(msg, size, it->key, PROTO_KEY_BYTES);
            (void)inside(msg, size, it->disk, it->disk_len);
        }
    } else if (req->hdr.type == PROTO_SPACE)
        CHECK(nfds <= 1); /* none: direct leases */
    else
        CHECK(nfds == 0);
    if (req->hdr.type == PROTO_RELEASE || req->hdr.type == PROTO_NOTICE ||
        req->hdr.type == PROTO_FORGET)
        (void)inside(msg, size, req->ids, (size_t)8 * req->count);
    if (req->hdr.type == PROTO_LIST) {
        /* The key filter is copied out of the message (replies reuse buffers). */
        if (req->key)
            CHECK(req->key == req->key_buf &&
                  memcmp(req->key, body + 4 + 1, PROTO_KEY_BYTES) == 0);
        CHECK(req->pid >= 0 && req->hdr.len == 4 + 1 + PROTO_KEY_BYTES + 8);
        return; /* has_key is any non-zero byte: not one encoding */
    }
    len = encode_body(req, again, sizeof(again));
    CHECK(len == req->hdr.len && memcmp(again, body, len) == 0);
}

static int
list_row(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
         int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    (void)userdata, (void)id, (void)pid, (void)uid;
    CHECK(mode >= 0 && mode <= 255);
    CHECK(strlen(key) == 64 && strlen(disk) <= LOCKD_NAME_MAX);
    CHECK(strlen(uuid) == 0 || strlen(uuid) == 36);
    CHECK(strlen(name) <= LOCKD_OWNER_NAME_MAX);
    return 0;
}

static int
owner_row(void *userdata, int32_t pid, uint32_t uid, const char *uuid, const char *name,
          uint32_t leases)
{
    (void)userdata, (void)pid, (void)uid, (void)leases;
    CHECK(strlen(uuid) == 0 || strlen(uuid) == 36);
    CHECK(strlen(name) <= LOCKD_OWNER_NAME_MAX);
    return 0;
}

/* ------------------------------------------------------------------------
 * Seeds: one request of each type, written by the client's own encoder
 * into the corpus directory when it is empty.
 */

static void
seed_write(const char *dir, const char *name, uint8_t nfds, struct proto_wr *wr)
{
    char path[4096];
    FILE *f;

    if (proto_finish(wr) < 0)
        abort();
    snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
    f = fopen(path, "wb");
    if (!f)
        return;
    fputc(0, f);    /* flags: the header as it is */
    fputc(nfds, f); /* fds that arrived */
    fwrite(wr->buf, 1, wr->len, f);
    fclose(f);
}

static void
seed_corpus(const char *dir)
{
    static uint8_t buf[PROTO_HDR_SIZE + PROTO_BODY_MAX];
    static const uint8_t key[PROTO_KEY_BYTES] = {0x11}, uuid[PROTO_UUID_BYTES] = {0x22};
    struct proto_wr wr = {.buf = buf, .cap = sizeof(buf)};

    proto_begin(&wr, PROTO_REGISTER, 1, 0, 1);
    wr_i32(&wr, 42);
    wr_put(&wr, uuid, sizeof(uuid));
    wr_str(&wr, "guest", 5);
    seed_write(dir, "register", 1, &wr);
    proto_begin(&wr, PROTO_HANDOFF, 2, 0, 2);
    wr_i32(&wr, 42);
    wr_u16(&wr, 2);
    for (int i = 0; i < 2; i++) {
        wr_u8(&wr, (uint8_t)i);
        wr_put(&wr, key, sizeof(key));
        wr_str(&wr, "/images/a.qcow2", i ? 0 : 15);
    }
    seed_write(dir, "handoff", 2, &wr);
    for (int t = PROTO_RELEASE; t <= PROTO_NOTICE; t++) {
        proto_begin(&wr, (uint16_t)t, t == PROTO_NOTICE ? 0 : 3, 0, 0);
        wr_i32(&wr, 42);
        wr_u16(&wr, 2);
        wr_u64(&wr, 1ull << 32 | 7);
        wr_u64(&wr, 2ull << 32 | 8);
        seed_write(dir, t == PROTO_NOTICE ? "notice" : "release", 0, &wr);
    }
    proto_begin(&wr, PROTO_LIST, 4, 0, 0);
    wr_i32(&wr, 0);
    wr_u8(&wr, 1);
    wr_put(&wr, key, sizeof(key));
    wr_u64(&wr, 0);
    seed_write(dir, "list", 0, &wr);
    proto_begin(&wr, PROTO_OWNERS, 5, 0, 0);
    wr_u64(&wr, 0);
    seed_write(dir, "owners", 0, &wr);
    proto_begin(&wr, PROTO_STATUS, 6, 0, 0);
    seed_write(dir, "status", 0, &wr);
    proto_begin(&wr, PROTO_STUCK, 7, 0, 0);
    seed_write(dir, "stuck", 0, &wr);
    proto_begin(&wr, PROTO_SPACE, 8, 0, 1);
    seed_write(dir, "space", 1, &wr);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = corpus_dir(*argc, *argv);

    if (dir && dir_empty(dir))
        seed_corpus(dir);
    return 0;
}

/* ------------------------------------------------------------------------
 * The target
 */

/* Make the header consistent, as far as flags ask. */
static void
frame(uint8_t *msg, size_t size, uint8_t flags, size_t nfds)
{
    uint32_t magic = PROTO_MAGIC, len = (uint32_t)(size - PROTO_HDR_SIZE);
    uint32_t n = nfds == PROTO_FDS_LOST ? 0 : (uint32_t)nfds;
    uint16_t version = PROTO_VERSION;
    int32_t status = 0;

    if (flags & 1) {
        memcpy(msg, &magic, 4);
        memcpy(msg + 20, &len, 4);
    }
    if (flags & 2) {
        memcpy(msg + 4, &version, 2);
        memcpy(msg + 12, &status, 4);
    }
    if (flags & 4)
        memcpy(msg + 16, &n, 4);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct proto_req req;
    struct proto_rd body, rd;
    struct proto_hdr h;
    size_t nfds;
    uint8_t *msg, flags;

    if (size < 2 || size > 2 + PROTO_HDR_SIZE + PROTO_BODY_MAX)
        return 0;
    flags = data[0];
    nfds = data[1] == 255 ? PROTO_FDS_LOST : data[1] % (PROTO_FDS_MAX + 1);
    data += 2;
    size -= 2;
    /* A copy of exactly the message's size, so that ASan sees overruns. */
    msg = malloc(size ? size : 1);
    if (!msg)
        return 0;
    memcpy(msg, data, size);
    if (size >= PROTO_HDR_SIZE)
        frame(msg, size, flags, nfds);
    if (proto_decode_request(msg, size, nfds, &req) == 0)
        check_request(msg, size, nfds, &req);
    /* The client's side: a reply's header, then a LIST or OWNERS page. */
    if (proto_parse_hdr(msg, size, 0, &h, &body) == 0) {
        rd = body;
        (void)rd_u64(&rd);
        (void)list_rows(&rd, list_row, NULL);
        rd = body;
        (void)rd_u64(&rd);
        (void)owner_rows(&rd, owner_row, NULL);
    }
    free(msg);
    return 0;
}
