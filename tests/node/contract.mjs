// The sidecar as Node.js users meet it: ioredis and node-redis, each in the
// majors still in use, unchanged, with their pipelines, transactions,
// cluster clients and (node-redis) client-side cache.
//
// Run by tests/node_clients.rs against a real sidecar:
//   node contract.mjs PORT standalone|upstream
// "upstream": the sidecar has an upstream, so ordinary keys work too.
// Exits non-zero with the failing check on stderr.

import assert from "node:assert/strict";

const port = Number(process.argv[2]);
const mode = process.argv[3];
const upstream = mode === "upstream" || mode === "cluster";
const host = "127.0.0.1";

/** Polls `condition` until it holds or `ms` pass. */
async function eventually(what, condition, ms = 5000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.fail(`never: ${what}`);
}

/** Libraries whose `engines` the running Node satisfies. */
function usable(name) {
  const needs = { ioredis6: 20, redis6: 20 }[name] ?? 18;
  return Number(process.versions.node.split(".")[0]) >= needs;
}

async function ioredis(name) {
  const { default: Redis } = await import(name);
  const tag = `${name}-${process.pid}-`;
  const r = new Redis({ host, port, lazyConnect: true, maxRetriesPerRequest: 1 });
  await r.connect();
  assert.equal(await r.ping(), "PONG");
  const sid = await r.call("SESSION.CREATE", "ID", `${tag}s`, "USER", `${tag}u`, "ATTR", "n", "1");
  assert.equal(sid, `${tag}s`);

  // A pipeline is answered in order.
  const piped = await r
    .pipeline()
    .call("SESSION.ATTR.INCRBY", sid, "n", "1")
    .call("SESSION.EXISTS", sid, `${tag}missing`)
    .ping()
    .exec();
  assert.deepEqual(piped, [[null, 2], [null, 1], [null, "PONG"]]);

  // MULTI/EXEC with SESSION.* (and ordinary commands, with an upstream).
  let tx = r.multi().call("SESSION.ATTR.INCRBY", sid, "n", "1");
  if (upstream) tx = tx.set(`${tag}k`, "v").get(`${tag}k`);
  tx = tx.call("SESSION.ATTR.GET", sid, "n");
  const expected = upstream ? [3, "OK", "v", ["3"]] : [3, ["3"]];
  assert.deepEqual((await tx.exec()).map(([error, value]) => (error ? String(error) : value)), expected);

  // A queue-time error discards the transaction: nothing runs.
  await assert.rejects(r.multi().call("SESSION.DEL", sid).call("SESSION.GET").exec(), /EXECABORT/);
  assert.equal(await r.call("SESSION.EXISTS", sid), 1);
  // DISCARD runs nothing.
  const discarded = r.multi().call("SESSION.DEL", sid);
  await discarded.discard();
  assert.equal(await r.call("SESSION.EXISTS", sid), 1);

  // A cluster client: the sidecar is a one-node cluster at its own address,
  // so everything stays on the sidecar.
  const cluster = new Redis.Cluster([{ host, port }], { lazyConnect: true });
  await cluster.connect();
  const nodes = cluster.nodes("master").map((n) => `${n.options.host}:${n.options.port}`);
  assert.deepEqual(nodes, [`${host}:${port}`]);
  assert.equal(await cluster.call("SESSION.ATTR.GET", sid, "n").then((v) => v[0]), "3");
  if (upstream) {
    for (let i = 0; i < 20; i++) await cluster.set(`${tag}c${i}`, String(i));
    for (let i = 0; i < 20; i++) assert.equal(await cluster.get(`${tag}c${i}`), String(i));
  }
  cluster.disconnect();

  assert.equal(await r.call("SESSION.DEL", sid), 1);
  r.disconnect();
}

