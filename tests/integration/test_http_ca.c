/* Private CAs: a CA and a server certificate made now with the openssl CLI, a loopback HTTPS
 * server (openssl s_server -www), and lib/http's trust settings: the request fails against the
 * system store and succeeds with SSL_CERT_FILE, SSL_CERT_DIR, http_client_set_ca, and
 * AWS_CA_BUNDLE for the AWS clients (S3, the credential chain's https endpoints). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/buf.h"
#include "lib/http.h"
#include "lib/log.h"
#include "providers/aws_creds.h"
#include "providers/s3.h"
#include "tests/support/test.h"

static struct event_base *base;
static char dir[256], ca_pem[300], certs_dir[300], url[128];
static int port;
static pid_t server = -1;
static int ready;
static char why[512];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    struct buf cmd;
    va_list ap;
    int rc;

    buf_init(&cmd);
    va_start(ap, fmt);
    buf_vprintf(&cmd, fmt, ap);
    va_end(ap);
    buf_puts(&cmd, " >/dev/null 2>&1");
    rc = system(cmd.data);
    buf_release(&cmd);
    return rc;
}

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), p = -1;

    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &l) == 0)
        p = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return p;
}

static int can_connect(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;

    ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* CA, server certificate for 127.0.0.1 signed by it, a hashed CA directory, the server. */
