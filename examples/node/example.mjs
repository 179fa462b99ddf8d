// batchrelay from Node.js with plain fetch (no SDK): submit one chat request, long-poll its
// result, and receive the same result as a webhook whose signature is checked with the
// `standardwebhooks` package. Prints one JSON line with what it saw.
//
//   BATCHRELAY_URL=http://127.0.0.1:8080 BATCHRELAY_API_KEY=... \
//   BATCHRELAY_WEBHOOK_SECRET=whsec_... WEBHOOK_HOST=127.0.0.1 node example.mjs
import http from "node:http";
import { Webhook } from "standardwebhooks";

const base = process.env.BATCHRELAY_URL ?? "http://127.0.0.1:8080";
const apiKey = process.env.BATCHRELAY_API_KEY;
const secret = process.env.BATCHRELAY_WEBHOOK_SECRET;
const hookHost = process.env.WEBHOOK_HOST ?? "127.0.0.1";
const model = process.env.MODEL ?? "gpt-4o-mini";
const headers = { Authorization: `Bearer ${apiKey}`, "Content-Type": "application/json" };

async function call(method, path, body) {
  const resp = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await resp.json();
  if (resp.status >= 400) {
    // RFC 9457 problem JSON: `detail` says what was wrong
    throw new Error(`${method} ${path}: ${resp.status} ${data.detail}`);
  }
  return { status: resp.status, data };
}

// A webhook receiver: verify the signature over the raw body before trusting it.
function receiveOneWebhook() {
  let server;
  const received = new Promise((resolve, reject) => {
    server = http.createServer((req, res) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        const raw = Buffer.concat(chunks).toString("utf8");
        try {
          const payload = new Webhook(secret).verify(raw, req.headers);
          res.writeHead(200).end("ok");
          resolve(payload);
        } catch (err) {
          res.writeHead(400).end("bad signature");
          reject(err);
        }
      });
    });
  });
  return new Promise((ready) =>
    server.listen(0, hookHost, () => ready({ server, received, port: server.address().port })),
  );
}

const hook = await receiveOneWebhook();
const submitted = await call("POST", "/v1/requests", {
  endpoint: "/v1/chat/completions",
  body: { model, messages: [{ role: "user", content: "hello from node" }] },
  callback: { url: `http://${hookHost}:${hook.port}/batchrelay` },
  metadata: { from: "node" },
  idempotency_key: `node-${process.pid}-${Date.now()}`,
});
const id = submitted.data.id;

// Long-poll: each call waits up to 30 s on the server; 202 means "not final yet, ask again".
let result;
for (;;) {
  const got = await call("GET", `/v1/requests/${id}/result?wait=30`);
  if (got.status === 200) {
    result = got.data;
    break;
  }
}

const webhook = await hook.received;
hook.server.close();
console.log(
  JSON.stringify({
    id,
    status: result.status,
    content: result.response.body.choices[0].message.content,
    webhook_verified: true,
    webhook_matches_result: JSON.stringify(webhook) === JSON.stringify(result),
    tenant: webhook.tenant,
  }),
);
