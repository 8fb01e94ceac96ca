"""steerlab interop: llama.cpp GGUF control vectors (gguf.py) and the vLLM plugin."""