async function nodeRedis(name) {
  const { createClient, createCluster } = await import(name);
  const tag = `${name}-${process.pid}-`;
  for (const RESP of [2, 3]) {
    const t = `${tag}r${RESP}-`;
    const r = createClient({ socket: { host, port }, RESP });
    r.on("error", () => {});
    await r.connect();
    assert.equal(await r.ping(), "PONG");
    const sid = await r.sendCommand(["SESSION.CREATE", "ID", `${t}s`, "USER", `${t}u`, "ATTR", "n", "1"]);
    assert.equal(sid, `${t}s`);

    let tx = r.multi().addCommand(["SESSION.ATTR.INCRBY", sid, "n", "1"]);
    if (upstream) tx = tx.set(`${t}k`, "v").get(`${t}k`);
    tx = tx.addCommand(["SESSION.ATTR.GET", sid, "n"]);
    assert.deepEqual(await tx.exec(), upstream ? [2, "OK", "v", ["2"]] : [2, ["2"]]);
    const piped = await r
      .multi()
      .addCommand(["SESSION.ATTR.INCRBY", sid, "n", "1"])
      .addCommand(["SESSION.EXISTS", sid])
      .execAsPipeline();
    assert.deepEqual(piped, [3, 1]);
    await assert.rejects(
      r.multi().addCommand(["SESSION.DEL", sid]).addCommand(["SESSION.GET"]).exec(),
      /EXECABORT|wrong number of arguments/,
    );
    assert.equal(await r.sendCommand(["SESSION.EXISTS", sid]), 1);

    // The cluster client.
    const cluster = createCluster({ rootNodes: [{ url: `redis://${host}:${port}` }], RESP });
    cluster.on("error", () => {});
    await cluster.connect();
    assert.deepEqual(
      cluster.masters.map((m) => `${m.host}:${m.port}`),
      [`${host}:${port}`],
    );
    assert.deepEqual(await cluster.sendCommand(sid, false, ["SESSION.ATTR.GET", sid, "n"]), ["3"]);
    if (upstream) {
      for (let i = 0; i < 20; i++) await cluster.set(`${t}c${i}`, String(i));
      for (let i = 0; i < 20; i++) assert.equal(await cluster.get(`${t}c${i}`), String(i));
    }
    await cluster.close();
    assert.equal(await r.sendCommand(["SESSION.DEL", sid]), 1);
    await r.close();
  }

  // The client-side cache (RESP3): it turns CLIENT TRACKING on when it
  // connects, and with an upstream its cached GETs are invalidated.
  const cached = createClient({ socket: { host, port }, RESP: 3, clientSideCache: { ttl: 0, maxEntries: 0 } });
  cached.on("error", () => {});
  await cached.connect();
  const info = await cached.sendCommand(["CLIENT", "TRACKINGINFO"]);
  const flags = info instanceof Map ? info.get("flags") : info.flags;
  assert.ok([...flags].includes("on"), `tracking flags ${JSON.stringify([...flags])}`);
  const sid = await cached.sendCommand(["SESSION.CREATE", "ID", `${tag}csc`, "USER", `${tag}u`]);
  assert.equal(sid, `${tag}csc`);
  if (upstream) {
    // Several keys: in front of a cluster, they are on every master.
    const writer = createClient({ socket: { host, port } });
    await writer.connect();
    for (let i = 0; i < 6; i++) {
      const key = `${tag}cached${i}`;
      await writer.set(key, "1");
      assert.equal(await cached.get(key), "1");
      assert.equal(await cached.get(key), "1");
      await writer.set(key, "2");
      await eventually(`the cached GET of ${key} sees the write`, async () => (await cached.get(key)) === "2");
    }
    assert.ok(cached.clientSideCache.stats().hitCount >= 6, "the second GETs came from the cache");
    await writer.close();
  }
  assert.equal(await cached.sendCommand(["SESSION.DEL", sid]), 1);
  await cached.close();
}

const libraries = [
  ["ioredis5", ioredis],
  ["ioredis6", ioredis],
  ["redis5", nodeRedis],
  ["redis6", nodeRedis],
];
const ran = [];
for (const [name, check] of libraries) {
  if (!usable(name)) {
    console.log(`${name}: skipped, it needs a newer Node than ${process.versions.node}`);
    continue;
  }
  try {
    await check(name);
  } catch (error) {
    console.error(`${name} failed:`, error);
    process.exit(1);
  }
  ran.push(name);
}
assert.ok(ran.length >= 2, "at least ioredis 5 and node-redis 5 ran");
console.log(`ok: ${ran.join(" ")}`);
