/* ioctl.i: WSAIoctl for the redirect-record codes, synchronous and overlapped. */

%ignore wfpr_ioctl;
%ignore wfpr_overlapped;
%ignore wfpr_overlapped_init;
%ignore wfpr_overlapped_reset;
%ignore wfpr_overlapped_dispose;
%ignore wfpr_get_overlapped_result;
%ignore wfpr_completion_routine;
%include "wfpr/ioctl.h"

%apply (const void *BUFFER, size_t LENGTH) { (const void *in, size_t in_len) };
%apply (void *OUT, uint32_t OUT_LEN, uint32_t *OUT_USED) { (void *out, uint32_t out_len, uint32_t *out_used) };

%rename(ioctl) wfpr_binding_ioctl;
%inline %{
/* wfpr_ioctl with the output as the language's bytes. null_out passes a NULL
 * output pointer with out_len, to reach that row of the conformance table. */
void wfpr_binding_ioctl(int s, uint32_t code, const void *in, size_t in_len,
                        void *out, uint32_t out_len, uint32_t *out_used, bool null_out)
{
	uint32_t bytes = 0;
	if (in_len > UINT32_MAX) {
		wfpr_binding_raise(WFPR_WSAEINVAL, 0);
		return;
	}
	if (wfpr_ioctl(s, code, in, (uint32_t)in_len, null_out ? NULL : out, out_len, &bytes, NULL, NULL) != 0)
		wfpr_binding_raise(wfpr_get_last_error(), bytes);
	*out_used = bytes;
}
%}

%rename(Overlapped) wfpr_binding_overlapped;
%inline %{
/* An overlapped QUERY that owns its output buffer. */
typedef struct wfpr_binding_overlapped {
	wfpr_overlapped ov;
	uint8_t *buf;
	uint32_t cap;
} wfpr_binding_overlapped;
%}

%extend wfpr_binding_overlapped {
	wfpr_binding_overlapped() {
		wfpr_binding_overlapped *o = calloc(1, sizeof(*o));
		int rc = o ? wfpr_overlapped_init(&o->ov) : WFPR_WSAENOBUFS;
		if (rc != 0) {
			free(o);
			wfpr_binding_raise(rc, 0);
			return NULL;
		}
		return o;
	}
	~wfpr_binding_overlapped() {
		/* Still pending: the library may yet write the buffer and signal the
		 * event, so both are left alive rather than freed under it. */
		if (__atomic_load_n(&$self->ov.status, __ATOMIC_ACQUIRE) == (uint32_t)WFPR_WSA_IO_PENDING)
			return;
		wfpr_overlapped_dispose(&$self->ov);
		free($self->buf);
		free($self);
	}
	/* 0 when done at once, WSA_IO_PENDING when it will complete later. */
	int start(int s, uint32_t code, uint32_t out_len) {
		uint32_t bytes = 0;
		if (__atomic_load_n(&$self->ov.status, __ATOMIC_ACQUIRE) == (uint32_t)WFPR_WSA_IO_PENDING) {
			wfpr_binding_raise(WFPR_WSAEINPROGRESS, 0);
			return 0;
		}
		wfpr_overlapped_reset(&$self->ov);
		if (out_len > $self->cap) {
			uint8_t *grown = realloc($self->buf, out_len);
			if (!grown) {
				wfpr_binding_raise(WFPR_WSAENOBUFS, 0);
				return 0;
			}
			$self->buf = grown;
			$self->cap = out_len;
		}
		if (wfpr_ioctl(s, code, NULL, 0, $self->buf, out_len, &bytes, &$self->ov, NULL) == 0) {
			/* Done at once. On a socket without the overlapped attribute the
			 * library ignored ov, so the outcome is recorded here. */
			$self->ov.bytes = bytes;
			$self->ov.status = 0;
			return 0;
		}
		int err = wfpr_get_last_error();
		if (err != WFPR_WSA_IO_PENDING)
			wfpr_binding_raise(err, bytes);
		return err == WFPR_WSA_IO_PENDING ? err : 0;
	}
	int event_fd() { return $self->ov.event_fd; }
	bool done() { return __atomic_load_n(&$self->ov.status, __ATOMIC_ACQUIRE) != (uint32_t)WFPR_WSA_IO_PENDING; }
	/* The completed operation's bytes, or its error. */
	void result(const uint8_t **DATA, size_t *LENGTH) {
		uint32_t bytes = 0;
		*DATA = $self->buf;
		*LENGTH = 0;
		if (wfpr_get_overlapped_result(-1, &$self->ov, &bytes, 0, NULL) != 0)
			wfpr_binding_raise(wfpr_get_last_error(), bytes);
		else
			*LENGTH = bytes;
	}
}
