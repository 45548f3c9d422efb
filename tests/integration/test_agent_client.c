/* The agent client (providers/agent_client) against the real sandbox-agent (loopback TCP with a
 * token, its own unix socket, and a forwarder that can cut long responses) and against the
 * upstream Node agent's plain protocol (tests/fakes/plain_agent.js): feature detection,
 * streaming order and byte-exact output, exit codes, timeout, kill, files, run re-attach after
 * the client is dropped, archive out -> in of a 64 MiB tree with bounded memory and
 * backpressure, the auth hook's refresh after a 401, a wrong token, degraded mode. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <stdint.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "providers/agent_client.h"
#include "providers/sigv4.h"
#include "tests/support/fake_proc.h"
#include "tests/support/sync_provider.h"
#include "tests/support/test.h"

#define TOKEN "agent-test-token-5f1c9e"
#define MiB   ((size_t)1 << 20)

static struct event_base *base;
static char tmp[256];
static char agent_bin[512];

/* ---------------------------------------------------------------- processes */

struct child {
    pid_t pid;
    int stdin_fd; /* closing it stops the node helpers */
};

static void child_stop(struct child *ch)
{
    if (ch->stdin_fd >= 0)
        close(ch->stdin_fd);
    ch->stdin_fd = -1;
    if (ch->pid > 0) {
        kill(ch->pid, SIGTERM);
        int st;
        for (int i = 0; i < 50 && waitpid(ch->pid, &st, WNOHANG) == 0; i++)
            usleep(100 * 1000);
        if (waitpid(ch->pid, &st, WNOHANG) == 0) {
            kill(ch->pid, SIGKILL);
            waitpid(ch->pid, &st, 0);
        }
    }
    ch->pid = -1;
}

/* Starts argv with stdin a pipe; with want_line, waits (up to 20 s) for a stdout line starting
 * "listening" and copies it there. 0 or -1. */
