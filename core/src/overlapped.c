#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "overlapped.h"
#include "wfpr/error.h"

typedef struct apc {
	struct apc *next;
	wfpr_completion_routine routine;
	wfpr_overlapped *ov;
	uint32_t err, bytes;
} apc;

struct apc_queue {
	pthread_mutex_t lock;
	int event_fd;
	apc *head, *tail;
	unsigned int refs;
};

static pthread_key_t thread_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static _Thread_local apc_queue *self_queue;

static void drop_thread_ref(void *q)
{
	wfpr__apc_queue_unref(q);
}

static void make_key(void)
{
	pthread_key_create(&thread_key, drop_thread_ref);
}

apc_queue *wfpr__apc_queue_self(void)
{
	if (!self_queue) {
		apc_queue *q = calloc(1, sizeof(*q));
		if (!q)
			return NULL;
		q->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (q->event_fd < 0) {
			free(q);
			return NULL;
		}
		pthread_mutex_init(&q->lock, NULL);
		q->refs = 1; /* the thread's own, dropped when it exits */
		pthread_once(&key_once, make_key);
		pthread_setspecific(thread_key, q);
		self_queue = q;
	}
	__atomic_fetch_add(&self_queue->refs, 1, __ATOMIC_RELAXED);
	return self_queue;
}

void wfpr__apc_queue_unref(apc_queue *q)
{
	if (!q || __atomic_sub_fetch(&q->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	for (apc *a = q->head, *next; a; a = next) {
		next = a->next;
		free(a);
	}
	close(q->event_fd);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

static void signal_fd(int fd)
{
	uint64_t one = 1;
	if (fd >= 0 && write(fd, &one, sizeof(one)) < 0) {
		/* a full eventfd counter is still readable: the waiter wakes either way */
	}
}

void wfpr__overlapped_complete(wfpr_overlapped *ov, wfpr_completion_routine routine, apc_queue *q,
                         int err, uint32_t bytes)
{
	apc *a = NULL;

	if (routine && q) {
		a = malloc(sizeof(*a));
		if (a)
			*a = (apc){.routine = routine, .ov = ov, .err = (uint32_t)err, .bytes = bytes};
	}
	int event_fd = ov->event_fd;
	ov->bytes = bytes;
	__atomic_store_n(&ov->status, (uint32_t)err, __ATOMIC_RELEASE);
	signal_fd(event_fd);
	if (a) {
		pthread_mutex_lock(&q->lock);
		if (q->tail)
			q->tail->next = a;
		else
			q->head = a;
		q->tail = a;
		pthread_mutex_unlock(&q->lock);
		signal_fd(q->event_fd);
	}
}

int wfpr_overlapped_init(wfpr_overlapped *ov)
{
	if (!ov)
		return WFPR_WSAEFAULT;
	ov->status = 0;
	ov->bytes = 0;
	ov->user = NULL;
	ov->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	return ov->event_fd < 0 ? wfpr_err_from_errno(errno) : 0;
}

int wfpr_overlapped_reset(wfpr_overlapped *ov)
{
	uint64_t n;
	if (!ov)
		return WFPR_WSAEFAULT;
	if (__atomic_load_n(&ov->status, __ATOMIC_ACQUIRE) == (uint32_t)WFPR_WSA_IO_PENDING)
		return WFPR_WSAEINPROGRESS;
	if (ov->event_fd >= 0 && read(ov->event_fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		return wfpr_err_from_errno(errno);
	ov->status = 0;
	ov->bytes = 0;
	return 0;
}

void wfpr_overlapped_dispose(wfpr_overlapped *ov)
{
	if (ov && ov->event_fd >= 0) {
		close(ov->event_fd);
		ov->event_fd = -1;
	}
}

int wfpr_get_overlapped_result(wfpr_socket_t s, wfpr_overlapped *ov, uint32_t *bytes, int wait, uint32_t *flags)
{
	(void)s; /* the overlapped structure alone names the operation here */
	if (!ov || !bytes) {
		wfpr_set_last_error(WFPR_WSAEFAULT);
		return WFPR_SOCKET_ERROR;
	}
	uint32_t status;
	while ((status = __atomic_load_n(&ov->status, __ATOMIC_ACQUIRE)) == (uint32_t)WFPR_WSA_IO_PENDING) {
		if (!wait || ov->event_fd < 0) {
			wfpr_set_last_error(WFPR_WSA_IO_INCOMPLETE);
			return WFPR_SOCKET_ERROR;
		}
		struct pollfd p = {.fd = ov->event_fd, .events = POLLIN};
		if (poll(&p, 1, -1) < 0 && errno != EINTR) {
			wfpr_set_last_error(wfpr_err_from_errno(errno));
			return WFPR_SOCKET_ERROR;
		}
	}
	*bytes = ov->bytes;
	if (flags)
		*flags = 0;
	if (status != 0) {
		wfpr_set_last_error((int)status);
		return WFPR_SOCKET_ERROR;
	}
	return 0;
}

static int run_queued(apc_queue *q)
{
	pthread_mutex_lock(&q->lock);
	apc *list = q->head;
	q->head = q->tail = NULL;
	pthread_mutex_unlock(&q->lock);

	int ran = 0;
	for (apc *a = list, *next; a; a = next) {
		next = a->next;
		a->routine(a->err, a->bytes, a->ov, 0);
		free(a);
		ran++;
	}
	return ran;
}

int wfpr_wait_alertable(int timeout_ms)
{
	apc_queue *q = wfpr__apc_queue_self();
	if (!q) {
		wfpr_set_last_error(WFPR_WSAENOBUFS);
		return WFPR_SOCKET_ERROR;
	}
	int ran = run_queued(q);
	if (ran == 0) {
		struct pollfd p = {.fd = q->event_fd, .events = POLLIN};
		if (poll(&p, 1, timeout_ms) < 0 && errno != EINTR) {
			wfpr_set_last_error(wfpr_err_from_errno(errno));
			wfpr__apc_queue_unref(q);
			return WFPR_SOCKET_ERROR;
		}
	}
	uint64_t n;
	if (read(q->event_fd, &n, sizeof(n)) < 0) {
		/* EAGAIN: nothing was signalled */
	}
	if (ran == 0)
		ran = run_queued(q);
	wfpr__apc_queue_unref(q);
	return ran;
}
