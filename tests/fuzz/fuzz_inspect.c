/* libFuzzer: the protocol helpers' parsers (core/src/inspect/), on bytes a
 * client or server of an inspected connection controls. The first byte
 * chooses the parser (and TCP framing for DNS). Nothing may crash or read
 * past the input; a parsed result must be consistent with it: an HTTP
 * head no longer than the input, every span inside it, a JA4 of the fixed
 * shape, and every prefix of a complete ClientHello incomplete, never
 * wrong. */
#include <stdlib.h>
#include <string.h>
#include "../../core/src/inspect/inspect.h"

static void inside(const uint8_t *data, size_t size, wfpr__http_span s)
{
	if (s.len && ((const uint8_t *)s.p < data || (const uint8_t *)s.p + s.len > data + size))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t which = data[0];
	data++, size--;
	/* a copy of exactly size bytes, so that ASan sees any read past it */
	uint8_t *copy = malloc(size ? size : 1);
	memcpy(copy, data, size);
	static wfpr__tls_hello hello;
	static wfpr__http_head head;
	static wfpr__dns_msg dns;
	const char *why;
	switch (which % 4) {
	case 0:
		if (wfpr__tls_client_hello(&hello, copy, size, &why) == WFPR__PARSED) {
			if (strlen(hello.ja4) != 36 || hello.ja4[0] != 't' || hello.ja4[10] != '_' || hello.ja4[23] != '_')
				abort();
			for (size_t n = 0; n < size && n < 64; n++) /* some prefixes: never a different answer */
				if (wfpr__tls_client_hello(&hello, copy, n, &why) == WFPR__NOT_THIS && n > 5)
					abort();
		}
		break;
	case 1:
	case 2:
		if (wfpr__http_parse(&head, copy, size, which % 4 == 2, &why) != WFPR__NOT_THIS) {
			if (head.head_len > size)
				abort();
			inside(copy, size, head.method);
			inside(copy, size, head.target);
			inside(copy, size, head.reason);
			for (size_t i = 0; i < head.n_headers; i++) {
				inside(copy, size, head.names[i]);
				inside(copy, size, head.values[i]);
			}
		}
		break;
	case 3:
		if (wfpr__dns_parse(&dns, copy, size, which & 4, &why) == WFPR__PARSED &&
		    (dns.n_questions > WFPR__DNS_MAX_RECORDS || dns.n_answers > WFPR__DNS_MAX_RECORDS))
			abort();
		break;
	}
	free(copy);
	return 0;
}
