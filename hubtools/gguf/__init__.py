"""GGUF releases: export from native or HF checkpoints, quantize, verify (llama.cpp's conventions)."""
