#!/usr/bin/env bash
# Slow change-feed watchers: a REST watcher (NDJSON over HTTP/1.1, small receive buffer) reads nothing for 30 s
# while 20,000 changes commit (BatchUpdateUsers, 100 users, ~2 KiB each). The service must not buffer the backlog:
# its RSS is sampled throughout and may grow by at most SLOW_WATCHER_MAX_GROWTH_MB (default 48; the backlog as
# JSON alone is ~60 MB). Then the watcher reads again and must get every change exactly once, per user in revision
# order, from the database. --request-timeout is raised past the pause (which lasts as long as the writes, at
# least 30 s): a client that reads nothing for longer than it is dropped (and resumes from its last cursor).
# SLOW_WATCHERS (default 1) such watchers stall side by side, each on its own connection; SLOW_BATCHES (default 200)
# batches of 100 changes are written. Outside the process, the kernel may hold at most SLOW_WATCHER_MAX_KERNEL_KB
# (default 640) queued on a stalled connection: the default --socket-send-buffer-bytes of 256 KiB, which Linux
# doubles, where its auto-tuning would let each grow to 4 MiB.
# Usage: tests/reliability/slow_watcher.sh   (USER_SERVICE_BIN defaults to target/debug/user-service)
name=slow_watcher
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

port="$(free_port)"
export USER_SERVICE_JWT_SECRET="slow-watcher-secret-of-at-least-32-bytes"
token="$("$bin" token --sub ops --scope users.admin)"
# The writes take minutes in a debug build: the request timeout (which drops a connection holding an answer its
# client has not read) is raised past them.
start_server "$port" --database-url "sqlite://$work/users.db" --request-timeout 600s --sqlite-sync normal

SLOW_PORT="$port" SLOW_PID="$server" SLOW_TOKEN="$token" python3 - <<'EOF' || fail "the check above failed; the server's log:"
import json, os, socket, sys, threading, time, urllib.request

port, pid, token = int(os.environ["SLOW_PORT"]), int(os.environ["SLOW_PID"]), os.environ["SLOW_TOKEN"]
max_growth_mb = float(os.environ.get("SLOW_WATCHER_MAX_GROWTH_MB", "48"))
base = f"http://127.0.0.1:{port}"
users, pause = 100, 30.0
batches = int(os.environ.get("SLOW_BATCHES", "200"))
watchers = int(os.environ.get("SLOW_WATCHERS", "1"))

def call(method, path, body):
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)

def rss_mb():
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

stop = threading.Event()
filler = "x" * 2000
ids = [call("POST", "/v1/users", {"email": f"slow{i}@example.com", "description": filler})["id"] for i in range(users)]

def open_watcher():
    """A watcher: HTTP/1.1 on a socket with a small receive buffer, so the server feels it stop reading at once.
    Returns the NDJSON lines of its chunked body, after checking the first is a bookmark."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /v1/users:watch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    stream = sock.makefile("rb")
    status = stream.readline()
    assert b" 200 " in status, status
    while stream.readline() not in (b"\r\n", b""):
        pass

    def chunks():
        pending = b""
        while True:
            header = stream.readline()
            if not header:
                stop.set()
                sys.exit("slow_watcher: FAIL: the server closed the stream")
            size = int(header.strip(), 16)
            if size == 0:
                return
            pending += stream.read(size)
            stream.readline()
            *lines, pending = pending.split(b"\n")
            yield from lines

    lines = chunks()
    first = json.loads(next(lines))
    assert first["type"] == "BOOKMARK", first
    return lines

streams = [open_watcher() for _ in range(watchers)]

baseline = rss_mb()
peak = baseline
def sample():
    global peak
    while not stop.is_set():
        peak = max(peak, rss_mb())
        time.sleep(0.2)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()

started = time.time()
acknowledged = {}
for b in range(batches):
    requests = [{"user": {"id": ids[i], "givenName": f"b{b}"}, "updateMask": "givenName"} for i in range(users)]
    if b % 50 == 0:
        print(f"slow_watcher: batch {b} of {batches}, RSS {rss_mb():.1f} MB", flush=True)
    for u in call("POST", "/v1/users:batchUpdate", {"requests": requests})["users"]:
        acknowledged.setdefault(u["id"], []).append(int(u["revision"]))
wrote = time.time() - started
total = sum(len(v) for v in acknowledged.values())
assert total == users * batches, total
time.sleep(max(0.0, pause - wrote))
paused = time.time() - started
during = peak

def queued_by_server():
    """Bytes the kernel holds unsent or unacknowledged on each of the server's connections (/proc/net/tcp's
    tx_queue): a stalled watcher's share of the machine's memory outside the process."""
    queued = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                queued.append(int(queues.split(":")[0], 16))
    return queued
kernel = queued_by_server()
max_kernel_kb = float(os.environ.get("SLOW_WATCHER_MAX_KERNEL_KB", "640"))

read_started = time.time()
seen_by = []
for lines in streams:
    seen = {}
    count = 0
    for line in lines:
        event = json.loads(line)
        if "error" in event:
            stop.set()
            sys.exit(f"slow_watcher: FAIL: the stream ended with {event}")
        if event["type"] == "BOOKMARK":
            continue
        seen.setdefault(event["user"]["id"], []).append(int(event["revision"]))
        count += 1
        if count == total:
            break
    seen_by.append(seen)
caught_up = time.time() - read_started
stop.set()
sampler.join()
growth = during - baseline
print(f"slow_watcher: {total} changes written in {wrote:.1f} s; {watchers} watcher(s) silent for {paused:.1f} s, "
      f"then caught up "
      f"in {caught_up:.1f} s; RSS {baseline:.1f} MB before, peak {during:.1f} MB while silent (+{growth:.1f} MB), "
      f"peak {peak:.1f} MB overall; the kernel held at most {max(kernel, default=0) / 1024:.0f} KiB per "
      f"connection ({sum(kernel) / 2**20:.1f} MiB on {len(kernel)})")
expected = {k: sorted(v) for k, v in acknowledged.items()}
if any(seen != expected for seen in seen_by):
    sys.exit("slow_watcher: FAIL: a watcher did not get every change exactly once in revision order")
if len(kernel) < watchers:
    sys.exit(f"slow_watcher: FAIL: found {len(kernel)} of the {watchers} watchers' connections in /proc/net/tcp")
if max(kernel, default=0) > max_kernel_kb * 1024:
    sys.exit(f"slow_watcher: FAIL: the kernel held {max(kernel) / 1024:.0f} KiB on one connection "
             f"(limit {max_kernel_kb:.0f} KiB: --socket-send-buffer-bytes, doubled by Linux)")
if growth > max_growth_mb:
    sys.exit(f"slow_watcher: FAIL: RSS grew by {growth:.1f} MB while the watcher was silent (limit {max_growth_mb} MB)")
print("1 passed, 0 failed")
EOF
