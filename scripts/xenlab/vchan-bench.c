/*
 * vchan-bench: the libxenvchan side of the lab's throughput bench (scripts/xenlab/vchan-bench.sh),
 * moving the same bytes between the same two domains as `pore straw --generate` / `--sink`.
 *
 *   vchan-bench recv PEER XSPATH RING TOTAL MSG
 *                                             the vchan server: rings of RING bytes each way,
 *                                             receives messages of MSG bytes (one packet receive,
 *                                             libxenvchan_recv, per message, as a consumer of
 *                                             messages does) until TOTAL bytes came, then prints
 *                                             the rate from the first message to the last
 *   vchan-bench send PEER XSPATH SIZE COUNT   the vchan client: COUNT writes of SIZE bytes each
 *                                             (blocking, stream writes), then waits until the
 *                                             peer has read everything
 *
 * Both give up after 300 s (SIGALRM). Build: scripts/xenlab/build-c-peers.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libxenvchan.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int recv_all(int peer, const char *path, size_t ring, unsigned long long total, size_t msg) {
    struct libxenvchan *c = libxenvchan_server_init(NULL, peer, path, ring, ring);
    if (!c) {
        perror("vchan-bench: libxenvchan_server_init");
        return 1;
    }
    c->blocking = 1;
    static char buf[1 << 20];
    if (msg == 0 || msg > sizeof buf || msg > ring) {
        fprintf(stderr, "vchan-bench: bad message size %zu\n", msg);
        return 2;
    }
    unsigned long long got = 0;
    double first = 0, last = 0;
    while (got < total) {
        int n = libxenvchan_recv(c, buf, msg);
        if (n < 0) {
            fprintf(stderr, "vchan-bench: read failed after %llu of %llu bytes\n", got, total);
            return 1;
        }
        if (n > 0) {
            last = now();
            if (got == 0)
                first = last;
            got += (unsigned long long)n;
        }
    }
    double secs = last - first;
    fprintf(stderr,
            "vchan-bench: received %llu bytes; first to last byte %.3f s: %.1f MB/s (rings of %zu B)\n",
            got, secs, secs > 0 ? got / secs / 1e6 : 0.0, ring);
    libxenvchan_close(c);
    return 0;
}

static int send_all(int peer, const char *path, size_t size, unsigned long count) {
    struct libxenvchan *c = NULL;
    for (int i = 0; i < 3000 && !c; i++) { /* the server may not have published yet */
        if (!(c = libxenvchan_client_init(NULL, peer, path)))
            usleep(100000);
    }
    if (!c) {
        perror("vchan-bench: libxenvchan_client_init");
        return 1;
    }
    c->blocking = 1;
    char *msg = malloc(size ? size : 1);
    if (!msg)
        return 1;
    memset(msg, 0xa5, size);
    int room = libxenvchan_buffer_space(c);
    for (unsigned long i = 0; i < count; i++) {
        if (libxenvchan_write(c, msg, size) != (int)size) {
            fprintf(stderr, "vchan-bench: write %lu of %lu failed\n", i + 1, count);
            return 1;
        }
    }
    /* Everything was read once the ring is as empty as at the start. */
    while (libxenvchan_is_open(c) && libxenvchan_buffer_space(c) < room)
        usleep(1000);
    fprintf(stderr, "vchan-bench: sent %lu writes of %zu bytes\n", count, size);
    libxenvchan_close(c);
    return 0;
}

int main(int argc, char **argv) {
    int recv = argc == 7 && !strcmp(argv[1], "recv");
    if (!recv && (argc != 6 || strcmp(argv[1], "send"))) {
        fprintf(stderr, "usage: vchan-bench recv PEER XSPATH RING TOTAL MSG\n"
                        "       vchan-bench send PEER XSPATH SIZE COUNT\n");
        return 2;
    }
    alarm(300);
    int peer = atoi(argv[2]);
    if (recv)
        return recv_all(peer, argv[3], strtoul(argv[4], NULL, 10), strtoull(argv[5], NULL, 10),
                        strtoul(argv[6], NULL, 10));
    return send_all(peer, argv[3], strtoul(argv[4], NULL, 10), strtoul(argv[5], NULL, 10));
}
