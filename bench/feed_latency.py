#!/usr/bin/env python3
"""Commit-to-watcher latency of the change feed: one REST (NDJSON) watcher, one writer sending UpdateUser over
REST one after another at a steady pace; for each change, the time from the writer receiving its acknowledgement
(the commit is done by then) to the watcher receiving the event, and from sending the request to the event.

    python3 bench/feed_latency.py --bin target/release/user-service [--database-url postgres://…] [--updates 2000]

Starts its own server (SQLite in a temporary folder unless --database-url is given; the PostgreSQL database must
be empty or this benchmark's own) and prints p50/p90/p99 as Markdown."""

import argparse, json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--database-url")
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    args = parser.parse_args()

    work = tempfile.mkdtemp()
    url = args.database_url or f"sqlite://{work}/users.db"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, USER_SERVICE_JWT_SECRET="feed-latency-secret-of-at-least-32-bytes", RUST_LOG="warn")
    token = subprocess.check_output([args.bin, "token", "--sub", "bench", "--scope", "users.admin"], env=env).decode().strip()
    server = subprocess.Popen([args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--database-url", url,
                               "--rate-limit", "1000000", "--rate-burst", "1000000"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/readyz", timeout=1)
                break
            except Exception:
                time.sleep(0.05)

        def call(method, path, body):
            request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)

        uid = call("POST", "/v1/users", {"email": f"latency{time.time_ns()}@example.com"})["id"]
        arrived = {}
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"GET /v1/users:watch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        stream = sock.makefile("rb")
        while stream.readline() not in (b"\r\n", b""):
            pass
        ready = threading.Event()

        def read():
            pending = b""
            while True:
                header = stream.readline().strip()
                # The end of the body, or the connection closed when the run is over.
                if not header or int(header, 16) == 0:
                    return
                size = int(header, 16)
                pending += stream.read(size)
                stream.readline()
                now = time.perf_counter()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    event = json.loads(line)
                    if event["type"] == "BOOKMARK":
                        ready.set()
                    elif event.get("user", {}).get("id") == uid:
                        arrived[int(event["revision"])] = now

        threading.Thread(target=read, daemon=True).start()
        ready.wait(10)
        sent, acked = {}, {}
        for n in range(args.updates):
            start = time.perf_counter()
            revision = int(call("PATCH", f"/v1/users/{uid}", {"givenName": f"n{n}"})["revision"])
            sent[revision], acked[revision] = start, time.perf_counter()
            time.sleep(args.interval_ms / 1000)
        deadline = time.time() + 10
        while len([r for r in sent if r in arrived]) < len(sent) and time.time() < deadline:
            time.sleep(0.05)
        missing = [r for r in sent if r not in arrived]
        from_ack = sorted((arrived[r] - acked[r]) * 1000 for r in sent if r in arrived)
        from_send = sorted((arrived[r] - sent[r]) * 1000 for r in sent if r in arrived)

        def pct(values, p):
            return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")

        backend = "postgres" if url.startswith("postgres") else "sqlite"
        print(f"| {backend} | {len(from_ack)} | {pct(from_ack, .5):.2f} | {pct(from_ack, .9):.2f} | "
              f"{pct(from_ack, .99):.2f} | {pct(from_send, .5):.2f} | {pct(from_send, .99):.2f} | {len(missing)} |")
        # Closing the watcher first lets the server stop at once (an open stream holds its shutdown grace).
        sock.close()
        if missing:
            sys.exit(f"{len(missing)} events never arrived")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
