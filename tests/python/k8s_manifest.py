"""Checks the fields of docker/k8s/deployment.yaml that the sidecar's
operation depends on (parsed as YAML, as the API server would).

Usage: k8s_manifest.py <path to deployment.yaml>
"""

import sys

import yaml


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def memory_bytes(text):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(text[: -len(unit)]) * factor
    return int(text)


def main() -> None:
    docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) >= {"Deployment", "PodDisruptionBudget", "NetworkPolicy"}, kinds.keys()
    deployment = kinds["Deployment"]
    labels = deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]["spec"]

    # A native sidecar: an init container that keeps running, started (and
    # probed) before the gateway, stopped after it.
    sidecars = [c for c in pod.get("initContainers", []) if c["name"] == "session-sidecar"]
    assert len(sidecars) == 1, "the sidecar is not an init container"
    sidecar = sidecars[0]
    assert sidecar.get("restartPolicy") == "Always", "not a native sidecar"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "lifecycle" not in sidecar, "no preStop sleep is needed with a native sidecar"
    assert all(c["name"] != "session-sidecar" for c in pod["containers"])
    assert any(c["name"] == "gateway" for c in pod["containers"])

    # The shutdown budget fits the grace period.
    env = env_of(sidecar)
    drain_s = int(env["SESSION_SIDECAR_DRAIN_TIMEOUT_MS"]) / 1000
    last_replies_s = int(env["SESSION_SIDECAR_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > drain_s + last_replies_s

    # Memory: resident memory runs up to ~1.9x the counted cache memory; the
    # query buffers are bounded well under the limit.
    limit = memory_bytes(sidecar["resources"]["limits"]["memory"])
    assert 1.9 * int(env["SESSION_SIDECAR_MAXMEMORY"]) < limit * 0.75, "the cache leaves no headroom"
    assert env["SESSION_SIDECAR_CLIENT_QUERY_BUFFER_LIMIT"] in ("8mb", "8388608")
    assert "SESSION_SIDECAR_MAXCLIENTS" in env

    # Rolling updates start the new pod first; evictions leave peers.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = kinds["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"] == labels
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable")

    # Peers reach the RESP port, Prometheus the metrics port.
    policy = kinds["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == labels
    ports = {p["port"] for rule in policy["ingress"] for p in rule.get("ports", [])}
    assert {6380, 9380} <= ports, ports
    peer_rule = [r for r in policy["ingress"] if any(p["port"] == 6380 for p in r["ports"])][0]
    assert peer_rule["from"][0]["podSelector"]["matchLabels"] == labels
    print("ok")


if __name__ == "__main__":
    main()
