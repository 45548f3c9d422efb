/* Worker configuration from the environment (worker/config.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "tests/support/test.h"
#include "worker/config.h"

static const char *const all_vars[] = {
    "SANDBOX_PROVIDER",
    "REDIS_URL",
    "REDIS_TLS_CA_FILE",
    "REDIS_TLS_INSECURE",
    "REDIS_CONNECT_TIMEOUT_MS",
    "REDIS_COMMAND_TIMEOUT_MS",
    "SANDBOX_QUEUE_PREFIX",
    "WORKER_CONCURRENCY",
    "WORKER_NAME",
    "WORKER_LEASE_MS",
    "WORKER_SHUTDOWN_GRACE_MS",
    "WORKER_HTTP_ADDR",
    "WORKER_MAX_ATTEMPTS",
    "WORKER_RETRY_BASE_MS",
    "WORKER_RETRY_MAX_MS",
    "WORKER_TURN_TIMEOUT_MS",
    "WORKER_STEP_TIMEOUT_MS",
    "WORKER_MAX_JOB_BYTES",
    "WORKER_OUTPUT_CAP_BYTES",
    "WORKER_READ_CAP_BYTES",
    "WORKER_MAX_RESULT_BYTES",
    "WORKER_EVENTS_MAXLEN",
    "WORKER_EVENTS_TTL_S",
    "WORKER_RESULTS_MAXLEN",
    "WORKER_JOB_TTL_S",
    "WORKER_SWEEP_INTERVAL_MS",
    "WORKER_SWEEP_GRACE_MS",
    "WORKER_SWEEP_DRY_RUN",
    "SANDBOX_SNAPSHOT_RETENTION_MS",
    "SANDBOX_INHERIT_ENV_ALLOW",
    "LIGHTDASH_LOG_LEVEL",
    "LIGHTDASH_LOG_FORMAT",
    "NODE_ENV",
    "TEST_CFG_INT",
    "TEST_CFG_BOOL",
    "TEST_CFG_STR",
};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof all_vars / sizeof *all_vars; i++)
        unsetenv(all_vars[i]);
}

/* The configuration dump as a string (caller frees). */
static char *dump(const struct config *c)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return xstrdup("");
    config_dump(c, f);
    fclose(f);
    return text;
}

TEST_CASE(defaults)
{
    struct config c;
    char err[512];
    clear_env();
    CHECK_EQ_INT(config_load(&c, err, sizeof err), 0);
    CHECK_STR(c.provider, "e2b");
    CHECK_STR(c.redis_url, "redis://127.0.0.1:6379");
    CHECK_STR(c.redis.host, "127.0.0.1");
    CHECK_EQ_INT(c.redis.port, 6379);
    CHECK(c.redis_tls_ca_file == NULL);
    CHECK_EQ_INT(c.redis_tls_insecure, 0);
    CHECK_EQ_INT(c.redis_connect_timeout_ms, 5000);
    CHECK_EQ_INT(c.redis_command_timeout_ms, 10000);
    CHECK_STR(c.prefix, "sandbox");
    CHECK_EQ_INT(c.concurrency, 8);
    CHECK_EQ_INT(c.lease_ms, 30000);
    CHECK_EQ_INT(c.shutdown_grace_ms, 25000);
    CHECK_STR(c.http_addr, "0.0.0.0:8081");
    CHECK_STR(c.http_host, "0.0.0.0");
    CHECK_EQ_INT(c.http_port, 8081);
    CHECK_EQ_INT(c.max_attempts, 3);
    CHECK_EQ_INT(c.retry_base_ms, 1000);
    CHECK_EQ_INT(c.retry_max_ms, 60000);
    CHECK_EQ_INT(c.turn_timeout_ms, 1800000);
    CHECK_EQ_INT(c.step_timeout_ms, 600000);
    CHECK_EQ_INT(c.max_job_bytes, 8388608);
    CHECK_EQ_INT(c.output_cap_bytes, 10485760);
    CHECK_EQ_INT(c.read_cap_bytes, 1048576);
    CHECK_EQ_INT(c.max_result_bytes, 33554432);
    CHECK_EQ_INT(c.events_maxlen, 1000);
    CHECK_EQ_INT(c.events_ttl_s, 86400);
    CHECK_EQ_INT(c.results_maxlen, 100000);
    CHECK_EQ_INT(c.job_ttl_s, 604800);
    CHECK(c.inherit_env_allow && c.inherit_env_allow[0] && !c.inherit_env_allow[1]);
    CHECK_STR(c.inherit_env_allow[0], "ANTHROPIC_API_KEY");
    CHECK_EQ_INT(c.log_level, LOG_INFO);
    CHECK_EQ_INT(c.log_format, LOG_FMT_PRETTY);
    CHECK_EQ_INT(c.production, 0);

    /* WORKER_NAME: "<hostname>-<pid>", hostname sanitised to [A-Za-z0-9_.:-]. */
    char suffix[32];
    snprintf(suffix, sizeof suffix, "-%ld", (long)getpid());
    size_t n = strlen(c.worker_name), sn = strlen(suffix);
    CHECK(n > sn && n <= 128 && strcmp(c.worker_name + n - sn, suffix) == 0);
    for (const char *p = c.worker_name; *p; p++)
        CHECK(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-", *p));
    config_release(&c);
    CHECK(c.provider == NULL && c.worker_name == NULL);
    config_release(&c); /* twice is harmless */

    /* Empty counts as unset. */
    setenv("WORKER_CONCURRENCY", "", 1);
    setenv("REDIS_URL", "", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), 0);
    CHECK_EQ_INT(c.concurrency, 8);
    CHECK_STR(c.redis_url, "redis://127.0.0.1:6379");
    config_release(&c);
    clear_env();
}

