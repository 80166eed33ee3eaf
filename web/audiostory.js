// AudioStory for ComfyUI: an audio player on "AudioStory Save Audio".
//
// The frontend's own audio extension (Comfy.AudioWidget) gives core SaveAudio/PreviewAudio an AUDIO_UI
// widget and fills it from the node's {"audio": [...]} UI output after a run. It keys on core class
// names, so this extension adds the same AUDIO_UI input to the AudioStory save node; the widget itself,
// and the code that loads the saved file into it, are the frontend's. The widget is not serialized, so
// saved workflows and widget values are unchanged.
import { app } from "../../scripts/app.js";

const PLAYER_NODES = ["AudioStorySaveAudio"];

app.registerExtension({
  name: "AudioStory.AudioPlayer",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PLAYER_NODES.includes(nodeData?.name)) return;
    nodeData.input = nodeData.input ?? {};
    nodeData.input.required = nodeData.input.required ?? {};
    if (!("audioUI" in nodeData.input.required)) {
      nodeData.input.required.audioUI = ["AUDIO_UI", {}];
    }
  },
});
