"""The HTTP routes, one module per resource; ``ROUTERS`` is what the app includes."""

from . import adapters, chat, completions, health, models

ROUTERS = [health.router, models.router, completions.router, chat.router, adapters.router]
