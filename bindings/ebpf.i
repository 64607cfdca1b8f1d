/* ebpf.i: the eBPF backend, from a process inside the cgroup that
 * `wfpr run --backend ebpf` (or the loader) made: QUERY and SET then go to
 * the kernel's programs. */

%apply int WFPR_STATUS { int wfpr_ebpf_attach };
%include "wfpr/ebpf.h"
