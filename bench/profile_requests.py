"""Where a request's CPU goes: wrk against nginx, with `Connection: close`
(a new connection per request) or with --keep-alive, through haproxy (2
threads) and through `wfpr run` with one `pass` proxy on each backend (and,
with --keep-alive, through the bare C relay), in the same run. For each
path, `perf record -a -g` samples every CPU for a few seconds of the load.
Prints, per request: the CPU time of each process (the machine's idle time
too), the proxy's split by system call, and on eBPF what each BPF program
costs (the kernel's own run-time counts, kernel.bpf_stats_enabled, during
the same seconds). With `Connection: close`, `strace -c` then counts the
proxy's system calls per connection (per accept4) for two more seconds.

    python3 bench/profile_requests.py [--keep-alive] [--seconds 8] [--backends preload,ebpf]

Needs perf (Debian's linux-perf) and strace, and bpftool for the BPF
programs' figures; the eBPF backend needs root.
bench/README.md says what it showed.
"""
import argparse
import atexit
import collections
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request

from bench_proxies import BARE, PASS, WFPR, Bench, ebpf_available, free_port, wait_port

KERNEL = 0xffff800000000000


def wrk_args(port, seconds, close):
    return (["wrk", "-c", "50", "-t", "2", "-d", "%ds" % seconds] + (["-H", "Connection: close"] if close else [])
            + ["http://127.0.0.1:%d/small.txt" % port])


def served(port):
    """How many requests nginx on port has served (its stub_status)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/status" % port, timeout=5) as r:
        return int(r.read().decode().split("\n")[2].split()[2])


def rate_of(output):
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


def proxy_pid(run_pid, timeout=10):
    """The `wfpr run` descendant that serves: the wfpr process with most
    threads (its workers), once there is one."""
    deadline = time.time() + timeout
    while True:
        best, most = None, 1
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open("/proc/%s/comm" % pid) as f:
                    if f.read().strip() != "wfpr":
                        continue
                threads = len(os.listdir("/proc/%s/task" % pid))
            except OSError:
                continue
            if int(pid) != run_pid and threads > most:
                best, most = int(pid), threads
        if best or time.time() > deadline:
            return best
        time.sleep(0.1)


def samples(data):
    """(comm, frames leaf first as (ip, symbol)) for each sample in a perf.data."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,ip,sym"], capture_output=True, text=True).stdout
    for block in out.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if not lines or not lines[0].strip():
            continue
        frames = []
        for line in lines[1:]:
            parts = line.split()
            if parts:
                frames.append((int(parts[0], 16), re.sub(r"\+0x.*", "", parts[1]) if len(parts) > 1 else "?"))
        yield lines[0].strip(), frames


def syscall_of(syms):
    """The system call a sample's frames (leaf first) are in: by its kernel
    entry point, else (ksys_read called straight from do_syscall_64, the
    scheduler on the way back out) by the libc wrapper that entered the
    kernel; None outside system calls."""
    for sym in reversed(syms):
        for prefix in ("__x64_sys_", "__arm64_sys_", "ksys_"):
            if sym.startswith(prefix):
                return sym[len(prefix):]
    for i, sym in enumerate(syms[:-1]):
        if sym.startswith("entry_SYSCALL") or sym == "el0_svc":
            wrapper = re.sub(r"^(__)?(GI_)?(_+)?(libc_)?|@.*$", "", syms[i + 1])
            return {"send": "sendto", "recv": "recvfrom"}.get(wrapper, wrapper)
    return None


def profile(data, rate, proxy_comm):
    """µs per request of each process, and of each of the proxy's system
    calls, at rate requests/s while perf sampled."""
    per_comm, per_call, total = collections.Counter(), collections.Counter(), 0
    for comm, frames in samples(data):
        total += 1
        per_comm["idle" if comm == "swapper" else comm] += 1
        if comm != proxy_comm:
            continue
        call = syscall_of([sym for _, sym in frames])
        if call:
            per_call[call] += 1
        elif all(ip < KERNEL for ip, _ in frames):
            per_call["(user space)"] += 1
        else:
            per_call["(kernel, no system call)"] += 1
    us = (os.cpu_count() or 1) * 1e6 / rate / max(total, 1)
    return ({k: n * us for k, n in per_comm.items()}, {k: n * us for k, n in per_call.items()})