TEST_CASE(overrides)
{
    struct config c;
    char err[512];
    clear_env();
    setenv("SANDBOX_PROVIDER", "lambda-microvm", 1);
    setenv("REDIS_URL", "rediss://u:pw1234@redis.internal:6380/3", 1);
    setenv("REDIS_TLS_CA_FILE", "/dev/null", 1);
    setenv("REDIS_TLS_INSECURE", "yes", 1);
    setenv("REDIS_CONNECT_TIMEOUT_MS", "100", 1);
    setenv("REDIS_COMMAND_TIMEOUT_MS", "600000", 1);
    setenv("SANDBOX_QUEUE_PREFIX", "lightdash.prod", 1);
    setenv("WORKER_CONCURRENCY", "4096", 1);
    setenv("WORKER_NAME", "pod-a:1", 1);
    setenv("WORKER_LEASE_MS", "3000", 1);
    setenv("WORKER_SHUTDOWN_GRACE_MS", "0", 1);
    setenv("WORKER_MAX_ATTEMPTS", "100", 1);
    setenv("WORKER_RETRY_BASE_MS", "50", 1);
    setenv("WORKER_RETRY_MAX_MS", "50", 1);
    setenv("WORKER_TURN_TIMEOUT_MS", "604800000", 1);
    setenv("WORKER_STEP_TIMEOUT_MS", "1000", 1);
    setenv("WORKER_MAX_JOB_BYTES", "536870912", 1);
    setenv("WORKER_OUTPUT_CAP_BYTES", "1024", 1);
    setenv("WORKER_READ_CAP_BYTES", "67108864", 1);
    setenv("WORKER_MAX_RESULT_BYTES", "536870912", 1);
    setenv("WORKER_EVENTS_MAXLEN", "1", 1);
    setenv("WORKER_EVENTS_TTL_S", "31536000", 1);
    setenv("WORKER_RESULTS_MAXLEN", "100000000", 1);
    setenv("WORKER_JOB_TTL_S", "60", 1);
    setenv("SANDBOX_INHERIT_ENV_ALLOW", " ANTHROPIC_API_KEY , GIT_TOKEN_2,X ", 1);
    setenv("LIGHTDASH_LOG_LEVEL", "DEBUG", 1);
    setenv("LIGHTDASH_LOG_FORMAT", "json", 1);
    setenv("NODE_ENV", "production", 1);
    int rc = config_load(&c, err, sizeof err);
    if (rc != 0)
        test_fail(__FILE__, __LINE__, "config_load: %s", err);
    if (rc != 0)
        return;
    CHECK_STR(c.provider, "lambda-microvm");
    CHECK_EQ_INT(c.redis.tls, 1);
    CHECK_STR(c.redis.host, "redis.internal");
    CHECK_EQ_INT(c.redis.port, 6380);
    CHECK_EQ_INT(c.redis.db, 3);
    CHECK_STR(c.redis.password, "pw1234");
    CHECK_STR(c.redis_tls_ca_file, "/dev/null");
    CHECK_EQ_INT(c.redis_tls_insecure, 1);
    CHECK_EQ_INT(c.redis_connect_timeout_ms, 100);
    CHECK_EQ_INT(c.redis_command_timeout_ms, 600000);
    CHECK_STR(c.prefix, "lightdash.prod");
    CHECK_EQ_INT(c.concurrency, 4096);
    CHECK_STR(c.worker_name, "pod-a:1");
    CHECK_EQ_INT(c.lease_ms, 3000);
    CHECK_EQ_INT(c.shutdown_grace_ms, 0);
    CHECK_EQ_INT(c.max_attempts, 100);
    CHECK_EQ_INT(c.retry_base_ms, 50);
    CHECK_EQ_INT(c.retry_max_ms, 50);
    CHECK_EQ_INT(c.turn_timeout_ms, 604800000);
    CHECK_EQ_INT(c.step_timeout_ms, 1000);
    CHECK_EQ_INT(c.max_job_bytes, 536870912);
    CHECK_EQ_INT(c.output_cap_bytes, 1024);
    CHECK_EQ_INT(c.read_cap_bytes, 67108864);
    CHECK_EQ_INT(c.max_result_bytes, 536870912);
    CHECK_EQ_INT(c.events_maxlen, 1);
    CHECK_EQ_INT(c.events_ttl_s, 31536000);
    CHECK_EQ_INT(c.results_maxlen, 100000000);
    CHECK_EQ_INT(c.job_ttl_s, 60);
    CHECK(c.inherit_env_allow && c.inherit_env_allow[0] && c.inherit_env_allow[1] &&
          c.inherit_env_allow[2] && !c.inherit_env_allow[3]);
    CHECK_STR(c.inherit_env_allow[0], "ANTHROPIC_API_KEY");
    CHECK_STR(c.inherit_env_allow[1], "GIT_TOKEN_2");
    CHECK_STR(c.inherit_env_allow[2], "X");
    CHECK_EQ_INT(c.log_level, LOG_DEBUG);
    CHECK_EQ_INT(c.log_format, LOG_FMT_JSON);
    CHECK_EQ_INT(c.production, 1);

    char *d = dump(&c);
    CHECK(strstr(d, "SANDBOX_PROVIDER=lambda-microvm\n") != NULL);
    CHECK(strstr(d, "REDIS_URL=rediss://u:***@redis.internal:6380/3\n") != NULL);
    CHECK(strstr(d, "pw1234") == NULL);
    CHECK(strstr(d, "WORKER_CONCURRENCY=4096\n") != NULL);
    CHECK(strstr(d, "WORKER_MAX_JOB_BYTES=536870912\n") != NULL);
    CHECK(strstr(d, "WORKER_TURN_TIMEOUT_MS=604800000\n") != NULL);
    CHECK(strstr(d, "SANDBOX_INHERIT_ENV_ALLOW=ANTHROPIC_API_KEY,GIT_TOKEN_2,X\n") != NULL);
    CHECK(strstr(d, "LIGHTDASH_LOG_LEVEL=debug\n") != NULL);
    CHECK(strstr(d, "LIGHTDASH_LOG_FORMAT=json\n") != NULL);
    CHECK(strstr(d, "NODE_ENV=production\n") != NULL);
    CHECK(strstr(d, "REDIS_TLS_INSECURE=true\n") != NULL);
    free(d);
    config_release(&c);

    setenv("SANDBOX_INHERIT_ENV_ALLOW", "none", 1);
    setenv("NODE_ENV", "development", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), 0);
    CHECK(c.inherit_env_allow && c.inherit_env_allow[0] == NULL);
    CHECK_EQ_INT(c.production, 0);
    d = dump(&c);
    CHECK(strstr(d, "SANDBOX_INHERIT_ENV_ALLOW=none\n") != NULL);
    free(d);
    config_release(&c);
    clear_env();
}

