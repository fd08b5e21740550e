"""The embedding service: the champion encoder behind FastAPI + uvicorn (``python -m service``).

See :func:`service.app.create_app` for the app and :mod:`service.settings` for its configuration.
"""
