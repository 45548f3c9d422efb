/* sandboxctl against a real redis-server: the CLI binary runs as a child process with
 * REDIS_URL and SANDBOX_QUEUE_PREFIX set; results the worker would publish are written by
 * hand with redis-cli, in the shapes queue/scripts.c writes them. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "lib/buf.h"
#include "tests/support/redis_server.h"
#include "tests/support/test.h"
#include "tests/support/worker_proc.h"

#define P            "{ctltest}"
#define RUN_LIMIT_MS 60000 /* a CLI run that takes longer is a failure (killed) */

static struct test_redis *srv;
static const char *ctl_prefix = "ctltest"; /* SANDBOX_QUEUE_PREFIX of the CLI runs */
static char ctl_path[1024];
static char job_dir[256];

static const char job_j1[] = "{\"id\":\"j1\",\"thread\":\"t1\",\"feature\":\"data-app\","
                             "\"tenant\":{\"organization\":\"org\",\"project\":\"prj\"},"
                             "\"steps\":[{\"type\":\"run\",\"name\":\"build\",\"cmd\":\"echo "
                             "hi\"}]}";

static const char result_ok[] =
    "{\"id\":\"jw\",\"thread\":\"t1\",\"status\":\"succeeded\",\"attempt\":1,\"worker\":\"w1\","
    "\"steps\":[{\"name\":\"build\",\"type\":\"run\",\"status\":\"ok\",\"exit_code\":0,"
    "\"stdout\":\"hi\\n\",\"stdout_bytes\":3,\"stderr\":\"\",\"stderr_bytes\":0,"
    "\"duration_ms\":12}],\"sandbox\":{\"provider\":\"docker\",\"state\":\"suspended\","
    "\"resumed\":false,\"snapshot\":{\"kind\":\"s3-tar\",\"key\":\"t1/1.tar.zst\"}},"
    "\"timings\":{\"queued_ms\":5,\"acquire_ms\":100,\"run_ms\":12,\"suspend_ms\":40,"
    "\"total_ms\":160}}";

static const char result_failed[] =
    "{\"id\":\"jf\",\"thread\":\"t1\",\"status\":\"failed\",\"attempt\":1,\"worker\":\"w1\","
    "\"error\":{\"code\":\"step_failed\",\"message\":\"step build exited with status 2\"},"
    "\"timings\":{\"queued_ms\":5,\"total_ms\":160}}";

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- running the CLI ---- */

struct proc {
    pid_t pid;
    int out, err, in;
};

struct run {
    int rc; /* exit status; -1 when killed or not run */
    struct buf out, err;
};

static void run_release(struct run *r)
{
    buf_release(&r->out);
    buf_release(&r->err);
}

/* Starts sandboxctl with args (NULL-terminated). url may be NULL (the server's). */
static int proc_start(struct proc *p, const char *url, const char *const *args)
{
    int o[2], e[2], i[2];
    if (pipe(o) != 0 || pipe(e) != 0 || pipe(i) != 0)
        return -1;
    p->pid = fork();
    if (p->pid < 0)
        return -1;
    if (p->pid == 0) {
        dup2(i[0], 0);
        dup2(o[1], 1);
        dup2(e[1], 2);
        close(i[1]);
        close(o[0]);
        close(e[0]);
        setenv("REDIS_URL", url ? url : test_redis_url(srv), 1);
        setenv("SANDBOX_QUEUE_PREFIX", ctl_prefix, 1);
        unsetenv("LIGHTDASH_LOG_LEVEL");
        char *argv[16]; /* copies: execv takes char *const[] (the child execs or exits) */
        int n = 0;
        argv[n++] = ctl_path;
        for (; args[n - 1] && n < 15; n++)
            argv[n] = xstrdup(args[n - 1]);
        argv[n] = NULL;
        execv(ctl_path, argv);
        _exit(127);
    }
    close(i[0]);
    close(o[1]);
    close(e[1]);
    p->in = i[1];
    p->out = o[0];
    p->err = e[0];
    return 0;
}

