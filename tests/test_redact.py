"""Secrets stay out of bundles: each rule, its count, and what it must leave alone."""

from kata_debug.redact.redactor import Redactor, looks_secret


def test_text_rules_mask_values_and_count_per_rule() -> None:
    r = Redactor()
    out = r.bytes(
        b"GET /api Authorization: Bearer eyJhbGciOi.abc-123\n"
        b"pulling from https://robot:s3cr3t@registry.example/x\n"
        b"access_token=abc123 token_count=5\n"
        b"  client-key-data: LS0tLS1CRUdJTi\n"
        b'{"password":"hunter2"}\n'
        b"-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
    )
    for secret in (b"eyJhbGciOi", b"s3cr3t", b"robot", b"abc123", b"LS0tLS1CRUdJTi", b"hunter2", b"MIIEowIBAAKCAQEA"):
        assert secret not in out
    assert b"token_count=5" in out  # a key that merely starts with a secret word is kept
    assert b"registry.example/x" in out
    counts = r.counts
    assert counts["pem-private-key"] == 1
    assert counts["url-credentials"] == 1
    assert counts["secret-value"] >= 3


def test_clean_text_is_returned_unchanged() -> None:
    r = Redactor()
    line = b'time="2026-11-28T00:00:00Z" level=debug msg="reading guest console" sandbox=abc source=virtcontainers\n'
    assert r.bytes(line * 3) == line * 3
    assert r.counts == {}


def test_disabled_redactor_changes_nothing() -> None:
    r = Redactor(enabled=False)
    assert r.bytes(b"password=x") == b"password=x"
    assert r.json_value({"process": {"env": ["A=b"]}}, oci=True) == {"process": {"env": ["A=b"]}}


def test_oci_env_values_masked_names_kept() -> None:
    r = Redactor()
    spec = {
        "process": {"env": ["PATH=/usr/bin", "DB_PASSWORD=s3cret", "EMPTY="]},
        "annotations": {
            "io.kubernetes.cri.sandbox-name": "web-0",
            "example.com/api-token": "t0k",
            "kubectl.kubernetes.io/last-applied-configuration": '{"spec":{"containers":[{"env":[{"name":"K","value":"v4lue"}]}]}}',
        },
    }
    out = r.json_value(spec, oci=True)
    assert out["process"]["env"] == ["PATH=***", "DB_PASSWORD=***", "EMPTY="]
    assert out["annotations"]["io.kubernetes.cri.sandbox-name"] == "web-0"
    assert out["annotations"]["example.com/api-token"] == "***"
    assert "v4lue" not in out["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    assert r.counts == {"oci-env": 2, "secret-annotation": 1, "k8s-env": 1}


def test_kubeconfig_credentials_are_masked() -> None:
    r = Redactor()
    kubeconfig = {
        "users": [
            {
                "name": "admin",
                "user": {"token": "abc", "client-key-data": "LS0t", "client-certificate-data": "Q0VSVA=="},
            }
        ]
    }
    out = r.json_value(kubeconfig)
    user = out["users"][0]["user"]
    assert user["token"] == "***" and user["client-key-data"] == "***"
    assert out["users"][0]["name"] == "admin"


def test_stream_redactor_drops_a_private_key_split_across_chunks() -> None:
    s = Redactor().stream()
    out = (
        s.feed(b"ok\n-----BEGIN PRIVATE KEY-----\nAAAA\n")
        + s.feed(b"BBBB\n")
        + s.feed(b"-----END PRIVATE KEY-----\nafter\n")
    )
    assert b"AAAA" not in out and b"BBBB" not in out
    assert out.startswith(b"ok\n") and out.endswith(b"after\n")


def test_secret_looking_keys() -> None:
    for k in ("DB_PASSWORD", "api-key", "io.example/token", "client_secret", "credentials"):
        assert looks_secret(k), k
    for k in ("sandbox-uid", "keyring", "kernel_params", "monkey", "io.kubernetes.cri.sandbox-id"):
        assert not looks_secret(k), k


def test_secret_named_span_attributes_are_masked_in_text_and_json() -> None:
    r = Redactor()
    line = (
        b'{"attributes":[{"key":"db.password","value":{"stringValue":"hunter2"}},'
        b'{"key":"token_count","value":{"intValue":"5"}},{"key":"exec_id","value":{"stringValue":"rpc.rs"}}]}'
    )
    out = r.bytes(line)
    assert b"hunter2" not in out and b'"intValue":"5"' in out and b"rpc.rs" in out
    parsed = r.json_value(
        {"attributes": [{"key": "http.request.header.authorization", "value": {"stringValue": "Basic x"}}]}
    )
    assert parsed["attributes"][0]["value"] == {"stringValue": "***"}
    assert r.counts["otlp-attribute"] == 2


def test_kubernetes_objects_lose_env_values_and_secrets_in_json_annotations() -> None:
    r = Redactor()
    pod = {
        "metadata": {
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": '{"spec":{"containers":[{"env":[{"name":"DB_PASSWORD","value":"hunter2"}]}]}}'
            }
        },
        "spec": {
            "containers": [
                {
                    "env": [
                        {"name": "A", "value": "b"},
                        {"name": "C", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    ]
                }
            ]
        },
    }
    for oci in (False, True):
        out = r.json_value(pod, oci=oci)
        assert "hunter2" not in out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        env = out["spec"]["containers"][0]["env"]
        assert env[0] == {"name": "A", "value": "***"}
        assert env[1]["valueFrom"]["secretKeyRef"]["name"] == "s"  # a reference is not a secret
