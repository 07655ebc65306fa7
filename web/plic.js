// PLIC nodes in ComfyUI's editor: an upload button for PLIC Load and a readout (sizes, reports) on
// PLIC Pack / Save / Salient Regions / Caption after they run. Logic lives in plic_format.js.
// Only the frontend's public API is used (app, api, node.addDOMWidget, widget.element), so the
// frontend ComfyUI 0.3.64 pins (1.27) and the newest (1.58, classic and Nodes 2.0) both work.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  READOUT_LABEL, READOUT_NODES, READOUT_WIDGET, UPLOAD_NODE, PLIC_EXTENSION, buildUploadForm,
  isPlicFileName, readoutText, uploadedName, withFile,
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

function showReadout(node, message) {
  const text = readoutText(message);
  if (!text) return;
  let widget = node.widgets?.find((w) => w.name === READOUT_WIDGET);
  if (!widget) {
    const box = document.createElement("textarea");
    Object.assign(box, { readOnly: true, rows: 3 });
    Object.assign(box.style, { width: "100%", opacity: 0.7, resize: "none", fontSize: "11px" });
    widget = node.addDOMWidget(READOUT_WIDGET, "plic_readout", box, {
      getValue: () => box.value,
      setValue: (value) => { box.value = value; },
      getMinHeight: () => 60,
    });
    widget.label = READOUT_LABEL; // what Nodes 2.0 shows instead of the internal name
    hideFromWorkflow(widget);
  }
  widget.value = text;
  node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
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
