/* Starts and stops Node.js fakes for the integration tests. */
#include "tests/support/node_fake.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

int node_fake_start(struct node_fake *f, const char *script, const char *module, char *why,
                    size_t whylen)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    char line[128], pkg[512];
    size_t used = 0;
    time_t deadline;

    memset(f, 0, sizeof(*f));
    f->pid = -1;
    f->stdin_fd = -1;
    if (!in_path("node")) {
        snprintf(why, whylen, "node is not installed (apt-get install nodejs)");
        return 1;
    }
    if (module) {
        snprintf(pkg, sizeof(pkg), "tests/fakes/node_modules/%s/package.json", module);
        if (access(pkg, R_OK) != 0) {
            snprintf(why, whylen, "%s missing: run `npm install --prefix tests/fakes`", module);
            return 1;
        }
    }
    if (pipe(in) != 0 || pipe(out) != 0) {
        snprintf(why, whylen, "pipe: %s", strerror(errno));
        goto fail;
    }
    f->pid = fork();
    if (f->pid < 0) {
        snprintf(why, whylen, "fork: %s", strerror(errno));
        goto fail;
    }
    if (f->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        execlp("node", "node", script, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    in[0] = out[1] = -1;
    f->stdin_fd = in[1];
    in[1] = -1;
    deadline = time(NULL) + 30;
    while (time(NULL) < deadline) {
        struct pollfd pfd = {out[0], POLLIN, 0};
        if (poll(&pfd, 1, 1000) <= 0)
            continue;
        ssize_t n = read(out[0], line + used, sizeof(line) - 1 - used);
        if (n <= 0)
            break;
        used += (size_t)n;
        line[used] = '\0';
        if (strchr(line, '\n') && sscanf(line, "listening %d", &f->port) == 1)
            break;
    }
    close(out[0]);
    out[0] = -1;
    if (f->port <= 0) {
        snprintf(why, whylen, "%s did not start within 30 s (output: \"%s\")", script,
                 used ? line : "");
        goto fail;
    }
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d", f->port);
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (out[i] >= 0)
            close(out[i]);
    }
    node_fake_stop(f);
    return -1;
}

void node_fake_stop(struct node_fake *f)
{
    if (f->stdin_fd >= 0) {
        close(f->stdin_fd);
        f->stdin_fd = -1;
    }
    if (f->pid > 0) {
        int status;
        kill(f->pid, SIGTERM);
        for (int i = 0; i < 100; i++) {
            if (waitpid(f->pid, &status, WNOHANG) == f->pid) {
                f->pid = -1;
                break;
            }
            usleep(100 * 1000);
        }
        if (f->pid > 0) {
            kill(f->pid, SIGKILL);
            waitpid(f->pid, &status, 0);
            f->pid = -1;
        }
    }
}