static int setup(void)
{
    char accept_arg[64], cert[300], key[300];

    if (sh("command -v openssl") != 0) {
        snprintf(why, sizeof(why), "the openssl command is not installed");
        return 1;
    }
    snprintf(dir, sizeof(dir), "%s/http-ca-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) {
        snprintf(why, sizeof(why), "mkdtemp: %s", strerror(errno));
        return -1;
    }
    snprintf(ca_pem, sizeof(ca_pem), "%s/ca.pem", dir);
    snprintf(certs_dir, sizeof(certs_dir), "%s/certs", dir);
    snprintf(cert, sizeof(cert), "%s/server.pem", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    if (sh("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
           "-keyout ca.key -out ca.pem -days 2 -subj '/CN=sandbox-worker test CA' "
           "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign",
           dir) != 0 ||
        sh("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
           "-keyout server.key -out server.csr -subj /CN=127.0.0.1",
           dir) != 0 ||
        sh("cd %s && printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > ext "
           "&& openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
           "-out server.pem -days 2 -extfile ext",
           dir) != 0 ||
        sh("mkdir %s && cp %s %s/ && openssl rehash %s", certs_dir, ca_pem, certs_dir, certs_dir) !=
            0) {
        snprintf(why, sizeof(why), "making the certificates with openssl failed");
        return -1;
    }
    port = free_port();
    snprintf(accept_arg, sizeof(accept_arg), "127.0.0.1:%d", port);
    server = fork();
    if (server == 0) {
        int devnull = open("/dev/null", 0);
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execlp("openssl", "openssl", "s_server", "-accept", accept_arg, "-cert", cert, "-key", key,
               "-www", "-quiet", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100 && !can_connect(); i++)
        usleep(50 * 1000);
    if (!can_connect()) {
        snprintf(why, sizeof(why), "openssl s_server did not start on %s", accept_arg);
        return -1;
    }
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/", port);
    return 0;
}

static void teardown(void)
{
    if (server > 0) {
        kill(server, SIGTERM);
        waitpid(server, NULL, 0);
    }
    if (dir[0])
        sh("rm -rf %s", dir);
}

struct res {
    int done, code;
    long status;
    char error[512];
};

static void done_cb(void *arg, http_request *req, const struct http_result *r)
{
    struct res *o = arg;
    (void)req;
    o->done = 1;
    o->code = r->code;
    o->status = r->status;
    snprintf(o->error, sizeof(o->error), "%s", r->error);
}

static void flag_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

static int run_until(const int *flag)
{
    int timed_out = 0;
    struct event *t = evtimer_new(base, flag_cb, &timed_out);
    struct timeval tv = {10, 0};

    evtimer_add(t, &tv);
    while (!*flag && !timed_out)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
    return *flag ? 0 : -1;
}

/* GET url with a client made now (it reads SSL_CERT_FILE / SSL_CERT_DIR); ca: set_ca file. */
static void get(const char *ca, struct res *o)
{
    http_client *c = http_client_new(base);
    struct http_callbacks cbs = {NULL, NULL, done_cb};
    http_request *r = http_request_new(c, "GET", url);

    memset(o, 0, sizeof(*o));
    if (ca)
        http_client_set_ca(c, ca, NULL);
    http_request_set_callbacks(r, &cbs, o);
    http_request_set_timeouts(r, 5000, 10000);
    if (http_request_start(r, o->error, sizeof(o->error)) == 0)
        run_until(&o->done);
    http_client_free(c);
}

#define NEED_SERVER()                                                                              \
    do {                                                                                           \
        if (!ready)                                                                                \
            SKIP(why);                                                                             \
        unsetenv("SSL_CERT_FILE");                                                                 \
        unsetenv("SSL_CERT_DIR");                                                                  \
        unsetenv("AWS_CA_BUNDLE");                                                                 \
    } while (0)

TEST_CASE(untrusted_without_settings)
{
    struct res o;

    NEED_SERVER();
    get(NULL, &o);
    CHECK(o.done);
    CHECK(o.code != 0);
    CHECK(strstr(o.error, "certificate") != NULL);
    printf("  %s\n", o.error);
}

TEST_CASE(ssl_cert_file)
{
    struct res o;

    NEED_SERVER();
    setenv("SSL_CERT_FILE", ca_pem, 1);
    get(NULL, &o);
    CHECK_EQ_INT(o.code, 0);
    CHECK_EQ_INT(o.status, 200);
    unsetenv("SSL_CERT_FILE");
}

TEST_CASE(ssl_cert_dir)
{
    struct res o;

    NEED_SERVER();
    setenv("SSL_CERT_DIR", certs_dir, 1);
    get(NULL, &o);
    CHECK_EQ_INT(o.code, 0);
    CHECK_EQ_INT(o.status, 200);
    unsetenv("SSL_CERT_DIR");
}

TEST_CASE(client_ca_option)
{
    struct res o;

    NEED_SERVER();
    get(ca_pem, &o);
    CHECK_EQ_INT(o.code, 0);
    CHECK_EQ_INT(o.status, 200);
}

struct got {
    int done, ok;
    char error[1024];
};

static void creds_cb(void *arg, const struct aws_credentials *cr, const char *error)
{
    struct got *g = arg;
    g->done = 1;
    g->ok = cr != NULL;
    snprintf(g->error, sizeof(g->error), "%s", error ? error : "");
}

/* The credential chain's https container endpoint: TLS fails without AWS_CA_BUNDLE; with it
 * the request gets through (s_server then answers an HTML page, which is not credentials). */
TEST_CASE(aws_ca_bundle_credentials)
{
    char err[512], full[200];
    struct got g;
    aws_creds *c;

    NEED_SERVER();
    snprintf(full, sizeof(full), "%screds", url);
    setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", full, 1);
    setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
    setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent", 1);
    setenv("AWS_CONFIG_FILE", "/nonexistent", 1);
    for (int with = 0; with < 2; with++) {
        if (with)
            setenv("AWS_CA_BUNDLE", ca_pem, 1);
        c = aws_creds_new(base, NULL, err, sizeof(err));
        CHECK(c != NULL);
        if (!c)
            break;
        memset(&g, 0, sizeof(g));
        aws_creds_get(c, creds_cb, &g);
        CHECK_EQ_INT(run_until(&g.done), 0);
        printf("  %s AWS_CA_BUNDLE: %s\n", with ? "with" : "without", g.error);
        if (with)
            CHECK(strstr(g.error, "GET: the response is not a JSON object") != NULL);
        else
            CHECK(strstr(g.error, "certificate") != NULL);
        aws_creds_free(c);
    }
    unsetenv("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    unsetenv("AWS_CA_BUNDLE");
}

struct s3res {
    int done, ok;
    long status;
    char error[1024];
};

static void s3_cb(void *arg, const struct s3_result *r)
{
    struct s3res *o = arg;
    o->done = 1;
    o->ok = r->ok;
    o->status = r->status;
    snprintf(o->error, sizeof(o->error), "%s", r->error);
}

static int s3_data(void *arg, const char *data, size_t len)
{
    (void)arg;
    (void)data;
    (void)len;
    return S3_DATA_OK;
}

/* S3 over https: fails against the system store, succeeds with AWS_CA_BUNDLE (s_server answers
 * every GET with 200). */
TEST_CASE(aws_ca_bundle_s3)
{
    char err[512], ep[128];
    struct s3res o;

    NEED_SERVER();
    snprintf(ep, sizeof(ep), "https://127.0.0.1:%d", port);
    for (int with = 0; with < 2; with++) {
        struct s3_config cfg = {0};
        cfg.endpoint = ep;
        cfg.region = (char *)(uintptr_t) "us-east-1";
        cfg.bucket = (char *)(uintptr_t) "b";
        cfg.access_key = (char *)(uintptr_t) "AKID";
        cfg.secret_key = (char *)(uintptr_t) "secret";
        cfg.force_path_style = 1;
        cfg.max_attempts = 1;
        if (with)
            setenv("AWS_CA_BUNDLE", ca_pem, 1);
        s3 *c = s3_new(base, &cfg, err, sizeof(err));
        CHECK(c != NULL);
        if (!c)
            break;
        memset(&o, 0, sizeof(o));
        s3_get(c, "k", s3_data, s3_cb, &o);
        CHECK_EQ_INT(run_until(&o.done), 0);
        printf("  %s AWS_CA_BUNDLE: %s\n", with ? "with" : "without", o.ok ? "200" : o.error);
        if (with) {
            CHECK(o.ok);
            CHECK_EQ_INT(o.status, 200);
        } else {
            CHECK(!o.ok);
            CHECK(strstr(o.error, "certificate") != NULL);
        }
        s3_free(c);
    }
    unsetenv("AWS_CA_BUNDLE");
}

int main(void)
{
    int rc;

    log_setup(getenv("TEST_DEBUG") ? LOG_DEBUG : LOG_WARN, LOG_FMT_PLAIN, NULL);
    base = event_base_new();
    unsetenv("SSL_CERT_FILE");
    unsetenv("SSL_CERT_DIR");
    rc = setup();
    ready = rc == 0;
    if (rc == 1)
        printf("SKIP (private CA tests): %s\n", why);
    else if (rc < 0)
        printf("FAIL: %s\n", why);

    RUN(untrusted_without_settings);
    RUN(ssl_cert_file);
    RUN(ssl_cert_dir);
    RUN(client_ca_option);
    RUN(aws_ca_bundle_credentials);
    RUN(aws_ca_bundle_s3);

    teardown();
    event_base_free(base);
    return test_report() || rc < 0;
}
