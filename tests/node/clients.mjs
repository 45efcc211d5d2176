// Real third-party clients against the gateway and the mesh; prints one JSON object.
//   node clients.mjs '{"gateway": "http://127.0.0.1:PORT", "token": "...", "jobId": "...",
//                      "openJobId": "...", "character": "127.0.0.1:PORT"}'
// Each scenario records its outcome (or the error it got); the pytest side asserts.
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createGrpcWebTransport, createConnectTransport } from "@connectrpc/connect-node";
import { create } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";
import path from "node:path";

import { CharacterService } from "./node_modules/.eco2-gen/eco2/character/v1/character_pb.js";
import { EventService, EventKind } from "./node_modules/.eco2-gen/eco2/events/v1/events_pb.js";
import { AuthService } from "./node_modules/.eco2-gen/eco2/auth/v1/auth_pb.js";

const args = JSON.parse(process.argv[2]);
const here = path.dirname(fileURLToPath(import.meta.url));
const out = {};
const auth = { authorization: `Bearer ${args.token}` };

function failure(err) {
  const e = ConnectError.from(err);
  return { code: Code[e.code], message: e.rawMessage, details: e.details.map((d) => d.desc?.typeName ?? d.type) };
}

async function scenario(name, fn) {
  try {
    out[name] = { ok: await fn() };
  } catch (err) {
    out[name] = { error: failure(err) };
  }
}

const transports = {
  grpcweb: createGrpcWebTransport({ baseUrl: args.gateway, httpVersion: "1.1" }),
  grpcweb_h2: createGrpcWebTransport({ baseUrl: args.gateway, httpVersion: "2" }),
  connect_json: createConnectTransport({ baseUrl: args.gateway, httpVersion: "1.1" }),
  connect_binary: createConnectTransport({ baseUrl: args.gateway, httpVersion: "1.1", useBinaryFormat: true }),
};

for (const [name, transport] of Object.entries(transports)) {
  const characters = createClient(CharacterService, transport);
  const events = createClient(EventService, transport);
  await scenario(`${name}.unary`, async () => {
    const reply = await characters.getCharacter({ code: "char-eco" }, { headers: auth });
    return { code: reply.character.code, name: reply.character.name };
  });
  await scenario(`${name}.list`, async () => (await characters.listCharacters({ pageSize: 20 }, { headers: auth })).characters.length);
  await scenario(`${name}.not_found`, () => characters.getCharacter({ code: "char-nope" }, { headers: auth }));
  await scenario(`${name}.invalid`, () => characters.listCharacters({ pageSize: 1000 }, { headers: auth }));
  await scenario(`${name}.unauthenticated`, () => characters.listCharacters({}));
  await scenario(`${name}.stream`, async () => {
    const seen = [];
    for await (const ev of events.subscribe({ jobId: args.jobId }, { headers: auth })) {
      seen.push({ seq: Number(ev.seq), kind: EventKind[ev.kind], delta: ev.delta });
    }
    return seen;
  });
  await scenario(`${name}.resume`, async () => {
    const seen = [];
    for await (const ev of events.subscribe({ jobId: args.jobId, afterSeq: 2n }, { headers: auth })) seen.push(Number(ev.seq));
    return seen;
  });
  await scenario(`${name}.deadline`, async () => {
    const seen = [];
    for await (const ev of events.subscribe({ jobId: args.openJobId }, { headers: auth, timeoutMs: 700 })) seen.push(Number(ev.seq));
    return seen;
  });
  await scenario(`${name}.abort`, async () => {
    const ctrl = new AbortController();
    const seen = [];
    try {
      for await (const ev of events.subscribe({ jobId: args.openJobId }, { headers: auth, signal: ctrl.signal })) {
        seen.push(Number(ev.seq));
        ctrl.abort();
      }
    } catch (err) {
      return { seen, code: Code[ConnectError.from(err).code] };
    }
    return { seen, code: "none" };
  });
}

await scenario("grpcweb.public_sign_in", async () => {
  const reply = await createClient(AuthService, transports.grpcweb).devSignIn({ displayName: "node-client" });
  return reply.tokens.accessToken.split(".").length;
});

// @grpc/grpc-js straight to the character service (no gateway): the mesh is polyglot.
await scenario("grpcjs.direct", async () => {
  const def = protoLoader.loadSync("eco2/character/v1/character.proto", { includeDirs: [path.join(here, "../../proto")], keepCase: true, defaults: true });
  const pkg = grpc.loadPackageDefinition(def);
  const client = new pkg.eco2.character.v1.CharacterService(args.character, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set("x-eco2-user-id", "node-grpcjs");
  const reply = await new Promise((resolve, reject) =>
    client.GetCharacter({ code: "char-eco" }, md, { deadline: Date.now() + 5000 }, (err, r) => (err ? reject(err) : resolve(r))),
  );
  client.close();
  return { code: reply.character.code, name: reply.character.name };
});

process.stdout.write(JSON.stringify(out) + "\n");
