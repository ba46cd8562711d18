// The pack's /style_lora/* routes (described in docs/CANVAS.md), over ComfyUI's `api` object, which
// the extension entry passes in: createServerApi(api). No side effects on import; the dataset
// listing cache belongs to the object created.

export const LISTING_TTL_MS = 4000;
export const THUMB_SIZE = 160;

export function createServerApi(api) {
  /** fetch through ComfyUI's api; never throws: {ok, status, data, error}. */
  async function fetchJson(path, init) {
    try {
      const response = await api.fetchApi(path, init);
      let data = null;
      try {
        data = await response.json();
      } catch {
        data = null;
      }
      if (!response.ok) {
        const error = data?.error ?? (response.status === 404
          ? `${path.split("?")[0]} answered 404: the Style LoRA Trainer server routes are missing (restart ComfyUI after installing or updating the pack).`
          : `${path.split("?")[0]} answered HTTP ${response.status}.`);
        return { ok: false, status: response.status, data, error };
      }
      return { ok: true, status: response.status, data, error: null };
    } catch (error) {
      return { ok: false, status: 0, data: null, error: `Could not reach the ComfyUI server: ${error?.message ?? error}` };
    }
  }

  function postJson(path, body) {
    return fetchJson(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }

  const listingCache = new Map(); // "folder\next" -> {time, promise}

  return {
    fetchJson,
    postJson,

    /** GET /style_lora/dataset, shared by the panels for a few seconds (unless ``fresh``). */
    datasetListing(folder, captionExtension, { fresh = false } = {}) {
      const key = `${folder}\n${captionExtension}`;
      const cached = listingCache.get(key);
      if (!fresh && cached && Date.now() - cached.time < LISTING_TTL_MS) return cached.promise;
      const query = new URLSearchParams({ folder, caption_extension: captionExtension });
      const promise = fetchJson(`/style_lora/dataset?${query}`);
      const now = Date.now();
      for (const [other, entry] of listingCache) if (now - entry.time >= LISTING_TTL_MS) listingCache.delete(other);
      listingCache.set(key, { time: now, promise });
      return promise;
    },

    /** Forget every cached listing (after captions were written). */
    clearListings() {
      listingCache.clear();
    },

    /** The URL of GET /style_lora/thumbnail (an <img> src). */
    thumbnailUrl(folder, file, version) {
      const query = new URLSearchParams({ folder, file, size: String(THUMB_SIZE), v: String(version) });
      return api.apiURL(`/style_lora/thumbnail?${query}`);
    },

    /**
     * ComfyUI's GET /view URL of an image the server saved ({filename, subfolder, type}: a
     * train_sample image, the grid of Epoch × Weight Grid), for an <img> src.
     */
    viewUrl(ref) {
      const query = new URLSearchParams({ filename: String(ref?.filename ?? ""), subfolder: String(ref?.subfolder ?? ""),
        type: String(ref?.type ?? "temp") });
      return api.apiURL(`/view?${query}`);
    },

    /** POST /style_lora/captions: {folder, caption_extension, captions: {file: text}}. */
    saveCaptions(body) {
      return postJson("/style_lora/captions", body);
    },

    /** POST /style_lora/lint: {captions: [text]}. */
    lint(captions) {
      return postJson("/style_lora/lint", { captions });
    },

    /** POST /style_lora/shuffle_preview: {captions, enabled, separator, keep_tokens, seed, count}. */
    shufflePreview(body) {
      return postJson("/style_lora/shuffle_preview", body);
    },

    /** POST /style_lora/plan: the pre-flight plan of a Train node's chain (lib/plan.js planRequest); measure: the warm-up. */
    plan(body, { measure = false } = {}) {
      return postJson("/style_lora/plan", { ...body, measure });
    },

    /** GET /style_lora/training?node=…: a Train node's history. */
    training(node) {
      const query = new URLSearchParams({ node });
      return fetchJson(`/style_lora/training?${query}`);
    },
  };
}
