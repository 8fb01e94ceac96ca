"""Bridges to other runtimes: llama.cpp control vectors, the vLLM plugin (`interop.vllm`)."""
