/* Load client for tests/bench/bench_agent.sh: drives sandbox-agent over raw loopback sockets so
 * that the client's own overhead stays far below what it measures (a Python client costs
 * ~0.3 ms per request and a few ms per process start).
 *
 *   client AGENT WORKDIR
 *
 * Starts the agent itself (posix_spawn, free loopback port) and prints, one line each:
 *   time to the first 200 from /ready after the spawn (10 starts, median and min);
 *   POST /exec of `true` round trip on one keep-alive connection (p50/p90/p99), the agent's
 *   CPU per request, and the floor: spawning `/bin/sh -c true` and reaping it directly;
 *   stdout throughput of `head -c N /dev/zero` through NDJSON/base64;
 *   the agent's and the client's CPU time during that stream (a figure that does not depend
 *   on how loaded the machine is);
 *   the agent's peak RSS (VmHWM) afterwards.
 * BENCH_EXEC_N (1000) and BENCH_STREAM_MB (512) size the runs. Exit status 1 on a setup
 * failure (the agent would not start, a reply was malformed); never on a figure. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &len) != 0) {
        perror("free_port");
        exit(1);
    }
    close(s);
    return ntohs(a.sin_port);
}

/* Connected TCP socket to 127.0.0.1:port with TCP_NODELAY, or -1. */
static int dial(int port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((unsigned short)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(s, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(s);
        return -1;
    }
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return s;
}

static int send_all(int s, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(s, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static char g_workdir[4096];

/* Spawns the agent on `port`; returns its pid. */
static pid_t agent_spawn(const char *agent, int port)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **envp = calloc(n + 8, sizeof(*envp));
    static char bind_kv[] = "LD_AGENT_BIND=127.0.0.1", hook_kv[] = "LD_AGENT_HOOK_PORT=0",
                log_kv[] = "LIGHTDASH_LOG_LEVEL=warn";
    char port_kv[64], spool_kv[4200];
    snprintf(port_kv, sizeof(port_kv), "LD_AGENT_PORT=%d", port);
    snprintf(spool_kv, sizeof(spool_kv), "SANDBOX_AGENT_SPOOL_DIR=%s/spool", g_workdir);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        envp[k++] = environ[i];
    envp[k++] = bind_kv;
    envp[k++] = port_kv;
    envp[k++] = hook_kv;
    envp[k++] = log_kv;
    envp[k++] = spool_kv;
    envp[k] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    char *argv[] = {(char *)(unsigned long)agent, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, agent, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    free(envp);
    if (rc != 0) {
        fprintf(stderr, "spawn %s: %s\n", agent, strerror(rc));
        exit(1);
    }
    return pid;
}

static void agent_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

/* Polls GET /ready until a 200 arrives; returns ms since t0, or -1 after 10 s. */
static double wait_ready(int port, double t0)
{
    static const char req[] = "GET /ready HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
    struct timespec pause = {0, 100 * 1000};
    while (now_ms() - t0 < 10000) {
        int s = dial(port);
        if (s < 0) {
            nanosleep(&pause, NULL);
            continue;
        }
        char buf[64];
        ssize_t n = -1;
        if (send_all(s, req, sizeof(req) - 1) == 0)
            n = recv(s, buf, sizeof(buf), 0);
        close(s);
        if (n >= 12 && memcmp(buf, "HTTP/1.1 200", 12) == 0)
            return now_ms() - t0;
        nanosleep(&pause, NULL);
    }
    return -1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double quantile(const double *v, size_t n, double f)
{
    size_t i = (size_t)(f * (double)n);
    return v[i < n ? i : n - 1];
}

static void bench_ready(const char *agent)
{
    double ms[10];
    for (int i = 0; i < 10; i++) {
        int port = free_port();
        double t0 = now_ms();
        pid_t pid = agent_spawn(agent, port);
        ms[i] = wait_ready(port, t0);
        agent_stop(pid);
        if (ms[i] < 0) {
            fprintf(stderr, "agent did not answer /ready within 10 s\n");
            exit(1);
        }
    }
    qsort(ms, 10, sizeof(ms[0]), cmp_double);
    printf("agent /ready after start [C client]: median %.2f ms, min %.2f ms (10 starts; "
           "target < 10 ms)\n",
           ms[5], ms[0]);
}

/* Reads one chunked /exec reply on s until the final chunk; `end` must be its tail. 0 / -1. */
static int read_until(int s, char *buf, size_t cap, const char *end, size_t endlen)
{
    size_t have = 0;
    for (;;) {
        ssize_t n = recv(s, buf + have, cap - have, 0);
        if (n <= 0)
            return -1;
        have += (size_t)n;
        if (have >= endlen && memcmp(buf + have - endlen, end, endlen) == 0)
            return 0;
        if (have == cap)
            return -1;
    }
}

/* CPU seconds (user + system) used so far by pid, from /proc; -1 if unreadable. */
static double cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    unsigned long long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* The floor under the exec round trip: posix_spawn of `/bin/sh -c true` and waitpid, from this
 * process, with no HTTP at all. p50 in ms over n runs. */
static double spawn_floor(size_t n)
{
    double *v = calloc(n, sizeof(*v));
    static char a0[] = "sh", a1[] = "-c", a2[] = "true";
    char *argv[] = {a0, a1, a2, NULL};
    for (size_t i = 0; i < n; i++) {
        double t0 = now_ms();
        pid_t pid;
        int st;
        if (posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ) != 0 ||
            waitpid(pid, &st, 0) != pid) {
            free(v);
            return -1;
        }
        v[i] = now_ms() - t0;
    }
    qsort(v, n, sizeof(v[0]), cmp_double);
    double p50 = quantile(v, n, 0.5);
    free(v);
    return p50;
}

static void bench_exec(int port, pid_t agent_pid, size_t n)
{
    static const char req[] = "POST /exec HTTP/1.1\r\nHost: b\r\nContent-Type: "
                              "application/json\r\nContent-Length: 14\r\n\r\n{\"cmd\":\"true\"}";
    static const char end[] = "{\"exitCode\":0}\n\r\n0\r\n\r\n";
    int s = dial(port);
    if (s < 0) {
        perror("connect");
        exit(1);
    }
    double *lat = calloc(n, sizeof(*lat));
    char buf[8192];
    double cpu0 = 0;
    for (size_t i = 0; i < n + 50; i++) {
        if (i == 50)
            cpu0 = cpu_seconds(agent_pid);
        double t0 = now_ms();
        if (send_all(s, req, sizeof(req) - 1) != 0 ||
            read_until(s, buf, sizeof(buf), end, sizeof(end) - 1) != 0) {
            fprintf(stderr, "exec: bad or missing reply\n");
            exit(1);
        }
        if (i >= 50)
            lat[i - 50] = now_ms() - t0;
    }
    double cpu = cpu_seconds(agent_pid) - cpu0;
    close(s);
    qsort(lat, n, sizeof(lat[0]), cmp_double);
    printf("agent POST /exec true round trip [C client] (keep-alive, %zu): p50 %.3f ms, p90 %.3f "
           "ms, p99 %.3f ms (target p50 < 0.7 ms)\n",
           n, quantile(lat, n, 0.5), quantile(lat, n, 0.9), quantile(lat, n, 0.99));
    printf("agent CPU per exec: %.0f us; floor: posix_spawn+waitpid of /bin/sh -c true from the "
           "client, p50 %.3f ms\n",
           cpu / (double)n * 1e6, spawn_floor(n < 300 ? n : 300));
    free(lat);
}

static void bench_stream(int port, pid_t agent_pid, size_t mb)
{
    unsigned long long nbytes = (unsigned long long)mb << 20;
    char body[128], req[512];
    int blen = snprintf(body, sizeof(body), "{\"cmd\":\"head -c %llu /dev/zero\"}", nbytes);
    int rlen = snprintf(req, sizeof(req),
                        "POST /exec HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\nConnection: "
                        "close\r\n\r\n%s",
                        blen, body);
    int s = dial(port);
    if (s < 0 || send_all(s, req, (size_t)rlen) != 0) {
        perror("stream");
        exit(1);
    }
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    char tail[64];
    size_t tlen = 0;
    unsigned long long got = 0;
    double agent_cpu0 = cpu_seconds(agent_pid), self_cpu0 = self_cpu_seconds();
    double t0 = now_ms();
    for (;;) {
        ssize_t n = recv(s, buf, cap, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (unsigned long long)n;
        /* keep the last 64 bytes of the stream */
        if ((size_t)n >= sizeof(tail)) {
            memcpy(tail, buf + n - (ssize_t)sizeof(tail), sizeof(tail));
            tlen = sizeof(tail);
        } else {
            size_t keep = sizeof(tail) - (size_t)n < tlen ? sizeof(tail) - (size_t)n : tlen;
            memmove(tail, tail + tlen - keep, keep);
            memcpy(tail + keep, buf, (size_t)n);
            tlen = keep + (size_t)n;
        }
    }
    double dt = (now_ms() - t0) / 1e3;
    double agent_cpu = cpu_seconds(agent_pid) - agent_cpu0,
           self_cpu = self_cpu_seconds() - self_cpu0;
    close(s);
    free(buf);
    int ok = memmem(tail, tlen, "{\"exitCode\":0}", 14) != NULL;
    printf("agent stdout throughput [C client]: %zu MiB of output in %.2f s = %.0f MB/s of command "
           "output (%.0f MB/s on the wire)%s (target >= 600 MB/s)\n",
           mb, dt, (double)nbytes / dt / 1e6, (double)got / dt / 1e6,
           ok ? "" : " [no exit frame!]");
    printf("agent CPU while streaming: %.2f s (%.2f s per GB of output); client CPU %.2f s\n",
           agent_cpu, agent_cpu / ((double)nbytes / 1e9), self_cpu);
}

static void print_rss(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    printf("agent peak RSS (VmHWM) after streaming: %.1f MB (target < 16 MB)\n",
           (double)kb / 1024.0);
}

static size_t env_size(const char *name, size_t def)
{
    const char *v = getenv(name);
    return v && *v ? (size_t)strtoull(v, NULL, 10) : def;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s AGENT WORKDIR\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_workdir, sizeof(g_workdir), "%s", argv[2]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    bench_ready(argv[1]);
    int port = free_port();
    pid_t pid = agent_spawn(argv[1], port);
    if (wait_ready(port, now_ms()) < 0) {
        fprintf(stderr, "agent did not start\n");
        agent_stop(pid);
        return 1;
    }
    bench_exec(port, pid, env_size("BENCH_EXEC_N", 1000));
    bench_stream(port, pid, env_size("BENCH_STREAM_MB", 512));
    print_rss(pid);
    agent_stop(pid);
    return 0;
}
