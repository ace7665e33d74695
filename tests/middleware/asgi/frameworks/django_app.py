"""The chat endpoint in Django (async view, ``StreamingHttpResponse`` over an async generator),
configured in-process with ``settings.configure`` and wrapped in ``asgi.py`` style:
``application = StreamHopMiddleware(get_asgi_application())``.

Django sends its response headers capitalised (``Content-Type``), and runs the view in a child
task that it cancels itself when ``receive()`` says ``http.disconnect``.
"""

from __future__ import annotations

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="streamhop-tests-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    USE_TZ=True,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402  (after settings)
from django.http import HttpRequest, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from streamhop.middleware import StreamHopMiddleware  # noqa: E402

from .common import MIDDLEWARE_OPTIONS, Dispatch, StreamArgs, sse_chunks  # noqa: E402


async def chat(request: HttpRequest) -> StreamingHttpResponse:
    args = StreamArgs.from_query(request.GET)
    return StreamingHttpResponse(sse_chunks(args), content_type="text/event-stream")


urlpatterns = [path("chat", chat)]

application = StreamHopMiddleware(get_asgi_application(), **MIDDLEWARE_OPTIONS)
app = Dispatch(application, get_asgi_application())
