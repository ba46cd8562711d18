// js/lib/api.js: the /style_lora/* routes over a stand-in for ComfyUI's api object.
import { test } from "node:test";
import assert from "node:assert/strict";

import { createServerApi, LISTING_TTL_MS, THUMB_SIZE } from "../../js/lib/api.js";

function fakeApi(answer) {
  const calls = [];
  return {
    calls,
    async fetchApi(path, init) {
      calls.push({ path, init });
      return answer(path, init);
    },
    apiURL: (path) => `/api${path}`,
  };
}
const reply = (status, json) => ({ ok: status >= 200 && status < 300, status, json: async () => {
  if (json === undefined) throw new SyntaxError("no json");
  return json;
} });

test("fetchJson never throws: ok answers, server errors, missing routes, no JSON, no server", async () => {
  let next = () => reply(200, { a: 1 });
  const server = createServerApi(fakeApi((...args) => next(...args)));
  assert.deepEqual(await server.fetchJson("/style_lora/x"), { ok: true, status: 200, data: { a: 1 }, error: null });
  next = () => reply(400, { error: "bad folder" });
  assert.deepEqual(await server.fetchJson("/style_lora/x?folder=a"), { ok: false, status: 400, data: { error: "bad folder" },
    error: "bad folder" });
  next = () => reply(404);
  const missing = await server.fetchJson("/style_lora/dataset?folder=a");
  assert.equal(missing.status, 404);
  assert.match(missing.error, /^\/style_lora\/dataset answered 404: the Style LoRA Trainer server routes are missing/);
  next = () => reply(502);
  assert.equal((await server.fetchJson("/style_lora/lint")).error, "/style_lora/lint answered HTTP 502.");
  next = () => {
    throw new TypeError("Failed to fetch");
  };
  assert.deepEqual(await server.fetchJson("/style_lora/lint"), { ok: false, status: 0, data: null,
    error: "Could not reach the ComfyUI server: Failed to fetch" });
});

test("route wrappers send what the server expects", async () => {
  const api = fakeApi(() => reply(200, {}));
  const server = createServerApi(api);
  await server.lint(["a"]);
  await server.saveCaptions({ folder: "f", caption_extension: ".txt", captions: { "a.png": "x" } });
  await server.shufflePreview({ captions: ["a"], enabled: true, separator: ",", keep_tokens: 1, seed: 0, count: 3 });
  await server.training("7");
  const posts = api.calls.filter((c) => c.init?.method === "POST");
  assert.deepEqual(posts.map((c) => [c.path, JSON.parse(c.init.body)]), [
    ["/style_lora/lint", { captions: ["a"] }],
    ["/style_lora/captions", { folder: "f", caption_extension: ".txt", captions: { "a.png": "x" } }],
    ["/style_lora/shuffle_preview", { captions: ["a"], enabled: true, separator: ",", keep_tokens: 1, seed: 0, count: 3 }],
  ]);
  for (const c of posts) assert.deepEqual(c.init.headers, { "Content-Type": "application/json" });
  assert.equal(api.calls.at(-1).path, "/style_lora/training?node=7");
  assert.equal(api.calls.at(-1).init, undefined);
  assert.equal(server.thumbnailUrl("my set", "a b.png", 3),
    `/api/style_lora/thumbnail?folder=my+set&file=a+b.png&size=${THUMB_SIZE}&v=3`);
});

test("dataset listings are shared for a few seconds, per folder and caption extension", async (t) => {
  t.mock.timers.enable({ apis: ["Date"], now: 1_000_000 });
  const api = fakeApi(() => reply(200, { items: [] }));
  const server = createServerApi(api);
  const first = server.datasetListing("a", ".txt");
  assert.equal(server.datasetListing("a", ".txt"), first);
  assert.equal(api.calls[0].path, "/style_lora/dataset?folder=a&caption_extension=.txt");
  server.datasetListing("a", ".caption");
  server.datasetListing("b", ".txt");
  assert.equal(api.calls.length, 3);
  assert.notEqual(server.datasetListing("a", ".txt", { fresh: true }), first);
  assert.equal(api.calls.length, 4);
  t.mock.timers.tick(LISTING_TTL_MS);
  server.datasetListing("a", ".txt");
  assert.equal(api.calls.length, 5);
  const cached = server.datasetListing("b", ".txt"); // expired too: read again
  assert.equal(api.calls.length, 6);
  server.clearListings();
  assert.notEqual(server.datasetListing("b", ".txt"), cached);
  assert.equal(api.calls.length, 7);
  // Two servers do not share a cache.
  const other = createServerApi(api);
  other.datasetListing("b", ".txt");
  assert.equal(api.calls.length, 8);
});

test("viewUrl: ComfyUI's /view URL of a saved image ref, through api.apiURL", () => {
  const server = createServerApi(fakeApi(() => reply(200, {})));
  assert.equal(server.viewUrl({ filename: "s 1.png", subfolder: "style_lora/run&1", type: "temp" }),
    "/api/view?filename=s+1.png&subfolder=style_lora%2Frun%261&type=temp");
  assert.equal(server.viewUrl({ filename: "g.png" }), "/api/view?filename=g.png&subfolder=&type=temp");
});