struct bad_var {
    const char *name, *value;
};

static const struct bad_var bad_vars[] = {
    {"SANDBOX_PROVIDER", "E2B!"},
    {"SANDBOX_PROVIDER", "e2b provider"},
    {"REDIS_URL", "http://localhost:6379"},
    {"REDIS_URL", "redis://localhost:notaport"},
    {"REDIS_URL", "redis://localhost:6379?bogus=1"},
    {"REDIS_TLS_CA_FILE", "/nonexistent/dir/ca.pem"},
    {"REDIS_TLS_INSECURE", "maybe"},
    {"REDIS_TLS_INSECURE", "2"},
    {"SANDBOX_QUEUE_PREFIX", "a{b}"},
    {"SANDBOX_QUEUE_PREFIX", "with space"},
    {"SANDBOX_QUEUE_PREFIX", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
    {"WORKER_NAME", "has space"},
    {"WORKER_NAME", "new\nline"},
    {"WORKER_NAME", "handoff"},
    {"WORKER_HTTP_ADDR", "nohost"},
    {"WORKER_HTTP_ADDR", "::1:8080"},
    {"WORKER_HTTP_ADDR", "[::1]8080"},
    {"WORKER_HTTP_ADDR", "[::1:8080"},
    {"WORKER_HTTP_ADDR", "[]:8080"},
    {"WORKER_HTTP_ADDR", "host:70000"},
    {"WORKER_HTTP_ADDR", "host:"},
    {"WORKER_HTTP_ADDR", "host:-1"},
    {"WORKER_HTTP_ADDR", "ho st:80"},
    {"SANDBOX_INHERIT_ENV_ALLOW", "lower_case"},
    {"SANDBOX_INHERIT_ENV_ALLOW", "A,,B"},
    {"SANDBOX_INHERIT_ENV_ALLOW", "1ABC"},
    {"LIGHTDASH_LOG_LEVEL", "loud"},
    {"LIGHTDASH_LOG_LEVEL", "infoinfoinfoinfoinfoinfoinfoinfoinfoinfo"},
    {"LIGHTDASH_LOG_FORMAT", "xml"},
};

/* Integer variables with their ranges: each gets the same battery of bad values. */
static const struct {
    const char *name;
    long long min, max;
} int_vars[] = {
    {"REDIS_CONNECT_TIMEOUT_MS", 100, 600000},
    {"REDIS_COMMAND_TIMEOUT_MS", 100, 600000},
    {"WORKER_CONCURRENCY", 1, 4096},
    {"WORKER_LEASE_MS", 3000, 3600000},
    {"WORKER_SHUTDOWN_GRACE_MS", 0, 3600000},
    {"WORKER_MAX_ATTEMPTS", 1, 100},
    {"WORKER_RETRY_BASE_MS", 1, 3600000},
    {"WORKER_RETRY_MAX_MS", 1, 86400000},
    {"WORKER_TURN_TIMEOUT_MS", 1000, 604800000},
    {"WORKER_STEP_TIMEOUT_MS", 1000, 604800000},
    {"WORKER_MAX_JOB_BYTES", 1024, 536870912},
    {"WORKER_OUTPUT_CAP_BYTES", 1024, 1073741824},
    {"WORKER_READ_CAP_BYTES", 1, 67108864},
    {"WORKER_MAX_RESULT_BYTES", 1048576, 536870912},
    {"WORKER_EVENTS_MAXLEN", 1, 10000000},
    {"WORKER_EVENTS_TTL_S", 1, 31536000},
    {"WORKER_RESULTS_MAXLEN", 1, 100000000},
    {"WORKER_JOB_TTL_S", 1, 31536000},
};

/* Loads with name=value set alone; checks the error names the variable, is one line, and
 * c was released. */
static void expect_bad(const char *name, const char *value)
{
    struct config c;
    char err[512];
    char prefix[128];
    clear_env();
    setenv(name, value, 1);
    memset(&c, 0xab, sizeof c);
    if (config_load(&c, err, sizeof err) != -1) {
        test_fail(__FILE__, __LINE__, "%s=\"%s\" accepted", name, value);
        config_release(&c);
        return;
    }
    snprintf(prefix, sizeof prefix, "%s: ", name);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        test_fail(__FILE__, __LINE__, "%s=\"%s\": error does not start with the name: %s", name,
                  value, err);
    if (strchr(err, '\n') || strlen(err) < strlen(prefix) + 5)
        test_fail(__FILE__, __LINE__, "%s: not one useful line: %s", name, err);
    if (c.provider || c.redis_url || c.prefix || c.worker_name || c.inherit_env_allow)
        test_fail(__FILE__, __LINE__, "%s: config not released after failure", name);
    if (getenv("TEST_VERBOSE"))
        printf("  %s\n", err);
}

TEST_CASE(bad_values_name_the_variable)
{
    for (size_t i = 0; i < sizeof bad_vars / sizeof *bad_vars; i++)
        expect_bad(bad_vars[i].name, bad_vars[i].value);
    for (size_t i = 0; i < sizeof int_vars / sizeof *int_vars; i++) {
        char below[32], above[32];
        snprintf(below, sizeof below, "%lld", int_vars[i].min - 1);
        snprintf(above, sizeof above, "%lld", int_vars[i].max + 1);
        static const char *const junk[] = {"abc", "12x",  " 12", "12 ", "+12",
                                           "1e3", "0x10", "1.5", "-",   "99999999999999999999",
                                           "--1", "1_000"};
        for (size_t k = 0; k < sizeof junk / sizeof *junk; k++)
            expect_bad(int_vars[i].name, junk[k]);
        expect_bad(int_vars[i].name, below);
        expect_bad(int_vars[i].name, above);
    }
    /* The message shape of the brief, exactly. */
    struct config c;
    char err[512];
    clear_env();
    setenv("WORKER_CONCURRENCY", "abc", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), -1);
    CHECK_STR(err, "WORKER_CONCURRENCY: must be an integer between 1 and 4096, got \"abc\"");
    /* Bad bytes are escaped, long values cut. */
    setenv("WORKER_CONCURRENCY", "1\n2\"", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), -1);
    CHECK_STR(err, "WORKER_CONCURRENCY: must be an integer between 1 and 4096, got "
                   "\"1\\x0a2\\\"\"");
    /* Cross-variable rule. */
    clear_env();
    setenv("WORKER_RETRY_BASE_MS", "5000", 1);
    setenv("WORKER_RETRY_MAX_MS", "1000", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), -1);
    CHECK(strncmp(err, "WORKER_RETRY_MAX_MS: ", 21) == 0);
    clear_env();
    setenv("WORKER_READ_CAP_BYTES", "33554433", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), -1);
    CHECK(strncmp(err, "WORKER_READ_CAP_BYTES: must be at most WORKER_MAX_RESULT_BYTES", 62) == 0);
    clear_env();
    /* An inheritable value too short to be masked. */
    setenv("SANDBOX_INHERIT_ENV_ALLOW", "TEST_CFG_STR", 1);
    setenv("TEST_CFG_STR", "abc", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), -1);
    CHECK(strncmp(err, "SANDBOX_INHERIT_ENV_ALLOW: the value of TEST_CFG_STR", 52) == 0);
    CHECK(strstr(err, "abc") == NULL);
    setenv("TEST_CFG_STR", "abcd", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), 0);
    config_release(&c);
    clear_env();
}

