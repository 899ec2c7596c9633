#!/usr/bin/env python3
"""Black-box checks of a running user-service through real third-party clients.

- gRPC with grpcio (the official Python client) and stubs generated from proto/,
- gRPC-Web with sonora (binary framing) plus hand-framed `application/grpc-web` and `application/grpc-web-text`
  requests sent with requests,
- REST/JSON with requests.

Prints one line per check (`PASS name` / `FAIL name: why`) and ends with `N passed, M failed` on its own line.
Exits 1 if any check failed. The generated stubs must be importable (run.sh puts their folder on PYTHONPATH).
"""

import argparse
import base64
import contextlib
import datetime
import os
import struct
import sys
import traceback
import uuid

import grpc
import requests
import sonora.client
import urllib3
from google.protobuf import descriptor_pb2, field_mask_pb2, json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from users.v1 import user_service_pb2 as pb
from users.v1 import user_service_pb2_grpc as pb_grpc

SERVICE = "users.v1.UserService"
TIMEOUT = 10.0  # seconds, for every single call
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"  # well-formed UUID that no user has
PASSWORD = "S3cure!pass"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
PARTS = ("grpc", "grpc-web", "rest")


# --- recording -------------------------------------------------------------------------------------------------


class CheckFailed(Exception):
    """A check's expectation did not hold."""


class Recorder:
    """Counts checks; `with rec.check(name):` passes unless its block raises."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    @contextlib.contextmanager
    def check(self, name):
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - every error is a failed check, reported and counted
            self.failed += 1
            if isinstance(exc, (CheckFailed, grpc.RpcError, requests.RequestException)):
                why = describe(exc)
            else:
                why = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            print(f"FAIL {name}: {why}", flush=True)
        else:
            self.passed += 1
            print(f"PASS {name}", flush=True)

    @contextlib.contextmanager
    def section(self, name):
        """Runs a protocol's checks; an error outside any check (no connection, ...) counts as one failure."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001
            self.failed += 1
            print(f"FAIL {name}: section aborted: {describe(exc) or type(exc).__name__}", flush=True)


def describe(exc):
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"unexpected RPC error {exc.code().name}: {exc.details()}"
    return str(exc)


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def expect_eq(actual, expected, what):
    if actual != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, got {actual!r}")


def expect_rpc_error(code, fn, *args, **kwargs):
    """Calls fn, expects a grpc.RpcError with `code`, returns the error."""
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as exc:
        if exc.code() != code:
            raise CheckFailed(f"expected {code.name}, got {exc.code().name}: {exc.details()}") from None
        return exc
    raise CheckFailed(f"expected {code.name}, the call succeeded")


def require(*values):
    """Fails the current check when an earlier check that produced one of `values` failed."""
    if any(v is None for v in values):
        raise CheckFailed("not run: an earlier check it depends on failed")


# --- shared helpers --------------------------------------------------------------------------------------------


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_user(prefix):
    name = unique(prefix)
    return pb.User(
        email=f"{name}@example.com",
        username=name,
        given_name="Ana",
        password=PASSWORD,
        labels={"team": "core"},
    )


def bad_request_fields(status):
    """The field paths of every google.rpc.BadRequest in a google.rpc.Status."""
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


def error_infos(status):
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    return infos


def b64decode_lenient(text):
    """Decodes base64 that may lack padding (binary metadata) or be several padded chunks in a row."""
    text = "".join(text.split())
    out = bytearray()
    for start in range(0, len(text), 4):
        quantum = text[start : start + 4]
        out += base64.b64decode(quantum + "=" * (-len(quantum) % 4))
    return bytes(out)


def check_user_shape(user):
    try:
        parsed = uuid.UUID(user.id)
    except ValueError:
        raise CheckFailed(f"id {user.id!r} is not a UUID") from None
    expect_eq(user.id, str(parsed), "id (lower-case hyphenated)")
    expect_eq(parsed.version, 7, "UUID version of a server-assigned id")
    expect_eq(user.revision, 1, "revision of a new user")
    expect_eq(user.state, pb.User.ACTIVE, "state of a new user")
    expect_eq(user.password, "", "password in a response")
    expect(user.etag, "etag is empty")
    expect(user.HasField("create_time"), "create_time is unset")


