// Pure helpers of the PLIC web extension: no DOM, no ComfyUI imports, so node can test them.

/** Node classes that show a readout after they run (file sizes, or the node's report text such
 * as PLIC Salient Regions' "kept 1 faces ..." and PLIC Caption's prompts), and the one with an
 * upload button. */
export const READOUT_NODES = ["PlicPack", "PlicSave", "PlicSalientRegions", "PlicCaption",
  "PlicEvaluate", "PlicSameSizeCodecs"];
export const UPLOAD_NODE = "PlicLoad";
/** The readout's widget name (internal, never saved) and the label the editor shows. */
export const READOUT_WIDGET = "plic_readout";
export const READOUT_LABEL = "report";
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

/** The text a node shows after it ran: one line per file, then its report text. */
export function readoutText(message) {
  return [...parseUiPayload(message).map(formatReport), ...parseUiText(message)].join("\n");
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
