"""Where a new connection's CPU goes: wrk with `Connection: close` against
nginx, through haproxy (2 threads) and through `wfpr run` with one `pass`
proxy on each backend, in the same run. For each path, `perf record -a -g`
samples every CPU for a few seconds of the load, and `strace -c` counts the
proxy's system calls for two more. Prints, per request: the CPU time of each
process (the machine's idle time too), and the proxy's split by system call;
then the proxy's system calls per connection (per accept4).

    python3 bench/profile_close.py [--seconds 8] [--backends preload,ebpf]

Needs perf (Debian's linux-perf) and strace; the eBPF backend needs root.
bench/README.md says what it showed.
"""
import argparse
import atexit
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

from bench_proxies import PASS, WFPR, Bench, ebpf_available, free_port, wait_port

KERNEL = 0xffff800000000000


def wrk_args(port, seconds):
    return ["wrk", "-c", "50", "-t", "2", "-d", "%ds" % seconds, "-H", "Connection: close",
            "http://127.0.0.1:%d/small.txt" % port]


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


def profile(data, rate, proxy_comm):
    """µs per request of each process, and of each of the proxy's system calls."""
    per_comm, per_call, total = collections.Counter(), collections.Counter(), 0
    for comm, frames in samples(data):
        total += 1
        per_comm["idle" if comm == "swapper" else comm] += 1
        if comm != proxy_comm:
            continue
        calls = [sym[len("__x64_sys_"):] for _, sym in frames if sym.startswith("__x64_sys_")]
        if calls:
            per_call[calls[-1]] += 1
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


def measure(name, command, seconds, find_pid, comm, work):
    """One profiled run and one counted run of command (wrk, or wfpr run -- wrk)."""
    data = os.path.join(work, name.replace(" ", "-") + ".data")
    load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    find_pid(load.pid)  # serving (eBPF: its programs loaded), so wrk runs
    time.sleep(1.5)
    subprocess.run(["perf", "record", "-a", "-g", "-q", "-o", data, "--", "sleep", str(seconds - 3)],
                   capture_output=True)
    rate = rate_of(load.communicate()[0])
    load = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = find_pid(load.pid)
    time.sleep(1.5)  # the load under way
    counts = strace_counts(pid)
    load.wait()
    by_comm, by_call = profile(data, rate, comm)
    return {"rate": rate, "comm": by_comm, "call": by_call, "counts": counts, "proxy": comm}


def table(title, header, rows):
    print("\n" + title + "\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--backends", default="preload,ebpf")
    args = ap.parse_args()
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

    got = {"direct": {"rate": rate_of(subprocess.run(wrk_args(nginx, 3), capture_output=True, text=True).stdout)}}
    got["haproxy"] = measure("haproxy", wrk_args(front, args.seconds), args.seconds, lambda _: haproxy_pid,
                             "haproxy", work)
    for be in backends:
        got["wfpr " + be] = measure("wfpr " + be, [WFPR, "run", "--backend", be, "--rules", rule, "--"]
                                    + wrk_args(nginx, args.seconds), args.seconds, proxy_pid, "wfpr", work)
    b.stop()

    paths = [p for p in got if p != "direct"]
    print("requests/s: " + ", ".join("%s %.0f (%.2f of direct)" % (p, got[p]["rate"], got[p]["rate"] / got["direct"]["rate"])
                                     for p in paths) + "; direct %.0f" % got["direct"]["rate"])
    procs = ["the proxy", "wrk", "nginx", "idle", "all"]
    rows = []
    for proc in procs:
        row = [proc]
        for p in paths:
            c = got[p]["comm"]
            v = sum(c.values()) if proc == "all" else c.get(got[p]["proxy"] if proc == "the proxy" else proc, 0)
            row.append("%.1f" % v)
        rows.append(row)
    table("CPU per request (µs; the proxy is haproxy or wfpr, its broker included on preload)", ["process"] + paths, rows)
    calls = sorted({k for p in paths for k in got[p]["call"]}, key=lambda k: -max(got[p]["call"].get(k, 0) for p in paths))
    table("The proxy's CPU per request by system call (µs)", ["system call"] + paths,
          [[k] + ["%.2f" % got[p]["call"].get(k, 0) for p in paths] for k in calls[:14]])
    per_conn = {p: {k: v / max(got[p]["counts"].get("connections", 1), 1) for k, v in got[p]["counts"].items()
                    if k != "connections"} for p in paths}
    names = sorted({k for p in paths for k in per_conn[p]}, key=lambda k: -max(per_conn[p].get(k, 0) for p in paths))
    table("The proxy process's system calls per connection (strace -c; on preload the broker's are not counted)",
          ["system call"] + paths,
          [[k] + ["%.2f" % per_conn[p].get(k, 0) for p in paths] for k in names if max(per_conn[p].get(k, 0) for p in paths) >= 0.05]
          + [["all"] + ["%.1f" % sum(per_conn[p].values()) for p in paths]])


if __name__ == "__main__":
    main()
