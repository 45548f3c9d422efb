/* Starts and stops tests/fakes/e2b.js for the integration tests. */
#include "tests/support/e2b_server.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "lib/buf.h"

#define SCRIPT "tests/fakes/e2b.js"

int e2b_server_start(struct e2b_server *s, char *why, size_t whylen)
{
    return e2b_server_start_envd(s, NULL, why, whylen);
}

int e2b_server_start_envd(struct e2b_server *s, const char *envd_version, char *why, size_t whylen)
{
    memset(s, 0, sizeof(*s));
    if (access(SCRIPT, R_OK) != 0) {
        snprintf(why, whylen, "%s is missing (run from the repository root)", SCRIPT);
        return 1;
    }
    if (fake_proc_mkdtemp("e2bfake", s->dir, sizeof(s->dir), why, whylen) != 0)
        return -1;
    const char *args[] = {
        "--root",     s->dir, "--port", "0", envd_version ? "--envd-version" : NULL,
        envd_version, NULL};
    int rc = fake_proc_start(&s->proc, SCRIPT, args, NULL, why, whylen);
    if (rc == 0) {
        cJSON *j = cJSON_Parse(s->proc.line);
        const cJSON *port = cJSON_GetObjectItem(j, "port");
        const cJSON *key = cJSON_GetObjectItem(j, "api_key");
        if (cJSON_IsNumber(port) && cJSON_IsString(key)) {
            s->port = port->valueint;
            snprintf(s->api_key, sizeof(s->api_key), "%s", key->valuestring);
        } else {
            snprintf(why, whylen, "the E2B fake printed \"%.200s\", not its port and key",
                     s->proc.line);
            rc = -1;
        }
        cJSON_Delete(j);
    }
    if (rc != 0) {
        e2b_server_stop(s);
        return rc;
    }
    snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d", s->port);
    return 0;
}

void e2b_server_stop(struct e2b_server *s)
{
    fake_proc_stop(&s->proc);
    fake_proc_rmtree(s->dir);
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
