"""LoRA adapter files: where they may come from, what they must hold, and which are loaded."""
