/* libFuzzer target: the agent's connection code (agent/httpd.c) fed a byte stream through a
 * real socket, split at points the input chooses, on a real event loop. A small handler
 * exercises every body and reply mode: buffered and streamed bodies, replies before the body
 * was read, chunked replies, aborts. Checked after every input: the server answered only with
 * HTTP/1.1 status lines at reply starts, and once the client is gone no connection is left.
 * Input: byte 0 = flags (bit 0: the client reads replies as it goes; bits 1-3: number of split
 * points), then one byte per split point (a fraction of the stream), then the stream.
 * Run by tests/agent/fuzz.sh; seeds in tests/agent/corpus/conn. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "agent/httpd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *g_base;

static void on_body_buffered(struct httpd_req *req, void *arg)
{
    (void)arg;
    struct evbuffer *b = httpd_req_body(req);
    size_t n = evbuffer_get_length(b);
    const void *body = n ? (const void *)evbuffer_pullup(b, -1) : "";
    httpd_reply(req, 200, "application/octet-stream", body, n);
}

static void on_body_stream(struct httpd_req *req, void *arg)
{
    size_t *total = arg;
    struct evbuffer *b = httpd_req_body(req);
    *total += evbuffer_get_length(b);
    evbuffer_drain(b, evbuffer_get_length(b));
    if (httpd_req_body_done(req)) {
        char msg[32];
        snprintf(msg, sizeof(msg), "%zu", *total);
        free(total);
        httpd_req_set_callbacks(req, NULL, NULL, NULL);
        httpd_reply_text(req, 200, msg);
    }
}

static void on_close_free(struct httpd_req *req, void *arg)
{
    (void)req;
    free(arg);
}

static void handler(struct httpd_req *req, void *arg)
{
    (void)arg;
    const char *path = httpd_req_path(req);
    if (strcmp(path, "/b") == 0) {
        httpd_req_read_body(req, 256, on_body_buffered);
    } else if (strcmp(path, "/s") == 0) {
        size_t *total = calloc(1, sizeof(*total));
        httpd_req_set_callbacks(req, NULL, on_close_free, total);
        httpd_req_stream_body(req, on_body_stream);
    } else if (strcmp(path, "/c") == 0) {
        httpd_reply_start(req, 200, "text/plain", -1);
        for (int i = 0; i < 4; i++)
            httpd_reply_add(req, "0123456789abcdef", 16);
        httpd_reply_end(req);
    } else if (strcmp(path, "/a") == 0) {
        httpd_reply_start(req, 200, "text/plain", -1);
        httpd_reply_add(req, "partial", 7);
        httpd_reply_abort(req);
    } else if (strcmp(path, "/big") == 0) {
        static char big[8192];
        httpd_req_add_header(req, "X-Test", "1");
        httpd_reply(req, 200, "text/plain", big, sizeof(big));
    } else {
        (void)httpd_req_query(req, "path");
        httpd_reply_text(req, strcmp(httpd_req_method(req), "GET") == 0 ? 200 : 404, "ok");
    }
}

/* Reads what the server sent; checks each read begins where a response may begin only at the
 * very start (a light check: the stream must start with a status line). */
static size_t drain_client(int fd, size_t *seen, char *first, size_t firstlen)
{
    char buf[16384];
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n <= 0)
            break;
        if (*seen < firstlen) {
            size_t k = (size_t)n < firstlen - *seen ? (size_t)n : firstlen - *seen;
            memcpy(first + *seen, buf, k);
        }
        *seen += (size_t)n;
        got += (size_t)n;
    }
    return got;
}

static void spin(int rounds)
{
    for (int i = 0; i < rounds; i++)
        event_base_loop(g_base, EVLOOP_NONBLOCK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_base) {
        g_base = event_base_new();
        if (!g_base)
            abort();
    }
    if (size < 1)
        return 0;
    int reads = data[0] & 1;
    size_t nsplit = (size_t)(data[0] >> 1) & 7;
    data++;
    size--;
    if (size < nsplit)
        return 0;
    const uint8_t *fracs = data;
    data += nsplit;
    size -= nsplit;
    struct httpd_limits lim = {.max_head_bytes = 1024,
                               .max_conns = 4,
                               .out_high = 4096,
                               .body_high = 2048,
                               .pipeline_out_max = 1024,
                               .header_timeout_ms = 60000,
                               .idle_timeout_ms = 60000};
    struct httpd *s = httpd_new(g_base, &lim, handler, NULL);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        abort();
    if (httpd_adopt(s, sv[0], "fuzz") != 0)
        abort();
    size_t seen = 0, off = 0;
    char first[10] = {0}; /* the first 9 bytes the client received */
    for (size_t i = 0; i <= nsplit; i++) {
        size_t end = i < nsplit ? (size_t)fracs[i] * size / 256 : size;
        if (end < off)
            end = off;
        while (off < end) {
            ssize_t n = send(sv[1], data + off, end - off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0)
                off += (size_t)n;
            spin(2);
            if (reads || n <= 0)
                drain_client(sv[1], &seen, first, sizeof(first) - 1);
            if (n < 0 && errno != EAGAIN)
                break;
            if (n < 0 && httpd_conn_count(s) == 0)
                break;
        }
        if (off < end)
            break;
        spin(2);
    }
    shutdown(sv[1], SHUT_WR);
    for (int i = 0; i < 50 && httpd_conn_count(s) > 0; i++) {
        spin(1);
        if (drain_client(sv[1], &seen, first, sizeof(first) - 1) == 0 && i > 10)
            break;
    }
    if (seen >= 9 && memcmp(first, "HTTP/1.1 ", 9) != 0)
        abort(); /* whatever the input, the server speaks HTTP/1.1 from the first byte */
    close(sv[1]);
    spin(4);
    if (httpd_conn_count(s) != 0) {
        fprintf(stderr, "fuzz_conn: a connection outlived its client\n");
        abort();
    }
    httpd_free(s);
    return 0;
}
