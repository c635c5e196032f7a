"""The `kata-debug` command line: one module per command, plus the option types they share.

Every module here only parses options, checks their combinations, calls the library and
prints; the work lives in the subpackages beside this one (collect, cluster, sizing,
forwarder, agent, upload). Each command module has a `register(app)` that `app` calls,
and imports its library lazily, so `kata-debug --help` and an option error stay fast.

    app.py         the `kata-debug` application, `collect` and `collectors`, and `main`
                   (every error becomes one line and an exit code, never a traceback)
    cluster.py     `collect --cluster`: per-node progress and the cluster summary
    limits.py      `limits`: the VM each Kata workload gets; `--fix`
    node_agent.py  `node-agent`: the DaemonSet's long-running process
    captures.py    `captures`: list and export the node agent's capture bundles
    trace.py       `trace decode` and `forward`: agent traces to OpenTelemetry
    upload.py      `upload`, and the upload step of `collect --upload`
    options.py     shared option parsing: durations, sizes, "was this option given"
    coercion.py    option values converted without pydantic (typer's own way imports it)
    progress.py    the collectors' progress display on a terminal

Exit codes: 0 success, 1 findings or a failure the output explains, 2 bad input (the
message names the input), 130 interrupted.
"""
