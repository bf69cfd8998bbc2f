"""The llama.cpp side: the only modules that call llama.cpp (through llama-cpp-python's low-level API)."""
