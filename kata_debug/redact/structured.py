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
#: A key name -> the counter of the user rule (`--redact-config`) that names it secret, or None.
UserKeyFn = Callable[[str], str | None]
_ENV_KEYS = frozenset({"env", "Env", "Envs", "envs", "Environment"})
_ARGV_KEYS = frozenset({"args", "Args", "command", "Command", "cmd", "Cmd", "Entrypoint", "entrypoint"})
_ENV_VALUE_KEYS = ("value", "Value")
_ENV_NAME_KEYS = ("name", "Name", "Var", "key", "Key")
_HEADER_KEYS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# Programs whose `-p X` / `-pX` is a password (elsewhere `-p` is a port or a path).
_P_IS_PASSWORD = ("login", "mysql", "mariadb", "mysqladmin", "mysqldump", "sshpass")
_U_IS_USERPASS = ("curl", "wget")


class JsonRedactor:
    """Walks parsed JSON; `text` redacts a string, `counts` gets one count per masked value.

    `user_key` adds the operator's secret key names: wherever the schema asks whether a name
    (map key, attribute, annotation, flag) is secret, a name it knows is, counted under its rule.
    """

    def __init__(self, text: TextFn, counts: RuleCounts, user_key: UserKeyFn | None = None) -> None:
        self._text = text
        self._counts = counts
        self._user_key = user_key

    def _secret(self, name: str, builtin: str) -> str | None:
        """The counter to charge for masking the value of `name`, or None when it is not secret."""
        if self._user_key is not None:
            user = self._user_key(name)
            if user is not None:
                return user
        return builtin if looks_secret(name) else None

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
            counter = self._secret(attr, "otlp-attribute")
            if counter:
                self._counts.add(counter)
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
            elif (counter := self._secret(k, "secret-key") or _header(k)) and _is_secret_scalar(v):
                self._counts.add(counter)
                result[k] = MASK
            elif (counter := self._secret(k, "secret-key") or _header(k)) and isinstance(v, list) and v:
                if all(_is_secret_scalar(x) for x in v):
                    self._counts.add(counter, len(v))
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
        next_counter = "argv-secret"
        for a in args:
            if mask_next:
                mask_next = False
                if a and a != MASK and not a.startswith("-"):
                    self._counts.add(next_counter)
                    out.append(MASK)
                    continue
            if a.startswith("-") and len(a) > 1:
                name, eq, val = a.partition("=")
                counter = self._secret(name.lstrip("-"), "argv-secret")
                secret = (
                    counter is not None
                    or name == "--client-key-data"
                    or (p_password and name in ("-p", "--password"))
                    or (u_userpass and name in ("-u", "--user", "--proxy-user"))
                )
                if secret and eq:
                    if val and val != MASK:
                        self._counts.add(counter or "argv-secret")
                        a = f"{name}={MASK}"
                elif secret:
                    mask_next, next_counter = True, counter or "argv-secret"
                elif p_password and name.startswith("-p") and not name.startswith("--") and len(name) > 2:
                    self._counts.add("argv-secret")
                    a = "-p" + MASK
            out.append(self._text(a))
        return out

    def _annotation(self, key: str, value: Any) -> Any:
        if not isinstance(value, str):
            return self.walk(value)
        counter = self._secret(key, "secret-annotation")
        if counter and value:
            self._counts.add(counter)
            return MASK
        return self._string(value)


def _header(key: str) -> str | None:
    return "secret-key" if key.lower() in _HEADER_KEYS else None


def _is_secret_scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float)) and not isinstance(v, bool) and v not in (MASK, "")
