/* Filter conditions (wfpr/match.h): parsed from their text form, written
 * back, and tested against a connection (the preload broker's filters). */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cgroup.h"
#include "wfpr/error.h"
#include "wfpr/match.h"

static int fail(char *err, size_t err_len, const char *fmt, ...)
{
	if (err && err_len) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, err_len, fmt, ap);
		va_end(ap);
	}
	return WFPR_WSAEINVAL;
}

static bool parse_number(const char *s, size_t n, unsigned long max, unsigned long *out)
{
	char buf[16];
	if (n == 0 || n >= sizeof(buf))
		return false;
	memcpy(buf, s, n);
	buf[n] = '\0';
	for (size_t i = 0; i < n; i++)
		if (!isdigit((unsigned char)buf[i]))
			return false;
	errno = 0;
	unsigned long v = strtoul(buf, NULL, 10);
	if (errno || v > max)
		return false;
	*out = v;
	return true;
}

static int add_ports(wfpr_match *m, const char *item, size_t n, char *err, size_t err_len)
{
	const char *dash = memchr(item, '-', n);
	unsigned long lo, hi;
	if (dash ? !parse_number(item, (size_t)(dash - item), 65535, &lo) ||
	                   !parse_number(dash + 1, n - (size_t)(dash - item) - 1, 65535, &hi)
	         : !parse_number(item, n, 65535, &lo))
		return fail(err, err_len, "dport: '%.*s' is not a port or a range such as 8000-8100", (int)n, item);
	if (!dash)
		hi = lo;
	if (lo > hi || lo == 0)
		return fail(err, err_len, "dport: '%.*s' is not a range of ports 1 to 65535", (int)n, item);
	if (m->n_ports == WFPR_MATCH_PORTS)
		return fail(err, err_len, "dport: at most %d ports or ranges", WFPR_MATCH_PORTS);
	m->ports[m->n_ports].lo = (uint16_t)lo;
	m->ports[m->n_ports++].hi = (uint16_t)hi;
	return 0;
}

