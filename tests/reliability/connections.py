"""Connection hygiene checks against the real user-service binary, on loopback only.

Run by connections.sh (which provides the pinned `h2` package). Each check starts its own server, attacks it for a
few seconds with bounded loops and prints one line; the last line is `N passed, N failed`.

  silent       connections that send nothing are closed after --header-timeout
  idle         idle HTTP/1.1 and HTTP/2 (PING-answering) connections are closed after --idle-timeout
  cap          --max-connections holds; a waiting client is served once another connection closes
  emfile       at the open-file limit accepts fail, are paced and logged at most once a second; clients are served
               again once connections close
  headers      a 100 KiB header block over HTTP/1.1 is answered 431
  stalled      a zero-window HTTP/2 reader with 200 streams of ~3 MiB answers, and an HTTP/1.1 client that never
               reads: RSS stays bounded and the connection is dropped after --request-timeout
  readyz       a /readyz flood runs no database transactions (needs READYZ_DATABASE_URL, a dedicated PostgreSQL
               database, and psql)
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

BIN = os.path.realpath(os.environ.get("USER_SERVICE_BIN", "target/debug/user-service"))
SECRET = "connections-check-secret-of-at-least-32-bytes"
# Old binaries (for before/after figures) do not know the connection flags.
BASELINE = os.environ.get("CONNECTIONS_BASELINE") == "1"
RESULTS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin_token():
    env = dict(os.environ, USER_SERVICE_JWT_SECRET=SECRET)
    out = subprocess.run([BIN, "token", "--sub", "ops", "--scope", "users.admin"], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


class Server:
    def __init__(self, *flags, database_url=None, prefix=(), env=None):
        self.dir = tempfile.TemporaryDirectory()
        self.port = free_port()
        self.log_path = os.path.join(self.dir.name, "server.log")
        url = database_url or "sqlite://" + os.path.join(self.dir.name, "users.db")
        args = list(prefix) + [BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--database-url", url,
                               "--rate-limit", "1000000", "--rate-burst", "1000000", *flags]
        environment = dict(os.environ, USER_SERVICE_JWT_SECRET=SECRET, RUST_LOG="warn", **(env or {}))
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=environment)
        for _ in range(200):
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.logs())
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not start: " + self.logs())

    def get(self, path, headers=None, timeout=10):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def status(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) // 1024  # MiB
        return 0

    def open_files(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def logs(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.dir.cleanup()


def check(name):
    def wrap(fn):
        def run():
            try:
                detail = fn()
                RESULTS.append(True)
                print(f"connections: ok: {name}: {detail}", flush=True)
            except Exception as e:  # noqa: BLE001 - every failure is reported the same way
                RESULTS.append(False)
                print(f"connections: FAIL: {name}: {e}", flush=True)
        run.__name__ = fn.__name__
        return run
    return wrap


def closed_within(sock, seconds):
    """Waits (bounded) for the peer to close `sock`; returns True if it did."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not data:
            return True
    return False


def is_open(sock):
    """True if the peer has not closed `sock` (looked at without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def keep_alive_request(port, path="/healthz"):
    """An HTTP/1.1 connection that made one request and keeps the connection open."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed before the answer")
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer {data[:40]!r}")
    return s


class H2Client:
    """A minimal HTTP/2 client over a plain socket (prior knowledge) that answers PINGs."""

    def __init__(self, port, window=None):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.closed = False
        self.terminated = False
        self.responses = 0
        self.resets = 0
        self.data = 0
        self.ended = 0

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, token=None):
        stream = self.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", f"127.0.0.1:{self.port}")]
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        self.conn.send_headers(stream, headers, end_stream=True)
        return stream

    def pump(self, seconds, until=None):
        """Reads and handles frames for up to `seconds`, or until `until()` holds or the connection closes."""
        end = time.monotonic() + seconds
        while not self.closed and time.monotonic() < end and not (until and until()):
            self.sock.settimeout(0.1)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                # Frames after the server's GOAWAY: the connection is over for this client.
                self.terminated = True
                continue
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    self.responses += 1
                elif isinstance(event, h2.events.StreamReset):
                    self.resets += 1
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.terminated = True
                elif isinstance(event, h2.events.DataReceived):
                    self.data += len(event.data)
                    # Readers that read: give the window back. A stalled one never does.
                    if event.flow_controlled_length and self.conn.local_settings.initial_window_size > 0:
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended += 1
            try:
                self.flush()
            except (ConnectionResetError, BrokenPipeError):
                self.closed = True

    def close(self):
        self.sock.close()


