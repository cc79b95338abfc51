"""Test support: real loopback servers (echo upstream, proxy) and a browser-like client."""
