/*
 * seed-strawman: an independent implementation of the seed's strawman (LING's strawman.erl
 * and pore_straw), in C over Xen's own libraries (libxenstore, libxengnttab, libxenevtchn),
 * written from the protocol description in docs/protocol-facts.md, not from pore's code. The
 * lab (scripts/xenlab/straw-dom0.sh) runs it in a domU against `pore straw` in dom0 to check
 * that pore's LING side talks to a strawman that knows nothing of pore's additions: it writes
 * no `format`, no `straw-layouts`, no `straw-eof`, narrows no permissions, and offers only the
 * 8-page LING ring.
 *
 *   seed-strawman listen PEER [TIMEOUT]         knock_knock: wait for PEER's knock, grant the
 *                                               8 pages, echo every frame until PEER closes
 *   seed-strawman connect PEER FRAMES [TIMEOUT] do_open: open a straw to PEER, send every
 *                                               frame of FRAMES (4-byte little-endian length +
 *                                               bytes each, as `pore straw --framed` reads),
 *                                               check that each comes back intact, then close
 *
 * What it follows, as the seed does it:
 *   - init: mkdir data/straw with perms b<me>, mkdir data/warts with perms r<me> (relative
 *     paths, as LING's xenstore client uses them); where the seed watches a node, this
 *     reads it every 20 ms (see POLL_MS);
 *   - the handshake keys, values and order of strawman.erl (see the functions below);
 *   - the ring: 8 pages, a header of four int32 (in_prod, in_cons, out_cons, out_prod), input
 *     at 16 and output at 16392, 16376 bytes each, wrapped indices, one byte kept free; the
 *     granting (listening) side writes output and reads input; an event after every chunk
 *     written or read (no suppression);
 *   - frames: a 4-byte big-endian length, then the bytes.
 * Where the seed is silent or unsafe: every index the peer writes is checked (a bad one ends
 * the run with an error); every wait has a deadline (TIMEOUT seconds, default 60); the close
 * follows the chart in strawman.erl's comment (the mapping side unmaps, writes Closed and
 * waits for the peer's Closed; the granting side, seeing the peer's Closed, ends access and
 * writes Closed), and each side then removes its own directory.
 *
 * Build (static, for a domU): gcc -O2 -static -o seed-strawman seed-strawman.c \
 *     -lxenstore -lxengnttab -lxenevtchn -lxentoolcore -lxentoollog -lpthread
 * Exit status 0 when everything was echoed and the straw closed; 1 otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenstore.h>

#define NUM_REFS 8
#define PAGE 4096
#define RING 16376u          /* 8 / 2 * 4096 - 8 */
#define IN_OFF 16
#define OUT_OFF (16 + RING)
#define MAX_FRAME (16u << 20) /* larger lengths from the peer are errors */
#define ST_INITIALISING "1"
#define ST_INIT_WAIT "2"
#define ST_INITIALISED "3"
#define ST_CONNECTED "4"
#define ST_CLOSED "6"

static struct xs_handle *xs;
static unsigned me, peer;
static double deadline_s = 60;

static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "seed-strawman: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "seed-strawman: FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (errno %d: %s)\n", errno, strerror(errno));
    va_end(ap);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *xread(const char *path) { /* NULL when absent; NUL-terminated */
    unsigned len;
    return xs_read(xs, XBT_NULL, path, &len);
}

static void xwrite(xs_transaction_t t, const char *path, const char *value) {
    if (!xs_write(xs, t, path, value, strlen(value)))
        die("write %s = %s", path, value);
}

/* Where the seed watches a node, we read it every POLL_MS instead: what the peer sees in
 * xenstore is the same, and libxenstore's watch thread is not needed in a static binary. */
#define POLL_MS 20