/* Writes stdin text (may be NULL), closes stdin, collects output until exit. */
static void proc_finish(struct proc *p, const char *input, struct run *r)
{
    buf_init(&r->out);
    buf_init(&r->err);
    r->rc = -1;
    if (input) {
        size_t n = strlen(input), off = 0;
        while (off < n) {
            ssize_t w = write(p->in, input + off, n - off);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
    }
    close(p->in);
    int64_t end = mono_ms() + RUN_LIMIT_MS;
    int open_out = 1, open_err = 1;
    while (open_out || open_err) {
        /* A stream at EOF is left out (fd -1 is ignored by poll). */
        struct pollfd fds[2] = {{open_out ? p->out : -1, POLLIN, 0},
                                {open_err ? p->err : -1, POLLIN, 0}};
        int64_t left = end - mono_ms();
        if (left <= 0) {
            printf("  sandboxctl did not finish within %d ms; killed\n", RUN_LIMIT_MS);
            kill(p->pid, SIGKILL);
            break;
        }
        if (poll(fds, 2, (int)left) < 0 && errno != EINTR)
            break;
        for (int k = 0; k < 2; k++) {
            if (fds[k].fd < 0 || !(fds[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[4096];
            ssize_t got = read(fds[k].fd, chunk, sizeof(chunk));
            if (got > 0)
                buf_append(k ? &r->err : &r->out, chunk, (size_t)got);
            else if (k)
                open_err = 0;
            else
                open_out = 0;
        }
    }
    close(p->out);
    close(p->err);
    int st = 0;
    if (waitpid(p->pid, &st, 0) == p->pid && WIFEXITED(st))
        r->rc = WEXITSTATUS(st);
    if (!r->out.data)
        buf_puts(&r->out, "");
    if (!r->err.data)
        buf_puts(&r->err, "");
}

static void ctl(struct run *r, const char *input, const char *const *args)
{
    struct proc p;
    if (proc_start(&p, NULL, args) != 0) {
        buf_init(&r->out);
        buf_init(&r->err);
        buf_puts(&r->out, "");
        buf_puts(&r->err, "fork failed");
        r->rc = -1;
        return;
    }
    proc_finish(&p, input, r);
}

#define CTL(r, input, ...)                                                                         \
    do {                                                                                           \
        const char *const a_[] = {__VA_ARGS__, NULL};                                              \
        ctl(r, input, a_);                                                                         \
    } while (0)

/* Prints the run when a check on it failed, so a failure explains itself. */
static void show(const char *what, const struct run *r)
{
    if (test_failed_now)
        printf("  [%s] rc=%d\n  stdout: %s\n  stderr: %s\n", what, r->rc, r->out.data, r->err.data);
}

static char *cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* redis-cli through the test server; trailing output as a malloc'd string ("" on failure). */
static char *cli(const char *fmt, ...)
{
    struct buf b;
    buf_init(&b);
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    char *out = test_redis_cli(srv, "%s", b.data);
    buf_release(&b);
    return out ? out : xstrdup("");
}

static void cli0(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void cli0(const char *fmt, ...)
{
    struct buf b;
    buf_init(&b);
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    free(test_redis_cli(srv, "%s", b.data));
    buf_release(&b);
}

static long long cli_int(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static long long cli_int(const char *fmt, ...)
{
    struct buf b;
    buf_init(&b);
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    char *out = test_redis_cli(srv, "%s", b.data);
    long long v = out ? strtoll(out, NULL, 10) : -1;
    free(out);
    buf_release(&b);
    return v;
}

static char *write_file(const char *name, const char *text)
{
    struct buf path;
    buf_init(&path);
    buf_printf(&path, "%s/%s", job_dir, name);
    FILE *f = fopen(path.data, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return buf_detach(&path);
}

/* Writes what the completion script writes for a final job: job hash and done event. */
static void publish_final(const char *job, const char *status, const char *result, int event)
{
    cli0("HSET " P ":job:%s phase done status %s result '%s' finished_at 1", job, status, result);
    if (event)
        cli0("XADD " P ":events:%s * type done status %s result '%s'", job, status, result);
}

/* ---- tests ---- */

TEST_CASE(usage_errors)
{
    struct run r;
    const char *const none[] = {NULL};
    ctl(&r, NULL, none);
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strstr(r.err.data, "usage: sandboxctl"));
    show("no args", &r);
    run_release(&r);

    CTL(&r, NULL, "--help");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "enqueue") && strstr(r.out.data, "replay"));
    run_release(&r);

    CTL(&r, NULL, "frobnicate");
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strstr(r.err.data, "unknown command"));
    run_release(&r);

    CTL(&r, NULL, "wait");
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strstr(r.err.data, "missing JOB"));
    show("wait without job", &r);
    run_release(&r);

    CTL(&r, NULL, "wait", "j1", "--timeout-ms", "soon");
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strstr(r.err.data, "--timeout-ms"));
    run_release(&r);

    CTL(&r, NULL, "watch", "j1", "--bogus");
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strstr(r.err.data, "unknown option --bogus"));
    run_release(&r);

    CTL(&r, NULL, "job", "bad id!");
    CHECK_EQ_INT(r.rc, 2);
    run_release(&r);

    static const char *const cmds[] = {"enqueue", "watch",  "wait",  "cancel",
                                       "job",     "thread", "stats", "dead"};
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        CTL(&r, NULL, cmds[i], "--help");
        CHECK_EQ_INT(r.rc, 0);
        CHECK(strncmp(r.out.data, "usage: sandboxctl ", 18) == 0 && strstr(r.out.data, cmds[i]));
        show(cmds[i], &r);
        run_release(&r);
    }
}

TEST_CASE(connect_failure)
{
    /* Port 1 on loopback: nothing listens there, the connect is refused at once. */
    struct run r;
    struct proc p;
    const char *const args[] = {"stats", NULL};
    if (proc_start(&p, "redis://127.0.0.1:1", args) != 0)
        SKIP("fork failed");
    proc_finish(&p, NULL, &r);
    CHECK_EQ_INT(r.rc, 4);
    CHECK(strstr(r.err.data, "cannot connect to Redis"));
    CHECK(strchr(r.err.data, '\n') == r.err.data + r.err.len - 1); /* one line */
    show("connect failure", &r);
    run_release(&r);
}

TEST_CASE(enqueue_valid_and_duplicate)
{
    struct run r;
    char *path = write_file("j1.json", job_j1);
    CTL(&r, NULL, "enqueue", path);
    CHECK_EQ_INT(r.rc, 0);
    char entry[64] = "";
    CHECK(sscanf(r.out.data, "j1 %63s", entry) == 1);
    show("enqueue", &r);
    run_release(&r);

    CHECK_EQ_INT(cli_int("XLEN " P ":jobs"), 1);
    char *s = cli("XRANGE " P ":jobs - +");
    CHECK(strstr(s, entry) && strstr(s, "\"id\":\"j1\""));
    free(s);
    s = cli("HGET " P ":job:j1 phase");
    CHECK_STR(s, "queued");
    free(s);
    s = cli("HGET " P ":job:j1 entry");
    CHECK_STR(s, entry);
    free(s);
    CHECK(cli_int("TTL " P ":job:j1") > 0);

    /* The same id again: refused, nothing added. */
    CTL(&r, NULL, "enqueue", path);
    CHECK(r.rc != 0);
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err.data, "j1 already exists") && strstr(r.err.data, "queued"));
    show("enqueue again", &r);
    run_release(&r);
    CHECK_EQ_INT(cli_int("XLEN " P ":jobs"), 1);

    /* From standard input, with --json. */
    struct buf j2;
    buf_init(&j2);
    buf_puts(&j2, job_j1);
    char *at = strstr(j2.data, "\"j1\"");
    at[2] = '2';
    CTL(&r, j2.data, "enqueue", "-", "--json");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strncmp(r.out.data, "{\"id\":\"j2\",\"entry\":\"", 20) == 0);
    show("enqueue stdin", &r);
    run_release(&r);
    buf_release(&j2);
    CHECK_EQ_INT(cli_int("XLEN " P ":jobs"), 2);
    free(path);
}

TEST_CASE(enqueue_invalid)
{
    struct run r;
    long long before = cli_int("XLEN " P ":jobs");
    char *path = write_file(
        "bad.json", "{\"id\":\"jb\",\"thread\":\"t1\",\"feature\":\"data-app\",\"tenant\":"
                    "{\"organization\":\"o\",\"project\":\"p\"},\"steps\":[{\"type\":\"run\"}]}");
    CTL(&r, NULL, "enqueue", path);
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strstr(r.err.data, "invalid job: steps[0].cmd: is required"));
    show("invalid", &r);
    run_release(&r);

    CTL(&r, "{\"id\":\"jb\",", "enqueue");
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strstr(r.err.data, "not valid JSON"));
    run_release(&r);

    CTL(&r,
        "{\"id\":\"jb\",\"thread\":\"t\",\"feature\":\"data-app\",\"tenant\":{\"organization\":"
        "\"o\",\"project\":\"p\"},\"colour\":1}",
        "enqueue");
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strstr(r.err.data, "colour"));
    show("unknown field", &r);
    run_release(&r);

    CTL(&r, NULL, "enqueue", "/nonexistent/job.json");
    CHECK_EQ_INT(r.rc, 2);
    run_release(&r);

    CHECK_EQ_INT(cli_int("XLEN " P ":jobs"), before);
    CHECK_EQ_INT(cli_int("EXISTS " P ":job:jb"), 0);
    free(path);
}

