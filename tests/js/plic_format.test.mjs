// Unit tests of web/plic_format.js (run by tests/test_web.py with `node --test`).
import test from "node:test";
import assert from "node:assert/strict";
import {
  READOUT_LINE, buildUploadForm, formatBytes, formatReport, isPlicFileName, parseUiPayload, parseUiText,
  readoutHeight, readoutText, uploadedName, withFile,
} from "../../web/plic_format.js";

test("formatBytes picks a readable unit", () => {
  assert.equal(formatBytes(812), "812 B");
  assert.equal(formatBytes(7318), "7.1 KB");
  assert.equal(formatBytes(2.5 * 1024 * 1024), "2.5 MB");
  assert.equal(formatBytes(undefined), "?");
});

test("formatReport shows bytes, bpp and ratio, and the file when saved", () => {
  assert.equal(formatReport({ bytes: 7318, bpp: 0.22332763671875, ratio: 107.465 }),
    "7.1 KB · 0.2233 bpp · 1:107");
  assert.equal(formatReport({ filename: "PLIC_00001_.plic", bytes: 900 }), "PLIC_00001_.plic: 900 B");
});

test("parseUiPayload keeps only well-formed reports", () => {
  const message = { plic: [{ bytes: 10, bpp: 1, ratio: 2 }, null, { bytes: "x" }, "junk"] };
  assert.deepEqual(parseUiPayload(message), [{ bytes: 10, bpp: 1, ratio: 2 }]);
  assert.deepEqual(parseUiPayload(undefined), []);
  assert.deepEqual(parseUiPayload({ images: [] }), []);
});

test("readoutText has one line per file", () => {
  const message = { plic: [
    { filename: "a_00001_.plic", bytes: 2048, bpp: 0.5, ratio: 48 },
    { filename: "a_00002_.plic", bytes: 100, bpp: 0.25, ratio: 96.4 },
  ] };
  assert.equal(readoutText(message),
    "a_00001_.plic: 2.0 KB · 0.5000 bpp · 1:48\na_00002_.plic: 100 B · 0.2500 bpp · 1:96");
});

test("readoutText shows a node's report text after its file lines", () => {
  assert.deepEqual(parseUiText({ text: ["kept 1 faces", "", 3, null] }), ["kept 1 faces"]);
  assert.deepEqual(parseUiText({ images: [] }), []);
  assert.equal(readoutText({ text: ["image 1: salient: kept 1 faces\nsalient: faces skipped"] }),
    "image 1: salient: kept 1 faces\nsalient: faces skipped");
  assert.equal(readoutText({ plic: [{ bytes: 900 }], text: ["a boat"] }), "900 B\na boat");
  assert.equal(readoutText({}), "");
});

test("readoutText leaves out what only repeats PLIC Caption's own text box", () => {
  assert.equal(readoutText({ text: ["a boat at dusk"] }, " a boat at dusk\n"), "");
  assert.equal(readoutText({ text: ["a boat at", "a boat at dusk"] }, "a boat at dusk"), "a boat at");
  assert.equal(readoutText({ text: ["a boat at dusk"] }, ""), "a boat at dusk");
});

test("readoutHeight gives every line its row, wrapped lines included, up to a limit", () => {
  const one = readoutHeight("900 B", 300);
  assert.equal(readoutHeight("a\nb\nc", 300) - one, 2 * READOUT_LINE);
  assert.equal(readoutHeight("x".repeat(100), 300) - one, 2 * READOUT_LINE); // 37 characters a row
  assert.equal(readoutHeight("x".repeat(100), 800), one);
  assert.equal(readoutHeight("a\n".repeat(100), 300), readoutHeight("a\n".repeat(15), 300));
});

test("buildUploadForm posts the file to the input folder", async () => {
  const file = new File([new Uint8Array([0x89, 0x50])], "photo.plic");
  const form = buildUploadForm(file);
  assert.equal(form.get("type"), "input");
  assert.equal(form.get("overwrite"), "false");
  assert.equal(form.get("image").name, "photo.plic");
  assert.deepEqual([...new Uint8Array(await form.get("image").arrayBuffer())], [0x89, 0x50]);
});

test("uploadedName and withFile refresh the file list", () => {
  assert.equal(uploadedName({ name: "a.plic", subfolder: "", type: "input" }), "a.plic");
  assert.equal(uploadedName({ name: "a.plic", subfolder: "sub", type: "input" }), "sub/a.plic");
  assert.throws(() => uploadedName({ error: "x" }), /names no file/);
  assert.deepEqual(withFile(["b.plic"], "a.plic"), ["a.plic", "b.plic"]);
  assert.deepEqual(withFile(["a.plic"], "a.plic"), ["a.plic"]);
});

test("isPlicFileName accepts only .plic files", () => {
  assert.ok(isPlicFileName("x.PLIC"));
  assert.ok(!isPlicFileName("x.png"));
  assert.ok(!isPlicFileName(null));
});
