"""examples/kubernetes/holmes.yaml is a Deployment that works as the README
says: it parses as YAML (python3-yaml), its ConfigMap's INI passes
`holmes check` with the Downward API variables set, the init container
copies libholmes.so into an emptyDir that the service mounts where
LD_PRELOAD points, HOLMES_CONFIG names the ConfigMap's key where it is
mounted, the dump dir and the spool lie on a volume, and the pod's name and
namespace reach the Pyroscope tags. The README names these fields; each of
them is checked here. Finally the service's environment, as Kubernetes
would set it, starts a real agent under LD_PRELOAD. watch.yaml, the same
service watched from a `holmes watch --cgroup ..` sidecar, is checked and
its command run."""
import configparser
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SANITIZE, Workdir, check, finish, libholmes, tool  # noqa: E402

try:
    import yaml
except ImportError:
    print("SKIP: python3-yaml is missing (scripts/deps.sh test installs it)")
    sys.exit(77)

SRC = os.environ.get("HOLMES_SRC") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(SRC, "examples", "kubernetes", "holmes.yaml")
POD = {"POD_NAME": "checkout-api-7d9f8-x2x4q", "POD_NAMESPACE": "shop"}


def load():
    with open(EXAMPLE) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {d.get("kind"): d for d in docs}
    check(set(by_kind) == {"ConfigMap", "Deployment"}, "kinds in the example: %s" % list(by_kind))
    return by_kind.get("ConfigMap", {}), by_kind.get("Deployment", {})


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def mount_of(container, volume):
    return next((m["mountPath"] for m in container.get("volumeMounts", [])
                 if m["name"] == volume), None)


def volume_for_path(container, path):
    """The volume whose mount holds path, and that mount."""
    best = None
    for m in container.get("volumeMounts", []):
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"):
            if not best or len(m["mountPath"]) > len(best["mountPath"]):
                best = m
    return (best["name"], best["mountPath"]) if best else (None, None)


def read_ini(text):
    ini = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    ini.read_string(text)
    return ini


def check_ini(w, configmap):
    data = configmap.get("data", {})
    check(len(data) == 1, "the ConfigMap holds %s, expected one INI" % list(data))
    key, text = next(iter(data.items()), ("", ""))
    path = os.path.join(w.path, key)
    with open(path, "w") as f:
        f.write(text)
    env = dict(os.environ, **POD)
    r = subprocess.run([tool(), "check", path], capture_output=True, text=True, env=env)
    check(r.returncode == 0, "holmes check refuses the ConfigMap's INI: %s%s" % (r.stdout, r.stderr))
    return key, path, read_ini(text)


def check_deployment(configmap, deployment, key, ini):
    check(deployment.get("apiVersion") == "apps/v1", "Deployment apiVersion")
    spec = deployment.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    check(spec.get("selector", {}).get("matchLabels", {}).items() <= labels.items(),
          "the selector does not match the pod template's labels")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    inits, containers = pod.get("initContainers", []), pod.get("containers", [])
    check(len(inits) == 1 and len(containers) == 1,
          "expected one init container and one container")
    if not (inits and containers):
        return
    init, svc = inits[0], containers[0]
    env = env_of(svc)

    # LD_PRELOAD: the init container copies libholmes.so into an emptyDir
    # that the service mounts where LD_PRELOAD points.
    preload = env.get("LD_PRELOAD", {}).get("value", "")
    check(preload.endswith("/libholmes.so"), "LD_PRELOAD is %r" % preload)
    lib_volume, lib_mount = volume_for_path(svc, preload)
    check(lib_volume and "emptyDir" in volumes.get(lib_volume, {}),
          "LD_PRELOAD %s is not on an emptyDir volume" % preload)
    init_mount = mount_of(init, lib_volume)
    check(init_mount is not None, "the init container does not mount %s" % lib_volume)
    command = init.get("command", []) + init.get("args", [])
    target = (init_mount or "") + preload[len(lib_mount or ""):]
    check(command[:1] == ["cp"] and command[-1] == target and "libholmes.so" in command[-2],
          "the init container does not copy libholmes.so to %s: %s" % (target, command))

    # HOLMES_CONFIG: the ConfigMap's key where its volume is mounted.
    config = env.get("HOLMES_CONFIG", {}).get("value", "")
    cfg_volume, cfg_mount = volume_for_path(svc, config)
    check(cfg_volume and volumes.get(cfg_volume, {}).get("configMap", {}).get("name") ==
          configmap.get("metadata", {}).get("name"),
          "HOLMES_CONFIG %s is not on the ConfigMap's volume" % config)
    check(config == "%s/%s" % (cfg_mount, key), "HOLMES_CONFIG %s, ConfigMap key %s" % (
        config, key))

    # The Downward API: pod name and namespace, used by the tags.
    for name, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        got = env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        check(got == field, "%s comes from %r, not the Downward API's %s" % (name, got, field))
    tags = ini.get("reporter.pyroscope", "tags", fallback="")
    for var in ("${POD_NAME}", "${POD_NAMESPACE}"):
        check(var in tags, "the Pyroscope tags do not use %s: %s" % (var, tags))

    # The dump dir and the spool lie on a volume of their own.
    for section, key_name in (("reporter.file", "dir"), ("reporter.pyroscope", "spool_dir")):
        path = ini.get(section, key_name, fallback="")
        vol, _ = volume_for_path(svc, path)
        check(vol and vol not in (lib_volume, cfg_volume),
              "[%s] %s = %s is not on a dumps volume" % (section, key_name, path))
    return env


