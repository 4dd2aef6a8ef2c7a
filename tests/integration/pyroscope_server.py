#!/usr/bin/python3
"""A fake Pyroscope server for the reporter tests (Python's standard library,
and Debian's python3-protobuf with protoc for the Push API).

Push API: POST /push.v1.PusherService/Push (Connect, unary, binary proto).
The body is decoded as push.v1.PushRequest with Python code that protoc
generates at start-up from the repository's reporters/proto (the messages of
Pyroscope's api/push/v1/push.proto and api/types/v1/types.proto), and
checked as Pyroscope's distributor does (pkg/validation/validate.go): at
least one series; each series' labels valid Prometheus names
([a-zA-Z_][a-zA-Z0-9_]*), UTF-8 values, no name twice, at most 30 labels,
names at most 1024 and values 2048 bytes; __name__ a valid metric name;
service_name present; each sample's raw_profile a pprof profile (gzip'd
or not; decoded with profile.proto) whose sample types contain no '-', and
an ID that is a UUID. Errors are answered as Connect errors: HTTP 400 with
a JSON body {"code": "invalid_argument", "message": ...}. An accepted
series is stored as an upload like an /ingest one: `service` is
service_name, `name` is __name__, `tags` the other labels, from/until the
profile's time range, `api` "push".

/ingest: it checks each request the way Pyroscope's /ingest handler parses it
(pkg/ingester/pyroscope/ingest_handler.go and api/model/labelset): POST
/ingest, a `name` of `<service>{k=v,...}` with the service name made of
[A-Za-z0-9_.\\-/] and label names of [A-Za-z0-9_.], `from`/`until` as unix
seconds, format=pprof, and a body that is a gzip stream. An accepted upload
is answered 200 and stored as OUT/NNNN.pb.gz with one JSON line in
OUT/uploads.jsonl; every request, accepted or not, adds a line to
OUT/requests.jsonl with what the server did with it.

Fault modes (each counts the requests it spoils, in arrival order):
  --down S          bind at once but listen only after S seconds (connections are refused)
  --fail-500 N      answer the first N requests 500
  --hang N          for the first N requests, read the body, then say nothing for --hang-s
  --reject-413 N    answer the first N requests 413 (a final rejection)
  --fail-429 N      answer the first N requests 429 (too many requests: retried)
  --connect-error N answer the first N requests 400 with a Connect error body
                    spread over several lines (a final rejection)
  --close-mid-body N  for the first N requests, read half the body and close the connection
  --basic-auth U:P  require this basic auth (401 otherwise)
  --tenant T        require X-Scope-OrgID: T (401 otherwise)
  --bearer TOKEN    require Authorization: Bearer TOKEN (401 otherwise)
It exits by itself after --max-requests requests or --lifetime seconds.
"""

import argparse
import base64
import gzip
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

SERVICE_RE = re.compile(r"^[A-Za-z0-9_.\-/]+$")
PUSH_PATH = "/push.v1.PusherService/Push"
PROM_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
PROM_METRIC_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("HOLMES_SRC") or os.path.dirname(os.path.dirname(HERE))


def load_protos(out_dir):
    """Generates and imports push_pb2 and profile_pb2 from the repository's .proto files."""
    if not shutil.which("protoc"):
        return None, None
    gen = os.path.join(out_dir, "_pb")
    os.makedirs(gen, exist_ok=True)
    proto = os.path.join(SRC, "reporters", "proto")
    pprof = os.path.join(SRC, "agent", "pprof")
    subprocess.run(["protoc", "--python_out=" + gen, "-I" + proto,
                    os.path.join(proto, "pyroscope/push/v1/push.proto"),
                    os.path.join(proto, "pyroscope/types/v1/types.proto")], check=True)
    subprocess.run(["protoc", "--python_out=" + gen, "-I" + pprof,
                    os.path.join(pprof, "profile.proto")], check=True)
    sys.path.insert(0, gen)
    from pyroscope.push.v1 import push_pb2  # noqa: E402
    import profile_pb2  # noqa: E402
    return push_pb2, profile_pb2