# --- gRPC (grpcio) ---------------------------------------------------------------------------------------------


def grpc_checks(rec, target, metadata):
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    stub = pb_grpc.UserServiceStub(channel)
    kw = {"timeout": TIMEOUT, "metadata": metadata}

    with rec.check("grpc health Check('') and Check('users.v1.UserService') are SERVING"):
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            expect_eq(resp.status, health_pb2.HealthCheckResponse.SERVING, f"health of {service!r}")

    with rec.check("grpc reflection v1 lists users.v1.UserService and serves its descriptor"):
        reflection_checks(channel)

    created = fetched = updated = None
    with rec.check("grpc CreateUser"):
        user = new_user("grpc")
        created = stub.CreateUser(pb.CreateUserRequest(user=user), **kw)
        check_user_shape(created)
        expect_eq(created.email, user.email, "email")
        expect_eq(created.username, user.username, "username")
        expect_eq(dict(created.labels), {"team": "core"}, "labels")
        expect_eq(created.email_verified, False, "email_verified")

    with rec.check("grpc GetUser returns what CreateUser returned"):
        require(created)
        fetched = stub.GetUser(pb.GetUserRequest(id=created.id), **kw)
        expect_eq(fetched, created, "user")

    with rec.check("grpc GetUser of an unknown id is NOT_FOUND"):
        expect_rpc_error(grpc.StatusCode.NOT_FOUND, stub.GetUser, pb.GetUserRequest(id=UNKNOWN_ID), **kw)

    with rec.check("grpc GetUser of a malformed id is INVALID_ARGUMENT"):
        expect_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, stub.GetUser, pb.GetUserRequest(id="not-a-uuid"), **kw)

    with rec.check("grpc UpdateUser with an explicit 2-path mask changes exactly those fields"):
        require(created)
        change = pb.User(
            id=created.id,
            family_name="Ruiz",
            labels={"tier": "gold"},
            given_name="NotInMask",  # populated but not in the mask: must not change
            etag=created.etag,
        )
        mask = field_mask_pb2.FieldMask(paths=["family_name", "labels.tier"])
        updated = stub.UpdateUser(pb.UpdateUserRequest(user=change, update_mask=mask), **kw)
        expect_eq(updated.family_name, "Ruiz", "family_name")
        expect_eq(updated.given_name, created.given_name, "given_name (not in the mask)")
        expect_eq(dict(updated.labels), {"team": "core", "tier": "gold"}, "labels")
        expect_eq(updated.revision, 2, "revision")
        expect(updated.etag and updated.etag != created.etag, "etag did not change")

    with rec.check("grpc UpdateUser with a stale etag is ABORTED and changes nothing"):
        require(created, updated)
        stale = pb.User(id=created.id, description="must not land", etag=created.etag)
        mask = field_mask_pb2.FieldMask(paths=["description"])
        expect_rpc_error(
            grpc.StatusCode.ABORTED, stub.UpdateUser, pb.UpdateUserRequest(user=stale, update_mask=mask), **kw
        )
        expect_eq(stub.GetUser(pb.GetUserRequest(id=created.id), **kw), updated, "user after the refused update")

    with rec.check("grpc invalid phone_number is INVALID_ARGUMENT with BadRequest(user.phone_number)"):
        require(created)
        bad = pb.User(id=created.id, phone_number="12")
        mask = field_mask_pb2.FieldMask(paths=["phone_number"])
        err = expect_rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT, stub.UpdateUser, pb.UpdateUserRequest(user=bad, update_mask=mask), **kw
        )
        status = rpc_status.from_call(err)
        expect(status is not None, "no grpc-status-details-bin trailer")
        fields = bad_request_fields(status)
        expect("user.phone_number" in fields, f"BadRequest field violations {fields} lack user.phone_number")

    with rec.check("grpc ErrorInfo (domain users.v1, UPPER_SNAKE_CASE reason) on INVALID_ARGUMENT"):
        require(created)
        bad = pb.User(id=created.id, phone_number="12")
        mask = field_mask_pb2.FieldMask(paths=["phone_number"])
        err = expect_rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.UpdateUser,
            pb.UpdateUserRequest(user=bad, update_mask=mask),
            **kw,
        )
        infos = error_infos(rpc_status.from_call(err) or status_pb2.Status())
        expect(infos, "no google.rpc.ErrorInfo detail")
        expect_eq(infos[0].domain, "users.v1", "ErrorInfo.domain")
        reason = infos[0].reason
        expect(reason and reason == reason.upper() and " " not in reason, f"reason {reason!r} is not UPPER_SNAKE_CASE")

    with rec.check("grpc ListUsers includes the created user"):
        require(created)
        resp = stub.ListUsers(pb.ListUsersRequest(page_size=1000), **kw)
        expect(created.id in [u.id for u in resp.users], "created user not listed")

    with rec.check("grpc ListUserRevisions lists revisions 2, 1 with the changed paths"):
        require(created, updated)
        resp = stub.ListUserRevisions(pb.ListUserRevisionsRequest(id=created.id), **kw)
        expect_eq([r.revision for r in resp.revisions], [2, 1], "revisions (newest first)")
        expect_eq(sorted(resp.revisions[0].update_mask.paths), ["family_name", "labels.tier"], "paths of revision 2")

    deleted = None
    with rec.check("grpc DeleteUser soft-deletes (state DELETED, purge_time = delete_time + 30 days)"):
        require(created)
        deleted = stub.DeleteUser(pb.DeleteUserRequest(id=created.id), **kw)
        expect_eq(deleted.state, pb.User.DELETED, "state")
        expect(deleted.HasField("delete_time") and deleted.HasField("purge_time"), "delete_time/purge_time unset")
        gap = deleted.purge_time.ToDatetime() - deleted.delete_time.ToDatetime()
        expect_eq(gap, datetime.timedelta(days=30), "purge_time - delete_time")
        again = stub.GetUser(pb.GetUserRequest(id=created.id), **kw)
        expect_eq(again.state, pb.User.DELETED, "state of GetUser after delete")

    with rec.check("grpc UndeleteUser restores ACTIVE; undeleting again is FAILED_PRECONDITION"):
        require(deleted)
        restored = stub.UndeleteUser(pb.UndeleteUserRequest(id=created.id), **kw)
        expect_eq(restored.state, pb.User.ACTIVE, "state")
        expect(not restored.HasField("delete_time"), "delete_time still set")
        expect_rpc_error(
            grpc.StatusCode.FAILED_PRECONDITION, stub.UndeleteUser, pb.UndeleteUserRequest(id=created.id), **kw
        )

    channel.close()


