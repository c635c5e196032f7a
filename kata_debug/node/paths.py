"""Where kata-debug keeps its own state on a node, as node paths (resolve them in a host root).

The node agent writes the span spool and `collect` packs it; both default to the same place,
so the path is declared once, here, in the lowest layer every command and the agent can read.
"""

from __future__ import annotations

#: The node agent's span spool (OTLP/JSON lines, size-capped and rotated by the agent).
TRACE_SPOOL_DIR = "/var/lib/kata-debug/traces"

#: Where the node agent keeps capture bundles of failed sandboxes, inside the span spool dir.
CAPTURES_SUBDIR = "captures"
