// BullMQ peer for scripts/bench/ratios.py (benchmark only; `npm install` in this folder).
//
//   REDIS_PORT=N node bullmq_bench.js add TOTAL PER_CALL PARALLEL
//       addBulk TOTAL jobs onto queue "bench", PER_CALL per call, PARALLEL calls in flight;
//       prints {"jobs":..,"seconds":..} on stdout.
//   REDIS_PORT=N node bullmq_bench.js work TOTAL CONCURRENCY
//       one Worker (this one process) on queue "bench"; once TOTAL jobs have completed it
//       prints {"jobs":..,"seconds":..}: the time from the first job's start to the TOTAL-th
//       "completed" event, then closes.
//   node bullmq_bench.js version
//
// Jobs carry the same payload as zizq's benchmark jobs ({n: 1}) and `removeOnComplete: true`:
// zizq removes a completed job at once by default (--default-completed-job-retention 0), and
// Sidekiq's fetch removes it from Redis.
"use strict";

const { performance } = require("node:perf_hooks");

function connection() {
  return { host: "127.0.0.1", port: Number(process.env.REDIS_PORT), maxRetriesPerRequest: null };
}

async function add(total, perCall, parallel) {
  const { Queue } = require("bullmq");
  const queue = new Queue("bench", { connection: connection() });
  await queue.waitUntilReady();
  const jobs = Array.from({ length: perCall }, () => ({
    name: "bench",
    data: { n: 1 },
    opts: { removeOnComplete: true },
  }));
  const calls = Math.floor(total / perCall);
  let taken = 0;
  const started = performance.now();
  async function loop() {
    while (taken < calls) {
      taken += 1;
      const added = await queue.addBulk(jobs);
      if (added.length !== perCall) throw new Error(`addBulk added ${added.length}`);
    }
  }
  await Promise.all(Array.from({ length: parallel }, loop));
  const seconds = (performance.now() - started) / 1000;
  await queue.close();
  console.log(JSON.stringify({ jobs: calls * perCall, seconds }));
}

async function work(total, concurrency) {
  const { Worker } = require("bullmq");
  let first = null;
  let done = 0;
  let resolveDone;
  const finished = new Promise((resolve) => {
    resolveDone = resolve;
  });
  const worker = new Worker(
    "bench",
    async () => {
      if (first === null) first = performance.now();
    },
    { connection: connection(), concurrency, autorun: false },
  );
  worker.on("completed", () => {
    done += 1;
    if (done === total) resolveDone(performance.now());
  });
  worker.on("error", (err) => {
    console.error(err);
    process.exit(2);
  });
  worker.run();
  const end = await finished;
  console.log(JSON.stringify({ jobs: done, seconds: (end - first) / 1000 }));
  await worker.close(true);
}

function version() {
  const bullmq = require("bullmq/package.json").version;
  const ioredis = require("ioredis/package.json").version;
  console.log(JSON.stringify({ bullmq, ioredis, node: process.versions.node }));
}

async function main() {
  const [mode, ...rest] = process.argv.slice(2);
  const nums = rest.map(Number);
  if (mode === "add") await add(nums[0], nums[1], nums[2]);
  else if (mode === "work") await work(nums[0], nums[1]);
  else if (mode === "version") version();
  else throw new Error("usage: node bullmq_bench.js add TOTAL PER PARALLEL | work TOTAL CONC | version");
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