static void nap(void) {
    struct timespec ts = {0, POLL_MS * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits until `path` (watched) reads `want`. Returns 0; or -1 if the node is absent and
 * `absent_ends`; dies at the deadline. */
static int wait_value(const char *path, const char *want, int absent_ends) {
    double end = now() + deadline_s;
    for (;;) {
        char *v = xread(path);
        if (v && strcmp(v, want) == 0) {
            free(v);
            return 0;
        }
        /* Absent: ENOENT, or EACCES once an ancestor went too (xenstored then checks the
         * permissions of the nearest node that exists, e.g. the peer's data directory). */
        int gone = !v && (errno == ENOENT || (absent_ends && errno == EACCES));
        if (!v && !gone)
            die("read %s", path);
        if (gone && absent_ends)
            return -1;
        free(v);
        if (now() > end)
            die("timed out waiting for %s = %s", path, want);
        nap();
    }
}

/* ---- the ring: only volatile accesses to the shared pages, indices checked */

struct ring {
    volatile uint8_t *base;
    xenevtchn_handle *xce;
    evtchn_port_t port;
    int granting; /* writes output, reads input */
};

static uint32_t load_idx(struct ring *r, unsigned off) {
    uint32_t v = __atomic_load_n((volatile uint32_t *)(r->base + off), __ATOMIC_ACQUIRE);
    if (v >= RING) {
        errno = EPROTO;
        die("the peer's index at offset %u is %" PRIu32 ", not below %u", off, v, RING);
    }
    return v;
}

static void store_idx(struct ring *r, unsigned off, uint32_t v) {
    __atomic_store_n((volatile uint32_t *)(r->base + off), v, __ATOMIC_RELEASE);
}

/* Offsets of (prod, cons, data) of the direction we write and the one we read. */
static void offsets(struct ring *r, int writing, unsigned *prod, unsigned *cons, unsigned *data) {
    int output = r->granting ? writing : !writing;
    *prod = output ? 12 : 0;
    *cons = output ? 8 : 4;
    *data = output ? OUT_OFF : IN_OFF;
}

/* Copies up to n bytes into the ring; returns how many went. */
static size_t ring_write(struct ring *r, const uint8_t *src, size_t n) {
    unsigned po, co, d;
    offsets(r, 1, &po, &co, &d);
    uint32_t prod = load_idx(r, po), cons = load_idx(r, co);
    uint32_t used = (prod + RING - cons) % RING;
    size_t room = RING - 1 - used, k = n < room ? n : room;
    for (size_t i = 0; i < k; i++)
        r->base[d + (prod + i) % RING] = src[i];
    if (k)
        store_idx(r, po, (uint32_t)((prod + k) % RING));
    return k;
}

/* Copies up to n bytes out of the ring; returns how many came. */
static size_t ring_read(struct ring *r, uint8_t *dst, size_t n) {
    unsigned po, co, d;
    offsets(r, 0, &po, &co, &d);
    uint32_t prod = load_idx(r, po), cons = load_idx(r, co);
    size_t avail = (prod + RING - cons) % RING, k = n < avail ? n : avail;
    for (size_t i = 0; i < k; i++)
        dst[i] = r->base[d + (cons + i) % RING];
    if (k)
        store_idx(r, co, (uint32_t)((cons + k) % RING));
    return k;
}

static void poke(struct ring *r) {
    if (xenevtchn_notify(r->xce, r->port) < 0)
        die("notify port %u", r->port);
}

/* Waits for an event on the straw's channel, up to ms milliseconds. */
static void wait_event(struct ring *r, int ms) {
    struct pollfd p[1] = {{.fd = xenevtchn_fd(r->xce), .events = POLLIN}};
    poll(p, 1, ms);
    if (p[0].revents & POLLIN) {
        xenevtchn_port_or_error_t port = xenevtchn_pending(r->xce);
        if (port >= 0 && xenevtchn_unmask(r->xce, port) < 0)
            die("unmask");
    }
}

/* ---- a growable byte queue */

struct buf {
    uint8_t *p;
    size_t len, cap, off;
};

static void put(struct buf *b, const void *src, size_t n) {
    if (b->off && b->off == b->len)
        b->off = b->len = 0;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + n)
            cap *= 2;
        if (!(b->p = realloc(b->p, cap)))
            die("out of memory");
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void put_frame(struct buf *b, const uint8_t *frame, uint32_t len) {
    uint8_t head[4] = {len >> 24, len >> 16, len >> 8, len};
    put(b, head, 4);
    put(b, frame, len);
}

/* The next whole frame of `in` (seed framing), or NULL. */
static uint8_t *take_frame(struct buf *in, uint32_t *len) {
    size_t have = in->len - in->off;
    if (have < 4)
        return NULL;
    uint8_t *h = in->p + in->off;
    uint32_t n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    if (n > MAX_FRAME) {
        errno = EPROTO;
        die("the peer sent a frame of %" PRIu32 " bytes", n);
    }
    if (have < 4 + (size_t)n)
        return NULL;
    in->off += 4 + n;
    *len = n;
    return h + 4;
}

/* One step of the seed's looper: write what fits, read what came. Returns nonzero if any byte
 * moved. */
static int pump(struct ring *r, struct buf *out, struct buf *in) {
    int moved = 0;
    if (out->len > out->off) {
        size_t k = ring_write(r, out->p + out->off, out->len - out->off);
        if (k) {
            out->off += k;
            poke(r);
            moved = 1;
        }
    }
    uint8_t chunk[RING];
    size_t k = ring_read(r, chunk, sizeof chunk);
    if (k) {
        put(in, chunk, k);
        poke(r);
        moved = 1;
    }
    return moved;
}

/* ---- init and the handshake */

static void init_tops(void) {
    char *d = xread("domid");
    if (!d)
        die("read domid");
    me = (unsigned)atoi(d);
    free(d);
    struct xs_permissions b = {.id = me, .perms = XS_PERM_READ | XS_PERM_WRITE};
    struct xs_permissions ro = {.id = me, .perms = XS_PERM_READ};
    if (!xs_mkdir(xs, XBT_NULL, "data/straw") || !xs_set_permissions(xs, XBT_NULL, "data/straw", &b, 1))
        die("mkdir data/straw");
    if (!xs_mkdir(xs, XBT_NULL, "data/warts") || !xs_set_permissions(xs, XBT_NULL, "data/warts", &ro, 1))
        die("mkdir data/warts");
    /* The seed watches data/straw here: see POLL_MS. */
}

static int listen_and_echo(void) {
    char knock[64], straw_dir[64], straw_state[80], warts_state[256], warts_dir[200];
    snprintf(knock, sizeof knock, "data/straw/%u/warts", peer);
    snprintf(straw_dir, sizeof straw_dir, "data/straw/%u", peer);
    snprintf(straw_state, sizeof straw_state, "%s/state", straw_dir);
    say("domain %u listens for domain %u", me, peer);
    /* handle_info({watch, ...}): the peer's knock on data/straw/<peer>/warts */
    double end = now() + deadline_s;
    char *w;
    while (!(w = xread(knock))) {
        if (errno != ENOENT)
            die("read %s", knock);
        if (now() > end)
            die("no knock from domain %u", peer);
        nap();
    }
    snprintf(warts_dir, sizeof warts_dir, "%s", w);
    free(w);
    say("knock: warts at %s", warts_dir);
    /* knock_knock */
    xwrite(XBT_NULL, straw_state, ST_INITIALISING);
    snprintf(warts_state, sizeof warts_state, "%s/state", warts_dir);
    if (wait_value(warts_state, ST_INIT_WAIT, 1) < 0)
        die("the peer's state went");
    xengntshr_handle *gs = xengntshr_open(NULL, 0);
    xenevtchn_handle *xce = xenevtchn_open(NULL, 0);
    if (!gs || !xce)
        die("open gntshr/evtchn");
    uint32_t refs[NUM_REFS];
    void *pages = xengntshr_share_pages(gs, peer, NUM_REFS, refs, 1);
    if (!pages)
        die("share %d pages with domain %u", NUM_REFS, peer);
    memset(pages, 0, NUM_REFS * PAGE);
    xenevtchn_port_or_error_t port = xenevtchn_bind_unbound_port(xce, peer);
    if (port < 0)
        die("alloc unbound port for domain %u", peer);
    for (;;) {
        xs_transaction_t t = xs_transaction_start(xs);
        if (t == XBT_NULL)
            die("transaction start");
        char path[96], val[16];
        for (int i = 0; i < NUM_REFS; i++) {
            snprintf(path, sizeof path, "%s/ring-ref-%d", straw_dir, i + 1);
            snprintf(val, sizeof val, "%" PRIu32, refs[i]);
            xwrite(t, path, val);
        }
        snprintf(path, sizeof path, "%s/event-channel", straw_dir);
        snprintf(val, sizeof val, "%d", port);
        xwrite(t, path, val);
        xwrite(t, straw_state, ST_INITIALISED);
        if (xs_transaction_end(xs, t, false))
            break;
        if (errno != EAGAIN)
            die("commit");
    }
    if (wait_value(warts_state, ST_CONNECTED, 1) < 0)
        die("the peer's state went before Connected");
    xwrite(XBT_NULL, straw_state, ST_CONNECTED);
    say("connected (LING, granting, port %d)", port);

    struct ring r = {.base = pages, .xce = xce, .port = (evtchn_port_t)port, .granting = 1};
    struct buf in = {0}, out = {0};
    unsigned long frames = 0;
    double last = now();
    for (;;) {
        int moved = pump(&r, &out, &in);
        uint32_t len;
        uint8_t *f;
        while ((f = take_frame(&in, &len))) {
            put_frame(&out, f, len);
            frames++;
        }
        if (moved) {
            last = now();
            continue;
        }
        /* straw_state: the peer's state left Connected */
        char *st = xread(warts_state);
        if (!st || strcmp(st, ST_CONNECTED) != 0) {
            say("peer state %s after %lu frames echoed", st ? st : "(gone)", frames);
            /* Closing: the peer unmaps next, then writes Closed (or removes its directory). */
            if (st && strcmp(st, ST_CLOSED) != 0)
                wait_value(warts_state, ST_CLOSED, 1);
            free(st);
            break;
        }
        free(st);
        if (now() - last > deadline_s)
            die("nothing moved for %.0f s", deadline_s);
        wait_event(&r, 100);
    }
    /* The chart: end access to the refs, state = Closed; then remove our directory. */
    if (xengntshr_unshare(gs, pages, NUM_REFS) < 0)
        die("unshare");
    xenevtchn_unbind(xce, port);
    xwrite(XBT_NULL, straw_state, ST_CLOSED);
    xs_rm(xs, XBT_NULL, straw_dir);
    say("closed: echoed %lu frames", frames);
    return 0;
}

/* Reads FRAMES: 4-byte little-endian length + bytes, each. */
static uint8_t *load_frames(const char *file, size_t *size) {
    FILE *f = fopen(file, "rb");
    if (!f)
        die("open %s", file);
    struct buf b = {0};
    uint8_t chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        put(&b, chunk, n);
    fclose(f);
    *size = b.len;
    return b.p;
}

static int connect_and_check(const char *file) {
    char warts_dir[96], straw_dir[96], straw_state[112], warts_state[112], path[128];
    snprintf(warts_dir, sizeof warts_dir, "/local/domain/%u/data/warts/%u", me, peer);
    snprintf(straw_dir, sizeof straw_dir, "/local/domain/%u/data/straw/%u", peer, me);
    snprintf(straw_state, sizeof straw_state, "%s/state", straw_dir);
    snprintf(warts_state, sizeof warts_state, "%s/state", warts_dir);
    size_t size;
    uint8_t *frames = load_frames(file, &size);
    say("domain %u connects to domain %u (%zu bytes of frames)", me, peer, size);
    /* handle_call({open, Domid}) */
    char *v = xread(warts_dir);
    if (v)
        die("%s exists", warts_dir);
    if (!xs_mkdir(xs, XBT_NULL, straw_dir))
        die("not_found: mkdir %s", straw_dir);
    /* do_open */
    for (;;) {
        xs_transaction_t t = xs_transaction_start(xs);
        if (t == XBT_NULL)
            die("transaction start");
        if (!xs_mkdir(xs, t, warts_dir))
            die("mkdir %s", warts_dir);
        snprintf(path, sizeof path, "%s/straw", warts_dir);
        xwrite(t, path, straw_dir);
        xwrite(t, warts_state, ST_INIT_WAIT);
        snprintf(path, sizeof path, "%s/warts", straw_dir);
        xwrite(t, path, warts_dir);
        if (xs_transaction_end(xs, t, false))
            break;
        if (errno != EAGAIN)
            die("commit");
    }
    wait_value(straw_state, ST_INITIALISED, 0);
    uint32_t refs[NUM_REFS];
    for (int i = 0; i < NUM_REFS; i++) {
        snprintf(path, sizeof path, "%s/ring-ref-%d", straw_dir, i + 1);
        char *s = xread(path), *e;
        if (!s)
            die("read %s", path);
        unsigned long n = strtoul(s, &e, 10);
        if (*s == 0 || *e != 0 || n > UINT32_MAX) {
            errno = EPROTO;
            die("%s = %s", path, s);
        }
        refs[i] = (uint32_t)n;
        free(s);
    }
    snprintf(path, sizeof path, "%s/event-channel", straw_dir);
    char *s = xread(path), *e;
    if (!s)
        die("read %s", path);
    unsigned long rport = strtoul(s, &e, 10);
    if (*s == 0 || *e != 0 || rport > UINT32_MAX) {
        errno = EPROTO;
        die("%s = %s", path, s);
    }
    free(s);
    xengnttab_handle *gt = xengnttab_open(NULL, 0);
    xenevtchn_handle *xce = xenevtchn_open(NULL, 0);
    if (!gt || !xce)
        die("open gnttab/evtchn");
    void *pages = xengnttab_map_domain_grant_refs(gt, NUM_REFS, peer, refs, PROT_READ | PROT_WRITE);
    if (!pages)
        die("map %d refs of domain %u", NUM_REFS, peer);
    xenevtchn_port_or_error_t port = xenevtchn_bind_interdomain(xce, peer, (evtchn_port_t)rport);
    if (port < 0)
        die("bind to port %lu of domain %u", rport, peer);
    xwrite(XBT_NULL, warts_state, ST_CONNECTED);
    if (wait_value(straw_state, ST_CONNECTED, 1) < 0)
        die("the listener's state went before Connected");
    say("connected (LING, mapping, port %d)", port);

    struct ring r = {.base = pages, .xce = xce, .port = (evtchn_port_t)port, .granting = 0};
    struct buf in = {0}, out = {0};
    unsigned long sent = 0, back = 0;
    size_t pos = 0, expect = 0, bytes = 0;
    /* Queue the frames in seed framing. */
    while (pos + 4 <= size) {
        uint32_t len = (uint32_t)frames[pos] | (uint32_t)frames[pos + 1] << 8 |
                       (uint32_t)frames[pos + 2] << 16 | (uint32_t)frames[pos + 3] << 24;
        if (pos + 4 + len > size || len > MAX_FRAME) {
            errno = EINVAL;
            die("%s: a frame of %" PRIu32 " bytes at %zu runs past the end", file, len, pos);
        }
        put_frame(&out, frames + pos + 4, len);
        pos += 4 + len;
        sent++;
        bytes += len;
    }
    double last = now(), t0 = now();
    while (back < sent) {
        int moved = pump(&r, &out, &in);
        uint32_t len;
        uint8_t *f;
        while ((f = take_frame(&in, &len))) {
            uint32_t want = (uint32_t)frames[expect] | (uint32_t)frames[expect + 1] << 8 |
                            (uint32_t)frames[expect + 2] << 16 | (uint32_t)frames[expect + 3] << 24;
            if (back >= sent || len != want || memcmp(f, frames + expect + 4, len) != 0) {
                errno = EPROTO;
                die("frame %lu came back different (%" PRIu32 " bytes, sent %" PRIu32 ")", back + 1, len, want);
            }
            expect += 4 + len;
            back++;
        }
        if (moved) {
            last = now();
            continue;
        }
        char *st = xread(straw_state);
        if (!st || strcmp(st, ST_CONNECTED) != 0) {
            errno = EPIPE;
            die("the listener's state is %s after %lu of %lu frames", st ? st : "(gone)", back, sent);
        }
        free(st);
        if (now() - last > deadline_s)
            die("nothing moved for %.0f s (%lu of %lu frames back)", deadline_s, back, sent);
        wait_event(&r, 100);
    }
    say("all %lu frames (%zu bytes) came back intact in %.2f s", sent, bytes, now() - t0);
    /* The chart, mapping side: unmap the refs, state = Closed, wait for Closed. */
    if (xengnttab_unmap(gt, pages, NUM_REFS) < 0)
        die("unmap");
    xenevtchn_unbind(xce, port);
    xwrite(XBT_NULL, warts_state, ST_CLOSED);
    if (wait_value(straw_state, ST_CLOSED, 1) < 0)
        say("the listener removed its directory before writing Closed");
    xs_rm(xs, XBT_NULL, warts_dir);
    say("closed");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stderr, NULL, _IOLBF, 0);
    if (argc < 3 || (strcmp(argv[1], "listen") && strcmp(argv[1], "connect")) ||
        (!strcmp(argv[1], "connect") && argc < 4)) {
        fprintf(stderr, "usage: seed-strawman listen PEER [TIMEOUT]\n"
                        "       seed-strawman connect PEER FRAMES [TIMEOUT]\n");
        return 2;
    }
    peer = (unsigned)atoi(argv[2]);
    int listen = !strcmp(argv[1], "listen");
    const char *t = listen ? (argc > 3 ? argv[3] : NULL) : (argc > 4 ? argv[4] : NULL);
    if (t)
        deadline_s = atof(t);
    if (!(xs = xs_open(0)))
        die("xs_open");
    init_tops();
    return listen ? listen_and_echo() : connect_and_check(argv[3]);
}
