#ifndef WFPR_EBPF_H
#define WFPR_EBPF_H

/*
 * The eBPF backend, from a process inside a cgroup that `wfpr run --backend
 * ebpf` (or the loader) set up. The kernel redirects connects and datagrams
 * and keeps the records; after wfpr_ebpf_attach(1) this process's
 * wfpr_ioctl QUERY and SET, wfpr_recvmsg and wfpr_sendmsg map onto the BPF
 * programs' custom socket options (docs/ebpf.md), and wfpr_connect is a
 * plain connect. WSAENETDOWN says the programs are not attached to this
 * socket's cgroup. No privilege is needed here; loading needs root.
 */

#include "common.h"

WFPR_BEGIN_DECL

/* on: 1 turns the eBPF backend on for this process, 0 back off. 0, or
 * WFPR_WSAEADDRINUSE while another backend is attached (one at a time). */
WFPR_EXTERN int wfpr_ebpf_attach(int on);
/* 1 when the BPF programs answer on this socket (it is in their cgroup), else 0. */
WFPR_EXTERN int wfpr_ebpf_available(wfpr_socket_t s);

WFPR_END_DECL

#endif
