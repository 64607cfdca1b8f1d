/* The record format: round trips, the hop cap, and bad blobs (bit flips,
 * truncation, trailing bytes, oversize, unknown types, 17 hops); and the
 * BPF programs' writer, compiled here, read back by the C decoder. */
#include <arpa/inet.h>
#include <linux/types.h>
#include <netinet/in.h>
#include <string.h>
#include "../../core/ebpf/record_writer.h"
#include "../../core/src/record.h"
#include "support.h"
#include "test.h"

static uint8_t key[RECORD_KEY_SIZE];

static wfpr_hop random_hop(int i)
{
	wfpr_hop h;
	memset(&h, 0, sizeof(h));
	RAND_bytes(h.redirector_id, sizeof(h.redirector_id));
	h.handle_id = (uint64_t)i + 1;
	h.proxy_pid = 1000u + (uint32_t)i;
	h.protocol = i % 2 ? IPPROTO_UDP : IPPROTO_TCP;
	h.original_remote = loopback_port((uint16_t)(80 + i));
	if (i % 3 == 0) {
		struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&h.original_local;
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(50000);
		v6->sin6_addr = in6addr_loopback;
	} else {
		h.original_local = loopback_port(50000);
	}
	h.target = loopback_port((uint16_t)(8000 + i));
	h.time_ns = 1700000000000000000ull + (uint64_t)i;
	return h;
}

/* One more hop after prev, as the layer appends it: to the parsed chain. */
static int append(uint8_t **out, size_t *out_len, const uint8_t *prev, size_t prev_len, wfpr_hop *hop)
{
	static record_view view;
	if (prev && wfpr__record_parse(&view, prev, prev_len) != 0)
		return WFPR_WSAEINVAL;
	return wfpr__record_append(out, out_len, prev ? &view : NULL, prev, prev_len, hop, NULL, 0, key);
}

/* A chain of n hops, built as the layer builds it: one append per redirect. */
static uint8_t *chain(size_t n, size_t *len, wfpr_hop *hops)
{
	uint8_t *blob = NULL;
	*len = 0;
	for (size_t i = 0; i < n; i++) {
		uint8_t *next = NULL;
		size_t next_len = 0;
		hops[i] = random_hop((int)i);
		CHECK_EQ(append(&next, &next_len, blob, *len, &hops[i]), 0);
		free(blob);
		blob = next;
		*len = next_len;
	}
	return blob;
}

static bool accepted(const uint8_t *blob, size_t len)
{
	record_view view;
	return wfpr__record_parse(&view, blob, len) == 0 && wfpr__record_tokens_valid(&view, key);
}

static void round_trip_every_length(void)
{
	for (size_t n = 1; n <= WFPR_RECORD_MAX_HOPS; n++) {
		wfpr_hop hops[WFPR_RECORD_MAX_HOPS];
		size_t len;
		uint8_t *blob = chain(n, &len, hops);
		CHECK(accepted(blob, len));
		CHECK(len <= WFPR_RECORD_MAX_SIZE);
		wfpr_records *r = NULL;
		CHECK_EQ(wfpr_records_decode(&r, blob, len), 0);
		CHECK_EQ(r ? r->hop_count : 0, n);
		for (size_t i = 0; r && i < n; i++) {
			CHECK(memcmp(&r->hops[i], &hops[i], sizeof(wfpr_hop)) == 0);
		}
		wfpr_records_free(r);
		free(blob);
	}
}

static void seventeenth_append_refused(void)
{
	wfpr_hop hops[WFPR_RECORD_MAX_HOPS], extra = random_hop(16);
	size_t len, out_len = 0;
	uint8_t *blob = chain(WFPR_RECORD_MAX_HOPS, &len, hops), *out = NULL;
	CHECK_EQ(append(&out, &out_len, blob, len, &extra), WFPR_WSAELOOP);
	CHECK(out == NULL);

	/* a hand-made 17-hop blob: the 16th hop twice more, header patched */
	record_view view;
	CHECK_EQ(wfpr__record_parse(&view, blob, len), 0);
	const uint8_t *last_tlv = view.signed_data[15] - 4;
	size_t last_len = (size_t)(blob + len - last_tlv);
	uint8_t *big = malloc(len + last_len);
	memcpy(big, blob, len);
	memcpy(big + len, last_tlv, last_len);
	big[6] = 0;
	big[7] = 17;
	uint32_t total = htonl((uint32_t)(len + last_len));
	memcpy(big + 8, &total, 4);
	CHECK_EQ(wfpr__record_parse(&view, big, len + last_len), WFPR_WSAEINVAL);
	wfpr_records *r = NULL;
	CHECK_EQ(wfpr_records_decode(&r, big, len + last_len), WFPR_WSAEINVAL);
	free(big);
	free(blob);
}

