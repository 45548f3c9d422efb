/* The status page against a real worker (scripted provider) on a real redis-server:
 * /status.json while a turn runs and after it finished, and the page rendered by headless
 * Chromium (Debian's chromium; skipped with a message when it is missing). A screenshot is
 * kept as a test artifact: $BUILD/artifacts/status-page.png. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "lib/buf.h"
#include "tests/support/redis_server.h"
#include "tests/support/test.h"
#include "tests/support/worker_proc.h"

static struct test_redis *srv;
static int http_port;
static char build_dir[1024] = "build";

/* A free loopback TCP port (bound then released). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* GET path from the worker; the body as a malloc'd string (NULL on failure). *code: status. */
static char *http_get(const char *path, int *code)
{
    *code = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)http_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return NULL;
    }
    struct buf b;
    buf_init(&b);
    char chunk[4096];
    ssize_t r;
    while ((r = read(fd, chunk, sizeof(chunk))) > 0)
        buf_append(&b, chunk, (size_t)r);
    close(fd);
    if (!b.data) {
        buf_release(&b);
        return NULL;
    }
    sscanf(b.data, "HTTP/1.%*d %d", code);
    const char *body = strstr(b.data, "\r\n\r\n");
    char *out = xstrdup(body ? body + 4 : "");
    if (strstr(b.data, "Content-Security-Policy: default-src 'none'"))
        *code += 10000; /* the page's CSP header, checked by the caller */
    buf_release(&b);
    return out;
}

static cJSON *status_json(void)
{
    int code;
    char *t = http_get("/status.json", &code);
    cJSON *o = t && code == 200 ? cJSON_Parse(t) : NULL;
    free(t);
    return o;
}

/* Polls /status.json until pred holds (or timeout_ms); the last document (caller frees). */
static cJSON *status_until(int (*pred)(const cJSON *), int timeout_ms)
{
    for (int waited = 0;; waited += 200) {
        cJSON *o = status_json();
        if ((o && pred(o)) || waited >= timeout_ms)
            return o;
        cJSON_Delete(o);
        sleep_ms(200);
    }
}

static const cJSON *find_id(const cJSON *list, const char *key, const char *val)
{
    const cJSON *x;
    cJSON_ArrayForEach(x, list)
    {
        const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(x, key));
        if (v && strcmp(v, val) == 0)
            return x;
    }
    return NULL;
}

static int running_slow(const cJSON *o)
{
    return find_id(cJSON_GetObjectItemCaseSensitive(o, "running"), "id", "slow1") != NULL;
}

static int finished_fast(const cJSON *o)
{
    return find_id(cJSON_GetObjectItemCaseSensitive(o, "results"), "id", "fast1") != NULL &&
           find_id(cJSON_GetObjectItemCaseSensitive(o, "dead"), "id", "dd1") != NULL;
}

static double num(const cJSON *o, const char *a, const char *b)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b)
        x = cJSON_GetObjectItemCaseSensitive(x, b);
    return cJSON_IsNumber(x) ? x->valuedouble : -1;
}

static const char *chromium_path(void)
{
    static const char *const names[] = {"/usr/bin/chromium", "/usr/bin/chromium-browser", NULL};
    for (int i = 0; names[i]; i++)
        if (access(names[i], X_OK) == 0)
            return names[i];
    return NULL;
}

