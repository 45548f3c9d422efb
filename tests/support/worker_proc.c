#include "tests/support/worker_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "lib/buf.h"
#include "providers/provider.h"
#include "tests/support/scripted_provider.h"
#include "worker/worker.h"

void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

pid_t worker_spawn(const struct worker_spec *spec)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    if (spec->log_path) {
        int fd = open(spec->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
    }
    setenv("REDIS_URL", spec->url, 1);
    setenv("SANDBOX_QUEUE_PREFIX", spec->prefix, 1);
    setenv("WORKER_NAME", spec->name, 1);
    setenv("SANDBOX_PROVIDER", "scripted", 1);
    setenv("WORKER_HTTP_ADDR", "off", 1);
    setenv("LIGHTDASH_LOG_LEVEL", "debug", 1);
    setenv("LIGHTDASH_LOG_FORMAT", "plain", 1);
    for (size_t i = 0; spec->env && spec->env[i]; i++)
        putenv(strdup(spec->env[i]));
    provider_register(&scripted_provider_ops);
    provider_register(&scripted_reattach_provider_ops);
    scripted_stats()->fail_create = spec->fail_create;
    scripted_stats()->fail_suspend_nth = spec->fail_suspend_nth;
    static char arg0[] = "sandbox-worker";
    char *argv[] = {arg0, NULL};
    _exit(worker_main(1, argv));
}

int worker_stop(pid_t pid, int sig, int timeout_ms)
{
    if (sig)
        kill(pid, sig);
    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        sleep_ms(20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

redisContext *sync_connect(int port)
{
    redisContext *c = redisConnect("127.0.0.1", port);
    if (!c || c->err) {
        fprintf(stderr, "cannot connect to redis on port %d\n", port);
        exit(1);
    }
    return c;
}

redisReply *sync_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r) {
        fprintf(stderr, "redis command failed: %s\n", c->errstr);
        exit(1);
    }
    return r;
}

char *sync_hget(redisContext *c, const char *key, const char *field)
{
    redisReply *r = sync_cmd(c, "HGET %s %s", key, field);
    char *s = r->type == REDIS_REPLY_STRING ? strndup(r->str, r->len) : NULL;
    freeReplyObject(r);
    return s;
}

char *sync_wait_hget(redisContext *c, const char *key, const char *field, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 25) {
        char *s = sync_hget(c, key, field);
        if (s && *s)
            return s;
        free(s);
        sleep_ms(25);
    }
    return NULL;
}

long long sync_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r) {
        fprintf(stderr, "redis command failed: %s\n", c->errstr);
        exit(1);
    }
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

int sync_forget_handle(redisContext *c, const char *job_key)
{
    char *rec = sync_hget(c, job_key, "reattach");
    cJSON *j = rec ? cJSON_Parse(rec) : NULL;
    int rc = cJSON_IsObject(cJSON_GetObjectItem(j, "handle")) ? 0 : -1;
    cJSON_ReplaceItemInObject(j, "handle", cJSON_CreateNull());
    char *out = cJSON_PrintUnformatted(j);
    freeReplyObject(sync_cmd(c, "HSET %s reattach %s", job_key, out ? out : ""));
    free(out);
    cJSON_Delete(j);
    free(rec);
    return rc;
}

char *sync_event_output(redisContext *c, const char *prefix, const char *job_id, const char *step,
                        const char *stream)
{
    redisReply *r = sync_cmd(c, "XRANGE {%s}:events:%s - +", prefix, job_id);
    struct buf b;
    buf_init(&b);
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *f = r->element[i]->element[1];
        const char *type = "", *st = "", *sm = "";
        redisReply *data = NULL;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            const char *n = f->element[k]->str;
            if (!strcmp(n, "type"))
                type = f->element[k + 1]->str;
            else if (!strcmp(n, "step"))
                st = f->element[k + 1]->str;
            else if (!strcmp(n, "stream"))
                sm = f->element[k + 1]->str;
            else if (!strcmp(n, "data"))
                data = f->element[k + 1];
        }
        if (!strcmp(type, "output") && !strcmp(st, step) && !strcmp(sm, stream) && data)
            buf_append(&b, data->str, data->len);
    }
    freeReplyObject(r);
    buf_putc(&b, '\0');
    return buf_detach(&b);
}