def reflection_checks(channel):
    """Server reflection v1. grpcio-reflection only ships v1alpha messages; v1 has the same wire format."""
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    messages = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]
    listed, services = None, []
    for resp in info(iter(messages), timeout=TIMEOUT):
        expect(not resp.HasField("error_response"), f"reflection error: {resp.error_response}")
        if resp.HasField("list_services_response"):
            listed = [s.name for s in resp.list_services_response.service]
        if resp.HasField("file_descriptor_response"):
            for raw in resp.file_descriptor_response.file_descriptor_proto:
                fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
                services += [f"{fd.package}.{s.name}" for s in fd.service]
    expect(listed is not None and SERVICE in listed, f"listed services: {listed}")
    expect(SERVICE in services, f"file_containing_symbol did not return {SERVICE} (got {services})")


# --- gRPC-Web --------------------------------------------------------------------------------------------------


class _RecordingPool(urllib3.PoolManager):
    """urllib3 pool that keeps the last response, so each sonora call's wire format can be checked."""

    last = None

    def request(self, *args, **kwargs):
        self.last = super().request(*args, **kwargs)
        return self.last


class SonoraChannel:
    """sonora's WebChannel, adapted and made strict.

    Stubs from current grpcio-tools pass `_registered_method`, which sonora does not take. sonora also accepts any
    answer whose body it can split into frames, so a plain gRPC answer (content-type application/grpc, status in
    headers) would pass unnoticed: every call here also checks that the answer really is gRPC-Web (content-type,
    and a trailer frame after a message). Relies on sonora 0.2.3's `WebChannel._session` (pinned version).
    """

    def __init__(self, url):
        self._channel = sonora.client.insecure_web_channel(url)
        self._pool = self._channel._session = _RecordingPool()

    def unary_unary(self, path, request_serializer=None, response_deserializer=None, **_ignored):
        inner = self._channel.unary_unary(path, request_serializer, response_deserializer)

        def call(request, timeout=None, metadata=None):
            self._pool.last = None
            try:
                return inner(request, timeout=timeout, metadata=metadata)
            finally:
                self._check_wire_format(path)

        return call

    def unary_stream(self, path, request_serializer=None, response_deserializer=None, **_ignored):
        # The stub builds a callable for every method, WatchUsers (server streaming) included; the checks here
        # call only unary methods (the feed's gRPC-Web streaming has its own tests in tests/it/feed.rs).
        return self._channel.unary_stream(path, request_serializer, response_deserializer)

    def _check_wire_format(self, path):
        resp = self._pool.last
        expect(resp is not None, f"{path}: no HTTP response")
        ctype = resp.headers.get("content-type", "")
        expect(ctype.startswith("application/grpc-web"), f"{path}: response content-type {ctype!r} is not gRPC-Web")
        frames = split_frames(resp.data)
        if any(not is_trailer for is_trailer, _ in frames):
            expect(frames[-1][0], f"{path}: a message frame without a trailer frame after it")
        elif not frames:
            expect("grpc-status" in resp.headers, f"{path}: empty body and no grpc-status header")


