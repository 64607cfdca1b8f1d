/* The protocol helpers' parsers (core/src/inspect/): a ClientHello built
 * byte by byte with the cipher and extension lists of FoxIO's published JA4
 * example (t13d1516h2_8daaf6152771_e5627efa2ab1), GREASE added; HTTP heads;
 * DNS messages with compression, a pointer loop and TCP framing. Real
 * traffic (openssl, curl, dig) goes through them in the integration tests. */
#include <string.h>
#include "../../core/src/inspect/inspect.h"
#include "test.h"

typedef struct buf {
	uint8_t b[4096];
	size_t n;
} buf;

static void u8(buf *o, unsigned v) { o->b[o->n++] = (uint8_t)v; }
static void u16(buf *o, unsigned v) { u8(o, v >> 8); u8(o, v & 0xff); }
static void bytes(buf *o, const void *p, size_t n) { memcpy(o->b + o->n, p, n); o->n += n; }
/* a 2-byte length at `at`, for what was written since */
static void fix16(buf *o, size_t at) { o->b[at] = (uint8_t)((o->n - at - 2) >> 8); o->b[at + 1] = (uint8_t)(o->n - at - 2); }

static const uint16_t ciphers[] = {0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9,
                                   0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035};
static const uint16_t other_exts[] = {0x0005, 0x000a, 0x000b, 0x0012, 0x0015, 0x0017, 0x001b,
                                      0x0023, 0x002d, 0x0033, 0x4469, 0xff01};
static const uint16_t sig_algs[] = {0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601};

/* A ClientHello handshake message (without the record header). */
static void client_hello(buf *o, const char *sni)
{
	u8(o, 1);
	size_t len_at = o->n;
	u8(o, 0), u16(o, 0); /* 3-byte length, fixed below */
	u16(o, 0x0303);
	for (int i = 0; i < 32; i++)
		u8(o, i);
	u8(o, 0); /* session id */
	size_t at = o->n;
	u16(o, 0);
	u16(o, 0x0a0a); /* GREASE */
	for (size_t i = 0; i < sizeof(ciphers) / 2; i++)
		u16(o, ciphers[i]);
	fix16(o, at);
	u8(o, 1), u8(o, 0); /* compression: null */
	size_t exts = o->n;
	u16(o, 0);
	u16(o, 0x1a1a), u16(o, 0); /* a GREASE extension */
	if (sni) {
		u16(o, 0x0000);
		size_t e = o->n;
		u16(o, 0);
		size_t l = o->n;
		u16(o, 0);
		u8(o, 0), u16(o, (unsigned)strlen(sni)), bytes(o, sni, strlen(sni));
		fix16(o, l), fix16(o, e);
	}
	u16(o, 0x0010); /* ALPN: h2, http/1.1 */
	size_t e = o->n;
	u16(o, 0);
	size_t l = o->n;
	u16(o, 0);
	u8(o, 2), bytes(o, "h2", 2), u8(o, 8), bytes(o, "http/1.1", 8);
	fix16(o, l), fix16(o, e);
	u16(o, 0x002b); /* supported versions: GREASE, 1.3, 1.2 */
	u16(o, 7), u8(o, 6), u16(o, 0x2a2a), u16(o, 0x0304), u16(o, 0x0303);
	u16(o, 0x000d); /* signature algorithms */
	u16(o, 2 + 2 * sizeof(sig_algs) / 2), u16(o, 2 * sizeof(sig_algs) / 2);
	for (size_t i = 0; i < sizeof(sig_algs) / 2; i++)
		u16(o, sig_algs[i]);
	for (size_t i = 0; i < sizeof(other_exts) / 2; i++)
		u16(o, other_exts[i]), u16(o, 0);
	fix16(o, exts);
	size_t n = o->n - len_at - 3;
	o->b[len_at] = (uint8_t)(n >> 16), o->b[len_at + 1] = (uint8_t)(n >> 8), o->b[len_at + 2] = (uint8_t)n;
}

/* msg wrapped in TLS records of at most `chunk` bytes each. */
static void records(buf *out, const buf *msg, size_t chunk)
{
	for (size_t at = 0; at < msg->n; at += chunk) {
		size_t n = msg->n - at < chunk ? msg->n - at : chunk;
		u8(out, 22), u16(out, 0x0301), u16(out, (unsigned)n), bytes(out, msg->b + at, n);
	}
}

