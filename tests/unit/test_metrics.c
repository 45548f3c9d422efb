/* lib/metrics: exposition text byte for byte, escaping, histogram cumulation, the series cap,
 * and a line-format check of everything rendered. */
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/metrics.h"
#include "tests/support/test.h"

static char *render(const metrics *m)
{
    struct buf b;
    buf_init(&b);
    metrics_render(m, &b);
    return buf_detach(&b);
}

static int is_name_char(char c, int first, int colon)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
           (!first && c >= '0' && c <= '9');
}

/* Skips a name at *p; returns its length (0 when none). */
static size_t scan_name(const char **p, int colon)
{
    const char *s = *p;
    while (is_name_char(**p, *p == s, colon))
        (*p)++;
    return (size_t)(*p - s);
}

/* A float as the text format allows: decimal/exponent, +Inf, -Inf, NaN. */
static int scan_value(const char *p, const char *end)
{
    size_t n = (size_t)(end - p);
    if ((n == 4 && (memcmp(p, "+Inf", 4) == 0 || memcmp(p, "-Inf", 4) == 0)) ||
        (n == 3 && memcmp(p, "NaN", 3) == 0))
        return 1;
    if (n == 0 || n > 60)
        return 0;
    char tmp[64];
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    char *e;
    double v = strtod(tmp, &e);
    (void)v;
    return *e == '\0' && strpbrk(tmp, "iInN") == NULL;
}

/* One sample line: name[{l="v",...}] value. Returns 1 when well formed. */
static int check_sample(const char *p, const char *end)
{
    if (scan_name(&p, 1) == 0)
        return 0;
    if (*p == '{') {
        p++;
        for (;;) {
            if (scan_name(&p, 0) == 0 || *p++ != '=' || *p++ != '"')
                return 0;
            while (p < end && *p != '"') {
                if (*p == '\\') {
                    p++;
                    if (p >= end || (*p != '\\' && *p != '"' && *p != 'n'))
                        return 0;
                }
                p++;
            }
            if (p >= end)
                return 0;
            p++; /* closing quote */
            if (*p == ',') {
                p++;
                continue;
            }
            if (*p++ != '}')
                return 0;
            break;
        }
    }
    if (*p++ != ' ')
        return 0;
    return scan_value(p, end);
}

/* Every line is "# HELP name text", "# TYPE name kind" or a sample; the text ends with '\n'.
 * Returns the number of bad lines. */
static int format_errors(const char *text)
{
    int bad = 0;
    size_t n = strlen(text);
    if (n > 0 && text[n - 1] != '\n')
        bad++;
    for (const char *p = text; *p;) {
        const char *end = strchr(p, '\n');
        if (!end)
            end = p + strlen(p);
        int ok;
        if (strncmp(p, "# HELP ", 7) == 0) {
            const char *q = p + 7;
            ok = scan_name(&q, 1) > 0 && (*q == ' ' || q == end);
        } else if (strncmp(p, "# TYPE ", 7) == 0) {
            const char *q = p + 7;
            ok = scan_name(&q, 1) > 0 && *q++ == ' ';
            size_t k = (size_t)(end - q);
            ok = ok && ((k == 7 && memcmp(q, "counter", 7) == 0) ||
                        (k == 5 && memcmp(q, "gauge", 5) == 0) ||
                        (k == 9 && memcmp(q, "histogram", 9) == 0));
        } else {
            ok = check_sample(p, end);
        }
        if (!ok) {
            fprintf(stderr, "bad exposition line: %.*s\n", (int)(end - p), p);
            bad++;
        }
        p = *end ? end + 1 : end;
    }
    return bad;
}

TEST_CASE(counter_with_label)
{
    metrics *m = metrics_new();
    metric *c = metrics_counter(m, "sandbox_jobs_total", "Jobs finished, by status.", "status");
    metric_inc(c, "succeeded", 1);
    metric_inc(c, "failed", 2);
    metric_inc(c, "succeeded", 1);
    metric_inc(c, "failed", -5);  /* ignored: counters only go up */
    metric_inc(c, "failed", NAN); /* ignored */
    metric_inc(c, "timeout", 0);  /* creates the series at 0 */
    CHECK(metric_value(c, "succeeded") == 2);
    CHECK(metric_value(c, "failed") == 2);
    CHECK(metric_value(c, "lost") == 0);
    char *t = render(m);
    CHECK_STR(t, "# HELP sandbox_jobs_total Jobs finished, by status.\n"
                 "# TYPE sandbox_jobs_total counter\n"
                 "sandbox_jobs_total{status=\"succeeded\"} 2\n"
                 "sandbox_jobs_total{status=\"failed\"} 2\n"
                 "sandbox_jobs_total{status=\"timeout\"} 0\n");
    CHECK_EQ_INT(format_errors(t), 0);
    free(t);
    metrics_free(m);
}