static int child_start(struct child *ch, const char *const argv[], const char *const env[],
                       char *want_line, size_t linelen)
{
    int in[2], out[2];
    ch->pid = -1;
    ch->stdin_fd = -1;
    if (pipe(in) != 0 || pipe(out) != 0)
        return -1;
    ch->pid = fork();
    if (ch->pid == 0) {
        dup2(in[0], 0);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(want_line ? out[1] : devnull, 1);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        for (const char *const *e = env; e && *e; e++)
            putenv((char *)(uintptr_t)*e);
        execvp(argv[0], (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    ch->stdin_fd = in[1];
    if (!want_line) {
        close(out[0]);
        return ch->pid > 0 ? 0 : -1;
    }
    size_t used = 0;
    want_line[0] = '\0';
    time_t deadline = time(NULL) + 20;
    while (time(NULL) < deadline && !strchr(want_line, '\n')) {
        struct pollfd p = {out[0], POLLIN, 0};
        if (poll(&p, 1, 500) <= 0)
            continue;
        ssize_t n = read(out[0], want_line + used, linelen - 1 - used);
        if (n <= 0)
            break;
        used += (size_t)n;
        want_line[used] = '\0';
    }
    close(out[0]);
    if (strncmp(want_line, "listening", 9) != 0) {
        child_stop(ch);
        return -1;
    }
    return 0;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int wait_port(int port)
{
    for (int i = 0; i < 100; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
        close(fd);
        if (ok)
            return 0;
        usleep(50 * 1000);
    }
    return -1;
}

static int in_path(const char *prog)
{
    const char *path = getenv("PATH");
    char b[4096];
    while (path && *path) {
        size_t n = strcspn(path, ":");
        snprintf(b, sizeof(b), "%.*s/%s", (int)n, path, prog);
        if (access(b, X_OK) == 0)
            return 1;
        path += n + (path[n] == ':');
    }
    return 0;
}

/* The real agent on 127.0.0.1 (TCP) and on its own unix socket (LD_AGENT_SOCKET), a cutting
 * forwarder in front of it; the plain agent on TCP
 * and on its own unix socket; the plain agent behind a proxy-auth check. */
static struct child ours, fwd_cut, plain, plain_unix, plain_auth, plain_pool;
static int ours_port, plain_port, plain_auth_port, plain_pool_port;
static char ours_sock[300], cut_sock[300], plain_sock[300];
static int have_ours, have_node;
static char skip_ours[600], skip_node[600];

static void start_servers(void)
{
    snprintf(agent_bin, sizeof(agent_bin), "%s/sandbox-agent",
             getenv("BUILD") ? getenv("BUILD") : "build");
    if (access(agent_bin, X_OK) != 0) {
        snprintf(skip_ours, sizeof(skip_ours), "%s not built (make)", agent_bin);
    } else {
        ours_port = free_port();
        static char e_port[64], e_spool[400], e_sock[400];
        snprintf(e_port, sizeof(e_port), "LD_AGENT_PORT=%d", ours_port);
        snprintf(ours_sock, sizeof(ours_sock), "%s/agent.sock", tmp);
        snprintf(e_sock, sizeof(e_sock), "LD_AGENT_SOCKET=%s", ours_sock);
        snprintf(e_spool, sizeof(e_spool), "SANDBOX_AGENT_SPOOL_DIR=%s/spool", tmp);
        const char *env[] = {"LD_AGENT_BIND=127.0.0.1",    e_port,  "LD_AGENT_HOOK_PORT=0",
                             "SANDBOX_AGENT_TOKEN=" TOKEN, e_spool, e_sock,
                             "LIGHTDASH_LOG_LEVEL=warn",   NULL};
        const char *argv[] = {agent_bin, NULL};
        if (child_start(&ours, argv, env, NULL, 0) != 0 || wait_port(ours_port) != 0)
            snprintf(skip_ours, sizeof(skip_ours), "sandbox-agent did not start on port %d",
                     ours_port);
        else
            have_ours = 1;
    }
    if (!in_path("node")) {
        snprintf(skip_node, sizeof(skip_node), "node is not installed (apt-get install nodejs)");
        return;
    }
    char line[256], port[16];
    const char *pa[] = {"node", "tests/fakes/plain_agent.js", "0", NULL};
    if (child_start(&plain, pa, NULL, line, sizeof(line)) != 0 ||
        sscanf(line, "listening %d", &plain_port) != 1) {
        snprintf(skip_node, sizeof(skip_node), "tests/fakes/plain_agent.js did not start");
        return;
    }
    snprintf(plain_sock, sizeof(plain_sock), "%s/plain.sock", tmp);
    const char *pu[] = {"node", "tests/fakes/plain_agent.js", plain_sock, NULL};
    const char *pauth[] = {
        "node", "tests/fakes/plain_agent.js", "0", "--proxy-auth", "fresh-proxy-tok", NULL};
    const char *ppool[] = {"node",
                           "tests/fakes/plain_agent.js",
                           "0",
                           "--pool-bearer",
                           "entra-tok-1",
                           "--pool-identifier",
                           "job-42&x=y|z",
                           NULL};
    if (child_start(&plain_unix, pu, NULL, line, sizeof(line)) != 0 ||
        child_start(&plain_auth, pauth, NULL, line, sizeof(line)) != 0 ||
        sscanf(line, "listening %d", &plain_auth_port) != 1 ||
        child_start(&plain_pool, ppool, NULL, line, sizeof(line)) != 0 ||
        sscanf(line, "listening %d", &plain_pool_port) != 1) {
        snprintf(skip_node, sizeof(skip_node), "tests/fakes/plain_agent.js did not start");
        return;
    }
    have_node = 1;
    if (have_ours) {
        snprintf(port, sizeof(port), "%d", ours_port);
        snprintf(cut_sock, sizeof(cut_sock), "%s/cut.sock", tmp);
        const char *fc[] = {
            "node", "tests/fakes/unix_forward.js", cut_sock, port, "--cut-after", "262144", NULL};
        if (child_start(&fwd_cut, fc, NULL, line, sizeof(line)) != 0) {
            snprintf(skip_node, sizeof(skip_node), "tests/fakes/unix_forward.js did not start");
            have_node = 0;
        }
    }
}

/* ---------------------------------------------------------------- loop */

static int run_until(const int *flag, int timeout_s)
{
    return sp_run_until(base, flag, timeout_s);
}

/* ---------------------------------------------------------------- clients */

enum target { T_OURS, T_OURS_UNIX, T_OURS_CUT, T_PLAIN, T_PLAIN_UNIX };

struct ready_res {
    int done, rc;
    char err[512];
};

static void on_ready(void *arg, int rc, const char *err)
{
    struct ready_res *r = arg;
    r->done = 1;
    r->rc = rc;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
}

static agent_client *client_for(enum target t, const char *token, const struct agent_auth_hook *h)
{
    char url[128], err[256];
    struct agent_client_opts o = {0};
    o.token = token;
    if (h)
        o.auth = *h;
    switch (t) {
    case T_OURS:
        snprintf(url, sizeof(url), "http://127.0.0.1:%d", ours_port);
        o.base_url = url;
        break;
    case T_OURS_UNIX:
        o.unix_socket = ours_sock;
        break;
    case T_OURS_CUT:
        o.unix_socket = cut_sock;
        break;
    case T_PLAIN:
        snprintf(url, sizeof(url), "http://127.0.0.1:%d", plain_port);
        o.base_url = url;
        break;
    case T_PLAIN_UNIX:
        o.unix_socket = plain_sock;
        break;
    }
    agent_client *c = agent_client_new(base, &o, err, sizeof(err));
    if (!c)
        printf("  agent_client_new: %s\n", err);
    return c;
}

/* A client that has answered /ready. */
static agent_client *ready_client(enum target t)
{
    agent_client *c = client_for(t, t == T_PLAIN || t == T_PLAIN_UNIX ? NULL : TOKEN, NULL);
    if (!c)
        return NULL;
    struct ready_res r = {0};
    char err[256];
    if (agent_client_ready(c, on_ready, &r, err, sizeof(err)) != 0 || run_until(&r.done, 10) ||
        r.rc != 0) {
        printf("  ready failed: %s\n", r.err);
        agent_client_free(c);
        return NULL;
    }
    return c;
}

/* ---------------------------------------------------------------- exec helpers */

struct exec_res {
    int done;
    enum exec_status st;
    int code;
    char err[512];
    struct buf out, errb;
    struct buf transcript; /* "[o:...][e:...]" with adjacent chunks of a stream merged */
    int last_stream;
    agent_op *op;
    /* kill / drop triggers */
    size_t kill_after; /* kill once this many stdout bytes arrived (0: never) */
    size_t free_after; /* free *client once this many bytes arrived (0: never) */
    agent_client **client;
    uint64_t offset_at_free;
    unsigned reattaches;
    char run_id[80];
};

static void res_init(struct exec_res *r)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->out);
    buf_init(&r->errb);
    buf_init(&r->transcript);
}

static void res_release(struct exec_res *r)
{
    buf_release(&r->out);
    buf_release(&r->errb);
    buf_release(&r->transcript);
}

static void on_output(void *arg, enum exec_stream s, const char *data, size_t len)
{
    struct exec_res *r = arg;
    buf_append(s == EXEC_STDOUT ? &r->out : &r->errb, data, len);
    if ((int)s != r->last_stream) {
        if (r->last_stream)
            buf_putc(&r->transcript, ']');
        buf_puts(&r->transcript, s == EXEC_STDOUT ? "[o:" : "[e:");
        r->last_stream = (int)s;
    }
    buf_append(&r->transcript, data, len);
    r->reattaches = agent_op_reattaches(r->op);
    if (r->kill_after && r->out.len >= r->kill_after) {
        r->kill_after = 0;
        agent_op_kill(r->op);
    }
    if (r->free_after && r->out.len >= r->free_after) {
        r->free_after = 0;
        r->offset_at_free = agent_op_offset(r->op);
        snprintf(r->run_id, sizeof(r->run_id), "%s",
                 agent_op_run_id(r->op) ? agent_op_run_id(r->op) : "");
        agent_client_free(*r->client); /* from inside a callback: no callback after this */
        *r->client = NULL;
        r->done = 1;
    }
}

static void on_exit_cb(void *arg, enum exec_status st, int code, const char *err)
{
    struct exec_res *r = arg;
    if (r->last_stream)
        buf_putc(&r->transcript, ']');
    r->done = 1;
    r->st = st;
    r->code = code;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
}

static int run_cmd(agent_client *c, const char *cmd, int64_t timeout_ms, struct exec_res *r,
                   int wait_s)
{
    struct exec_req req = {.cmd = cmd, .cwd = tmp, .timeout_ms = timeout_ms};
    struct exec_cbs cbs = {.on_output = on_output, .on_exit = on_exit_cb, .arg = r};
    char err[256];
    r->op = agent_exec(c, &req, &cbs, err, sizeof(err));
    if (!r->op) {
        printf("  agent_exec: %s\n", err);
        return -1;
    }
    return run_until(&r->done, wait_s);
}

static const char *target_name(enum target t)
{
    static const char *n[] = {"ours", "ours over a unix socket", "ours through a cutting proxy",
                              "plain", "plain over a unix socket"};
    return n[t];
}

/* ---------------------------------------------------------------- tests */

TEST_CASE(ready_detects_features)
{
    if (!have_ours)
        SKIP(skip_ours);
    agent_client *c = ready_client(T_OURS);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_EQ_INT(agent_client_proto(c), AGENT_PROTO_OURS);
    unsigned f = agent_client_features(c);
    CHECK((f & AGENT_F_RUNS) && (f & AGENT_F_ARCHIVE) && (f & AGENT_F_SIGNALS));
    CHECK((f & AGENT_F_EXEC) && (f & AGENT_F_FILES) && (f & AGENT_F_AUTH));
    CHECK(agent_client_version(c)[0] != '\0');
    agent_client_free(c);
    if (!have_node)
        SKIP(skip_node);
    c = ready_client(T_PLAIN);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_EQ_INT(agent_client_proto(c), AGENT_PROTO_PLAIN);
    CHECK_EQ_INT(agent_client_features(c), AGENT_F_EXEC | AGENT_F_FILES);
    CHECK_STR(agent_client_version(c), "");
    agent_client_free(c);
}

/* Stdout and stderr interleaved in order; a binary file (every byte value) byte for byte. */
static void check_stream_order_binary(enum target t)
{
    printf("  -- %s\n", target_name(t));
    agent_client *c = ready_client(t);
    CHECK(c != NULL);
    if (!c)
        return;
    struct exec_res r;
    res_init(&r);
    CHECK(run_cmd(c,
                  "printf o1; sleep 0.15; printf e1 >&2; sleep 0.15; printf o2; sleep 0.15; "
                  "printf 'e2\\n' >&2",
                  0, &r, 20) == 0);
    CHECK_EQ_INT(r.st, EXEC_EXITED);
    CHECK_EQ_INT(r.code, 0);
    CHECK_STR(r.transcript.data, "[o:o1][e:e1][o:o2][e:e2\n]");
    res_release(&r);

    res_init(&r);
    /* through the cutting proxy: 1 MiB in 16 KiB writes, so that every frame fits in a cut */
    size_t want_len = t == T_OURS_CUT ? MiB : 3 * MiB + 17;
    CHECK(run_cmd(c,
                  t == T_OURS_CUT ? "i=0; while [ $i -lt 64 ]; do dd if=bin.dat bs=16384 "
                                    "skip=$i count=1 2>/dev/null; i=$((i+1)); sleep 0.01; done"
                                  : "cat bin.dat",
                  0, &r, 30) == 0);
    CHECK_EQ_INT(r.st, EXEC_EXITED);
    if (r.st != EXEC_EXITED)
        printf("  exec: %s\n", r.err);
    struct buf want;
    buf_init(&want);
    for (size_t i = 0; i < want_len; i++)
        buf_putc(&want, (char)(i * 7 + i / 256));
    CHECK_EQ_INT(r.out.len, want.len);
    CHECK(r.out.len == want.len && memcmp(r.out.data, want.data, want.len) == 0);
    CHECK_EQ_INT(r.errb.len, 0);
    if (t == T_OURS_CUT)
        CHECK(r.reattaches >= 3); /* ~1.4 MiB of frames through a proxy cutting at 256 KiB */
    else
        CHECK_EQ_INT(r.reattaches, 0);
    buf_release(&want);
    res_release(&r);
    agent_client_free(c);
}

TEST_CASE(exec_streams_in_order_and_byte_exact)
{
    if (!have_ours)
        SKIP(skip_ours);
    check_stream_order_binary(T_OURS);
    if (!have_node)
        SKIP(skip_node);
    check_stream_order_binary(T_OURS_UNIX);
    check_stream_order_binary(T_OURS_CUT); /* cut every 256 KiB: re-attached, nothing lost */
    check_stream_order_binary(T_PLAIN);
}

static void check_exit_codes(enum target t, int signal_code)
{
    printf("  -- %s\n", target_name(t));
    agent_client *c = ready_client(t);
    CHECK(c != NULL);
    if (!c)
        return;
    struct exec_res r;
    res_init(&r);
    CHECK(run_cmd(c, "echo out; echo err >&2; exit 42", 0, &r, 20) == 0);
    CHECK_EQ_INT(r.st, EXEC_EXITED);
    CHECK_EQ_INT(r.code, 42);
    CHECK_STR(r.out.data, "out\n");
    CHECK_STR(r.errb.data, "err\n");
    res_release(&r);
    res_init(&r);
    CHECK(run_cmd(c, "kill -TERM $$", 0, &r, 20) == 0);
    CHECK_EQ_INT(r.st, EXEC_EXITED);
    CHECK_EQ_INT(r.code, signal_code);
    res_release(&r);
    /* environment and working directory reach the command */
    res_init(&r);
    struct exec_req req = {.cmd = "printf '%s|%s' \"$GREETING\" \"$(pwd)\"",
                           .cwd = tmp,
                           .env = (const char *const[]){"GREETING=hello world", NULL}};
    struct exec_cbs cbs = {.on_output = on_output, .on_exit = on_exit_cb, .arg = &r};
    char err[256];
    r.op = agent_exec(c, &req, &cbs, err, sizeof(err));
    CHECK(r.op != NULL && run_until(&r.done, 20) == 0);
    struct buf want;
    buf_init(&want);
    buf_printf(&want, "hello world|%s", tmp);
    CHECK_STR(r.out.data, want.data);
    buf_release(&want);
    res_release(&r);
    agent_client_free(c);
}

TEST_CASE(exec_exit_codes)
{
    if (!have_ours)
        SKIP(skip_ours);
    check_exit_codes(T_OURS, 128 + SIGTERM); /* ours: the real signal */
    if (!have_node)
        SKIP(skip_node);
    check_exit_codes(T_PLAIN, 129); /* upstream: 128 + 1 for any signal */
}

static void check_timeout(enum target t)
{
    printf("  -- %s\n", target_name(t));
    agent_client *c = ready_client(t);
    CHECK(c != NULL);
    if (!c)
        return;
    struct exec_res r;
    res_init(&r);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(run_cmd(c, "echo started; sleep 30", 300, &r, 20) == 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    CHECK_EQ_INT(r.st, EXEC_TIMEOUT);
    CHECK_STR(r.out.data, "started\n");
    CHECK(ms >= 250 && ms < 10000);
    res_release(&r);
    agent_client_free(c);
}

TEST_CASE(exec_timeout)
{
    if (!have_ours)
        SKIP(skip_ours);
    check_timeout(T_OURS);
    if (!have_node)
        SKIP(skip_node);
    check_timeout(T_PLAIN);
}

/* A process is gone when /proc has no entry or it is a zombie waiting for its reaper. */
static int proc_alive(pid_t pid)
{
    char p[64], st[512];
    snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(p, "r");
    if (!f)
        return 0;
    size_t n = fread(st, 1, sizeof(st) - 1, f);
    fclose(f);
    st[n] = '\0';
    const char *rp = strrchr(st, ')');
    return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

static void check_kill(enum target t)
{
    printf("  -- %s\n", target_name(t));
    agent_client *c = ready_client(t);
    CHECK(c != NULL);
    if (!c)
        return;
    struct exec_res r;
    res_init(&r);
    /* a background child in the command's group: the whole tree must go */
    r.kill_after = 1;
    CHECK(run_cmd(c, "sleep 300 & echo $!; sleep 300; wait", 0, &r, 20) == 0);
    CHECK_EQ_INT(r.st, EXEC_KILLED);
    int pid = atoi(r.out.data ? r.out.data : "0");
    CHECK(pid > 1);
    int alive = 1;
    for (int i = 0; i < 100 && alive; i++) {
        alive = pid > 1 && proc_alive(pid);
        if (alive)
            usleep(50 * 1000);
    }
    CHECK(!alive);
    res_release(&r);
    agent_client_free(c);
}

TEST_CASE(exec_kill_takes_the_process_tree)
{
    if (!have_ours)
        SKIP(skip_ours);
    check_kill(T_OURS);
    if (!have_node)
        SKIP(skip_node);
    check_kill(T_PLAIN);
}

struct done_res {
    int done, rc;
    char err[512];
    struct buf data;
};

static void on_done(void *arg, int rc, const char *err)
{
    struct done_res *d = arg;
    d->done = 1;
    d->rc = rc;
    snprintf(d->err, sizeof(d->err), "%s", err ? err : "");
}

static void on_data(void *arg, int rc, const char *data, size_t len, const char *err)
{
    struct done_res *d = arg;
    on_done(arg, rc, err);
    buf_clear(&d->data);
    if (rc == 0)
        buf_append(&d->data, data, len);
}

static void check_files(enum target t)
{
    printf("  -- %s\n", target_name(t));
    agent_client *c = ready_client(t);
    CHECK(c != NULL);
    if (!c)
        return;
    char path[400], err[256];
    snprintf(path, sizeof(path), "%s/files-%d/sub dir/f.bin", tmp, (int)t);
    char content[1000];
    for (size_t i = 0; i < sizeof(content); i++)
        content[i] = (char)(i % 251); /* NULs and high bytes */
    struct done_res d = {0};
    buf_init(&d.data);
    CHECK(agent_file_write(c, path, content, sizeof(content), on_done, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == 0);
    memset(&d, 0, sizeof(int) * 2);
    CHECK(agent_file_read(c, path, 1 << 20, on_data, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == 0);
    CHECK(d.data.len == sizeof(content) && memcmp(d.data.data, content, sizeof(content)) == 0);
    d.done = 0;
    CHECK(agent_file_read(c, path, 10, on_data, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == 0);
    CHECK(d.data.len == 10 && memcmp(d.data.data, content, 10) == 0);
    d.done = 0;
    CHECK(agent_file_delete(c, path, on_done, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == 0);
    d.done = 0;
    CHECK(agent_file_delete(c, path, on_done, &d, err, sizeof(err)) == 0); /* absent: fine */
    CHECK(run_until(&d.done, 10) == 0 && d.rc == 0);
    d.done = 0;
    CHECK(agent_file_read(c, path, 100, on_data, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == -1);
    CHECK(strstr(d.err, "no such file") != NULL);
    CHECK(agent_file_read(c, "relative/path", 100, on_data, &d, err, sizeof(err)) == -1);
    buf_release(&d.data);
    agent_client_free(c);
}

TEST_CASE(files_round_trip_and_max)
{
    if (!have_ours)
        SKIP(skip_ours);
    check_files(T_OURS);
    if (!have_node)
        SKIP(skip_node);
    check_files(T_PLAIN);
    check_files(T_PLAIN_UNIX);
}

struct start_res {
    int done, rc;
    char id[80], err[512];
};

static void on_started(void *arg, int rc, const char *run_id, const char *err)
{
    struct start_res *s = arg;
    s->done = 1;
    s->rc = rc;
    snprintf(s->id, sizeof(s->id), "%s", run_id ? run_id : "");
    snprintf(s->err, sizeof(s->err), "%s", err ? err : "");
}

TEST_CASE(run_reattach_after_client_dropped)
{
    if (!have_ours)
        SKIP(skip_ours);
    agent_client *c = ready_client(T_OURS);
    CHECK(c != NULL);
    if (!c)
        return;
    const char *cmd = "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); "
                      "[ $((i % 20)) -eq 0 ] && sleep 0.05; done; echo tail >&2; exit 7";
    struct exec_req req = {.cmd = cmd, .cwd = tmp};
    struct start_res s = {0};
    char err[256];
    CHECK(agent_run_start(c, &req, on_started, &s, err, sizeof(err)) == 0);
    CHECK(run_until(&s.done, 10) == 0 && s.rc == 0 && strlen(s.id) == 32);

    /* first worker: follows, then "crashes" (its client is freed mid-stream) */
    struct exec_res a;
    res_init(&a);
    a.free_after = 1500;
    a.client = &c;
    struct exec_cbs cbs = {.on_output = on_output, .on_exit = on_exit_cb, .arg = &a};
    a.op = agent_run_attach(c, s.id, 0, &cbs, err, sizeof(err));
    CHECK(a.op != NULL);
    CHECK(run_until(&a.done, 20) == 0);
    CHECK(c == NULL);
    CHECK_STR(a.run_id, s.id);
    CHECK_EQ_INT(a.offset_at_free, a.out.len + a.errb.len);
    CHECK(a.offset_at_free >= 1500 && a.offset_at_free < 3000);

    /* second worker: a new client re-attaches from the recorded offset */
    agent_client *c2 = ready_client(T_OURS);
    CHECK(c2 != NULL);
    if (!c2)
        return;
    struct exec_res b;
    res_init(&b);
    cbs.arg = &b;
    b.op = agent_run_attach(c2, s.id, a.offset_at_free, &cbs, err, sizeof(err));
    CHECK(b.op != NULL);
    CHECK(run_until(&b.done, 20) == 0);
    CHECK_EQ_INT(b.st, EXEC_EXITED);
    CHECK_EQ_INT(b.code, 7);
    struct buf all, want;
    buf_init(&all);
    buf_init(&want);
    buf_append(&all, a.out.data, a.out.len);
    buf_append(&all, b.out.data, b.out.len);
    for (int i = 0; i < 300; i++)
        buf_printf(&want, "line-%d\n", i);
    CHECK_EQ_INT(all.len, want.len);
    CHECK(all.len == want.len && memcmp(all.data, want.data, want.len) == 0);
    CHECK_STR(b.errb.data, "tail\n");

    /* waiting for an ended run from its end: no output, the exit code */
    struct exec_res w;
    res_init(&w);
    cbs.arg = &w;
    w.op = agent_run_attach(c2, s.id, AGENT_OFFSET_END, &cbs, err, sizeof(err));
    CHECK(w.op != NULL && run_until(&w.done, 10) == 0);
    CHECK_EQ_INT(w.st, EXEC_EXITED);
    CHECK_EQ_INT(w.code, 7);
    CHECK_EQ_INT(w.out.len + w.errb.len, 0);

    /* an exec detached mid-stream names its run, which goes on and can be picked up again */
    struct exec_res e1;
    res_init(&e1);
    struct exec_req ereq = {.cmd = "echo first; sleep 0.3; echo second", .cwd = tmp};
    cbs.arg = &e1;
    e1.op = agent_exec(c2, &ereq, &cbs, err, sizeof(err));
    CHECK(e1.op != NULL);
    if (!e1.op)
        return;
    while (e1.out.len == 0 && !e1.done)
        event_base_loop(base, EVLOOP_ONCE);
    char run_id[80];
    snprintf(run_id, sizeof(run_id), "%s", agent_op_run_id(e1.op) ? agent_op_run_id(e1.op) : "");
    uint64_t off = agent_op_offset(e1.op);
    agent_op_detach(e1.op);
    CHECK(run_until(&e1.done, 10) == 0);
    CHECK_EQ_INT(e1.st, EXEC_ERROR);
    CHECK(strlen(run_id) == 32 && strstr(e1.err, run_id) != NULL);
    CHECK_STR(e1.out.data, "first\n");
    CHECK_EQ_INT(off, 6);
    struct exec_res e2;
    res_init(&e2);
    cbs.arg = &e2;
    e2.op = agent_run_attach(c2, run_id, off, &cbs, err, sizeof(err));
    CHECK(e2.op != NULL && run_until(&e2.done, 10) == 0);
    CHECK_EQ_INT(e2.st, EXEC_EXITED);
    CHECK_STR(e2.out.data, "second\n");
    res_release(&e1);
    res_release(&e2);

    /* signal a running run, then delete it; a deleted run is reported unknown */
    struct start_res s2 = {0};
    req.cmd = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done";
    CHECK(agent_run_start(c2, &req, on_started, &s2, err, sizeof(err)) == 0);
    CHECK(run_until(&s2.done, 10) == 0 && s2.rc == 0);
    struct exec_res x;
    res_init(&x);
    cbs.arg = &x;
    x.op = agent_run_attach(c2, s2.id, 0, &cbs, err, sizeof(err));
    while (x.out.len == 0 && !x.done)
        event_base_loop(base, EVLOOP_ONCE);
    struct done_res d = {0};
    CHECK(agent_run_signal(c2, s2.id, "TERM", on_done, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == 0);
    CHECK(run_until(&x.done, 10) == 0);
    CHECK_EQ_INT(x.st, EXEC_EXITED);
    CHECK_EQ_INT(x.code, 3);
    CHECK_STR(x.out.data, "ready\ngot-term\n");
    d.done = 0;
    CHECK(agent_run_signal(c2, s2.id, "TERM", on_done, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == 0); /* ended: not an error */
    d.done = 0;
    CHECK(agent_run_signal(c2, s2.id, "BOGUS", on_done, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == -1);
    CHECK(strstr(d.err, "HTTP 400") != NULL);
    d.done = 0;
    CHECK(agent_run_delete(c2, s2.id, on_done, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == 0);
    struct exec_res gone;
    res_init(&gone);
    cbs.arg = &gone;
    gone.op = agent_run_attach(c2, s2.id, 0, &cbs, err, sizeof(err));
    CHECK(gone.op != NULL && run_until(&gone.done, 10) == 0);
    CHECK_EQ_INT(gone.st, EXEC_ERROR);
    CHECK(strstr(gone.err, "unknown to the agent") != NULL);
    CHECK(agent_run_attach(c2, "../etc", 0, &cbs, err, sizeof(err)) == NULL);

    buf_release(&all);
    buf_release(&want);
    res_release(&a);
    res_release(&b);
    res_release(&w);
    res_release(&x);
    res_release(&gone);
    agent_client_free(c2);
}

/* ---------------------------------------------------------------- archives */

/* Resident set size now, KiB. */
static long rss_kib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static long rss_peak; /* highest rss_kib() seen by the sink and the source */

static void rss_sample(unsigned calls)
{
    if (calls % 16 == 0) {
        long r = rss_kib();
        if (r > rss_peak)
            rss_peak = r;
    }
}

struct file_sink {
    int fd;
    unsigned calls, blocks;
    size_t bytes;
    agent_op *op;
    struct event *drain;
    int done, rc;
    char err[512];
    uint64_t entries, xbytes;
};

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct file_sink *s = arg;
    agent_op_drain(s->op);
}

static void schedule_drain(struct file_sink *s)
{
    struct timeval tv = {0, 2000};
    evtimer_add(s->drain, &tv);
}

/* Says "would block" every 7th call; the bytes come again after the drain. */
static int sink_write(void *arg, const char *data, size_t len)
{
    struct file_sink *s = arg;
    rss_sample(s->calls);
    if (++s->calls % 7 == 0) {
        s->blocks++;
        schedule_drain(s);
        return AGENT_IO_BLOCK;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(s->fd, data + off, len - off);
        if (n <= 0)
            return AGENT_IO_ERROR;
        off += (size_t)n;
    }
    s->bytes += len;
    return AGENT_IO_OK;
}

/* Has nothing ready every 5th call. */
static size_t source_read(void *arg, char *dst, size_t cap)
{
    struct file_sink *s = arg;
    rss_sample(s->calls);
    if (++s->calls % 5 == 0) {
        s->blocks++;
        schedule_drain(s);
        return AGENT_SOURCE_BLOCK;
    }
    ssize_t n = read(s->fd, dst, cap);
    if (n < 0)
        return AGENT_SOURCE_ERROR;
    s->bytes += (size_t)n;
    return (size_t)n;
}

static void on_archive_done(void *arg, int rc, const char *err)
{
    struct file_sink *s = arg;
    s->done = 1;
    s->rc = rc;
    snprintf(s->err, sizeof(s->err), "%s", err ? err : "");
}

static void on_archive_in(void *arg, int rc, uint64_t entries, uint64_t bytes, const char *err)
{
    struct file_sink *s = arg;
    on_archive_done(arg, rc, err);
    s->entries = entries;
    s->xbytes = bytes;
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* Compares two files in 1 MiB pieces; 1 when equal. */
static int same_file(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    static char ba[1 << 20], bb[1 << 20];
    while (same) {
        size_t na = fread(ba, 1, sizeof(ba), fa), nb = fread(bb, 1, sizeof(bb), fb);
        same = na == nb && memcmp(ba, bb, na) == 0;
        if (na == 0)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

TEST_CASE(archive_round_trip_bounded_memory)
{
    if (!have_ours)
        SKIP(skip_ours);
    agent_client *c = ready_client(T_OURS);
    CHECK(c != NULL);
    if (!c)
        return;
    char src[300], dst[300], big[400], tarpath[300], p[400], q[400], err[256];
    snprintf(src, sizeof(src), "%s/tree", tmp);
    snprintf(dst, sizeof(dst), "%s/restored", tmp);
    snprintf(tarpath, sizeof(tarpath), "%s/tree.tar", tmp);
    snprintf(p, sizeof(p), "%s/sub", src);
    mkdir(src, 0755);
    mkdir(p, 0755);
    snprintf(big, sizeof(big), "%s/sub/big.bin", src);
    /* 64 MiB of random bytes, written in 1 MiB pieces */
    int in = open("/dev/urandom", O_RDONLY), out = open(big, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    static char chunk[1 << 20];
    for (int i = 0; i < 64 && in >= 0 && out >= 0; i++) {
        size_t got = 0;
        while (got < sizeof(chunk)) {
            ssize_t n = read(in, chunk + got, sizeof(chunk) - got);
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        CHECK(write(out, chunk, got) == (ssize_t)got);
    }
    close(in);
    close(out);
    snprintf(p, sizeof(p), "%s/keep.txt", src);
    CHECK(write_file(p, "keep me\n") == 0);
    snprintf(p, sizeof(p), "%s/sub/noise.log", src);
    CHECK(write_file(p, "excluded\n") == 0);
    snprintf(p, sizeof(p), "%s/link", src);
    CHECK(symlink("keep.txt", p) == 0);

    long rss0 = rss_kib();
    rss_peak = rss0;
    struct file_sink s = {0};
    s.fd = open(tarpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    s.drain = evtimer_new(base, drain_cb, &s);
    const char *exclude[] = {"*.log", NULL};
    struct agent_archive_spec spec = {.root = src, .exclude = exclude, .compression = "none"};
    struct agent_sink sink = {.write = sink_write, .arg = &s};
    s.op = agent_archive_out(c, &spec, &sink, on_archive_done, &s, err, sizeof(err));
    CHECK(s.op != NULL);
    CHECK(run_until(&s.done, 120) == 0);
    CHECK_EQ_INT(s.rc, 0);
    if (s.rc)
        printf("  archive out: %s\n", s.err);
    close(s.fd);
    CHECK(s.bytes > 64 * MiB);
    CHECK(s.blocks > 10);
    printf("  archive out: %zu bytes, sink blocked %u times\n", s.bytes, s.blocks);

    struct file_sink r = {0};
    r.fd = open(tarpath, O_RDONLY);
    r.drain = evtimer_new(base, drain_cb, &r);
    struct agent_source source = {.read = source_read, .arg = &r};
    r.op = agent_archive_in(c, dst, 0, &source, on_archive_in, &r, err, sizeof(err));
    CHECK(r.op != NULL);
    CHECK(run_until(&r.done, 120) == 0);
    CHECK_EQ_INT(r.rc, 0);
    if (r.rc)
        printf("  archive in: %s\n", r.err);
    close(r.fd);
    CHECK_EQ_INT(r.bytes, s.bytes);
    CHECK(r.blocks > 10);
    CHECK(r.xbytes >= 64 * MiB);
    CHECK(r.entries >= 4);
    long grew = rss_peak - rss0;
    printf("  archive in: %zu bytes, %llu entries, source blocked %u times; RSS %ld KiB before, "
           "grew at most %ld KiB\n",
           r.bytes, (unsigned long long)r.entries, r.blocks, rss0, grew);
    CHECK(grew < 32 * 1024); /* 64 MiB went through each way */

    snprintf(p, sizeof(p), "%s/sub/big.bin", dst);
    CHECK(same_file(big, p));
    snprintf(p, sizeof(p), "%s/keep.txt", src);
    snprintf(q, sizeof(q), "%s/keep.txt", dst);
    CHECK(same_file(p, q));
    snprintf(q, sizeof(q), "%s/sub/noise.log", dst);
    CHECK(access(q, F_OK) != 0);
    char target[64] = "";
    snprintf(q, sizeof(q), "%s/link", dst);
    ssize_t tl = readlink(q, target, sizeof(target) - 1);
    CHECK(tl == 8 && memcmp(target, "keep.txt", 8) == 0);

    /* a sink that fails aborts the transfer with an error */
    struct file_sink bad = {0};
    bad.fd = -1;
    bad.drain = evtimer_new(base, drain_cb, &bad);
    sink.arg = &bad;
    bad.op = agent_archive_out(c, &spec, &sink, on_archive_done, &bad, err, sizeof(err));
    CHECK(bad.op != NULL && run_until(&bad.done, 30) == 0);
    CHECK_EQ_INT(bad.rc, -1);
    CHECK(strstr(bad.err, "sink") != NULL);
    /* a missing root is the agent's clear 404 */
    bad.done = 0;
    spec.root = "/nonexistent-root-dir";
    bad.op = agent_archive_out(c, &spec, &sink, on_archive_done, &bad, err, sizeof(err));
    CHECK(bad.op != NULL && run_until(&bad.done, 30) == 0);
    CHECK_EQ_INT(bad.rc, -1);
    CHECK(strstr(bad.err, "HTTP 404") != NULL);
    event_free(bad.drain);
    event_free(s.drain);
    event_free(r.drain);
    unlink(tarpath);
    agent_client_free(c);
}

/* ---------------------------------------------------------------- auth */

struct hook {
    int calls, refreshes;
    const char *first, *fresh; /* header values handed out */
};

static void hook_get(void *arg, int refresh, agent_auth_done_fn done, void *done_arg)
{
    struct hook *h = arg;
    h->calls++;
    h->refreshes += refresh;
    char hdr[128];
    snprintf(hdr, sizeof(hdr), "X-aws-proxy-auth: %s", refresh ? h->fresh : h->first);
    const char *hdrs[] = {hdr, "X-aws-proxy-port: 8080", NULL};
    done(done_arg, 0, hdrs, NULL); /* inside the call, as a cached token would */
}

/* A very compressible workspace (200 MiB of zeros) comes back: the agent's expansion guard,
 * meant for bombs from unknown callers, is lifted by the client for its own restores (before,
 * every resume of such a workspace failed with 413). */
TEST_CASE(archive_in_of_a_compressible_workspace)
{
    if (!have_ours)
        SKIP(skip_ours);
    agent_client *c = ready_client(T_OURS);
    CHECK(c != NULL);
    if (!c)
        return;
    char src[300], dst[300], tarpath[300], p[400], cmd[1200], err[256];
    snprintf(src, sizeof(src), "%s/zeros", tmp);
    snprintf(dst, sizeof(dst), "%s/zeros-restored", tmp);
    snprintf(tarpath, sizeof(tarpath), "%s/zeros.tar.zst", tmp);
    snprintf(cmd, sizeof(cmd), "mkdir -p '%s' && head -c 209715200 /dev/zero > '%s/db.bin'", src,
             src);
    CHECK(system(cmd) == 0);
    struct file_sink s = {0};
    s.fd = open(tarpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    s.drain = evtimer_new(base, drain_cb, &s);
    struct agent_archive_spec spec = {.root = src, .compression = "zstd"};
    struct agent_sink sink = {.write = sink_write, .arg = &s};
    s.op = agent_archive_out(c, &spec, &sink, on_archive_done, &s, err, sizeof(err));
    CHECK(s.op != NULL);
    CHECK(run_until(&s.done, 120) == 0);
    CHECK_EQ_INT(s.rc, 0);
    close(s.fd);
    CHECK(s.bytes < 1024 * 1024); /* over 200 times smaller than what it holds */
    struct file_sink r = {0};
    r.fd = open(tarpath, O_RDONLY);
    r.drain = evtimer_new(base, drain_cb, &r);
    struct agent_source source = {.read = source_read, .arg = &r};
    r.op = agent_archive_in(c, dst, 0, &source, on_archive_in, &r, err, sizeof(err));
    CHECK(r.op != NULL);
    CHECK(run_until(&r.done, 120) == 0);
    CHECK_EQ_INT(r.rc, 0);
    if (r.rc)
        printf("  archive in: %s\n", r.err);
    close(r.fd);
    snprintf(p, sizeof(p), "%s/db.bin", dst);
    struct stat st;
    CHECK(stat(p, &st) == 0 && st.st_size == 209715200);
    event_free(s.drain);
    event_free(r.drain);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s' '%s'", src, dst, tarpath);
    CHECK(system(cmd) == 0);
    agent_client_free(c);
}

TEST_CASE(auth_hook_refreshes_once_on_401)
{
    if (!have_node)
        SKIP(skip_node);
    struct hook h = {.first = "stale-proxy-tok", .fresh = "fresh-proxy-tok"};
    struct agent_auth_hook ah = {.get = hook_get, .arg = &h};
    char url[64], err[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", plain_auth_port);
    struct agent_client_opts o = {.base_url = url, .auth = ah};
    agent_client *c = agent_client_new(base, &o, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    struct ready_res rr = {0};
    CHECK(agent_client_ready(c, on_ready, &rr, err, sizeof(err)) == 0);
    CHECK(run_until(&rr.done, 10) == 0 && rr.rc == 0);
    CHECK_EQ_INT(h.calls, 2);
    CHECK_EQ_INT(h.refreshes, 1);
    /* later requests use the fresh headers without asking again */
    struct exec_res r;
    res_init(&r);
    CHECK(run_cmd(c, "echo through the proxy", 0, &r, 20) == 0);
    CHECK_EQ_INT(r.st, EXEC_EXITED);
    CHECK_STR(r.out.data, "through the proxy\n");
    CHECK_EQ_INT(h.calls, 2);
    res_release(&r);
    agent_client_free(c);

    /* a hook that never gets it right: one retry, then a clear error without secrets */
    struct hook bad = {.first = "stale-proxy-tok", .fresh = "still-stale-tok"};
    o.auth.arg = &bad;
    c = agent_client_new(base, &o, err, sizeof(err));
    res_init(&r);
    CHECK(run_cmd(c, "echo never", 0, &r, 20) == 0);
    CHECK_EQ_INT(r.st, EXEC_ERROR);
    CHECK(strstr(r.err, "HTTP 401") != NULL);
    CHECK(strstr(r.err, "still refused") != NULL);
    CHECK(strstr(r.err, "stale") == NULL);
    CHECK_EQ_INT(bad.calls, 2);
    printf("  reported: %s\n", r.err);
    res_release(&r);
    agent_client_free(c);
}

/* A hook that answers later from the loop, as one minting a token over the network does. */
struct async_hook {
    int calls, refreshes;
    agent_auth_done_fn done;
    void *done_arg;
    int refresh;
    struct event *ev;
};

static void async_hook_answer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct async_hook *h = arg;
    const char *hdrs[] = {h->refresh ? "X-aws-proxy-auth: fresh-proxy-tok"
                                     : "X-aws-proxy-auth: stale-proxy-tok",
                          NULL};
    agent_auth_done_fn done = h->done;
    h->done = NULL;
    done(h->done_arg, 0, hdrs, NULL);
}

static void async_hook_get(void *arg, int refresh, agent_auth_done_fn done, void *done_arg)
{
    struct async_hook *h = arg;
    h->calls++;
    h->refreshes += refresh;
    h->refresh = refresh;
    h->done = done;
    h->done_arg = done_arg;
    struct timeval tv = {0, 20000};
    evtimer_add(h->ev, &tv);
}

TEST_CASE(auth_hook_async_shared_by_concurrent_requests)
{
    if (!have_node)
        SKIP(skip_node);
    struct async_hook h = {0};
    h.ev = evtimer_new(base, async_hook_answer, &h);
    char url[64], err[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", plain_auth_port);
    struct agent_client_opts o = {.base_url = url, .auth = {.get = async_hook_get, .arg = &h}};
    agent_client *c = agent_client_new(base, &o, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    /* three requests at once: one hook call for them all, one refresh after their 401s */
    struct exec_res r1, r2;
    res_init(&r1);
    res_init(&r2);
    struct exec_req req = {.cmd = "echo one"};
    struct exec_cbs cbs = {.on_output = on_output, .on_exit = on_exit_cb, .arg = &r1};
    r1.op = agent_exec(c, &req, &cbs, err, sizeof(err));
    req.cmd = "echo two";
    cbs.arg = &r2;
    r2.op = agent_exec(c, &req, &cbs, err, sizeof(err));
    struct done_res d = {0};
    buf_init(&d.data);
    char path[400];
    snprintf(path, sizeof(path), "%s/hook-async.txt", tmp);
    CHECK(agent_file_write(c, path, "abc", 3, on_done, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&r1.done, 20) == 0 && run_until(&r2.done, 20) == 0 &&
          run_until(&d.done, 20) == 0);
    CHECK_EQ_INT(r1.st, EXEC_EXITED);
    CHECK_STR(r1.out.data, "one\n");
    CHECK_EQ_INT(r2.st, EXEC_EXITED);
    CHECK_STR(r2.out.data, "two\n");
    CHECK_EQ_INT(d.rc, 0);
    CHECK_EQ_INT(h.calls, 2);
    CHECK_EQ_INT(h.refreshes, 1);

    /* freed while the hook is still minting: no callback runs, nothing is touched later */
    struct exec_res r3;
    res_init(&r3);
    agent_client_free(c);
    c = agent_client_new(base, &o, err, sizeof(err));
    cbs.arg = &r3;
    r3.op = agent_exec(c, &req, &cbs, err, sizeof(err));
    CHECK(r3.op != NULL && h.done != NULL);
    agent_client_free(c);
    sp_pump(base, 200);
    CHECK(!r3.done);
    res_release(&r1);
    res_release(&r2);
    res_release(&r3);
    buf_release(&d.data);
    event_free(h.ev);
}

/* A client sharing the caller's HTTP client, freed with a command running: no callback runs,
 * the plain agent sees the disconnect and kills the command. */
TEST_CASE(client_freed_with_a_shared_http_client)
{
    if (!have_node)
        SKIP(skip_node);
    http_client *http = http_client_new(base);
    char url[64], err[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", plain_port);
    struct agent_client_opts o = {.base_url = url, .http = http};
    agent_client *c = agent_client_new(base, &o, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    struct exec_res r;
    res_init(&r);
    struct exec_req req = {.cmd = "echo $$; exec sleep 300", .cwd = tmp};
    struct exec_cbs cbs = {.on_output = on_output, .on_exit = on_exit_cb, .arg = &r};
    r.op = agent_exec(c, &req, &cbs, err, sizeof(err));
    CHECK(r.op != NULL);
    while (r.out.len == 0 && !r.done)
        event_base_loop(base, EVLOOP_ONCE);
    int pid = atoi(r.out.data ? r.out.data : "0");
    CHECK(pid > 1);
    agent_client_free(c);
    int alive = 1;
    for (int i = 0; i < 100 && alive; i++) {
        sp_pump(base, 50);
        alive = pid > 1 && proc_alive(pid);
    }
    CHECK(!alive);
    CHECK(!r.done);
    CHECK_EQ_INT(http_client_in_flight(http), 0);
    res_release(&r);
    http_client_free(http);
}

static void pool_hook_get(void *arg, int refresh, agent_auth_done_fn done, void *done_arg)
{
    (void)refresh;
    (*(int *)arg)++;
    const char *hdrs[] = {"Authorization: Bearer entra-tok-1", NULL};
    done(done_arg, 0, hdrs, NULL);
}

/* Azure's shape: the pool's Entra bearer in Authorization (the agent token is then not sent)
 * and the session identifier on every request's query, next to the route's own parameters. */
TEST_CASE(pool_bearer_and_identifier_query)
{
    if (!have_node)
        SKIP(skip_node);
    int calls = 0;
    char url[64], err[256], path[400];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", plain_pool_port);
    struct agent_client_opts o = {.base_url = url,
                                  .token = "agent-token-not-for-the-pool",
                                  .query = "identifier=job-42%26x%3Dy%7Cz",
                                  .auth = {.get = pool_hook_get, .arg = &calls}};
    agent_client *c = agent_client_new(base, &o, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    struct ready_res rr = {0};
    CHECK(agent_client_ready(c, on_ready, &rr, err, sizeof(err)) == 0);
    CHECK(run_until(&rr.done, 10) == 0 && rr.rc == 0);
    if (rr.rc)
        printf("  ready: %s\n", rr.err);
    struct exec_res r;
    res_init(&r);
    CHECK(run_cmd(c, "echo pooled", 0, &r, 20) == 0);
    CHECK_STR(r.out.data, "pooled\n");
    struct done_res d = {0};
    buf_init(&d.data);
    snprintf(path, sizeof(path), "%s/pool.txt", tmp);
    CHECK(agent_file_write(c, path, "pool", 4, on_done, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == 0);
    d.done = 0;
    CHECK(agent_file_read(c, path, 100, on_data, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == 0);
    CHECK(d.data.len == 4 && memcmp(d.data.data, "pool", 4) == 0);
    CHECK_EQ_INT(calls, 1);
    agent_client_free(c);
    /* without the identifier the pool refuses; the message does not carry the query */
    o.query = NULL;
    c = agent_client_new(base, &o, err, sizeof(err));
    res_release(&r);
    res_init(&r);
    CHECK(run_cmd(c, "echo never", 0, &r, 20) == 0);
    CHECK_EQ_INT(r.st, EXEC_ERROR);
    CHECK(strstr(r.err, "HTTP 400") != NULL);
    agent_client_free(c);
    o.query = "identifier=a b";
    CHECK(agent_client_new(base, &o, err, sizeof(err)) == NULL);
    res_release(&r);
    buf_release(&d.data);
}

/* ---- the Lambda MicroVMs fake: a real sandbox-agent behind the endpoint proxy ---- */

#define LAMBDA_REGION "eu-west-1"
#define LAMBDA_AK     "AKIDLAMBDAFAKE"
#define LAMBDA_SK     "lambda-fake-secret"

static struct fake_proc lambda;
static char lambda_url[128];
static http_client *cloud_http;

struct lres {
    int done;
    long status;
    struct buf body;
};

static void lambda_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct lres *l = arg;
    l->status = res->code ? 0 : res->status;
    buf_append(&l->body, res->body->data ? res->body->data : "", res->body->len);
    l->done = 1;
}

/* Starts one SigV4-signed control-plane call; done runs from the loop. */
static int lambda_start(const char *method, const char *path, const char *json,
                        void (*done)(void *, http_request *, const struct http_result *), void *arg)
{
    const char *hostport = lambda_url + strlen("http://");
    char clen[32];
    snprintf(clen, sizeof(clen), "%zu", json ? strlen(json) : 0);
    /* the fake (like aws4) signs Content-Length whenever there is a body */
    struct sigv4_header h[] = {
        {"host", hostport}, {"content-type", "application/json"}, {"content-length", clen}};
    struct sigv4_request sr = {.method = method,
                               .target = path,
                               .headers = h,
                               .n_headers = json ? 3 : 1,
                               .body = json,
                               .body_len = json ? strlen(json) : 0,
                               .region = LAMBDA_REGION,
                               .service = "lambda",
                               .when = time(NULL)};
    struct sigv4_creds cr = {LAMBDA_AK, LAMBDA_SK, NULL};
    struct sigv4_signed sg;
    sigv4_signed_init(&sg);
    char err[256], url[512];
    if (sigv4_sign(&cr, &sr, &sg, err, sizeof(err)) != 0) {
        sigv4_signed_release(&sg);
        return -1;
    }
    snprintf(url, sizeof(url), "%s%s", lambda_url, path);
    http_request *r = http_request_new(cloud_http, method, url);
    for (size_t i = 0; i < sg.n_add; i++)
        http_request_add_header(r, sg.add[i].name, sg.add[i].value);
    if (json) {
        http_request_add_header(r, "Content-Type", "application/json");
        http_request_set_body(r, json, strlen(json));
    }
    sigv4_signed_release(&sg);
    struct http_callbacks cb = {.on_done = done};
    http_request_set_callbacks(r, &cb, arg);
    return http_request_start(r, err, sizeof(err));
}

static long lambda_call(const char *method, const char *path, const char *json, cJSON **out)
{
    struct lres l = {0};
    buf_init(&l.body);
    if (lambda_start(method, path, json, lambda_done, &l) != 0 || run_until(&l.done, 20) != 0) {
        buf_release(&l.body);
        return 0;
    }
    if (l.status != 200)
        printf("  %s %s: HTTP %ld %s\n", method, path, l.status, l.body.data ? l.body.data : "");
    if (out)
        *out = cJSON_ParseWithLength(l.body.data ? l.body.data : "", l.body.len);
    buf_release(&l.body);
    return l.status;
}

/* The auth hook of a lambda-microvm backend: CreateMicrovmAuthToken, asynchronously. */
struct mint {
    char vm[128];
    int calls, refreshes;
    agent_auth_done_fn done;
    void *done_arg;
};

static void mint_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct mint *m = arg;
    cJSON *j = res->code == 0 && res->status == 200
                   ? cJSON_ParseWithLength(res->body->data ? res->body->data : "", res->body->len)
                   : NULL;
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(j, "authToken");
    const char *hdrs[8];
    char lines[6][512];
    size_t n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, tok)
    {
        if (n < 6 && cJSON_IsString(it)) {
            snprintf(lines[n], sizeof(lines[n]), "%s: %s", it->string, it->valuestring);
            hdrs[n] = lines[n];
            n++;
        }
    }
    int got = n > 0;
    hdrs[n++] = "X-aws-proxy-port: 8080";
    hdrs[n] = NULL;
    agent_auth_done_fn done = m->done;
    m->done = NULL;
    if (got)
        done(m->done_arg, 0, hdrs, NULL);
    else
        done(m->done_arg, -1, NULL, "CreateMicrovmAuthToken failed");
    cJSON_Delete(j);
}

static void mint_get(void *arg, int refresh, agent_auth_done_fn done, void *done_arg)
{
    struct mint *m = arg;
    m->calls++;
    m->refreshes += refresh;
    m->done = done;
    m->done_arg = done_arg;
    char path[256];
    snprintf(path, sizeof(path), "/2025-09-09/microvms/%s/auth-token", m->vm);
    if (lambda_start("POST", path,
                     "{\"expirationInMinutes\":60,\"allowedPorts\":[{\"port\":8080}]}", mint_done,
                     m) != 0) {
        m->done = NULL;
        done(done_arg, -1, NULL, "cannot sign the token request");
    }
}

TEST_CASE(lambda_endpoint_proxy_token_refresh)
{
    if (!have_ours)
        SKIP(skip_ours);
    char dir[400], why[512];
    snprintf(dir, sizeof(dir), "%s/lambda", tmp);
    mkdir(dir, 0755);
    char agent_abs[PATH_MAX];
    if (!realpath(agent_bin, agent_abs))
        snprintf(agent_abs, sizeof(agent_abs), "%s", agent_bin);
    const char *args[] = {"--agent",     agent_abs,       "--root", dir, "--region",
                          LAMBDA_REGION, "--agent-token", TOKEN,    NULL};
    const char *needs[] = {"aws4/package.json", NULL};
    int rc =
        fake_proc_start(&lambda, "tests/fakes/lambda_microvm.js", args, needs, why, sizeof(why));
    if (rc == 1)
        SKIP(why);
    CHECK_EQ_INT(rc, 0);
    if (rc != 0) {
        printf("  %s\n", why);
        return;
    }
    fake_proc_field(&lambda, "endpoint", lambda_url, sizeof(lambda_url));
    cloud_http = http_client_new(base);
    cJSON *j = NULL;
    CHECK_EQ_INT(lambda_call("POST", "/2025-09-09/microvms",
                             "{\"imageIdentifier\":\"agent-client-test\"}", &j),
                 200);
    struct mint m = {0};
    char endpoint[256] = "";
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "microvmId"));
    snprintf(m.vm, sizeof(m.vm), "%s", id ? id : "");
    cJSON_Delete(j);
    char path[256];
    snprintf(path, sizeof(path), "/2025-09-09/microvms/%s", m.vm);
    for (int i = 0; i < 300; i++) {
        j = NULL;
        lambda_call("GET", path, NULL, &j);
        const char *state = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "state"));
        const char *ep = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "endpoint"));
        snprintf(endpoint, sizeof(endpoint), "%s", ep ? ep : "");
        int running = state && strcmp(state, "RUNNING") == 0;
        cJSON_Delete(j);
        if (running)
            break;
        usleep(100 * 1000);
    }
    CHECK(endpoint[0] != '\0');
    struct agent_client_opts o = {
        .base_url = endpoint, .token = TOKEN, .auth = {.get = mint_get, .arg = &m}};
    char err[256];
    agent_client *c = agent_client_new(base, &o, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        goto out;
    struct ready_res rr = {0};
    CHECK(agent_client_ready(c, on_ready, &rr, err, sizeof(err)) == 0);
    CHECK(run_until(&rr.done, 20) == 0 && rr.rc == 0);
    if (rr.rc)
        printf("  ready: %s\n", rr.err);
    CHECK_EQ_INT(agent_client_proto(c), AGENT_PROTO_OURS);
    struct exec_res r;
    res_init(&r);
    CHECK(run_cmd(c, "echo via the endpoint proxy", 0, &r, 20) == 0);
    CHECK_STR(r.out.data, "via the endpoint proxy\n");
    CHECK_EQ_INT(m.calls, 1);
    res_release(&r);

    /* the tokens expire mid-turn: the proxy answers 403, one re-mint, the command runs */
    struct lres l = {0};
    buf_init(&l.body);
    char u[512];
    snprintf(u, sizeof(u), "%s/_fake/expire-tokens/%s", lambda_url, m.vm);
    http_request *x = http_request_new(cloud_http, "POST", u);
    struct http_callbacks cb = {.on_done = lambda_done};
    http_request_set_callbacks(x, &cb, &l);
    CHECK(http_request_start(x, err, sizeof(err)) == 0 && run_until(&l.done, 10) == 0);
    CHECK(l.status >= 200 && l.status < 300);
    buf_release(&l.body);
    res_init(&r);
    CHECK(run_cmd(c, "echo after the refresh", 0, &r, 20) == 0);
    CHECK_EQ_INT(r.st, EXEC_EXITED);
    CHECK_STR(r.out.data, "after the refresh\n");
    CHECK_EQ_INT(m.calls, 2);
    CHECK_EQ_INT(m.refreshes, 1);
    res_release(&r);
    agent_client_free(c);
out:
    http_client_free(cloud_http);
    cloud_http = NULL;
    fake_proc_stop(&lambda);
}

/* ---- the Azure dynamic-sessions fake: a real sandbox-agent per identifier behind the pool ---- */

struct entra {
    char login[128];
    int calls, refreshes;
    agent_auth_done_fn done;
    void *done_arg;
};

static void entra_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct entra *e = arg;
    cJSON *j = res->code == 0 && res->status == 200
                   ? cJSON_ParseWithLength(res->body->data ? res->body->data : "", res->body->len)
                   : NULL;
    const char *tok = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "access_token"));
    char hdr[4096];
    snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s", tok ? tok : "");
    const char *hdrs[] = {hdr, NULL};
    agent_auth_done_fn done = e->done;
    e->done = NULL;
    if (tok)
        done(e->done_arg, 0, hdrs, NULL);
    else
        done(e->done_arg, -1, NULL, "no Entra token");
    explicit_bzero(hdr, sizeof(hdr));
    cJSON_Delete(j);
}

/* The auth hook of an azure-container-sessions backend: a client-credentials token. */
static void entra_get(void *arg, int refresh, agent_auth_done_fn done, void *done_arg)
{
    struct entra *e = arg;
    e->calls++;
    e->refreshes += refresh;
    e->done = done;
    e->done_arg = done_arg;
    char url[256], err[256];
    snprintf(url, sizeof(url), "%s/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token",
             e->login);
    static const char form[] =
        "grant_type=client_credentials&client_id=11111111-2222-3333-4444-555555555555"
        "&client_secret=fake-client-secret&scope=https%3A%2F%2Fdynamicsessions.io%2F.default";
    http_request *r = http_request_new(cloud_http, "POST", url);
    http_request_add_header(r, "Content-Type", "application/x-www-form-urlencoded");
    http_request_set_body(r, form, sizeof(form) - 1);
    struct http_callbacks cb = {.on_done = entra_done};
    http_request_set_callbacks(r, &cb, e);
    if (http_request_start(r, err, sizeof(err)) != 0) {
        e->done = NULL;
        done(done_arg, -1, NULL, err);
    }
}

static int mem_sink(void *arg, const char *data, size_t len)
{
    buf_append(arg, data, len);
    return AGENT_IO_OK;
}

struct mem_src {
    const struct buf *b;
    size_t off;
};

static size_t mem_read(void *arg, char *dst, size_t cap)
{
    struct mem_src *m = arg;
    size_t n = m->b->len - m->off < cap ? m->b->len - m->off : cap;
    memcpy(dst, m->b->data + m->off, n);
    m->off += n;
    return n;
}

TEST_CASE(azure_pool_bearer_refresh)
{
    if (!have_ours)
        SKIP(skip_ours);
    char dir[400], why[512], agent_abs[PATH_MAX];
    if (!realpath(agent_bin, agent_abs))
        snprintf(agent_abs, sizeof(agent_abs), "%s", agent_bin);
    snprintf(dir, sizeof(dir), "%s/azure", tmp);
    mkdir(dir, 0755);
    const char *args[] = {"--agent", agent_abs, "--root", dir, "--pools", "data-app", NULL};
    const char *needs[] = {NULL};
    struct fake_proc az;
    int rc = fake_proc_start(&az, "tests/fakes/azure_sessions.js", args, needs, why, sizeof(why));
    if (rc == 1)
        SKIP(why);
    CHECK_EQ_INT(rc, 0);
    if (rc != 0) {
        printf("  %s\n", why);
        return;
    }
    struct entra e = {0};
    char pool[128], meta[128], err[256];
    fake_proc_field(&az, "login", e.login, sizeof(e.login));
    fake_proc_field(&az, "data-app", pool, sizeof(pool));
    fake_proc_field(&az, "metadata", meta, sizeof(meta));
    cloud_http = http_client_new(base);
    struct agent_client_opts o = {.base_url = pool,
                                  .token = TOKEN, /* not sent: the pool takes Authorization */
                                  .query = "identifier=job-42-%7Bturn%7D",
                                  .auth = {.get = entra_get, .arg = &e}};
    agent_client *c = agent_client_new(base, &o, err, sizeof(err));
    CHECK(c != NULL);
    struct ready_res rr = {0};
    CHECK(agent_client_ready(c, on_ready, &rr, err, sizeof(err)) == 0);
    CHECK(run_until(&rr.done, 30) == 0 && rr.rc == 0);
    if (rr.rc)
        printf("  ready: %s\n", rr.err);
    CHECK_EQ_INT(agent_client_proto(c), AGENT_PROTO_OURS);
    struct exec_res r;
    res_init(&r);
    CHECK(run_cmd(c, "mkdir -p ws && echo pooled > ws/a.txt && cat ws/a.txt", 0, &r, 20) == 0);
    CHECK_STR(r.out.data, "pooled\n");
    res_release(&r);
    CHECK_EQ_INT(e.calls, 1);

    /* the Entra token expires: the pool answers 401, one new token; then archives both ways */
    struct lres l = {0};
    buf_init(&l.body);
    char u[256];
    snprintf(u, sizeof(u), "%s/_fake/expire-tokens", meta);
    http_request *x = http_request_new(cloud_http, "POST", u);
    struct http_callbacks cb = {.on_done = lambda_done};
    http_request_set_callbacks(x, &cb, &l);
    CHECK(http_request_start(x, err, sizeof(err)) == 0 && run_until(&l.done, 10) == 0);
    buf_release(&l.body);
    struct buf tarball;
    buf_init(&tarball);
    struct file_sink done_out = {0};
    /* the session's working directory is its own folder: archive from there */
    res_init(&r);
    CHECK(run_cmd(c, "pwd", 0, &r, 20) == 0);
    char root[400];
    snprintf(root, sizeof(root), "%.*s", (int)(r.out.len ? r.out.len - 1 : 0),
             r.out.data ? r.out.data : "");
    res_release(&r);
    const char *paths[] = {"ws", NULL};
    struct agent_archive_spec spec = {.root = root, .paths = paths, .compression = "gzip"};
    struct agent_sink sink = {.write = mem_sink, .arg = &tarball};
    CHECK(agent_archive_out(c, &spec, &sink, on_archive_done, &done_out, err, sizeof(err)) != NULL);
    CHECK(run_until(&done_out.done, 30) == 0 && done_out.rc == 0);
    CHECK_EQ_INT(e.calls, 2);
    CHECK_EQ_INT(e.refreshes, 1);
    struct mem_src ms = {&tarball, 0};
    struct agent_source src = {.read = mem_read, .arg = &ms};
    struct file_sink done_in = {0};
    char dest[500];
    snprintf(dest, sizeof(dest), "%s/restored", root);
    CHECK(agent_archive_in(c, dest, 0, &src, on_archive_in, &done_in, err, sizeof(err)) != NULL);
    CHECK(run_until(&done_in.done, 30) == 0 && done_in.rc == 0);
    CHECK(done_in.entries >= 2);
    res_init(&r);
    CHECK(run_cmd(c, "cat restored/ws/a.txt", 0, &r, 20) == 0);
    CHECK_STR(r.out.data, "pooled\n");
    res_release(&r);
    buf_release(&tarball);
    agent_client_free(c);
    http_client_free(cloud_http);
    cloud_http = NULL;
    fake_proc_stop(&az);
}

TEST_CASE(wrong_token_clearly_reported)
{
    if (!have_ours)
        SKIP(skip_ours);
    agent_client *c = client_for(T_OURS, "not-the-token-123", NULL);
    CHECK(c != NULL);
    if (!c)
        return;
    struct ready_res rr = {0};
    char err[256];
    /* /ready needs no token */
    CHECK(agent_client_ready(c, on_ready, &rr, err, sizeof(err)) == 0);
    CHECK(run_until(&rr.done, 10) == 0 && rr.rc == 0);
    struct exec_res r;
    res_init(&r);
    CHECK(run_cmd(c, "echo never", 0, &r, 20) == 0);
    CHECK_EQ_INT(r.st, EXEC_ERROR);
    CHECK(strstr(r.err, "HTTP 401") != NULL);
    CHECK(strstr(r.err, "bearer token was refused") != NULL);
    CHECK(strstr(r.err, "not-the-token") == NULL);
    CHECK(strstr(r.err, TOKEN) == NULL);
    printf("  reported: %s\n", r.err);
    res_release(&r);
    struct done_res d = {0};
    CHECK(agent_file_write(c, "/tmp/never", "x", 1, on_done, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == -1);
    CHECK(strstr(d.err, "HTTP 401") != NULL);
    agent_client_free(c);
    /* and no token at all */
    c = client_for(T_OURS, NULL, NULL);
    d.done = 0;
    CHECK(agent_file_write(c, "/tmp/never", "x", 1, on_done, &d, err, sizeof(err)) == 0);
    CHECK(run_until(&d.done, 10) == 0 && d.rc == -1);
    CHECK(strstr(d.err, "wants a bearer token") != NULL);
    agent_client_free(c);
}

TEST_CASE(degraded_mode_on_the_plain_agent)
{
    if (!have_node)
        SKIP(skip_node);
    agent_client *c = ready_client(T_PLAIN_UNIX);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_EQ_INT(agent_client_proto(c), AGENT_PROTO_PLAIN);
    char err[256];
    struct exec_req req = {.cmd = "true"};
    struct start_res s = {0};
    CHECK(agent_run_start(c, &req, on_started, &s, err, sizeof(err)) == -1);
    CHECK(strstr(err, "not supported") != NULL);
    struct exec_cbs cbs = {.on_output = on_output, .on_exit = on_exit_cb};
    CHECK(agent_run_attach(c, "0123456789abcdef0123456789abcdef", 0, &cbs, err, sizeof(err)) ==
          NULL);
    struct agent_archive_spec spec = {.root = tmp};
    struct agent_sink sink = {.write = sink_write};
    CHECK(agent_archive_out(c, &spec, &sink, on_archive_done, NULL, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "archives not supported") != NULL);
    struct agent_source source = {.read = source_read};
    CHECK(agent_archive_in(c, tmp, 0, &source, on_archive_in, NULL, err, sizeof(err)) == NULL);
    struct done_res d = {0};
    CHECK(agent_run_signal(c, "0123", "TERM", on_done, &d, err, sizeof(err)) == -1);
    /* exec still works, over the unix socket */
    struct exec_res r;
    res_init(&r);
    CHECK(run_cmd(c, "echo plain; exit 3", 0, &r, 20) == 0);
    CHECK_EQ_INT(r.st, EXEC_EXITED);
    CHECK_EQ_INT(r.code, 3);
    CHECK_STR(r.out.data, "plain\n");
    res_release(&r);
    agent_client_free(c);
}

/* ---------------------------------------------------------------- main */

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_setup(LOG_WARN, LOG_FMT_PLAIN, stderr);
    snprintf(tmp, sizeof(tmp), "%s/agent-client-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    /* a binary file of 3 MiB + 17 with every byte value, for the byte-exact exec check */
    char p[400];
    snprintf(p, sizeof(p), "%s/bin.dat", tmp);
    FILE *f = fopen(p, "wb");
    for (size_t i = 0; f && i < 3 * MiB + 17; i++)
        fputc((int)(unsigned char)(i * 7 + i / 256), f);
    if (f)
        fclose(f);
    base = event_base_new();
    start_servers();
    if (!have_ours)
        printf("skipping the real agent's cases: %s\n", skip_ours);
    if (!have_node)
        printf("skipping the node cases: %s\n", skip_node);

    RUN(ready_detects_features);
    RUN(exec_streams_in_order_and_byte_exact);
    RUN(exec_exit_codes);
    RUN(exec_timeout);
    RUN(exec_kill_takes_the_process_tree);
    RUN(files_round_trip_and_max);
    RUN(run_reattach_after_client_dropped);
    RUN(archive_round_trip_bounded_memory);
    RUN(archive_in_of_a_compressible_workspace);
    RUN(auth_hook_refreshes_once_on_401);
    RUN(auth_hook_async_shared_by_concurrent_requests);
    RUN(client_freed_with_a_shared_http_client);
    RUN(pool_bearer_and_identifier_query);
    RUN(lambda_endpoint_proxy_token_refresh);
    RUN(azure_pool_bearer_refresh);
    RUN(wrong_token_clearly_reported);
    RUN(degraded_mode_on_the_plain_agent);

    child_stop(&fwd_cut);
    child_stop(&plain);
    child_stop(&plain_unix);
    child_stop(&plain_auth);
    child_stop(&plain_pool);
    child_stop(&ours);
    event_base_free(base);
    nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_report();
}
