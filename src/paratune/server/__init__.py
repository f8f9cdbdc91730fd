"""OpenAI-compatible HTTP server over the multi-tenant engine."""
