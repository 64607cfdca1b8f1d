"""make demo: two cooperating inspection proxies around real curl traffic.

A local HTTP server (Python's http.server) serves a 4 MiB file and the EICAR
test file. `wfpr run` starts the broker and two proxies, each its own
redirector: `host_log` logs each request's Host header, `antivirus` closes
any connection that carries the EICAR pattern. curl, unmodified, fetches
both URLs through them. The demo prints what each end saw, the sha256 of
both ends, and each proxy's view (the hop chain and the redirect state),
read from the JSON log.

As root, the demo then does it again with the eBPF backend around a
statically linked client (build/static-fetch), which no LD_PRELOAD shim can
catch: BPF programs on the run's own cgroup redirect it in the kernel.
"""
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WFPR = os.environ.get("WFPR_BIN", os.path.join(ROOT, "build", "wfpr"))  # make test-install runs the installed one
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def show(log):
    """Each proxy's view of each connection, from the JSON log."""
    print("\nwhat each proxy saw (from the JSON log):")
    with open(log) as f:
        for line in f:
            e = json.loads(line)
            if e["event"] == "connect":
                print("  %-9s %-15s -> %-15s state=%-18s hops=%s verdict=%s" % (
                    e["proxy"], e["client"], e["original_dst"], e["state"], " > ".join(e["hops"]), e["verdict"]))
            elif e["event"] == "close" and e["bytes_down"] < 1000:
                print("  %-9s closed a connection after %d bytes down (the EICAR pattern)" % (
                    e["proxy"], e["bytes_down"]))


def ebpf_part(work, proxies, base, payload):
    """The same chain with --backend ebpf around a static binary; True if it went well or cannot run here."""
    static = os.path.join(ROOT, "build", "static-fetch")
    probe = subprocess.run([WFPR, "run", "--backend", "ebpf", *proxies[:2], "--", "true"], capture_output=True, text=True)
    if probe.returncode != 0 or not os.path.exists(static):
        print("\n(the eBPF part is left out here: %s)" % (" ".join(probe.stderr.split()) or "no build/static-fetch"))
        return True
    log, got = os.path.join(work, "ebpf.jsonl"), os.path.join(work, "got-static.bin")
    print("\n$ sudo wfpr run --backend ebpf --rules host_log.lua --proxy antivirus=eicar.lua -- static-fetch ...")
    print("  (static-fetch is statically linked: no LD_PRELOAD can catch it; the kernel redirects it)")
    sys.stdout.flush()
    status = subprocess.call([WFPR, "run", "--backend", "ebpf", *proxies, "--log", log, "--", "sh", "-c",
                              '"$0" 127.0.0.1 "$1" /payload.bin > "$2"', static, base.rsplit(":", 1)[1], got])
    same = sha256(got) == sha256(payload)
    print("\nsha256 at static-fetch: %s  payload.bin (%s)" % (sha256(got), "intact" if same else "NOT intact"))
    show(log)
    return status == 0 and same


def main():
    work = tempfile.mkdtemp(prefix="wfpr-demo-")
    try:
        www = os.path.join(work, "www")
        os.mkdir(www)
        with open(os.path.join(www, "payload.bin"), "wb") as f:
            f.write(os.urandom(4 << 20))
        with open(os.path.join(www, "eicar.txt"), "wb") as f:
            f.write(EICAR)
        rules = os.path.join(work, "rules")
        os.mkdir(rules)
        shutil.copy(os.path.join(ROOT, "lua", "rules", "http_log.lua"), os.path.join(rules, "host_log.lua"))

        handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=www)
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = "http://127.0.0.1:%d" % server.server_address[1]
        print("server: %s (http.server, outside the proxies)\n" % base)

        log = os.path.join(work, "decisions.jsonl")
        got = os.path.join(work, "got.bin")
        script = (
            'curl -sS -o "$1" -w "fetch 1: $2/payload.bin -> HTTP %{http_code}, %{size_download} bytes\\n" "$2/payload.bin"; '
            'if curl -sS -o /dev/null "$2/eicar.txt"; then echo "fetch 2: $2/eicar.txt -> passed (it should not)"; '
            'else echo "fetch 2: $2/eicar.txt -> blocked by the antivirus proxy (curl exit $?)"; fi'
        )
        cmd = [WFPR, "run", "--rules", os.path.join(rules, "host_log.lua"),
               "--proxy", "antivirus=" + os.path.join(ROOT, "lua", "rules", "eicar.lua"),
               "--log", log, "--", "sh", "-c", script, "sh", got, base]
        print("$ wfpr run --rules host_log.lua --proxy antivirus=eicar.lua --log decisions.jsonl -- curl ...")
        sys.stdout.flush()
        status = subprocess.call(cmd)

        print("\nsha256 at the server: %s  payload.bin" % sha256(os.path.join(www, "payload.bin")))
        print("sha256 at curl:       %s  payload.bin" % sha256(got))
        same = sha256(got) == sha256(os.path.join(www, "payload.bin"))
        print("payload intact:", "yes" if same else "NO")

        show(log)
        proxies = ["--rules", os.path.join(rules, "host_log.lua"),
                   "--proxy", "antivirus=" + os.path.join(ROOT, "lua", "rules", "eicar.lua")]
        ebpf_ok = ebpf_part(work, proxies, base, os.path.join(www, "payload.bin"))
        server.shutdown()
        return 0 if status == 0 and same and ebpf_ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
