// PLIC nodes in ComfyUI's editor: an upload button for PLIC Load and a readout (sizes, reports) on
// PLIC Pack / Save / Salient Regions / Caption after they run. Logic lives in plic_format.js.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ComfyWidgets } from "../../scripts/widgets.js";
import {
  READOUT_NODES, UPLOAD_NODE, PLIC_EXTENSION, buildUploadForm, isPlicFileName, readoutText,
  uploadedName, withFile,
} from "./plic_format.js";

function hideFromWorkflow(widget) {
  widget.serialize = false; // not in widgets_values
  widget.options = { ...(widget.options || {}), serialize: false }; // not sent to /prompt
}

async function uploadPlic(file, combo) {
  if (!isPlicFileName(file.name)) throw new Error(`${file.name} is not a ${PLIC_EXTENSION} file`);
  const response = await api.fetchApi("/upload/image", { method: "POST", body: buildUploadForm(file) });
  if (response.status !== 200) throw new Error(`upload failed: ${response.status} ${response.statusText}`);
  const name = uploadedName(await response.json());
  combo.options.values = withFile(combo.options.values, name);
  combo.value = name;
  combo.callback?.(name);
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
      await uploadPlic(file, combo);
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

function showReadout(node, message) {
  const text = readoutText(message);
  if (!text) return;
  let widget = node.widgets?.find((w) => w.name === "plic_readout");
  if (!widget) {
    widget = ComfyWidgets.STRING(node, "plic_readout", ["STRING", { multiline: true }], app).widget;
    widget.inputEl.readOnly = true;
    widget.inputEl.style.opacity = 0.7;
    hideFromWorkflow(widget);
  }
  widget.value = text;
  node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
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
        showReadout(this, message);
      };
    }
  },
});
