"""The parity harness: every backend against PyTorch, where they part, and accuracy on labelled data."""
