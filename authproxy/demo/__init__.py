"""`authproxy demo`: the fake CentralAuth, a small "whoami" app and the proxy, together on localhost."""

from authproxy.demo.run import Demo, start_demo

__all__ = ["Demo", "start_demo"]
