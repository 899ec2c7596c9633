// A real Chromium (Debian's, driven by puppeteer-core) loads a page from one loopback origin and calls the service
// on another, over gRPC-Web (HTTP/1.1 as browsers speak it to a plain-http server) through two clients,
// connect-web's transport and the official grpc-web runtime in its text and binary modes, and over REST (fetch in
// CORS mode). It checks what a web app sees: answers, error codes with their details (google.rpc.Status from
// grpc-status-details-bin), the encoding each call really used, the headers CORS lets it read, strict proto3 JSON
// parsing of every REST answer, and that an origin not on --cors-origin gets nothing.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import puppeteer from "puppeteer-core";


const here = import.meta.dirname;
const root = resolve(here, "../..");
const bin = resolve(root, process.env.USER_SERVICE_BIN ?? "target/debug/user-service");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const pageScript = readFileSync(join(here, "build/page.js"));

const work = mkdtempSync(join(tmpdir(), "user-service-browser-"));
let service;
let serviceLog = "";
let base;
const pageServers = [];
let browser;
let allowed; // a page on the origin given to --cors-origin
let stranger; // a page on another loopback origin
let adminToken;
let wire = []; // content types of the gRPC-Web calls the allowed page made since the last `calls()`
let answered = 0; // gRPC-Web calls of the allowed page whose response puppeteer has reported
let made = 0; // gRPC-Web calls the test has made through the allowed page

