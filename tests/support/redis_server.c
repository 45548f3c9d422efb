/* Test helper: runs a real redis-server in a temporary directory. See redis_server.h. */
#include "tests/support/redis_server.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "lib/buf.h"

#define READY_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS  10000

struct test_redis {
    char dir[128];
    char conf[192];
    char log[192];
    char sock[192];
    char ca[192];
    char url[512];
    int port;
    int tls;
    int unix_socket;
    char *password;
    pid_t pid; /* 0 when not running */
};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int in_path(const char *name)
{
    const char *path = getenv("PATH");
    char full[1024];
    if (!path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        size_t n = strcspn(path, ":");
        snprintf(full, sizeof(full), "%.*s/%s", (int)n, path, name);
        if (access(full, X_OK) == 0)
            return 1;
        path += n;
        if (*path == ':')
            path++;
    }
    return 0;
}

/* A port that was free a moment ago (bind 127.0.0.1:0). 0 on failure. */
static int free_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int port = 0, fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int rc = fputs(text, f) < 0 ? -1 : 0;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

/* Prints the last lines of the server log, to explain a failure. */
static void print_log_tail(const struct test_redis *r)
{
    FILE *f = fopen(r->log, "r");
    char line[512];
    char *lines[12] = {0};
    int n = 0;
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        free(lines[n % 12]);
        lines[n % 12] = xstrdup(line);
        n++;
    }
    fclose(f);
    for (int i = n > 12 ? n - 12 : 0; i < n; i++) {
        printf("  redis log: %s", lines[i % 12]);
        free(lines[i % 12]);
    }
    fflush(stdout);
}

