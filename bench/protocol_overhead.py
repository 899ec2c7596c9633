"""Server CPU per request of GetUser and UpdateUser over gRPC and over REST, measured in one run.

The server is pinned to CPU 0 and this client to CPU 1; the server's CPU time is read from /proc/<pid>/stat around
each batch of sequential calls. Variants are interleaved (A B B A ...) over several rounds and the median is
reported with min and max. A quick check of the transcoder's cost; the full benchmark lives in bench/.

Usage: bench/protocol_overhead.py <server binary> [requests per batch] [rounds]
Needs the venv of tests/blackbox (grpcio) and the stubs it generates; run through bench/protocol_overhead.sh.
"""

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
from google.protobuf import field_mask_pb2

from users.v1 import user_service_pb2 as pb
from users.v1 import user_service_pb2_grpc as pb_grpc

TICKS = os.sysconf(os.sysconf_names["SC_CLK_TCK"])


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class AuthInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Adds the bearer token to every call."""

    def __init__(self, metadata):
        self.metadata = metadata

    def intercept_unary_unary(self, continuation, details, request):
        details = details._replace(metadata=tuple(details.metadata or ()) + self.metadata)
        return continuation(details, request)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    binary = sys.argv[1]
    per_batch = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    os.sched_setaffinity(0, {1})
    work = tempfile.mkdtemp()
    port = free_port()
    env = {**os.environ, "RUST_LOG": "warn", "USER_SERVICE_JWT_SECRET": "bench-secret-of-at-least-32-bytes-long",
           "USER_SERVICE_DATA_DIR": work}
    token = subprocess.check_output([binary, "token", "--sub", "bench", "--scope", "users.admin"], env=env,
                                    text=True).strip()
    # The rate limit is lifted: this measures the cost of a call, not the limiter's refusals.
    server = subprocess.Popen(
        ["taskset", "-c", "0", binary, "serve", "--listen", f"127.0.0.1:{port}",
         "--database-url", f"sqlite://{work}/users.db", "--sqlite-sync", "normal",
         "--rate-limit", "1000000", "--rate-burst", "1000000"],
        env=env,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        metadata = (("authorization", f"Bearer {token}"),)
        channel = grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}"), AuthInterceptor(metadata))
        stub = pb_grpc.UserServiceStub(channel)
        user = stub.CreateUser(pb.CreateUserRequest(user=pb.User(email="bench@example.com", given_name="B")))
        rest = http.client.HTTPConnection("127.0.0.1", port)

        def grpc_get():
            stub.GetUser(pb.GetUserRequest(id=user.id))

        counter = [0]

        def grpc_update():
            counter[0] += 1
            stub.UpdateUser(pb.UpdateUserRequest(
                user=pb.User(id=user.id, given_name=f"g{counter[0]}", family_name=f"f{counter[0]}"),
                update_mask=field_mask_pb2.FieldMask(paths=["given_name", "family_name"])))

        def rest_call(method, path, body=None):
            rest.request(method, path, body=body,
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            response = rest.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")

        def rest_get():
            rest_call("GET", f"/v1/users/{user.id}")

        def rest_update():
            counter[0] += 1
            rest_call("PATCH", f"/v1/users/{user.id}",
                      json.dumps({"givenName": f"g{counter[0]}", "familyName": f"f{counter[0]}"}))

        variants = {"GetUser gRPC": grpc_get, "GetUser REST": rest_get,
                    "UpdateUser gRPC": grpc_update, "UpdateUser REST": rest_update}
        for f in variants.values():  # warm-up
            for _ in range(200):
                f()
        results = {name: [] for name in variants}
        names = list(variants)
        for r in range(rounds):
            order = names if r % 2 == 0 else list(reversed(names))
            for name in order:
                before = cpu_seconds(server.pid)
                for _ in range(per_batch):
                    variants[name]()
                results[name].append((cpu_seconds(server.pid) - before) / per_batch * 1e6)
        print(f"server CPU µs per request ({rounds} rounds x {per_batch} sequential requests, median [min-max])")
        for name in names:
            v = results[name]
            print(f"  {name:16} {statistics.median(v):8.1f}  [{min(v):.1f}-{max(v):.1f}]")
        for rpc in ("GetUser", "UpdateUser"):
            ratio = statistics.median(results[f"{rpc} REST"]) / statistics.median(results[f"{rpc} gRPC"])
            print(f"  {rpc} REST/gRPC: {ratio:.2f}x")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
