"""Planted secrets in every place a collector reads, and harmless look-alikes that must survive.

Each `Case` names the place (which decides the code path the test sends it through), the
content as the collector would read it, and the substrings that must not reach the bundle
(`secrets`) or must reach it unchanged (`keep`). Values are made up but shaped like the real
thing (prefixes, lengths, alphabets), so the rules are tested against what operators leak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Places: log (shim/containerd/journal text, streamed), config (TOML/YAML/INI host files,
# streamed), oci (parsed config.json), oci-raw (config.json.unparsed), persist (persist.json),
# k8s (cluster objects), span (OTLP/JSON spans, parsed), span-text (spans as JSONL text).


@dataclass(frozen=True)
class Case:
    id: str
    place: str
    content: Any
    secrets: tuple[str, ...] = ()
    keep: tuple[str, ...] = field(default=())
    # False: only whole-file reads apply (a stream that starts inside a key block is
    # recognised within its first chunk, and collectors read chunks of >= 1 MiB).
    by_line: bool = True


AKID = "AKIAZ7QX4MPL2R5TVW3N"
AWS_SECRET = "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"
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjRkYzEifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdCJ9.Qm9ndXNTaWduYXR1cmVfZm9yX3Rlc3Rz"
GHP = "ghp_R8sJ2kL9mQ4vX7nB1cD5fG3hT6wY0zA2eU8i"
PEM_BODY = [
    "MIIEowIBAAKCAQEAx3Vb9Q2kT1lYp8fZ4s7Rw0cN5mJ6hG2aK9dX1eL3pU",
    "Tz8qW4rY2uI6oP0aS9dF7gH5jK3lZ1xC8vB6nM4qW2eR0tY9uI7oP5aS3dF",
    "Jw9K2mN4pQ6rS8tU0vW2xY4zA6bC8dE0fG2hI4jK6lM8nO0pQ2rS4tU6v==",
]


def pem(kind: str = "RSA PRIVATE KEY", body: list[str] | None = None) -> str:
    return "\n".join([f"-----BEGIN {kind}-----", *(body or PEM_BODY), f"-----END {kind}-----"]) + "\n"


def log(msg: str, **kw: str) -> str:
    extra = "".join(f" {k}={v}" for k, v in kw.items())
    return f'time="2026-12-01T10:00:00.123Z" level=info msg="{msg}" sandbox=4f2c9e1a0b7d{extra} source=virtcontainers\n'


_TOKEN_SHAPES = {
    "aws-access-key-id": AKID,
    "aws-session-key-id": "ASIAQ3RT5UVW7XYZ2AB4",
    "aws-secret-key": AWS_SECRET,
    "jwt": JWT,
    "github-classic": GHP,
    "github-oauth": "gho_k2L8mN4pQ6rS8tU0vW2xY4zA6bC8dE0fG2hI",
    "github-fine-grained": "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEF0123",
    "gitlab-pat": "glpat-xR4tY8uI2oP6aS0dF3gH",
    "gitlab-deploy": "gldt-Zk3mN8pQ2rS6tU0vW4xY",
    "slack-bot": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "slack-user": "xoxp-123456789012-123456789012-123456789012-0123456789abcdef0123456789abcdef",
    "slack-webhook": "https://hooks.slack.com/services/T01ABCDEF/B02GHIJKL/zYxWvUtSrQpOnMlKjIhGfEdC",
    "stripe-live": "sk_live_51HxQ2bK8m4N6p8R0t2V4x6Z8bD0fH2jL4n",
    "stripe-restricted": "rk_live_51HxQ2bK8m4N6p8R0t2V4x6Z8bD0fH2jL4n",
    "pypi": "pypi-AgEIcHlwaS5vcmcCJGE4ZjVkYzQ4LWIxYTItNGM3Ni1hZjk0LTIzZGVhNmI3ZjFjOAACKlszLCJmMTIzNDU2Nzg5MGFiY2RlZiJdAAAGIFt",
    "openai-project": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0fGh",
    "anthropic": "sk-ant-api03-Xy7zAb3cDe6fGh9iJk2lMn5oPq8rSt1uVw4xYz7aBc0dEf",
    "google-api-key": "AIzaSyD4k8Lm2Np6Qr0St4Uv8Wx2Yz6Ab0Cd4Ef",
    "google-oauth-access": "ya29.a0AfH6SMBx7Lk2mN4pQ6rS8tU0vW2xY4zA6bC8",
    "npm": "npm_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "huggingface": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "digitalocean": "dop_v1_" + "a3f9" * 16,
    "sendgrid": "SG.aBcDeFgHiJkLmNoPqRsTuV.wXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ01",
    "docker-pat": "dckr_pat_Ab3Cd6Ef9Gh2Ij5Kl8Mn1Op4Qr7",
    "vault": "hvs.CAESIJk3mN8pQ2rS6tU0vW4xY8zA2bC6dE0fG4hI8jK",
    "age": "AGE-SECRET-KEY-1QQPQZ5V8W7X2Y3Z4A5B6C7D8E9F0G1H2J3K4L5M6N7P8Q9R0S2T3U4V5W6X7Y8Z9",
    "kube-bootstrap": "07401b.f395accd246ae52d",
}

CASES: list[Case] = []
for name, tok in _TOKEN_SHAPES.items():
    CASES.append(Case(f"log-bare-{name}", "log", log(f"retrying with {tok} after 401")))
    CASES[-1] = Case(CASES[-1].id, "log", CASES[-1].content, (tok.split("/services/")[-1] if "hooks" in tok else tok,))
    CASES.append(
        Case(
            f"span-{name}",
            "span",
            {"key": "http.response.body", "value": {"stringValue": f"ok {tok}"}},
            (tok.split("/services/")[-1] if "hooks" in tok else tok,),
        )
    )

_L = CASES.append
# -- headers ---------------------------------------------------------------------------
for hdr, val, parts in [
    ("Authorization", "Basic cm9ib3Q6aHVudGVyMg==", ("cm9ib3Q6aHVudGVyMg",)),
    ("Authorization", "Bearer " + JWT, (JWT[:40],)),
    (
        "Authorization",
        'Digest username="robot", realm="reg", nonce="dcd98b7102dd2f0e", uri="/v2/", response="6629fae49393a05397450978507c4ef1"',
        ("6629fae49393a05397450978507c4ef1", "dcd98b7102dd2f0e"),
    ),
    (
        "Authorization",
        f"AWS4-HMAC-SHA256 Credential={AKID}/20261201/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
        (AKID, "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024"),
    ),
    (
        "Authorization",
        "Negotiate YIIGhgYJKoZIhvcSAQICAQBuggZ1MIIGcaADAgEFoQMCAQ6iBwMFACAAAACj",
        ("YIIGhgYJKoZIhvcSAQICAQBuggZ1",),
    ),
    ("Authorization", "token 9f3c1e7a5b2d4f6e8a0c1b3d5f7e9a2c4b6d8f0e", ("9f3c1e7a5b2d4f6e8a0c1b3d5f7e9a2c4b6d8f0e",)),
    ("Proxy-Authorization", "Basic cHJveHk6czNjcjN0UHc=", ("cHJveHk6czNjcjN0UHc",)),
    ("Cookie", "session=8c2f4a6b9d1e3f5a; csrftoken=QmF6YmFyYmF6", ("8c2f4a6b9d1e3f5a", "QmF6YmFyYmF6")),
    ("X-Api-Key", "k3y-5up3r-s3cr3t-v4lu3", ("k3y-5up3r-s3cr3t-v4lu3",)),
    ("PRIVATE-TOKEN", "glpat-xR4tY8uI2oP6aS0dF3gH", ("glpat-xR4tY8uI2oP6aS0dF3gH",)),
]:
    _L(
        Case(
            f"log-header-{hdr}-{val.split()[0]}",
            "log",
            f'{log("pull failed")[:-1]} req="GET /v2/ {hdr}: {val}"\n',
            parts,
            ("GET /v2/",),
        )
    )
    _L(
        Case(
            f"log-gomap-{hdr}-{val.split()[0]}",
            "log",
            log(f"request headers map[{hdr}:[{val}] User-Agent:[containerd/2.0]]"),
            parts,
            ("User-Agent:[containerd/2.0]",),
        )
    )
    _L(Case(f"log-json-{hdr}-{val.split()[0]}", "log", json.dumps({"msg": "req", "headers": {hdr: val}}) + "\n", parts))

# -- URLs, signed URLs, connection strings, DSNs ---------------------------------------
for cid, text, parts, keep in [
    (
        "url-userinfo",
        "pulling https://robot:Rb0tPassw0rd@registry.example.com/v2/app",
        ("Rb0tPassw0rd", "robot"),
        ("registry.example.com/v2/app",),
    ),
    ("url-redis-nouser", "connecting to redis://:r3disPw9@cache.svc:6379/0", ("r3disPw9",), ("cache.svc:6379/0",)),
    (
        "url-password-with-at",
        "dsn=postgres://app:p@ss@w0rd!@db.svc:5432/app",
        ("p@ss@w0rd", "ss@w0rd!"),
        ("db.svc:5432/app",),
    ),
    (
        "azure-sas",
        "GET https://acct.blob.core.windows.net/c/b?sv=2022-11-02&ss=b&sp=r&se=2026-12-31T00:00:00Z&sig=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA%3D%3D failed",
        ("Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA",),
        ("acct.blob.core.windows.net/c/b",),
    ),
    (
        "azure-conn",
        "AZURE_STORAGE: DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Q2FmZUJhYmUwMTIzNDU2Nzg5YWJjZGVmZ2hpamtsbW5vcA==;EndpointSuffix=core.windows.net",
        ("Q2FmZUJhYmUwMTIzNDU2Nzg5YWJjZGVmZ2hpamtsbW5vcA",),
        ("AccountName=acct",),
    ),
    (
        "azure-sb",
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=U2hhcmVkS2V5VmFsdWUxMjM0NTY3ODkw=",
        ("U2hhcmVkS2V5VmFsdWUxMjM0NTY3ODkw",),
        (),
    ),
    (
        "azure-sas-conn",
        "BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature=sv=2022-11-02&ss=b&sig=c2lnbmF0dXJlMTIzNDU2Nzg5",
        ("c2lnbmF0dXJlMTIzNDU2Nzg5",),
        (),
    ),
    (
        "s3-presigned",
        f"upload to https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={AKID}%2F20261201%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261201T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
        (AKID, "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"),
        ("b.s3.amazonaws.com/k",),
    ),
    (
        "gcs-signed",
        "https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=7d3e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e",
        ("7d3e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e",),
        (),
    ),
    (
        "query-token",
        "GET /api/v1/watch?access_token=Zx9Yw8Vu7Ts6Rq5Po4Nm&watch=true",
        ("Zx9Yw8Vu7Ts6Rq5Po4Nm",),
        ("watch=true",),
    ),
    (
        "go-dsn",
        "mysql dsn app:My5qlPw0rd@tcp(mysql.svc:3306)/orders?parseTime=true",
        ("My5qlPw0rd",),
        ("mysql.svc:3306",),
    ),
    (
        "curl-u",
        "exec: curl -sf -u admin:Adm1nPw0rd https://api.example/health",
        ("Adm1nPw0rd",),
        ("https://api.example/health",),
    ),
    ("curl-user-eq", "exec: curl --user=admin:Adm1nPw0rd2 https://api.example/health", ("Adm1nPw0rd2",), ()),
    (
        "argv-token",
        "hook: /usr/bin/agent-register --token 7Hn2Kq9Wz4Lp6Rt8 --node n1",
        ("7Hn2Kq9Wz4Lp6Rt8",),
        ("--node n1",),
    ),
    ("argv-password", "cmd: /bin/app --password 'multi word pw' --verbose", ("multi word pw",), ("--verbose",)),
    ("argv-password-eq", "cmd: /bin/app --db-password=Pg5ecretVal", ("Pg5ecretVal",), ()),
    ("podman-login", "exec podman login -u robot -p L0ginPassw0rd quay.io", ("L0ginPassw0rd",), ("quay.io",)),
    ("mysql-p-attached", "sh -c mysql -uroot -pR00tPassw0rd -h db", ("R00tPassw0rd",), ("-h db",)),
    (
        "sql-identified-by",
        "query: CREATE USER 'app'@'%' IDENTIFIED BY 'Sq1Passw0rd'",
        ("Sq1Passw0rd",),
        ("CREATE USER",),
    ),
    ("sql-with-password", "query: ALTER ROLE app WITH PASSWORD 'PgR0lePw'", ("PgR0lePw",), ("ALTER ROLE app",)),
    (
        "logfmt-quoted-multiword",
        'password="correct horse battery staple"',
        ("correct horse battery staple", "battery"),
        (),
    ),
    ("logfmt-escaped-in-msg", 'msg="login with password=\\"esc ape d\\" failed"', ("esc ape d",), ("failed",)),
    ("kv-comma", "db_password=abc,def123", ("abc,def123", "def123"), ()),
    ("kv-pwd", "pwd=Pwd5ecret", ("Pwd5ecret",), ()),
    ("kv-pass", "pass: P4ss5ecret", ("P4ss5ecret",), ()),
    ("kv-jwt-name", "jwt=" + JWT, (JWT[:30],), ()),
    ("kv-star-key", "stripe_key=Str1peKeyVal0123", ("Str1peKeyVal0123",), ()),
    ("kv-camel-key", 'accessKey: "Acc3ssKeyVal"', ("Acc3ssKeyVal",), ()),
    ("kv-client-secret", "client_secret=Cl13ntS3cr3tVal", ("Cl13ntS3cr3tVal",), ()),
    ("yaml-token", "  token: Tk9n8m7l6k5j", ("Tk9n8m7l6k5j",), ()),
    (
        "prose-colon-tokenish",
        "failed to refresh token: Zk3mN8pQ2rS6tU0v",
        ("Zk3mN8pQ2rS6tU0v",),
        ("failed to refresh token:",),
    ),
]:
    _L(Case(f"log-{cid}", "log", log(text) if '"' not in text else text + "\n", parts, keep))
    _L(Case(f"span-text-{cid}", "span", {"key": "process.command_line", "value": {"stringValue": text}}, parts, keep))

# -- private keys ------------------------------------------------------------------------
OPENSSH = [
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
    "QyNTUxOQAAACDx9K3mN8pQ2rS6tU0vW4xY8zA2bC6dE0fG4hI8jKAAAAJgAbCdEfGhIjK",
]
PGP = [
    "Version: GnuPG v2",
    "",
    "lQOYBF5kR3wBCADx9K3mN8pQ2rS6tU0vW4xY8zA2bC6dE0fG4hI8jK2lM4nO6pQ8",
    "rS0tU2vW4xY6zA8bC0dE2fG4hI6jK8lM0nO2pQ4rS6tU8vW0xY2zA4bC6dE8fG0",
    "=Xy7z",
]
PUTTY = "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: eddsa-key-20261201\nPublic-Lines: 2\nAAAAC3NzaC1lZDI1NTE5AAAAIPx9K3mN8pQ2rS6tU0vW4xY8zA2bC6dE0fG4hI8jK2lM\nPrivate-Lines: 1\nAAAAIGp1dHR5UHJpdmF0ZUtleU1hdGVyaWFsMDEyMzQ1Njc4OWFiY2RlZg\nPrivate-MAC: 5a3c9e1f7b2d4a6c8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d\n"
for kind, body in [
    ("RSA PRIVATE KEY", PEM_BODY),
    ("PRIVATE KEY", PEM_BODY),
    ("EC PRIVATE KEY", PEM_BODY[:2]),
    ("ENCRYPTED PRIVATE KEY", PEM_BODY),
    ("OPENSSH PRIVATE KEY", OPENSSH),
    ("PGP PRIVATE KEY BLOCK", PGP),
]:
    secret = tuple(b for b in body if len(b) > 20)
    _L(Case(f"log-key-{kind}", "log", log("start") + pem(kind, body) + log("after"), secret, ("after",)))
    _L(
        Case(
            f"log-key-nolast-{kind}",
            "log",
            log("start") + pem(kind, body).rsplit("-----END", 1)[0] + log("after"),
            secret,
            ("after",),
        )
    )
    _L(
        Case(
            f"log-key-json-escaped-{kind}", "log", json.dumps({"tls.key": "x", "data": pem(kind, body)}) + "\n", secret
        )
    )
    _L(
        Case(
            f"config-yaml-block-{kind}",
            "config",
            "tls:\n  key: |\n" + "".join("    " + ln + "\n" for ln in pem(kind, body).splitlines()) + "other: 1\n",
            secret,
            ("other: 1",),
        )
    )
_L(
    Case(
        "log-key-proc-type",
        "log",
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,3F17F5316E2BAC89\n\n"
        + "\n".join(PEM_BODY)
        + "\n-----END RSA PRIVATE KEY-----\n",
        tuple(PEM_BODY),
    )
)
_L(
    Case(
        "log-key-putty",
        "log",
        log("start") + PUTTY + log("after"),
        (
            "AAAAIGp1dHR5UHJpdmF0ZUtleU1hdGVyaWFsMDEyMzQ1Njc4OWFiY2RlZg",
            "5a3c9e1f7b2d4a6c8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d",
        ),
        ("after",),
    )
)
_L(
    Case(
        "log-key-orphan-tail",
        "log",
        "\n".join(PEM_BODY[1:]) + "\n-----END RSA PRIVATE KEY-----\n" + log("after"),
        tuple(PEM_BODY[1:]),
        ("after",),
        by_line=False,
    )
)
_L(Case("log-key-flattened", "log", log("key " + pem().replace("\n", " ")), tuple(PEM_BODY)))

# -- TOML / YAML configs -------------------------------------------------------------------
for cid, text, parts, keep in [
    (
        "containerd-registry-auth",
        '[plugins."io.containerd.grpc.v1.cri".registry.configs."reg.example".auth]\n  username = "robot"\n  password = "Reg1stryPw"\n  auth = "cm9ib3Q6UmVnMXN0cnlQdw=="\n  identitytoken = "IdT0kenVal123"\n',
        ("Reg1stryPw", "cm9ib3Q6UmVnMXN0cnlQdw", "IdT0kenVal123"),
        ('username = "robot"',),
    ),
    (
        "containerd-registry-headers",
        '[plugins."io.containerd.grpc.v1.cri".registry.headers]\n  Authorization = ["Basic cm9ib3Q6c2VjcmV0UHc="]\n',
        ("cm9ib3Q6c2VjcmV0UHc",),
        (),
    ),
    (
        "hosts-toml-header",
        '[host."https://mirror.example".header]\n  authorization = "Bearer Zm9vYmFyYmF6MTIzNDU2"\n',
        ("Zm9vYmFyYmF6MTIzNDU2",),
        ("mirror.example",),
    ),
    (
        "toml-multiline-literal",
        "password = '''\nline1-Secr3t\nline2-Secr3t\n'''\nport = 5\n",
        ("line1-Secr3t", "line2-Secr3t"),
        ("port = 5",),
    ),
    ("toml-multiline-basic", 'client_secret = """Mu1ti\nL1ne"""\n', ("Mu1ti", "L1ne"), ()),
    ("toml-single-literal", "token = '''T0kLit3ral'''\n", ("T0kLit3ral",), ()),
    ("toml-multiword", 'passphrase = "two words here"\n', ("two words here",), ()),
    ("toml-comma", 'password = "a,b,c-Pw"\n', ("a,b,c-Pw",), ()),
    (
        "crio-conf-auth",
        '[crio.image]\nglobal_auth_file = "/etc/crio/auth.json"\npause_image_auth_file = ""\n',
        (),
        ('"/etc/crio/auth.json"',),
    ),
    (
        "auth-json",
        '{"auths":{"quay.io":{"auth":"cm9ib3Q6UXVheVB3MTIz","identitytoken":"IdTok9876"}}}\n',
        ("cm9ib3Q6UXVheVB3MTIz", "IdTok9876"),
        ("quay.io",),
    ),
    (
        "ini-secret-key",
        "[default]\naws_access_key_id = AKIAZ7QX4MPL2R5TVW3N\naws_secret_access_key = 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\n",
        (AKID, AWS_SECRET),
        ("[default]",),
    ),
    (
        "cifs-options",
        "//fs/share /mnt cifs username=svc,pass=C1fsPassw0rd,vers=3.0 0 0\n",
        ("C1fsPassw0rd",),
        ("vers=3.0",),
    ),
]:
    _L(Case(f"config-{cid}", "config", text, parts, keep))

# -- OCI config.json -------------------------------------------------------------------------
OCI = {
    "ociVersion": "1.1.0",
    "process": {
        "args": ["/bin/app", "--token", "Ar9sT0ken", "--password=Ar9sPw", "--mode", "fast"],
        "env": ["PATH=/usr/bin", "DB_PASSWORD=EnvPw123", "HOME=/root"],
    },
    "mounts": [
        {
            "destination": "/mnt",
            "type": "cifs",
            "source": "//fs/s",
            "options": ["vers=3.0", "pass=M0untPw", "password=M0untPw2", "credentials=/etc/cred"],
        }
    ],
    "hooks": {
        "prestart": [
            {
                "path": "/usr/bin/hook",
                "args": ["hook", "-p", "HookPw1", "--api-key", "H00kKey"],
                "env": ["HOOK_TOKEN=HookTok"],
            }
        ]
    },
    "annotations": {
        "io.kubernetes.cri.sandbox-name": "web-0",
        "example.com/api-token": "AnnTok",
        "io.kubernetes.cri-o.Annotations": json.dumps(
            {
                "kubectl.kubernetes.io/last-applied-configuration": json.dumps(
                    {
                        "spec": {
                            "containers": [
                                {"env": [{"name": "K", "value": "LastApplPw"}], "args": ["--password", "LastApplArg"]}
                            ]
                        }
                    }
                )
            }
        ),
        "io.kubernetes.cri-o.Envs": json.dumps(["NESTED_SECRET=CrioEnvPw"]),
    },
}
_L(
    Case(
        "oci-spec",
        "oci",
        OCI,
        (
            "Ar9sT0ken",
            "Ar9sPw",
            "EnvPw123",
            "M0untPw",
            "M0untPw2",
            "HookTok",
            "AnnTok",
            "LastApplPw",
            "LastApplArg",
            "CrioEnvPw",
            "H00kKey",
        ),
        ("web-0", "--mode", "fast", "vers=3.0", "/usr/bin/hook", "--token", "DB_PASSWORD"),
    )
)
_L(
    Case(
        "oci-hook-login",
        "oci",
        {
            "hooks": {
                "poststart": [
                    {"path": "/usr/bin/podman", "args": ["podman", "login", "-u", "r", "-p", "P0dmanPw", "quay.io"]}
                ]
            }
        },
        ("P0dmanPw",),
        ("quay.io",),
    )
)
_L(
    Case(
        "oci-raw-truncated",
        "oci-raw",
        '{"ociVersion":"1.1.0","process":{"args":["/bin/app"],"env":["PATH=/usr/bin","DB_PASSWORD=TruncPw',
        ("TruncPw",),
        ('"ociVersion":"1.1.0"',),
    )
)
_L(
    Case(
        "oci-raw-args",
        "oci-raw",
        '{"process":{"args":["/bin/app","--password","RawArgPw"],"env":["A=RawEnv"]},"annotations":{"x":"token=RawAnnTok"}',
        ("RawArgPw", "RawEnv", "RawAnnTok"),
        (),
    )
)

# -- Kata persist.json ------------------------------------------------------------------------
PERSIST = {
    "SandboxContainer": "abc",
    "ContainersState": {"c1": {"State": "running"}},
    "Config": {
        "ContainerConfigs": [
            {
                "ID": "c1",
                "Cmd": {
                    "Args": ["/app", "--api-token", "PersistArgTok"],
                    "Envs": [{"Var": "API_KEY", "Value": "PersistEnvVal"}, {"Var": "PATH", "Value": "/bin"}],
                    "WorkDir": "/",
                },
            }
        ]
    },
}
_L(Case("persist-json", "persist", PERSIST, ("PersistArgTok", "PersistEnvVal"), ("API_KEY", "/app", "WorkDir")))

# -- Kubernetes objects ------------------------------------------------------------------------
POD = {
    "kind": "Pod",
    "metadata": {
        "name": "web-0",
        "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": json.dumps(
                {"spec": {"containers": [{"env": [{"name": "P", "value": "K8sLastAppl"}]}]}}
            )
        },
    },
    "spec": {
        "containers": [
            {
                "name": "app",
                "command": ["/bin/app"],
                "args": ["--password", "PodArgPw", "--port", "8080"],
                "env": [
                    {"name": "DB_PASS", "value": "PodEnvPw"},
                    {"name": "C", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                ],
            }
        ],
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "katacontainers.io/kata-runtime", "operator": "In", "values": ["true"]}
                            ]
                        }
                    ]
                }
            }
        },
        "volumes": [{"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "app.conf", "path": "app.conf"}]}}],
    },
}
_L(
    Case(
        "k8s-pod",
        "k8s",
        POD,
        ("K8sLastAppl", "PodArgPw", "PodEnvPw"),
        ("node.kubernetes.io/not-ready", "katacontainers.io/kata-runtime", "app.conf", '"password"', "8080"),
    )
)
_L(
    Case(
        "k8s-secret",
        "k8s",
        {"kind": "Secret", "metadata": {"name": "db"}, "data": {"password": "UzNjcjN0", "username": "YWRtaW4="}},
        ("UzNjcjN0", "YWRtaW4="),
        ('"db"',),
    )
)
_L(
    Case(
        "k8s-kubeconfig",
        "k8s",
        {
            "users": [
                {
                    "name": "u",
                    "user": {
                        "token": "KubeTok123",
                        "client-key-data": "S2V5RGF0YQ==",
                        "auth-provider": {
                            "config": {"id-token": "IdTokVal", "refresh-token": "RefTokVal", "client-secret": "OidcSec"}
                        },
                    },
                }
            ]
        },
        ("KubeTok123", "S2V5RGF0YQ", "IdTokVal", "RefTokVal", "OidcSec"),
        (),
    )
)
_L(
    Case(
        "k8s-configmap-config",
        "k8s",
        {"kind": "ConfigMap", "data": {"config.toml": '[registry]\npassword = "CmPw"\n'}},
        ("CmPw",),
        ("[registry]",),
    )
)

# -- OTLP spans (parsed) --------------------------------------------------------------------------
SPAN = {
    "name": "CreateContainer",
    "attributes": [
        {"key": "db.password", "value": {"stringValue": "SpanPw"}},
        {"key": "aws.key", "value": {"stringValue": "SpanAwsKey"}},
        {
            "key": "auth.tokens",
            "value": {"arrayValue": {"values": [{"stringValue": "ArrTok1"}, {"stringValue": "ArrTok2"}]}},
        },
        {
            "key": "app.credentials",
            "value": {
                "kvlistValue": {
                    "values": [
                        {"key": "user", "value": {"stringValue": "KvUser"}},
                        {"key": "pin", "value": {"intValue": "987654"}},
                    ]
                }
            },
        },
        {
            "key": "app.config",
            "value": {
                "kvlistValue": {
                    "values": [
                        {"key": "api_key", "value": {"stringValue": "NestedKey"}},
                        {"key": "mode", "value": {"stringValue": "fast"}},
                    ]
                }
            },
        },
        {"key": "session.secret", "value": {"bytesValue": "U2Vzc2lvbg=="}},
        {"key": "process.command_line", "value": {"stringValue": "/bin/app --password CmdLinePw --mode slow"}},
        {"key": "url.full", "value": {"stringValue": "https://a.blob.core.windows.net/c?sv=1&sig=UrlSigVal123"}},
        {"key": "db.statement", "value": {"stringValue": "CREATE USER x IDENTIFIED BY 'DbStmtPw'"}},
        {"key": "token_count", "value": {"intValue": "5"}},
        {"key": "exec_id", "value": {"stringValue": "rpc.rs"}},
    ],
    "status": {"code": 2, "message": "auth failed for https://u:StatusPw@reg/"},
    "events": [
        {
            "name": "exception",
            "attributes": [
                {"key": "exception.message", "value": {"stringValue": "bad Authorization: Basic RXZlbnRCYXNpYw=="}}
            ],
        }
    ],
}
_SPAN_SECRETS = (
    "SpanPw",
    "SpanAwsKey",
    "ArrTok1",
    "ArrTok2",
    "KvUser",
    "987654",
    "NestedKey",
    "U2Vzc2lvbg",
    "CmdLinePw",
    "UrlSigVal123",
    "DbStmtPw",
    "StatusPw",
    "RXZlbnRCYXNpYw",
)
_L(
    Case(
        "span-object",
        "span",
        SPAN,
        _SPAN_SECRETS,
        ("rpc.rs", "CreateContainer", "slow", "a.blob.core.windows.net/c", "fast"),
    )
)
_L(
    Case(
        "span-jsonl",
        "span-text",
        json.dumps(SPAN) + "\n",
        _SPAN_SECRETS,
        ("rpc.rs", "CreateContainer", '"intValue": "5"'),
    )
)

# -- upload error replies (quoted to the operator by kata_debug.upload) ---------------------
for cid, reply, parts in [
    (
        "s3-signature-mismatch",
        f"<Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>{AKID}</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256 20261201T000000Z 20261201/us-east-1/s3/aws4_request 3b7f</StringToSign><SignatureProvided>0a1b2c3d4e5f6071</SignatureProvided></Error>",
        (AKID, "0a1b2c3d4e5f6071", "3b7f"),
    ),
    (
        "azure-auth-failed",
        "<Error><Code>AuthenticationFailed</Code><Message>Signature did not match. sig=Zm9vU2lnVmFs&se=2026</Message></Error>",
        ("Zm9vU2lnVmFs",),
    ),
    (
        "json-echo-token",
        '{"error":"invalid token","token":"EchoTok9876","url":"https://up.example/b?token=QueryTok123"}',
        ("EchoTok9876", "QueryTok123"),
    ),
    (
        "gcs-echo",
        "<Error><Code>SignatureDoesNotMatch</Code><StringToSign>GOOG4-RSA-SHA256 x</StringToSign><CanonicalRequest>PUT /b/o X-Goog-Credential=svc%40p.iam X-Goog-Signature=abc</CanonicalRequest>",
        ("svc%40p.iam", "GOOG4-RSA-SHA256 x"),
    ),
]:
    _L(Case(f"upload-{cid}", "upload", reply, parts))

# -- harmless look-alikes: must come through unchanged ---------------------------------------
LOOKALIKES: list[Case] = [
    Case(
        "prose-token-word",
        "log",
        log("failed to get token: connection refused"),
        keep=("failed to get token: connection refused",),
    ),
    Case(
        "prose-password-word",
        "log",
        log("password: not set, using anonymous pull"),
        keep=("password: not set, using anonymous pull",),
    ),
    Case(
        "pem-mention",
        "log",
        log("expected -----BEGIN RSA PRIVATE KEY----- header in /etc/tls/key.pem")
        + log("line two")
        + log("line three")
        + log("mentions -----END RSA PRIVATE KEY----- too"),
        keep=("line two", "line three", "header in /etc/tls/key.pem"),
    ),
    Case(
        "pem-mention-eol",
        "log",
        "error: file must start with -----BEGIN PRIVATE KEY-----\n" + log("next line survives"),
        keep=("next line survives",),
    ),
    Case(
        "token-count",
        "log",
        log("stats", token_count="5", key_count="3", passthrough="true"),
        keep=("token_count=5", "key_count=3", "passthrough=true"),
    ),
    Case("bypass", "log", log("cgroup bypass=1 compass=north"), keep=("bypass=1", "compass=north")),
    Case(
        "sha256-digest",
        "log",
        log("pulled", digest="sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        keep=("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",),
    ),
    Case(
        "sandbox-id",
        "log",
        log("x", id="4f2c9e1a0b7d4f2c9e1a0b7d4f2c9e1a0b7d4f2c9e1a0b7d4f2c9e1a0b7d4f2c"),
        keep=("4f2c9e1a0b7d4f2c9e1a0b7d4f2c9e1a0b7d4f2c9e1a0b7d4f2c9e1a0b7d4f2c",),
    ),
    Case(
        "git-sha",
        "log",
        log("agent version 3.2.0 commit=1f0e3dad99908345f7439f8ffabdffc4"),
        keep=("1f0e3dad99908345f7439f8ffabdffc4",),
    ),
    Case("docker-run-p", "log", log("exec docker run -p 8080:80 nginx"), keep=("-p 8080:80",)),
    Case(
        "url-no-creds",
        "log",
        log("GET https://registry.example/v2/app/manifests/sha256:abc@x?n=1"),
        keep=("https://registry.example/v2/app/manifests/sha256:abc@x?n=1",),
    ),
    Case(
        "kata-toml",
        "config",
        '[hypervisor.qemu]\npath = "/opt/kata/bin/qemu-system-x86_64"\nkernel_params = "agent.log=debug"\ndefault_memory = 2048\nenable_debug = true\n[agent.kata]\ndebug_console_enabled = false\n',
        keep=(
            'path = "/opt/kata/bin/qemu-system-x86_64"',
            "default_memory = 2048",
            'kernel_params = "agent.log=debug"',
        ),
    ),
    Case(
        "containerd-toml",
        "config",
        '[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]\n  runtime_type = "io.containerd.kata.v2"\n  pod_annotations = ["io.katacontainers.*"]\n',
        keep=('config_path = "/etc/containerd/certs.d"', 'runtime_type = "io.containerd.kata.v2"'),
    ),
    Case(
        "k8s-keys",
        "k8s",
        POD,
        keep=(
            "node.kubernetes.io/not-ready",
            "katacontainers.io/kata-runtime",
            "app.conf",
            "secretKeyRef",
            "NoExecute",
        ),
    ),
    Case(
        "oci-harmless",
        "oci",
        {
            "process": {"args": ["sh", "-c", "sleep 10"], "cwd": "/"},
            "linux": {"resources": {"memory": {"limit": 536870912}}},
            "annotations": {"io.katacontainers.pkg.oci.bundle_path": "/run/containerd/x"},
        },
        keep=("sleep 10", "536870912", "/run/containerd/x"),
    ),
    Case(
        "span-harmless",
        "span",
        {
            "attributes": [
                {"key": "rpc.method", "value": {"stringValue": "CreateContainer"}},
                {"key": "token_count", "value": {"intValue": "5"}},
                {"key": "public_key", "value": {"stringValue": "ssh-ed25519 AAAAC3Nza"}},
            ]
        },
        keep=("CreateContainer", "ssh-ed25519 AAAAC3Nza"),
    ),
    Case(
        "secret-ref-name",
        "k8s",
        {
            "spec": {
                "volumes": [{"secret": {"secretName": "tls-cert", "items": [{"key": "tls.key", "path": "tls.key"}]}}]
            }
        },
        keep=("tls-cert", "tls.key"),
    ),
]

# -- /var/log/kubelet.log: klog lines, read by shim-logs -----------------------------------
# Place "kubelet-log": the content is written to the node's /var/log/kubelet.log and a real
# shim-logs collection reads it (klog stamps, `--since`, the stream redactor).


def klog(rest: str, level: str = "I") -> str:
    return f"{level}1201 10:00:00.123456    2345 {rest}\n"


for cid, text, parts, keep in [
    (
        "registry-basic-auth-header",
        klog(
            'docker_credentials.go:88] "Pulling image" image="reg.example.com/app:1" auth="Authorization: Basic cm9ib3Q6aHVudGVyMg=="'
        ),
        ("cm9ib3Q6aHVudGVyMg",),
        ("Pulling image", "reg.example.com/app:1"),
    ),
    (
        "round-tripper-bearer",
        klog(
            f'round_trippers.go:466] curl -v -XGET  -H "Accept: application/json" -H "Authorization: Bearer {JWT}" \'https://10.96.0.1:443/api/v1/nodes/n1\''
        ),
        (JWT[:40], JWT[-20:]),
        ("round_trippers.go:466", "https://10.96.0.1:443/api/v1/nodes/n1"),
    ),
    (
        "round-tripper-header-line",
        klog(f"round_trippers.go:473]     Authorization: Bearer {GHP}"),
        (GHP,),
        ("round_trippers.go:473",),
    ),
    (
        "pull-url-userinfo",
        klog(
            'remote_image.go:180] "PullImage from image service failed" err="rpc error: code = Unknown desc = failed to resolve reference: '
            'failed to do request: Head \\"https://robot:Pu11S3cr3t@registry.example.com/v2/app/manifests/1.0\\": dial tcp: i/o timeout"',
            "E",
        ),
        ("Pu11S3cr3t",),
        ("PullImage from image service failed", "registry.example.com/v2/app/manifests/1.0"),
    ),
    (
        "dockerconfigjson-auth",
        klog(
            'kuberuntime_image.go:52] "Image pull secret" config={"auths":{"reg.example.com":{"username":"robot","password":"DockerCfgPw9","auth":"cm9ib3Q6RG9ja2VyQ2ZnUHc5"}}}',
            "W",
        ),
        ("DockerCfgPw9", "cm9ib3Q6RG9ja2VyQ2ZnUHc5"),
        ("reg.example.com",),
    ),
    (
        "flag-token",
        klog('flags.go:64] FLAG: --token="07401b.f395accd246ae52d"'),
        ("f395accd246ae52d",),
        ("FLAG: --token=",),
    ),
    (
        "structured-token-kv",
        klog(f'csi_attacher.go:360] "NodeStageVolume" volume="pv-1" token="{AWS_SECRET}" secretKey={AKID}'),
        (AWS_SECRET, AKID),
        ("NodeStageVolume", 'volume="pv-1"'),
    ),
    (
        "exec-probe-password-arg",
        klog(
            'prober.go:107] "Probe failed" probeType="Liveness" pod="db/pg-0" output="psql: error" command=[pg_isready --password Pr0beSecret -h localhost]',
            "E",
        ),
        ("Pr0beSecret",),
        ("Probe failed", "pg_isready", "db/pg-0"),
    ),
    (
        "signed-url",
        klog(
            'kubelet.go:2100] "Fetching" url="https://b.s3.amazonaws.com/o?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential='
            + AKID
            + '%2F20261201%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=9d1e5f2a7c3b8e4f6a0d2c9b7e5f3a1d"'
        ),
        (AKID, "9d1e5f2a7c3b8e4f6a0d2c9b7e5f3a1d"),
        ("b.s3.amazonaws.com/o",),
    ),
]:
    _L(Case(f"kubelet-{cid}", "kubelet-log", text, parts, keep))

# -- audit.log: AVC events whose PROCTITLE (hex argv) shim-logs decodes -----------------------
# Place "audit-proctitle": the content is an argv, logged hex-encoded in an AVC event's
# PROCTITLE record; a real shim-logs collection decodes it to text and redacts that.
for cid, argv, parts, keep in [
    ("password-flag", ["mysql", "--password", "AuditPw0rd1", "-h", "db"], ("AuditPw0rd1",), ("mysql", "-h db")),
    ("password-attached", ["mysql", "-pAuditPw0rd2", "-u", "root"], ("AuditPw0rd2",), ("mysql", "-u root")),
    (
        "token-equals",
        ["kata-agent-ctl", "--token=AuditTok3n33", "connect"],
        ("AuditTok3n33",),
        ("kata-agent-ctl", "connect"),
    ),
    (
        "curl-user",
        ["curl", "-u", "robot:AuditCurlPw4", "https://reg.example.com/v2/"],
        ("AuditCurlPw4",),
        ("curl", "https://reg.example.com/v2/"),
    ),
    (
        "url-userinfo",
        ["skopeo", "copy", "docker://robot:AuditUrlPw5@reg.example.com/app"],
        ("AuditUrlPw5",),
        ("skopeo", "reg.example.com/app"),
    ),
    (
        # Decoded argv is joined by spaces: a header value masks to the end of the record,
        # so the header is the last argument here (a URL after it would be masked too).
        "bearer-header",
        ["curl", "https://api.example.com", "-H", f"Authorization: Bearer {GHP}"],
        (GHP,),
        ("curl https://api.example.com -H",),
    ),
    (
        "env-aws-secret",
        ["env", f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", "aws", "s3", "ls"],
        (AWS_SECRET,),
        ("aws s3 ls",),
    ),
    (
        "podman-login",
        ["podman", "login", "-u", "robot", "-p", "AuditLoginPw6", "reg.example.com"],
        ("AuditLoginPw6",),
        ("podman login", "reg.example.com"),
    ),
]:
    _L(Case(f"audit-{cid}", "audit-proctitle", argv, parts, keep))

# -- the node agent's capture manifest: `trigger.line` ---------------------------------------
# Place "trigger-line": the one log line that triggered a capture, as the agent writes it into
# the capture's manifest (and its listing record) through `Redactor.text`. Every one-line
# log form above, as a trigger line.
for _c in list(CASES):
    if _c.place == "log" and _c.content.count("\n") == 1 and _c.content.endswith("\n"):
        _L(Case(f"trigger-{_c.id}", "trigger-line", _c.content[:-1], _c.secrets, _c.keep))

LOOKALIKES += [
    Case(
        "kubelet-token-volume",
        "kubelet-log",
        klog(
            'operation_generator.go:721] "MountVolume.SetUp succeeded for volume \\"kube-api-access-x8f2k\\"" pod="default/token-rotator-0"'
        ),
        keep=("kube-api-access-x8f2k", "default/token-rotator-0"),
    ),
    Case(
        "kubelet-secret-ref",
        "kubelet-log",
        klog('kubelet_pods.go:980] "Secret key reference" secretKeyRef="db-creds" key="password" optional=false', "W"),
        keep=('secretKeyRef="db-creds"', 'key="password"'),
    ),
    Case(
        "kubelet-probe-auth-failed",
        "kubelet-log",
        klog(
            'prober.go:107] "Probe failed" probeType="Readiness" output="HTTP probe failed with statuscode: 401 (Unauthorized)"'
        ),
        keep=("statuscode: 401 (Unauthorized)",),
    ),
    Case(
        "audit-harmless-argv",
        "audit-proctitle",
        ["/opt/kata/bin/qemu-system-x86_64", "-name", "sandbox-4f2c9e1a0b7d", "-m", "2048M", "-smp", "1"],
        keep=("/opt/kata/bin/qemu-system-x86_64 -name sandbox-4f2c9e1a0b7d -m 2048M -smp 1",),
    ),
    Case(
        "trigger-harmless",
        "trigger-line",
        'time="2026-12-01T10:00:00Z" level=error msg="failed to get token: connection refused" sandbox=4f2c9e1a0b7d',
        keep=('msg="failed to get token: connection refused" sandbox=4f2c9e1a0b7d',),
    ),
]

# -- operator rules (`--redact-config`): what only the site knows is secret ------------------
# USER_RULES is the rules document the USER_CASES are redacted with, on top of the defaults.
USER_RULES: dict[str, Any] = {
    "rules": [
        {"name": "employee-id", "regex": r"\bEMP-[0-9]{6}\b"},
        {"name": "tenant", "regex": r"tenant/([a-z]+-[0-9]{2,})"},
        {"name": "corp-session", "keys": ["X-Corp-Session", "corp.session", "corpSessionId"]},
        {"name": "lab-password", "literals": ["Lab!Pw-2026", "ZebraOrbit77"]},
    ]
}
USER_CASES: list[Case] = [
    Case("user-log-regex", "log", log("audit by EMP-004217 done"), ("EMP-004217",), ("audit by", "done")),
    Case("user-log-group", "log", log("GET /v1/tenant/acme-42/pods"), ("acme-42",), ("/v1/tenant/", "/pods")),
    Case("user-log-key", "log", log("proxy", **{"X-Corp-Session": "sQ9xT2v"}), ("sQ9xT2v",), ("X-Corp-Session=",)),
    Case("user-log-key-colon", "log", "X-Corp-Session: sQ9xT2v\n", ("sQ9xT2v",), ("X-Corp-Session: ",)),
    Case("user-log-literal", "log", log("mysql -pLab!Pw-2026 ok"), ("Lab!Pw-2026",), ("mysql", " ok")),
    Case("user-log-literal-anywhere", "log", "xZebraOrbit77x\n", ("ZebraOrbit77",), ("x***x",)),
    Case("user-config-key", "config", 'corp.session = "c0nfSess"\nmode = "fast"\n', ("c0nfSess",), ('mode = "fast"',)),
    Case(
        "user-oci",
        "oci",
        {
            "process": {"args": ["/app", "--corpSessionId", "ArgSess1", "EMP-000777"], "env": ["X=ZebraOrbit77"]},
            "annotations": {"corp.session": "AnnSess2", "owner": "EMP-123456"},
        },
        ("ArgSess1", "EMP-000777", "ZebraOrbit77", "AnnSess2", "EMP-123456"),
        ("/app", "--corpSessionId"),
    ),
    Case(
        "user-oci-raw",
        "oci-raw",
        '{"process":{"args":["/app","--corp.session=RawSess3"]},"annotations":{"owner":"EMP-654321"',
        ("RawSess3", "EMP-654321"),
        ("--corp.session=",),
    ),
    Case(
        "user-persist",
        "persist",
        {"Cmd": {"Args": ["sh", "-c", "login -u bob -p ZebraOrbit77"], "Envs": [{"Var": "A", "Value": "b"}]}},
        ("ZebraOrbit77",),
        ("login -u bob",),
    ),
    Case(
        "user-k8s",
        "k8s",
        {
            "metadata": {"annotations": {"corp.session": "K8sSess4"}, "labels": {"owner": "EMP-111111"}},
            "spec": {"tolerations": [{"key": "corp.session", "operator": "Exists"}]},
        },
        ("K8sSess4", "EMP-111111"),
        ('"key": "corp.session"', "Exists"),
    ),
    Case(
        "user-span",
        "span",
        {
            "attributes": [
                {"key": "corp.session", "value": {"arrayValue": {"values": [{"stringValue": "SpanSess5"}]}}},
                {"key": "db.statement", "value": {"stringValue": "select * where pw='Lab!Pw-2026'"}},
            ]
        },
        ("SpanSess5", "Lab!Pw-2026"),
        ("select * where pw=",),
    ),
    Case(
        "user-span-text",
        "span-text",
        '{"attributes":[{"key":"corp.session","value":{"stringValue":"SpanSess6"}},'
        '{"key":"enduser.id","value":{"stringValue":"EMP-222222"}}]}\n',
        ("SpanSess6", "EMP-222222"),
        ('"enduser.id"',),
    ),
]
# Text the user rules are close to and must leave alone.
USER_LOOKALIKES: list[Case] = [
    Case("user-lookalike-short-id", "log", log("EMP-12 and EMP-1234567x"), keep=("EMP-12 ", "EMP-1234567x")),
    Case("user-lookalike-tenant", "log", log("tenant/ACME listed"), keep=("tenant/ACME listed",)),
    Case(
        "user-lookalike-key-prose", "log", log("corp session renewed; X-Corp-Sessions=3"), keep=("X-Corp-Sessions=3",)
    ),
    Case(
        "user-lookalike-literal-part", "log", log("Lab!Pw rotated; ZebraOrbit7"), keep=("Lab!Pw rotated", "ZebraOrbit7")
    ),
]