def validate_labels(labels):
    """Pyroscope's ValidateLabels with its default limits; returns an error or None."""
    if not labels:
        return "error at least one label pair is required per profile"
    ls = sorted(labels, key=lambda lp: lp.name)
    if len(ls) > 30:
        return "profile series has %d label names; limit 30" % len(ls)
    names = {lp.name: lp.value for lp in ls}
    if not PROM_METRIC_RE.match(names.get("__name__", "")):
        return "invalid labels: invalid metric name %r" % names.get("__name__")
    if not names.get("service_name"):
        return "invalid labels: service name is not provided"
    last = None
    for lp in ls:
        if len(lp.name) > 1024:
            return "label name too long: %r" % lp.name
        if len(lp.value.encode()) > 2048:
            return "label value too long: %r" % lp.value
        if not PROM_LABEL_RE.match(lp.name):
            return "invalid label name %r" % lp.name
        if lp.name == last:
            return "duplicate label name %r" % lp.name
        last = lp.name
    return None


def decode_profile(profile_pb2, raw):
    """A raw_profile, gzip'd or not, as Pyroscope reads it; raises ValueError."""
    data = raw
    if raw[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError("raw_profile is not a whole gzip stream: %s" % e)
    prof = profile_pb2.Profile()
    try:
        prof.ParseFromString(data)
    except Exception as e:  # google.protobuf.message.DecodeError
        raise ValueError("raw_profile is not a pprof profile: %s" % e)
    if not prof.sample_type:
        raise ValueError("raw_profile has no sample types")
    for st in prof.sample_type:
        if "-" in prof.string_table[st.type]:
            raise ValueError("sample type contains -")
    for loc in prof.location:
        if loc.id == 0:
            raise ValueError("location id is 0")
    for fn in prof.function:
        if fn.id == 0:
            raise ValueError("function id is 0")
    return prof
LABEL_RE = re.compile(r"^[A-Za-z0-9_.]+$")


def parse_name(name):
    """Splits `svc{k=v,...}` as Pyroscope's labelset.Parse does; raises ValueError."""
    service, brace, rest = name.partition("{")
    service = service.strip()
    if not SERVICE_RE.match(service):
        raise ValueError("invalid service name: %r" % service)
    tags = {}
    if brace:
        if not rest.endswith("}"):
            raise ValueError("unterminated tag set: %r" % name)
        body = rest[:-1]
        for part in filter(None, body.split(",")):
            key, eq, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not LABEL_RE.match(key) or key == "__name__":
                raise ValueError("invalid label: %r" % part)
            if "{" in value or "}" in value:
                raise ValueError("invalid label value: %r" % part)
            tags[key] = value
    return service, tags


class Faults:
    """Counters of the fault modes, shared by the handler threads."""

    def __init__(self, args):
        self.lock = threading.Lock()
        self.left = {
            "fail_500": args.fail_500,
            "hang": args.hang,
            "reject_413": args.reject_413,
            "close_mid_body": args.close_mid_body,
            "fail_429": args.fail_429,
            "connect_error": args.connect_error,
        }
        self.requests = 0
        self.stored = 0

    def take(self):
        """Returns the fault to apply to the next request, or None."""
        with self.lock:
            self.requests += 1
            for mode in ("close_mid_body", "hang", "fail_500", "reject_413", "fail_429",
                         "connect_error"):
                if self.left[mode] > 0:
                    self.left[mode] -= 1
                    return mode
        return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-pyroscope/1"

    def log_message(self, fmt, *args):
        sys.stderr.write("pyroscope_server: " + (fmt % args) + "\n")

    def record(self, path, outcome, extra=None):
        line = {"outcome": outcome, "path": path, "time": time.time()}
        line.update(extra or {})
        with self.server.faults.lock:
            with open(os.path.join(self.server.out, "requests.jsonl"), "a") as f:
                f.write(json.dumps(line) + "\n")

    def answer(self, status, text):
        data = (text + "\n").encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout, or it was stopped): it retries.
            self.close_connection = True

    def connect_error(self, status, code, message):
        """A Connect unary error: the HTTP status and a JSON body naming the code."""
        self.connect_error_raw(status, json.dumps({"code": code, "message": message}).encode())

    def connect_error_raw(self, status, data):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self):
        self.record(self.path, "405")
        self.answer(405, "only POST /ingest or " + PUSH_PATH)

    def check_auth(self):
        args = self.server.args
        if args.bearer:
            if self.headers.get("Authorization") != "Bearer " + args.bearer:
                return "bad or missing bearer token"
        if args.basic_auth:
            want = "Basic " + base64.b64encode(args.basic_auth.encode()).decode()
            if self.headers.get("Authorization") != want:
                return "bad or missing basic auth"
        if args.tenant and self.headers.get("X-Scope-OrgID") != args.tenant:
            return "bad or missing X-Scope-OrgID"
        return None

    def check_query(self, url):
        """Returns (metadata, None) or (None, error) like the ingest handler."""
        if url.path != "/ingest":
            return None, "unknown path %s" % url.path
        q = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        one = {k: v[0] for k, v in q.items() if len(v) == 1}
        for key in ("name", "from", "until", "format"):
            if key not in one:
                return None, "missing or repeated query parameter %s" % key
        if one["format"] != "pprof":
            return None, "format is %r, not pprof" % one["format"]
        try:
            service, tags = parse_name(one["name"])
            start, until = int(one["from"]), int(one["until"])
        except ValueError as e:
            return None, str(e)
        if start <= 0 or until < start:
            return None, "bad time range %d..%d" % (start, until)
        meta = {"name": one["name"], "service": service, "tags": tags, "from": start,
                "until": until, "query": url.query,
                "tenant": self.headers.get("X-Scope-OrgID"),
                "content_type": self.headers.get("Content-Type")}
        return meta, None

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        fault = self.server.faults.take()
        if fault == "close_mid_body":
            self.rfile.read(length // 2)
            self.record(self.path, "closed_mid_body")
            self.close_now()
            return
        body = self.rfile.read(length)
        if fault == "hang":
            self.record(self.path, "hung")
            time.sleep(self.server.args.hang_s)
            self.close_now()
            return
        if fault == "connect_error":
            self.record(self.path, "400", {"error": "fault injected: connect_error"})
            data = json.dumps({"code": "invalid_argument",
                               "message": "fault injected:\nconnect_error"}, indent=2)
            self.connect_error_raw(400, data.encode())
            return
        if fault == "fail_429":
            self.record(self.path, "429")
            self.answer(429, "fault injected: fail_429")
            return
        if fault in ("fail_500", "reject_413"):
            status = 500 if fault == "fail_500" else 413
            self.record(self.path, str(status))
            self.answer(status, "fault injected: %s" % fault)
            return
        if url.path == PUSH_PATH:
            self.push(body)
        else:
            self.ingest(url, body)

    def check_push(self, body):
        """Returns (list of metadata, None) or (None, error) like Pyroscope's push handler."""
        push_pb2, profile_pb2 = self.server.pb
        if push_pb2 is None:
            return None, "this server has no protoc to read the Push API"
        ctype = self.headers.get("Content-Type")
        if ctype != "application/proto":
            return None, "Content-Type %r, not application/proto" % ctype
        req = push_pb2.PushRequest()
        try:
            req.ParseFromString(body)
        except Exception as e:  # google.protobuf.message.DecodeError
            return None, "not a PushRequest: %s" % e
        if not req.series:
            return None, "no series"
        metas = []
        for series in req.series:
            err = validate_labels(series.labels)
            if err:
                return None, err
            if len(series.samples) != 1:
                return None, "expected one sample per series, got %d" % len(series.samples)
            sample = series.samples[0]
            if not UUID_RE.match(sample.ID):
                return None, "sample ID %r is not a UUID" % sample.ID
            try:
                prof = decode_profile(profile_pb2, sample.raw_profile)
            except ValueError as e:
                return None, str(e)
            labels = {lp.name: lp.value for lp in series.labels}
            start = prof.time_nanos // 10**9
            until = (prof.time_nanos + prof.duration_nanos + 10**9 - 1) // 10**9
            metas.append({"api": "push", "name": labels.pop("__name__"),
                          "service": labels.pop("service_name"), "tags": labels,
                          "from": start, "until": max(start, until), "id": sample.ID,
                          "tenant": self.headers.get("X-Scope-OrgID"),
                          "authorization": self.headers.get("Authorization"),
                          "content_type": ctype, "raw": sample.raw_profile})
        return metas, None

    def push(self, body):
        denied = self.check_auth()
        if denied:
            self.record(self.path, "401", {"error": denied})
            self.connect_error(401, "unauthenticated", denied)
            return
        metas, err = self.check_push(body)
        if err:
            self.record(self.path, "400", {"error": err})
            self.connect_error(400, "invalid_argument", err)
            return
        files = [self.store(meta.pop("raw"), meta) for meta in metas]
        self.record(self.path, "200", {"file": files[0]})
        self.answer(200, "")

    def store(self, body, meta):
        """Keeps an accepted profile as OUT/NNNN.pb.gz with a line in uploads.jsonl."""
        with self.server.faults.lock:
            self.server.faults.stored += 1
            n = self.server.faults.stored
            meta["file"] = "%04d.pb.gz" % n
            meta["bytes"] = len(body)
            with open(os.path.join(self.server.out, meta["file"]), "wb") as f:
                f.write(body)
            with open(os.path.join(self.server.out, "uploads.jsonl"), "a") as f:
                f.write(json.dumps(meta) + "\n")
        return meta["file"]

    def ingest(self, url, body):
        denied = self.check_auth()
        if denied:
            self.record(self.path, "401", {"error": denied})
            self.answer(401, denied)
            return
        meta, err = self.check_query(url)
        if err is None and body[:2] != b"\x1f\x8b":
            err = "body is not gzip"
        if err is None:
            try:
                gzip.decompress(body)
            except (OSError, EOFError) as e:
                err = "body is not a whole gzip stream: %s" % e
        if err:
            self.record(self.path, "400", {"error": err})
            self.answer(400, err)
            return
        meta["api"] = "ingest"
        self.store(body, meta)
        self.record(self.path, "200", {"file": meta["file"]})
        self.answer(200, "")

    def close_now(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port_file")
    ap.add_argument("out_dir")
    ap.add_argument("--down", type=float, default=0)
    ap.add_argument("--fail-500", type=int, default=0)
    ap.add_argument("--hang", type=int, default=0)
    ap.add_argument("--hang-s", type=float, default=3)
    ap.add_argument("--reject-413", type=int, default=0)
    ap.add_argument("--close-mid-body", type=int, default=0)
    ap.add_argument("--fail-429", type=int, default=0)
    ap.add_argument("--connect-error", type=int, default=0)
    ap.add_argument("--basic-auth", default="")
    ap.add_argument("--tenant", default="")
    ap.add_argument("--bearer", default="")
    ap.add_argument("--max-requests", type=int, default=1000)
    ap.add_argument("--lifetime", type=float, default=60)
    args = ap.parse_args()

    os.makedirs(args.out_dir, exist_ok=True)
    srv = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
    srv.args, srv.out, srv.faults = args, args.out_dir, Faults(args)
    srv.pb = load_protos(args.out_dir)
    # Bound but not listening: connections are refused as by a server that is down.
    srv.server_bind()
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, args.port_file)

    # The lifetime bound holds even while the server is still "down".
    threading.Timer(args.lifetime, lambda: os._exit(0)).start()
    time.sleep(args.down)
    srv.server_activate()

    def watch_count():
        while srv.faults.requests < args.max_requests:
            time.sleep(0.05)
        time.sleep(0.5)  # let the last answer go out
        os._exit(0)

    threading.Thread(target=watch_count, daemon=True).start()
    srv.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
