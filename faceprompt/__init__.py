"""faceprompt: photos of a person + a text prompt -> new images of that person, no per-person fine-tuning."""

__version__ = "0.1.0"
