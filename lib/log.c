#include "lib/log.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "lib/buf.h"

static enum log_level g_level = LOG_INFO;
static enum log_format g_format = LOG_FMT_PLAIN;
static FILE *g_out;
static struct mask *g_mask;
static char *g_component;

static const char *const level_names[] = {"error", "warn", "info", "http", "debug"};
static const char *const format_names[] = {"plain", "json", "pretty"};

void log_setup(enum log_level level, enum log_format format, FILE *out)
{
    g_level = level;
    g_format = format;
    g_out = out;
}

int log_level_parse(const char *s, enum log_level *out)
{
    for (int i = 0; i <= LOG_DEBUG; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

int log_format_parse(const char *s, enum log_format *out)
{
    for (int i = 0; i <= LOG_FMT_PRETTY; i++) {
        if (strcmp(s, format_names[i]) == 0) {
            *out = (enum log_format)i;
            return 0;
        }
    }
    return -1;
}

int log_enabled(enum log_level level)
{
    return level <= g_level;
}

struct mask *log_mask(void)
{
    if (!g_mask)
        g_mask = mask_new();
    return g_mask;
}

void log_set_component(const char *name)
{
    free(g_component);
    g_component = name ? xstrdup(name) : NULL;
}

static void timestamp(char *out, size_t n)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t k = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + k, n - k, ".%03dZ", (int)(tv.tv_usec / 1000));
}

void log_emit(enum log_level level, const struct log_ctx *ctx, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    struct buf msg, line;
    buf_init(&msg);
    buf_init(&line);
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&msg, fmt, ap);
    va_end(ap);
    char ts[40];
    timestamp(ts, sizeof(ts));

    if (g_format == LOG_FMT_JSON) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "timestamp", ts);
        cJSON_AddStringToObject(o, "level", level_names[level]);
        if (g_component)
            cJSON_AddStringToObject(o, "worker", g_component);
        if (ctx && ctx->job)
            cJSON_AddStringToObject(o, "job", ctx->job);
        if (ctx && ctx->thread)
            cJSON_AddStringToObject(o, "thread", ctx->thread);
        cJSON_AddStringToObject(o, "message", msg.data ? msg.data : "");
        char *s = cJSON_PrintUnformatted(o);
        buf_puts(&line, s);
        free(s);
        cJSON_Delete(o);
    } else {
        buf_printf(&line, "%s [%s]", ts, level_names[level]);
        if (ctx && ctx->job)
            buf_printf(&line, " job=%s", ctx->job);
        if (ctx && ctx->thread)
            buf_printf(&line, " thread=%s", ctx->thread);
        buf_printf(&line, " %s", msg.data ? msg.data : "");
    }
    struct buf masked;
    buf_init(&masked);
    mask_apply(g_mask, line.data, line.len, &masked);
    buf_putc(&masked, '\n');
    FILE *out = g_out ? g_out : stderr;
    fwrite(masked.data, 1, masked.len, out);
    fflush(out);
    buf_release(&masked);
    buf_release(&line);
    buf_release(&msg);
}
