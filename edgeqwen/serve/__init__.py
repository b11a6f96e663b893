"""Foundry Local-style OpenAI-compatible local server."""