def split_frames(payload):
    """gRPC-Web frames of a body as [(is_trailer, data)]."""
    frames, pos = [], 0
    while pos < len(payload):
        expect(len(payload) - pos >= 5, "truncated gRPC-Web frame header")
        flags, length = struct.unpack(">BI", payload[pos : pos + 5])
        data = payload[pos + 5 : pos + 5 + length]
        expect_eq(len(data), length, "gRPC-Web frame length")
        frames.append((bool(flags & 0x80), data))
        pos += 5 + length
    return frames


def grpc_web_raw(base_url, method, request, metadata, text):
    """One unary gRPC-Web call framed by hand. Returns (grpc_status, grpc_message, trailers, message_bytes)."""
    frame = struct.pack(">BI", 0, len(request)) + request
    content_type = "application/grpc-web-text" if text else "application/grpc-web"
    headers = {"content-type": content_type, "accept": content_type, "x-grpc-web": "1"}
    headers.update(dict(metadata))
    body = base64.b64encode(frame) if text else frame
    resp = requests.post(f"{base_url}/{SERVICE}/{method}", data=body, headers=headers, timeout=TIMEOUT)
    expect_eq(resp.status_code, 200, f"HTTP status of {method}")
    got_type = resp.headers.get("content-type", "")
    expect(got_type.startswith(content_type), f"response content-type {got_type!r}, wanted {content_type}")
    payload = b64decode_lenient(resp.content.decode("ascii")) if text else resp.content

    message, trailers = None, {}
    for is_trailer, data in split_frames(payload):
        if is_trailer:
            for line in data.decode("ascii").split("\r\n"):
                if line.strip():
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            expect(message is None, "more than one message in a unary response")
            message = data
    # A trailers-only response carries the status in the HTTP headers instead.
    for key in ("grpc-status", "grpc-message", "grpc-status-details-bin"):
        if key not in trailers and key in resp.headers:
            trailers[key] = resp.headers[key]
    expect("grpc-status" in trailers, "no grpc-status in trailers or headers")
    return int(trailers["grpc-status"]), trailers.get("grpc-message", ""), trailers, message


