"""`--obfuscate-hosts`: consistent pseudonyms for hostnames, IP and MAC addresses.

Redaction removes secrets; this hides *where* a bundle came from, for operators whose
policy forbids handing out addresses and host names. Unlike masking, a pseudonym keeps the
evidence readable: the same input gets the same pseudonym everywhere, so "the shim on
`host-1a2b3c4d` lost `240.17.3.9`" still lets a maintainer follow one address from a shim
log to an OCI spec to a Kubernetes object.

Pseudonyms are keyed, not counted: `HMAC-SHA256(run key, kind + value)`. A counter
(`host-0001`) would need one process to see every value in order; a keyed hash gives the
same answer in the log scanner's subprocesses and on every node of `collect --cluster` (the
laptop makes one random key per run and passes it to the nodes), with nothing to agree on.
The key never goes into a bundle: without it, a pseudonym cannot be checked against a guess.
Each process records pseudonym -> original as it goes; the parts are merged and written only
to the `--obfuscate-map` file, never into the bundle.

Shapes are kept so parsers and `diagnose` still work:
  IPv4  -> 240.0.0.0/4 minus 255/8 (reserved "future use": never a real host on the wire);
           28 bits of hash, so ~10,000 distinct addresses collide with odds of ~0.2%
           (recorded under `conflicts` in the map, never silently).
  IPv6  -> 2001:db8::/32 (documentation prefix) + 96 bits of hash.
  MAC   -> the hash with the locally administered bit set and the multicast bit clear,
           written with the original's separator and letter case.
  host  -> `host-<8 hex>`; a known FQDN `n1.corp.example.com` -> `host-<h(n1)>.domain-<h(corp.example.com)>.example`,
           and any other name under a known domain keeps the shape the same way.
A CIDR keeps its prefix length (`10.0.0.0/24` -> `<pseudonym>/24`); subnet membership is not kept.

Kept as they are, because they identify no host: loopback (127/8, ::1), unspecified (0/8,
::), link-local (169.254/16, fe80::/10), multicast, broadcast, netmasks (255.255.255.0),
the all-zero and broadcast MACs. Version strings that look like addresses (`v1.2.3.4`,
`version 3.2.0.1`, `kata-runtime 3.2.0.1`, `1.2.3.4-rc1`, five-part `1.3.6.1.4`) are not
addresses. Pod names are not hosts and stay (their IPs do not); hostnames are the ones we
know (the node's own, Kubernetes node names): a free-text word cannot be told to be a host.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2  # google-re2, as the redactor's prefilter: one DFA pass finds the lines to rewrite

from kata_debug.redact.user_rules import re2_compile

#: Entries recorded in one process's map; more distinct values are still pseudonymised (a
#: log full of addresses must not grow memory without bound) and counted as not recorded.
MAX_ENTRIES = 200_000
#: The line a node prints on stderr, in `collect --cluster`, to hand its map to the laptop.
MAP_LINE_PREFIX = b"kata-debug-obfuscate-map: "
MAP_FORMAT = "kata-debug-obfuscate-map/1"
_HOST_HASH_HEX = 8
# Names that identify nothing (every machine has them), or that are words of the evidence
# itself: a host called `vm` or `node` would turn `/run/vc/vm` and every "VM started" into a
# pseudonym. Such a name is kept, and the map file lists it (`hostnames_kept`).
_GENERIC_NAMES = frozenset(
    "localhost localhost.localdomain localdomain ip6-localhost ip6-loopback "
    "vm node host guest kata qemu agent shim sandbox runtime containerd crio kubelet kernel "
    "master worker control-plane default server client cluster pod container test".split()
)
_MIN_NAME = 3

_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rb"(?<![\w.])" + _OCTET + rb"(?:\." + _OCTET + rb"){3}(?:/[0-9]{1,2})?(?![\w]|\.[0-9]|-[A-Za-z]|\+)"
# Not inside a longer run of hex pairs (EUI-64, InfiniBand GIDs); after `eth0:` is fine (dracut's ifname=).
_MAC = (
    rb"(?<![\w.])(?<![0-9A-Fa-f]{2}[:-])[0-9A-Fa-f]{2}(?P<sep>[:-])[0-9A-Fa-f]{2}(?:(?P=sep)[0-9A-Fa-f]{2}){4}"
    rb"(?![\w]|[:-][0-9A-Fa-f])"
)
_IPV6 = (
    rb"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|[0-9]{1,3}(?:\.[0-9]{1,3}){3})?"
    rb"(?:/[0-9]{1,3})?(?![\w:]|\.[0-9])"
)
# Words right before a dotted quad that make it a version, not an address. Whole words only:
# `nameserver`, `resolver`, `driver` and `dev` end in `ver`/`v` and are followed by addresses.
_VERSION_BEFORE = re.compile(
    rb"(?i)(?<![A-Za-z0-9])(?:version|ver|release|rev|runtime|containerd|qemu|kernel|firmware|v)[\s:=\"'(]{0,3}\Z"
)
# What any address could start with, without lookarounds (RE2 has none): only lines holding
# one of these (or a known name) go through the exact rules, so clean text costs one scan.
_CANDIDATES = (
    rb"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|[0-9A-Fa-f]{2}[:-][0-9A-Fa-f]{2}[:-][0-9A-Fa-f]{2}[:-]"
    rb"|[0-9A-Fa-f]{0,4}::|(?:[0-9A-Fa-f]{1,4}:){3}[0-9A-Fa-f]"
)
_Bytes = bytes  # `Obfuscator.bytes` shadows the type inside the class
_PSEUDO_V6 = int(ipaddress.IPv6Address("2001:db8::"))


@dataclass
class ObfuscationMap:
    """pseudonym -> original, merged from every process that pseudonymised part of a bundle."""

    pseudonyms: dict[str, str] = field(default_factory=dict)
    #: pseudonym -> every original that hashed to it (a collision: the map says so).
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    not_recorded: int = 0
    #: Hostnames left as they are: too short or a word of the evidence (see _GENERIC_NAMES).
    hostnames_kept: set[str] = field(default_factory=set)

    def to_json(self, bundle: str | None = None) -> dict[str, Any]:
        return {
            "format": MAP_FORMAT,
            "bundle": bundle,
            "how_to_read": "each key is a pseudonym found in the bundle; its value is the original",
            "pseudonyms": dict(sorted(self.pseudonyms.items())),
            "conflicts": self.conflicts,
            "entries_not_recorded": self.not_recorded,
            "hostnames_kept": sorted(self.hostnames_kept),
        }


class Obfuscator:
    """Rewrites text and parsed JSON with keyed pseudonyms; records the reverse mapping.

    Thread-safe (collectors run in worker threads). `spec()`/`from_spec()` carry the key and
    known hostnames to another process; `take_new()` hands back what it recorded since last time.
    """

    def __init__(self, key: bytes, hostnames: Iterable[str] = (), max_entries: int = MAX_ENTRIES) -> None:
        self._key = key
        self._lock = threading.Lock()
        self._max = max_entries
        self.map = ObfuscationMap()
        self._new: dict[str, str] = {}
        self._names: set[str] = set()
        self._domains: set[str] = set()
        self._pattern: re.Pattern[bytes] = re.compile(rb"(?!)")
        self._trigger: Any = re2.compile(_CANDIDATES)
        self._memo: dict[tuple[str | None, bytes], bytes] = {}
        self.add_hostnames(hostnames)

    @classmethod
    def new(cls, hostnames: Iterable[str] = ()) -> Obfuscator:
        """A fresh random key: pseudonyms of one run cannot be linked to another run's."""
        return cls(secrets.token_bytes(32), hostnames)

    def spec(self) -> dict[str, Any]:
        """What another process needs to produce the same pseudonyms (never written to a bundle)."""
        return {"key": self._key.hex(), "hostnames": sorted(self._names)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Obfuscator:
        return cls(bytes.fromhex(str(spec["key"])), [str(n) for n in spec.get("hostnames", ())])

    @property
    def key_hex(self) -> str:
        return self._key.hex()

    # -- which hostnames ------------------------------------------------------------------
    def add_hostnames(self, names: Iterable[str]) -> None:
        """Add hostnames (and their domains) to find; generic and malformed names are ignored."""
        changed = False
        for raw in names:
            name = raw.strip().strip(".").lower()
            if not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", name) or name.replace(".", "").isdigit():
                continue  # not a name (or an address: those have their own rule)
            if len(name) < _MIN_NAME or name in _GENERIC_NAMES:
                with self._lock:
                    self.map.hostnames_kept.add(name)
                continue
            if name not in self._names:
                self._names.add(name)
                changed = True
            short, dot, domain = name.partition(".")
            if dot and "." in domain and domain not in self._domains:
                self._domains.add(domain)
                changed = True
            if dot and short not in self._names and short not in _GENERIC_NAMES and len(short) >= _MIN_NAME:
                self._names.add(short)
        if changed or not self._names:
            self._compile()

    def _compile(self) -> None:
        parts = []
        every = [re.escape(n.encode()) for n in sorted(self._names | self._domains, key=len, reverse=True)]
        # Thousands of node names make a large alternation: compiled with the memory it needs.
        self._trigger = re2_compile(_CANDIDATES + (b"|(?i:" + b"|".join(every) + b")" if every else b""))
        if self._domains:
            doms = b"|".join(re.escape(d.encode()) for d in sorted(self._domains, key=len, reverse=True))
            parts.append(rb"(?P<dom>(?<![\w.-])(?:[A-Za-z0-9_-]+\.)*(?i:" + doms + rb")(?![\w-]|\.[A-Za-z0-9]))")
        if self._names:
            names = b"|".join(re.escape(n.encode()) for n in sorted(self._names, key=len, reverse=True))
            # `_` is no hostname character: `kata-node-1_log`, `log_kata-node-1` still name the host.
            parts.append(rb"(?P<host>(?<![A-Za-z0-9.-])(?i:" + names + rb")(?![A-Za-z0-9-]))")
        parts += [rb"(?P<mac>" + _MAC + rb")", rb"(?P<v4>" + _IPV4 + rb")", rb"(?P<v6>" + _IPV6 + rb")"]
        self._pattern = re.compile(b"|".join(parts))

    # -- pseudonyms -----------------------------------------------------------------------
    def _digest(self, kind: bytes, value: bytes) -> bytes:
        return hmac.new(self._key, kind + b"\0" + value, hashlib.sha256).digest()

    def _record(self, pseudonym: str, original: str) -> None:
        with self._lock:
            m = self.map
            known = m.pseudonyms.get(pseudonym)
            if known is None:
                if len(m.pseudonyms) >= self._max:
                    m.not_recorded += 1
                    return
                m.pseudonyms[pseudonym] = original
                self._new[pseudonym] = original
            elif known != original:
                seen = m.conflicts.setdefault(pseudonym, [known])
                if original not in seen:
                    seen.append(original)

    def host(self, name: str) -> str:
        """`n1` -> `host-1a2b3c4d`; `n1.corp.example.com` -> `host-1a2b3c4d.domain-5e6f7a8b.example`."""
        low = name.lower().rstrip(".")
        short, dot, domain = low.partition(".")
        pseudo = "host-" + self._digest(b"host", short.encode()).hex()[:_HOST_HASH_HEX]
        self._record(pseudo, short)  # names are case-insensitive: one original per pseudonym
        if dot:
            pdom = self.domain(domain)
            pseudo = f"{pseudo}.{pdom}"
        return pseudo

    def domain(self, domain: str) -> str:
        domain = domain.lower()
        pseudo = "domain-" + self._digest(b"domain", domain.encode()).hex()[:_HOST_HASH_HEX] + ".example"
        self._record(pseudo, domain)
        return pseudo

    def ipv4(self, addr: ipaddress.IPv4Address) -> str:
        if _keep_v4(addr):
            return str(addr)
        h = int.from_bytes(self._digest(b"ipv4", addr.packed)[:4], "big")
        first = 240 + (h >> 24) % 15  # 240..254: never 255.x (broadcast look-alikes)
        pseudo = f"{first}.{(h >> 16) & 255}.{(h >> 8) & 255}.{h & 255}"
        self._record(pseudo, str(addr))
        return pseudo

    def ipv6(self, addr: ipaddress.IPv6Address) -> str:
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return "::ffff:" + self.ipv4(mapped)
        if addr.is_loopback or addr.is_unspecified or addr.is_link_local or addr.is_multicast:
            return str(addr)
        h = int.from_bytes(self._digest(b"ipv6", addr.packed)[:12], "big")
        pseudo = str(ipaddress.IPv6Address(_PSEUDO_V6 | h))
        self._record(pseudo, str(addr))
        return pseudo

    def mac(self, text: str, sep: str) -> str:
        octets = bytes.fromhex(text.replace(sep, ""))
        if octets in (b"\0" * 6, b"\xff" * 6):
            return text
        h = bytearray(self._digest(b"mac", octets)[:6])
        h[0] = (h[0] & 0xFC) | 0x02  # locally administered, unicast
        pseudo = sep.join(f"{b:02x}" for b in h)
        if any(c.isupper() for c in text):
            pseudo = pseudo.upper()
        self._record(pseudo, text)
        return pseudo

    # -- text and JSON --------------------------------------------------------------------
    def _replace(self, m: re.Match[bytes]) -> bytes:
        """One match, memoised: pseudonyms are a pure function of (kind, text) for one key."""
        kind = m.lastgroup
        raw = m.group(0)
        if kind == "v4":
            start = m.start()
            if _VERSION_BEFORE.search(m.string[max(0, start - 16) : start]):
                return raw
        key = (kind, raw)
        done = self._memo.get(key)
        if done is None:
            done = self._pseudonym(kind, raw)
            if len(self._memo) < self._max:
                self._memo[key] = done
        return done

    def _pseudonym(self, kind: str | None, raw: bytes) -> bytes:
        text = raw.decode("ascii", "replace")
        if kind == "host":
            return self.host(text).encode()
        if kind == "dom":
            return self._under_domain(text).encode()
        if kind == "mac":
            return self.mac(text, text[2]).encode()
        addr, slash, prefix = text.partition("/")
        try:
            if kind == "v4":
                v4 = ipaddress.IPv4Address(addr)
                if slash and int(prefix) > 32:
                    return raw
                return (self.ipv4(v4) + slash + prefix).encode()
            if not _plausible_v6(addr):
                return raw
            v6 = ipaddress.IPv6Address(addr)
            if slash and int(prefix) > 128:
                return raw
            return (self.ipv6(v6) + slash + prefix).encode()
        except ValueError:
            return raw

    def _under_domain(self, text: str) -> str:
        low = text.lower()
        for d in sorted(self._domains, key=len, reverse=True):
            if low == d:
                return self.domain(d)
            if low.endswith("." + d):
                head = text[: len(text) - len(d) - 1]
                first, _, rest = head.partition(".")
                pseudo = self.host(first)
                if rest:  # a.b.corp.example.com: the middle labels are hashed as one
                    pseudo += ".sub-" + self._digest(b"sub", rest.lower().encode()).hex()[:_HOST_HASH_HEX]
                    self._record(pseudo.rsplit(".", 1)[1], rest.lower())
                return f"{pseudo}.{self.domain(d)}"
        return text

    def bytes(self, data: bytes) -> bytes:
        """Pseudonymise a text (bytes of any encoding that is ASCII-compatible).

        The RE2 prefilter finds candidate lines; only those get the exact (lookaround) rules.
        """
        parts: list[bytes] = []
        pos = 0
        search = self._trigger.search
        while (m := search(data, pos)) is not None:
            hit_start, hit_end = m.span()
            start = data.rfind(b"\n", 0, hit_start) + 1
            end = data.find(b"\n", hit_end)
            end = len(data) if end < 0 else end
            parts.append(data[pos:start])
            parts.append(self._pattern.sub(self._replace, data[start:end]))
            pos = end
        if not parts:
            return data
        parts.append(data[pos:])
        return b"".join(parts)

    def text(self, data: str) -> str:
        return self.bytes(data.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")

    def json(self, value: Any) -> Any:
        """Parsed JSON: every string, map keys included (a node name can be a key)."""
        if isinstance(value, dict):
            return {(self.text(k) if isinstance(k, str) else k): self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    # -- the map across processes ---------------------------------------------------------
    def take_new(self) -> dict[str, str]:
        """What was recorded since the last call (a scanner process reports it per file)."""
        with self._lock:
            new, self._new = self._new, {}
            return new

    def merge(self, pseudonyms: Mapping[str, str], not_recorded: int = 0, kept: Iterable[str] = ()) -> None:
        """Fold in another process's records (a scanner's, a node's)."""
        for pseudo, original in pseudonyms.items():
            if isinstance(pseudo, str) and isinstance(original, str):
                self._record(pseudo, original)
        with self._lock:
            self.map.not_recorded += max(0, int(not_recorded))
            self.map.hostnames_kept.update(str(k) for k in kept)

    def map_line(self) -> _Bytes:
        """The stderr line a node hands its map over with (see `split_map_lines`)."""
        body = {
            "pseudonyms": self.map.pseudonyms,
            "not_recorded": self.map.not_recorded,
            "hostnames_kept": sorted(self.map.hostnames_kept),
        }
        return MAP_LINE_PREFIX + json.dumps(body, separators=(",", ":")).encode() + b"\n"


def split_map_lines(stderr: bytes) -> tuple[bytes, list[dict[str, Any]]]:
    """A node's stderr without its map lines, and the maps they held (bad ones are dropped)."""
    kept: list[bytes] = []
    maps: list[dict[str, Any]] = []
    for line in stderr.splitlines(keepends=True):
        if line.startswith(MAP_LINE_PREFIX):
            try:
                body = json.loads(line[len(MAP_LINE_PREFIX) :])
            except ValueError:
                continue  # cut by the stderr cap: never stored either way
            if isinstance(body, dict) and isinstance(body.get("pseudonyms"), dict):
                maps.append(body)
            continue
        kept.append(line)
    return b"".join(kept), maps


def _keep_v4(addr: ipaddress.IPv4Address) -> bool:
    if addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.packed[0] == 0:
        return True
    n = int(addr)
    inverted = ~n & 0xFFFFFFFF
    return addr.packed[0] == 255 and (inverted & (inverted + 1)) == 0  # a netmask or broadcast


def _plausible_v6(addr: str) -> bool:
    """`a::b` is a Rust/C++ path more often than an address: ask for a digit or 3 groups."""
    groups = [g for g in addr.split(":") if g]
    return any(c.isdigit() for c in addr) or len(groups) >= 3


class MapFile:
    """The `--obfuscate-map` file: created (O_EXCL, 0600) before the run, so an existing file
    is refused before minutes of work and never replaced; filled when the bundle is done;
    removed if the run ends without a bundle (it is ours: we created it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise OSError(f"--obfuscate-map {path}: already exists; it is never replaced (give another name)") from None
        except OSError as exc:
            raise OSError(f"--obfuscate-map {path}: {exc.strerror or exc}") from None

    def write(self, omap: ObfuscationMap, bundle: str | None) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(omap.to_json(bundle), fh, indent=2)
            fh.write("\n")

    def discard(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            try:
                os.unlink(self.path)
            except OSError:
                pass