TEST_CASE(cancel)
{
    struct run r;
    CTL(&r, NULL, "cancel", "j1");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "cancel requested for job j1 (phase queued)"));
    show("cancel", &r);
    run_release(&r);
    char *s = cli("GET " P ":cancel:j1");
    CHECK_STR(s, "1");
    free(s);
    long long ttl = cli_int("TTL " P ":cancel:j1");
    CHECK(ttl > 600000 && ttl <= 604800); /* default: WORKER_JOB_TTL_S */

    /* An unknown id is an error, not a silent success; --force sets the key anyway. */
    CTL(&r, NULL, "cancel", "jx", "--ttl-s", "60");
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err.data, "no job jx"));
    show("cancel unknown", &r);
    run_release(&r);
    CHECK_EQ_INT(cli_int("EXISTS " P ":cancel:jx"), 0);
    CTL(&r, NULL, "cancel", "jx", "--ttl-s", "60", "--force");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "unknown here"));
    run_release(&r);
    ttl = cli_int("TTL " P ":cancel:jx");
    CHECK(ttl > 0 && ttl <= 60);

    publish_final("jdone", "succeeded", result_ok, 1);
    CTL(&r, NULL, "cancel", "jdone");
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err.data, "already finished (succeeded)"));
    run_release(&r);
    CHECK_EQ_INT(cli_int("EXISTS " P ":cancel:jdone"), 0);
}

TEST_CASE(wait_results)
{
    struct run r;
    /* Already final: the job hash and the done event. */
    publish_final("jw", "succeeded", result_ok, 1);
    CTL(&r, NULL, "wait", "jw", "--timeout-ms", "30000");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strncmp(r.out.data, result_ok, strlen(result_ok)) == 0);
    show("wait succeeded", &r);
    run_release(&r);

    publish_final("jf", "failed", result_failed, 1);
    CTL(&r, NULL, "wait", "jf");
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.out.data, "step_failed"));
    run_release(&r);

    /* Only the hash (events expired): still the result. */
    publish_final("jh", "cancelled", "{\"id\":\"jh\",\"status\":\"cancelled\"}", 0);
    CTL(&r, NULL, "wait", "jh", "--timeout-ms", "30000");
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.out.data, "\"cancelled\""));
    show("wait hash only", &r);
    run_release(&r);

    /* Not final within the timeout: 3. */
    cli0("HSET " P ":job:jq phase running");
    CTL(&r, NULL, "wait", "jq", "--timeout-ms", "300");
    CHECK_EQ_INT(r.rc, 3);
    CHECK(strstr(r.err.data, "timed out"));
    run_release(&r);

    /* Waiting first, result published while it waits (or before it reads: same outcome). */
    struct proc p;
    const char *const args[] = {"wait", "jq", "--timeout-ms", "60000", NULL};
    CHECK(proc_start(&p, NULL, args) == 0);
    cli0("XADD " P ":events:jq * type started sandbox sb-1 resumed false");
    cli0("XADD " P ":events:jq * type retry status retrying result '{}'");
    publish_final("jq", "succeeded", result_ok, 1);
    proc_finish(&p, NULL, &r);
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strncmp(r.out.data, result_ok, strlen(result_ok)) == 0);
    show("wait live", &r);
    run_release(&r);
}

TEST_CASE(watch_events)
{
    struct run r;
    struct proc p;
    const char *const args[] = {"watch", "jv", "--timeout-ms", "60000", NULL};
    cli0("HSET " P ":job:jv phase queued");
    CHECK(proc_start(&p, NULL, args) == 0);
    cli0("XADD " P ":events:jv * type started sandbox sb-9 resumed true");
    cli0("XADD " P ":events:jv * type step_started step 0 name build kind run");
    cli0("XADD " P ":events:jv * type output step 0 stream stdout data \"hello \"");
    cli0("XADD " P ":events:jv * type output step 0 stream stdout data \"world\\n\"");
    cli0("XADD " P ":events:jv * type output step 0 stream stderr data \"warning: x\\n\"");
    cli0("XADD " P ":events:jv * type output step 0 stream stdout data \"no newline\"");
    cli0("XADD " P ":events:jv * type step_finished step 0 name build status failed "
         "exit_code 2");
    publish_final("jv", "failed", result_failed, 1);
    proc_finish(&p, NULL, &r);
    CHECK_EQ_INT(r.rc, 1);
    const char *want = "started sandbox=sb-9 resumed=true\n"
                       "step_started step=0 name=build kind=run\n"
                       "hello world\n"
                       "no newline\n"
                       "step_finished step=0 name=build status=failed exit_code=2\n"
                       "done status=failed error=step_failed\n";
    CHECK_STR(r.out.data, want);
    CHECK_STR(r.err.data, "warning: x\n");
    show("watch", &r);
    run_release(&r);

    /* Already finished: prints everything and exits; --json gives one object per line. */
    CTL(&r, NULL, "watch", "jv", "--json");
    CHECK_EQ_INT(r.rc, 1);
    int lines = 0;
    for (const char *s = r.out.data; *s; s++)
        lines += *s == '\n';
    CHECK_EQ_INT(lines, 8);
    CHECK(strstr(r.out.data, "\"type\":\"output\",\"step\":\"0\",\"stream\":\"stderr\","
                             "\"data\":\"warning: x\\n\""));
    CHECK(strstr(r.out.data, "\"result\":{\"id\":\"jf\""));
    show("watch json", &r);
    run_release(&r);

    /* A succeeded job exits 0; --from skips what was seen. */
    publish_final("jw2", "succeeded", result_ok, 1);
    char *first = cli("XRANGE " P ":events:jw2 - + COUNT 1");
    char entry[64] = "";
    sscanf(first, "%63s", entry);
    free(first);
    CTL(&r, NULL, "watch", "jw2");
    CHECK_EQ_INT(r.rc, 0);
    CHECK_STR(r.out.data, "done status=succeeded\n");
    run_release(&r);
    cli0("HSET " P ":job:jw3 phase running");
    cli0("XADD " P ":events:jw3 * type step_started step 0 name a kind run");
    CTL(&r, NULL, "watch", "jw3", "--timeout-ms", "200");
    CHECK_EQ_INT(r.rc, 3);
    CHECK_STR(r.out.data, "step_started step=0 name=a kind=run\n");
    show("watch timeout", &r);
    run_release(&r);

    /* --timestamps: the event's time and the time since the first event shown. */
    CTL(&r, NULL, "watch", "jv", "--timestamps");
    CHECK_EQ_INT(r.rc, 1);
    {
        int hh, mm, ss, ms;
        double el;
        char word[32] = "";
        CHECK_EQ_INT(
            sscanf(r.out.data, "%2d:%2d:%2d.%3d +%lfs %31s", &hh, &mm, &ss, &ms, &el, word), 6);
        CHECK(el == 0.0);
        CHECK_STR(word, "started");
        const char *last = strstr(r.out.data, "s done status=failed error=step_failed\n");
        CHECK(last != NULL);
    }
    show("watch timestamps", &r);
    run_release(&r);
}

