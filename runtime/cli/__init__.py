"""Layer 4a: the tumor-infer and tumor-serve commands: argument parsing and terminal output."""