static double cb_value;
static double gauge_cb(void *arg)
{
    return *(double *)arg;
}

TEST_CASE(gauges)
{
    metrics *m = metrics_new();
    metric *g = metrics_gauge(m, "sandbox_turns_in_flight", "Turns running now.", NULL);
    metric *gl = metrics_gauge(m, "sandbox_provider_up", "Provider reachable.", "provider");
    metric *gf = metrics_gauge_fn(m, "sandbox_worker_capacity", "Free slots.", gauge_cb, &cb_value);
    char *t = render(m);
    /* Unlabelled gauges exist from registration; a labelled one has no series yet. */
    CHECK_STR(t, "# HELP sandbox_turns_in_flight Turns running now.\n"
                 "# TYPE sandbox_turns_in_flight gauge\n"
                 "sandbox_turns_in_flight 0\n"
                 "# HELP sandbox_provider_up Provider reachable.\n"
                 "# TYPE sandbox_provider_up gauge\n"
                 "# HELP sandbox_worker_capacity Free slots.\n"
                 "# TYPE sandbox_worker_capacity gauge\n"
                 "sandbox_worker_capacity 0\n");
    free(t);

    metric_inc(g, NULL, 3);
    metric_inc(g, NULL, -1);
    metric_set(gl, "e2b", 1);
    metric_set(gl, "docker", 0.25);
    cb_value = 7.5;
    CHECK(metric_value(g, NULL) == 2);
    CHECK(metric_value(gf, NULL) == 7.5);
    t = render(m);
    CHECK_STR(t, "# HELP sandbox_turns_in_flight Turns running now.\n"
                 "# TYPE sandbox_turns_in_flight gauge\n"
                 "sandbox_turns_in_flight 2\n"
                 "# HELP sandbox_provider_up Provider reachable.\n"
                 "# TYPE sandbox_provider_up gauge\n"
                 "sandbox_provider_up{provider=\"e2b\"} 1\n"
                 "sandbox_provider_up{provider=\"docker\"} 0.25\n"
                 "# HELP sandbox_worker_capacity Free slots.\n"
                 "# TYPE sandbox_worker_capacity gauge\n"
                 "sandbox_worker_capacity 7.5\n");
    CHECK_EQ_INT(format_errors(t), 0);
    free(t);
    metrics_free(m);
}

TEST_CASE(histogram)
{
    static const double b[] = {0.1, 0.5, 1, 2.5};
    metrics *m = metrics_new();
    metric *h = metrics_histogram(m, "sandbox_acquire_seconds", "Sandbox acquire time.", NULL, b,
                                  sizeof(b) / sizeof(b[0]));
    metric_observe(h, NULL, 0.05);
    metric_observe(h, NULL, 0.1); /* le is inclusive */
    metric_observe(h, NULL, 0.7);
    metric_observe(h, NULL, 3);
    metric_observe(h, NULL, 100);
    metric_observe(h, NULL, NAN); /* ignored */
    CHECK_EQ_INT(metric_count(h, NULL), 5);
    CHECK(metric_sum(h, NULL) == 0.05 + 0.1 + 0.7 + 3 + 100);
    char *t = render(m);
    CHECK_STR(t, "# HELP sandbox_acquire_seconds Sandbox acquire time.\n"
                 "# TYPE sandbox_acquire_seconds histogram\n"
                 "sandbox_acquire_seconds_bucket{le=\"0.1\"} 2\n"
                 "sandbox_acquire_seconds_bucket{le=\"0.5\"} 2\n"
                 "sandbox_acquire_seconds_bucket{le=\"1\"} 3\n"
                 "sandbox_acquire_seconds_bucket{le=\"2.5\"} 3\n"
                 "sandbox_acquire_seconds_bucket{le=\"+Inf\"} 5\n"
                 "sandbox_acquire_seconds_sum 103.85\n"
                 "sandbox_acquire_seconds_count 5\n");
    CHECK_EQ_INT(format_errors(t), 0);
    free(t);
    metrics_free(m);
}

