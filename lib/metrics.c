#include "lib/metrics.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum metric_type { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM };

static const char *const type_names[] = {"counter", "gauge", "histogram"};

struct series {
    char *label;       /* NULL for an unlabelled metric */
    double value;      /* counter, gauge */
    uint64_t *buckets; /* histogram: per-bucket (not cumulative) counts, nbounds + 1 (+Inf) */
    double sum;        /* histogram */
    uint64_t count;    /* histogram */
};

struct metric {
    enum metric_type type;
    char *name;
    char *help;
    char *label_name; /* NULL: one series, created at registration */
    double *bounds;   /* histogram: finite upper bounds, strictly increasing */
    size_t nbounds;
    double (*fn)(void *arg); /* callback gauge */
    void *fn_arg;
    struct series *series;
    size_t nseries, cap;
    uint64_t dropped;
    struct metric *next;
};

struct metrics {
    metric *head, *tail;
};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("metrics: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static int valid_name(const char *s, int colon)
{
    if (!s || !*s)
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (colon && c == ':') || (p != s && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

metrics *metrics_new(void)
{
    return xcalloc(1, sizeof(metrics));
}

static void series_release(struct series *s)
{
    free(s->label);
    free(s->buckets);
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    metric *mt = m->head;
    while (mt) {
        metric *next = mt->next;
        for (size_t i = 0; i < mt->nseries; i++)
            series_release(&mt->series[i]);
        free(mt->series);
        free(mt->name);
        free(mt->help);
        free(mt->label_name);
        free(mt->bounds);
        free(mt);
        mt = next;
    }
    free(m);
}

static metric *find_metric(const metrics *m, const char *name)
{
    for (metric *mt = m->head; mt; mt = mt->next)
        if (strcmp(mt->name, name) == 0)
            return mt;
    return NULL;
}

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* The series for label (NULL for unlabelled), NULL when absent. */
static const struct series *find_series(const metric *mt, const char *label)
{
    if (!mt->label_name != !label)
        die("%s: %s", mt->name,
            label ? "label value given for an unlabelled metric" : "missing label value");
    for (size_t i = 0; i < mt->nseries; i++)
        if (same_str(mt->series[i].label, label))
            return &mt->series[i];
    return NULL;
}

/* Returns the series for label (NULL for unlabelled), creating it; NULL when the series cap is
 * reached. */
static struct series *get_series(metric *mt, const char *label)
{
    const struct series *found = find_series(mt, label);
    if (found)
        return &mt->series[found - mt->series];
    if (mt->nseries >= METRICS_MAX_SERIES) {
        mt->dropped++;
        return NULL;
    }
    if (mt->nseries == mt->cap) {
        mt->cap = mt->cap ? mt->cap * 2 : 4;
        mt->series = xrealloc(mt->series, mt->cap * sizeof(*mt->series));
    }
    struct series *s = &mt->series[mt->nseries++];
    memset(s, 0, sizeof(*s));
    s->label = label ? xstrdup(label) : NULL;
    if (mt->type == MT_HISTOGRAM)
        s->buckets = xcalloc(mt->nbounds + 1, sizeof(uint64_t));
    return s;
}

static metric *reg(metrics *m, enum metric_type type, const char *name, const char *help,
                   const char *label_name, const double *bounds, size_t nbounds)
{
    if (!valid_name(name, 1))
        die("invalid metric name \"%s\"", name ? name : "(null)");
    if (label_name && (!valid_name(label_name, 0) || strncmp(label_name, "__", 2) == 0 ||
                       (type == MT_HISTOGRAM && strcmp(label_name, "le") == 0)))
        die("%s: invalid label name \"%s\"", name, label_name);
    for (size_t i = 0; i < nbounds; i++)
        if (isnan(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])) ||
            (isinf(bounds[i]) && (bounds[i] < 0 || i != nbounds - 1)))
            die("%s: histogram buckets must be strictly increasing", name);
    if (nbounds > 0 && isinf(bounds[nbounds - 1]))
        nbounds--; /* +Inf is implicit */

    metric *old = find_metric(m, name);
    if (old) {
        if (old->type != type || old->fn || !same_str(old->label_name, label_name) ||
            old->nbounds != nbounds ||
            (nbounds && memcmp(old->bounds, bounds, nbounds * sizeof(double)) != 0))
            die("%s: registered twice with different shapes", name);
        return old;
    }

    metric *mt = xcalloc(1, sizeof(*mt));
    mt->type = type;
    mt->name = xstrdup(name);
    mt->help = xstrdup(help ? help : "");
    mt->label_name = label_name ? xstrdup(label_name) : NULL;
    if (nbounds) {
        mt->bounds = xmalloc(nbounds * sizeof(double));
        memcpy(mt->bounds, bounds, nbounds * sizeof(double));
    }
    mt->nbounds = nbounds;
    if (!label_name)
        get_series(mt, NULL);
    if (m->tail)
        m->tail->next = mt;
    else
        m->head = mt;
    m->tail = mt;
    return mt;
}

metric *metrics_counter(metrics *m, const char *name, const char *help, const char *label_name)
{
    return reg(m, MT_COUNTER, name, help, label_name, NULL, 0);
}

metric *metrics_gauge(metrics *m, const char *name, const char *help, const char *label_name)
{
    return reg(m, MT_GAUGE, name, help, label_name, NULL, 0);
}

metric *metrics_gauge_fn(metrics *m, const char *name, const char *help, double (*fn)(void *arg),
                         void *arg)
{
    if (!fn)
        die("%s: NULL gauge callback", name ? name : "(null)");
    if (valid_name(name, 1) && find_metric(m, name))
        die("%s: registered twice", name);
    metric *mt = reg(m, MT_GAUGE, name, help, NULL, NULL, 0);
    mt->fn = fn;
    mt->fn_arg = arg;
    return mt;
}

metric *metrics_counter_fn(metrics *m, const char *name, const char *help, double (*fn)(void *arg),
                           void *arg)
{
    if (!fn)
        die("%s: NULL counter callback", name ? name : "(null)");
    if (valid_name(name, 1) && find_metric(m, name))
        die("%s: registered twice", name);
    metric *mt = reg(m, MT_COUNTER, name, help, NULL, NULL, 0);
    mt->fn = fn;
    mt->fn_arg = arg;
    return mt;
}

void metric_remove(metric *mt, const char *label_value)
{
    const struct series *found = find_series(mt, label_value);
    if (!found || !label_value)
        return; /* an unlabelled metric keeps its one series */
    size_t i = (size_t)(found - mt->series);
    free(mt->series[i].label);
    free(mt->series[i].buckets);
    memmove(&mt->series[i], &mt->series[i + 1], (mt->nseries - i - 1) * sizeof(*mt->series));
    mt->nseries--;
}

metric *metrics_histogram(metrics *m, const char *name, const char *help, const char *label_name,
                          const double *buckets, size_t nbuckets)
{
    return reg(m, MT_HISTOGRAM, name, help, label_name, buckets, nbuckets);
}

static void need_type(const metric *mt, enum metric_type a, enum metric_type b, const char *op)
{
    if (mt->type != a && mt->type != b)
        die("%s: %s on a %s", mt->name, op, type_names[mt->type]);
    if (mt->fn)
        die("%s: %s on a callback gauge", mt->name, op);
}

void metric_inc(metric *c, const char *label_value, double by)
{
    need_type(c, MT_COUNTER, MT_GAUGE, "inc");
    if (isnan(by) || (c->type == MT_COUNTER && by < 0))
        return;
    struct series *s = get_series(c, label_value);
    if (s)
        s->value += by;
}

void metric_set(metric *g, const char *label_value, double v)
{
    need_type(g, MT_GAUGE, MT_GAUGE, "set");
    struct series *s = get_series(g, label_value);
    if (s)
        s->value = v;
}

void metric_observe(metric *h, const char *label_value, double v)
{
    need_type(h, MT_HISTOGRAM, MT_HISTOGRAM, "observe");
    if (isnan(v))
        return;
    struct series *s = get_series(h, label_value);
    if (!s)
        return;
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i])
        i++;
    s->buckets[i]++;
    s->sum += v;
    s->count++;
}

