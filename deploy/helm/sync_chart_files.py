"""Keep the driftmon chart's generated and copied files in step with their sources.

- values.schema.json, `config` part: driftmon's config schema, generated from the msgspec structs in
  monitor/config.py, so that `helm install` rejects a misspelled or wrongly typed config key just as
  `driftmon check-config` does, instead of the pod crash-looping. The keys the chart sets itself
  (baseline, http.port, http.web_config_file, state.dir) are left out, so setting them is an error too.
- files/driftmon-rules.yml: a copy of deploy/prometheus/driftmon-rules.yml (the PrometheusRule).
- files/dashboards/*.json: copies of grafana/dashboards/*.json (the dashboard ConfigMaps).
Copies, not symlinks: `.Files.Get` cannot follow a symlink out of a packaged chart.

    python deploy/helm/sync_chart_files.py          # update the chart
    python deploy/helm/sync_chart_files.py --check  # exit 1 if anything is out of date

tests/test_helm.py checks the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "driftmon"
SCHEMA_PATH = CHART / "values.schema.json"
RULES = (REPO / "deploy" / "prometheus" / "driftmon-rules.yml", CHART / "files" / "driftmon-rules.yml")
DASHBOARDS = (REPO / "grafana" / "dashboards", CHART / "files" / "dashboards")

# Keys of driftmon's config that the chart owns, per struct.
CHART_OWNED = {"Config": ["baseline"], "HttpConfig": ["port", "web_config_file"], "StateConfig": ["dir"]}


def config_definitions() -> dict:
    """JSON-schema definitions of driftmon's Config, as the chart's `config` value accepts it."""
    sys.path.insert(0, str(REPO))
    import msgspec

    from monitor.config import Config

    (ref,), defs = msgspec.json.schema_components([Config], ref_template="#/definitions/{name}")
    assert ref == {"$ref": "#/definitions/Config"}, ref
    for name, keys in CHART_OWNED.items():
        struct = defs[name]
        for key in keys:
            struct["properties"].pop(key)
            if key in struct.get("required", []):
                struct["required"].remove(key)
    # `driftmon run` needs Kafka (the config allows none only for replay/baseline).
    defs["Config"]["properties"]["kafka"] = {"$ref": "#/definitions/KafkaConfig"}
    defs["Config"]["required"].append("kafka")
    defs["Config"]["description"] = (
        "driftmon's config (docs/DESIGN.md), generated from monitor/config.py by "
        "deploy/helm/sync_chart_files.py. The chart sets baseline, http.port and state.dir."
    )
    for struct in defs.values():  # draft-07 wants no empty "required"
        if struct.get("required") == []:
            del struct["required"]
    return dict(sorted(defs.items()))


def updated(schema: dict) -> dict:
    out = dict(schema)
    out["properties"] = dict(schema["properties"])
    out["properties"]["config"] = {"$ref": "#/definitions/Config"}
    out["definitions"] = config_definitions()
    return out


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def wanted_files() -> dict[Path, bytes | None]:
    """Every file the chart derives from a source, with the content it should have (None: absent)."""
    out: dict[Path, bytes | None] = {}
    current = SCHEMA_PATH.read_text(encoding="utf-8")
    out[SCHEMA_PATH] = render(updated(json.loads(current))).encode()
    source, copy = RULES
    if source.exists():
        out[copy] = source.read_bytes()
    source_dir, copy_dir = DASHBOARDS
    sources = {p.name: p for p in source_dir.glob("*.json")}
    if sources:
        for name, path in sources.items():
            out[copy_dir / name] = path.read_bytes()
        for stale in copy_dir.glob("*.json"):
            if stale.name not in sources:
                out[stale] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if anything is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, content in wanted_files().items():
        have = path.read_bytes() if path.exists() else None
        if have == content:
            continue
        stale.append(path)
        if args.check:
            continue
        if content is None:
            path.unlink()
            print(f"removed {path.relative_to(REPO)}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            print(f"wrote {path.relative_to(REPO)}")
    if args.check and stale:
        names = ", ".join(str(p.relative_to(REPO)) for p in stale)
        print(f"out of date: {names}: run python {Path(__file__).relative_to(REPO)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