TEST_CASE(redis_password_masked)
{
    struct config c;
    char err[512];
    static const char *const bad_urls[] = {
        "redis://user:hunter2secret@localhost:99999/0",
        "redis://user:hunter2secret@localhost:6379/notadb",
        "redis://:hunter2secret@bad host:6379",
        "redis://user:hunter2secret@localhost:6379?x=hunter2secret",
        "unix://:hunter2secret@relative/path.sock",
        "redis://hunter2secret@localhost",
    };
    for (size_t i = 0; i < sizeof bad_urls / sizeof *bad_urls; i++) {
        clear_env();
        setenv("REDIS_URL", bad_urls[i], 1);
        if (config_load(&c, err, sizeof err) != -1) {
            test_fail(__FILE__, __LINE__, "accepted %s", bad_urls[i]);
            config_release(&c);
            continue;
        }
        CHECK(strncmp(err, "REDIS_URL: ", 11) == 0);
        if (strstr(err, "hunter2secret"))
            test_fail(__FILE__, __LINE__, "password in error: %s", err);
    }

    static const struct {
        const char *url, *shown;
    } good[] = {
        {"redis://user:hunter2secret@127.0.0.1:6380/2", "redis://user:***@127.0.0.1:6380/2"},
        {"redis://:hunter2secret@127.0.0.1", "redis://:***@127.0.0.1"},
        {"unix://:hunter2secret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"},
        {"redis://127.0.0.1:6379", "redis://127.0.0.1:6379"},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        clear_env();
        setenv("REDIS_URL", good[i].url, 1);
        if (config_load(&c, err, sizeof err) != 0) {
            test_fail(__FILE__, __LINE__, "rejected %s: %s", good[i].url, err);
            continue;
        }
        char *d = dump(&c);
        char want[256];
        snprintf(want, sizeof want, "REDIS_URL=%s\n", good[i].shown);
        if (!strstr(d, want))
            test_fail(__FILE__, __LINE__, "dump lacks %s", want);
        CHECK(strstr(d, "hunter2secret") == NULL);
        free(d);
        config_release(&c);
    }
    char *r = env_url_redact("redis://u:p@ss/w@rd@h:1/0");
    CHECK_STR(r, "redis://u:***@h:1/0");
    free(r);
    r = env_url_redact(NULL);
    CHECK_STR(r, "");
    free(r);
    clear_env();
}

