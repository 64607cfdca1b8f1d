#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "addr.h"
#include "layer.h"
#include "wfpr/error.h"

struct wfpr_redirect_handle {
	wfpr_layer *layer;
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	uint64_t number;
	char *name;
	struct wfpr_redirect_handle *next;
};

typedef struct callout {
	uint32_t id;
	char *name;
	wfpr_classify_fn classify;
	void *user;
	const wfpr_redirect_handle *handle;
} callout;

typedef struct filter {
	uint64_t id;
	char *name;
	wfpr_filter_options cond;
	callout *callout;
} filter;

struct wfpr_layer {
	pthread_rwlock_t lock;
	uint8_t key[RECORD_KEY_SIZE];
	wfpr_redirect_handle *handles;
	uint64_t next_handle;
	callout **callouts;
	size_t n_callouts;
	filter *filters; /* kept sorted by weight, highest first */
	size_t n_filters;
	uint64_t next_filter;
	wfpr_layer_stats stats;
};

static _Thread_local bool in_callback;

bool wfpr__layer_in_callback(void) { return in_callback; }
void wfpr__layer_set_in_callback(bool on) { in_callback = on; }

static void count(uint64_t *counter)
{
	__atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

const char *wfpr_redirect_state_name(wfpr_redirect_state state)
{
	switch (state) {
	case WFPR_CONNECTION_NOT_REDIRECTED: return "NOT_REDIRECTED";
	case WFPR_CONNECTION_REDIRECTED_BY_SELF: return "REDIRECTED_BY_SELF";
	case WFPR_CONNECTION_REDIRECTED_BY_OTHER: return "REDIRECTED_BY_OTHER";
	case WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF: return "PREVIOUSLY_REDIRECTED_BY_SELF";
	}
	return "UNKNOWN";
}

int wfpr_redirect_state_allows_redirect(wfpr_redirect_state state)
{
	return state == WFPR_CONNECTION_NOT_REDIRECTED || state == WFPR_CONNECTION_REDIRECTED_BY_OTHER;
}

static char *dup_name(const char *name)
{
	return strdup(name ? name : "");
}

int wfpr_layer_new(wfpr_layer **out)
{
	if (!out)
		return WFPR_WSAEFAULT;
	*out = NULL;
	wfpr_layer *layer = calloc(1, sizeof(*layer));
	if (!layer)
		return WFPR_WSAENOBUFS;
	if (RAND_bytes(layer->key, sizeof(layer->key)) != 1) {
		free(layer);
		return WFPR_WSAENETDOWN;
	}
	pthread_rwlock_init(&layer->lock, NULL);
	*out = layer;
	return 0;
}

void wfpr_layer_free(wfpr_layer *layer)
{
	if (!layer)
		return;
	for (wfpr_redirect_handle *h = layer->handles, *next; h; h = next) {
		next = h->next;
		free(h->name);
		free(h);
	}
	for (size_t i = 0; i < layer->n_callouts; i++) {
		free(layer->callouts[i]->name);
		free(layer->callouts[i]);
	}
	for (size_t i = 0; i < layer->n_filters; i++)
		free(layer->filters[i].name);
	free(layer->callouts);
	free(layer->filters);
	pthread_rwlock_destroy(&layer->lock);
	OPENSSL_cleanse(layer->key, sizeof(layer->key));
	free(layer);
}

int wfpr_redirect_handle_create(wfpr_redirect_handle **out, wfpr_layer *layer,
                                const uint8_t *id, const char *name)
{
	if (!out || !layer)
		return WFPR_WSAEFAULT;
	*out = NULL;
	if (wfpr__layer_in_callback())
		return WFPR_WSAEINPROGRESS; /* the layer is locked while callouts run */
	wfpr_redirect_handle *h = calloc(1, sizeof(*h));
	if (!h || !(h->name = dup_name(name))) {
		free(h);
		return WFPR_WSAENOBUFS;
	}
	if (id)
		memcpy(h->id, id, WFPR_REDIRECTOR_ID_SIZE);
	else
		RAND_bytes(h->id, WFPR_REDIRECTOR_ID_SIZE);
	h->layer = layer;

	pthread_rwlock_wrlock(&layer->lock);
	for (wfpr_redirect_handle *o = layer->handles; o; o = o->next) {
		if (memcmp(o->id, h->id, WFPR_REDIRECTOR_ID_SIZE) == 0) {
			pthread_rwlock_unlock(&layer->lock);
			free(h->name);
			free(h);
			return WFPR_WSAEINVAL;
		}
	}
	h->number = ++layer->next_handle;
	h->next = layer->handles;
	layer->handles = h;
	pthread_rwlock_unlock(&layer->lock);
	*out = h;
	return 0;
}

const uint8_t *wfpr_redirect_handle_id(const wfpr_redirect_handle *handle)
{
	return handle ? handle->id : NULL;
}

uint64_t wfpr_redirect_handle_number(const wfpr_redirect_handle *handle)
{
	return handle ? handle->number : 0;
}

const char *wfpr_redirect_handle_name(const wfpr_redirect_handle *handle)
{
	return handle ? handle->name : NULL;
}

/* The redirect state of redirector id for an already parsed chain
 * (docs/record-format.md). */
static wfpr_redirect_state state_for(const record_view *view, const uint8_t *id)
{
	if (!view || view->hop_count == 0 || !id)
		return WFPR_CONNECTION_NOT_REDIRECTED;
	size_t last = view->hop_count - 1;
	if (memcmp(view->hops[last].redirector_id, id, WFPR_REDIRECTOR_ID_SIZE) == 0)
		return WFPR_CONNECTION_REDIRECTED_BY_SELF;
	for (size_t i = 0; i < last; i++)
		if (memcmp(view->hops[i].redirector_id, id, WFPR_REDIRECTOR_ID_SIZE) == 0)
			return WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF;
	return WFPR_CONNECTION_REDIRECTED_BY_OTHER;
}

static wfpr_redirect_state state_of(const record_view *view, const wfpr_redirect_handle *h)
{
	return state_for(view, h ? h->id : NULL);
}

/* Parse records (checking the tokens under key when key is not NULL), then the state for id. */
static int state_from_blob(wfpr_redirect_state *out, const void *records, size_t len, const uint8_t *key,
                           const uint8_t *id)
{
	if (!records || len == 0) {
		*out = WFPR_CONNECTION_NOT_REDIRECTED;
		return 0;
	}
	record_view *view = malloc(sizeof(*view));
	if (!view)
		return WFPR_WSAENOBUFS;
	int rc = wfpr__record_parse(view, records, len);
	if (rc == 0 && key && !wfpr__record_tokens_valid(view, key))
		rc = WFPR_WSAEINVAL;
	if (rc == 0)
		*out = state_for(view, id);
	free(view);
	return rc;
}

int wfpr_query_redirect_state(wfpr_redirect_state *out, const void *records, size_t len,
                              const wfpr_redirect_handle *handle)
{
	if (!out || !handle || (!records && len))
		return WFPR_WSAEFAULT;
	return state_from_blob(out, records, len, handle->layer->key, handle->id);
}

int wfpr_redirect_state_for_id(wfpr_redirect_state *out, const void *records, size_t len,
                               const uint8_t id[WFPR_REDIRECTOR_ID_SIZE])
{
	if (!out || !id || (!records && len))
		return WFPR_WSAEFAULT;
	return state_from_blob(out, records, len, NULL, id);
}

int wfpr_callout_register(uint32_t *out, wfpr_layer *layer, const wfpr_callout_options *opts)
{
	if (!out || !layer || !opts || !opts->classify)
		return WFPR_WSAEFAULT;
	if (opts->version != WFPR_CALLOUT_OPTIONS_VERSION)
		return WFPR_WSAEINVAL;
	if (opts->handle && opts->handle->layer != layer)
		return WFPR_WSAEINVAL;
	if (wfpr__layer_in_callback())
		return WFPR_WSAEINPROGRESS;
	callout *c = calloc(1, sizeof(*c));
	if (!c || !(c->name = dup_name(opts->name))) {
		free(c);
		return WFPR_WSAENOBUFS;
	}
	c->classify = opts->classify;
	c->user = opts->user;
	c->handle = opts->handle;

	pthread_rwlock_wrlock(&layer->lock);
	callout **grown = realloc(layer->callouts, (layer->n_callouts + 1) * sizeof(*grown));
	if (!grown) {
		pthread_rwlock_unlock(&layer->lock);
		free(c->name);
		free(c);
		return WFPR_WSAENOBUFS;
	}
	layer->callouts = grown;
	c->id = (uint32_t)layer->n_callouts + 1;
	layer->callouts[layer->n_callouts++] = c;
	pthread_rwlock_unlock(&layer->lock);
	*out = c->id;
	return 0;
}

static bool valid_prefix(const wfpr_filter_options *o)
{
	switch (o->remote_prefix.ss_family) {
	case AF_UNSPEC: return true;
	case AF_INET: return o->remote_prefix_len <= 32;
	case AF_INET6: return o->remote_prefix_len <= 128;
	}
	return false;
}

int wfpr_filter_add(uint64_t *out, wfpr_layer *layer, const wfpr_filter_options *opts)
{
	if (!out || !layer || !opts)
		return WFPR_WSAEFAULT;
	if (opts->version != WFPR_FILTER_OPTIONS_VERSION || !valid_prefix(opts) ||
	    opts->remote_port_min > opts->remote_port_max ||
	    (opts->protocol != 0 && opts->protocol != IPPROTO_TCP && opts->protocol != IPPROTO_UDP))
		return WFPR_WSAEINVAL;
	if (wfpr__layer_in_callback())
		return WFPR_WSAEINPROGRESS;

	pthread_rwlock_wrlock(&layer->lock);
	int rc = WFPR_WSAEINVAL;
	if (opts->callout_id == 0 || opts->callout_id > layer->n_callouts)
		goto out;
	rc = WFPR_WSAENOBUFS;
	filter *grown = realloc(layer->filters, (layer->n_filters + 1) * sizeof(*grown));
	if (!grown)
		goto out;
	layer->filters = grown;
	filter f = {.id = ++layer->next_filter, .name = dup_name(opts->name), .cond = *opts,
	            .callout = layer->callouts[opts->callout_id - 1]};
	if (!f.name)
		goto out;
	f.cond.name = f.name;
	size_t at = 0;
	while (at < layer->n_filters && layer->filters[at].cond.weight >= opts->weight)
		at++;
	memmove(&layer->filters[at + 1], &layer->filters[at], (layer->n_filters - at) * sizeof(filter));
	layer->filters[at] = f;
	layer->n_filters++;
	*out = f.id;
	rc = 0;
out:
	pthread_rwlock_unlock(&layer->lock);
	return rc;
}

int wfpr_filter_remove(wfpr_layer *layer, uint64_t filter_id)
{
	if (!layer)
		return WFPR_WSAEFAULT;
	if (wfpr__layer_in_callback())
		return WFPR_WSAEINPROGRESS;
	int rc = WFPR_FWP_E_NOT_FOUND;
	pthread_rwlock_wrlock(&layer->lock);
	for (size_t i = 0; i < layer->n_filters; i++) {
		if (layer->filters[i].id == filter_id) {
			free(layer->filters[i].name);
			memmove(&layer->filters[i], &layer->filters[i + 1],
			        (layer->n_filters - i - 1) * sizeof(filter));
			layer->n_filters--;
			rc = 0;
			break;
		}
	}
	pthread_rwlock_unlock(&layer->lock);
	return rc;
}

int wfpr_layer_get_stats(wfpr_layer_stats *out, const wfpr_layer *layer)
{
	if (!out || !layer)
		return WFPR_WSAEFAULT;
	wfpr_layer_stats s;
	const uint64_t *src = (const uint64_t *)&layer->stats;
	uint64_t *dst = (uint64_t *)&s;
	for (size_t i = 0; i < sizeof(s) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
	*out = s;
	return 0;
}

static bool prefix_match(const uint8_t *addr, const uint8_t *prefix, unsigned int bits)
{
	unsigned int bytes = bits / 8, rest = bits % 8;
	if (memcmp(addr, prefix, bytes) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (addr[bytes] & mask) == (prefix[bytes] & mask);
}

static bool remote_matches(const wfpr_filter_options *f, const struct sockaddr_storage *remote)
{
	if (f->remote_prefix.ss_family == AF_UNSPEC)
		return true;
	if (f->remote_prefix.ss_family != remote->ss_family)
		return false;
	if (remote->ss_family == AF_INET)
		return prefix_match((const uint8_t *)&((const struct sockaddr_in *)remote)->sin_addr,
		                    (const uint8_t *)&((const struct sockaddr_in *)&f->remote_prefix)->sin_addr,
		                    f->remote_prefix_len);
	return prefix_match((const uint8_t *)&((const struct sockaddr_in6 *)remote)->sin6_addr,
	                    (const uint8_t *)&((const struct sockaddr_in6 *)&f->remote_prefix)->sin6_addr,
	                    f->remote_prefix_len);
}

static bool filter_matches(const wfpr_filter_options *f, const conn_info *c)
{
	uint16_t rport = addr_port(&c->remote);
	return (f->protocol == 0 || f->protocol == c->protocol) &&
	       remote_matches(f, &c->remote) &&
	       (f->remote_port_max == 0 || (rport >= f->remote_port_min && rport <= f->remote_port_max)) &&
	       (f->local_port == 0 || f->local_port == addr_port(&c->local)) &&
	       (f->pid < 0 || f->pid == c->pid) &&
	       (f->uid < 0 || f->uid == c->uid);
}

static bool valid_target(const struct sockaddr_storage *t)
{
	return (t->ss_family == AF_INET || t->ss_family == AF_INET6) && addr_port(t) != 0;
}

/* One callout's REDIRECT, checked against the state rules and limits.
 * Returns false when the layer refuses it (the callout counts as PERMIT). */
static bool accept_redirect(wfpr_layer *layer, const callout *c, const wfpr_connect_request *req, bool probe,
                            redirect_decision *out)
{
	if (!c->handle || !wfpr_redirect_state_allows_redirect(req->state) || !valid_target(&req->redirect_to) || req->context_len > WFPR_CONTEXT_MAX_SIZE ||
	    (req->context_len && !req->context)) {
		if (!probe)
			count(&layer->stats.refused_redirects);
		return false;
	}
	if (req->hop_count >= WFPR_RECORD_MAX_HOPS) {
		if (!probe)
			count(&layer->stats.hop_limit);
		out->action = WFPR_ACTION_BLOCK;
		out->err = WFPR_WSAELOOP;
		return true;
	}
	if (req->context_len) {
		out->context = malloc(req->context_len);
		if (!out->context) {
			out->action = WFPR_ACTION_BLOCK;
			out->err = WFPR_WSAENOBUFS;
			return true;
		}
		memcpy(out->context, req->context, req->context_len);
		out->context_len = req->context_len;
	}
	out->action = WFPR_ACTION_REDIRECT;
	out->handle = c->handle;
	out->target = req->redirect_to;
	out->target_pid = req->target_pid;
	return true;
}

int wfpr__layer_classify(wfpr_layer *layer, const conn_info *conn, const uint8_t *records,
                   size_t records_len, redirect_decision *out)
{
	record_view *view = NULL;

	memset(out, 0, sizeof(*out));
	out->action = WFPR_ACTION_PERMIT;
	if (records) {
		view = malloc(sizeof(*view));
		if (!view)
			return WFPR_WSAENOBUFS;
		if (wfpr__record_parse(view, records, records_len) != 0) {
			free(view);
			return WFPR_WSAEINVAL;
		}
	}
	if (!conn->probe)
		count(&layer->stats.classified);

	pthread_rwlock_rdlock(&layer->lock);
	for (size_t i = 0; i < layer->n_filters && out->action == WFPR_ACTION_PERMIT; i++) {
		const filter *f = &layer->filters[i];
		if (!filter_matches(&f->cond, conn))
			continue;
		const callout *c = f->callout;
		wfpr_connect_request req = {
			.version = WFPR_CONNECT_REQUEST_VERSION,
			.protocol = conn->protocol,
			.remote = conn->remote,
			.local = conn->local,
			.pid = conn->pid,
			.uid = conn->uid,
			.hop_count = view ? view->hop_count : 0,
			.state = state_of(view, c->handle),
			.handle = c->handle,
		};
		wfpr__layer_set_in_callback(true);
		wfpr_action action = c->classify(c->user, &req);
		wfpr__layer_set_in_callback(false);

		if (action == WFPR_ACTION_BLOCK) {
			out->action = WFPR_ACTION_BLOCK;
			out->err = WFPR_WSAEACCES;
		} else if (action == WFPR_ACTION_REDIRECT) {
			accept_redirect(layer, c, &req, conn->probe, out);
		}
	}
	pthread_rwlock_unlock(&layer->lock);
	if (out->action == WFPR_ACTION_REDIRECT)
		out->chain = view; /* issue appends to it */
	else
		free(view);

	if (out->action == WFPR_ACTION_BLOCK && !conn->probe)
		count(&layer->stats.blocked);
	return 0;
}

int wfpr__layer_issue(wfpr_layer *layer, redirect_decision *d, const conn_info *conn,
                const uint8_t *records, size_t records_len,
                uint8_t **out_record, size_t *out_record_len, uint8_t out_token[WFPR_TOKEN_SIZE])
{
	struct timespec now;
	wfpr_hop hop;

	memset(&hop, 0, sizeof(hop));
	memcpy(hop.redirector_id, d->handle->id, WFPR_REDIRECTOR_ID_SIZE);
	hop.handle_id = d->handle->number;
	hop.proxy_pid = (uint32_t)d->target_pid;
	hop.protocol = conn->protocol;
	hop.original_remote = conn->remote;
	hop.original_local = conn->local;
	hop.target = d->target;
	clock_gettime(CLOCK_REALTIME, &now);
	hop.time_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
	if (conn->pid > 0) {
		hop.process.pid = (uint32_t)conn->pid;
		hop.process.uid = (uint32_t)conn->uid;
		wfpr_process_fill(&hop.process);
	}

	if (!records != !d->chain)
		return WFPR_WSAEINVAL; /* not the records that were classified */
	int rc = wfpr__record_append(out_record, out_record_len, d->chain, records, records_len, &hop, conn->notes,
	                             conn->notes_len, layer->key);
	if (rc != 0)
		return rc;
	memcpy(out_token, hop.token, WFPR_TOKEN_SIZE);

	if (!d->context) {
		/* The default context, as the WFP samples pass it: original remote, then original local. */
		d->context = calloc(2, sizeof(struct sockaddr_storage));
		if (!d->context) {
			free(*out_record);
			*out_record = NULL;
			return WFPR_WSAENOBUFS;
		}
		memcpy(d->context, &conn->remote, sizeof(struct sockaddr_storage));
		memcpy(d->context + sizeof(struct sockaddr_storage), &conn->local, sizeof(struct sockaddr_storage));
		d->context_len = 2 * sizeof(struct sockaddr_storage);
	}
	count(&layer->stats.redirected);
	return 0;
}

void wfpr__redirect_decision_cleanup(redirect_decision *d)
{
	free(d->context);
	d->context = NULL;
	d->context_len = 0;
	free(d->chain);
	d->chain = NULL;
}

int wfpr__layer_check_records(wfpr_layer *layer, const uint8_t *blob, size_t len,
                        uint8_t out_last_token[WFPR_TOKEN_SIZE])
{
	record_view *view = malloc(sizeof(*view));
	if (!view)
		return WFPR_WSAENOBUFS;
	int rc = wfpr__record_parse(view, blob, len);
	if (rc == 0 && !wfpr__record_tokens_valid(view, layer->key))
		rc = WFPR_WSAEINVAL;
	if (rc == 0)
		memcpy(out_last_token, view->hops[view->hop_count - 1].token, WFPR_TOKEN_SIZE);
	free(view);
	return rc;
}

void wfpr__layer_count_bad_record(wfpr_layer *layer)
{
	count(&layer->stats.bad_records);
}
