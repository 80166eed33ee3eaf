"""AudioStory as a plain PyTorch library (no ComfyUI imports): load, plan, tokens, sample, decode."""
from .models.config import ModelPaths, locate
from .errors import (AudioStoryError, GenerationInterrupted, InputError, ModelFilesError, PlanError,
                     WeightsMismatchError)
from .progress import Hooks

__all__ = ["ModelPaths", "locate", "AudioStoryError", "GenerationInterrupted", "InputError", "ModelFilesError",
           "PlanError", "WeightsMismatchError", "Hooks", "AudioStoryPipeline", "StoryPlan"]
__version__ = "0.1.0"


def __getattr__(name):  # heavy imports only when used
    if name == "AudioStoryPipeline":
        from .pipeline import AudioStoryPipeline
        return AudioStoryPipeline
    if name == "StoryPlan":
        from .stages.plan import StoryPlan
        return StoryPlan
    raise AttributeError(name)
