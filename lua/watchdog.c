/* The wall-clock limit on a rule call. The count hook stops Lua code that
 * runs too long, but not a C library function (string.find with a pattern
 * that backtracks for hours) or a call the hook cannot reach. A watchdog
 * thread looks at every call in progress each few milliseconds; one past
 * its deadline gets a signal on its own thread, whose handler jumps back to
 * guarded_call (rules.c). The Lua state it left may be half-updated, so the
 * host abandons it and builds the rule again from its source. A jump never
 * interrupts the allocator: there the handler only marks the call, and the
 * allocator jumps once it is done. After a second without a rule call the
 * watchdog rests until the next one, so that an idle proxy is not woken
 * 200 times a second. */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include "host.h"

#define WATCH_PERIOD_MS 5
#define QUIET_PERIODS 200 /* of no call entered: then the watchdog rests */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t woken = PTHREAD_COND_INITIALIZER;
static _Atomic int resting; /* the watchdog waits on woken (under lock) */
static wfpr_rules *watched; /* linked through watch_next */
static pthread_once_t started = PTHREAD_ONCE_INIT;
static _Thread_local wfpr_rules *current;

int64_t wfpr__now_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void on_signal(int sig)
{
	(void)sig;
	wfpr_rules *r = current;
	if (!r || !r->in_call)
		return;
	if (r->in_alloc) {
		r->abort_pending = 1; /* the allocator jumps when it is done */
		return;
	}
	siglongjmp(r->abort_to, 1);
}

/* Calls entered on every watched host (locked); *busy: one is in progress. */
static uint64_t activity(bool *busy)
{
	uint64_t n = 0;
	*busy = false;
	for (wfpr_rules *r = watched; r; r = r->watch_next) {
		n += atomic_load(&r->calls);
		*busy = *busy || atomic_load(&r->deadline_ns) != 0;
	}
	return n;
}

static void *watch(void *arg)
{
	(void)arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL); /* the signal is for the rule threads */
	uint64_t seen = 0;
	unsigned int quiet = 0;
	for (;;) {
		struct timespec period = {0, WATCH_PERIOD_MS * 1000000L};
		nanosleep(&period, NULL);
		int64_t now = wfpr__now_mono_ns();
		pthread_mutex_lock(&lock);
		for (wfpr_rules *r = watched; r; r = r->watch_next) {
			int64_t deadline = atomic_load_explicit(&r->deadline_ns, memory_order_acquire);
			if (deadline && now > deadline && !r->signalled) {
				r->signalled = 1;
				pthread_kill(r->thread, WFPR__WATCHDOG_SIGNAL);
			}
		}
		bool busy;
		uint64_t n = activity(&busy);
		quiet = n == seen && !busy ? quiet + 1 : 0;
		seen = n;
		if (quiet >= QUIET_PERIODS) {
			/* rest; a call entered after `resting` is set sees it and
			 * wakes us, one entered before it changed the count */
			atomic_store(&resting, 1);
			while (atomic_load(&resting) && activity(&busy) == seen)
				pthread_cond_wait(&woken, &lock);
			atomic_store(&resting, 0);
			quiet = 0;
		}
		pthread_mutex_unlock(&lock);
	}
	return NULL;
}

static void start(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(WFPR__WATCHDOG_SIGNAL, &sa, NULL);
	pthread_t t;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_create(&t, &attr, watch, NULL);
	pthread_attr_destroy(&attr);
}

void wfpr__watchdog_add(wfpr_rules *r)
{
	pthread_once(&started, start);
	pthread_mutex_lock(&lock);
	r->watch_next = watched;
	watched = r;
	pthread_mutex_unlock(&lock);
}

void wfpr__watchdog_remove(wfpr_rules *r)
{
	pthread_mutex_lock(&lock);
	for (wfpr_rules **p = &watched; *p; p = &(*p)->watch_next)
		if (*p == r) {
			*p = r->watch_next;
			break;
		}
	pthread_mutex_unlock(&lock);
}

void wfpr__watchdog_enter(wfpr_rules *r)
{
	current = r;
	r->thread = pthread_self();
	r->signalled = 0;
	r->abort_pending = 0;
	r->in_call = 1;
	atomic_store_explicit(&r->deadline_ns, wfpr__now_mono_ns() + (int64_t)r->opts.time_limit_ms * 1000000,
	                      memory_order_release);
	atomic_fetch_add(&r->calls, 1);
	if (atomic_load(&resting)) {
		pthread_mutex_lock(&lock);
		atomic_store(&resting, 0);
		pthread_cond_signal(&woken);
		pthread_mutex_unlock(&lock);
	}
}

void wfpr__watchdog_leave(wfpr_rules *r)
{
	atomic_store_explicit(&r->deadline_ns, 0, memory_order_release);
	r->in_call = 0;
	current = NULL;
	if (r->signalled) {
		/* the signal may have come after the call ended: it found nothing
		 * to stop; unblock it in case the handler's jump left it blocked */
		sigset_t s;
		sigemptyset(&s);
		sigaddset(&s, WFPR__WATCHDOG_SIGNAL);
		pthread_sigmask(SIG_UNBLOCK, &s, NULL);
	}
}
