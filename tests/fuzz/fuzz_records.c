/* libFuzzer target for the record parser: any input is decoded for people,
 * checked for state under a live layer's handle, and SET on a real socket.
 * None of it may crash, leak or accept a blob the layer never issued. */
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include "wfpr/wfpr.h"

static wfpr_layer *layer;
static wfpr_redirect_handle *handle;
static int sock = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!layer) {
		if (wfpr_layer_new(&layer) != 0 || wfpr_redirect_handle_create(&handle, layer, NULL, "fuzz") != 0 ||
		    wfpr_inproc_attach(layer) != 0)
			abort();
		sock = socket(AF_INET, SOCK_STREAM, 0);
	}
	wfpr_records *records = NULL;
	if (wfpr_records_decode(&records, data, size) == 0) {
		if (records->hop_count == 0 || records->hop_count > WFPR_RECORD_MAX_HOPS)
			abort();
		wfpr_records_free(records);
	}
	wfpr_redirect_state state;
	if (size && wfpr_query_redirect_state(&state, data, size, handle) == 0)
		abort(); /* only records this layer issued verify */
	uint32_t bytes;
	if (size <= UINT32_MAX &&
	    wfpr_ioctl(sock, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, data, (uint32_t)size, NULL, 0, &bytes, NULL, NULL) == 0)
		abort();
	return 0;
}
