"""Run every cell for ONE client and print the results as one JSON line.

    python -m bench.worker CLIENT HOST PORT SPEC_JSON

``SPEC_JSON`` is ``{"seconds": s, "warmup": w, "cells": [{"workload",
"greenlets", "size"}, ...]}``. Clients that rely on blocking sockets
(pymemcache, bmemcached) get ``gevent.monkey.patch_all()`` before anything
else of theirs is imported; gcouchbase and the raw loop run unpatched, on
the hub directly. If a cell fails, the line still carries the cells done so
far plus an ``error``, and the exit status is 1.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any, Dict, List


def main(argv: List[str]) -> int:
    client, host, port, spec = argv[0], argv[1], int(argv[2]), json.loads(argv[3])

    from bench.clients import ADAPTERS  # imports nothing but typing

    cls = ADAPTERS[client]
    if cls.monkeypatch:
        from gevent import monkey

        monkey.patch_all()

    import gevent
    from gevent import monkey as _monkey

    from bench.workloads import run_cell

    out: Dict[str, Any] = {"client": client, "cells": [], "error": None,
                           "monkeypatched": bool(_monkey.is_module_patched("socket")),
                           "gevent": gevent.__version__, "loop": type(gevent.get_hub().loop).__module__}
    adapter = None
    try:
        adapter = cls(host, port)
        out["version"] = adapter.version()
        preloaded: set = set()
        for cell in spec["cells"]:
            out["cells"].append(run_cell(adapter, cell, spec["seconds"], spec["warmup"], preloaded))
    except BaseException as exc:  # noqa: B902 - reported, then the status says it failed
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
        out["traceback"] = traceback.format_exc()
    finally:
        if adapter is not None:
            try:
                adapter.close()
            except Exception as exc:  # noqa: BLE001
                out.setdefault("close_error", repr(exc))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 1 if out["error"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