TEST_CASE(booleans)
{
    static const struct {
        const char *text;
        int value;
    } cases[] = {{"true", 1},  {"TRUE", 1},  {"True", 1}, {"1", 1},  {"yes", 1}, {"YES", 1},
                 {"false", 0}, {"False", 0}, {"0", 0},    {"no", 0}, {"No", 0},  {"", 7}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct config c;
        char err[512];
        clear_env();
        setenv("REDIS_TLS_INSECURE", cases[i].text, 1);
        CHECK_EQ_INT(config_load(&c, err, sizeof err), 0);
        CHECK_EQ_INT(c.redis_tls_insecure, cases[i].value == 7 ? 0 : cases[i].value);
        config_release(&c);

        int v = -1;
        setenv("TEST_CFG_BOOL", cases[i].text, 1);
        CHECK_EQ_INT(env_bool("TEST_CFG_BOOL", 7, &v, err, sizeof err), 0);
        CHECK_EQ_INT(v, cases[i].value);
    }
    static const char *const bad[] = {"on", "off", "y", "t", "2", "truee", " true", "-1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[512];
        int v;
        setenv("TEST_CFG_BOOL", bad[i], 1);
        CHECK_EQ_INT(env_bool("TEST_CFG_BOOL", 0, &v, err, sizeof err), -1);
        CHECK(strncmp(err, "TEST_CFG_BOOL: must be one of true, false, 1, 0, yes, no, got ", 62) ==
              0);
    }
    clear_env();
}

