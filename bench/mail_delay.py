#!/usr/bin/env python3
"""Mail outbox throughput and commit-to-SMTP-acceptance delay.

Starts an SMTP listener (asyncio, real SMTP) and the service binary on a fresh SQLite file (or the PostgreSQL URL
given with --database-url) with --smtp-url pointing at it, then creates users with `sendVerificationEmail=true`
over REST from several concurrent callers. For each mail it takes the time from the CreateUser answer (the
commit) to the SMTP server's acceptance of the mail's DATA (matched by recipient), and prints throughput and the
delay's percentiles as JSON.

    python3 bench/mail_delay.py [--binary target/release/user-service] [--mails 500] [--callers 8]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

accepted = {}  # recipient -> monotonic time the DATA was accepted


async def smtp_session(reader, writer):
    try:
        await smtp_exchange(reader, writer)
    except (asyncio.CancelledError, ConnectionError):
        pass  # the service's pooled connections are still open when the benchmark ends


async def smtp_exchange(reader, writer):
    writer.write(b"220 bench ESMTP\r\n")
    rcpt = []
    while True:
        line = await reader.readline()
        if not line:
            break
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper()
        if verb == b"EHLO":
            writer.write(b"250-bench\r\n250 8BITMIME\r\n")
        elif verb == b"MAIL":
            rcpt = []
            writer.write(b"250 OK\r\n")
        elif verb == b"RCPT":
            rcpt.append(line.decode().split("<", 1)[1].split(">", 1)[0])
            writer.write(b"250 OK\r\n")
        elif verb == b"DATA":
            writer.write(b"354 go\r\n")
            await writer.drain()
            while (await reader.readline()) not in (b".\r\n", b""):
                pass
            now = time.monotonic()
            for r in rcpt:
                accepted.setdefault(r, now)
            writer.write(b"250 queued\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            break
        else:
            writer.write(b"250 OK\r\n")
        await writer.drain()
    writer.close()


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, token, body):
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        response.read()


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default="target/release/user-service")
    parser.add_argument("--mails", type=int, default=500)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    server = await asyncio.start_server(smtp_session, "127.0.0.1", 0)
    smtp_port = server.sockets[0].getsockname()[1]
    data = tempfile.mkdtemp(prefix="mail-bench-")
    port = free_port()
    secret = "mail-benchmark-secret-of-at-least-32-bytes"
    env = dict(
        os.environ,
        USER_SERVICE_JWT_SECRET=secret,
        USER_SERVICE_RATE_LIMIT="1000000",
        USER_SERVICE_RATE_BURST="1000000",
        RUST_LOG="warn",
    )
    database = args.database_url or f"sqlite://{data}/users.db"
    service = subprocess.Popen(
        [args.binary, "serve", "--listen", f"127.0.0.1:{port}", "--database-url", database,
         "--data-dir", data, "--smtp-url", f"smtp://127.0.0.1:{smtp_port}"],
        env=env,
    )
    try:
        token = subprocess.run(
            [args.binary, "token", "--sub", "bench", "--scope", "users.admin"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/healthz").read()
                break
            except OSError:
                await asyncio.sleep(0.1)
        run = os.urandom(4).hex()
        committed = {}
        queue = asyncio.Queue()
        for i in range(args.mails):
            queue.put_nowait(f"m{run}-{i}@example.com")

        async def caller():
            while not queue.empty():
                email = queue.get_nowait()
                await asyncio.to_thread(
                    post, f"{base}/v1/users?sendVerificationEmail=true", token, {"email": email}
                )
                committed[email] = time.monotonic()

        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(args.callers)))
        deadline = time.monotonic() + 120
        while len([e for e in committed if e in accepted]) < args.mails and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        delays = [accepted[e] - committed[e] for e in committed if e in accepted]
        last = max(accepted[e] for e in committed if e in accepted)
        print(json.dumps({
            "mails": args.mails,
            "delivered": len(delays),
            "callers": args.callers,
            "database": "postgres" if args.database_url else "sqlite",
            "binary": args.binary,
            "creates_per_s": round(args.mails / (max(committed.values()) - started), 1),
            "mails_per_s": round(len(delays) / (last - started), 1),
            "delay_ms": {
                "p50": round(percentile(delays, 50) * 1000, 1),
                "p99": round(percentile(delays, 99) * 1000, 1),
                "max": round(max(delays) * 1000, 1),
                "mean": round(statistics.mean(delays) * 1000, 1),
            },
        }, indent=2))
        return 0 if len(delays) == args.mails else 1
    finally:
        service.terminate()
        service.wait()
        server.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