TEST_CASE(histogram_with_label)
{
    static const double b[] = {1, 10, INFINITY}; /* a trailing +Inf is not doubled */
    metrics *m = metrics_new();
    metric *h = metrics_histogram(m, "turn_seconds", "Turn time.", "provider", b, 3);
    metric_observe(h, "e2b", 5);
    metric_observe(h, "docker", 0.5);
    metric_observe(h, "e2b", 0.25);
    char *t = render(m);
    CHECK_STR(t, "# HELP turn_seconds Turn time.\n"
                 "# TYPE turn_seconds histogram\n"
                 "turn_seconds_bucket{provider=\"e2b\",le=\"1\"} 1\n"
                 "turn_seconds_bucket{provider=\"e2b\",le=\"10\"} 2\n"
                 "turn_seconds_bucket{provider=\"e2b\",le=\"+Inf\"} 2\n"
                 "turn_seconds_sum{provider=\"e2b\"} 5.25\n"
                 "turn_seconds_count{provider=\"e2b\"} 2\n"
                 "turn_seconds_bucket{provider=\"docker\",le=\"1\"} 1\n"
                 "turn_seconds_bucket{provider=\"docker\",le=\"10\"} 1\n"
                 "turn_seconds_bucket{provider=\"docker\",le=\"+Inf\"} 1\n"
                 "turn_seconds_sum{provider=\"docker\"} 0.5\n"
                 "turn_seconds_count{provider=\"docker\"} 1\n");
    CHECK_EQ_INT(format_errors(t), 0);
    free(t);

    /* No buckets at all: just +Inf. */
    metric *h0 = metrics_histogram(m, "empty_seconds", "x", NULL, NULL, 0);
    metric_observe(h0, NULL, 2);
    struct buf bb;
    buf_init(&bb);
    metrics_render(m, &bb);
    CHECK(strstr(bb.data, "empty_seconds_bucket{le=\"+Inf\"} 1\n"
                          "empty_seconds_sum 2\n"
                          "empty_seconds_count 1\n") != NULL);
    buf_release(&bb);
    metrics_free(m);
}

TEST_CASE(escaping)
{
    metrics *m = metrics_new();
    metric *c = metrics_counter(m, "esc_total", "Help with \\ backslash\nand \"quotes\".", "v");
    metric_inc(c, "a\\b\"c\nd", 1);
    metric_inc(c, "", 1);
    metric_inc(c, "caf\xc3\xa9", 1);
    char *t = render(m);
    CHECK_STR(t, "# HELP esc_total Help with \\\\ backslash\\nand \"quotes\".\n"
                 "# TYPE esc_total counter\n"
                 "esc_total{v=\"a\\\\b\\\"c\\nd\"} 1\n"
                 "esc_total{v=\"\"} 1\n"
                 "esc_total{v=\"caf\xc3\xa9\"} 1\n");
    CHECK_EQ_INT(format_errors(t), 0);
    free(t);
    metrics_free(m);
}

TEST_CASE(values_and_reregistration)
{
    metrics *m = metrics_new();
    metric *g = metrics_gauge(m, "odd_values", "x", "k");
    metric_set(g, "third", 0.1 + 0.2); /* needs 17 digits to round-trip */
    metric_set(g, "big", 1e21);
    metric_set(g, "neg", -2.5);
    metric_set(g, "inf", INFINITY);
    metric_set(g, "ninf", -INFINITY);
    metric_set(g, "nan", NAN);
    char *t = render(m);
    CHECK(strstr(t, "odd_values{k=\"third\"} 0.30000000000000004\n") != NULL);
    CHECK(strstr(t, "odd_values{k=\"big\"} 1e+21\n") != NULL);
    CHECK(strstr(t, "odd_values{k=\"neg\"} -2.5\n") != NULL);
    CHECK(strstr(t, "odd_values{k=\"inf\"} +Inf\n") != NULL);
    CHECK(strstr(t, "odd_values{k=\"ninf\"} -Inf\n") != NULL);
    CHECK(strstr(t, "odd_values{k=\"nan\"} NaN\n") != NULL);
    CHECK_EQ_INT(format_errors(t), 0);
    free(t);

    /* Same shape returns the same metric; the registry renders it once. */
    CHECK(metrics_gauge(m, "odd_values", "other help", "k") == g);
    metric *c1 = metrics_counter(m, "ns:sub_total", "colons allowed", NULL);
    CHECK(metrics_counter(m, "ns:sub_total", "colons allowed", NULL) == c1);
    t = render(m);
    CHECK(strstr(strstr(t, "# TYPE odd_values") + 1, "# TYPE odd_values") == NULL);
    free(t);
    metrics_free(m);
}

TEST_CASE(series_cap)
{
    metrics *m = metrics_new();
    metric *c = metrics_counter(m, "many_total", "x", "id");
    char v[32];
    for (int i = 0; i < METRICS_MAX_SERIES + 10; i++) {
        snprintf(v, sizeof(v), "v%d", i);
        metric_inc(c, v, 1);
    }
    metric_inc(c, "v0", 1); /* existing series still count */
    CHECK(metric_value(c, "v0") == 2);
    CHECK(metric_value(c, "v600") == 0);
    CHECK_EQ_INT(metric_dropped(c), 10);
    char *t = render(m);
    int lines = 0;
    for (const char *p = t; (p = strchr(p, '\n')); p++)
        lines++;
    CHECK_EQ_INT(lines, METRICS_MAX_SERIES + 2);
    free(t);
    metrics_free(m);
}

