"""``python -m streamhop.sidecar.simulate``: the simulator without the ``streamhop`` front end."""

from __future__ import annotations

from streamhop.sidecar.simulate.cli import main

raise SystemExit(main())
