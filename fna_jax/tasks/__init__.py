"""Task losses and metrics."""