def check_readme():
    with open(os.path.join(SRC, "README.md")) as f:
        readme = f.read()
    for word in ("examples/kubernetes", "initContainers", "emptyDir", "LD_PRELOAD",
                 "HOLMES_CONFIG", "ConfigMap", "Downward API", "POD_NAME", "POD_NAMESPACE",
                 "shareProcessNamespace", "holmes watch", "--cgroup .."):
        check(word in readme, "README.md does not name %s" % word)


def check_agent_starts(w, ini_path):
    """The container's environment, with local paths, starts a real agent."""
    if SANITIZE:
        print("SKIP the LD_PRELOAD run: sanitizer builds are not preloaded")
        return
    with open(ini_path) as f:
        text = f.read()
    text = text.replace("/dumps/", os.path.join(w.path, "dumps") + "/")
    text = re.sub(r"(?m)^url = .*$", "url = http://127.0.0.1:9", text)
    local = os.path.join(w.path, "local.ini")
    with open(local, "w") as f:
        f.write(text)
    env = dict(os.environ, LD_PRELOAD=libholmes(), HOLMES_CONFIG=local, **POD)
    r = subprocess.run(["sleep", "2"], capture_output=True, text=True, env=env, timeout=60)
    check(r.returncode == 0, "sleep under the agent exited %d: %s" % (r.returncode, r.stderr))
    check("error" not in r.stderr.lower(), "the agent complained: %s" % r.stderr)
    check(os.path.isdir(os.path.join(w.path, "dumps", POD["POD_NAME"], "spool")),
          "the spool under the pod's dump dir was not created: %s" % r.stderr)


WATCH_EXAMPLE = os.path.join(SRC, "examples", "kubernetes", "watch.yaml")


def check_watch_example(w):
    """watch.yaml: a `holmes watch --cgroup ..` sidecar in a pod that shares its
    process namespace; its command, run here with the ConfigMap's INI, watches
    this process's sibling cgroup and stops cleanly."""
    with open(WATCH_EXAMPLE) as f:
        docs = {d.get("kind"): d for d in yaml.safe_load_all(f) if d}
    check(set(docs) == {"ConfigMap", "Deployment"}, "kinds in watch.yaml: %s" % list(docs))
    pod = docs.get("Deployment", {}).get("spec", {}).get("template", {}).get("spec", {})
    check(pod.get("shareProcessNamespace") is True, "watch.yaml: shareProcessNamespace is not true")
    sidecars = [c for c in pod.get("containers", []) if c.get("command", [])[:2] == ["holmes", "watch"]]
    check(len(sidecars) == 1 and len(pod.get("containers", [])) == 2,
          "watch.yaml: expected the service and one holmes watch sidecar")
    if not sidecars:
        return
    command = sidecars[0]["command"]
    check("--cgroup" in command, "the sidecar does not watch a cgroup: %s" % command)
    config = command[command.index("-c") + 1] if "-c" in command else ""
    vol, mount = volume_for_path(sidecars[0], config)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    check(vol and volumes.get(vol, {}).get("configMap", {}).get("name") ==
          docs["ConfigMap"].get("metadata", {}).get("name"),
          "the sidecar's -c %s is not on the ConfigMap's volume" % config)
    key, text = next(iter(docs["ConfigMap"].get("data", {}).items()), ("", ""))
    check(config == "%s/%s" % (mount, key), "-c %s, ConfigMap key %s" % (config, key))
    text = text.replace("/dumps/", os.path.join(w.path, "watch-dumps") + "/")
    text = re.sub(r"(?m)^url = .*$", "url = http://127.0.0.1:9", text)
    local = os.path.join(w.path, "watch.ini")
    with open(local, "w") as f:
        f.write(text)
    args = [tool()] + command[1:]
    args[args.index("-c") + 1] = local
    r = subprocess.run(args + ["--for", "1s"], capture_output=True, text=True,
                       env=dict(os.environ, **POD), timeout=60)
    check(r.returncode == 0, "the sidecar's command exited %d: %s" % (r.returncode, r.stderr))
    check("error" not in r.stderr.lower(), "holmes watch complained: %s" % r.stderr)


def test_kubernetes_example():
    w = Workdir("holmes-k8s-")
    configmap, deployment = load()
    check_watch_example(w)
    key, ini_path, ini = check_ini(w, configmap)
    check_deployment(configmap, deployment, key, ini)
    check_readme()
    check_agent_starts(w, ini_path)
    w.cleanup()


if __name__ == "__main__":
    test_kubernetes_example()
    finish()
