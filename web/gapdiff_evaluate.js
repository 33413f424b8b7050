// Shows the summary of Evaluate Protection (GAP-Diff) on the node: ComfyUI sends it as the node's ui.text after
// each run. A read-only text box, as the frontend's own Preview Any node does; it is not saved in workflows.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODE = "GAPDiffEvaluateProtection";
const WIDGET = "gapdiff_summary";

app.registerExtension({
  name: "GAPDiff.EvaluateSummary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      onNodeCreated?.apply(this, arguments);
      const widget = ComfyWidgets.STRING(this, WIDGET, ["STRING", { multiline: true }], app).widget;
      widget.element.readOnly = true;
      widget.element.placeholder = "The evaluation summary appears here after a run.";
      widget.serialize = false;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const widget = this.widgets?.find((w) => w.name === WIDGET);
      if (widget && message?.text) widget.value = message.text.join("\n");
    };
  },
});