static int add_prefix(wfpr_prefix *list, size_t *count, const char *kind, const char *item, size_t n, char *err,
                      size_t err_len)
{
	char buf[INET6_ADDRSTRLEN + 8];
	if (n >= sizeof(buf))
		return fail(err, err_len, "%s: '%.*s' is not an address or CIDR prefix", kind, (int)n, item);
	memcpy(buf, item, n);
	buf[n] = '\0';
	char *slash = strchr(buf, '/');
	if (slash)
		*slash = '\0';
	wfpr_prefix p = {0};
	if (inet_pton(AF_INET, buf, p.addr) == 1)
		p.family = AF_INET;
	else if (inet_pton(AF_INET6, buf, p.addr) == 1)
		p.family = AF_INET6;
	unsigned long len = p.family == AF_INET ? 32 : 128;
	if (!p.family || (slash && !parse_number(slash + 1, strlen(slash + 1), len, &len)))
		return fail(err, err_len, "%s: '%.*s' is not an address or CIDR prefix (10.0.0.0/8, fd00::/8)", kind, (int)n,
		            item);
	p.len = (unsigned int)len;
	/* the bits past the prefix are not part of it */
	for (unsigned int bit = p.len; bit < (p.family == AF_INET ? 32u : 128u); bit++)
		p.addr[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
	if (*count == WFPR_MATCH_PREFIXES)
		return fail(err, err_len, "%s: at most %d prefixes", kind, WFPR_MATCH_PREFIXES);
	list[(*count)++] = p;
	return 0;
}

static int add_uid(wfpr_match *m, const char *item, size_t n, char *err, size_t err_len)
{
	unsigned long uid;
	if (!parse_number(item, n, 0xfffffffeUL, &uid)) {
		char name[64];
		struct passwd pw, *found = NULL;
		char buf[4096];
		if (n >= sizeof(name))
			return fail(err, err_len, "uid: '%.*s' is not a number or a user", (int)n, item);
		memcpy(name, item, n);
		name[n] = '\0';
		if (getpwnam_r(name, &pw, buf, sizeof(buf), &found) != 0 || !found)
			return fail(err, err_len, "uid: no user '%s' (give a number or a user name)", name);
		uid = found->pw_uid;
	}
	if (m->n_uids == WFPR_MATCH_UIDS)
		return fail(err, err_len, "uid: at most %d", WFPR_MATCH_UIDS);
	m->uids[m->n_uids++] = (uint32_t)uid;
	return 0;
}

/* One text value into a fixed slot of a list. */
static int add_text(char (*list)[256], size_t *count, size_t max, const char *kind, const char *value, bool absolute,
                    char *err, size_t err_len)
{
	size_t n = strlen(value);
	if (n == 0 || n > 255 || (absolute && value[0] != '/') || strpbrk(value, " \t\n"))
		return fail(err, err_len, "%s: '%s' is not %s of 1 to 255 characters without spaces", kind, value,
		            absolute ? "an absolute path" : "a path");
	if (*count == max)
		return fail(err, err_len, "%s: at most %zu", kind, max);
	memcpy(list[(*count)++], value, n + 1);
	return 0;
}

int wfpr_match_add(wfpr_match *m, const char *kind, const char *value, char *err, size_t err_len)
{
	if (!m || !kind || !value)
		return WFPR_WSAEFAULT;
	if (strcmp(kind, "proto") == 0) {
		int p = strcmp(value, "tcp") == 0 ? IPPROTO_TCP : strcmp(value, "udp") == 0 ? IPPROTO_UDP : 0;
		if (!p)
			return fail(err, err_len, "proto: give tcp or udp, not '%s'", value);
		/* both kinds given: either */
		m->protocol = m->protocol && m->protocol != p ? -1 : p;
		return 0;
	}
	if (strcmp(kind, "comm") == 0) {
		size_t n = strlen(value);
		if (n == 0 || n > 15 || strpbrk(value, " \t\n"))
			return fail(err, err_len, "comm: '%s' is not a command name (1 to 15 characters, as in /proc/PID/comm)", value);
		if (m->n_comms == WFPR_MATCH_COMMS)
			return fail(err, err_len, "comm: at most %d", WFPR_MATCH_COMMS);
		memset(m->comms[m->n_comms], 0, sizeof(m->comms[0]));
		memcpy(m->comms[m->n_comms++], value, n);
		return 0;
	}
	if (strcmp(kind, "exe") == 0)
		return add_text(m->exes, &m->n_exes, WFPR_MATCH_EXES, kind, value, true, err, err_len);
	if (strcmp(kind, "cgroup") == 0)
		return add_text(m->cgroups, &m->n_cgroups, WFPR_MATCH_CGROUPS, kind, value, false, err, err_len);
	bool ports = strcmp(kind, "dport") == 0, uids = strcmp(kind, "uid") == 0, dst = strcmp(kind, "dst") == 0,
	     exclude = strcmp(kind, "exclude-dst") == 0;
	if (!ports && !uids && !dst && !exclude)
		return fail(err, err_len, "unknown condition '%s' (proto, dport, dst, exclude-dst, uid, comm, exe, cgroup)", kind);
	if (!*value)
		return fail(err, err_len, "%s: give a value", kind);
	for (const char *item = value; *item;) {
		size_t n = strcspn(item, ",");
		int rc = ports     ? add_ports(m, item, n, err, err_len)
		         : uids    ? add_uid(m, item, n, err, err_len)
		         : dst     ? add_prefix(m->dst, &m->n_dst, kind, item, n, err, err_len)
		                   : add_prefix(m->exclude, &m->n_exclude, kind, item, n, err, err_len);
		if (rc)
			return rc;
		item += n + (item[n] == ',');
	}
	return 0;
}

int wfpr_match_parse(wfpr_match *m, const char *text, char *err, size_t err_len)
{
	if (!m || !text)
		return WFPR_WSAEFAULT;
	memset(m, 0, sizeof(*m));
	if (strlen(text) > WFPR_MATCH_TEXT_MAX)
		return fail(err, err_len, "the conditions are longer than %d characters", WFPR_MATCH_TEXT_MAX);
	char word[WFPR_MATCH_TEXT_MAX + 1];
	for (const char *p = text;;) {
		p += strspn(p, " ");
		size_t n = strcspn(p, " ");
		if (n == 0)
			return 0;
		memcpy(word, p, n);
		word[n] = '\0';
		p += n;
		char *eq = strchr(word, '=');
		if (!eq)
			return fail(err, err_len, "'%s' is not KIND=VALUE", word);
		*eq = '\0';
		int rc = wfpr_match_add(m, word, eq + 1, err, err_len);
		if (rc)
			return rc;
	}
}

/* snprintf that keeps counting past the end of buf */
static void put(char **out, size_t *left, size_t *need, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(*out, *left, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	*need += (size_t)n;
	size_t used = (size_t)n < *left ? (size_t)n : *left ? *left - 1 : 0;
	*out += used;
	*left -= used;
}

static void put_prefix(char **out, size_t *left, size_t *need, const char *kind, const wfpr_prefix *p)
{
	char text[INET6_ADDRSTRLEN];
	inet_ntop(p->family, p->addr, text, sizeof(text));
	put(out, left, need, "%s%s=%s/%u", *need ? " " : "", kind, text, p->len);
}

size_t wfpr_match_format(char *buf, size_t len, const wfpr_match *m)
{
	char empty[1];
	char *out = buf && len ? buf : empty;
	size_t left = buf && len ? len : sizeof(empty), need = 0;
	*out = '\0';
	if (!m)
		return 0;
	if (m->protocol > 0)
		put(&out, &left, &need, "proto=%s", m->protocol == IPPROTO_TCP ? "tcp" : "udp");
	for (size_t i = 0; i < m->n_ports && i < WFPR_MATCH_PORTS; i++)
		put(&out, &left, &need, m->ports[i].lo == m->ports[i].hi ? "%sdport=%u" : "%sdport=%u-%u", need ? " " : "",
		    m->ports[i].lo, m->ports[i].hi);
	for (size_t i = 0; i < m->n_dst && i < WFPR_MATCH_PREFIXES; i++)
		put_prefix(&out, &left, &need, "dst", &m->dst[i]);
	for (size_t i = 0; i < m->n_exclude && i < WFPR_MATCH_PREFIXES; i++)
		put_prefix(&out, &left, &need, "exclude-dst", &m->exclude[i]);
	for (size_t i = 0; i < m->n_uids && i < WFPR_MATCH_UIDS; i++)
		put(&out, &left, &need, "%suid=%u", need ? " " : "", m->uids[i]);
	for (size_t i = 0; i < m->n_comms && i < WFPR_MATCH_COMMS; i++)
		put(&out, &left, &need, "%scomm=%.15s", need ? " " : "", m->comms[i]);
	for (size_t i = 0; i < m->n_exes && i < WFPR_MATCH_EXES; i++)
		put(&out, &left, &need, "%sexe=%.255s", need ? " " : "", m->exes[i]);
	for (size_t i = 0; i < m->n_cgroups && i < WFPR_MATCH_CGROUPS; i++)
		put(&out, &left, &need, "%scgroup=%.255s", need ? " " : "", m->cgroups[i]);
	return need;
}

static bool in_prefix(const wfpr_prefix *p, const struct sockaddr_storage *dst)
{
	uint8_t addr[16];
	int family = dst->ss_family;
	if (family == AF_INET) {
		memcpy(addr, &((const struct sockaddr_in *)dst)->sin_addr, 4);
	} else {
		memcpy(addr, &((const struct sockaddr_in6 *)dst)->sin6_addr, 16);
		if (IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)addr)) {
			family = AF_INET;
			memmove(addr, addr + 12, 4);
		}
	}
	if (family != p->family)
		return false;
	unsigned int whole = p->len / 8, rest = p->len % 8;
	return memcmp(addr, p->addr, whole) == 0 &&
	       (rest == 0 || ((addr[whole] ^ p->addr[whole]) & (0xff << (8 - rest))) == 0);
}