static void test_tls_ja4(void)
{
	buf msg = {0}, rec = {0};
	client_hello(&msg, "example.test");
	records(&rec, &msg, 16384);
	wfpr__tls_hello h;
	const char *why = "";
	CHECK_EQ(wfpr__tls_client_hello(&h, rec.b, rec.n, &why), WFPR__PARSED);
	CHECK(why == NULL);
	CHECK(strcmp(h.sni, "example.test") == 0);
	CHECK_EQ(h.n_alpn, 2);
	CHECK(strcmp(h.alpn[0], "h2") == 0 && strcmp(h.alpn[1], "http/1.1") == 0);
	CHECK(strcmp(h.ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1") == 0);
	if (strcmp(h.ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1") != 0)
		fprintf(stderr, "ja4: %s\n", h.ja4);

	/* the same hello in records of 100 bytes: the same answer */
	buf split = {0};
	records(&split, &msg, 100);
	wfpr__tls_hello h2;
	CHECK_EQ(wfpr__tls_client_hello(&h2, split.b, split.n, NULL), WFPR__PARSED);
	CHECK(strcmp(h2.ja4, h.ja4) == 0);
	/* every prefix is incomplete, never wrong */
	for (size_t n = 1; n < split.n; n++)
		CHECK_EQ(wfpr__tls_client_hello(&h2, split.b, n, &why), WFPR__INCOMPLETE);

	/* no SNI: "i" and one extension fewer */
	buf bare = {0}, bare_rec = {0};
	client_hello(&bare, NULL);
	records(&bare_rec, &bare, 16384);
	CHECK_EQ(wfpr__tls_client_hello(&h2, bare_rec.b, bare_rec.n, NULL), WFPR__PARSED);
	CHECK(strncmp(h2.ja4, "t13i1515h2_8daaf6152771_e5627efa2ab1", 37) == 0);

	/* not TLS, not a ClientHello, malformed */
	CHECK_EQ(wfpr__tls_client_hello(&h2, (const uint8_t *)"GET / HTTP/1.1\r\n", 16, &why), WFPR__NOT_THIS);
	rec.b[5] = 2; /* a ServerHello */
	CHECK_EQ(wfpr__tls_client_hello(&h2, rec.b, rec.n, &why), WFPR__NOT_THIS);
	CHECK(strstr(why, "not a ClientHello") != NULL);
	rec.b[5] = 1;
	rec.b[5 + 4 + 2 + 32] = 200; /* a session id longer than 32 */
	CHECK_EQ(wfpr__tls_client_hello(&h2, rec.b, rec.n, &why), WFPR__NOT_THIS);
}

static void test_http(void)
{
	wfpr__http_head h;
	const char *why;
	const char req[] = "POST /upload?x=1 HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello";
	CHECK_EQ(wfpr__http_parse(&h, (const uint8_t *)req, sizeof(req) - 1, false, &why), WFPR__PARSED);
	CHECK(h.method.len == 4 && memcmp(h.method.p, "POST", 4) == 0);
	CHECK(h.target.len == 11 && memcmp(h.target.p, "/upload?x=1", 11) == 0);
	CHECK_EQ(h.version, 11);
	CHECK_EQ(h.n_headers, 2);
	CHECK_EQ(h.head_len, sizeof(req) - 1 - 5);
	/* cut in the headers: incomplete, with what came whole */
	CHECK_EQ(wfpr__http_parse(&h, (const uint8_t *)req, 50, false, &why), WFPR__INCOMPLETE);
	CHECK_EQ(h.n_headers, 1);
	CHECK(h.method.len == 4);
	/* bare LF ends lines too */
	const char lf[] = "GET / HTTP/1.0\nA: b\n\n";
	CHECK_EQ(wfpr__http_parse(&h, (const uint8_t *)lf, sizeof(lf) - 1, false, &why), WFPR__PARSED);
	CHECK_EQ(h.version, 10);
	/* refused: a space before the colon (request smuggling), binary, HTTP/2's preface */
	const char *bad[] = {"GET / HTTP/1.1\r\nHost : x\r\n\r\n", "\x16\x03\x01\x02\x00\n", "PRI * HTTP/2.0\r\n\r\n",
	                     "GET / HTTP/1.1\r\n folded\r\n\r\n"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK_EQ(wfpr__http_parse(&h, (const uint8_t *)bad[i], strlen(bad[i]), false, &why), WFPR__NOT_THIS);
	const char resp[] = "HTTP/1.1 204 No Content\r\nServer: nginx\r\n\r\n";
	CHECK_EQ(wfpr__http_parse(&h, (const uint8_t *)resp, sizeof(resp) - 1, true, &why), WFPR__PARSED);
	CHECK_EQ(h.status, 204);
	CHECK(h.reason.len == 10 && memcmp(h.reason.p, "No Content", 10) == 0);
	CHECK_EQ(wfpr__http_parse(&h, (const uint8_t *)"HTT", 3, true, &why), WFPR__INCOMPLETE);
	CHECK_EQ(wfpr__http_parse(&h, (const uint8_t *)"SSH-2.0", 7, true, &why), WFPR__NOT_THIS);
}

static void name(buf *o, const char *dotted)
{
	for (const char *p = dotted; *p;) {
		const char *dot = strchr(p, '.');
		size_t n = dot ? (size_t)(dot - p) : strlen(p);
		u8(o, (unsigned)n), bytes(o, p, n);
		p += n + (dot ? 1 : 0);
	}
	u8(o, 0);
}

static void test_dns(void)
{
	buf m = {0};
	u16(&m, 0x1234), u16(&m, 0x8180), u16(&m, 1), u16(&m, 2), u16(&m, 0), u16(&m, 0);
	name(&m, "www.example.test"), u16(&m, 1), u16(&m, 1);
	/* a CNAME, its name a pointer to the question's */
	u16(&m, 0xc00c), u16(&m, 5), u16(&m, 1), u16(&m, 0), u16(&m, 300);
	size_t rd = m.n;
	u16(&m, 0);
	u8(&m, 3), bytes(&m, "cdn", 3), u16(&m, 0xc010); /* cdn. + "example.test" */
	fix16(&m, rd);
	u16(&m, 0xc00c), u16(&m, 1), u16(&m, 1), u16(&m, 0), u16(&m, 60), u16(&m, 4);
	u8(&m, 192), u8(&m, 0), u8(&m, 2), u8(&m, 1);
	wfpr__dns_msg d;
	const char *why;
	CHECK_EQ(wfpr__dns_parse(&d, m.b, m.n, false, &why), WFPR__PARSED);
	CHECK_EQ(d.id, 0x1234);
	CHECK_EQ(d.n_questions, 1);
	CHECK(strcmp(d.questions[0].name, "www.example.test") == 0);
	CHECK_EQ(d.n_answers, 2);
	CHECK(strcmp(d.answers[0].data, "cdn.example.test") == 0);
	CHECK(strcmp(d.answers[1].data, "192.0.2.1") == 0);
	CHECK_EQ(d.answers[1].ttl, 60);
	/* TCP framing: the length first; a short read is incomplete */
	buf t = {0};
	u16(&t, (unsigned)m.n), bytes(&t, m.b, m.n);
	CHECK_EQ(wfpr__dns_parse(&d, t.b, t.n, true, &why), WFPR__PARSED);
	CHECK_EQ(wfpr__dns_parse(&d, t.b, t.n - 1, true, &why), WFPR__INCOMPLETE);
	/* a pointer to itself, and one past the end: refused, never a loop */
	buf loop = {0};
	u16(&loop, 1), u16(&loop, 0), u16(&loop, 1), u16(&loop, 0), u16(&loop, 0), u16(&loop, 0), u16(&loop, 0xc00c);
	u16(&loop, 1), u16(&loop, 1);
	CHECK_EQ(wfpr__dns_parse(&d, loop.b, loop.n, false, &why), WFPR__NOT_THIS);
	loop.b[13] = 0xff;
	CHECK_EQ(wfpr__dns_parse(&d, loop.b, loop.n, false, &why), WFPR__NOT_THIS);
	CHECK_EQ(wfpr__dns_parse(&d, m.b, 11, false, &why), WFPR__NOT_THIS);
}

int main(void)
{
	RUN(test_tls_ja4);
	RUN(test_http);
	RUN(test_dns);
	TEST_MAIN_END();
}
