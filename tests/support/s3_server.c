/* Starts and stops tests/fakes/s3rver.js for the integration tests. */
#include "tests/support/s3_server.h"

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

#define SCRIPT  "tests/fakes/s3rver.js"
#define MODULES "tests/fakes/node_modules"

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

int s3_server_start(struct s3_server *s, const char *buckets, char *why, size_t whylen)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    char line[128];
    size_t used = 0;
    time_t deadline;

    memset(s, 0, sizeof(*s));
    s->pid = -1;
    s->stdin_fd = -1;
    if (!in_path("node")) {
        snprintf(why, whylen, "node is not installed (apt-get install nodejs)");
        return 1;
    }
    if (access(MODULES "/s3rver/package.json", R_OK) != 0 ||
        access(MODULES "/aws4/package.json", R_OK) != 0) {
        snprintf(why, whylen, "s3rver/aws4 missing: run `npm install --prefix tests/fakes`");
        return 1;
    }
    snprintf(s->dir, sizeof(s->dir), "%s/s3rver-XXXXXX",
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
        execlp("node", "node", SCRIPT, s->dir, buckets, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    in[0] = out[1] = -1;
    s->stdin_fd = in[1];
    in[1] = -1;
    deadline = time(NULL) + 60;
    while (time(NULL) < deadline) {
        struct pollfd pfd = {out[0], POLLIN, 0};
        if (poll(&pfd, 1, 1000) <= 0)
            continue;
        ssize_t n = read(out[0], line + used, sizeof(line) - 1 - used);
        if (n <= 0)
            break;
        used += (size_t)n;
        line[used] = '\0';
        if (strchr(line, '\n') && sscanf(line, "listening %d", &s->port) == 1)
            break;
    }
    close(out[0]);
    out[0] = -1;
    if (s->port <= 0) {
        snprintf(why, whylen, "s3rver did not start within 60 s (output: \"%s\")",
                 used ? line : "");
        goto fail;
    }
    snprintf(s->endpoint, sizeof(s->endpoint), "http://127.0.0.1:%d", s->port);
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (out[i] >= 0)
            close(out[i]);
    }
    s3_server_stop(s);
    return -1;
}

void s3_server_stop(struct s3_server *s)
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