/* wait on a terminal: a spinner with the phase and the time waited on stderr, cleared at the
 * end; the result on stdout as always. */
TEST_CASE(wait_spinner_on_terminal)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    CHECK(m >= 0 && grantpt(m) == 0 && unlockpt(m) == 0);
    if (m < 0)
        return;
    const char *sname = ptsname(m);
    cli0("DEL " P ":job:jsp " P ":events:jsp");
    cli0("HSET " P ":job:jsp phase running");
    int o[2];
    CHECK(pipe(o) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        int sl = open(sname, O_RDWR);
        dup2(sl, 2);
        dup2(o[1], 1);
        close(o[0]);
        setenv("REDIS_URL", test_redis_url(srv), 1);
        setenv("SANDBOX_QUEUE_PREFIX", ctl_prefix, 1);
        execl(ctl_path, ctl_path, "wait", "jsp", "--timeout-ms", "20000", (char *)NULL);
        _exit(127);
    }
    close(o[1]);
    sleep_ms(800);
    publish_final("jsp", "succeeded", result_ok, 1);
    struct buf out, tty;
    buf_init(&out);
    buf_init(&tty);
    char chunk[4096];
    ssize_t n;
    while ((n = read(o[0], chunk, sizeof(chunk))) > 0)
        buf_append(&out, chunk, (size_t)n);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    struct pollfd pf = {m, POLLIN, 0};
    while (poll(&pf, 1, 100) > 0 && (n = read(m, chunk, sizeof(chunk))) > 0)
        buf_append(&tty, chunk, (size_t)n);
    CHECK(out.data && strncmp(out.data, result_ok, strlen(result_ok)) == 0);
    CHECK(tty.data && strstr(tty.data, " job jsp running ") && strstr(tty.data, "s"));
    CHECK(tty.data && strstr(tty.data, "\r\033[K"));
    if (test_failed_now)
        printf("  tty: %s\n", tty.data ? tty.data : "(nothing)");
    buf_release(&out);
    buf_release(&tty);
    close(o[0]);
    close(m);

    /* Not a terminal: nothing on stderr (the other tests' wait runs check stdout only). */
    struct run r;
    CTL(&r, NULL, "wait", "jsp");
    CHECK_EQ_INT(r.rc, 0);
    CHECK_STR(r.err.data, "");
    run_release(&r);
}

TEST_CASE(stats_numbers)
{
    cli0("DEL " P ":jobs " P ":delayed " P ":dead " P ":results");
    struct run r;
    CTL(&r, NULL, "stats");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "jobs 0\n") && strstr(r.out.data, "group none"));
    show("stats empty", &r);
    run_release(&r);

    for (int i = 0; i < 3; i++)
        cli0("XADD " P ":jobs * job '{}'");
    cli0("XGROUP CREATE " P ":jobs workers 0");
    cli0("XREADGROUP GROUP workers w1 COUNT 1 STREAMS " P ":jobs >");
    cli0("ZADD " P ":delayed 1700000000000 \"2\\n{}\"");
    cli0("XADD " P ":dead * id j reason r job '{}'");
    cli0("XADD " P ":results * id a status succeeded");
    cli0("XADD " P ":results * id b status failed");
    CTL(&r, NULL, "stats");
    CHECK_EQ_INT(r.rc, 0);
    const char *want[] = {"jobs 3\n",
                          "group workers\n",
                          "consumers 1\n",
                          "pending 1\n",
                          "lag 2\n",
                          "delayed 1\n",
                          "delayed_next_ms 1700000000000\n",
                          "dead 1\n",
                          "results 2\n",
                          "paused no\n",
                          "workers 0\n",
                          "consumer w1 pending=1 idle_ms="};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (!strstr(r.out.data, want[i])) {
            printf("  missing: %s", want[i]);
            CHECK(0);
        }
    {
        /* The one pending entry was added a moment ago. */
        const char *age = strstr(r.out.data, "oldest_pending_age_s ");
        double v = age ? strtod(age + 21, NULL) : -1;
        CHECK(age && v >= 0 && v < 60);
    }
    show("stats", &r);
    run_release(&r);

    CTL(&r, NULL, "stats", "--json");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "\"lag\":\t2") || strstr(r.out.data, "\"lag\": 2"));
    show("stats json", &r);
    run_release(&r);
}

