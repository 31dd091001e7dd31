"""The model files and the llama-server binary on this machine: find, fetch, check, read, build."""
