"""Layer 1: parsed JSON (OCI specs, persist.json, Kubernetes objects, OTLP spans).

Schema knowledge decides, not key names alone: every env value goes (OCI `NAME=value`,
Kubernetes `{name, value}`, persist.json `{Var, Value}`), argv flags that take a secret lose
the next argument, an OTLP attribute named like a secret loses every value it holds (strings,
arrays, kvlists), a `kind: Secret` loses its data; while `key` in a toleration, a selector's
`matchExpressions` or a `secretKeyRef` names a key and stays. Strings then get the text rules.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from typing import Any

from kata_debug.redact.counts import MASK, RuleCounts, looks_secret

TextFn = Callable[[str], str]
_ENV_KEYS = frozenset({"env", "Env", "Envs", "envs", "Environment"})
_ARGV_KEYS = frozenset({"args", "Args", "command", "Command", "cmd", "Cmd", "Entrypoint", "entrypoint"})
_ENV_VALUE_KEYS = ("value", "Value")
_ENV_NAME_KEYS = ("name", "Name", "Var", "key", "Key")
_HEADER_KEYS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# Programs whose `-p X` / `-pX` is a password (elsewhere `-p` is a port or a path).
_P_IS_PASSWORD = ("login", "mysql", "mariadb", "mysqladmin", "mysqldump", "sshpass")
_U_IS_USERPASS = ("curl", "wget")


class JsonRedactor:
    """Walks parsed JSON; `text` redacts a string, `counts` gets one count per masked value."""

    def __init__(self, text: TextFn, counts: RuleCounts) -> None:
        self._text = text
        self._counts = counts

    def walk(self, value: Any) -> Any:
        if isinstance(value, dict):
            return self._dict(value)
        if isinstance(value, list):
            return [self.walk(v) for v in value]
        if isinstance(value, str):
            return self._string(value)
        return value

    def _string(self, value: str) -> str:
        """A string; one holding JSON (last-applied-configuration, CRI-O's nested annotations)
        is parsed and walked with the same schema rules, and re-encoded only if it changed."""
        stripped = value.strip()
        if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                return self._text(value)
            walked = self.walk(parsed)
            return value if walked == parsed else json.dumps(walked, separators=(",", ":"))
        return self._text(value)

    def _mask_all(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._mask_all(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._mask_all(v) for v in value]
        if isinstance(value, bool) or value is None:
            return value
        return MASK

    def _dict(self, value: dict[str, Any]) -> dict[str, Any]:
        attr = value.get("key")
        if isinstance(attr, str) and isinstance(value.get("value"), dict):
            # OTLP attribute {"key": "db.password", "value": {"stringValue" | "arrayValue" | ...}}
            if looks_secret(attr):
                self._counts.add("otlp-attribute")
                return {**value, "value": self._mask_all(value["value"])}
            return {**value, "value": self.walk(value["value"])}
        if value.get("kind") == "Secret":
            out = dict(value)
            for k in ("data", "stringData"):
                if isinstance(out.get(k), dict) and out[k]:
                    self._counts.add("k8s-secret", len(out[k]))
                    out[k] = {dk: MASK for dk in out[k]}
            value = out
        result: dict[str, Any] = {}
        for k, v in value.items():
            if k in _ENV_KEYS and isinstance(v, list):
                result[k] = [self._env_entry(e) for e in v]
            elif k in _ARGV_KEYS and isinstance(v, list) and all(isinstance(a, str) for a in v):
                result[k] = self.argv(v)
            elif k == "annotations" and isinstance(v, dict):
                result[k] = {ak: self._annotation(ak, av) for ak, av in v.items()}
            elif (looks_secret(k) or k.lower() in _HEADER_KEYS) and _is_secret_scalar(v):
                self._counts.add("secret-key")
                result[k] = MASK
            elif (looks_secret(k) or k.lower() in _HEADER_KEYS) and isinstance(v, list) and v:
                if all(_is_secret_scalar(x) for x in v):
                    self._counts.add("secret-key", len(v))
                    result[k] = [MASK] * len(v)
                else:
                    result[k] = self.walk(v)
            else:
                result[k] = self.walk(v)
        return result

    def _env_entry(self, entry: Any) -> Any:
        if isinstance(entry, str):
            name, eq, val = entry.partition("=")
            if eq and val and val != MASK:
                self._counts.add("oci-env")
                return f"{name}={MASK}"
            return entry
        if isinstance(entry, dict):
            for vk in _ENV_VALUE_KEYS:
                secret = entry.get(vk)
                if isinstance(secret, str) and secret and secret != MASK and any(nk in entry for nk in _ENV_NAME_KEYS):
                    self._counts.add("k8s-env")
                    rest = self._dict({k: v for k, v in entry.items() if k != vk})
                    return {k: MASK if k == vk else rest[k] for k in entry}
        return self.walk(entry)

    def argv(self, args: list[str]) -> list[str]:
        """A command line as a list: flags that carry a secret lose their value."""
        programs = {posixpath.basename(a) for a in args if not a.startswith("-")}
        p_password = any(p.startswith(_P_IS_PASSWORD) for p in programs)
        u_userpass = any(p in _U_IS_USERPASS for p in programs)
        out: list[str] = []
        mask_next = False
        for a in args:
            if mask_next:
                mask_next = False
                if a and a != MASK and not a.startswith("-"):
                    self._counts.add("argv-secret")
                    out.append(MASK)
                    continue
            if a.startswith("-") and len(a) > 1:
                name, eq, val = a.partition("=")
                secret = (
                    looks_secret(name.lstrip("-"))
                    or name == "--client-key-data"
                    or (p_password and name in ("-p", "--password"))
                    or (u_userpass and name in ("-u", "--user", "--proxy-user"))
                )
                if secret and eq:
                    if val and val != MASK:
                        self._counts.add("argv-secret")
                        a = f"{name}={MASK}"
                elif secret:
                    mask_next = True
                elif p_password and name.startswith("-p") and not name.startswith("--") and len(name) > 2:
                    self._counts.add("argv-secret")
                    a = "-p" + MASK
            out.append(self._text(a))
        return out

    def _annotation(self, key: str, value: Any) -> Any:
        if not isinstance(value, str):
            return self.walk(value)
        if looks_secret(key) and value:
            self._counts.add("secret-annotation")
            return MASK
        return self._string(value)


def _is_secret_scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float)) and not isinstance(v, bool) and v not in (MASK, "")