TEST_CASE(dead_list_replay)
{
    cli0("DEL " P ":jobs " P ":dead");
    const char *job = "{\"id\":\"jd\",\"thread\":\"t1\",\"feature\":\"data-app\",\"tenant\":"
                      "{\"organization\":\"o\",\"project\":\"p\"}}";
    /* What the completion script leaves for a job whose attempts ran out. */
    publish_final("jd", "failed", result_failed, 1);
    cli0("SET " P ":cancel:jd 1");
    cli0("XADD " P ":dead * id jd thread t1 entry 1-1 reason \"attempts exhausted (3 of 3): "
         "acquire_failed\" job '%s'",
         job);
    cli0("XADD " P ":dead * reason \"malformed delayed entry\" job nonsense");
    char *ids = cli("XRANGE " P ":dead - +");
    char e1[64] = "", e2[64] = "";
    sscanf(ids, "%63s", e1);
    char *second = strstr(ids, "nonsense");
    free(ids);
    CHECK(second != NULL);
    ids = cli("XREVRANGE " P ":dead + - COUNT 1");
    sscanf(ids, "%63s", e2);
    free(ids);

    struct run r;
    CTL(&r, NULL, "dead");
    CHECK_EQ_INT(r.rc, 0);
    struct buf want;
    buf_init(&want);
    buf_printf(&want,
               "%s id=jd thread=t1 reason=attempts exhausted (3 of 3): acquire_failed\n"
               "%s id= thread= reason=malformed delayed entry\n",
               e1, e2);
    CHECK_STR(r.out.data, want.data);
    buf_release(&want);
    show("dead list", &r);
    run_release(&r);

    CTL(&r, NULL, "dead", "list", "--count", "1", "--json");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "\"job\":\"{\\\"id\\\":\\\"jd\\\"") && !strstr(r.out.data, e2));
    /* One "entry" key, naming the dead-letter entry `dead replay` takes; the jobs stream
     * entry the job came from is "job_entry". A duplicate key makes jq (last wins) hand a
     * script the wrong id. */
    {
        const char *k = strstr(r.out.data, "\"entry\":");
        CHECK(k && !strstr(k + 1, "\"entry\":"));
        cJSON *o = cJSON_Parse(r.out.data);
        CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "entry")), e1);
        CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "job_entry")), "1-1");
        cJSON_Delete(o);
    }
    show("dead list json", &r);
    run_release(&r);

    CTL(&r, NULL, "dead", "list", "--after", e1);
    CHECK_EQ_INT(r.rc, 0);
    CHECK(!strstr(r.out.data, e1) && strstr(r.out.data, e2));
    run_release(&r);

    CTL(&r, NULL, "dead", "replay", e1);
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "job jd enqueued as "));
    show("replay", &r);
    run_release(&r);
    CHECK_EQ_INT(cli_int("XLEN " P ":dead"), 1);
    CHECK_EQ_INT(cli_int("XLEN " P ":jobs"), 1);
    char *s = cli("XRANGE " P ":jobs - +");
    CHECK(strstr(s, job) && strstr(s, "attempt\n1"));
    free(s);
    s = cli("HGET " P ":job:jd phase");
    CHECK_STR(s, "queued");
    free(s);
    CHECK_EQ_INT(cli_int("HEXISTS " P ":job:jd status"), 0);
    CHECK_EQ_INT(cli_int("EXISTS " P ":events:jd"), 0);
    CHECK_EQ_INT(cli_int("EXISTS " P ":cancel:jd"), 0);

    /* Gone now; and not a stream id at all is a usage error. */
    CTL(&r, NULL, "dead", "replay", e1);
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err.data, "no dead-letter entry"));
    run_release(&r);
    CTL(&r, NULL, "dead", "replay", "latest");
    CHECK_EQ_INT(r.rc, 2);
    run_release(&r);

    /* An entry whose job id is queued again is left alone. */
    cli0("XADD " P ":dead * id jd thread t1 reason again job '%s'", job);
    ids = cli("XREVRANGE " P ":dead + - COUNT 1");
    char e3[64] = "";
    sscanf(ids, "%63s", e3);
    free(ids);
    CTL(&r, NULL, "dead", "replay", e3);
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err.data, "active again (queued)"));
    run_release(&r);
    CHECK_EQ_INT(cli_int("XLEN " P ":jobs"), 1);

    /* Without a job id (the malformed one): replayed, no job hash touched. */
    CTL(&r, NULL, "dead", "replay", e2);
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "job (no id) enqueued"));
    run_release(&r);
    CHECK_EQ_INT(cli_int("XLEN " P ":jobs"), 2);
}

/* Dead letters are shown with their secrets masked, also ones stored before the worker
 * masked them itself. */
TEST_CASE(dead_list_masks_secrets)
{
    cli0("DEL " P ":dead");
    const char *job = "{\"id\":\"js\",\"thread\":\"t1\",\"feature\":\"data-app\",\"tenant\":"
                      "{\"organization\":\"o\",\"project\":\"p\"},\"secrets\":{\"TOK\":"
                      "\"old-Secret-5150\"},\"bogus\":1}";
    cli0("XADD " P ":dead * id \"\" thread \"\" entry 1-1 reason \"bogus: unknown field\" job '%s'",
         job);
    struct run r;
    CTL(&r, NULL, "dead", "list", "--json");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(r.out.data && !strstr(r.out.data, "old-Secret-5150"));
    CHECK(r.out.data && strstr(r.out.data, "\\\"TOK\\\":\\\"***\\\""));
    show("dead list json (masked)", &r);
    run_release(&r);
    cli0("DEL " P ":dead");
}

TEST_CASE(show_job_and_thread)
{
    struct run r;
    cli0("HSET " P ":thread:t7 organization o project p provider docker sandbox_id sb-7 "
         "state suspended snapshot '{\"kind\":\"s3-tar\",\"key\":\"t7/2.tar.zst\"}'");
    CTL(&r, NULL, "thread", "t7");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "\"kind\":\t\"s3-tar\""));
    CHECK(strstr(r.out.data, "\"sandbox_id\":\t\"sb-7\""));
    show("thread", &r);
    run_release(&r);

    CTL(&r, NULL, "thread", "t-none");
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err.data, "thread t-none not found"));
    run_release(&r);

    publish_final("js", "succeeded", result_ok, 0);
    CTL(&r, NULL, "job", "js");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "\"phase\":\t\"done\""));
    CHECK(strstr(r.out.data, "\"timings\":\t{")); /* the result embedded as JSON */
    show("job", &r);
    run_release(&r);

    CTL(&r, NULL, "job", "j-none");
    CHECK_EQ_INT(r.rc, 1);
    run_release(&r);
}

