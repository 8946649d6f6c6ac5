"""Validation speed: a generated directory of 10,000 resources through `fedctl validate`.

Prints wall time for the whole validation (load + decode + checks + cross-resource
analysis) and, as a yardstick measured in the same run, the time libyaml alone takes to
parse the same files into plain Python objects (the floor any YAML-based validator pays).
Target (issue 2): under 3 s on the 2-core machine.

    python3 bench/validate.py [--resources 10000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from federation._cli_validate import validate  # noqa: E402

VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc{i}, namespace: ns{ns}}}
spec:
  hosts: [svc{i}]
  http:
  - match:
    - headers:
        end-user: {{exact: jason}}
      uri: {{prefix: /api}}
    route:
    - destination: {{host: svc{i}, subset: v2}}
    retries: {{attempts: 3, perTryTimeout: 2s, retryOn: "5xx,reset,connect-failure"}}
    timeout: 10s
  - route:
    - destination: {{host: svc{i}, subset: v1}}
      weight: 90
    - destination: {{host: svc{i}, subset: v2}}
      weight: 10
"""
DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc{i}, namespace: ns{ns}}}
spec:
  host: svc{i}
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 100}}
      http: {{http1MaxPendingRequests: 10, maxRequestsPerConnection: 10}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
"""
SVC = """\
apiVersion: v1
kind: Service
metadata: {{name: svc{i}, namespace: ns{ns}, labels: {{app: svc{i}}}}}
spec:
  ports:
  - {{port: 9080, name: http}}
  selector: {{app: svc{i}}}
"""
DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: svc{i}-v1, namespace: ns{ns}}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: svc{i}, version: v1}}
  template:
    metadata:
      labels: {{app: svc{i}, version: v1}}
    spec:
      serviceAccountName: svc{i}
      containers:
      - name: app
        image: example/svc:1.0
        ports:
        - containerPort: 9080
"""
AUTHZ = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: svc{i}-viewer, namespace: ns{ns}}}
spec:
  selector:
    matchLabels: {{app: svc{i}}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/ns{ns}/sa/caller"]
    to:
    - operation:
        methods: ["GET"]
"""
TEMPLATES = (VS, DR, SVC, DEPLOY, AUTHZ)


def generate(root: Path, total: int, per_file: int = 10) -> None:
    n_files = (total + per_file - 1) // per_file
    made = 0
    for f in range(n_files):
        docs = []
        for _ in range(per_file):
            if made == total:
                break
            i = made // len(TEMPLATES)
            docs.append(TEMPLATES[made % len(TEMPLATES)].format(i=i, ns=i % 20))
            made += 1
        (root / f"r{f:05d}.yaml").write_text("---\n".join(docs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resources", type=int, default=10_000)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshfed-bench-") as tmp:
        root = Path(tmp)
        generate(root, args.resources)
        files = sorted(root.iterdir())

        t0 = time.perf_counter()
        for p in files:
            list(yaml.load_all(p.read_text(), Loader=yaml.CSafeLoader))
        t_yaml = time.perf_counter() - t0

        t0 = time.perf_counter()
        result = validate([str(root)])
        t_validate = time.perf_counter() - t0

    n = len(result.resources)
    figures = {
        "resources": n, "files": len(files), "errors": len(result.errors),
        "validate_seconds": round(t_validate, 3), "libyaml_parse_seconds": round(t_yaml, 3),
        "ratio_to_libyaml_parse": round(t_validate / t_yaml, 2),
        "resources_per_second": round(n / t_validate),
    }
    print(f"validated {n} resources in {len(files)} files: {t_validate:.2f} s "
          f"({figures['resources_per_second']} resources/s; {len(result.errors)} errors)")
    print(f"libyaml parse alone: {t_yaml:.2f} s; validation costs {figures['ratio_to_libyaml_parse']}x the parse")
    print(f"target: under 3 s -> {'met' if t_validate < 3 else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if result.errors == [] else 1


if __name__ == "__main__":
    sys.exit(main())
