"""Runs the benchmark suite and prints its results as Markdown (run through bench/run.sh, which builds first).

On a 2-core machine the server is pinned to CPU 0 and every client (the load generator, pgbench) to CPU 1. The
primary figure is the server's CPU time per request, read from /proc/<pid>/stat by the load generator around
each run; throughput and latency percentiles at a fixed rate (half the measured ceiling) are secondary.
Variants are interleaved (A B ... B A) over several rounds and reported as median [min-max].

Parts:
  suite     every RPC x protocol, plus the no-op gRPC method and no-op HTTP handler, on SQLite and PostgreSQL
  latency   p50/p99 of each variant at half its measured throughput
  pgbench   UpdateUser and GetUser at 32 connections against pgbench running the same SQL
  group     SQLite synchronous=FULL UpdateUser at 64 callers, group commit on vs off, and on vs the same load
            without an fsync per commit (synchronous=NORMAL: in WAL mode only checkpoints sync)
  store     the same store calls in-process (no transport) on SQLite
  scale     GetUser/ListUsers on a large database against the suite's database, interleaved
  signin    VerifyPassword: throughput and CPU per call (right, wrong, unknown user), the time of a wrong-password
            answer against an unknown-user answer at one caller, and GetUser's latency at a fixed rate alone
            against the same while a flood of wrong guesses keeps the hash pool full
  feed      UpdateUser at 500 and 2,000 writes/s with 0, 1 and 100 WatchUsers streams: the delay from each change's
            update_time to its arrival at every watcher (p50/p99), and the server's CPU per event per watcher
            (the CPU per update beyond the run without watchers, divided by the watchers)
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

OPS = ["get", "lookup", "list-first", "list-deep", "update", "create"]
PROTOCOLS = ["grpc", "grpc-web", "rest"]
NOOPS = [("noop-grpc", "grpc"), ("noop-http", "rest")]
SECRET = "bench-secret-of-at-least-32-bytes-long"
# The gate's per-caller rate limit is lifted: the benchmark measures the cost of a call, not refusals.
UNLIMITED = ["--rate-limit", "1000000000", "--rate-burst", "1000000000"]
FEED_RATES = [500, 2000]
FEED_WATCHERS = [0, 1, 100]
# Writes in flight at most in the feed part's open loop: enough that a commit's fsync does not hold the rate back.
FEED_CONCURRENCY = 64


def log(message):
    print(message, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.env = {**os.environ, "USER_SERVICE_JWT_SECRET": SECRET, "USER_SERVICE_DATA_DIR": self.work,
                    "RUST_LOG": "warn"}
        self.token = subprocess.check_output(
            [args.bin, "token", "--sub", "bench", "--scope", "users.admin", "--ttl", "24h"], env=self.env,
            text=True).strip()
        self.results = []
        self.servers = []

    # --- databases -------------------------------------------------------------------------------------

    def database(self, backend, name, users):
        """A migrated, seeded database; returns its URL."""
        if backend == "sqlite":
            path = os.path.join(self.work, f"{name}.db")
            url = f"sqlite://{path}"
        else:
            base = self.args.pg_url.rstrip("/")
            self.psql(base + "/postgres", f"DROP DATABASE IF EXISTS {name}")
            self.psql(base + "/postgres", f"CREATE DATABASE {name}")
            url = f"{base}/{name}"
        subprocess.run([self.args.bin, "migrate", "--database-url", url], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        started = time.monotonic()
        subprocess.run([self.args.loadgen, "seed", "--database-url", url, "--users", str(users)], check=True,
                       stdout=subprocess.DEVNULL)
        log(f"seeded {users} users into {backend}:{name} in {time.monotonic() - started:.1f} s")
        os.sync()  # as after a copy (`copy_sqlite`): the seed's writes reach the disk before anything is measured
        return url

    def copy_sqlite(self, url, name):
        source = url.removeprefix("sqlite://")
        target = os.path.join(self.work, f"{name}.db")
        shutil.copyfile(source, target)
        # The copy leaves the whole file dirty in the page cache; written back ~30 s later it would share the disk
        # with whatever is being measured then (and slow the fsyncs of `synchronous=FULL` most).
        os.sync()
        return f"sqlite://{target}"

    @staticmethod
    def psql(url, sql):
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def drop_databases(self):
        base = self.args.pg_url.rstrip("/")
        for name in [self.args.pg_database, f"{self.args.pg_database}_big"]:
            try:
                self.psql(base + "/postgres", f"DROP DATABASE IF EXISTS {name}")
            except subprocess.CalledProcessError:
                log(f"could not drop {name}")

    # --- processes -------------------------------------------------------------------------------------

    def start_server(self, url, *extra):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log_file = open(os.path.join(self.work, f"server-{port}.log"), "w")
        process = subprocess.Popen(
            ["taskset", "-c", "0", self.args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--database-url", url,
             "--db-pool-size", "32", *UNLIMITED, *extra],
            env=self.env, stdout=log_file, stderr=subprocess.STDOUT)
        target = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(target + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server on {url} did not start; see {log_file.name}")
            time.sleep(0.1)
        self.servers.append(process)
        return process, target

    def stop_server(self, process):
        process.terminate()
        process.wait(timeout=60)
        self.servers.remove(process)

    def stop_all(self):
        for process in list(self.servers):
            process.kill()
            process.wait()
        self.servers.clear()

    def amount(self):
        """The loadgen flags that say how long a run lasts."""
        if self.args.smoke:
            return ["--requests", "40", "--warmup-requests", "5"]
        return ["--duration", str(self.args.seconds)]

    def loadgen(self, target, pid, op, protocol, users, concurrency, *extra):
        command = ["taskset", "-c", "1", self.args.loadgen, "run", "--target", target, "--token", self.token,
                   "--op", op, "--protocol", protocol, "--users", str(users), "--concurrency", str(concurrency),
                   "--server-pid", str(pid), *self.amount(), *extra]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"loadgen failed ({' '.join(command[3:])}):\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def pgbench(self, url, script, clients, mode):
        amount = ["-t", "20"] if self.args.smoke else ["-T", str(self.args.seconds)]
        command = ["taskset", "-c", "1", "pgbench", "-n", "-M", mode, "-c", str(clients), "-j", "1", *amount,
                   "-D", f"users={self.args.users}", "-f", os.path.join(self.args.root, "bench/pgbench", script),
                   url]
        done = subprocess.run(command, capture_output=True, text=True)
        tps = [line for line in done.stdout.splitlines() if line.startswith("tps =")]
        failed = [line for line in done.stdout.splitlines() if line.startswith("number of failed")]
        if done.returncode != 0 or not tps or (failed and not failed[0].startswith("number of failed transactions: 0")):
            raise SystemExit(f"pgbench failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return {"throughput": float(tps[0].split()[2])}

    def record(self, part, backend, variant, result, **extra):
        entry = {"part": part, "backend": backend, "variant": variant, **result, **extra}
        self.results.append(entry)
        cpu = result.get("server_cpu_us_per_req")
        log(f"  {part:8} {backend:8} {variant:28} {result.get('throughput', 0):9.0f}/s"
            + (f"  {cpu:7.1f} us cpu/req" if cpu is not None else ""))

    # --- parts -----------------------------------------------------------------------------------------

    def rounds(self, variants):
        """Yields (round, variant) in A B ... B A order."""
        for r in range(self.args.rounds):
            for variant in (variants if r % 2 == 0 else list(reversed(variants))):
                yield r, variant

    def suite(self, backend, url):
        process, target = self.start_server(url)
        variants = [(op, protocol) for op in OPS for protocol in PROTOCOLS] + NOOPS
        for r, (op, protocol) in self.rounds(variants):
            result = self.loadgen(target, process.pid, op, protocol, self.args.users, self.args.concurrency)
            self.record("suite", backend, f"{op} {protocol}", result, round=r)
        for op, protocol in variants:
            ceiling = median(self.pick("suite", backend, f"{op} {protocol}", "throughput"))
            rate = max(10, int(ceiling / 2))
            result = self.loadgen(target, process.pid, op, protocol, self.args.users, self.args.concurrency,
                                  "--rate", str(rate))
            self.record("latency", backend, f"{op} {protocol}", result, rate=rate)
        self.stop_server(process)

    def versus_pgbench(self, url):
        process, target = self.start_server(url)
        variants = ["service update", "pgbench update prepared", "pgbench update extended",
                    "pgbench update-least prepared", "pgbench update-least-feed prepared", "service get",
                    "pgbench get prepared"]
        for r, variant in self.rounds(variants):
            who, op, *mode = variant.split()
            if who == "service":
                result = self.loadgen(target, process.pid, op, "grpc", self.args.users, 32)
            else:
                script = {"update": "update_user.sql", "update-least": "update_user_least.sql",
                          "update-least-feed": "update_user_least_feed.sql", "get": "get_user.sql"}[op]
                result = self.pgbench(url, script, 32, mode[0])
            self.record("pgbench", "postgres", variant, result, round=r)
        self.stop_server(process)

    def group_commit(self, url):
        on_url = self.copy_sqlite(url, "group-on")
        off_url = self.copy_sqlite(url, "group-off")
        nosync_url = self.copy_sqlite(url, "group-nosync")
        servers = {
            "group commit on": self.start_server(on_url, "--sqlite-sync", "full"),
            "group commit off": self.start_server(off_url, "--sqlite-sync", "full", "--sqlite-commit-batch", "1"),
            "group commit on, no fsync": self.start_server(nosync_url, "--sqlite-sync", "normal"),
        }
        for r, variant in self.rounds(list(servers)):
            process, target = servers[variant]
            result = self.loadgen(target, process.pid, "update", "grpc", self.args.users, 64)
            self.record("group", "sqlite", variant, result, round=r)
        for process, _ in servers.values():
            self.stop_server(process)

    def store(self, url):
        copy = self.copy_sqlite(url, "store")
        requests = "200" if self.args.smoke else "20000"
        for r, op in self.rounds(["get", "update"]):
            command = ["taskset", "-c", "0", self.args.loadgen, "store", "--database-url", copy, "--op", op,
                       "--users", str(self.args.users), "--requests", requests, "--concurrency", "16"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"loadgen store failed:\n{done.stderr[-3000:]}")
            self.record("store", "sqlite", f"{op} in-process", json.loads(done.stdout.strip().splitlines()[-1]),
                        round=r)

    def sign_in(self, backend, url):
        # Every seeded user gets the same password; the other parts never read it.
        subprocess.run([self.args.loadgen, "set-password", "--database-url", url], check=True)
        process, target = self.start_server(url)
        users = self.args.users
        # Each run of wrong guesses goes through its own slice of the users in turn: five failures in a row lock
        # a user out, and a refusal without a hash is not what is measured.
        wrong_runs = 3 * self.args.rounds
        span = max(1, users // wrong_runs)
        slices = iter(range(0, users, span))

        def verify_flags(op):
            return ["--first-user", str(next(slices)), "--user-span", str(span)] if op == "verify-wrong" else []

        for r, op in self.rounds(["verify-right", "verify-wrong", "verify-unknown"]):
            result = self.loadgen(target, process.pid, op, "grpc", users, self.args.concurrency, *verify_flags(op))
            self.record("signin", backend, f"{op} closed", result, round=r)
        # One caller, so no answer waits for a slot: what is left is the time of the answer itself.
        for r, op in self.rounds(["verify-wrong", "verify-unknown"]):
            result = self.loadgen(target, process.pid, op, "grpc", users, 1, *verify_flags(op))
            self.record("signin", backend, f"{op} one caller", result, round=r)
        rate = "50" if self.args.smoke else "1000"
        for r, variant in self.rounds(["get alone", "get beside a flood"]):
            flood = None
            if variant == "get beside a flood":
                seconds = "3" if self.args.smoke else str(self.args.seconds + 3)
                flood = subprocess.Popen(
                    ["taskset", "-c", "1", self.args.loadgen, "run", "--target", target, "--token", self.token,
                     "--op", "verify-wrong", "--protocol", "grpc", "--users", str(users), "--concurrency", "64",
                     "--duration", seconds, "--warmup-requests", "0", *verify_flags("verify-wrong")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                time.sleep(1.0)
            result = self.loadgen(target, process.pid, "get", "grpc", users, self.args.concurrency, "--rate", rate)
            self.record("signin", backend, variant, result, round=r, rate=int(rate))
            if flood is not None:
                _, err = flood.communicate(timeout=120)
                if flood.returncode != 0:
                    raise SystemExit(f"the sign-in flood failed:\n{err[-3000:]}")
        self.stop_server(process)

    def feed(self, backend, url):
        process, target = self.start_server(url, "--max-watchers", str(max(FEED_WATCHERS) + 16))
        rates = [r // 10 for r in FEED_RATES] if self.args.smoke else FEED_RATES
        watchers = [min(w, 3) for w in FEED_WATCHERS] if self.args.smoke else FEED_WATCHERS
        for r, (rate, count) in self.rounds([(rate, count) for rate in rates for count in watchers]):
            result = self.loadgen(target, process.pid, "update", "grpc", self.args.users, FEED_CONCURRENCY,
                                  "--rate", str(rate), "--watchers", str(count))
            self.record("feed", backend, f"{rate}/s {count} watchers", result, round=r, rate=rate, watchers=count)
        self.stop_server(process)

    def scale(self, backend, small_url, big_users):
        name = f"{self.args.pg_database}_big" if backend == "postgres" else "big"
        big_url = self.database(backend, name, big_users)
        servers = {self.args.users: self.start_server(small_url), big_users: self.start_server(big_url)}
        variants = [(op, users) for op in ["get", "list-first", "list-deep"] for users in servers]
        for r, (op, users) in self.rounds(variants):
            process, target = servers[users]
            result = self.loadgen(target, process.pid, op, "grpc", users, self.args.concurrency)
            self.record("scale", backend, f"{op} {users}", result, round=r, users=users)
        for process, _ in servers.values():
            self.stop_server(process)

    def pick(self, part, backend, variant, field):
        return [r[field] for r in self.results
                if r["part"] == part and r["backend"] == backend and r["variant"] == variant
                and r.get(field) is not None]

    def run(self):
        backends = self.args.backends.split(",")
        for backend in backends:
            log(f"{backend}: seeding {self.args.users} users")
            name = self.args.pg_database if backend == "postgres" else "main"
            url = self.database(backend, name, self.args.users)
            parts = self.args.parts.split(",")
            if "suite" in parts:
                self.suite(backend, url)
            if backend == "postgres" and "pgbench" in parts:
                self.versus_pgbench(url)
            if backend == "sqlite" and "group" in parts:
                self.group_commit(url)
            if backend == "sqlite" and "store" in parts:
                self.store(url)
            if "signin" in parts:
                self.sign_in(backend, url)
            if "feed" in parts:
                self.feed(backend, url)
            if self.args.scale_users and "scale" in parts:
                self.scale(backend, url, self.args.scale_users)
        with open(os.path.join(self.work, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1)
        print(self.report(backends))

    # --- report ----------------------------------------------------------------------------------------

    def summary(self, part, backend, variant, field):
        values = self.pick(part, backend, variant, field)
        if not values:
            return "-"
        if len(values) == 1:
            return fmt(values[0])
        return f"{fmt(median(values))} [{fmt(min(values))}-{fmt(max(values))}]"

    def ratio(self, part, backend, a, b, field):
        x, y = self.pick(part, backend, a, field), self.pick(part, backend, b, field)
        if not x or not y or median(y) == 0:
            return None
        return median(x) / median(y)

    def report(self, backends):
        a = self.args
        out = [f"Users: {a.users}; rounds: {a.rounds}; {'smoke' if a.smoke else f'{a.seconds} s'} per run; "
               f"suite concurrency {a.concurrency}; server on CPU 0, clients on CPU 1.", ""]
        parts = a.parts.split(",")
        for backend in backends if "suite" in parts else []:
            out += [f"### {backend}: server CPU per request and throughput (closed loop), latency at half that rate",
                    "",
                    "| variant | server CPU µs/req | throughput/s | p50 µs | p99 µs | (at rate/s) |",
                    "|---|---|---|---|---|---|"]
            for op, protocol in [(op, p) for op in OPS for p in PROTOCOLS] + NOOPS:
                v = f"{op} {protocol}"
                out.append(f"| {v} | {self.summary('suite', backend, v, 'server_cpu_us_per_req')} "
                           f"| {self.summary('suite', backend, v, 'throughput')} "
                           f"| {self.summary('latency', backend, v, 'p50_us')} "
                           f"| {self.summary('latency', backend, v, 'p99_us')} "
                           f"| {self.summary('latency', backend, v, 'rate')} |")
            out += ["", "| ratio (server CPU per request, medians) | value | target |", "|---|---|---|"]
            for op in ["get", "update"]:
                for protocol, target in [("rest", "≤ 1.25"), ("grpc-web", "≤ 1.10")]:
                    r = self.ratio("suite", backend, f"{op} {protocol}", f"{op} grpc", "server_cpu_us_per_req")
                    out.append(f"| {op} {protocol} / {op} grpc | {fmt_ratio(r)} | {target} |")
            r = self.ratio("suite", backend, "get grpc", "noop-grpc grpc", "server_cpu_us_per_req")
            out.append(f"| get grpc / no-op gRPC method | {fmt_ratio(r)} | ≤ 2.5 |")
            r = self.ratio("suite", backend, "noop-http rest", "noop-grpc grpc", "server_cpu_us_per_req")
            out.append(f"| no-op HTTP handler / no-op gRPC method | {fmt_ratio(r)} | |")
            out.append("")
        if "postgres" in backends and "pgbench" in parts:
            out += ["### PostgreSQL: the service against pgbench running the same SQL, 32 connections", "",
                    "| variant | throughput/s | server CPU µs/req |", "|---|---|---|"]
            for v in ["service update", "pgbench update prepared", "pgbench update extended",
                      "pgbench update-least prepared", "pgbench update-least-feed prepared", "service get",
                      "pgbench get prepared"]:
                out.append(f"| {v} | {self.summary('pgbench', 'postgres', v, 'throughput')} "
                           f"| {self.summary('pgbench', 'postgres', v, 'server_cpu_us_per_req')} |")
            out += ["", "| ratio (throughput, medians) | value | target |", "|---|---|---|"]
            for a_, b_, target in [("service update", "pgbench update-least-feed prepared", "≥ 0.8"),
                                   ("service update", "pgbench update-least prepared", ""),
                                   ("service update", "pgbench update prepared", ""),
                                   ("service update", "pgbench update extended", ""),
                                   ("service get", "pgbench get prepared", "")]:
                out.append(f"| {a_} / {b_} | {fmt_ratio(self.ratio('pgbench', 'postgres', a_, b_, 'throughput'))} "
                           f"| {target} |")
            out.append("")
        if "sqlite" in backends and "group" in parts:
            out += ["### SQLite, synchronous=FULL: UpdateUser over gRPC at 64 concurrent callers", "",
                    "| variant | throughput/s | server CPU µs/req | p50 µs | p99 µs |", "|---|---|---|---|---|"]
            for v in ["group commit on", "group commit off", "group commit on, no fsync"]:
                out.append(f"| {v} | {self.summary('group', 'sqlite', v, 'throughput')} "
                           f"| {self.summary('group', 'sqlite', v, 'server_cpu_us_per_req')} "
                           f"| {self.summary('group', 'sqlite', v, 'p50_us')} "
                           f"| {self.summary('group', 'sqlite', v, 'p99_us')} |")
            r = self.ratio("group", "sqlite", "group commit on", "group commit off", "throughput")
            nosync = self.ratio("group", "sqlite", "group commit on", "group commit on, no fsync", "throughput")
            out += ["", f"Group commit on / off (throughput): **{fmt_ratio(r)}** (target ≥ 20). "
                    f"synchronous=FULL / no fsync per commit, both grouped: **{fmt_ratio(nosync)}** (target ≥ 0.9).", ""]
        if "sqlite" in backends and "store" in parts:
            out += ["### SQLite: the same store calls in-process (no transport, no server)", "",
                    "| variant | CPU µs/op | ops/s |", "|---|---|---|"]
            for v in ["get in-process", "update in-process"]:
                out.append(f"| {v} | {self.summary('store', 'sqlite', v, 'cpu_us_per_op')} "
                           f"| {self.summary('store', 'sqlite', v, 'throughput')} |")
            out.append("")
        if "signin" in parts:
            for backend in backends:
                out += [f"### {backend}: VerifyPassword, and GetUser beside a sign-in flood", "",
                        "| variant | throughput/s | server CPU µs/call | p50 µs | p99 µs |", "|---|---|---|---|---|"]
                for v in ["verify-right closed", "verify-wrong closed", "verify-unknown closed",
                          "verify-wrong one caller", "verify-unknown one caller", "get alone", "get beside a flood"]:
                    out.append(f"| {v} | {self.summary('signin', backend, v, 'throughput')} "
                               f"| {self.summary('signin', backend, v, 'server_cpu_us_per_req')} "
                               f"| {self.summary('signin', backend, v, 'p50_us')} "
                               f"| {self.summary('signin', backend, v, 'p99_us')} |")
                same = self.ratio("signin", backend, "verify-unknown one caller", "verify-wrong one caller", "p50_us")
                flood = self.ratio("signin", backend, "get beside a flood", "get alone", "p99_us")
                out += ["", "| ratio (medians) | value | target |", "|---|---|---|",
                        f"| unknown-user p50 / wrong-password p50, one caller | {fmt_ratio(same)} | 0.90–1.10 |",
                        f"| GetUser p99 beside a flood / alone | {fmt_ratio(flood)} | ≤ 2 |", ""]
        if "feed" in parts:
            out += self.feed_report(backends)
        if a.scale_users and "scale" in parts:
            out += [f"### Scale: {a.scale_users} users against {a.users}, gRPC, interleaved", "",
                    "| backend | op | server CPU µs/req (small) | (large) | ratio | throughput ratio | target |",
                    "|---|---|---|---|---|---|---|"]
            for backend in backends:
                for op in ["get", "list-first", "list-deep"]:
                    small, large = f"{op} {a.users}", f"{op} {a.scale_users}"
                    cpu = self.ratio("scale", backend, large, small, "server_cpu_us_per_req")
                    tput = self.ratio("scale", backend, small, large, "throughput")
                    out.append(f"| {backend} | {op} | {self.summary('scale', backend, small, 'server_cpu_us_per_req')} "
                               f"| {self.summary('scale', backend, large, 'server_cpu_us_per_req')} "
                               f"| {fmt_ratio(cpu)} | {fmt_ratio(tput)} | ≤ 1.3 |")
            out.append("")
        return "\n".join(out)

    def feed_report(self, backends):
        out = []
        for backend in backends:
            out += [f"### {backend}: the change feed, UpdateUser at a fixed rate with WatchUsers streams", "",
                    "| writes/s asked | watchers | writes/s done | write p99 µs | change-to-watcher p50 µs | p99 µs "
                    "| server CPU µs/update | µs per event per watcher | client core busy |",
                    "|---|---|---|---|---|---|---|---|---|"]
            variants = sorted({(r["rate"], r["watchers"]) for r in self.results
                               if r["part"] == "feed" and r["backend"] == backend})
            for rate, count in variants:
                v = f"{rate}/s {count} watchers"
                alone = self.pick("feed", backend, f"{rate}/s 0 watchers", "server_cpu_us_per_req")
                with_watchers = self.pick("feed", backend, v, "server_cpu_us_per_req")
                per_event = "-"
                if count and alone and with_watchers:
                    per_event = fmt((median(with_watchers) - median(alone)) / count)
                out.append(f"| {rate} | {count} | {self.summary('feed', backend, v, 'throughput')} "
                           f"| {self.summary('feed', backend, v, 'p99_us')} "
                           f"| {self.summary('feed', backend, v, 'watch_p50_us') if count else '-'} "
                           f"| {self.summary('feed', backend, v, 'watch_p99_us') if count else '-'} "
                           f"| {self.summary('feed', backend, v, 'server_cpu_us_per_req')} | {per_event} "
                           f"| {fmt(median(self.pick('feed', backend, v, 'client_cpu_share')) * 100)}% |")
            out.append("")
        return out


def median(values):
    return statistics.median(values)


def fmt(value):
    if isinstance(value, float) and value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def fmt_ratio(value):
    return "-" if value is None else f"{value:.2f}×"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--loadgen", required=True)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--scale-users", type=int, default=1_000_000,
                        help="size of the second database of the scale part; 0 skips the part")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--parts", default="suite,pgbench,group,store,signin,feed,scale",
                        help="which parts to run (a rerun of one part: --parts pgbench)")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--pg-database", default="user_service_bench",
                        help="name of the PostgreSQL database the run creates and drops (and <name>_big), so that "
                             "two runs on one server keep apart")
    parser.add_argument("--work", default="target/bench")
    parser.add_argument("--smoke", action="store_true", help="a few requests per run: checks the harness works")
    args = parser.parse_args()
    args.root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if args.smoke:
        args.users, args.scale_users, args.rounds = 300, 600, 1
    os.chdir(args.root)
    os.environ["RUST_BACKTRACE"] = "0"

    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.stop_all()
        if "postgres" in args.backends:
            bench.drop_databases()


if __name__ == "__main__":
    main()