def strace_counts(pid, seconds=2):
    """The system calls pid's threads made in `seconds`, by name; "connections":
    the accept4 calls that returned one."""
    out = subprocess.run(["timeout", "-s", "INT", str(seconds), "strace", "-c", "-f", "-p", str(pid)],
                         capture_output=True, text=True).stderr
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3])
            if parts[-1] == "accept4":
                counts["connections"] = int(parts[3]) - (int(parts[4]) if len(parts) == 6 else 0)
    return counts


def bpf_runs():
    """{program name: (run time ns, runs)} of the loaded wfpr BPF programs
    ({} without bpftool)."""
    try:
        out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True).stdout
    except OSError:
        return {}
    runs = collections.defaultdict(lambda: [0, 0])
    for prog in json.loads(out or "[]"):
        if prog.get("name", "").startswith("wfpr_"):
            runs[prog["name"]][0] += prog.get("run_time_ns", 0)
            runs[prog["name"]][1] += prog.get("run_cnt", 0)
    return runs


BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


def set_bpf_stats(value):
    """Set the kernel's BPF run-time counts on ("1") or off; what it was
    before, or None when it cannot be set."""
    try:
        with open(BPF_STATS) as f:
            was = f.read().strip()
        with open(BPF_STATS, "w") as f:
            f.write(value)
        return was
    except OSError:
        return None


def measure(name, command, seconds, find_pid, comm, work, close, nginx, bpf=False):
    """One profiled run of command (wrk, or wfpr run -- wrk) and, with close,
    one counted run. Per request means per request nginx served while perf
    sampled (perf slows the machine)."""
    data = os.path.join(work, name.replace(" ", "-") + ".data")
    load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    find_pid(load.pid)  # serving (eBPF: its programs loaded), so wrk runs
    time.sleep(1.5)
    was = set_bpf_stats("1") if bpf else None
    bpf = was is not None
    before, start, began = bpf_runs() if bpf else {}, served(nginx), time.time()
    subprocess.run(["perf", "record", "-a", "-g", "-q", "-o", data, "--", "sleep", str(seconds - 3)], capture_output=True)
    after, requests, took = bpf_runs() if bpf else {}, served(nginx) - start, time.time() - began
    if bpf:
        set_bpf_stats(was)
    rate = rate_of(load.communicate()[0])
    programs = {prog: ((t - before.get(prog, (0, 0))[0]) / max(n - before.get(prog, (0, 0))[1], 1),
                       (n - before.get(prog, (0, 0))[1]) / requests)
                for prog, (t, n) in after.items() if n > before.get(prog, (0, 0))[1]}
    counts = {}
    if close:
        load = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid = find_pid(load.pid)
        time.sleep(1.5)  # the load under way
        counts = strace_counts(pid)
        load.wait()
    by_comm, by_call = profile(data, requests / took, comm)
    return {"rate": rate, "comm": by_comm, "call": by_call, "counts": counts, "proxy": comm, "bpf": programs}