/* The whole path with a real worker (scripted provider): enqueue, watch, wait, stats. */
TEST_CASE(end_to_end_with_worker)
{
    ctl_prefix = "ctle2e";
    char log[300];
    snprintf(log, sizeof(log), "%s/worker-e2e.log", job_dir);
    struct worker_spec ws = {
        .url = test_redis_url(srv), .prefix = "ctle2e", .name = "w-e2e", .log_path = log};
    pid_t w = worker_spawn(&ws);
    CHECK(w > 0);
    if (w <= 0) {
        ctl_prefix = "ctltest";
        return;
    }
    struct run r;
    CTL(&r,
        "{\"id\":\"e1\",\"thread\":\"te\",\"feature\":\"data-app\",\"tenant\":{"
        "\"organization\":\"o\",\"project\":\"p\"},\"steps\":[{\"type\":\"run\",\"name\":"
        "\"greet\",\"cmd\":\"out hello; err careful; out bye\"}]}",
        "enqueue");
    CHECK_EQ_INT(r.rc, 0);
    show("e2e enqueue", &r);
    run_release(&r);

    CTL(&r, NULL, "wait", "e1", "--timeout-ms", "60000");
    CHECK_EQ_INT(r.rc, 0);
    cJSON *res = cJSON_Parse(r.out.data);
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(res, "steps");
    const cJSON *s0 = cJSON_GetArrayItem(steps, 0);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(res, "status")), "succeeded");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(s0, "stdout")), "hello\nbye\n");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(res, "worker")), "w-e2e");
    cJSON_Delete(res);
    show("e2e wait", &r);
    run_release(&r);

    CTL(&r, NULL, "watch", "e1", "--timeout-ms", "60000");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "started sandbox="));
    CHECK(strstr(r.out.data, "step_started step=0 name=greet kind=run\nhello\nbye\n"));
    CHECK(strstr(r.out.data, "step_finished step=0 name=greet status=ok exit_code=0\n"));
    CHECK(strstr(r.out.data, "done status=succeeded\n"));
    CHECK(strstr(r.err.data, "careful\n"));
    show("e2e watch", &r);
    run_release(&r);

    /* A failing turn, followed live by watch: exit 1 with the error code. */
    struct proc p;
    const char *const args[] = {"watch", "e2", "--timeout-ms", "60000", NULL};
    CHECK(proc_start(&p, NULL, args) == 0);
    CTL(&r,
        "{\"id\":\"e2\",\"thread\":\"te\",\"feature\":\"data-app\",\"tenant\":{"
        "\"organization\":\"o\",\"project\":\"p\"},\"steps\":[{\"type\":\"run\",\"cmd\":"
        "\"out trying; exit 3\"}]}",
        "enqueue");
    CHECK_EQ_INT(r.rc, 0);
    run_release(&r);
    proc_finish(&p, NULL, &r);
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.out.data, "trying\n"));
    CHECK(strstr(r.out.data, "done status=failed error=step_failed\n"));
    show("e2e watch failing", &r);
    run_release(&r);

    CTL(&r, NULL, "thread", "te");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "\"state\":\t\"suspended\""));
    run_release(&r);

    /* job show: the state hash and its last events, oldest first, ending at done. */
    CTL(&r, NULL, "job", "show", "e1");
    CHECK_EQ_INT(r.rc, 0);
    {
        cJSON *o = cJSON_Parse(r.out.data);
        CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "owner")), "w-e2e");
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "last_events");
        int n = cJSON_GetArraySize(ev);
        CHECK(n >= 3 && n <= 10);
        const cJSON *last = cJSON_GetArrayItem(ev, n - 1);
        CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(last, "type")), "done");
        CHECK(!cJSON_GetObjectItemCaseSensitive(last, "result"));
        cJSON_Delete(o);
    }
    show("job show", &r);
    run_release(&r);

    CTL(&r, NULL, "stats");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "group workers\n") && strstr(r.out.data, "consumer w-e2e "));
    CHECK(strstr(r.out.data, "results 2\n") && strstr(r.out.data, "pending 0\n"));
    show("e2e stats", &r);
    run_release(&r);

    CHECK_EQ_INT(worker_stop(w, SIGTERM, 30000), 0);
    if (test_failed_now)
        printf("  worker log: %s\n", log);
    ctl_prefix = "ctltest";
}

/* wait keeps going across a Redis restart (the connection reconnects; reads are retried). */
TEST_CASE(wait_survives_redis_restart)
{
    cli0("HSET " P ":job:jr phase running");
    struct proc p;
    const char *const args[] = {"wait", "jr", "--timeout-ms", "60000", NULL};
    CHECK(proc_start(&p, NULL, args) == 0);
    /* Restart only once the CLI is connected (it names its connection), so the restart
     * hits a connection in use rather than the first connect. */
    int connected = 0;
    for (int64_t end = mono_ms() + 30000; !connected && mono_ms() < end;) {
        char *list = cli("CLIENT LIST");
        connected = strstr(list, "name=sandboxctl") != NULL;
        free(list);
        if (!connected) {
            struct timespec ts = {0, 20 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    CHECK(connected);
    CHECK_EQ_INT(test_redis_restart(srv), 0);
    publish_final("jr", "succeeded", result_ok, 1);
    struct run r;
    proc_finish(&p, NULL, &r);
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strncmp(r.out.data, result_ok, strlen(result_ok)) == 0);
    CHECK(strstr(r.err.data, "(retrying)")); /* the read in flight failed, then recovered */
    show("wait across restart", &r);
    run_release(&r);
}

/* Runs the CLI until its stdout contains want (polls every 200 ms up to timeout_ms); 1 when
 * it did. The last run is left in r. */
static int ctl_until(struct run *r, const char *want, int timeout_ms, const char *const *args)
{
    int64_t end = mono_ms() + timeout_ms;
    for (;;) {
        ctl(r, NULL, args);
        if (r->rc == 0 && strstr(r->out.data, want))
            return 1;
        if (mono_ms() > end)
            return 0;
        run_release(r);
        sleep_ms(200);
    }
}

#define CTL_UNTIL(r, want, ms, ...) ctl_until(r, want, ms, (const char *const[]){__VA_ARGS__, NULL})

/* A real worker registers itself; pause stops it reading (a job stays queued, a running one
 * finishes), resume lets it run; jobs ls shows each state with its filters. */
TEST_CASE(workers_pause_and_jobs)
{
    ctl_prefix = "ctlops";
    char log[300];
    snprintf(log, sizeof(log), "%s/worker-ops.log", job_dir);
    struct worker_spec ws = {
        .url = test_redis_url(srv), .prefix = "ctlops", .name = "w-ops", .log_path = log};
    pid_t w = worker_spawn(&ws);
    CHECK(w > 0);
    if (w <= 0) {
        ctl_prefix = "ctltest";
        return;
    }
    struct run r;
    CHECK(CTL_UNTIL(&r, "\"name\":\"w-ops\"", 10000, "workers", "ls", "--json"));
    cJSON *o = cJSON_Parse(r.out.data);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "state")), "running");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "provider")), "scripted");
    CHECK(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "concurrency")));
    CHECK(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "heartbeat_at")));
    CHECK(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "version")) != NULL);
    cJSON_Delete(o);
    show("workers ls json", &r);
    run_release(&r);
    long long ttl = cli_int("PTTL {ctlops}:worker:w-ops");
    CHECK(ttl > 0 && ttl <= 10000);

    /* A long turn running, then pause: it goes on; a new job stays queued. */
    const char *slow = "{\"id\":\"p1\",\"thread\":\"tp1\",\"feature\":\"data-app\",\"tenant\":{"
                       "\"organization\":\"o\",\"project\":\"p\"},\"steps\":[{\"type\":\"run\","
                       "\"cmd\":\"sleep 6000; out slow done\"}]}";
    CTL(&r, slow, "enqueue");
    CHECK_EQ_INT(r.rc, 0);
    run_release(&r);
    CHECK(CTL_UNTIL(&r, "p1 thread=tp1 worker=w-ops phase=running", 10000, "jobs", "ls", "--state",
                    "running"));
    show("jobs running", &r);
    run_release(&r);
    CTL(&r, NULL, "jobs", "ls", "--state", "running", "--worker", "w-other");
    CHECK_EQ_INT(r.rc, 0);
    CHECK_STR(r.out.data, "");
    run_release(&r);

    CTL(&r, NULL, "queue", "pause");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "paused"));
    run_release(&r);
    CHECK(CTL_UNTIL(&r, "w-ops state=paused in_flight=1/", 10000, "workers"));
    show("workers paused", &r);
    run_release(&r);
    CTL(&r, NULL, "stats");
    CHECK(strstr(r.out.data, "paused yes\n") && strstr(r.out.data, "workers 1\n"));
    show("stats paused", &r);
    run_release(&r);
    CTL(&r,
        "{\"id\":\"p2\",\"thread\":\"tp2\",\"feature\":\"data-app\",\"tenant\":{"
        "\"organization\":\"o\",\"project\":\"p\"},\"steps\":[{\"type\":\"run\",\"cmd\":"
        "\"out fast\"}]}",
        "enqueue");
    CHECK_EQ_INT(r.rc, 0);
    run_release(&r);
    /* The running turn finishes while paused. */
    CTL(&r, NULL, "wait", "p1", "--timeout-ms", "30000");
    CHECK_EQ_INT(r.rc, 0);
    run_release(&r);
    sleep_ms(2500); /* more than a heartbeat and a read round: p2 must still be queued */
    CTL(&r, NULL, "jobs", "ls", "--state", "queued", "--json");
    CHECK_EQ_INT(r.rc, 0);
    o = cJSON_Parse(r.out.data);
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "id")), "p2");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "state")), "queued");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "thread")), "tp2");
    cJSON_Delete(o);
    show("jobs queued while paused", &r);
    run_release(&r);
    CTL(&r, NULL, "jobs", "ls", "--state", "queued", "--thread", "tp1");
    CHECK_EQ_INT(r.rc, 0);
    CHECK_STR(r.out.data, "");
    run_release(&r);
    char *s = cli("HGET {ctlops}:job:p2 phase");
    CHECK_STR(s, "queued");
    free(s);

    CTL(&r, NULL, "queue", "resume");
    CHECK_EQ_INT(r.rc, 0);
    run_release(&r);
    CTL(&r, NULL, "wait", "p2", "--timeout-ms", "30000");
    CHECK_EQ_INT(r.rc, 0);
    run_release(&r);
    CTL(&r, NULL, "jobs", "ls", "--state", "finished");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "p2 thread=tp2 status=succeeded worker=w-ops") &&
          strstr(r.out.data, "p1 thread=tp1 status=succeeded worker=w-ops"));
    CHECK(strstr(r.out.data, "p2") < strstr(r.out.data, "p1")); /* newest first */
    show("jobs finished", &r);
    run_release(&r);
    CTL(&r, NULL, "jobs", "ls", "--state", "bogus");
    CHECK_EQ_INT(r.rc, 2);
    run_release(&r);

    /* A drained worker takes itself out of the registry. */
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 30000), 0);
    CTL(&r, NULL, "workers", "--json");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(!strstr(r.out.data, "w-ops"));
    run_release(&r);
    CHECK_EQ_INT(cli_int("EXISTS {ctlops}:worker:w-ops"), 0);
    if (test_failed_now)
        printf("  worker log: %s\n", log);
    ctl_prefix = "ctltest";
}

