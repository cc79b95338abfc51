"""A tiny Django site that authproxy fronts in tests/test_django.py: identity from a header, default CSRF."""
