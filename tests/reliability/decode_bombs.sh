#!/usr/bin/env bash
# Decode-bomb check: requests whose repeated fields hold millions of tiny items (a 4 MB BatchUpdateUsers of
# two million empty items over gRPC and gRPC-Web, a 4 MB REST body of 1.3 million `{}`), several at once,
# against the real binary. Each must be refused with INVALID_ARGUMENT while its bytes are counted, so the
# server's peak RSS stays within a few times the bytes in flight (not gigabytes), and a GetUser beside the
# attack keeps being answered. Prints the peak RSS and the probe's latencies.
# Usage: tests/reliability/decode_bombs.sh   (USER_SERVICE_BIN defaults to target/debug/user-service)
name=decode_bombs
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

port="$(free_port)"
export USER_SERVICE_JWT_SECRET="decode-bombs-check-secret-of-32-bytes-or-more"
token="$("$bin" token --sub ops --scope users.admin)"
start_server "$port" --database-url "sqlite://$work/users.db" --rate-limit 100000 --rate-burst 100000

python3 - "$port" "$token" "$server" "$work" <<'PY' || fail "see above"
import http.client, json, struct, subprocess, sys, threading, time

port, token, pid, work = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
auth = {"authorization": "Bearer " + token}

def rss_kib(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field}")

def request(method, path, body, headers):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, body=body, headers={**auth, **headers})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict(r.getheaders()), data

conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
conn.request("POST", "/v1/users", body=json.dumps({"email": "probe@example.com"}),
             headers={**auth, "content-type": "application/json"})
user_id = json.loads(conn.getresponse().read())["id"]

items = 2_000_000
message = b"\x0a\x00" * items
frame = b"\x00" + struct.pack(">I", len(message)) + message
open(f"{work}/grpc.bin", "wb").write(frame)
rest_body = b'{"requests":[' + b",".join([b"{}"] * 1_300_000) + b"]}"
base_rss = rss_kib("VmRSS")

failures = []
def grpc_bomb():
    out = subprocess.run(
        ["curl", "-s", "-m", "60", "--http2-prior-knowledge", "-o", "/dev/null", "-D", "-",
         "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", f"authorization: Bearer {token}",
         "--data-binary", f"@{work}/grpc.bin", f"http://127.0.0.1:{port}/users.v1.UserService/BatchUpdateUsers"],
        capture_output=True, text=True).stdout
    if "grpc-status: 3" not in out:
        failures.append("gRPC bomb: " + out[:300])

def web_bomb():
    status, headers, data = request("POST", "/users.v1.UserService/BatchUpdateUsers", frame,
                                    {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"})
    if status != 200 or headers.get("grpc-status") != "3":
        failures.append(f"gRPC-Web bomb: {status} {headers.get('grpc-status')} {data[:200]!r}")

def rest_bomb():
    status, _, data = request("POST", "/v1/users:batchUpdate", rest_body, {"content-type": "application/json"})
    if status != 400 or b"at most 1000 are allowed" not in data:
        failures.append(f"REST bomb: {status} {data[:200]!r}")

latencies = []
stop = threading.Event()
def probe():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        started = time.monotonic()
        c.request("GET", f"/v1/users/{user_id}", headers=auth)
        r = c.getresponse(); r.read()
        if r.status != 200:
            failures.append(f"probe GetUser answered {r.status}")
        latencies.append(time.monotonic() - started)
        time.sleep(0.005)

prober = threading.Thread(target=probe); prober.start()
time.sleep(0.3)
idle = sorted(latencies)
for round_ in range(2):
    bombs = [threading.Thread(target=f) for f in (grpc_bomb, grpc_bomb, web_bomb, web_bomb, rest_bomb, rest_bomb)]
    for b in bombs: b.start()
    for b in bombs: b.join()
stop.set(); prober.join()

peak = rss_kib("VmHWM")
def p(xs, q): return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000 if xs else float("nan")
busy = sorted(latencies[len(idle):])
print(f"decode_bombs: 12 bombs of 4 MB (6 at a time); RSS before {base_rss // 1024} MiB, peak {peak // 1024} MiB;"
      f" GetUser probe p50 {p(busy, .5):.1f} ms, p99 {p(busy, .99):.1f} ms ({len(busy)} calls)")
# Six 4 MB bodies in flight, each held a few times over while it is read, checked and refused.
limit_mib = 6 * 4 * 8
if (peak - base_rss) // 1024 > limit_mib:
    failures.append(f"peak RSS grew by {(peak - base_rss) // 1024} MiB, more than {limit_mib} MiB")
if failures:
    print("\n".join(failures))
    sys.exit(1)
PY
echo "decode_bombs: refused every bomb within bounded memory"
echo "1 passed, 0 failed"