double metric_value(const metric *mt, const char *label_value)
{
    if (mt->type == MT_HISTOGRAM)
        die("%s: metric_value on a histogram", mt->name);
    if (mt->fn)
        return mt->fn(mt->fn_arg);
    const struct series *s = find_series(mt, label_value);
    return s ? s->value : 0;
}

static const struct series *hist_series(const metric *h, const char *label_value)
{
    if (h->type != MT_HISTOGRAM)
        die("%s: histogram query on a %s", h->name, type_names[h->type]);
    return find_series(h, label_value);
}

uint64_t metric_count(const metric *h, const char *label_value)
{
    const struct series *s = hist_series(h, label_value);
    return s ? s->count : 0;
}

double metric_sum(const metric *h, const char *label_value)
{
    const struct series *s = hist_series(h, label_value);
    return s ? s->sum : 0;
}

uint64_t metric_dropped(const metric *mt)
{
    return mt->dropped;
}

/* Shortest of %.15g / %.17g that reads back exactly; Inf and NaN spelt as Prometheus does. */
static void put_double(struct buf *out, double v)
{
    if (isnan(v)) {
        buf_puts(out, "NaN");
        return;
    }
    if (isinf(v)) {
        buf_puts(out, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    char s[40];
    snprintf(s, sizeof(s), "%.15g", v);
    if (strtod(s, NULL) != v)
        snprintf(s, sizeof(s), "%.17g", v);
    buf_puts(out, s);
}

/* Escapes '\\' and '\n', plus '"' when quote is set (label values). */
static void put_escaped(struct buf *out, const char *s, int quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            buf_puts(out, "\\\\");
        else if (*s == '\n')
            buf_puts(out, "\\n");
        else if (quote && *s == '"')
            buf_puts(out, "\\\"");
        else
            buf_putc(out, *s);
    }
}

/* name{label="v",le="b"} without a trailing space; suffix and le may be NULL. */
static void put_sample_name(struct buf *out, const metric *mt, const char *suffix,
                            const struct series *s, const double *le)
{
    buf_puts(out, mt->name);
    if (suffix)
        buf_puts(out, suffix);
    if (!s->label && !le)
        return;
    buf_putc(out, '{');
    if (s->label) {
        buf_printf(out, "%s=\"", mt->label_name);
        put_escaped(out, s->label, 1);
        buf_putc(out, '"');
    }
    if (le) {
        buf_puts(out, s->label ? ",le=\"" : "le=\"");
        put_double(out, *le);
        buf_putc(out, '"');
    }
    buf_putc(out, '}');
}

static void render_histogram(struct buf *out, const metric *mt, const struct series *s)
{
    uint64_t cum = 0;
    for (size_t i = 0; i <= mt->nbounds; i++) {
        double le = i < mt->nbounds ? mt->bounds[i] : INFINITY;
        cum += s->buckets[i];
        put_sample_name(out, mt, "_bucket", s, &le);
        buf_printf(out, " %llu\n", (unsigned long long)cum);
    }
    put_sample_name(out, mt, "_sum", s, NULL);
    buf_putc(out, ' ');
    put_double(out, s->sum);
    buf_putc(out, '\n');
    put_sample_name(out, mt, "_count", s, NULL);
    buf_printf(out, " %llu\n", (unsigned long long)s->count);
}

void metrics_render(const metrics *m, struct buf *out)
{
    for (const metric *mt = m->head; mt; mt = mt->next) {
        buf_printf(out, "# HELP %s ", mt->name);
        put_escaped(out, mt->help, 0);
        buf_printf(out, "\n# TYPE %s %s\n", mt->name, type_names[mt->type]);
        for (size_t i = 0; i < mt->nseries; i++) {
            const struct series *s = &mt->series[i];
            if (mt->type == MT_HISTOGRAM) {
                render_histogram(out, mt, s);
                continue;
            }
            put_sample_name(out, mt, NULL, s, NULL);
            buf_putc(out, ' ');
            put_double(out, mt->fn ? mt->fn(mt->fn_arg) : s->value);
            buf_putc(out, '\n');
        }
    }
}

/* ---- process metrics (Linux /proc; elsewhere the values are 0) ---- */

static double proc_cpu_seconds(void *arg)
{
    (void)arg;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Field n (1-based, after the ")" of the command name) of /proc/self/stat. */
static double proc_stat_field(int n)
{
    char b[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f)
        return 0;
    size_t len = fread(b, 1, sizeof(b) - 1, f);
    fclose(f);
    b[len] = '\0';
    char *p = strrchr(b, ')');
    if (!p)
        return 0;
    p++;
    for (int i = 0; i < n && p; i++) {
        while (*p == ' ')
            p++;
        if (i == n - 1)
            return strtod(p, NULL);
        p = strchr(p, ' ');
    }
    return 0;
}

static double proc_rss_bytes(void *arg)
{
    (void)arg;
    /* field 22 after the name: rss in pages (field 24 of the whole line) */
    return proc_stat_field(22) * (double)sysconf(_SC_PAGESIZE);
}

static double proc_vsize_bytes(void *arg)
{
    (void)arg;
    return proc_stat_field(21);
}

static double proc_open_fds(void *arg)
{
    (void)arg;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    double n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static double proc_max_fds(void *arg)
{
    (void)arg;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return 0;
    return (double)rl.rlim_cur;
}

static double proc_start_time(void *arg)
{
    return *(const double *)arg;
}

void metrics_process(metrics *m)
{
    static double start; /* Unix seconds when first registered */
    if (start == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        start = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    }
    metrics_counter_fn(m, "process_cpu_seconds_total",
                       "Total user and system CPU time spent in seconds.", proc_cpu_seconds, NULL);
    metrics_gauge_fn(m, "process_resident_memory_bytes", "Resident memory size in bytes.",
                     proc_rss_bytes, NULL);
    metrics_gauge_fn(m, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
                     proc_vsize_bytes, NULL);
    metrics_gauge_fn(m, "process_open_fds", "Number of open file descriptors.", proc_open_fds,
                     NULL);
    metrics_gauge_fn(m, "process_max_fds", "Maximum number of open file descriptors.", proc_max_fds,
                     NULL);
    metrics_gauge_fn(m, "process_start_time_seconds",
                     "Start time of the process since unix epoch in seconds.", proc_start_time,
                     &start);
}
