"""adapterctl: improve a served LLM from user feedback through evaluated, approved, revocable LoRA adapters."""

__version__ = "0.1.0"
