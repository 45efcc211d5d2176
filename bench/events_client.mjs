// The subscribing side of bench/events.py in Node (@grpc/grpc-js), for `--client node`: the
// same streams as the Python client, at a fraction of its CPU per message, so a load generator
// sharing the 2 cores takes less from the servers under test. Needs `npm ci --prefix tests/node`.
//   node bench/events_client.mjs '{"port": P, "jobs": ["a", ...], "mode": "batches"|"per-event",
//                                  "latency": true, "channels": 4, "timeoutS": 600}'
// Prints {"ready": true} once the streams are open (1 s after they were started), then one JSON line with what it received:
// received, messages, cpu_s (from the ready line on), latencies_ms (sorted; when asked for).
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "tests", "node", "package.json"));
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const args = JSON.parse(process.argv[2]);
const definition = protoLoader.loadSync("eco2/events/v1/events.proto", {
  includeDirs: [path.join(here, "..", "proto")],
  keepCase: true,
  longs: Number,
  defaults: false,
});
const EventService = grpc.loadPackageDefinition(definition).eco2.events.v1.EventService;
const clients = Array.from({ length: args.channels ?? 4 }, () =>
  new EventService(`127.0.0.1:${args.port}`, grpc.credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 }));

const latencies = [];
let received = 0;
let messages = 0;
let cpu0 = null;
const nowS = () => (performance.timeOrigin + performance.now()) / 1000;
const timeS = (e) => Number(e.time.seconds) + e.time.nanos / 1e9;

function subscribe(i, job) {
  return new Promise((resolve, reject) => {
    const client = clients[i % clients.length];
    const deadline = new Date(Date.now() + (args.timeoutS ?? 600) * 1000);
    const call = args.mode === "batches"
      ? client.SubscribeBatches({ job_id: job }, { deadline })
      : client.Subscribe({ job_id: job }, { deadline });
    call.on("data", (msg) => {
      const now = args.latency ? nowS() : 0;
      const evs = args.mode === "batches" ? msg.events : [msg];
      messages += 1;
      received += evs.length;
      if (args.latency) for (const e of evs) latencies.push((now - timeS(e)) * 1000);
    });
    call.on("end", resolve);
    call.on("error", reject);
  });
}

const all = Promise.all(args.jobs.map((job, i) => subscribe(i, job)));
all.catch(() => {}); // handled below, after the ready line
// the server sends a stream's headers with its first event: give the calls time to register
await new Promise((r) => setTimeout(r, 1000));
cpu0 = process.cpuUsage();
console.log(JSON.stringify({ ready: true }));
try {
  await all;
} catch (err) {
  console.log(JSON.stringify({ error: `${err.code ?? ""} ${err.details ?? err.message}` }));
  process.exit(1);
}
const cpu = process.cpuUsage(cpu0 ?? undefined);
latencies.sort((a, b) => a - b);
console.log(JSON.stringify({ received, messages, cpu_s: (cpu.user + cpu.system) / 1e6, latencies_ms: latencies }));
for (const c of clients) c.close();
