/* Starts and stops tests/fakes/e2b.js for the integration tests. */
#include "tests/support/e2b_server.h"

#include <errno.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "lib/buf.h"

#define SCRIPT "tests/fakes/e2b.js"

static int in_path(const char *prog)
{
    const char *path = getenv("PATH");
    char buf[4096];

    while (path && *path) {
        size_t n = strcspn(path, ":");
        snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, path, prog);
        if (access(buf, X_OK) == 0)
            return 1;
        path += n + (path[n] == ':');
    }
    return 0;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

int e2b_server_start(struct e2b_server *s, char *why, size_t whylen)
{
    return e2b_server_start_envd(s, NULL, why, whylen);
}

int e2b_server_start_envd(struct e2b_server *s, const char *envd_version, char *why, size_t whylen)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    char line[1024] = "";
    size_t used = 0;

    memset(s, 0, sizeof(*s));
    s->pid = -1;
    s->stdin_fd = -1;
    if (!in_path("node")) {
        snprintf(why, whylen, "node is not installed (apt-get install nodejs)");
        return 1;
    }
    if (access(SCRIPT, R_OK) != 0) {
        snprintf(why, whylen, "%s is missing (run from the repository root)", SCRIPT);
        return 1;
    }
    snprintf(s->dir, sizeof(s->dir), "%s/e2bfake-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(s->dir)) {
        snprintf(why, whylen, "mkdtemp: %s", strerror(errno));
        return -1;
    }
    if (pipe(in) != 0 || pipe(out) != 0) {
        snprintf(why, whylen, "pipe: %s", strerror(errno));
        goto fail;
    }
    s->pid = fork();
    if (s->pid < 0) {
        snprintf(why, whylen, "fork: %s", strerror(errno));
        goto fail;
    }
    if (s->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        if (envd_version)
            execlp("node", "node", SCRIPT, "--root", s->dir, "--port", "0", "--envd-version",
                   envd_version, (char *)NULL);
        else
            execlp("node", "node", SCRIPT, "--root", s->dir, "--port", "0", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    in[0] = out[1] = -1;
    s->stdin_fd = in[1];
    in[1] = -1;
    time_t deadline = time(NULL) + 30;
    while (time(NULL) < deadline && !strchr(line, '\n')) {
        struct pollfd pfd = {out[0], POLLIN, 0};
        if (poll(&pfd, 1, 1000) <= 0)
            continue;
        ssize_t n = read(out[0], line + used, sizeof(line) - 1 - used);
        if (n <= 0)
            break;
        used += (size_t)n;
        line[used] = '\0';
    }
    close(out[0]);
    out[0] = -1;
    line[used] = '\0';
    cJSON *j = cJSON_Parse(line);
    const cJSON *port = cJSON_GetObjectItem(j, "port"), *key = cJSON_GetObjectItem(j, "api_key");
    if (cJSON_IsNumber(port) && cJSON_IsString(key)) {
        s->port = port->valueint;
        snprintf(s->api_key, sizeof(s->api_key), "%s", key->valuestring);
    }
    cJSON_Delete(j);
    if (s->port <= 0) {
        snprintf(why, whylen, "the E2B fake did not start within 30 s (output: \"%s\")", line);
        goto fail;
    }
    snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d", s->port);
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (out[i] >= 0)
            close(out[i]);
    }
    e2b_server_stop(s);
    return -1;
}

void e2b_server_stop(struct e2b_server *s)
{
    if (s->stdin_fd >= 0) {
        close(s->stdin_fd);
        s->stdin_fd = -1;
    }
    if (s->pid > 0) {
        int status;
        kill(s->pid, SIGTERM);
        for (int i = 0; i < 100; i++) {
            if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
                s->pid = -1;
                break;
            }
            usleep(100 * 1000);
        }
        if (s->pid > 0) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &status, 0);
            s->pid = -1;
        }
    }
    if (s->dir[0]) {
        nftw(s->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        s->dir[0] = '\0';
    }
}

static size_t collect(char *p, size_t size, size_t n, void *arg)
{
    buf_append(arg, p, size * n);
    return size * n;
}

long e2b_server_call(const struct e2b_server *s, const char *method, const char *path,
                     const char *body, char **out)
{
    struct buf b;
    char url[512];
    long status = 0;
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;

    buf_init(&b);
    buf_puts(&b, "");
    snprintf(url, sizeof(url), "%s%s", s->url, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    if (body) {
        h = curl_slist_append(h, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (out)
        *out = buf_detach(&b);
    else
        buf_release(&b);
    return status;
}
