// PLIC nodes in ComfyUI's editor: an upload button for PLIC Load and a readout (sizes, reports) on
// PLIC Pack / Save / Salient Regions / Caption after they run, kept in the node's properties so
// that it stays after a tab switch or a cached rerun. Logic lives in plic_format.js.
// Only the frontend's public API is used (app, api, node.addDOMWidget, widget.element), so the
// frontend ComfyUI 0.3.64 pins (1.27) and the newest (1.58, classic and Nodes 2.0) both work.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  READOUT_LABEL, READOUT_LINE, READOUT_NODES, READOUT_PROPERTY, READOUT_WIDGET, UPLOAD_NODE,
  PLIC_EXTENSION, buildUploadForm, isPlicFileName, readoutHeight, readoutText, uploadedName, withFile,
} from "./plic_format.js";

function hideFromWorkflow(widget) {
  widget.serialize = false; // not in widgets_values
  widget.options = { ...(widget.options || {}), serialize: false }; // not sent to /prompt
}

async function uploadPlic(file, node, combo) {
  if (!isPlicFileName(file.name)) throw new Error(`${file.name} is not a ${PLIC_EXTENSION} file`);
  const response = await api.fetchApi("/upload/image", { method: "POST", body: buildUploadForm(file) });
  if (response.status !== 200) throw new Error(`upload failed: ${response.status} ${response.statusText}`);
  const name = uploadedName(await response.json());
  combo.options.values = withFile(combo.options.values, name);
  combo.value = name;
  combo.callback?.(name);
  node.setDirtyCanvas?.(true, true); // show the new name now, not when the mouse next moves
}

function addUploadButton(node) {
  const combo = node.widgets.find((w) => w.name === "file");
  const picker = document.createElement("input");
  Object.assign(picker, { type: "file", accept: PLIC_EXTENSION, style: "display: none" });
  picker.onchange = async () => {
    const file = picker.files?.[0];
    picker.value = "";
    if (!file) return;
    try {
      await uploadPlic(file, node, combo);
    } catch (error) {
      alert(`PLIC Load: ${error.message}`);
    }
  };
  document.body.append(picker);
  hideFromWorkflow(node.addWidget("button", "upload .plic", null, () => picker.click()));
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    picker.remove();
    return onRemoved?.apply(this, arguments);
  };
}

/** The readout's element: its label, then the text, in the colours of the editor's own text
 * boxes (readable in every theme, classic canvas and Nodes 2.0 alike). */
function readoutElement() {
  const root = document.createElement("div");
  const label = document.createElement("div");
  const text = document.createElement("div");
  label.textContent = READOUT_LABEL;
  Object.assign(root.style, { display: "flex", flexDirection: "column", gap: "2px", width: "100%",
    height: "100%", boxSizing: "border-box" });
  Object.assign(label.style, { fontSize: "11px", lineHeight: "16px", color: "var(--descrip-text, #999)" });
  Object.assign(text.style, { flex: "1", fontSize: "12px", lineHeight: `${READOUT_LINE}px`,
    whiteSpace: "pre-wrap", overflowWrap: "anywhere", overflowY: "auto", userSelect: "text",
    color: "var(--input-text, #ddd)", background: "var(--comfy-input-bg, #222)",
    border: "1px solid var(--border-color, #4e4e4e)", borderRadius: "4px", padding: "4px 6px" });
  root.append(label, text);
  return { root, text };
}

/** Show `text` under the node's widgets (made on first use) and keep it in its properties. */
function showReadout(node, text) {
  node.properties = node.properties || {};
  node.properties[READOUT_PROPERTY] = text;
  let widget = node.widgets?.find((w) => w.name === READOUT_WIDGET);
  if (!widget) {
    const { root, text: box } = readoutElement();
    widget = node.addDOMWidget(READOUT_WIDGET, "plic_readout", root, {
      getValue: () => box.textContent,
      setValue: (value) => { box.textContent = value; },
      getMinHeight: () => readoutHeight(box.textContent, node.size[0]),
    });
    widget.label = READOUT_LABEL; // what Nodes 2.0 shows instead of the internal name
    hideFromWorkflow(widget);
  }
  widget.value = text;
  node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
}

/** What PLIC Caption's readout would only repeat: its text box, when its back end is manual. */
function echoedText(node) {
  const value = (name) => node.widgets?.find((w) => w.name === name)?.value;
  return value("backend") === "manual" ? String(value("manual_text") ?? "") : "";
}

app.registerExtension({
  name: "PLIC.Nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === UPLOAD_NODE) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        addUploadButton(this);
        return result;
      };
    }
    if (READOUT_NODES.includes(nodeData.name)) {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        // no readout is made only to repeat a text box; one there already is kept current
        const shown = this.widgets?.some((w) => w.name === READOUT_WIDGET);
        const text = readoutText(message, shown ? "" : echoedText(this));
        if (!text) return;
        // a change of the workflow (its properties), so that the editor keeps it for this tab
        app.canvas?.emitBeforeChange?.();
        showReadout(this, text);
        app.canvas?.emitAfterChange?.();
      };
      // a workflow opened again (tab switch, reload): the readout its last run left
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function (info) {
        const result = onConfigure?.apply(this, arguments);
        const kept = info?.properties?.[READOUT_PROPERTY];
        if (typeof kept === "string" && kept) showReadout(this, kept);
        return result;
      };
    }
  },
});
