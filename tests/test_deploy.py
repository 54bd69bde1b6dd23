"""The deployment recipes in deploy/: what can run here runs (the systemd unit's command lines);
the rest is parsed and checked against the daemon (probes, ports, shard variable, volumes).
Docker, compose and Kubernetes themselves are not run here (docs/deploy.md)."""

import configparser
import os
import re
import shlex
import signal
import subprocess
import sys

import yaml
from conftest import REPO, VIDEOS
from mosquitto import free_port

from streampose import shard
from streampose.graph.loader import load_graph

DEPLOY = REPO / "deploy"


def manifests() -> dict[str, dict]:
    docs = [d for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_the_statefulset_shards_by_pod_name_and_probes_the_daemon_s_endpoints(tmp_path, monkeypatch):
    objects = manifests()
    sts = objects["StatefulSet/streampose"]
    replicas = sts["spec"]["replicas"]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = [e["name"] for e in container["env"]]
    shard_var = next(e for e in container["env"] if e["name"] == shard.ENV)
    # $(POD_NAME) expands only if POD_NAME is defined earlier in the list.
    assert env.index("POD_NAME") < env.index(shard.ENV)
    assert container["env"][env.index("POD_NAME")]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    owned = []
    for ordinal in range(replicas):
        value = shard_var["value"].replace("$(POD_NAME)", f"{sts['metadata']['name']}-{ordinal}")
        parsed = shard.parse(value)
        assert (parsed.index, parsed.count) == (ordinal, replicas)
        owned.append(parsed)
    # The ConfigMap's graph loads and validates, and its port is the one probed.
    graph_text = objects["ConfigMap/streampose-graph"]["data"]["graph.yml"]
    (tmp_path / "graph.yml").write_text(graph_text)
    for i in range(1, 5):
        monkeypatch.setenv(f"CAMERA_{i}_URL", str(VIDEOS / "fall_faint_studio_1280x720.mp4"))
    monkeypatch.setenv("MQTT_HOST", "mosquitto")
    monkeypatch.setenv("STREAMPOSE_WEB_TOKEN", "a-token-of-at-least-16")
    graph = load_graph(tmp_path / "graph.yml")
    port = int(graph.spec.runtime.metrics.bind.rpartition(":")[2])
    assert graph.spec.runtime.metrics.token is not None  # bound beyond loopback: the page needs it
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {kind: p["path"] for kind, p in probes.items()} == {
        "startupProbe": "/readyz", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    assert all(ports[p["port"]] == port for p in probes.values())
    # Every camera of the graph belongs to exactly one pod.
    sources = [s.id for s in graph.spec.sources]
    assert sorted(s for p in owned for s in sources if p.owns(s)) == sorted(sources)
    # Non-root, and the image's volumes and arguments.
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/config", "/models", "/out"} <= mounts and container["args"][:1] == ["/config/graph.yml"]
    assert objects["Service/streampose"]["spec"]["ports"][0]["targetPort"] == "http"


def test_the_dockerfile_is_non_root_with_models_and_outputs_as_volumes(tmp_path):
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = re.findall(r"^([A-Z]+) (.*)$", text, re.M)
    last = {name: value for name, value in instructions}
    assert last["FROM"].endswith("-slim") and last["USER"].isdigit() and int(last["USER"]) != 0
    assert yaml.safe_load(last["VOLUME"]) == ["/models", "/out"]
    assert yaml.safe_load(last["ENTRYPOINT"]) == ["streampose", "run"]
    assert yaml.safe_load(last["CMD"]) == ["/config/graph.yml", "-o", "/out"]
    assert "STREAMPOSE_MODELS=/models" in last["ENV"]
    for name, value in instructions:
        if name == "COPY":
            for source in value.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such file"
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"mosquitto", "streampose"} and services["streampose"]["depends_on"] == ["mosquitto"]
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    mounted = [v.split(":")[0] for s in services.values() for v in s.get("volumes", [])]
    assert (DEPLOY / "mosquitto.conf").is_file() and "./graph.yml" in mounted and (DEPLOY / "graph.yml").is_file()


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEPLOY / name)
    return parser


def localise(command: str, graph, out, port: int) -> list[str]:
    """The unit's command line with this machine's paths: the venv's streampose -> this Python."""
    argv = shlex.split(command.replace("9100", str(port)))
    assert argv[0] == "/opt/streampose/.venv/bin/streampose"
    argv = [sys.executable, "-m", "streampose", *argv[1:]]
    return [{"/etc/streampose/graph.yml": str(graph), "/var/lib/streampose/out": str(out)}.get(a, a) for a in argv]


def test_the_systemd_unit_s_command_lines_run_the_daemon_and_its_probes(tmp_path):
    service = unit("streampose.service")["Service"]
    port = free_port()
    graph = tmp_path / "graph.yml"
    graph.write_text(yaml.safe_dump({
        "sources": [{"id": "cam", "uri": str(VIDEOS / "fall_faint_studio_1280x720.mp4"),
                     "options": {"realtime": True, "loop": True}}],
        "stages": [{"id": "live", "type": "live"}],
        "runtime": {"metrics": {"bind": f"127.0.0.1:{port}"}}}))
    start = localise(service["ExecStart"], graph, tmp_path / "out", port)
    assert start[3:5] == ["run", str(graph)]
    daemon = subprocess.Popen(start, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "STREAMPOSE_MODELS": service["Environment"].split("=", 1)[1]})
    try:
        ready = subprocess.run(localise(service["ExecStartPost"], graph, tmp_path / "out", port), cwd=REPO,
                               capture_output=True, text=True, timeout=150)
        assert ready.returncode == 0, ready.stderr
        livez = unit("streampose-livez.service")["Service"]["ExecStart"]
        probe = re.search(r"'(\S+ probe \S+)", livez)[1]
        assert subprocess.run(localise(probe, graph, tmp_path, port), cwd=REPO, timeout=30).returncode == 0
        assert service["KillSignal"] == "SIGTERM"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(int(service["TimeoutStopSec"])) == 0, daemon.stderr.read()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    # And a probe of nothing fails with one line.
    down = subprocess.run(localise(probe, graph, tmp_path, port), cwd=REPO, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and len(down.stderr.strip().splitlines()) == 1