def grpc_web_checks(rec, target, base_url, metadata):
    grpc_stub = pb_grpc.UserServiceStub(grpc.insecure_channel(target))
    web_stub = pb_grpc.UserServiceStub(SonoraChannel(base_url))
    kw = {"timeout": TIMEOUT, "metadata": metadata}

    created = None
    with rec.check("grpc-web (sonora) CreateUser"):
        created = web_stub.CreateUser(pb.CreateUserRequest(user=new_user("web")), **kw)
        check_user_shape(created)

    with rec.check("grpc-web (sonora) GetUser equals grpcio GetUser"):
        require(created)
        via_web = web_stub.GetUser(pb.GetUserRequest(id=created.id), **kw)
        via_grpc = grpc_stub.GetUser(pb.GetUserRequest(id=created.id), **kw)
        expect_eq(via_web, via_grpc, "user over gRPC-Web vs gRPC")
        expect_eq(via_web, created, "user vs CreateUser's answer")

    updated = None
    with rec.check("grpc-web (sonora) UpdateUser with a mask; grpcio reads the same user"):
        require(created)
        change = pb.User(id=created.id, family_name="Web", description="set over grpc-web", etag=created.etag)
        mask = field_mask_pb2.FieldMask(paths=["family_name", "description"])
        updated = web_stub.UpdateUser(pb.UpdateUserRequest(user=change, update_mask=mask), **kw)
        expect_eq((updated.family_name, updated.description), ("Web", "set over grpc-web"), "changed fields")
        expect_eq(updated.revision, 2, "revision")
        expect_eq(grpc_stub.GetUser(pb.GetUserRequest(id=created.id), **kw), updated, "user read over gRPC")

    with rec.check("grpc-web (sonora) unknown id is NOT_FOUND, as over grpcio"):
        web_err = expect_rpc_error(grpc.StatusCode.NOT_FOUND, web_stub.GetUser, pb.GetUserRequest(id=UNKNOWN_ID), **kw)
        grpc_err = expect_rpc_error(
            grpc.StatusCode.NOT_FOUND, grpc_stub.GetUser, pb.GetUserRequest(id=UNKNOWN_ID), **kw
        )
        expect_eq(web_err.details(), grpc_err.details(), "status message over gRPC-Web vs gRPC")

    with rec.check("grpc-web (sonora) stale etag is ABORTED, as over grpcio"):
        require(created, updated)
        stale = pb.UpdateUserRequest(
            user=pb.User(id=created.id, description="stale", etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
        expect_rpc_error(grpc.StatusCode.ABORTED, web_stub.UpdateUser, stale, **kw)
        expect_rpc_error(grpc.StatusCode.ABORTED, grpc_stub.UpdateUser, stale, **kw)

    for text in (False, True):
        kind = "application/grpc-web-text" if text else "application/grpc-web"
        with rec.check(f"grpc-web raw {kind} GetUser equals grpcio GetUser"):
            require(created, updated)
            request = pb.GetUserRequest(id=created.id).SerializeToString()
            code, message, _, body = grpc_web_raw(base_url, "GetUser", request, metadata, text)
            expect_eq(code, 0, f"grpc-status (message {message!r})")
            expect(body is not None, "no message frame")
            expect_eq(pb.User.FromString(body), updated, "user")

        with rec.check(f"grpc-web raw {kind} invalid phone_number: INVALID_ARGUMENT with BadRequest details"):
            require(created)
            request = pb.UpdateUserRequest(
                user=pb.User(id=created.id, phone_number="12"),
                update_mask=field_mask_pb2.FieldMask(paths=["phone_number"]),
            ).SerializeToString()
            code, _, trailers, _ = grpc_web_raw(base_url, "UpdateUser", request, metadata, text)
            expect_eq(code, grpc.StatusCode.INVALID_ARGUMENT.value[0], "grpc-status")
            raw = trailers.get("grpc-status-details-bin")
            expect(raw, "no grpc-status-details-bin trailer")
            fields = bad_request_fields(status_pb2.Status.FromString(b64decode_lenient(raw)))
            expect("user.phone_number" in fields, f"BadRequest field violations {fields} lack user.phone_number")


# --- REST ------------------------------------------------------------------------------------------------------


def rest_json(resp, status):
    """Checks the HTTP status and that the body is JSON; returns the body."""
    ctype = resp.headers.get("content-type", "")
    if resp.status_code != status or not ctype.startswith("application/json"):
        extra = f", grpc-status {resp.headers['grpc-status']}" if "grpc-status" in resp.headers else ""
        raise CheckFailed(
            f"{resp.request.method} {resp.request.path_url}: expected HTTP {status} application/json, got "
            f"{resp.status_code} {ctype or 'no content-type'}{extra}: {resp.text[:300]!r}"
        )
    return resp.json()


def rest_error(resp, http, status, fields=()):
    """Checks the Google-style error body; returns its `error` object."""
    body = rest_json(resp, http)
    err = body.get("error")
    expect(isinstance(err, dict), f"no `error` object in {body}")
    expect_eq(err.get("code"), http, "error.code")
    expect_eq(err.get("status"), status, "error.status")
    expect(isinstance(err.get("message"), str), "error.message is not a string")
    if fields:
        violations = []
        for detail in err.get("details", []):
            if detail.get("@type") == BAD_REQUEST_TYPE:
                violations += [v.get("field") for v in detail.get("fieldViolations", [])]
        missing = [f for f in fields if f not in violations]
        expect(not missing, f"BadRequest fieldViolations {violations} lack {missing}")
    return err


def rest_user(resp, status=200):
    body = rest_json(resp, status)
    expect(resp.headers.get("ETag"), "no ETag header")
    expect(not body.get("password"), "a password value is returned")
    return body


def rest_checks(rec, target, base_url, headers):
    http = requests.Session()
    http.headers.update(headers)
    users = f"{base_url}/v1/users"
    grpc_stub = pb_grpc.UserServiceStub(grpc.insecure_channel(target))
    grpc_kw = {"timeout": TIMEOUT, "metadata": tuple((k.lower(), v) for k, v in headers.items())}

    created = created_etag = http_etag = None
    name = unique("rest")
    with rec.check("rest POST /v1/users"):
        body = {
            "email": f"{name}@example.com",
            "username": name,
            "givenName": "Ana",
            "password": PASSWORD,
            "labels": {"team": "core"},
        }
        created = rest_user(http.post(users, json=body, timeout=TIMEOUT))
        expect_eq(created.get("revision"), "1", "revision (int64 as a JSON string)")
        expect_eq(created.get("state"), "ACTIVE", "state")
        expect_eq(created.get("givenName"), "Ana", "givenName")
        datetime.datetime.fromisoformat(created["createTime"])  # RFC 3339 (3.11 takes "Z" and 9 digits)
        created_etag = created["etag"]

    with rec.check("rest responses leave out the input-only `password` key"):
        require(created)
        if "password" in created:
            raise CheckFailed(f"`password` key present in the response (value {created['password']!r})")

    with rec.check("rest GET /v1/users/{id} equals the POST answer and grpcio GetUser"):
        require(created)
        resp = http.get(f"{users}/{created['id']}", timeout=TIMEOUT)
        fetched = rest_user(resp)
        expect_eq(fetched, created, "user")
        via_grpc = grpc_stub.GetUser(pb.GetUserRequest(id=created["id"]), **grpc_kw)
        expect_eq(json_format.ParseDict(fetched, pb.User()), via_grpc, "REST JSON vs gRPC user")
        http_etag = resp.headers["ETag"]

    patched = None
    with rec.check("rest PATCH two fields without updateMask changes exactly those"):
        require(created)
        resp = http.patch(
            f"{users}/{created['id']}", json={"familyName": "Ruiz", "description": "via rest"}, timeout=TIMEOUT
        )
        patched = rest_user(resp)
        expect_eq((patched.get("familyName"), patched.get("description")), ("Ruiz", "via rest"), "changed fields")
        expect_eq(patched.get("givenName"), "Ana", "givenName (not sent)")
        expect_eq(patched.get("labels"), {"team": "core"}, "labels (not sent)")
        expect_eq(patched.get("revision"), "2", "revision")
        expect(patched["etag"] != created_etag, "etag did not change")

    with rec.check('rest PATCH {"description": null} clears only description'):
        require(patched)
        cleared = rest_user(http.patch(f"{users}/{created['id']}", json={"description": None}, timeout=TIMEOUT))
        expect_eq(cleared.get("description", ""), "", "description")
        expect_eq(cleared.get("familyName"), "Ruiz", "familyName (not sent)")
        expect_eq(cleared.get("revision"), "3", "revision")

    with rec.check("rest PATCH with a stale If-Match is 409 ABORTED"):
        require(created, http_etag)
        resp = http.patch(
            f"{users}/{created['id']}",
            json={"description": "must not land"},
            headers={"If-Match": http_etag},
            timeout=TIMEOUT,
        )
        rest_error(resp, 409, "ABORTED")
        after = rest_user(http.get(f"{users}/{created['id']}", timeout=TIMEOUT))
        expect_eq(after.get("description", ""), "", "description after the refused update")

    with rec.check("rest PATCH with the current If-Match succeeds"):
        require(created)
        current = http.get(f"{users}/{created['id']}", timeout=TIMEOUT)
        rest_user(current)
        resp = http.patch(
            f"{users}/{created['id']}",
            json={"description": "with etag"},
            headers={"If-Match": current.headers["ETag"]},
            timeout=TIMEOUT,
        )
        expect_eq(rest_user(resp).get("description"), "with etag", "description")

    with rec.check("rest PUT replaces every writable field"):
        require(created)
        body = {"email": created["email"], "givenName": "Only"}
        replaced = rest_user(http.put(f"{users}/{created['id']}", json=body, timeout=TIMEOUT))
        expect_eq(replaced.get("givenName"), "Only", "givenName")
        expect_eq(replaced.get("familyName", ""), "", "familyName (not sent: reset)")
        expect_eq(replaced.get("username", ""), "", "username (not sent: reset)")
        expect_eq(replaced.get("labels", {}), {}, "labels (not sent: reset)")
        expect_eq(replaced.get("id"), created["id"], "id")
        expect_eq(replaced.get("createTime"), created["createTime"], "createTime (output only)")

    with rec.check("rest validation error: 400 INVALID_ARGUMENT with every BadRequest fieldViolation"):
        body = {"email": "not-an-email", "phoneNumber": "12", "regionCode": "XX"}
        rest_error(
            http.post(users, json=body, timeout=TIMEOUT),
            400,
            "INVALID_ARGUMENT",
            fields=("user.email", "user.phone_number", "user.region_code"),
        )

    with rec.check("rest PATCH invalid phoneNumber: 400 with BadRequest(user.phone_number)"):
        require(created)
        resp = http.patch(f"{users}/{created['id']}", json={"phoneNumber": "12"}, timeout=TIMEOUT)
        rest_error(resp, 400, "INVALID_ARGUMENT", fields=("user.phone_number",))

    with rec.check("rest unknown JSON field is 400 naming it"):
        resp = http.post(users, json={"email": f"{unique('x')}@example.com", "bogusField": 1}, timeout=TIMEOUT)
        err = rest_error(resp, 400, "INVALID_ARGUMENT")
        expect("bogusField" in str(err), f"error does not name bogusField: {err}")

    with rec.check("rest malformed JSON is 400"):
        resp = http.post(users, data=b"{not json", headers={"content-type": "application/json"}, timeout=TIMEOUT)
        rest_error(resp, 400, "INVALID_ARGUMENT")

    with rec.check("rest GET of an unknown id is 404 NOT_FOUND"):
        rest_error(http.get(f"{users}/{UNKNOWN_ID}", timeout=TIMEOUT), 404, "NOT_FOUND")

    with rec.check("rest answers of every RPC parse with protobuf's strict proto3 JSON parser"):
        # json_format.Parse refuses unknown keys and FieldMask paths that are not lowerCamelCase, as
        # @bufbuild/protobuf and Go's protojson do: every answer must be canonical proto3 JSON.
        strict = lambda resp, message: json_format.Parse(resp.text, message, ignore_unknown_fields=False)
        name = unique("strict")
        body = {"email": f"{name}@example.com", "labels": {"team_a": "x", "tier": "gold"}}
        user = strict(http.post(users, json=body, timeout=TIMEOUT), pb.User())
        user_url = f"{users}/{user.id}"
        patch = {"familyName": "Ruiz", "phoneNumber": "+573001234567", "labels": {"tier": "silver"},
                 "attributes": {"some_key": 1, "camelKey": {"nested": True}}}
        strict(http.patch(f"{user_url}?updateMask=familyName,phone_number,labels.tier,attributes",
                          json=patch, timeout=TIMEOUT), pb.User())
        strict(http.get(user_url, timeout=TIMEOUT), pb.User())
        strict(http.get(f"{users}:lookup", params={"email": body["email"]}, timeout=TIMEOUT), pb.User())
        strict(http.get(users, params={"pageSize": 2}, timeout=TIMEOUT), pb.ListUsersResponse())
        batch = {"requests": [{"user": {"id": user.id, "description": "batch"}, "updateMask": "description"}]}
        strict(http.post(f"{users}:batchUpdate", json=batch, timeout=TIMEOUT), pb.BatchUpdateUsersResponse())
        for verb in ("disable", "enable"):
            strict(http.post(f"{user_url}:{verb}", json={}, timeout=TIMEOUT), pb.User())
        strict(http.delete(user_url, timeout=TIMEOUT), pb.User())
        strict(http.post(f"{user_url}:undelete", json={}, timeout=TIMEOUT), pb.User())
        revisions = strict(http.get(f"{user_url}/revisions", timeout=TIMEOUT), pb.ListUserRevisionsResponse())
        masks = [list(r.update_mask.paths) for r in revisions.revisions]
        # Field names and lower snake_case keys read back exactly; a camelCase key reads back in snake form
        # (README: how mask paths are written).
        expect(["email", "labels.team_a", "labels.tier"] in masks, f"the create's paths read back: {masks}")
        expect(["family_name", "phone_number", "labels.tier", "attributes.camel_key", "attributes.some_key"]
               in masks, f"the PATCH's paths read back: {masks}")


# --- main ------------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port of the running server")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--counts-file", help="also write 'passed failed' to this file")
    args = parser.parse_args()

    parts = [p for p in args.parts.replace(" ", ",").split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {PARTS}")

    token = os.environ.get("BLACKBOX_TOKEN", "")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base_url = f"http://{args.target}"

    rec = Recorder()
    for part in parts:
        with rec.section(part):
            if part == "grpc":
                grpc_checks(rec, args.target, metadata)
            elif part == "grpc-web":
                grpc_web_checks(rec, args.target, base_url, metadata)
            else:
                rest_checks(rec, args.target, base_url, headers)

    if args.counts_file:
        with open(args.counts_file, "w", encoding="utf-8") as out:
            out.write(f"{rec.passed} {rec.failed}\n")
    print(f"{rec.passed} passed, {rec.failed} failed", flush=True)
    return 1 if rec.failed else 0


if __name__ == "__main__":
    sys.exit(main())
