"""A small async Kubernetes API session: kubeconfig loading, JSON GETs by path, log streams.

Built on the official client's asyncio flavour (`kubernetes.aio`) so authentication (tokens,
client certificates, exec plugins), TLS and proxies behave exactly like the client everyone
else uses. Objects are read as raw JSON by API path instead of through the generated models:
the bundle must hold the objects as the API server returned them (unknown fields included),
and deserialising thousands of pods into models only to serialise them again is slow.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes.aio.client import ApiClient, Configuration
from kubernetes.aio.config import ConfigException, load_incluster_config
from kubernetes.aio.config.kube_config import KubeConfigLoader, KubeConfigMerger
from kubernetes.aio.stream import WsApiClient

from kata_debug.errors import UsageError

_AUTH = ["BearerToken"]
PAGE = 500


class KubeError(Exception):
    """An API request failed; `status` is the HTTP status (0 when no response arrived)."""

    def __init__(self, status: int, path: str, message: str) -> None:
        super().__init__(f"{path}: HTTP {status}: {message}" if status else f"{path}: {message}")
        self.status = status
        self.path = path
        self.message = message


@dataclass(frozen=True)
class KubeTarget:
    """Where the session points, for the manifest and messages."""

    context: str | None
    server: str
    namespace: str | None = None  # the context's default namespace, if it sets one


def _status_message(body: bytes, fallback: str) -> str:
    """The `message` of a Kubernetes `Status` body, else the HTTP reason."""
    try:
        status = json.loads(body)
    except ValueError:
        return fallback
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return status["message"]
    return fallback


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line (the client's and PyYAML's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, on one line: `(line 2): expected the node content, but found '<stream end>'`."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"(line {exc.problem_mark.line + 1}): {exc.problem or exc.context or 'syntax error'}"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"(byte {exc.position}): not UTF-8 text"
    return f": {_one_line(exc)}"


_NAMED_LISTS = ("clusters", "contexts", "users")


def check_kubeconfig(path: Path, label: str) -> None:
    """Raise UsageError (one line, naming `label`) unless `path` is a loadable kubeconfig file.

    Only the shape the client's merger relies on is checked: a YAML mapping whose clusters,
    contexts and users are lists of named mappings. Everything else (unknown context, missing
    server) is left to the client, whose messages are already one line.
    """
    if path.is_dir():
        raise UsageError(f"{label}: is a directory")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{label}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{label}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise UsageError(f"{label}: not valid YAML {_yaml_problem(exc)}") from None
    if doc is None:
        raise UsageError(f"{label}: empty")
    if not isinstance(doc, dict):
        raise UsageError(f"{label}: not a kubeconfig (a YAML mapping with clusters, contexts and users expected)")
    for key in _NAMED_LISTS:
        entries = doc.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries
        ):
            raise UsageError(f"{label}: {key}: a list of entries with a name expected")


def check_kubeconfig_files(files: Sequence[str], explicit: bool, source: str) -> list[str]:
    """The kubeconfig files to merge, each checked (blocking: run it in a thread).

    An explicit --kubeconfig must exist; entries of $KUBECONFIG that do not exist are skipped,
    as kubectl skips them.
    """
    present: list[str] = []
    for name in files:
        path = Path(name).expanduser()
        label = f"--kubeconfig {name}" if explicit else f"{source} {name}"
        if not explicit and not os.path.lexists(path):
            continue
        check_kubeconfig(path, label)
        present.append(str(path))
    return present


class KubeSession:
    """One API connection pool for objects and one for exec websockets."""

    def __init__(self, configuration: Configuration, target: KubeTarget) -> None:
        self.configuration = configuration
        self.target = target
        self.api = ApiClient(configuration=configuration)
        self.ws = WsApiClient(configuration=configuration)

    @classmethod
    async def connect(
        cls, kubeconfig: str | None = None, context: str | None = None, pool_size: int = 32
    ) -> KubeSession:
        """Load credentials like kubectl: --kubeconfig, $KUBECONFIG, ~/.kube/config, in-cluster.

        Raises UsageError naming the option when the configuration cannot be used.
        """
        config = Configuration()
        from_env = os.environ.get("KUBECONFIG")
        path = kubeconfig or from_env or str(Path.home() / ".kube" / "config")
        explicit = kubeconfig is not None
        files = [kubeconfig] if kubeconfig is not None else [p for p in path.split(os.pathsep) if p]
        option = f"--kubeconfig {kubeconfig}" if explicit else f"kubeconfig {path}"
        # Each file is checked before the client's loader sees it: the loader turns a YAML
        # syntax error into a three-line traceback and an empty file into a TypeError.
        present = await asyncio.to_thread(
            check_kubeconfig_files, files, explicit, "KUBECONFIG" if from_env else "kubeconfig"
        )
        try:
            if present:
                merger = await asyncio.to_thread(KubeConfigMerger, os.pathsep.join(present))  # file reads off the loop
                loader = KubeConfigLoader(config_dict=merger.config, active_context=context, config_base_path=None)
                await loader.load_and_set(config)
                current = loader.current_context or {}
                active = context or current.get("name")
                namespace = (current.get("context") or {}).get("namespace")
            elif os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
                load_incluster_config(client_configuration=config)
                active = namespace = None
            else:
                raise UsageError(f"{option}: not found; no cluster to read (use --kubeconfig FILE or set KUBECONFIG)")
        except ConfigException as exc:
            if context:
                raise UsageError(f"--context {context}: {_one_line(exc)}") from None
            raise UsageError(f"{option}: {_one_line(exc)}") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
            raise UsageError(f"{option}: cannot use it: {_one_line(exc)}") from None
        config.connection_pool_maxsize = max(pool_size, 8)
        return cls(config, KubeTarget(context=active, server=config.host, namespace=namespace))

    async def close(self) -> None:
        await self.api.close()
        await self.ws.close()

    async def _request(
        self,
        path: str,
        query: Sequence[tuple[str, Any]] = (),
        accept: str = "application/json",
        timeout: float = 60.0,
        verb: str = "GET",
        payload: dict[str, Any] | None = None,
    ) -> Any:
        method, url, headers, body, post = await self.api.param_serialize(
            method=verb,
            resource_path=path,
            query_params=list(query) or None,
            header_params={"Accept": accept},
            body=payload,
            auth_settings=_AUTH,
        )
        try:
            return await self.api.call_api(method, url, headers, body, post, _request_timeout=timeout)
        except (OSError, aiohttp.ClientError) as exc:
            raise KubeError(0, path, f"cannot reach the API server at {self.target.server}: {exc}") from None
        except TimeoutError:
            raise KubeError(0, path, f"no answer from {self.target.server} within {timeout:g}s") from None

    async def get(self, path: str, query: Sequence[tuple[str, Any]] = (), timeout: float = 60.0) -> dict[str, Any]:
        """GET one JSON object; non-2xx becomes KubeError with the server's own message."""
        return await self._json("GET", path, query, None, timeout)

    async def create(self, path: str, obj: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """POST `obj` to the collection at `path`; returns the object as the server stored it."""
        return await self._json("POST", path, (), obj, timeout)

    async def delete(self, path: str, query: Sequence[tuple[str, Any]] = (), timeout: float = 60.0) -> dict[str, Any]:
        """DELETE the object at `path` (a `Status` or the object being deleted comes back)."""
        return await self._json("DELETE", path, query, None, timeout)

    async def _json(
        self,
        verb: str,
        path: str,
        query: Sequence[tuple[str, Any]],
        payload: dict[str, Any] | None,
        timeout: float,
    ) -> dict[str, Any]:
        resp = await self._request(path, query, timeout=timeout, verb=verb, payload=payload)
        try:
            data = await resp.read()
        finally:
            resp.response.release()
        if not 200 <= resp.status < 300:
            raise KubeError(resp.status, path, _status_message(data, resp.reason or "request failed"))
        try:
            value = json.loads(data)
        except ValueError:
            raise KubeError(resp.status, path, "response is not JSON") from None
        if not isinstance(value, dict):
            raise KubeError(resp.status, path, "response is not a JSON object")
        return value

    async def list(
        self,
        path: str,
        query: Sequence[tuple[str, Any]] = (),
        keep: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """All items of a list, following `continue` tokens so huge clusters come in pages.

        `keep` filters each page as it arrives, so memory follows what is kept (Kata pods),
        not the size of the cluster.
        """
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            q = list(query) + [("limit", PAGE)] + ([("continue", token)] if token else [])
            page = await self.get(path, q)
            items.extend(i for i in page.get("items") or [] if isinstance(i, dict) and (keep is None or keep(i)))
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return items

    async def stream(
        self, path: str, query: Sequence[tuple[str, Any]] = (), timeout: float = 120.0
    ) -> AsyncIterator[bytes]:
        """Yield a text endpoint's body (pod logs) in chunks, never holding it whole."""
        resp = await self._request(path, query, accept="*/*", timeout=timeout)
        try:
            if not 200 <= resp.status < 300:
                data = await resp.read()
                raise KubeError(resp.status, path, _status_message(data, resp.reason or "request failed"))
            async for chunk in resp.response.content.iter_chunked(1 << 16):
                yield chunk
        finally:
            resp.response.release()