@check("silent connections are closed after --header-timeout")
def silent():
    server = Server("--header-timeout", "1s", "--idle-timeout", "5m")
    try:
        socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
        time.sleep(0.3)
        still = sum(1 for s in socks if is_open(s))
        if still != 50:
            raise RuntimeError(f"{50 - still} of 50 closed before the header timeout")
        closed = sum(1 for s in socks if closed_within(s, 8))
        for s in socks:
            s.close()
        if closed != 50:
            raise RuntimeError(f"{closed} of 50 silent connections closed within 8 s of a 1 s header timeout")
        if server.get("/healthz")[0] != 200:
            raise RuntimeError("not serving afterwards")
        return "50 of 50 closed (header timeout 1 s); new clients served"
    finally:
        server.stop()


@check("idle keep-alive connections are closed after --idle-timeout")
def idle():
    server = Server("--header-timeout", "30s", "--idle-timeout", "1s")
    try:
        h1 = [keep_alive_request(server.port) for _ in range(10)]
        h1_closed = sum(1 for s in h1 if closed_within(s, 8))
        h2c = H2Client(server.port)
        h2c.request("/healthz")
        h2c.pump(5, until=lambda: h2c.ended >= 1)
        if h2c.ended != 1:
            raise RuntimeError("HTTP/2 request not answered")
        # Keeps answering PINGs (h2 acknowledges them) and sends its own, as keep-alive clients do.
        end = time.monotonic() + 8
        while not (h2c.closed or h2c.terminated) and time.monotonic() < end:
            h2c.conn.ping(b"12345678")
            h2c.flush()
            h2c.pump(0.3)
        # After GOAWAY the server closes the connection (this client cannot finish the GOAWAY exchange, so the
        # server's grace for that applies).
        h2c.pump(10)
        for s in h1:
            s.close()
        h2c.close()
        if h1_closed != 10:
            raise RuntimeError(f"{h1_closed} of 10 idle HTTP/1.1 connections closed within 8 s of a 1 s idle timeout")
        if not h2c.closed:
            raise RuntimeError("an idle HTTP/2 connection answering PINGs stayed open 8 s past a 1 s idle timeout")
        return f"HTTP/1.1 10 of 10 closed; HTTP/2 (pinging) closed, GOAWAY sent: {h2c.terminated}"
    finally:
        server.stop()


@check("--max-connections holds and waiting clients are served once others close")
def cap():
    server = Server("--header-timeout", "30s", "--idle-timeout", "5m", "--max-connections", "5")
    try:
        held = [keep_alive_request(server.port) for _ in range(5)]
        waiting = socket.create_connection(("127.0.0.1", server.port))
        waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        waiting.settimeout(1.5)
        try:
            early = waiting.recv(4096)
        except socket.timeout:
            early = None
        if early is not None:
            raise RuntimeError(f"a sixth connection was served past --max-connections 5: {early[:30]!r}")
        held.pop().close()
        waiting.settimeout(10)
        answer = waiting.recv(4096)
        waiting.close()
        for s in held:
            s.close()
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the waiting client got {answer[:30]!r} after a slot freed")
        return "6th connection waited while 5 were open, served after one closed"
    finally:
        server.stop()


