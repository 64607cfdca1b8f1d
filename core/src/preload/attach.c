/* The proxy side of the preload backend: this process's sockets go through
 * the broker (core/src/preload/client.c). */
#include <string.h>
#include "client.h"
#include "wfpr/broker.h"
#include "wfpr/error.h"

int wfpr_preload_attach(const char *path)
{
	if (path && !path[0])
		return WFPR_WSAEINVAL;
	return client_set_path(path);
}

int wfpr_preload_register(uint8_t out_id[WFPR_REDIRECTOR_ID_SIZE], const char *name,
                          const struct sockaddr_storage *address)
{
	if (!out_id || !name || !address)
		return WFPR_WSAEFAULT;
	if (!client_enabled())
		return WFPR_WSAENETDOWN;
	return client_register(name, address, out_id);
}

int wfpr_preload_redirector_name(char *out, size_t len, const uint8_t id[WFPR_REDIRECTOR_ID_SIZE])
{
	if (!out || !id || len == 0)
		return WFPR_WSAEFAULT;
	if (!client_enabled())
		return WFPR_WSAENETDOWN;
	return client_name(id, out, len);
}
