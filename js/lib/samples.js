// The Train LoRA panel's sample strip: the images training sampled after each epoch (train_sample
// events, the history's `samples`), one row per epoch, one cell per LoRA weight, each cell holding
// prompts × images per prompt. Pure module: no DOM, no ComfyUI imports, no side effects on import.

// Row geometry of the strip (kept in step with .slt-sample-* in style_lora_trainer.css): the panel
// grows by up to MAX_VISIBLE_ROWS rows, more scroll.
export const SAMPLE_THUMB = 56;
export const SAMPLE_ROW_HEIGHT = SAMPLE_THUMB + 22;
export const MAX_VISIBLE_ROWS = 2;
const STRIP_CHROME = 22; // the strip's title line

/** "base" for epoch 0 (the model before training), else "epoch N". */
export function epochLabel(epoch) {
  return Number(epoch) === 0 ? "base" : `epoch ${epoch}`;
}

/** "w 0.8", "w 1.0"; "base" for the base model's cell (weight null). */
export function weightLabel(weight) {
  if (weight === null || weight === undefined || !Number.isFinite(Number(weight))) return "base";
  const w = Number(weight);
  return `w ${Number.isInteger(w) ? w.toFixed(1) : String(Number(w.toPrecision(4)))}`;
}

/**
 * The prompt image ``index`` of a cell of ``count`` images was sampled from: the images are
 * prompt-major (all of prompt 0's images, then prompt 1's...). "" when it cannot be told.
 */
export function imagePrompt(prompts, index, count) {
  if (!prompts?.length || !(count > 0)) return "";
  if (count % prompts.length !== 0) return prompts.length === 1 ? prompts[0] : "";
  const perPrompt = count / prompts.length;
  return prompts[Math.floor(index / perPrompt)] ?? "";
}

/**
 * The strip's rows, newest epoch first (the base model last): [{epoch, label, title, cells:
 * [{weight, label, images: [{ref, prompt, alt}]}]}]. ``title`` tells the sampling time.
 */
export function sampleRows(samples) {
  return [...(samples ?? [])].sort((a, b) => b.epoch - a.epoch).map((sample) => {
    const label = epochLabel(sample.epoch);
    const seconds = Number.isFinite(sample.seconds) ? ` · sampled in ${sample.seconds.toFixed(1)} s` : "";
    return {
      epoch: sample.epoch,
      label,
      title: `${label}${seconds}`,
      cells: sample.cells.map((cell) => {
        const cellLabel = sample.epoch === 0 && (cell.weight === null || cell.weight === undefined) ? "base" : weightLabel(cell.weight);
        return {
          weight: cell.weight,
          label: cellLabel,
          images: cell.images.map((ref, i) => {
            const prompt = imagePrompt(sample.prompts, i, cell.images.length);
            return { ref, prompt, alt: `${label}, ${cellLabel}${prompt ? `: ${prompt}` : ""}` };
          }),
        };
      }),
    };
  });
}

/** How much taller the panel gets for ``rowCount`` sampled epochs (0 when there are none). */
export function stripHeight(rowCount) {
  if (!(rowCount > 0)) return 0;
  return STRIP_CHROME + Math.min(rowCount, MAX_VISIBLE_ROWS) * SAMPLE_ROW_HEIGHT;
}

/** A string that changes exactly when what the strip shows changes (so it is rebuilt only then). */
export function samplesKey(samples) {
  return JSON.stringify((samples ?? []).map((s) => [s.epoch, s.seconds, s.prompts, s.cells]));
}
