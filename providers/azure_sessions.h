/* The azure-container-sessions backend: each sandbox is a session of an Azure Container Apps
 * dynamic-sessions custom-container pool (Hyper-V isolated), allocated by the pool on the
 * first request naming its identifier and reached through the pool management endpoint, where
 * the image's sandbox-agent listens on the target port. Sessions keep no snapshot: suspend
 * streams the workspace through the agent into object storage (S3, required) and stops the
 * session; resume restores it into a new session. Configuration: docs/configuration.md. */
#ifndef SW_PROVIDERS_AZURE_SESSIONS_H
#define SW_PROVIDERS_AZURE_SESSIONS_H

#include "providers/provider.h"

extern const struct provider_ops azure_sessions_provider_ops;

#endif