@check("at the open-file limit accept errors are paced and logged at most once a second")
def emfile():
    server = Server("--header-timeout", "30s", "--db-pool-size", "2",
                    prefix=["prlimit", "--nofile=64:64"])
    try:
        socks = []
        for _ in range(100):
            try:
                socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
            except OSError:
                break
        start = time.monotonic()
        time.sleep(3)
        elapsed = time.monotonic() - start
        fds = server.open_files()
        lines = server.logs().count("accept failed")
        for s in socks:
            s.close()
        status = None
        for _ in range(50):
            try:
                status = server.get("/healthz", timeout=2)[0]
                break
            except OSError:
                time.sleep(0.1)
        if lines == 0:
            raise RuntimeError(f"no accept error with {len(socks)} connections and 64 files ({fds} open)")
        if lines > elapsed + 2:
            raise RuntimeError(f"{lines} 'accept failed' lines in {elapsed:.1f} s")
        if status != 200:
            raise RuntimeError(f"not serving after the connections closed: {status}")
        return f"{len(socks)} connections, {fds} files open at limit 64: {lines} log lines in {elapsed:.1f} s; served after"
    finally:
        server.stop()


@check("a 100 KiB header block over HTTP/1.1 is answered 431")
def headers():
    server = Server()
    try:
        s = socket.create_connection(("127.0.0.1", server.port))
        s.settimeout(10)
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n"
        try:
            s.sendall(head)
        except (ConnectionResetError, BrokenPipeError):
            pass
        answer = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        status = answer.split(b"\r\n", 1)[0]
        if not status.startswith(b"HTTP/1.1 431"):
            raise RuntimeError(f"answered {status!r}")
        small = server.get("/healthz", headers={"X-Ok": "a" * (60 * 1024)})[0]
        if small != 200:
            raise RuntimeError(f"a 60 KiB header was refused with {small}")
        return "100 KiB: 431; 60 KiB: 200"
    finally:
        server.stop()


def seed(server, token, users=200):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    blob = "x" * 15000
    ids = []
    for i in range(users):
        body = json.dumps({"email": f"big{i}@example.com", "attributes": {"history": blob}})
        c.request("POST", "/v1/users", body=body,
                  headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"seeding answered {r.status}: {data[:200]!r}")
        ids.append(json.loads(data)["id"])
    c.close()
    return ids


class Sampler(threading.Thread):
    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0
        self.stop_flag = False

    def run(self):
        while not self.stop_flag:
            try:
                self.peak = max(self.peak, self.server.status("VmRSS"))
            except OSError:
                return
            time.sleep(0.05)


class Probe(threading.Thread):
    """GetUser (REST) on its own connection, one call after another, timing each."""

    def __init__(self, server, token, user_id):
        super().__init__(daemon=True)
        self.server, self.token, self.user_id = server, token, user_id
        self.times = []
        self.errors = 0
        self.stop_flag = False

    def run(self):
        c = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        while not self.stop_flag:
            start = time.monotonic()
            try:
                c.request("GET", f"/v1/users/{self.user_id}",
                          headers={"Authorization": f"Bearer {self.token}"})
                r = c.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
            if ok:
                self.times.append((time.monotonic() - start) * 1000)
            else:
                self.errors += 1
            time.sleep(0.005)

    def summary(self):
        t = sorted(self.times)
        if not t:
            return f"no answers, {self.errors} errors"
        return (f"GetUser probe {len(t)} calls: p50 {t[len(t) // 2]:.1f} ms, p99 {t[int(len(t) * 0.99)]:.1f} ms, "
                f"{self.errors} errors")


STREAMS = 200
RSS_LIMIT_MIB = 300