static void every_bit_flip_refused(void)
{
	wfpr_hop hops[4];
	size_t len;
	uint8_t *blob = chain(4, &len, hops);
	uint8_t *copy = malloc(len);
	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit++) {
			memcpy(copy, blob, len);
			copy[i] ^= (uint8_t)(1u << bit);
			CHECK(!accepted(copy, len));
		}
	}
	free(copy);
	free(blob);
}

static void truncation_and_trailing_bytes_refused(void)
{
	wfpr_hop hops[3];
	size_t len;
	uint8_t *blob = chain(3, &len, hops);
	record_view view;
	for (size_t cut = 0; cut < len; cut++)
		CHECK_EQ(wfpr__record_parse(&view, blob, cut), WFPR_WSAEINVAL);
	uint8_t *longer = calloc(1, len + 1);
	memcpy(longer, blob, len);
	CHECK_EQ(wfpr__record_parse(&view, longer, len + 1), WFPR_WSAEINVAL); /* total length says len */
	uint32_t total = htonl((uint32_t)(len + 1));
	memcpy(longer + 8, &total, 4);
	CHECK_EQ(wfpr__record_parse(&view, longer, len + 1), WFPR_WSAEINVAL); /* a stray byte is no TLV */
	free(longer);
	free(blob);
}

static void oversize_refused(void)
{
	static uint8_t huge[WFPR_RECORD_MAX_SIZE + 1];
	wfpr_hop hops[1];
	size_t len;
	uint8_t *blob = chain(1, &len, hops);
	memcpy(huge, blob, len);
	record_view view;
	CHECK_EQ(wfpr__record_parse(&view, huge, sizeof(huge)), WFPR_WSAEINVAL);
	free(blob);
}

static uint8_t *with_extra_tlv(const uint8_t *blob, size_t len, uint16_t type, size_t *out_len)
{
	uint8_t *out = malloc(len + 6);
	memcpy(out, blob, len);
	uint8_t tlv[6] = {(uint8_t)(type >> 8), (uint8_t)type, 0, 2, 0xAB, 0xCD};
	memcpy(out + len, tlv, 6);
	*out_len = len + 6;
	uint32_t total = htonl((uint32_t)*out_len);
	memcpy(out + 8, &total, 4);
	return out;
}

static void unknown_types(void)
{
	wfpr_hop hops[2];
	size_t len, ext_len;
	uint8_t *blob = chain(2, &len, hops);
	record_view view;
	uint8_t *critical = with_extra_tlv(blob, len, 0x0042, &ext_len);
	CHECK_EQ(wfpr__record_parse(&view, critical, ext_len), WFPR_WSAEINVAL);
	uint8_t *optional = with_extra_tlv(blob, len, 0x8042, &ext_len);
	CHECK_EQ(wfpr__record_parse(&view, optional, ext_len), 0); /* newer writers may add these */
	CHECK_EQ(view.hop_count, 2);
	free(critical);
	free(optional);
	free(blob);
}

static void wrong_key_refused(void)
{
	wfpr_hop hops[2];
	size_t len;
	uint8_t *blob = chain(2, &len, hops);
	record_view view;
	uint8_t other[RECORD_KEY_SIZE];
	RAND_bytes(other, sizeof(other));
	CHECK_EQ(wfpr__record_parse(&view, blob, len), 0);
	CHECK(wfpr__record_tokens_valid(&view, key));
	CHECK(!wfpr__record_tokens_valid(&view, other));
	free(blob);
}