static const char *job_json(const char *id, const char *thread, const char *cmd)
{
    static char b[600];
    snprintf(b, sizeof(b),
             "{\"id\":\"%s\",\"thread\":\"%s\",\"feature\":\"data-app\",\"tenant\":{"
             "\"organization\":\"o\",\"project\":\"p\"},\"max_attempts\":1,\"steps\":[{"
             "\"type\":\"run\",\"cmd\":\"%s\"}]}",
             id, thread, cmd);
    return b;
}

/* retry, threads ls/show/destroy, queue purge, dead show/replay --all/purge, job show, all
 * against a real worker. */
TEST_CASE(retry_threads_purge_dead)
{
    ctl_prefix = "ctlops2";
    char log[300];
    snprintf(log, sizeof(log), "%s/worker-ops2.log", job_dir);
    struct worker_spec ws = {
        .url = test_redis_url(srv), .prefix = "ctlops2", .name = "w-ops2", .log_path = log};
    pid_t w = worker_spawn(&ws);
    CHECK(w > 0);
    if (w <= 0) {
        ctl_prefix = "ctltest";
        return;
    }
    struct run r;
    CTL(&r, job_json("f1", "tf1", "out try; exit 3"), "enqueue");
    CHECK_EQ_INT(r.rc, 0);
    run_release(&r);
    CTL(&r, NULL, "wait", "f1", "--timeout-ms", "30000");
    CHECK_EQ_INT(r.rc, 1);
    run_release(&r);
    long long len = cli_int("XLEN {ctlops2}:jobs");

    /* retry: a failed job runs again under attempt 2. */
    CTL(&r, NULL, "retry", "f1");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "job f1 enqueued again as ") && strstr(r.out.data, "(attempt 2)"));
    show("retry", &r);
    run_release(&r);
    CHECK_EQ_INT(cli_int("XLEN {ctlops2}:jobs"), len + 1);
    CTL(&r, NULL, "wait", "f1", "--timeout-ms", "30000");
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.out.data, "\"attempt\":2") || strstr(r.out.data, "\"attempt\": 2"));
    show("retry wait", &r);
    run_release(&r);
    CTL(&r, NULL, "job", "show", "f1");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "\"status\":\t\"failed\""));
    run_release(&r);
    CTL(&r, job_json("s1", "tf1", "out fine"), "enqueue");
    run_release(&r);
    CTL(&r, NULL, "wait", "s1", "--timeout-ms", "30000");
    CHECK_EQ_INT(r.rc, 0);
    run_release(&r);
    CTL(&r, NULL, "retry", "s1");
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err.data, "job s1 is succeeded"));
    run_release(&r);
    CTL(&r, NULL, "retry", "nope");
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err.data, "no job nope"));
    run_release(&r);

    /* threads */
    CTL(&r, NULL, "threads", "ls");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "tf1 organization=o project=p provider=scripted state=suspended"));
    show("threads ls", &r);
    run_release(&r);
    CTL(&r, NULL, "threads", "ls", "--json");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "{\"id\":\"tf1\","));
    run_release(&r);
    CTL(&r, NULL, "threads", "show", "tf1");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "\"state\":\t\"suspended\""));
    run_release(&r);
    CTL(&r, NULL, "threads", "destroy", "tf-none");
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err.data, "no thread tf-none"));
    run_release(&r);
    CTL(&r, NULL, "threads", "destroy", "tf1");
    CHECK_EQ_INT(r.rc, 0);
    show("threads destroy", &r);
    char did[160] = "";
    sscanf(r.out.data, "%159s", did);
    run_release(&r);
    CHECK(strncmp(did, "destroy-tf1-", 12) == 0);
    CTL(&r, NULL, "wait", did, "--timeout-ms", "30000");
    CHECK_EQ_INT(r.rc, 0);
    show("destroy wait", &r);
    run_release(&r);
    char *st = cli("HGET {ctlops2}:thread:tf1 state");
    CHECK_STR(st, "destroyed");
    free(st);

    /* queue purge --queued: only what no worker has read. */
    CTL(&r, NULL, "queue", "pause");
    run_release(&r);
    CHECK(CTL_UNTIL(&r, "state=paused", 10000, "workers"));
    run_release(&r);
    CTL(&r, job_json("q1", "tq1", "out one"), "enqueue");
    run_release(&r);
    CTL(&r, job_json("q2", "tq2", "out two"), "enqueue");
    run_release(&r);
    CTL(&r, NULL, "queue", "purge");
    CHECK_EQ_INT(r.rc, 2);
    run_release(&r);
    CTL(&r, NULL, "queue", "purge", "--queued");
    CHECK_EQ_INT(r.rc, 0);
    CHECK_STR(r.out.data, "purged 2 queued job(s)\n");
    run_release(&r);
    CTL(&r, NULL, "jobs", "--state", "queued");
    CHECK_STR(r.out.data, "");
    run_release(&r);
    CHECK_EQ_INT(cli_int("EXISTS {ctlops2}:job:q1"), 0);
    CTL(&r, job_json("q1", "tq1", "out one again"), "enqueue");
    CHECK_EQ_INT(r.rc, 0);
    run_release(&r);
    CTL(&r, NULL, "queue", "resume");
    run_release(&r);
    CTL(&r, NULL, "wait", "q1", "--timeout-ms", "30000");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "one again"));
    run_release(&r);

    /* dead letters: show, replay --all, purge */
    cli0("DEL {ctlops2}:dead");
    cli0("XADD {ctlops2}:dead * id d1 thread td1 entry 1-1 reason exhausted job '%s'",
         job_json("d1", "td1", "out revived"));
    cli0("XADD {ctlops2}:dead * id d2 thread td2 reason exhausted job '%s'",
         job_json("d2", "td2", "out revived too"));
    char *ids = cli("XRANGE {ctlops2}:dead - +");
    char e1[64] = "";
    sscanf(ids, "%63s", e1);
    free(ids);
    CTL(&r, NULL, "dead", "show", e1);
    CHECK_EQ_INT(r.rc, 0);
    {
        cJSON *o = cJSON_Parse(r.out.data);
        CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "entry")), e1);
        CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "id")), "d1");
        cJSON_Delete(o);
    }
    show("dead show", &r);
    run_release(&r);
    CTL(&r, NULL, "dead", "show", "1-0");
    CHECK_EQ_INT(r.rc, 1);
    run_release(&r);
    CTL(&r, NULL, "dead", "replay", "--all");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "job d1 enqueued") && strstr(r.out.data, "job d2 enqueued") &&
          strstr(r.out.data, "replayed 2, refused 0"));
    show("dead replay --all", &r);
    run_release(&r);
    CTL(&r, NULL, "wait", "d2", "--timeout-ms", "30000");
    CHECK_EQ_INT(r.rc, 0);
    run_release(&r);
    cli0("XADD {ctlops2}:dead * reason r job x");
    cli0("XADD {ctlops2}:dead * reason r job y");
    CTL(&r, NULL, "dead", "purge");
    CHECK_EQ_INT(r.rc, 0);
    CHECK_STR(r.out.data, "purged 2 dead letter(s)\n");
    run_release(&r);
    CHECK_EQ_INT(cli_int("XLEN {ctlops2}:dead"), 0);

    CHECK_EQ_INT(worker_stop(w, SIGTERM, 30000), 0);
    if (test_failed_now)
        printf("  worker log: %s\n", log);
    ctl_prefix = "ctltest";
}

