// @connectrpc/connect-node's gRPC-Web client through the embedded ingress (Envoy); prints one
// JSON object of outcomes, the pytest side (tests/test_ingress.py) asserts.
//   node ingress.mjs '{"url": "http://127.0.0.1:PORT", "limitedUrl": "...", "token": "...",
//                      "revokedToken": "...", "limitedToken": {"limited": "...", "limited_connect": "..."},
//                      "jobId": "...", "openJobId": "..."}'
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";

import { CharacterService } from "./node_modules/.eco2-gen/eco2/character/v1/character_pb.js";
import { EventService } from "./node_modules/.eco2-gen/eco2/events/v1/events_pb.js";

const args = JSON.parse(process.argv[2]);
const out = {};
const auth = (token) => (token ? { authorization: `Bearer ${token}` } : {});

async function scenario(name, fn) {
  try {
    out[name] = { ok: await fn() };
  } catch (err) {
    const e = ConnectError.from(err);
    out[name] = { error: { code: Code[e.code], message: e.rawMessage } };
  }
}

for (const httpVersion of ["1.1", "2"]) {
  const transport = createGrpcWebTransport({ baseUrl: args.url, httpVersion });
  const characters = createClient(CharacterService, transport);
  const events = createClient(EventService, transport);
  const list = (token) => characters.listCharacters({}, { headers: auth(token) }).then((r) => r.characters.length);
  await scenario(`h${httpVersion}.allowed`, () => list(args.token));
  await scenario(`h${httpVersion}.no_token`, () => list(null));
  await scenario(`h${httpVersion}.revoked`, () => list(args.revokedToken));
  await scenario(`h${httpVersion}.stream`, async () => {
    const seqs = [];
    for await (const ev of events.subscribe({ jobId: args.jobId }, { headers: auth(args.token) })) seqs.push(Number(ev.seq));
    return seqs;
  });
  await scenario(`h${httpVersion}.deadline`, async () => {
    for await (const ev of events.subscribe({ jobId: args.openJobId }, { headers: auth(args.token), timeoutMs: 500 })) void ev;
    return "ended";
  });
}

// Connect (JSON) goes to the gateway; a deny is answered by Envoy before it gets there.
const connect = createClient(CharacterService, createConnectTransport({ baseUrl: args.url, httpVersion: "1.1" }));
await scenario("connect.allowed", () => connect.listCharacters({}, { headers: auth(args.token) }).then((r) => r.characters.length));
await scenario("connect.no_token", () => connect.listCharacters({}));

for (const [name, transport] of [["limited", createGrpcWebTransport], ["limited_connect", createConnectTransport]]) {
  const limited = createClient(CharacterService, transport({ baseUrl: args.limitedUrl, httpVersion: "1.1" }));
  for (const i of [1, 2, 3]) {
    await scenario(`${name}.${i}`, () => limited.listCharacters({}, { headers: auth(args.limitedToken[name]) }).then((r) => r.characters.length));
  }
}

process.stdout.write(JSON.stringify(out) + "\n");