static void decode_arguments(void)
{
	wfpr_records *r = NULL;
	uint8_t b[4] = {0};
	CHECK_EQ(wfpr_records_decode(NULL, b, 4), WFPR_WSAEFAULT);
	CHECK_EQ(wfpr_records_decode(&r, NULL, 4), WFPR_WSAEFAULT);
	CHECK_EQ(wfpr_records_decode(&r, b, 0), WFPR_WSAEINVAL);
	CHECK(r == NULL);
	char text[64];
	struct sockaddr_storage a = loopback_port(443);
	CHECK(strcmp(wfpr_sockaddr_format(text, sizeof(text), &a), "127.0.0.1:443") == 0);
	uint8_t id[16] = {0xde, 0xad};
	CHECK(strcmp(wfpr_redirector_id_format(text, sizeof(text), id), "dead0000000000000000000000000000") == 0);
}

/* Records as the kernel writes them (core/ebpf/record_writer.h, the code
 * wfpr.bpf.c runs), decoded by record.c: one IPv4 hop, then two IPv6 hops. */
static void bpf_writer_decodes(void)
{
	__u8 blob[WFPR__WIRE_HEADER_SIZE + 2 * WFPR__WIRE_HOP_SIZE(16)];
	__u8 id[2][16], token[2][16], proxy[16] = {0}, original[16] = {0}, client[16] = {0};
	RAND_bytes(id[0], sizeof(id));
	RAND_bytes(token[0], sizeof(token));
	proxy[10] = original[10] = client[10] = 0xff; /* IPv4-mapped */
	proxy[11] = original[11] = client[11] = 0xff;
	proxy[12] = original[12] = client[12] = 127;
	proxy[15] = 1, original[15] = 7, client[15] = 1;
	struct wfpr__hop_args a = {.id = id[0], .handle = 0x1122334455667788ull, .pid = 4242, .protocol = IPPROTO_TCP,
	                           .target = proxy, .target_port = 15001, .original = original, .original_port = 80,
	                           .local = client, .local_port = 40000, .time = 1700000000123456789ull,
	                           .process_pid = 777, .process_uid = 1000, .process_comm = (const __u8 *)"curl\0\0\0\0\0\0\0\0\0\0\0",
	                           .token = token[0]};
	__u32 len = WFPR__WIRE_HEADER_SIZE + wfpr__write_hop(blob + WFPR__WIRE_HEADER_SIZE, 4, &a);
	wfpr__write_header(blob, 1, len);
	CHECK_EQ(len, WFPR__WIRE_HEADER_SIZE + WFPR__WIRE_HOP_SIZE(4));

	record_view view;
	CHECK_EQ(wfpr__record_parse(&view, blob, len), 0);
	CHECK_EQ(view.hop_count, 1);
	const wfpr_hop *h = &view.hops[0];
	CHECK(memcmp(h->redirector_id, id[0], 16) == 0 && memcmp(h->token, token[0], 16) == 0);
	CHECK_EQ(h->handle_id, 0x1122334455667788ull);
	CHECK_EQ(h->proxy_pid, 4242);
	CHECK_EQ(h->protocol, IPPROTO_TCP);
	CHECK_EQ(h->time_ns, 1700000000123456789ull);
	CHECK_EQ(h->process.pid, 777);
	CHECK_EQ(h->process.uid, 1000);
	CHECK(strcmp(h->process.name, "curl") == 0 && h->process.exe[0] == '\0');
	const struct sockaddr_in *remote = (const struct sockaddr_in *)&h->original_remote;
	const struct sockaddr_in *local = (const struct sockaddr_in *)&h->original_local;
	const struct sockaddr_in *target = (const struct sockaddr_in *)&h->target;
	CHECK_EQ(remote->sin_family, AF_INET);
	CHECK_EQ(ntohs(remote->sin_port), 80);
	CHECK_EQ(ntohl(remote->sin_addr.s_addr), 0x7f000007);
	CHECK_EQ(ntohs(local->sin_port), 40000);
	CHECK_EQ(ntohl(local->sin_addr.s_addr), 0x7f000001);
	CHECK_EQ(ntohs(target->sin_port), 15001);

	/* two IPv6 hops, the second appended after the first as issue() does */
	__u8 six[16] = {0};
	six[15] = 1;
	a.target = a.original = a.local = six;
	a.protocol = IPPROTO_UDP;
	__u32 off = WFPR__WIRE_HEADER_SIZE;
	for (int i = 0; i < 2; i++) {
		a.id = id[i];
		a.token = token[i];
		a.target_port = (__u16)(15001 + i);
		off += wfpr__write_hop(blob + off, 16, &a);
	}
	wfpr__write_header(blob, 2, off);
	CHECK_EQ(off, sizeof(blob));
	CHECK_EQ(wfpr__record_parse(&view, blob, off), 0);
	CHECK_EQ(view.hop_count, 2);
	for (int i = 0; i < 2; i++) {
		CHECK(memcmp(view.hops[i].redirector_id, id[i], 16) == 0);
		CHECK(memcmp(view.hops[i].token, token[i], 16) == 0);
		CHECK_EQ(view.hops[i].target.ss_family, AF_INET6);
		CHECK_EQ(ntohs(((const struct sockaddr_in6 *)&view.hops[i].target)->sin6_port), 15001 + i);
		CHECK_EQ(view.hops[i].protocol, IPPROTO_UDP);
	}
	/* and the decoder refuses what the writer would never write */
	blob[4] = WFPR__WIRE_VERSION + 1;
	CHECK_EQ(wfpr__record_parse(&view, blob, off), WFPR_WSAEINVAL);
}