// Serves the page on a free loopback port; its origin is http://127.0.0.1:<port>.
async function servePage() {
  const server = createServer((request, response) => {
    if (request.url === "/page.js") {
      response.writeHead(200, { "content-type": "text/javascript" });
      response.end(pageScript);
    } else {
      response.writeHead(200, { "content-type": "text/html" });
      response.end('<!doctype html><meta charset="utf-8"><title>users</title><script src="/page.js"></script>');
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  pageServers.push(server);
  return `http://127.0.0.1:${server.address().port}`;
}

function freePort() {
  return new Promise((ok) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

const env = {
  ...process.env,
  NO_COLOR: "1",
  RUST_LOG: "warn",
  USER_SERVICE_DATA_DIR: join(work, "data"),
  USER_SERVICE_JWT_SECRET: "browser-check-secret-of-at-least-32-bytes",
};
const token = (sub, scope) =>
  execFileSync(bin, ["token", "--sub", sub, ...(scope ? ["--scope", scope] : []), "--ttl", "1h"], { env })
    .toString()
    .trim();

async function openPage(origin) {
  const page = await browser.newPage();
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => window.check !== undefined);
  return page;
}

before(async () => {
  const appOrigin = await servePage();
  const otherOrigin = await servePage();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  service = spawn(
    bin,
    ["serve", "--listen", `127.0.0.1:${port}`, "--database-url", `sqlite://${join(work, "users.db")}`,
      "--cors-origin", appOrigin],
    { env, stdio: ["ignore", "pipe", "pipe"] },
  );
  service.stdout.on("data", (d) => (serviceLog += d));
  service.stderr.on("data", (d) => (serviceLog += d));
  let ready = false;
  for (let i = 0; i < 300 && !ready; i++) {
    ready = await fetch(`${base}/readyz`).then((r) => r.status === 200, () => false);
    if (!ready) await new Promise((ok) => setTimeout(ok, 100));
  }
  assert.ok(ready, `the service did not become ready:\n${serviceLog}`);
  adminToken = token("browser-admin", "users.admin");
  // puppeteer-core launches the Debian Chromium itself (it bundles no browser and downloads none).
  browser = await puppeteer.launch({ executablePath: browserPath, headless: true, args: ["--no-sandbox"] });
  allowed = await openPage(appOrigin);
  // What went over the wire for each call the allowed page made (preflights aside), to show which gRPC-Web
  // encoding a client really used.
  allowed.on("response", (response) => {
    const request = response.request();
    if (request.method() === "POST" && new URL(response.url()).pathname.startsWith("/users.v1.UserService/")) {
      wire.push({ sent: request.headers()["content-type"], received: response.headers()["content-type"] });
      answered++;
    }
  });
  stranger = await openPage(otherOrigin);
});

after(async () => {
  await browser?.close();
  for (const s of pageServers) s.close();
  if (service && service.exitCode === null) {
    service.kill("SIGTERM");
    await new Promise((ok) => service.once("exit", ok));
  }
  rmSync(work, { recursive: true, force: true });
});

// puppeteer reports a response a little after the page has it: a call through the allowed page returns once its
// response is recorded too, so `calls()` holds exactly the calls of the test that reads it.
async function recorded(page, answer) {
  if (page !== allowed) return answer;
  made++;
  for (let i = 0; answered < made; i++) {
    if (i === 1000) {
      // A call whose POST never went out (a refused preflight): fail this test alone, not the ones after it.
      const counts = `puppeteer reported ${answered} of ${made} gRPC-Web responses: ${JSON.stringify(answer)}`;
      made = answered;
      assert.fail(counts);
    }
    await new Promise((ok) => setTimeout(ok, 10));
  }
  return answer;
}

// tok: a token, or null for a call without one; timeoutMs sets the call's deadline (sent as grpc-timeout).
const rpc = async (page, method, request, tok = adminToken, timeoutMs = null, protocol = "grpc-web") => {
  const answer = await page.evaluate(
    ([b, m, r, t, ms, p]) => window.check.rpc(b, m, r, t ?? undefined, ms ?? undefined, p),
    [base, method, request, tok, timeoutMs, protocol],
  );
  return recorded(page, answer);
};
const rest = (page, method, path, body, headers = {}) =>
  // puppeteer passes arguments as JSON, where an absent body (undefined) arrives as null: turn it back.
  page.evaluate(([b, m, p, j, h]) => window.check.rest(b, m, p, j ?? undefined, h),
    [base, method, path, body, headers]);
const parseStrict = (page, type, json) =>
  page.evaluate(([t, j]) => window.check.parseStrict(t, j), [type, json]);
const grpcWeb = async (page, format, method, request, tok = adminToken) =>
  recorded(page, await page.evaluate(([b, f, m, r, t]) => window.check.grpcWeb(b, f, m, r, t ?? undefined),
    [base, format, method, request, tok]));
// The content types of the calls made since the last time this was called.
const calls = () => {
  const seen = wire;
  wire = [];
  return seen;
};
const bearer = (t = adminToken) => ({ authorization: `Bearer ${t}` });

let n = 0;
const fresh = () => `browser${++n}-${process.pid}`;

describe("gRPC-Web from a page on an allowed origin", () => {
  test("creates a user and reads it back", async () => {
    const name = fresh();
    const created = await rpc(allowed, "createUser", {
      user: { email: `${name}@example.com`, username: name, givenName: "Ana", labels: { team: "web" } },
    });
    assert.equal(created.ok, true, JSON.stringify(created));
    assert.match(created.message.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.equal(created.message.state, "ACTIVE");
    const got = await rpc(allowed, "getUser", { id: created.message.id });
    assert.equal(got.ok, true, JSON.stringify(got));
    assert.deepEqual(got.message, created.message);
  });

  test("a validation error carries every violation and its reason", async () => {
    const answer = await rpc(allowed, "createUser", {
      user: { email: "not-an-address", phoneNumber: "12", regionCode: "XX1" },
    });
    assert.equal(answer.ok, false);
    assert.equal(answer.code, 3, JSON.stringify(answer)); // INVALID_ARGUMENT
    const fields = answer.badRequest.map((v) => v.field).sort();
    assert.deepEqual(fields, ["user.email", "user.phone_number", "user.region_code"], JSON.stringify(answer));
    assert.ok(answer.badRequest.every((v) => v.description.length > 0));
  });

  test("a taken e-mail is ALREADY_EXISTS with reason EMAIL_TAKEN", async () => {
    const name = fresh();
    const first = await rpc(allowed, "createUser", { user: { email: `${name}@example.com` } });
    assert.equal(first.ok, true, JSON.stringify(first));
    const again = await rpc(allowed, "createUser", { user: { email: `${name.toUpperCase()}@example.com` } });
    assert.equal(again.code, 6, JSON.stringify(again)); // ALREADY_EXISTS
    assert.deepEqual(again.errorInfo, [{ reason: "EMAIL_TAKEN", domain: "users.v1" }]);
  });

  test("a stale etag is ABORTED and changes nothing", async () => {
    const created = await rpc(allowed, "createUser", { user: { email: `${fresh()}@example.com` } });
    const user = created.message;
    const updated = await rpc(allowed, "updateUser", {
      user: { id: user.id, givenName: "First", etag: user.etag },
      updateMask: "givenName",
    });
    assert.equal(updated.ok, true, JSON.stringify(updated));
    const stale = await rpc(allowed, "updateUser", {
      user: { id: user.id, givenName: "Second", etag: user.etag },
      updateMask: "givenName",
    });
    assert.equal(stale.code, 10, JSON.stringify(stale)); // ABORTED
    assert.deepEqual(stale.errorInfo, [{ reason: "ETAG_MISMATCH", domain: "users.v1" }]);
    const got = await rpc(allowed, "getUser", { id: user.id });
    assert.equal(got.message.givenName, "First");
  });

  test("a call with a deadline passes the preflight (grpc-timeout) and is answered", async () => {
    const created = await rpc(allowed, "createUser", { user: { email: `${fresh()}@example.com` } },
      adminToken, 60_000);
    assert.equal(created.ok, true, JSON.stringify(created));
    const batch = await rpc(allowed, "batchUpdateUsers", {
      requests: [
        { user: { id: created.message.id, givenName: "Batch" }, updateMask: "givenName" },
        { user: { id: created.message.id, regionCode: "not a region" }, updateMask: "regionCode" },
      ],
    }, adminToken, 60_000);
    // All or nothing: the second item is invalid, so the first is not applied either.
    assert.equal(batch.code, 3, JSON.stringify(batch));
    const got = await rpc(allowed, "getUser", { id: created.message.id });
    assert.equal(got.message.givenName, undefined, JSON.stringify(got));
  });

  test("the revisions of an update carry its mask", async () => {
    const created = await rpc(allowed, "createUser", { user: { email: `${fresh()}@example.com` } });
    const { id } = created.message;
    const updated = await rpc(allowed, "updateUser", { user: { id, familyName: "Díaz" }, updateMask: "familyName" });
    assert.equal(updated.ok, true, JSON.stringify(updated));
    const revisions = await rpc(allowed, "listUserRevisions", { id });
    assert.equal(revisions.ok, true, JSON.stringify(revisions));
    assert.deepEqual(revisions.message.revisions.map((r) => [r.revision, r.updateMask]), [["2", "familyName"], ["1", "email"]]);
    assert.deepEqual(revisions.message.revisions[0].after, { family_name: "Díaz" });
  });

  test("without a token the call is UNAUTHENTICATED; a self-service token reads only its own user", async () => {
    const none = await rpc(allowed, "listUsers", {}, null);
    assert.equal(none.code, 16, JSON.stringify(none)); // UNAUTHENTICATED
    const mine = (await rpc(allowed, "createUser", { user: { email: `${fresh()}@example.com` } })).message;
    const other = (await rpc(allowed, "createUser", { user: { email: `${fresh()}@example.com` } })).message;
    const self = token(mine.id);
    const own = await rpc(allowed, "getUser", { id: mine.id }, self);
    assert.equal(own.ok, true, JSON.stringify(own));
    const foreign = await rpc(allowed, "getUser", { id: other.id }, self);
    assert.equal(foreign.code, 7, JSON.stringify(foreign)); // PERMISSION_DENIED
  });

  test("an update with a mask and the etag changes only the masked field and gives a new etag", async () => {
    calls();
    const created = await rpc(allowed, "createUser", { user: { email: `${fresh()}@example.com`, familyName: "Keep" } });
    const user = created.message;
    const updated = await rpc(allowed, "updateUser", {
      user: { id: user.id, givenName: "Masked", familyName: "Dropped", etag: user.etag },
      updateMask: "givenName",
    });
    assert.equal(updated.ok, true, JSON.stringify(updated));
    assert.equal(updated.message.givenName, "Masked");
    assert.equal(updated.message.familyName, "Keep"); // not in the mask
    assert.equal(updated.message.revision, "2");
    assert.notEqual(updated.message.etag, user.etag);
    const got = await rpc(allowed, "getUser", { id: user.id });
    assert.deepEqual(got.message, updated.message);
    // connect-web's gRPC-Web transport speaks the binary encoding.
    const binary = { sent: "application/grpc-web+proto", received: "application/grpc-web+proto" };
    assert.deepEqual(calls(), [binary, binary, binary]);
  });

  test("a list with a label filter returns exactly the users that carry the label", async () => {
    const team = fresh();
    const ids = [];
    for (const labels of [{ team }, { team }, { team: `${team}-other` }]) {
      const created = await rpc(allowed, "createUser", { user: { email: `${fresh()}@example.com`, labels } });
      assert.equal(created.ok, true, JSON.stringify(created));
      ids.push(created.message.id);
    }
    const listed = await rpc(allowed, "listUsers", { filter: `labels.team = "${team}"` });
    assert.equal(listed.ok, true, JSON.stringify(listed));
    assert.deepEqual(listed.message.users.map((u) => u.id).sort(), ids.slice(0, 2).sort());
    assert.ok(listed.message.users.every((u) => u.labels.team === team));
  });
});

// The official grpc-web runtime (npm grpc-web) in both of its modes, each checked on the wire.
for (const [format, contentType] of [["text", "application/grpc-web-text"], ["binary", "application/grpc-web+proto"]]) {
  // Every call of the test went out and came back in the mode's encoding.
  const sentAs = (count) => {
    const seen = calls();
    assert.equal(seen.length, count, JSON.stringify(seen));
    for (const call of seen) {
      assert.equal(call.sent, contentType, JSON.stringify(seen));
      assert.ok(call.received?.startsWith(contentType), JSON.stringify(seen));
    }
  };

  describe(`the grpc-web runtime in ${format} mode (${contentType}) from a page on an allowed origin`, () => {
    test("creates a user and reads it back", async () => {
      calls();
      const name = fresh();
      const created = await grpcWeb(allowed, format, "createUser", {
        user: { email: `${name}@example.com`, username: name, givenName: "Ana", labels: { team: "web" } },
      });
      assert.equal(created.ok, true, JSON.stringify(created));
      assert.match(created.message.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      assert.equal(created.message.state, "ACTIVE");
      assert.equal(created.message.username, name);
      const got = await grpcWeb(allowed, format, "getUser", { id: created.message.id });
      assert.equal(got.ok, true, JSON.stringify(got));
      assert.deepEqual(got.message, created.message);
      sentAs(2);
    });

    test("an update with a mask and the etag applies; the same etag again is ABORTED, ETAG_MISMATCH", async () => {
      calls();
      const created = await grpcWeb(allowed, format, "createUser", {
        user: { email: `${fresh()}@example.com`, familyName: "Keep" },
      });
      const user = created.message;
      const updated = await grpcWeb(allowed, format, "updateUser", {
        user: { id: user.id, givenName: "First", familyName: "Dropped", etag: user.etag },
        updateMask: "givenName",
      });
      assert.equal(updated.ok, true, JSON.stringify(updated));
      assert.equal(updated.message.givenName, "First");
      assert.equal(updated.message.familyName, "Keep"); // not in the mask
      assert.equal(updated.message.revision, "2");
      assert.notEqual(updated.message.etag, user.etag);

      const stale = await grpcWeb(allowed, format, "updateUser", {
        user: { id: user.id, givenName: "Second", etag: user.etag },
        updateMask: "givenName",
      });
      assert.equal(stale.ok, false, JSON.stringify(stale));
      assert.equal(stale.code, 10, JSON.stringify(stale)); // ABORTED
      // The details come from grpc-status-details-bin: a google.rpc.Status with the same code.
      assert.equal(stale.detailsBin, true, JSON.stringify(stale));
      assert.equal(stale.status.code, 10, JSON.stringify(stale));
      assert.deepEqual(stale.errorInfo, [{ reason: "ETAG_MISMATCH", domain: "users.v1" }], JSON.stringify(stale));
      const got = await grpcWeb(allowed, format, "getUser", { id: user.id });
      assert.deepEqual(got.message, updated.message);
      sentAs(4);
    });

    test("invalid fields are INVALID_ARGUMENT with a BadRequest violation for each", async () => {
      calls();
      const answer = await grpcWeb(allowed, format, "createUser", {
        user: { email: `${fresh()}@example.com`, phoneNumber: "12", regionCode: "XX1" },
      });
      assert.equal(answer.ok, false, JSON.stringify(answer));
      assert.equal(answer.code, 3, JSON.stringify(answer)); // INVALID_ARGUMENT
      assert.equal(answer.status.code, 3, JSON.stringify(answer));
      assert.ok(answer.status.types.includes("type.googleapis.com/google.rpc.BadRequest"), JSON.stringify(answer));
      const fields = answer.badRequest.map((v) => v.field).sort();
      assert.deepEqual(fields, ["user.phone_number", "user.region_code"], JSON.stringify(answer));
      assert.ok(answer.badRequest.every((v) => v.description.length > 0), JSON.stringify(answer));
      sentAs(1);
    });

    test("a list with a label filter returns exactly the users that carry the label", async () => {
      calls();
      const team = fresh();
      const ids = [];
      for (const labels of [{ team }, { team }, { team: `${team}-other` }]) {
        const created = await grpcWeb(allowed, format, "createUser", {
          user: { email: `${fresh()}@example.com`, labels },
        });
        assert.equal(created.ok, true, JSON.stringify(created));
        ids.push(created.message.id);
      }
      const listed = await grpcWeb(allowed, format, "listUsers", { filter: `labels.team = "${team}"` });
      assert.equal(listed.ok, true, JSON.stringify(listed));
      assert.deepEqual(listed.message.users.map((u) => u.id).sort(), ids.slice(0, 2).sort());
      assert.ok(listed.message.users.every((u) => u.labels.team === team));
      sentAs(4);
    });
  });
}

describe("connect-web's default transport (the Connect protocol) from a page on an allowed origin", () => {
  // API §1: the port also speaks the Connect protocol for unary calls, so connect-web's default transport works.
  const connect = (method, request, tok = adminToken) => rpc(allowed, method, request, tok, null, "connect");

  test("creates a user and reads it back", async () => {
    const created = await connect("createUser", { user: { email: `${fresh()}@example.com` } });
    assert.equal(created.ok, true, JSON.stringify(created));
    const got = await connect("getUser", { id: created.message.id });
    assert.deepEqual(got.message, created.message);
  });

  test("an update with a mask and the etag applies; the same etag again is ABORTED, ETAG_MISMATCH", async () => {
    const created = await connect("createUser", { user: { email: `${fresh()}@example.com`, familyName: "Keep" } });
    const user = created.message;
    const updated = await connect("updateUser", {
      user: { id: user.id, givenName: "Masked", familyName: "Dropped", etag: user.etag },
      updateMask: "givenName",
    });
    assert.equal(updated.ok, true, JSON.stringify(updated));
    assert.equal(updated.message.givenName, "Masked");
    assert.equal(updated.message.familyName, "Keep"); // not in the mask
    const stale = await connect("updateUser", {
      user: { id: user.id, givenName: "Second", etag: user.etag },
      updateMask: "givenName",
    });
    assert.equal(stale.code, 10, JSON.stringify(stale)); // ABORTED
    assert.deepEqual(stale.errorInfo, [{ reason: "ETAG_MISMATCH", domain: "users.v1" }]);
    assert.equal((await connect("getUser", { id: user.id })).message.givenName, "Masked");
  });

  test("invalid fields are INVALID_ARGUMENT with a BadRequest violation for each", async () => {
    const answer = await connect("createUser", {
      user: { email: "not-an-address", phoneNumber: "12", regionCode: "XX1" },
    });
    assert.equal(answer.code, 3, JSON.stringify(answer)); // INVALID_ARGUMENT
    const fields = answer.badRequest.map((v) => v.field).sort();
    assert.deepEqual(fields, ["user.email", "user.phone_number", "user.region_code"], JSON.stringify(answer));
  });

  test("a list with a label filter returns exactly the users that carry the label; no token is UNAUTHENTICATED",
    async () => {
      const team = fresh();
      const ids = [];
      for (const labels of [{ team }, { team }, { team: `${team}-other` }]) {
        const created = await connect("createUser", { user: { email: `${fresh()}@example.com`, labels } });
        assert.equal(created.ok, true, JSON.stringify(created));
        ids.push(created.message.id);
      }
      const listed = await connect("listUsers", { filter: `labels.team = "${team}"` });
      assert.equal(listed.ok, true, JSON.stringify(listed));
      assert.deepEqual(listed.message.users.map((u) => u.id).sort(), ids.slice(0, 2).sort());
      const anonymous = await connect("listUsers", {}, null);
      assert.equal(anonymous.code, 16, JSON.stringify(anonymous)); // UNAUTHENTICATED
    });
});

describe("REST from a page on an allowed origin", () => {
  test("create, read with the exposed etag, conditional PATCH; every answer parses as strict proto3 JSON", async () => {
    const name = fresh();
    const created = await rest(allowed, "POST", "/v1/users", { email: `${name}@example.com`, labels: { team: "web" } },
      bearer());
    assert.equal(created.status, 200, JSON.stringify(created));
    const id = created.body.id;
    assert.equal((await parseStrict(allowed, "User", created.body)).ok, true);

    const got = await rest(allowed, "GET", `/v1/users/${id}`, undefined, bearer());
    assert.equal(got.status, 200);
    // ETag is a quoted entity tag of the etag field, and readable only because the service exposes it.
    assert.equal(got.headers.etag, `"${got.body.etag}"`, JSON.stringify(got.headers));
    const strict = await parseStrict(allowed, "User", got.body);
    assert.equal(strict.ok, true, strict.error);

    const patched = await rest(allowed, "PATCH", `/v1/users/${id}`, { familyName: "Díaz" },
      { ...bearer(), "if-match": got.headers.etag });
    assert.equal(patched.status, 200, JSON.stringify(patched));
    assert.equal(patched.body.familyName, "Díaz");

    const stale = await rest(allowed, "PATCH", `/v1/users/${id}`, { familyName: "Other" },
      { ...bearer(), "if-match": got.headers.etag });
    assert.equal(stale.status, 409, JSON.stringify(stale));
    assert.equal(stale.body.error.status, "ABORTED");

    const list = await rest(allowed, "GET", `/v1/users?filter=${encodeURIComponent(`email = "${name}@example.com"`)}`,
      undefined, bearer());
    assert.equal(list.status, 200, JSON.stringify(list));
    const listed = await parseStrict(allowed, "ListUsersResponse", list.body);
    assert.equal(listed.ok, true, listed.error);
    assert.deepEqual(listed.message.users.map((u) => u.id), [id]);
  });

  // API §2: a FieldMask in JSON output is one string of lowerCamelCase paths, so strict proto3 JSON parsers read
  // every answer, the REST revisions answer included.
  test("the revisions answer parses as strict proto3 JSON", async () => {
    const created = await rest(allowed, "POST", "/v1/users", { email: `${fresh()}@example.com` }, bearer());
    const { id } = created.body;
    const patched = await rest(allowed, "PATCH", `/v1/users/${id}`, { familyName: "Díaz" }, bearer());
    assert.equal(patched.status, 200, JSON.stringify(patched));
    const revisions = await rest(allowed, "GET", `/v1/users/${id}/revisions`, undefined, bearer());
    assert.equal(revisions.status, 200, JSON.stringify(revisions));
    const parsed = await parseStrict(allowed, "ListUserRevisionsResponse", revisions.body);
    assert.equal(parsed.ok, true, `${parsed.error}: ${JSON.stringify(revisions.body)}`);
    assert.equal(parsed.message.revisions[0].updateMask, "familyName");
  });

  test("errors are readable: 400 with field violations, 401 without a token", async () => {
    const bad = await rest(allowed, "POST", "/v1/users", { email: "nope", unknownField: 1 }, bearer());
    assert.equal(bad.status, 400, JSON.stringify(bad));
    assert.equal(bad.body.error.status, "INVALID_ARGUMENT");
    assert.match(bad.body.error.message, /unknownField/);
    const invalid = await rest(allowed, "POST", "/v1/users", { email: "nope" }, bearer());
    assert.equal(invalid.status, 400);
    const violations = invalid.body.error.details.find((d) => d["@type"].endsWith("google.rpc.BadRequest"));
    assert.deepEqual(violations.fieldViolations.map((v) => v.field), ["user.email"]);
    const anonymous = await rest(allowed, "GET", "/v1/users");
    assert.equal(anonymous.status, 401, JSON.stringify(anonymous));
    assert.equal(anonymous.body.error.status, "UNAUTHENTICATED");
  });

  test("DELETE with If-Match, then :undelete", async () => {
    const created = await rest(allowed, "POST", "/v1/users", { email: `${fresh()}@example.com` }, bearer());
    const { id } = created.body;
    const deleted = await rest(allowed, "DELETE", `/v1/users/${id}`, undefined,
      { ...bearer(), "if-match": created.headers.etag });
    assert.equal(deleted.status, 200, JSON.stringify(deleted));
    assert.equal(deleted.body.state, "DELETED");
    const undeleted = await rest(allowed, "POST", `/v1/users/${id}:undelete`, {}, bearer());
    assert.equal(undeleted.status, 200, JSON.stringify(undeleted));
    assert.equal(undeleted.body.state, "ACTIVE");
  });
});

describe("a page on an origin not given to --cors-origin", () => {
  test("gets no answer over REST or gRPC-Web, and writes nothing", async () => {
    const email = `${fresh()}@example.com`;
    const posted = await rest(stranger, "POST", "/v1/users", { email }, bearer());
    assert.equal(posted.reached, false, JSON.stringify(posted));
    const read = await rest(stranger, "GET", "/v1/users", undefined, bearer());
    assert.equal(read.reached, false, JSON.stringify(read));
    const call = await rpc(stranger, "createUser", { user: { email } });
    assert.equal(call.ok, false);
    // The preflight was refused, so neither request reached the service.
    const lookup = await rpc(allowed, "lookupUser", { email });
    assert.equal(lookup.code, 5, JSON.stringify(lookup)); // NOT_FOUND
  });
});
