"""AudioStory for ComfyUI: long-form narrative audio (LLM plan -> event tokens -> flow DiT -> Oobleck VAE).

ComfyUI V3 entry point. The nodes are thin adapters over ``audiostory_core`` (plain PyTorch,
usable without ComfyUI: ``python -m audiostory_core generate ...``).
"""
WEB_DIRECTORY = "./web"   # frontend extensions: the audio player on AudioStorySaveAudio, the model download dialog

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # imported outside ComfyUI (e.g. pytest collecting the repository as a package)
    ComfyExtension = None

if ComfyExtension is not None:
    from .nodes import load_nodes
    from .install_examples import install_into_comfyui_input

    install_into_comfyui_input()   # example media for the shipped workflows, copied into input/ if missing
    try:
        from .nodes.download_routes import register_routes

        register_routes()          # GET /audiostory/models, POST /audiostory/models/download (the UI's dialog)
    except Exception:  # the nodes still load; the menu's dialog then reports the missing route
        import logging

        logging.getLogger("AudioStory").exception("AudioStory: the model download routes failed to register")

    class AudioStoryExtension(ComfyExtension):
        async def get_node_list(self):
            return load_nodes()

    async def comfy_entrypoint() -> AudioStoryExtension:
        return AudioStoryExtension()

    __all__ = ["comfy_entrypoint"]
