"""A chat page whose answers stream through :class:`~streamhop.middleware.StreamHopMiddleware`.

``python -m examples.chat`` starts ``streamhop simulate`` and this app; see ``README.md`` here.
"""