TEST_CASE(format_checker_rejects_garbage)
{
    /* The checker itself must be able to fail. */
    CHECK(format_errors("x 1\n") == 0);
    CHECK(format_errors("x{a=\"b\"} 1\n") == 0);
    CHECK(format_errors("x{a=\"b} 1\n") > 0);
    CHECK(format_errors("x{a=\"b\\q\"} 1\n") > 0);
    CHECK(format_errors("9x 1\n") > 0);
    CHECK(format_errors("x one\n") > 0);
    CHECK(format_errors("x 1") > 0);
    CHECK(format_errors("# TYPE x summary-ish\n") > 0);
}

/* Runs fn(arg) in a child with stderr silenced; 1 when the child died of SIGABRT. */
static int aborts(void (*fn)(int), int arg)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr))
            _exit(3);
        fn(arg);
        _exit(0);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}

static void misuse(int which)
{
    static const double unsorted[] = {1, 0.5};
    metrics *m = metrics_new();
    metric *c = metrics_counter(m, "ok_total", "x", "status");
    metric *g = metrics_gauge(m, "ok_gauge", "x", NULL);
    switch (which) {
    case 0:
        metrics_counter(m, "9starts_with_digit", "x", NULL);
        break;
    case 1:
        metrics_counter(m, "has-dash", "x", NULL);
        break;
    case 2:
        metrics_counter(m, "x_total", "x", "__reserved");
        break;
    case 3:
        metrics_histogram(m, "h_seconds", "x", "le", NULL, 0);
        break;
    case 4:
        metrics_histogram(m, "h_seconds", "x", NULL, unsorted, 2);
        break;
    case 5:
        metrics_gauge(m, "ok_total", "x", "status"); /* same name, other type */
        break;
    case 6:
        metric_inc(c, NULL, 1); /* labelled metric without a value */
        break;
    case 7:
        metric_set(g, "v", 1); /* unlabelled metric with a value */
        break;
    case 8:
        metric_set(c, "v", 1); /* set on a counter */
        break;
    case 9:
        metric_observe(g, NULL, 1);
        break;
    default: /* control: valid use does not abort */
        metric_inc(c, "v", 1);
        break;
    }
    metrics_free(m);
}

TEST_CASE(programming_errors_abort)
{
    for (int i = 0; i < 10; i++) {
        int r = aborts(misuse, i);
        if (r != 1)
            fprintf(stderr, "misuse case %d: %d\n", i, r);
        CHECK_EQ_INT(r, 1);
    }
    CHECK_EQ_INT(aborts(misuse, 99), 0);
}

TEST_CASE(remove_counter_fn_and_process)
{
    metrics *m = metrics_new();
    metric *g = metrics_gauge(m, "sandbox_queue_lag", "Lag.", "queue");
    metric_set(g, "a", 3);
    metric_set(g, "b", 4);
    metric_remove(g, "a");
    metric_remove(g, "zz"); /* absent: no-op */
    char *t = render(m);
    CHECK_STR(t, "# HELP sandbox_queue_lag Lag.\n# TYPE sandbox_queue_lag gauge\n"
                 "sandbox_queue_lag{queue=\"b\"} 4\n");
    free(t);
    metric_remove(g, "b");
    metric_set(g, "a", 1); /* created again */
    CHECK(metric_value(g, "a") == 1 && metric_value(g, "b") == 0);

    cb_value = 2.5;
    metric *c = metrics_counter_fn(m, "x_seconds_total", "Seconds.", gauge_cb, &cb_value);
    CHECK(metric_value(c, NULL) == 2.5);
    metrics_process(m);
    t = render(m);
    CHECK(strstr(t, "# TYPE x_seconds_total counter\nx_seconds_total 2.5\n"));
    CHECK(strstr(t, "# TYPE process_cpu_seconds_total counter\n"));
    const char *rss = strstr(t, "\nprocess_resident_memory_bytes ");
    CHECK(rss && strtod(rss + 31, NULL) > 1e5); /* a live process has some resident memory */
    const char *fds = strstr(t, "\nprocess_open_fds ");
    CHECK(fds && strtod(fds + 18, NULL) >= 3);
    const char *start = strstr(t, "\nprocess_start_time_seconds ");
    CHECK(start && strtod(start + 28, NULL) > 1.6e9);
    CHECK_EQ_INT(format_errors(t), 0);
    free(t);
    metrics_free(m);
}

int main(void)
{
    RUN(counter_with_label);
    RUN(gauges);
    RUN(histogram);
    RUN(histogram_with_label);
    RUN(escaping);
    RUN(values_and_reregistration);
    RUN(series_cap);
    RUN(format_checker_rejects_garbage);
    RUN(programming_errors_abort);
    RUN(remove_counter_fn_and_process);
    return test_report();
}