/* Global options override the environment. */
TEST_CASE(global_options)
{
    struct run r;
    CTL(&r, NULL, "--version");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strncmp(r.out.data, "sandboxctl ", 11) == 0);
    run_release(&r);
    cli0("DEL {ctlglob}:dead");
    cli0("XADD {ctlglob}:dead * id g1 reason r job x");
    /* The environment names prefix ctltest and a dead port; the flags win. */
    struct proc p;
    const char *const args[] = {"--prefix",          "ctlglob", "dead", "-u",
                                test_redis_url(srv), "--json",  NULL};
    CHECK(proc_start(&p, "redis://127.0.0.1:1", args) == 0);
    proc_finish(&p, NULL, &r);
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out.data, "\"id\":\"g1\""));
    show("global options", &r);
    run_release(&r);
    CTL(&r, NULL, "stats", "--redis-url=redis://127.0.0.1:1", "--prefix=ctlglob");
    CHECK_EQ_INT(r.rc, 4);
    run_release(&r);
    CTL(&r, NULL, "stats", "-u");
    CHECK_EQ_INT(r.rc, 2);
    run_release(&r);
}

static int find_ctl(const char *argv0)
{
    /* The test binary is BUILD/tests/integration/test_sandboxctl; the CLI is BUILD/sandboxctl. */
    const char *slash = strrchr(argv0, '/');
    int n = slash ? (int)(slash - argv0) : 1;
    snprintf(ctl_path, sizeof(ctl_path), "%.*s/../../sandboxctl", n, slash ? argv0 : ".");
    return access(ctl_path, X_OK);
}

int main(int argc, char **argv)
{
    (void)argc;
    signal(SIGPIPE, SIG_IGN);
    if (find_ctl(argv[0]) != 0) {
        printf("  skipped: %s not built (make BUILD=... first builds it)\n", ctl_path);
        test_begin("sandboxctl");
        test_skip("sandboxctl binary not built");
        test_end();
        return test_report();
    }
    srv = test_redis_start(NULL);
    if (!srv) {
        test_begin("sandboxctl");
        test_skip("no redis-server");
        test_end();
        return test_report();
    }
    snprintf(job_dir, sizeof(job_dir), "%s", test_redis_dir(srv));
    RUN(usage_errors);
    RUN(connect_failure);
    RUN(enqueue_valid_and_duplicate);
    RUN(enqueue_invalid);
    RUN(cancel);
    RUN(wait_results);
    RUN(wait_spinner_on_terminal);
    RUN(watch_events);
    RUN(stats_numbers);
    RUN(dead_list_replay);
    RUN(dead_list_masks_secrets);
    RUN(show_job_and_thread);
    RUN(wait_survives_redis_restart);
    RUN(end_to_end_with_worker);
    RUN(workers_pause_and_jobs);
    RUN(retry_threads_purge_dead);
    RUN(global_options);
    test_redis_free(srv);
    return test_report();
}