TEST_CASE(http_addr_forms)
{
    static const struct {
        const char *text, *host;
        int port;
        const char *dumped;
    } cases[] = {
        {"127.0.0.1:9000", "127.0.0.1", 9000, "127.0.0.1:9000"},
        {":9000", "0.0.0.0", 9000, "0.0.0.0:9000"},
        {"[::1]:9000", "::1", 9000, "[::1]:9000"},
        {"[::]:1", "::", 1, "[::]:1"},
        {"localhost:0", "localhost", 0, "localhost:0"},
        {"status.svc.cluster.local:65535", "status.svc.cluster.local", 65535,
         "status.svc.cluster.local:65535"},
        {"off", NULL, 0, "off"},
        {"OFF", NULL, 0, "off"},
        {"", NULL, 0, "off"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct config c;
        char err[512];
        clear_env();
        setenv("WORKER_HTTP_ADDR", cases[i].text, 1);
        if (config_load(&c, err, sizeof err) != 0) {
            test_fail(__FILE__, __LINE__, "rejected \"%s\": %s", cases[i].text, err);
            continue;
        }
        if (cases[i].host)
            CHECK_STR(c.http_host, cases[i].host);
        else
            CHECK(c.http_host == NULL);
        CHECK_EQ_INT(c.http_port, cases[i].port);
        char *d = dump(&c);
        char want[128];
        snprintf(want, sizeof want, "WORKER_HTTP_ADDR=%s\n", cases[i].dumped);
        if (!strstr(d, want))
            test_fail(__FILE__, __LINE__, "dump lacks %s", want);
        free(d);
        config_release(&c);
    }
    clear_env();
}

TEST_CASE(env_helpers)
{
    char err[512];
    int64_t v = 0;
    clear_env();
    CHECK_EQ_INT(env_int64("TEST_CFG_INT", 42, 0, 100, &v, err, sizeof err), 0);
    CHECK_EQ_INT(v, 42);
    setenv("TEST_CFG_INT", "-7", 1);
    CHECK_EQ_INT(env_int64("TEST_CFG_INT", 42, -10, 100, &v, err, sizeof err), 0);
    CHECK_EQ_INT(v, -7);
    setenv("TEST_CFG_INT", "9223372036854775807", 1);
    CHECK_EQ_INT(env_int64("TEST_CFG_INT", 0, 0, INT64_MAX, &v, err, sizeof err), 0);
    CHECK_EQ_INT(v, INT64_MAX);
    setenv("TEST_CFG_INT", "9223372036854775808", 1);
    CHECK_EQ_INT(env_int64("TEST_CFG_INT", 0, 0, INT64_MAX, &v, err, sizeof err), -1);
    setenv("TEST_CFG_INT", "101", 1);
    CHECK_EQ_INT(env_int64("TEST_CFG_INT", 42, 0, 100, &v, err, sizeof err), -1);
    CHECK_STR(err, "TEST_CFG_INT: must be an integer between 0 and 100, got \"101\"");

    CHECK(env_str("TEST_CFG_STR", NULL) == NULL);
    CHECK_STR(env_str("TEST_CFG_STR", "dflt"), "dflt");
    setenv("TEST_CFG_STR", "", 1);
    CHECK_STR(env_str("TEST_CFG_STR", "dflt"), "dflt");
    setenv("TEST_CFG_STR", "val", 1);
    CHECK_STR(env_str("TEST_CFG_STR", "dflt"), "val");
    clear_env();
}

TEST_CASE(dump_lists_every_variable)
{
    struct config c;
    char err[512];
    clear_env();
    CHECK_EQ_INT(config_load(&c, err, sizeof err), 0);
    char *d = dump(&c);
    for (size_t i = 0; i < sizeof all_vars / sizeof *all_vars; i++) {
        if (strncmp(all_vars[i], "TEST_", 5) == 0)
            continue;
        char want[128];
        snprintf(want, sizeof want, "%s=", all_vars[i]);
        int at_line_start = strncmp(d, want, strlen(want)) == 0;
        snprintf(want, sizeof want, "\n%s=", all_vars[i]);
        if (!at_line_start && !strstr(d, want))
            test_fail(__FILE__, __LINE__, "dump lacks %s", all_vars[i]);
    }
    free(d);
    config_release(&c);
}

TEST_CASE(sweep_settings)
{
    struct config c;
    char err[512];
    clear_env();
    CHECK_EQ_INT(config_load(&c, err, sizeof err), 0);
    CHECK_EQ_INT(c.sweep_interval_ms, 300000);
    CHECK_EQ_INT(c.sweep_grace_ms, 3600000);
    CHECK_EQ_INT(c.sweep_dry_run, 0);
    CHECK_EQ_INT(c.snapshot_retention_ms, 604800000);
    config_release(&c);
    /* The default grace follows a longer turn timeout. */
    setenv("WORKER_TURN_TIMEOUT_MS", "7200000", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), 0);
    CHECK_EQ_INT(c.sweep_grace_ms, 7200000);
    config_release(&c);
    /* An explicit grace below it is refused while the sweep is on... */
    setenv("WORKER_SWEEP_GRACE_MS", "3600000", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), -1);
    CHECK(strstr(err, "WORKER_SWEEP_GRACE_MS: must be at least WORKER_TURN_TIMEOUT_MS") != NULL);
    /* ... and accepted with the sweep off. */
    setenv("WORKER_SWEEP_INTERVAL_MS", "0", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), 0);
    config_release(&c);
    setenv("WORKER_SWEEP_DRY_RUN", "maybe", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), -1);
    CHECK(strstr(err, "WORKER_SWEEP_DRY_RUN") != NULL);
    setenv("WORKER_SWEEP_DRY_RUN", "true", 1);
    setenv("SANDBOX_SNAPSHOT_RETENTION_MS", "0", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), 0);
    CHECK_EQ_INT(c.sweep_dry_run, 1);
    CHECK_EQ_INT(c.snapshot_retention_ms, 0);
    config_release(&c);
    setenv("SANDBOX_SNAPSHOT_RETENTION_MS", "-1", 1);
    CHECK_EQ_INT(config_load(&c, err, sizeof err), -1);
    CHECK(strstr(err, "SANDBOX_SNAPSHOT_RETENTION_MS") != NULL);
    clear_env();
}

int main(void)
{
    RUN(defaults);
    RUN(overrides);
    RUN(bad_values_name_the_variable);
    RUN(redis_password_masked);
    RUN(booleans);
    RUN(http_addr_forms);
    RUN(env_helpers);
    RUN(dump_lists_every_variable);
    RUN(sweep_settings);
    return test_report();
}
