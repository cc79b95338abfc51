"""`python -m authproxy` is the same program as the `authproxy` command."""

from authproxy.cli import main

raise SystemExit(main())
