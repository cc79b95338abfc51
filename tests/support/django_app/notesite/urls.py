"""Two pages: the greeting with the note form, and the form's POST target."""

from __future__ import annotations

from django.urls import path

from notesite import views

urlpatterns = [
    path("", views.home, name="home"),
    path("note", views.note, name="note"),
]
