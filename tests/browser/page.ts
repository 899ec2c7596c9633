//! The code the browser page runs: a gRPC-Web client (connect-web) and fetch for REST, as a web app would call
//! the service. Bundled by esbuild into build/page.js; the test drives it through `window.check`.
import { fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import {
  ListUserRevisionsResponseSchema,
  ListUsersResponseSchema,
  UserSchema,
  UserService,
} from "./build/gen/users/v1/user_service_pb.js";

// The rich error details the service sends (google.rpc.BadRequest and ErrorInfo), decoded from their wire form:
// only the fields the checks read, so the page needs no copy of Google's error_details.proto.
function decodeBadRequest(bytes: Uint8Array): { field: string; description: string }[] {
  const violations = [];
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    if (fieldNo !== 1) {
      reader.skip(wireType);
      continue;
    }
    const inner = new BinaryReader(reader.bytes());
    const violation = { field: "", description: "" };
    while (inner.pos < inner.len) {
      const [no, wt] = inner.tag();
      if (no === 1) violation.field = inner.string();
      else if (no === 2) violation.description = inner.string();
      else inner.skip(wt);
    }
    violations.push(violation);
  }
  return violations;
}

function decodeErrorInfo(bytes: Uint8Array): { reason: string; domain: string } {
  const info = { reason: "", domain: "" };
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [no, wt] = reader.tag();
    if (no === 1) info.reason = reader.string();
    else if (no === 2) info.domain = reader.string();
    else reader.skip(wt);
  }
  return info;
}

// A call as an app makes it, over gRPC-Web (or, with protocol "connect", connect-web's default transport); the
// answer or the error comes back as plain JSON for the test.
async function rpc(
  base: string,
  method: string,
  request: JsonValue,
  token?: string,
  timeoutMs?: number,
  protocol: "grpc-web" | "connect" = "grpc-web",
) {
  const transport =
    protocol === "connect" ? createConnectTransport({ baseUrl: base }) : createGrpcWebTransport({ baseUrl: base });
  const client = createClient(UserService, transport);
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const call = (client as unknown as Record<string, (r: unknown, o: unknown) => Promise<unknown>>)[method];
  const input = UserService.method[method as keyof typeof UserService.method].input;
  try {
    const answer = await call(fromJson(input, request), { headers, timeoutMs });
    const output = UserService.method[method as keyof typeof UserService.method].output;
    return { ok: true, message: toJson(output, answer as never) };
  } catch (e) {
    const err = ConnectError.from(e);
    const badRequest = [];
    const errorInfo = [];
    for (const d of err.details) {
      if ("desc" in d) continue;
      if (d.type === "google.rpc.BadRequest") badRequest.push(...decodeBadRequest(d.value));
      if (d.type === "google.rpc.ErrorInfo") errorInfo.push(decodeErrorInfo(d.value));
    }
    return { ok: false, code: err.code, rawMessage: err.rawMessage, badRequest, errorInfo };
  }
}

// A REST call with fetch in CORS mode. Only what a cross-origin page can read comes back: the status, the exposed
// response headers and the body.
async function rest(base: string, method: string, path: string, body?: JsonValue, headers: Record<string, string> = {}) {
  try {
    const init: RequestInit = { method, headers: { ...headers }, mode: "cors" };
    if (body !== undefined) {
      (init.headers as Record<string, string>)["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(base + path, init);
    const text = await response.text();
    const seen: Record<string, string> = {};
    response.headers.forEach((value, name) => {
      seen[name] = value;
    });
    return { reached: true, status: response.status, headers: seen, body: text ? JSON.parse(text) : null };
  } catch (e) {
    // A response the browser withholds (origin not allowed, preflight refused) surfaces as a TypeError.
    return { reached: false, error: String(e) };
  }
}

// Reads an answer with the strict proto3 JSON parser (unknown fields are errors), as protobuf-es clients do.
const schemas = { User: UserSchema, ListUsersResponse: ListUsersResponseSchema, ListUserRevisionsResponse: ListUserRevisionsResponseSchema };
function parseStrict(type: keyof typeof schemas, json: JsonValue) {
  try {
    const message = fromJson(schemas[type] as typeof UserSchema, json, { ignoreUnknownFields: false });
    return { ok: true, message: toJson(schemas[type] as typeof UserSchema, message) };
  } catch (e) {
    return { ok: false, error: String(e) };
  }
}

(window as unknown as { check: unknown }).check = { rpc, rest, parseStrict };
