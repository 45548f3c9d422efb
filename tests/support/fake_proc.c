/* Starts and stops the Node fakes under tests/fakes for the integration tests. */
#include "tests/support/fake_proc.h"

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

static int fake_in_path(const char *prog)
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

int fake_proc_start(struct fake_proc *f, const char *script, const char *const *args,
                    const char *const *needs, char *why, size_t whylen)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    size_t used = 0;
    memset(f, 0, sizeof(*f));
    f->pid = -1;
    f->stdin_fd = -1;
    if (!fake_in_path("node")) {
        snprintf(why, whylen, "node is not installed (apt-get install nodejs)");
        return 1;
    }
    for (size_t i = 0; needs && needs[i]; i++) {
        char p[512];
        snprintf(p, sizeof(p), "tests/fakes/node_modules/%s", needs[i]);
        if (access(p, R_OK) != 0) {
            snprintf(why, whylen, "%s missing: run `npm install --prefix tests/fakes`", needs[i]);
            return 1;
        }
    }
    size_t nargs = 0;
    while (args && args[nargs])
        nargs++;
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
        char **argv = calloc(nargs + 3, sizeof(*argv));
        if (!argv)
            _exit(127);
        argv[0] = strdup("node");
        argv[1] = strdup(script);
        for (size_t i = 0; i < nargs; i++)
            argv[2 + i] = strdup(args[i]);
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        setenv("NODE_NO_WARNINGS", "1", 1);
        execvp("node", argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    in[0] = out[1] = -1;
    f->stdin_fd = in[1];
    in[1] = -1;
    time_t deadline = time(NULL) + 60;
    char *nl = NULL;
    while (!nl && time(NULL) < deadline && used < sizeof(f->line) - 1) {
        struct pollfd pfd = {out[0], POLLIN, 0};
        if (poll(&pfd, 1, 1000) <= 0)
            continue;
        ssize_t n = read(out[0], f->line + used, sizeof(f->line) - 1 - used);
        if (n <= 0)
            break;
        used += (size_t)n;
        f->line[used] = '\0';
        nl = strchr(f->line, '\n');
    }
    close(out[0]);
    out[0] = -1;
    if (!nl) {
        snprintf(why, whylen, "%s did not start within 60 s (output: \"%.200s\")", script,
                 used ? f->line : "");
        goto fail;
    }
    *nl = '\0';
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (out[i] >= 0)
            close(out[i]);
    }
    fake_proc_stop(f);
    return -1;
}

void fake_proc_stop(struct fake_proc *f)
{
    if (f->stdin_fd > 2) {
        close(f->stdin_fd);
        f->stdin_fd = -1;
    }
    if (f->pid > 0) {
        kill(f->pid, SIGTERM);
        for (int i = 0; i < 1000; i++) {
            if (waitpid(f->pid, NULL, WNOHANG) == f->pid) {
                f->pid = -1;
                return;
            }
            usleep(10000);
        }
        kill(f->pid, SIGKILL);
        waitpid(f->pid, NULL, 0);
        f->pid = -1;
    }
}

const char *fake_proc_field(const struct fake_proc *f, const char *key, char *out, size_t outlen)
{
    char pat[128];
    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    const char *p = strstr(f->line, pat);
    out[0] = '\0';
    if (!p)
        return out;
    p += strlen(pat);
    size_t n = strcspn(p, "\"");
    snprintf(out, outlen, "%.*s", (int)n, p);
    return out;
}

int fake_proc_mkdtemp(const char *name, char *out, size_t outlen, char *why, size_t whylen)
{
    snprintf(out, outlen, "%s/%s-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", name);
    if (mkdtemp(out))
        return 0;
    snprintf(why, whylen, "mkdtemp: %s", strerror(errno));
    out[0] = '\0';
    return -1;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(p);
    return 0;
}

void fake_proc_rmtree(char *dir)
{
    if (!dir[0])
        return;
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    dir[0] = '\0';
}
