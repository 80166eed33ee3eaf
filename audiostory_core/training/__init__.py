"""Fine-tuning on one's own sounds: datasets, the flow-matching objective, LoRA files and the training loop.

Training needs ``peft`` (``pip install .[train]``); applying a saved LoRA (:mod:`.lora_files`) does not.
"""