def table(title, header, rows):
    print("\n" + title + "\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep-alive", action="store_true", help="requests on kept connections (default: Connection: close)")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--backends", default="preload,ebpf")
    args = ap.parse_args()
    close = not args.keep_alive
    backends = [be for be in args.backends.split(",") if be != "ebpf" or ebpf_available()]
    work = tempfile.mkdtemp(prefix="wfpr-profile-")
    b = Bench(args.seconds, work)
    atexit.register(b.stop)
    nginx = b.start_nginx()
    front = free_port()
    b.haproxy(("web", front, nginx))
    wait_port(front)
    haproxy_pid = b.procs[-1].pid
    rule = os.path.join(work, "pass.lua")
    with open(rule, "w") as f:
        f.write(PASS)

    got = {"direct": measure("direct", wrk_args(nginx, args.seconds, close), args.seconds, lambda _: None, None, work,
                             False, nginx)}
    got["haproxy"] = measure("haproxy", wrk_args(front, args.seconds, close), args.seconds, lambda _: haproxy_pid,
                             "haproxy", work, close, nginx)
    if not close:  # a thread per direction: a reference for kept connections, not for new ones
        bare = free_port()
        b.start([BARE, str(bare), str(nginx)])
        wait_port(bare)
        bare_pid = b.procs[-1].pid
        got["bare relay"] = measure("bare relay", wrk_args(bare, args.seconds, close), args.seconds,
                                    lambda _: bare_pid, "bare-relay", work, close, nginx)
    for be in backends:
        got["wfpr " + be] = measure("wfpr " + be, [WFPR, "run", "--backend", be, "--rules", rule, "--"]
                                    + wrk_args(nginx, args.seconds, close), args.seconds, proxy_pid, "wfpr", work,
                                    close, nginx, bpf=be == "ebpf")
    b.stop()

    paths = list(got)
    print("wrk %s: requests/s: " % ("Connection: close" if close else "keep-alive")
          + ", ".join("%s %.0f (%.2f of direct)" % (p, got[p]["rate"], got[p]["rate"] / got["direct"]["rate"])
                      for p in paths[1:]) + "; direct %.0f" % got["direct"]["rate"])
    procs = ["the proxy", "wrk", "nginx", "idle", "all"]
    rows = []
    for proc in procs:
        row = [proc]
        for p in paths:
            c = got[p]["comm"]
            v = sum(c.values()) if proc == "all" else c.get(got[p]["proxy"] if proc == "the proxy" else proc, 0)
            row.append("—" if proc == "the proxy" and p == "direct" else "%.1f" % v)
        rows.append(row)
    table("CPU per request (µs; the proxy is haproxy, the bare relay or wfpr, its broker included on preload)",
          ["process"] + paths, rows)
    proxied = paths[1:]
    calls = sorted({k for p in proxied for k in got[p]["call"]}, key=lambda k: -max(got[p]["call"].get(k, 0) for p in proxied))
    table("The proxy's CPU per request by system call (µs)", ["system call"] + proxied,
          [[k] + ["%.2f" % got[p]["call"].get(k, 0) for p in proxied] for k in calls[:14]])
    for p in proxied:
        progs = got[p]["bpf"]
        if progs:
            table("%s: the BPF programs (kernel.bpf_stats_enabled; every socket of the cgroup runs them)" % p,
                  ["program", "ns per run", "runs per request", "µs per request"],
                  [[prog, "%.0f" % ns, "%.2f" % runs, "%.2f" % (ns * runs / 1000)]
                   for prog, (ns, runs) in sorted(progs.items(), key=lambda kv: -kv[1][0] * kv[1][1])]
                  + [["all", "", "", "%.2f" % sum(ns * runs / 1000 for ns, runs in progs.values())]])
    if not close:
        return
    per_conn = {p: {k: v / max(got[p]["counts"].get("connections", 1), 1) for k, v in got[p]["counts"].items()
                    if k != "connections"} for p in proxied}
    names = sorted({k for p in proxied for k in per_conn[p]}, key=lambda k: -max(per_conn[p].get(k, 0) for p in proxied))
    table("The proxy process's system calls per connection (strace -c; on preload the broker's are not counted)",
          ["system call"] + proxied,
          [[k] + ["%.2f" % per_conn[p].get(k, 0) for p in proxied] for k in names if max(per_conn[p].get(k, 0) for p in proxied) >= 0.05]
          + [["all"] + ["%.1f" % sum(per_conn[p].values()) for p in proxied]])


if __name__ == "__main__":
    main()
