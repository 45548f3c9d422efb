/* Logging: one line per message, JSON or text, to stderr (or a sink set by log_setup).
 * Levels and formats use Lightdash's names (LIGHTDASH_LOG_LEVEL / LIGHTDASH_LOG_FORMAT).
 * Every line passes through the global secret mask (log_mask()) before it is written. */
#ifndef SW_LOG_H
#define SW_LOG_H

#include <stdio.h>

#include "lib/mask.h"

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_HTTP, LOG_DEBUG };
enum log_format { LOG_FMT_PLAIN = 0, LOG_FMT_JSON, LOG_FMT_PRETTY };

/* Optional fields carried on a line. Any member may be NULL. */
struct log_ctx {
    const char *job;
    const char *thread;
};

/* out may be NULL for stderr. Not thread-safe; call before the loop starts. */
void log_setup(enum log_level level, enum log_format format, FILE *out);
/* "error|warn|info|http|debug" and "json|plain|pretty"; -1 on unknown text. */
int log_level_parse(const char *s, enum log_level *out);
int log_format_parse(const char *s, enum log_format *out);
int log_enabled(enum log_level level);
/* The process-wide mask applied to every line; never NULL. */
struct mask *log_mask(void);
/* Extra static field on every line (e.g. worker name); copied; NULL clears. */
void log_set_component(const char *name);

void log_emit(enum log_level level, const struct log_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(ctx, ...) log_emit(LOG_ERROR, ctx, __VA_ARGS__)
#define log_warn(ctx, ...)  log_emit(LOG_WARN, ctx, __VA_ARGS__)
#define log_info(ctx, ...)                                                                         \
    do {                                                                                           \
        if (log_enabled(LOG_INFO))                                                                 \
            log_emit(LOG_INFO, ctx, __VA_ARGS__);                                                  \
    } while (0)
#define log_debug(ctx, ...)                                                                        \
    do {                                                                                           \
        if (log_enabled(LOG_DEBUG))                                                                \
            log_emit(LOG_DEBUG, ctx, __VA_ARGS__);                                                 \
    } while (0)

#endif
