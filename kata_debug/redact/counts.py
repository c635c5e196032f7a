"""Per-rule counts of what redaction removed, and the names that mark a value secret.

Every rule is named; the manifest reports how many values each rule masked so a reader of a
bundle can see that redaction ran and what it found, without seeing the values.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Mapping

MASK = "***"
MASK_B = b"***"


class RuleCounts:
    """Thread-safe counter keyed by rule name (collectors redact from worker threads)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, rule: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._counts[rule] += n

    def update(self, counts: Mapping[str, int]) -> None:
        with self._lock:
            self._counts.update({rule: n for rule, n in counts.items() if n > 0})

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))


# Last word of a name (split on punctuation and camelCase) that makes its value secret.
# Bare `key` is not here: Kubernetes uses it for label keys, tolerations, selectors and
# configMap/secret key *names*; `<something>_key` / `<something>Key` is (see looks_secret).
_SECRET_LAST_WORDS = frozenset(
    "token tokens password passwords passwd passphrase pass pwd secret secrets credential credentials "
    "auth authorization cookie cookies jwt signature sig apikey accesskey secretkey privatekey accountkey "
    "identitytoken registrytoken authtoken idtoken refreshtoken bearertoken clientsecret sastoken".split()
)
# `<word>_key` names that are not secrets: public keys and database/map key vocabulary.
_HARMLESS_KEY_PREFIX = frozenset("public pub sort partition primary foreign map label node topology group".split())
# `<secret word>_<last>` pairs that are metadata about a secret, not the secret itself.
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def name_words(name: str) -> list[str]:
    """`clientSecretKeyRef` -> ["client", "secret", "key", "ref"]; `DB_PASSWORD` -> ["db", "password"]."""
    return [w.lower() for w in _WORD.findall(name)]


def looks_secret(name: str) -> bool:
    """Whether a map key, env name, flag or annotation name says its value is a secret."""
    words = name_words(name)
    if not words:
        return False
    last = words[-1]
    if last in _SECRET_LAST_WORDS:
        return True
    if len(words) >= 2 and words[-2:] in (["key", "data"], ["private", "key"]):
        return True
    if last == "key" and len(words) >= 2:
        return words[-2] not in _HARMLESS_KEY_PREFIX
    return False
