#ifndef WFPR_TEST_SUPPORT_H
#define WFPR_TEST_SUPPORT_H

/* Real loopback servers, clients and cooperating redirect services for the
 * C tests. Everything here runs over kernel sockets on 127.0.0.1. */

#include <pthread.h>
#include <stdbool.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include "wfpr/wfpr.h"

/* SHA-256 of one buffer. */
void sha256(uint8_t out[32], const void *data, size_t len);

int tcp_listen(struct sockaddr_storage *addr);
int udp_bind(struct sockaddr_storage *addr);
uint16_t addr_port(const struct sockaddr_storage *addr);
socklen_t addr_size(const struct sockaddr_storage *addr);

/* Copy bytes both ways until both sides close; half-close is passed on. */
void relay(int a, int b);

/* A TCP server that echoes every byte and hashes what it received. */
typedef struct echo_server {
	int listen_fd;
	struct sockaddr_storage addr;
	pthread_t thread;
	int expected; /* connections to serve before the thread ends */
	pthread_mutex_t lock;
	uint8_t digest[64][32];
	int served;
} echo_server;

int echo_server_start(echo_server *s, int connections);
void echo_server_join(echo_server *s);

/* Connect through the layer to addr, send len random bytes, read the echo.
 * sent/echoed get the SHA-256 of each side. 0 on success. */
int echo_client(const struct sockaddr_storage *addr, size_t len, uint8_t sent[32], uint8_t echoed[32]);

/* A cooperating redirector: a callout plus the proxy it redirects to. */
typedef struct redirector {
	const char *name;
	wfpr_redirect_handle *handle;
	int protocol;
	bool greedy; /* redirect whatever the state; the layer must refuse */
	int listen_fd;
	struct sockaddr_storage addr;
	pthread_t thread;
	int stop; /* atomic: set by *_stop, read by the thread */
	pthread_mutex_t lock;
	pthread_cond_t idle;
	int active;
	int connections;
	size_t hops_seen[64];
	int context_matches; /* default context named the hop's original remote */
	int errors;
} redirector;

/* Redirect `protocol` connections to server_port through this proxy. */
int redirector_start(redirector *r, wfpr_layer *layer, const char *name, int protocol,
                     uint16_t server_port, uint64_t weight, bool greedy);
void redirector_stop(redirector *r);

/* A UDP echo server: replies to every datagram; counts datagrams. */
typedef struct udp_echo {
	int fd;
	struct sockaddr_storage addr;
	pthread_t thread;
	int stop; /* atomic: set by *_stop, read by the thread */
	int datagrams;
} udp_echo;

int udp_echo_start(udp_echo *u);
void udp_echo_stop(udp_echo *u);

/* A redirector whose proxy is the test itself: connections for `port` are
 * sent to listen_fd, and the test accepts and QUERYs by hand. */
typedef struct manual_redirector {
	wfpr_redirect_handle *handle;
	int listen_fd;
	struct sockaddr_storage addr;
	int calls;                  /* classify calls */
	wfpr_redirect_state last_state;
	size_t last_hop_count;
} manual_redirector;

int manual_redirector_init(manual_redirector *m, wfpr_layer *layer, const char *name, int protocol,
                           uint16_t port, uint64_t weight);
/* A broker on path (user_quota: its wfpr_broker_options'), serving on a
 * thread of its own, whose key this process's registrations present; 0 or
 * a wfpr_err. */
int broker_thread_start(wfpr_broker **out, pthread_t *thread, const char *path, size_t user_quota);
/* Stop it, join its thread, free it. */
void broker_thread_stop(wfpr_broker *broker, pthread_t thread);

/* A loopback address with this port. */
struct sockaddr_storage loopback_port(uint16_t port);

#endif