/* Runs chromium headless with extra args; its stdout as a malloc'd string. */
static char *chromium(const char *bin, const char *profile, const char *extra1, const char *extra2,
                      const char *url)
{
    int p[2];
    if (pipe(p) != 0)
        return NULL;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, 2);
        char prof[512];
        snprintf(prof, sizeof(prof), "--user-data-dir=%s", profile);
        execl(bin, bin, "--headless", "--no-sandbox", "--disable-gpu",
              "--disable-background-networking", "--disable-component-update", "--no-first-run",
              "--disable-dev-shm-usage", prof, "--virtual-time-budget=6000", extra1, extra2, url,
              (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    struct buf b;
    buf_init(&b);
    char chunk[4096];
    ssize_t r;
    while ((r = read(p[0], chunk, sizeof(chunk))) > 0)
        buf_append(&b, chunk, (size_t)r);
    close(p[0]);
    int st;
    waitpid(pid, &st, 0);
    char *out = xstrdup(b.data ? b.data : "");
    buf_release(&b);
    return out;
}

TEST_CASE(status_page_live)
{
    redisContext *rc = sync_connect(test_redis_port(srv));
    http_port = free_port();
    char addr[64], log[512];
    snprintf(addr, sizeof(addr), "WORKER_HTTP_ADDR=127.0.0.1:%d", http_port);
    snprintf(log, sizeof(log), "%s/worker-page.log", test_redis_dir(srv));
    const char *const env[] = {addr, NULL};
    struct worker_spec ws = {.url = test_redis_url(srv),
                             .prefix = "page",
                             .name = "w-page",
                             .env = env,
                             .fail_create = 1, /* the first acquire fails: an error counted */
                             .log_path = log};
    pid_t w = worker_spawn(&ws);
    CHECK(w > 0);
    if (w <= 0)
        return;

    /* A turn that runs for a while, one that finishes, and a dead letter. */
    freeReplyObject(
        sync_cmd(rc, "XADD {page}:jobs * job %s",
                 "{\"id\":\"slow1\",\"thread\":\"ts\",\"feature\":\"data-app\",\"tenant\":{"
                 "\"organization\":\"o\",\"project\":\"p\"},\"steps\":[{\"type\":\"run\",\"cmd\":"
                 "\"sleep 15000\"}]}"));
    freeReplyObject(
        sync_cmd(rc, "XADD {page}:jobs * job %s",
                 "{\"id\":\"fast1\",\"thread\":\"tf\",\"feature\":\"data-app\",\"tenant\":{"
                 "\"organization\":\"o\",\"project\":\"p\"},\"steps\":[{\"type\":\"run\",\"cmd\":"
                 "\"exit 4\"}]}"));
    freeReplyObject(sync_cmd(rc, "XADD {page}:dead * id dd1 thread td reason %s job %s",
                             "attempts exhausted (3 of 3): acquire_failed",
                             "{\"secrets\":{\"K\":\"hunter2-secret\"}}"));

    cJSON *o = status_until(running_slow, 15000);
    CHECK(o && running_slow(o));
    const cJSON *run = find_id(cJSON_GetObjectItemCaseSensitive(o, "running"), "id", "slow1");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(run, "worker")), "w-page");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(run, "phase")), "running");
    CHECK(find_id(cJSON_GetObjectItemCaseSensitive(o, "workers"), "name", "w-page") != NULL);
    CHECK(num(o, "queue", "pending") >= 1);
    CHECK(num(o, "queue", "workers") == 1);
    CHECK(num(o, "queue", "oldest_pending_age_ms") >= 0);
    CHECK(num(o, "worker", "in_flight") >= 1);
    cJSON_Delete(o);

    o = status_until(finished_fast, 15000);
    CHECK(o && finished_fast(o));
    const cJSON *res = find_id(cJSON_GetObjectItemCaseSensitive(o, "results"), "id", "fast1");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(res, "status")), "failed");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(res, "error")), "step_failed");
    CHECK(num(o, "queue", "dead") == 1);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(o, "throughput"), "finished");
    CHECK(cJSON_GetArraySize(f) == 30);
    char *text = cJSON_PrintUnformatted(o);
    CHECK(text && !strstr(text, "hunter2")); /* a dead letter's job text never shows */
    free(text);
    cJSON_Delete(o);

    /* The exporter (the only worker) exports the queue gauges. */
    int code;
    char *metrics = http_get("/metrics", &code);
    CHECK(metrics && strstr(metrics, "sandbox_queue_dead_letters{queue=\"page\"} 1\n"));
    CHECK(metrics && strstr(metrics, "sandbox_queue_metrics_exporter 1\n"));
    CHECK(metrics && strstr(metrics, "sandbox_build_info{version=\""));
    CHECK(metrics && strstr(metrics, "# TYPE process_cpu_seconds_total counter\n"));
    CHECK(metrics && strstr(metrics, "process_open_fds "));
    /* Provider control-plane timings: three creates (one per thread, one failed and retried). */
    CHECK(metrics &&
          strstr(metrics, "sandbox_provider_operation_duration_seconds_count{op=\"create\"} 3\n"));
    CHECK(metrics && strstr(metrics, "sandbox_provider_errors_total{op=\"create\"} 1\n"));
    /* That failed attempt was retried: counted as a retry, not as a finished job. */
    CHECK(metrics && strstr(metrics, "sandbox_job_retries_total 1\n"));
    CHECK(metrics && !strstr(metrics, "status=\"retried\""));
    CHECK(metrics && strstr(metrics, "sandbox_provider_info{provider=\"scripted\"} 1\n"));
    free(metrics);

    char *page = http_get("/", &code);
    CHECK_EQ_INT(code, 10200); /* 200 with the CSP header */
    CHECK(page && strstr(page, "<title>sandbox-worker</title>") && !strstr(page, "http://") &&
          !strstr(page, "https://"));
    free(page);

    const char *bin = chromium_path();
    if (!bin) {
        printf("  skipped: the browser check (chromium not installed; apt-get install "
               "chromium, see scripts/install-deps.sh)\n");
    } else {
        char profile[] = "/tmp/sw-chromium-XXXXXX";
        CHECK(mkdtemp(profile) != NULL);
        char url[64];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/", http_port);
        char *dom = chromium(bin, profile, "--dump-dom", "--window-size=1280,900", url);
        CHECK(dom && strstr(dom, "data-loaded=\"1\""));
        CHECK(dom && strstr(dom, "<td>slow1</td><td>ts</td><td>w-page</td><td>running</td>"));
        CHECK(dom && strstr(dom, "<td>fast1</td><td>tf</td><td class=\"st-failed\">failed</td>"
                                 "<td>step_failed</td>"));
        CHECK(dom && strstr(dom, "attempts exhausted (3 of 3): acquire_failed"));
        CHECK(dom && strstr(dom, "<td>w-page</td><td>running</td>"));
        CHECK(dom && strstr(dom, "<span id=\"err\"></span>")); /* no fetch error shown */
        if (test_failed_now)
            printf("  dom: %.3000s\n", dom ? dom : "(none)");
        free(dom);
        char dir[1100], shot[1200], arg[1300];
        snprintf(dir, sizeof(dir), "%s/artifacts", build_dir);
        mkdir(dir, 0755);
        snprintf(shot, sizeof(shot), "%s/status-page.png", dir);
        unlink(shot);
        snprintf(arg, sizeof(arg), "--screenshot=%s", shot);
        free(chromium(bin, profile, arg, "--window-size=1280,900", url));
        struct stat st;
        CHECK(stat(shot, &st) == 0 && st.st_size > 1000);
        printf("  screenshot: %s\n", shot);
        char rm[600];
        snprintf(rm, sizeof(rm), "rm -rf '%s'", profile);
        if (system(rm) != 0)
            printf("  (could not remove %s)\n", profile);
    }

    CHECK_EQ_INT(worker_stop(w, SIGTERM, 30000), 0);
    if (test_failed_now)
        printf("  worker log: %s\n", log);
    redisFree(rc);
}

int main(int argc, char **argv)
{
    (void)argc;
    signal(SIGPIPE, SIG_IGN);
    /* argv[0] is BUILD/tests/integration/test_status_page */
    const char *p = strstr(argv[0], "/tests/integration/");
    if (p)
        snprintf(build_dir, sizeof(build_dir), "%.*s", (int)(p - argv[0]), argv[0]);
    srv = test_redis_start(NULL);
    if (!srv) {
        test_begin("status_page");
        test_skip("no redis-server");
        test_end();
        return test_report();
    }
    RUN(status_page_live);
    test_redis_free(srv);
    return test_report();
}
