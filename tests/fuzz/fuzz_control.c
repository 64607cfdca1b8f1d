/* libFuzzer: the daemon's control messages and the match text, the two
 * parsers `wfpr daemon` runs on what any local client sends (and the
 * broker on a REGISTER's match). A parsed match writes back to text that
 * parses to the same match, and testing it against a connection never
 * crashes. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../core/src/ebpf/control.h"
#include "wfpr/match.h"

static void round_trip(const char *text)
{
	static wfpr_match m, again;
	char err[256], out[WFPR_MATCH_TEXT_MAX * 2], out2[WFPR_MATCH_TEXT_MAX * 2];
	if (wfpr_match_parse(&m, text, err, sizeof(err)) != 0)
		return;
	size_t need = wfpr_match_format(out, sizeof(out), &m);
	if (need >= sizeof(out))
		abort(); /* the text form of any match fits twice the longest input */
	/* a uid given by name comes back as its number: parse must accept it */
	if (wfpr_match_parse(&again, out, err, sizeof(err)) != 0)
		abort();
	wfpr_match_format(out2, sizeof(out2), &again);
	if (strcmp(out, out2) != 0)
		abort();
	struct sockaddr_storage dst = {0};
	struct sockaddr_in *in = (struct sockaddr_in *)&dst;
	in->sin_family = AF_INET;
	in->sin_port = htons(443);
	in->sin_addr.s_addr = htonl(0x0a000001);
	wfpr_process p = {.pid = 1, .uid = 0};
	strcpy(p.name, "curl");
	strcpy(p.exe, "/usr/bin/curl");
	wfpr_match_test(&m, IPPROTO_TCP, &dst, &p);
	wfpr_match_test(&m, IPPROTO_UDP, &dst, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > WFPR__CONTROL_MAX)
		return 0;
	char msg[WFPR__CONTROL_MAX + 1], value[WFPR_MATCH_TEXT_MAX + 1];
	memcpy(msg, data, size);
	msg[size] = '\0';
	static const char *const verbs[] = {"cgroup", "register", "name", "status", "ok", "error"};
	static const char *const keys[] = {"name", "listen", "listen6", "weight", "id", "reason", "code", "cgroup"};
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		wfpr__control_is(msg, verbs[i]);
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (wfpr__control_get(msg, keys[i], value, 64) && strcmp(keys[i], "name") == 0)
			wfpr__control_name_valid(value);
	if (wfpr__control_get(msg, "match", value, sizeof(value)))
		round_trip(value);
	round_trip(msg); /* the whole input as a match, too */
	return 0;
}
