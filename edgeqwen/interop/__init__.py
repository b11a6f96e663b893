"""Checks of edgeqwen artifacts in other runtimes (run in their own environments)."""
