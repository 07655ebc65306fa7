// Pure helpers of the PLIC web extension: no DOM, no ComfyUI imports, so node can test them.

/** Node classes that show a readout after they run (file sizes, or the node's report text such
 * as PLIC Salient Regions' "kept 1 faces ..." and PLIC Caption's prompts), and the one with an
 * upload button. */
export const READOUT_NODES = ["PlicPack", "PlicSave", "PlicSalientRegions", "PlicCaption",
  "PlicEvaluate", "PlicSameSizeCodecs"];
export const UPLOAD_NODE = "PlicLoad";
/** The readout's widget name (internal, never saved as a widget value), the label it shows, and
 * the node property that keeps its text in the workflow, so that it survives a tab switch, a
 * reload and a rerun where ComfyUI's cache skips the node. */
export const READOUT_WIDGET = "plic_readout";
export const READOUT_LABEL = "report";
export const READOUT_PROPERTY = "plic_readout";
/** The readout's text metrics (px): line height, width of a character, and its most lines shown
 * before it scrolls. */
export const READOUT_LINE = 16;
const READOUT_CHAR = 7.5;
const READOUT_MAX_LINES = 16;
export const PLIC_EXTENSION = ".plic";

/** "812 B", "7.1 KB", "2.4 MB". */
export function formatBytes(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return "?";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

/** One line for one file: "7.1 KB · 0.2233 bpp · 1:107" (ratio to the uncompressed original). */
export function formatReport(report) {
  const parts = [formatBytes(report.bytes)];
  if (Number.isFinite(report.bpp)) parts.push(`${report.bpp.toFixed(4)} bpp`);
  if (Number.isFinite(report.ratio)) parts.push(`1:${Math.round(report.ratio)}`);
  const line = parts.join(" · ");
  return report.filename ? `${report.filename}: ${line}` : line;
}

/** The reports in a node's {"ui": {"plic": [...]}} output as ComfyUI hands it to onExecuted. */
export function parseUiPayload(message) {
  const items = message && Array.isArray(message.plic) ? message.plic : [];
  return items.filter((item) => item && typeof item === "object" && Number.isFinite(item.bytes));
}

/** The non-empty strings of a node's {"ui": {"text": [...]}} output. */
export function parseUiText(message) {
  const items = message && Array.isArray(message.text) ? message.text : [];
  return items.filter((item) => typeof item === "string" && item.trim() !== "");
}

/** The text a node shows after it ran: one line per file, then its report text, less the lines
 * that only repeat `echoed` (PLIC Caption's own text box, when its back end is manual). */
export function readoutText(message, echoed = "") {
  const text = parseUiText(message).filter((line) => !echoed.trim() || line.trim() !== echoed.trim());
  return [...parseUiPayload(message).map(formatReport), ...text].join("\n");
}

/** The readout's height (px) for `text` in a box `width` px wide: its label, then every line
 * as wrapped, up to READOUT_MAX_LINES. */
export function readoutHeight(text, width) {
  const perLine = Math.max(10, Math.floor((width - 16) / READOUT_CHAR));
  const lines = String(text).split("\n").reduce((sum, line) => sum + Math.max(1, Math.ceil(line.length / perLine)), 0);
  return 20 + 16 + READOUT_LINE * Math.min(lines, READOUT_MAX_LINES);
}

/** Whether a chosen file is a .plic file. */
export function isPlicFileName(name) {
  return typeof name === "string" && name.toLowerCase().endsWith(PLIC_EXTENSION);
}

/** The body of POST /upload/image that puts `file` into ComfyUI's input folder. */
export function buildUploadForm(file, FormDataClass = FormData) {
  const form = new FormDataClass();
  form.append("image", file, file.name);
  form.append("type", "input");
  form.append("overwrite", "false"); // as everywhere in the pack: never replace a file
  return form;
}

/** The name to select in PLIC Load's list for the JSON reply of /upload/image. */
export function uploadedName(reply) {
  if (!reply || typeof reply.name !== "string") throw new Error("the upload reply names no file");
  return reply.subfolder ? `${reply.subfolder}/${reply.name}` : reply.name;
}

/** `values` with `name` added once, sorted as the server lists them. */
export function withFile(values, name) {
  return values.includes(name) ? [...values] : [...values, name].sort();
}