@check("a stalled reader holds bounded memory and is dropped after --request-timeout")
def stalled():
    flags = ["--request-timeout", "2s"]
    if not BASELINE:
        flags += ["--idle-timeout", "5m"]
    server = Server(*flags)
    try:
        token = admin_token()
        ids = seed(server, token)
        status, page = server.get("/v1/users?pageSize=1000", headers={"Authorization": f"Bearer {token}"})
        page_bytes = len(page)
        base = server.status("VmRSS")
        sampler = Sampler(server)
        sampler.start()
        probe = Probe(server, token, ids[0])
        probe.start()

        client = H2Client(server.port, window=0)
        client.pump(0.5)
        for _ in range(STREAMS):
            client.request("/v1/users?pageSize=1000", token)
        client.flush()
        start = time.monotonic()
        client.pump(12)
        h2_closed_after = time.monotonic() - start if client.closed else None

        # HTTP/1.1: a client that asks for a large answer and never reads it.
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", server.port))
        s.sendall(f"GET /v1/users?pageSize=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        time.sleep(4)
        received = 0
        h1_closed = False
        s.settimeout(2)
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    h1_closed = True
                    break
                received += len(chunk)
        except (ConnectionResetError, BrokenPipeError):
            h1_closed = True
        except socket.timeout:
            pass
        s.close()

        time.sleep(0.5)
        probe.stop_flag = True
        sampler.stop_flag = True
        probe.join()
        sampler.join()
        after = server.status("VmRSS")
        hwm = server.status("VmHWM")
        client.close()
        alive = server.proc.poll() is None
        figures = (f"page {page_bytes / 2**20:.1f} MiB x {STREAMS} streams; RSS {base} MiB before, peak {sampler.peak} "
                   f"MiB (VmHWM {hwm}), {after} MiB after; HTTP/2 connection closed after "
                   f"{'%.1f s' % h2_closed_after if h2_closed_after is not None else 'never (12 s)'}, "
                   f"{client.responses} heads, {client.resets} resets; HTTP/1.1 non-reader "
                   f"{'closed' if h1_closed else 'still open'} after 4 s having received {received} of ~{page_bytes} "
                   f"bytes; {probe.summary()}")
        if status != 200:
            raise RuntimeError(f"ListUsers answered {status}")
        if not alive:
            raise RuntimeError("the server died: " + figures)
        problems = []
        if sampler.peak - base > RSS_LIMIT_MIB:
            problems.append(f"RSS grew by {sampler.peak - base} MiB (limit {RSS_LIMIT_MIB})")
        if h2_closed_after is None:
            problems.append("the stalled HTTP/2 connection was not dropped")
        if not h1_closed:
            problems.append("the HTTP/1.1 non-reader was not dropped")
        if probe.errors:
            problems.append("the probe on another connection failed")
        if problems:
            raise RuntimeError("; ".join(problems) + ": " + figures)
        return figures
    finally:
        server.stop()


def xact_commit(database_url, name):
    out = subprocess.run(["psql", database_url, "-At", "-c",
                          f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{name}'"],
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


@check("a /readyz flood runs no database queries")
def readyz():
    url = os.environ.get("READYZ_DATABASE_URL")
    if not url:
        raise RuntimeError("READYZ_DATABASE_URL is not set")
    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    # Backends report their counts when they exit, so the count is read after the server (and its pool) stopped;
    # it includes the server's start (migrations, the first pings).
    before = xact_commit(admin, name)
    server = Server("--db-pool-size", "2", database_url=url)
    try:
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for _ in range(2000):
            c.request("GET", "/readyz")
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"/readyz answered {r.status}")
        c.close()
    finally:
        server.stop()
    delta = 0
    for _ in range(20):
        time.sleep(0.25)
        delta = xact_commit(admin, name) - before
        if delta > 0:
            break
    if delta > 200:
        raise RuntimeError(f"2000 /readyz calls: {delta} transactions on the database")
    return f"2000 /readyz calls: {delta} transactions in all, the server's start and health pings included"


CHECKS = [silent, idle, cap, emfile, headers, stalled, readyz]

if __name__ == "__main__":
    wanted = sys.argv[1:]
    for run in CHECKS:
        if not wanted or run.__name__ in wanted:
            run()
    passed = sum(RESULTS)
    print(f"{passed} passed, {len(RESULTS) - passed} failed")
    sys.exit(0 if all(RESULTS) else 1)
