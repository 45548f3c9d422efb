/* AWS credential chain on the worker's event loop, shared by S3 and Lambda MicroVMs.
 *
 * The source is chosen once, in aws_creds_new, from the environment and the shared files, in
 * the order of botocore and the Java SDK (the first source that is configured wins; its
 * failures are reported, never hidden by falling through to a later source):
 *   1. fixed credentials given in the options (the caller's own, e.g. a test or S3_ACCESS_KEY
 *      read elsewhere);
 *   2. environment: <prefix>_ACCESS_KEY / <prefix>_SECRET_KEY [/ <prefix>_SESSION_TOKEN] when
 *      opts.env_prefix is set (S3: Lightdash's names), then AWS_ACCESS_KEY_ID /
 *      AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN];
 *   3. web identity: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN [+ AWS_ROLE_SESSION_NAME] ->
 *      STS AssumeRoleWithWebIdentity (EKS IRSA). The token file is read again at each refresh;
 *   4. shared files: profile AWS_PROFILE (default "default") of AWS_SHARED_CREDENTIALS_FILE
 *      (~/.aws/credentials) and AWS_CONFIG_FILE (~/.aws/config): static keys, or role_arn +
 *      web_identity_token_file [+ role_session_name] (web identity as in 3);
 *   5. container: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (on http://169.254.170.2) or
 *      AWS_CONTAINER_CREDENTIALS_FULL_URI (https, or http on loopback, 169.254.170.2,
 *      169.254.170.23 or [fd00:ec2::23]), with the Authorization header from
 *      AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (read at each refresh) or
 *      AWS_CONTAINER_AUTHORIZATION_TOKEN (ECS task roles, EKS Pod Identity);
 *   6. EC2 instance metadata (unless AWS_EC2_METADATA_DISABLED=true): IMDSv2 token PUT, then the
 *      role name and its credentials; IMDSv1 (no token) when the token PUT fails other than with
 *      400, as the JS SDK does, unless AWS_EC2_METADATA_V1_DISABLED is set.
 * Endpoints: STS from AWS_ENDPOINT_URL_STS, then AWS_ENDPOINT_URL, else
 * https://sts.<region>.amazonaws.com (region: opts.region, AWS_REGION, AWS_DEFAULT_REGION, the
 * profile's region, us-east-1; AWS_STS_REGIONAL_ENDPOINTS=legacy uses sts.amazonaws.com for the
 * legacy global regions). IMDS from AWS_EC2_METADATA_SERVICE_ENDPOINT, else
 * AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE (IPv4 | IPv6). AWS_CA_BUNDLE names the CA bundle for
 * STS (https container endpoints too).
 *
 * Expiring credentials are cached and refreshed refresh_window_ms before they expire; callers
 * arriving during a refresh wait for that one refresh. Within a refresh, transient failures
 * (transport errors of STS and the container endpoint; 429 and 5xx; STS
 * IDPCommunicationError) are tried again, 3 tries in all, with exponential backoff and full
 * jitter. When a refresh fails while the cached
 * credentials are still valid, they are served (with a warning) and the refresh is retried
 * after 10 s. Errors name the source and what failed; keys and tokens never appear in errors or
 * logs (secrets and tokens are added to the log mask while cached). */
#ifndef SW_PROVIDERS_AWS_CREDS_H
#define SW_PROVIDERS_AWS_CREDS_H

#include <stddef.h>
#include <time.h>

struct event_base;
struct log_ctx;

typedef struct aws_creds aws_creds;
typedef struct aws_creds_wait aws_creds_wait;

/* Borrowed by the callback: valid only while it runs. */
struct aws_credentials {
    const char *access_key_id;
    const char *secret_access_key;
    const char *session_token; /* NULL when the credentials have none */
    time_t expiration;         /* wall clock, seconds since the epoch; 0 = never expires */
};

/* Exactly one of creds and error is non-NULL. error is one line naming the source. */
typedef void (*aws_creds_fn)(void *arg, const struct aws_credentials *creds, const char *error);

/* All strings are copied by aws_creds_new; every field may be 0/NULL. */
struct aws_creds_opts {
    const char *env_prefix; /* e.g. "S3": S3_ACCESS_KEY/S3_SECRET_KEY/S3_SESSION_TOKEN first */
    /* Fixed credentials (both or neither): the chain is not consulted. */
    const char *access_key_id, *secret_access_key, *session_token;
    const char *fixed_source;  /* aws_creds_source() of fixed credentials; NULL: "static" */
    const char *region;        /* STS region; NULL: AWS_REGION, AWS_DEFAULT_REGION, profile */
    const char *ca_file;       /* CA bundle for STS/container https; NULL: AWS_CA_BUNDLE */
    long refresh_window_ms;    /* refresh this long before expiry; <= 0: 300000 (5 min) */
    long timeout_ms;           /* per HTTP request; <= 0: IMDS/container 1000, STS 10000 */
    const struct log_ctx *log; /* borrowed, may be NULL */
};

/* Chooses the source (see above) and loads static credentials. base is borrowed and must
 * outlive the chain; opts may be NULL. NULL with one line in err when the configuration is
 * bad (a variable set wrong, a half-set pair, an unreadable shared file, an unsupported profile)
 * or when no source is configured and instance metadata is disabled. */
aws_creds *aws_creds_new(struct event_base *base, const struct aws_creds_opts *opts, char *err,
                         size_t errlen);
/* The same selection and checks as aws_creds_new without creating anything or contacting
 * any endpoint (for start-up validation such as --check-config). 0, or -1 with err. */
int aws_creds_check(const struct aws_creds_opts *opts, char *err, size_t errlen);
/* Stops a refresh in flight and drops every waiter WITHOUT calling it. NULL is a no-op. May be
 * called from inside an aws_creds_fn of this chain. */
void aws_creds_free(aws_creds *c);

/* Asks for credentials. cb runs exactly once, from the loop (never inside this call), unless
 * the wait is cancelled or the chain freed first. The handle is valid until cb returns. */
aws_creds_wait *aws_creds_get(aws_creds *c, aws_creds_fn cb, void *arg);
/* Cancels a wait: its callback does not run; the handle is invalid afterwards. NULL, or the
 * wait whose callback is running: no-op. */
void aws_creds_cancel(aws_creds_wait *w);
/* The cached credentials when they need no refresh now (not within the refresh window), else
 * NULL. Synchronous; valid until control returns to the loop. */
const struct aws_credentials *aws_creds_peek(aws_creds *c);
/* Forgets cached credentials a service refused as expired or invalid (e.g. S3 ExpiredToken):
 * the next get fetches new ones and the old are not served again. Returns 1, or 0 (and does
 * nothing) when the source is static and cannot give other credentials. */
int aws_creds_invalidate(aws_creds *c);
/* Name of the chosen source for logs: "static", "environment (S3_ACCESS_KEY)", "environment
 * (AWS_ACCESS_KEY_ID)", "web-identity (<role arn> via <STS URL>)", "shared-files (profile
 * <name>)", "shared-files web-identity (profile <name> via <STS URL>)", "container (<url
 * without query>)",
 * "instance-metadata (<endpoint>)". Never contains a secret. */
const char *aws_creds_source(const aws_creds *c);
/* Number of credential fetches started so far (for metrics and tests). */
unsigned long aws_creds_fetches(const aws_creds *c);

#endif
