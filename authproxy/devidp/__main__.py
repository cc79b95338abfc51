"""`python -m authproxy.devidp`: the fake CentralAuth server."""

from .cli import main

raise SystemExit(main())