static uint16_t port_of(const struct sockaddr_storage *a)
{
	return ntohs(a->ss_family == AF_INET ? ((const struct sockaddr_in *)a)->sin_port
	                                     : ((const struct sockaddr_in6 *)a)->sin6_port);
}

int wfpr_match_test(const wfpr_match *m, int protocol, const struct sockaddr_storage *dst, const wfpr_process *p)
{
	if (!m || !dst || (dst->ss_family != AF_INET && dst->ss_family != AF_INET6))
		return 0;
	if (m->protocol > 0 && m->protocol != protocol)
		return 0;
	bool ok = m->n_ports == 0;
	uint16_t port = port_of(dst);
	for (size_t i = 0; i < m->n_ports && !ok; i++)
		ok = port >= m->ports[i].lo && port <= m->ports[i].hi;
	bool in = m->n_dst == 0;
	for (size_t i = 0; i < m->n_dst && !in; i++)
		in = in_prefix(&m->dst[i], dst);
	ok = ok && in;
	for (size_t i = 0; i < m->n_exclude && ok; i++)
		ok = !in_prefix(&m->exclude[i], dst);
	if (!ok)
		return 0;
	if (!m->n_uids && !m->n_comms && !m->n_exes && !m->n_cgroups)
		return 1;
	if (!p || !p->pid)
		return 0;
	ok = m->n_uids == 0;
	for (size_t i = 0; i < m->n_uids && !ok; i++)
		ok = m->uids[i] == p->uid;
	bool comm = m->n_comms == 0;
	for (size_t i = 0; i < m->n_comms && !comm; i++)
		comm = strncmp(m->comms[i], p->name, 15) == 0;
	bool exe = m->n_exes == 0;
	for (size_t i = 0; i < m->n_exes && !exe; i++)
		exe = strcmp(m->exes[i], p->exe) == 0;
	bool cgroup = m->n_cgroups == 0;
	for (size_t i = 0; i < m->n_cgroups && !cgroup; i++)
		cgroup = wfpr__cgroup_holds((pid_t)p->pid, m->cgroups[i]);
	return ok && comm && exe && cgroup;
}