/* Annotations: the codec's limits, the hop they land on, the token over
 * them, and the BPF writer's NOTES read back the same. */
static void annotations(void)
{
	uint8_t notes[WFPR__WIRE_NOTES_MAX];
	size_t n = 0;
	CHECK_EQ(wfpr__notes_put(notes, &n, "av", "clean"), 0);
	CHECK_EQ(wfpr__notes_put(notes, &n, "av", "inline"), 0); /* replaces */
	CHECK_EQ(wfpr__notes_put(notes, &n, "dlp.v", "2"), 0);
	CHECK_EQ(n, 2 + 2 + 6 + 2 + 5 + 1);
	CHECK_EQ(wfpr__notes_put(notes, &n, "", "x"), WFPR_WSAEINVAL);
	CHECK_EQ(wfpr__notes_put(notes, &n, "a b", "x"), WFPR_WSAEINVAL);
	CHECK_EQ(wfpr__notes_put(notes, &n, "k", "line\nbreak"), WFPR_WSAEINVAL);
	CHECK_EQ(wfpr__notes_put(notes, &n, "0123456789abcdef0123456789abcdefX", "x"), WFPR_WSAEINVAL); /* 33 */
	char long_value[WFPR_ANNOTATION_VALUE_MAX + 2];
	memset(long_value, 'v', sizeof(long_value) - 1);
	long_value[sizeof(long_value) - 1] = '\0';
	CHECK_EQ(wfpr__notes_put(notes, &n, "k", long_value), WFPR_WSAEINVAL); /* 49 */
	long_value[WFPR_ANNOTATION_VALUE_MAX] = '\0';
	CHECK_EQ(wfpr__notes_put(notes, &n, "k", long_value), WFPR_WSAEMSGSIZE); /* 18 + 51 > 64 */
	CHECK_EQ(n, 18); /* a refused put leaves them as they were */
	size_t small = 0;
	char k[2] = "a";
	for (int i = 0; i < WFPR_ANNOTATIONS_MAX; i++, k[0]++)
		CHECK_EQ(wfpr__notes_put(notes, &small, k, ""), 0);
	CHECK_EQ(wfpr__notes_put(notes, &small, "z", ""), WFPR_WSAEMSGSIZE); /* a ninth pair */
	n = 0;
	CHECK_EQ(wfpr__notes_put(notes, &n, "av", "inline"), 0);

	/* the second hop carries them; decoded, they are the first hop's */
	wfpr_hop hops[3];
	size_t one_len;
	uint8_t *one = chain(1, &one_len, hops);
	static record_view view;
	uint8_t *two = NULL, *three = NULL;
	size_t two_len = 0, three_len = 0;
	hops[1] = random_hop(1);
	CHECK_EQ(wfpr__record_append(&two, &two_len, NULL, NULL, 0, &hops[1], notes, n, key), WFPR_WSAEINVAL); /* no chain */
	CHECK_EQ(wfpr__record_parse(&view, one, one_len), 0);
	CHECK_EQ(wfpr__record_append(&two, &two_len, &view, one, one_len, &hops[1], notes, n, key), 0);
	CHECK(accepted(two, two_len));
	wfpr_records *r = NULL;
	CHECK_EQ(wfpr_records_decode(&r, two, two_len), 0);
	CHECK_EQ(r->hops[0].annotation_count, 1);
	CHECK(strcmp(r->hops[0].annotations[0].key, "av") == 0 && strcmp(r->hops[0].annotations[0].value, "inline") == 0);
	CHECK_EQ(r->hops[1].annotation_count, 0); /* the newest hop's proxy has not passed it on */
	wfpr_records_free(r);
	/* a third hop without: the first hop keeps its annotation */
	CHECK_EQ(wfpr__record_parse(&view, two, two_len), 0);
	hops[2] = random_hop(2);
	CHECK_EQ(wfpr__record_append(&three, &three_len, &view, two, two_len, &hops[2], NULL, 0, key), 0);
	CHECK_EQ(wfpr_records_decode(&r, three, three_len), 0);
	CHECK_EQ(r->hops[0].annotation_count, 1);
	CHECK_EQ(r->hops[1].annotation_count, 0);
	wfpr_records_free(r);
	/* the token covers them: any change to the annotation's bytes is refused */
	uint8_t *at = memmem(two, two_len, "inline", 6);
	CHECK(at != NULL);
	at[0] = 'I';
	CHECK(!accepted(two, two_len));
	at[0] = 'i';
	CHECK(accepted(two, two_len));
	/* malformed notes are refused at append */
	uint8_t bad[] = {2, 'a', 'v', 9, 'x'};
	uint8_t *none = NULL;
	size_t none_len = 0;
	CHECK_EQ(wfpr__record_parse(&view, one, one_len), 0);
	CHECK_EQ(wfpr__record_append(&none, &none_len, &view, one, one_len, &hops[1], bad, sizeof(bad), key), WFPR_WSAEINVAL);
	CHECK(none == NULL);
	free(one);
	free(two);
	free(three);

	/* the BPF writer: NOTES before TOKEN, read back as the hop before's; never in the first hop */
	__u8 blob[WFPR__WIRE_HEADER_SIZE + 2 * (WFPR__WIRE_HOP_SIZE(4) + WFPR__WIRE_NOTES_TLV_SIZE(WFPR__WIRE_NOTES_MAX))];
	__u8 id[16] = {1}, token[16] = {2}, ip[16] = {0};
	ip[10] = ip[11] = 0xff, ip[12] = 127, ip[15] = 1;
	struct wfpr__hop_args a = {.id = id, .target = ip, .original = ip, .local = ip, .protocol = IPPROTO_TCP,
	                           .process_comm = (const __u8 *)"haproxy\0\0\0\0\0\0\0\0", .token = token,
	                           .notes = notes, .notes_len = 0};
	__u32 off = WFPR__WIRE_HEADER_SIZE;
	off += wfpr__write_hop(blob + off, 4, &a);
	a.notes_len = (__u32)n;
	__u32 second = wfpr__write_hop(blob + off, 4, &a);
	CHECK_EQ(second, WFPR__WIRE_HOP_SIZE(4) + 4 + n);
	off += second;
	wfpr__write_header(blob, 2, off);
	CHECK_EQ(wfpr__record_parse(&view, blob, off), 0);
	CHECK_EQ(view.hops[0].annotation_count, 1);
	CHECK(strcmp(view.hops[0].annotations[0].value, "inline") == 0);
	off = WFPR__WIRE_HEADER_SIZE;
	off += wfpr__write_hop(blob + off, 4, &a); /* NOTES in the first hop */
	wfpr__write_header(blob, 1, off);
	CHECK_EQ(wfpr__record_parse(&view, blob, off), WFPR_WSAEINVAL);
}

int main(void)
{
	RAND_bytes(key, sizeof(key));
	RUN(bpf_writer_decodes);
	RUN(round_trip_every_length);
	RUN(seventeenth_append_refused);
	RUN(every_bit_flip_refused);
	RUN(truncation_and_trailing_bytes_refused);
	RUN(oversize_refused);
	RUN(unknown_types);
	RUN(wrong_key_refused);
	RUN(decode_arguments);
	RUN(annotations);
	TEST_MAIN_END();
}
