/* Microsoft Entra access tokens for the worker, in DefaultAzureCredential's order (the three
 * sources a server uses; no developer-tool credentials):
 *   1. client secret      AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_SECRET
 *   2. workload identity  AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_FEDERATED_TOKEN_FILE
 *                         (the file is read again for every token: Kubernetes rotates it)
 *   3. managed identity   IDENTITY_ENDPOINT + IDENTITY_HEADER (App Service, Container Apps),
 *                         else IMDS (AZURE_POD_IDENTITY_AUTHORITY_HOST, default
 *                         http://169.254.169.254), user-assigned when AZURE_CLIENT_ID is set.
 * 1 and 2 post to AZURE_AUTHORITY_HOST (default https://login.microsoftonline.com; https only,
 * a private CA through SSL_CERT_FILE) /{tenant}/oauth2/v2.0/token. The source is chosen once, at
 * azure_creds_new, from which variables are set.
 *
 * Tokens are cached and fetched again when less than 5 minutes remain (or after
 * azure_creds_invalidate, e.g. on a 401); concurrent callers wait on one fetch. Transport
 * errors, 429 and 5xx are retried (4 tries, exponential backoff with full jitter). The token
 * is registered with the log mask while cached. Messages name the source and never contain a
 * secret, an assertion or a token. Everything runs on the loop given to azure_creds_new. */
#ifndef SW_PROVIDERS_AZURE_CREDS_H
#define SW_PROVIDERS_AZURE_CREDS_H

#include <stddef.h>
#include <stdint.h>

struct event_base;

typedef struct azure_creds azure_creds;

/* token: valid only during the call (NULL on failure); expires_at_ms: wall clock, epoch ms.
 * err: NULL on success, else one line. Called exactly once per azure_creds_get, from the
 * loop, never from inside azure_creds_get. */
typedef void (*azure_creds_fn)(void *arg, const char *token, int64_t expires_at_ms,
                               const char *err);

/* scope: e.g. "https://dynamicsessions.io/.default" (copied); the managed identity sources
 * ask for the scope without "/.default". check_only: validate the environment, contact
 * nothing. NULL with err when the environment names no usable source or a bad value. */
azure_creds *azure_creds_new(struct event_base *base, const char *scope, int check_only, char *err,
                             size_t errlen);
/* Pending callbacks are not called. NULL is a no-op. */
void azure_creds_free(azure_creds *c);
void azure_creds_get(azure_creds *c, azure_creds_fn cb, void *arg);
/* Forgets the cached token (the next get fetches a new one). */
void azure_creds_invalidate(azure_creds *c);
/* "client secret", "workload identity", "managed identity (App Service)",
 * "managed identity (IMDS)". Static storage. */
const char *azure_creds_source(const azure_creds *c);

#endif
