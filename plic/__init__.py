"""PLIC: pseudo-lossy image compression. The core library; imports nothing from ComfyUI.

Light to import: heavy packages (torch, diffusers, transformers) load only where used.
"""

__version__ = "0.1.0"