/* Runs argv in dir with output appended to the log; returns the exit status or -1. */
static int run_in_dir(const struct test_redis *r, const char *const argv[])
{
    int st;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(r->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (chdir(r->dir) < 0)
            _exit(126);
        execvp(argv[0], (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int make_certs(struct test_redis *r)
{
    char path[256];
    static const char ca_cnf[] = "[req]\ndistinguished_name = dn\nprompt = no\n"
                                 "x509_extensions = v3\n[dn]\nCN = sandbox-worker test CA\n"
                                 "[v3]\nbasicConstraints = critical,CA:TRUE\n"
                                 "keyUsage = critical,keyCertSign,cRLSign\n"
                                 "subjectKeyIdentifier = hash\n";
    static const char srv_cnf[] = "[req]\ndistinguished_name = dn\nprompt = no\n"
                                  "[dn]\nCN = localhost\n[ext]\nbasicConstraints = CA:FALSE\n"
                                  "keyUsage = critical,digitalSignature,keyEncipherment\n"
                                  "extendedKeyUsage = serverAuth\n"
                                  "subjectAltName = DNS:localhost,IP:127.0.0.1\n";
    const char *const ca_req[] = {"openssl", "req",      "-x509",
                                  "-new",    "-nodes",   "-newkey",
                                  "ec",      "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                  "-keyout", "ca.key",   "-out",
                                  "ca.pem",  "-days",    "2",
                                  "-config", "ca.cnf",   NULL};
    const char *const srv_req[] = {
        "openssl", "req",        "-new",     "-nodes",
        "-newkey", "ec",         "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", "server.key", "-out",     "server.csr",
        "-config", "server.cnf", NULL};
    const char *const srv_sign[] = {
        "openssl",    "x509",        "-req",   "-in",    "server.csr",
        "-CA",        "ca.pem",      "-CAkey", "ca.key", "-CAcreateserial",
        "-out",       "server.pem",  "-days",  "2",      "-extfile",
        "server.cnf", "-extensions", "ext",    NULL};

    if (!in_path("openssl")) {
        printf("  skipped: openssl command not found (needed to make test certificates)\n");
        return -1;
    }
    snprintf(path, sizeof(path), "%s/ca.cnf", r->dir);
    if (write_file(path, ca_cnf) < 0)
        return -1;
    snprintf(path, sizeof(path), "%s/server.cnf", r->dir);
    if (write_file(path, srv_cnf) < 0)
        return -1;
    if (run_in_dir(r, ca_req) != 0 || run_in_dir(r, srv_req) != 0 || run_in_dir(r, srv_sign) != 0) {
        printf("  test_redis: generating certificates with openssl failed\n");
        print_log_tail(r);
        return -1;
    }
    snprintf(r->ca, sizeof(r->ca), "%s/ca.pem", r->dir);
    return 0;
}

static int write_conf(struct test_redis *r)
{
    struct buf b;
    int rc;
    buf_init(&b);
    /* TLS servers also listen on ::1 when it exists, an address the certificate does not
     * name (for host-check tests) */
    buf_printf(&b,
               "bind 127.0.0.1%s\nprotected-mode no\ndaemonize no\nsave \"\"\n"
               "appendonly yes\nappendfsync always\ndir %s\nlogfile \"\"\n"
               "enable-debug-command local\n",
               r->tls ? " -::1" : "", r->dir);
    if (r->tls)
        buf_printf(&b,
                   "port 0\ntls-port %d\ntls-cert-file %s/server.pem\n"
                   "tls-key-file %s/server.key\ntls-ca-cert-file %s/ca.pem\n"
                   "tls-auth-clients no\n",
                   r->port, r->dir, r->dir, r->dir);
    else
        buf_printf(&b, "port %d\n", r->port);
    if (r->unix_socket)
        buf_printf(&b, "unixsocket %s\nunixsocketperm 700\n", r->sock);
    if (r->password)
        buf_printf(&b, "requirepass \"%s\"\n", r->password);
    rc = write_file(r->conf, b.data);
    buf_release(&b);
    return rc;
}

static void set_url(struct test_redis *r)
{
    char auth[160] = "";
    if (r->password) {
        /* percent-encode everything but unreserved characters */
        size_t n = 0;
        auth[n++] = ':';
        for (const char *p = r->password; *p && n + 5 < sizeof(auth); p++) {
            unsigned char c = (unsigned char)*p;
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '.' || c == '_' || c == '~')
                auth[n++] = (char)c;
            else
                n += (size_t)snprintf(auth + n, sizeof(auth) - n, "%%%02X", c);
        }
        auth[n++] = '@';
        auth[n] = '\0';
    }
    if (r->unix_socket)
        snprintf(r->url, sizeof(r->url), "unix://%s%s", auth, r->sock);
    else if (r->tls)
        snprintf(r->url, sizeof(r->url), "rediss://%slocalhost:%d", auth, r->port);
    else
        snprintf(r->url, sizeof(r->url), "redis://%s127.0.0.1:%d", auth, r->port);
}

static int spawn(struct test_redis *r)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
        int fd = open(r->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        int nul = open("/dev/null", O_RDONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (nul >= 0)
            dup2(nul, 0);
        if (chdir(r->dir) < 0)
            _exit(126);
        execlp("redis-server", "redis-server", r->conf, (char *)NULL);
        _exit(127);
    }
    r->pid = pid;
    return 0;
}

/* Waits until PING answers PONG; -1 when the server exits or the time runs out. */
static int wait_ready(struct test_redis *r)
{
    long long end = mono_ms() + READY_TIMEOUT_MS;
    while (mono_ms() < end) {
        int st;
        if (waitpid(r->pid, &st, WNOHANG) == r->pid) {
            r->pid = 0;
            printf("  test_redis: redis-server exited at start\n");
            print_log_tail(r);
            return -1;
        }
        char *out = test_redis_cli(r, "PING");
        int ok = out && strcmp(out, "PONG") == 0;
        free(out);
        if (ok)
            return 0;
        sleep_ms(50);
    }
    printf("  test_redis: redis-server did not answer PING within %d ms\n", READY_TIMEOUT_MS);
    print_log_tail(r);
    test_redis_kill(r);
    return -1;
}

struct test_redis *test_redis_start(const struct test_redis_opts *opts)
{
    struct test_redis *r;
    const char *tmp = getenv("TMPDIR");

    if (!in_path("redis-server") || !in_path("redis-cli")) {
        printf("  skipped: redis-server not found (install redis-server and redis-tools)\n");
        fflush(stdout);
        return NULL;
    }
    r = xcalloc(1, sizeof(*r));
    /* short base: a unix socket path must fit in 108 bytes */
    if (!tmp || strlen(tmp) > 60)
        tmp = "/tmp";
    snprintf(r->dir, sizeof(r->dir), "%s/sw-redis-XXXXXX", tmp);
    if (!mkdtemp(r->dir)) {
        printf("  test_redis: mkdtemp: %s\n", strerror(errno));
        free(r);
        return NULL;
    }
    snprintf(r->conf, sizeof(r->conf), "%s/redis.conf", r->dir);
    snprintf(r->log, sizeof(r->log), "%s/redis.log", r->dir);
    snprintf(r->sock, sizeof(r->sock), "%s/redis.sock", r->dir);
    if (opts) {
        r->tls = opts->tls;
        r->unix_socket = opts->unix_socket;
        r->password = opts->password ? xstrdup(opts->password) : NULL;
    }
    if (r->tls && make_certs(r) < 0)
        goto fail;
    /* a port found free can be taken before redis binds it: retry with another */
    for (int attempt = 0; attempt < 5; attempt++) {
        r->port = free_port();
        if (!r->port || write_conf(r) < 0 || spawn(r) < 0) {
            printf("  test_redis: cannot prepare redis-server: %s\n", strerror(errno));
            goto fail;
        }
        set_url(r);
        if (wait_ready(r) == 0) {
            fflush(stdout);
            return r;
        }
    }
fail:
    fflush(stdout);
    test_redis_free(r);
    return NULL;
}

const char *test_redis_url(const struct test_redis *r)
{
    return r->url;
}

int test_redis_port(const struct test_redis *r)
{
    return r->port;
}

const char *test_redis_ca_file(const struct test_redis *r)
{
    return r->tls ? r->ca : NULL;
}

const char *test_redis_dir(const struct test_redis *r)
{
    return r->dir;
}

int test_redis_stop(struct test_redis *r)
{
    int st = 0;
    long long end = mono_ms() + STOP_TIMEOUT_MS;
    if (!r->pid)
        return 0;
    kill(r->pid, SIGTERM);
    for (;;) {
        pid_t w = waitpid(r->pid, &st, WNOHANG);
        if (w == r->pid)
            break;
        if (w < 0 && errno != EINTR) {
            r->pid = 0;
            return -1;
        }
        if (mono_ms() > end) {
            printf("  test_redis: redis-server ignored SIGTERM; killing it\n");
            test_redis_kill(r);
            return -1;
        }
        sleep_ms(10);
    }
    r->pid = 0;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

int test_redis_restart(struct test_redis *r)
{
    test_redis_stop(r);
    if (spawn(r) < 0)
        return -1;
    return wait_ready(r);
}

void test_redis_kill(struct test_redis *r)
{
    if (!r->pid)
        return;
    kill(r->pid, SIGKILL);
    while (waitpid(r->pid, NULL, 0) < 0 && errno == EINTR)
        ;
    r->pid = 0;
}

static void remove_tree(const char *dir)
{
    int st;
    pid_t pid = fork();
    if (pid == 0) {
        execlp("rm", "rm", "-rf", dir, (char *)NULL);
        _exit(127);
    }
    if (pid > 0)
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
}

void test_redis_free(struct test_redis *r)
{
    if (!r)
        return;
    test_redis_stop(r);
    if (r->dir[0])
        remove_tree(r->dir);
    free(r->password);
    free(r);
}

char *test_redis_cli(const struct test_redis *r, const char *fmt, ...)
{
    struct buf cmd, out;
    va_list ap;
    int in_pipe[2], out_pipe[2], st;
    char port[16];
    const char *argv[12];
    int argc = 0;

    buf_init(&cmd);
    va_start(ap, fmt);
    buf_vprintf(&cmd, fmt, ap);
    va_end(ap);
    buf_putc(&cmd, '\n');

    snprintf(port, sizeof(port), "%d", r->port);
    argv[argc++] = "redis-cli";
    if (r->unix_socket) {
        argv[argc++] = "-s";
        argv[argc++] = r->sock;
    } else {
        argv[argc++] = "-h";
        argv[argc++] = "127.0.0.1";
        argv[argc++] = "-p";
        argv[argc++] = port;
        if (r->tls) {
            argv[argc++] = "--tls";
            argv[argc++] = "--cacert";
            argv[argc++] = r->ca;
        }
    }
    argv[argc] = NULL;

    if (pipe(in_pipe) < 0) {
        buf_release(&cmd);
        return NULL;
    }
    if (pipe(out_pipe) < 0) {
        close(in_pipe[0]);
        close(in_pipe[1]);
        buf_release(&cmd);
        return NULL;
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in_pipe[0], 0);
        dup2(out_pipe[1], 1);
        dup2(out_pipe[1], 2);
        close(in_pipe[0]);
        close(in_pipe[1]);
        close(out_pipe[0]);
        close(out_pipe[1]);
        if (r->password)
            setenv("REDISCLI_AUTH", r->password, 1);
        execvp("redis-cli", (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    close(in_pipe[0]);
    close(out_pipe[1]);
    if (pid < 0) {
        close(in_pipe[1]);
        close(out_pipe[0]);
        buf_release(&cmd);
        return NULL;
    }
    /* the command is small: writing it all before reading cannot deadlock */
    void (*old)(int) = signal(SIGPIPE, SIG_IGN);
    for (size_t off = 0; off < cmd.len;) {
        ssize_t n = write(in_pipe[1], cmd.data + off, cmd.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(in_pipe[1]);
    signal(SIGPIPE, old);
    buf_release(&cmd);

    buf_init(&out);
    for (;;) {
        char chunk[4096];
        ssize_t n = read(out_pipe[0], chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        buf_append(&out, chunk, (size_t)n);
    }
    close(out_pipe[0]);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 127) {
        buf_release(&out);
        return NULL;
    }
    while (out.len > 0 && (out.data[out.len - 1] == '\n' || out.data[out.len - 1] == '\r'))
        out.data[--out.len] = '\0';
    return buf_detach(&out);
}
