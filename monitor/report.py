"""`driftmon report` and the daemon's `/report`: one window against the baseline, as one HTML page.

The page is self-contained (inline CSS, inline SVG charts, a little inline JavaScript, and a
Content-Security-Policy that forbids fetching anything), so it can be mailed, attached to an
incident or opened offline. It shows what a data scientist asks first: which features moved, by
how much and how sure, and what the two distributions look like side by side.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from datetime import datetime, timezone

import numpy as np

from detectors import CategoricalProfile
from detectors.interval import effect_interval
from monitor import __version__
from monitor.baseline import Baseline
from monitor.config import Config
from monitor.replay import alert_engine

__all__ = ["load_windows", "render_report", "retrain_verdict"]

log = logging.getLogger(__name__)

#: Feature cards per page of the distributions section (the table always lists every feature).
PAGE_SIZE = 20
#: Categories drawn per categorical chart; the rest are summed in one row.
MAX_CATEGORIES_SHOWN = 12
#: Bootstrap redraws per effect interval.
INTERVAL_DRAWS = 200
INTERVAL_LEVEL = 0.9

_W, _H = 520, 160  # numeric chart size (px)
_GREY, _BLUE, _RED = "#9aa4ae", "#1f6fb4", "#c9302c"


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _num(x, digits: int = 3) -> str:
    """A compact number: 3 significant digits, thousands separators for large values."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, bool):
        return str(x)
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1e6 or a < 1e-3:
        return f"{x:.{digits - 1}e}"
    if a >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{max(0, digits - 1 - int(math.floor(math.log10(a))))}f}"


def _pct(x) -> str:
    if x is None:
        return "–"
    if 0 < abs(x) < 0.001:
        return "<0.1%"
    return f"{100 * x:.1f}%"


def _p(x) -> str:
    if x is None:
        return "–"
    return "<1e-300" if x == 0 else (f"{x:.2e}" if x < 0.001 else f"{x:.3f}")


def _slug(name: str) -> str:
    return "f-" + "".join(c if c.isalnum() or c in "-_" else f"_{ord(c):x}" for c in name)


# ---- statistics the page needs beyond the window result ------------------------------------------------------


def _interval(profile, r: dict, seed: int) -> tuple[float, float] | None:
    """The bootstrap interval of a column's effect, from the baseline profile and the window's counts."""
    dist = r.get("distribution")
    method = r["effect"]["method"]
    if dist is None or r["effect"]["value"] is None:
        return None
    if isinstance(profile, CategoricalProfile):
        p = np.append(profile.counts, [profile.other_count, 0])
        q = np.append(dist["counts"], [dist["other"], dist["unseen"]])
        return effect_interval(method, p, q, level=INTERVAL_LEVEL, draws=INTERVAL_DRAWS, seed=seed)
    if profile.n == 0 or dist["min"] is None:
        return None
    lo, hi = min(profile.min, dist["min"]), max(profile.max, dist["max"])
    return effect_interval(method, profile.counts, dist["counts"], edges=profile.edges, lo=lo, hi=hi,
                           std=profile.std, p_sums=profile.sums, q_sums=dist["sums"], level=INTERVAL_LEVEL,
                           draws=INTERVAL_DRAWS, seed=seed)


def retrain_verdict(config: Config, baseline: Baseline, history: list[dict]) -> dict:
    """Whether the retraining policy recommends retraining after the last window of ``history``.

    The windows are replayed through a fresh alert engine (the daemon's own rules), so the verdict
    is the one the daemon reached, or would reach, at that window.
    """
    policy = config.alerts.retrain
    engine = alert_engine(config, baseline)
    for result in history:
        engine.observe(result)
    state = engine.states.get(engine.dedup_key("retrain_recommended", "model"))
    last = history[-1]
    weights = {f.name: f.weight for f in config.schema.features}
    total = sum(weights.values()) or 1.0
    share = sum(weights.get(n, 0.0) for n in last["drifted"]) / total
    rule = (f"the policy recommends retraining when {policy.drift_weight_share:.0%} of the feature weight, or a key "
            f"feature, drifts {policy.windows} windows in a row"
            + (", or on critical prediction drift" if policy.on_critical_prediction_drift else ""))
    if state is not None and state.firing:
        return {"recommended": True, "headline": "Retraining recommended",
                "reasons": list(state.details.get("reasons", [])), "rule": rule, "share": share}
    if not last["drifted"]:
        why = "no feature drifted in this window"
    elif len(history) < policy.windows:
        why = (f"{share:.0%} of the feature weight drifted in this window; {len(history)} window(s) seen, "
               f"the policy needs {policy.windows} in a row: recommended if it persists"
               if share >= policy.drift_weight_share else
               f"{share:.0%} of the feature weight drifted in this window (policy: {policy.drift_weight_share:.0%})")
    else:
        why = f"{share:.0%} of the feature weight drifted in this window, not yet sustained past the policy"
    return {"recommended": False, "headline": "Retraining not recommended", "reasons": [why], "rule": rule,
            "share": share}


def _log_records(paths: list[str]):
    """The JSON lines of window logs, file by file; missing files and lines torn by a crash are passed over."""
    for path in paths:
        try:
            fh = open(path, encoding="utf-8")
        except FileNotFoundError:
            continue
        with fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


def load_windows(paths: list[str], index: int | None = None, keep: int = 50) -> tuple[dict, list[dict]]:
    """The window result with ``index`` (default: the last) and up to ``keep`` windows ending with it.

    Raises
    ------
    ValueError
        When no log holds a window, or none has that index.
    """
    history: list[dict] = []
    for result in _log_records(paths):
        try:
            i = result["window"]["index"]
        except (KeyError, TypeError):
            continue
        if "features" not in result:
            continue  # a performance window (replay --out has both kinds)
        if index is not None and i > index:
            continue
        history.append(result)
        if len(history) > 2 * keep:
            history = history[-keep:]
    history.sort(key=lambda r: r["window"]["index"])
    if not history:
        raise ValueError(f"no window results in {', '.join(paths)}")
    if index is not None and history[-1]["window"]["index"] != index:
        raise ValueError(f"window {index} is not in {', '.join(paths)} (kept: "
                         f"{history[0]['window']['index']}..{history[-1]['window']['index']})")
    return history[-1], history[-keep:]


# ---- charts -------------------------------------------------------------------------------------------------


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _numeric_svg(profile, dist: dict, color: str, name: str) -> str:
    """Baseline and window histograms on the baseline's bins, as densities on the value axis."""
    edges = profile.edges.tolist()
    lo = min(v for v in (profile.min, dist.get("min")) if v is not None)
    hi = max(v for v in (profile.max, dist.get("max")) if v is not None)
    if edges:
        span = max(edges[-1] - edges[0], 1e-12)
        # A far outlier would squash the body of the chart: tails are drawn at most one body-span wide.
        show_lo, show_hi = max(lo, edges[0] - span), min(hi, edges[-1] + span)
    else:
        show_lo, show_hi = lo, hi
    if show_hi <= show_lo:
        show_lo, show_hi = show_lo - 0.5, show_hi + 0.5
    bounds = [min(lo, show_lo)] + edges + [max(hi, show_hi)]
    floor = (show_hi - show_lo) / 400  # a tail bin of zero width still gets a visible bar
    widths = [max(b - a, floor) for a, b in zip(bounds, bounds[1:])]
    base = np.asarray(profile.counts, dtype=float)
    cur = np.asarray(dist["counts"], dtype=float)
    dens_b = base / max(base.sum(), 1) / widths
    dens_c = cur / max(cur.sum(), 1) / widths
    top = float(max(dens_b.max(), dens_c.max(), 1e-300))
    x0, x1, y0, y1 = 44, _W - 8, 8, _H - 24

    def x(v):
        return x0 + (min(max(v, show_lo), show_hi) - show_lo) / (show_hi - show_lo) * (x1 - x0)

    parts = [f'<svg class="chart" role="img" aria-label="{_esc(name)}: baseline and window histograms" '
             f'width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}">']
    for dens, fill, opacity in ((dens_b, _GREY, 0.55), (dens_c, color, 0.45)):
        for i, d in enumerate(dens):
            if d <= 0:
                continue
            a, b = x(bounds[i]), x(bounds[i] + widths[i])
            h = d / top * (y1 - y0)
            parts.append(f'<rect x="{a:.1f}" y="{y1 - h:.1f}" width="{max(b - a, 1):.1f}" height="{h:.1f}" '
                         f'fill="{fill}" fill-opacity="{opacity}"/>')
    # the window's outline on top, so it reads where it overlaps the baseline
    path = [f"M{x(bounds[0]):.1f},{y1}"]
    for i, d in enumerate(dens_c):
        h = y1 - d / top * (y1 - y0)
        path.append(f"L{x(bounds[i]):.1f},{h:.1f}L{x(bounds[i] + widths[i]):.1f},{h:.1f}")
    path.append(f"L{x(bounds[-1]):.1f},{y1}")
    parts.append(f'<path d="{"".join(path)}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    parts.append(f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#444"/>')
    for t in _ticks(show_lo, show_hi):
        tx = x(t)
        parts.append(f'<line x1="{tx:.1f}" y1="{y1}" x2="{tx:.1f}" y2="{y1 + 4}" stroke="#444"/>'
                     f'<text x="{tx:.1f}" y="{y1 + 15}" text-anchor="middle">{_esc(_num(t))}</text>')
    parts.append(f'<text x="4" y="{y0 + 8}" class="muted">density</text></svg>')
    return "".join(parts)


def _categorical_rows(profile, dist: dict) -> list[tuple[str, float, float, str]]:
    """(label, baseline share, window share, title) rows: top categories, then the rest, other, unseen, missing."""
    n_b = profile.n + profile.missing
    n_c = sum(dist["counts"]) + dist["other"] + dist["unseen"] + dist["missing"]
    b = [c / max(n_b, 1) for c in profile.counts.tolist()]
    c = [k / max(n_c, 1) for k in dist["counts"]]
    order = sorted(range(len(b)), key=lambda i: -max(b[i], c[i]))
    rows = [(profile.categories[i], b[i], c[i], profile.categories[i]) for i in order[:MAX_CATEGORIES_SHOWN]]
    rest = order[MAX_CATEGORIES_SHOWN:]
    if rest:
        rows.append((f"{len(rest)} more", sum(b[i] for i in rest), sum(c[i] for i in rest),
                     ", ".join(profile.categories[i] for i in rest[:20])))
    if profile.other_count or dist["other"]:
        rows.append(("other (rare)", profile.other_count / max(n_b, 1), dist["other"] / max(n_c, 1),
                     f"{len(profile.other_categories)} rare baseline categories pooled"))
    unseen_names = ", ".join(f"{k} ({v})" for k, v in dist.get("unseen_top", {}).items())
    rows.append(("unseen", 0.0, dist["unseen"] / max(n_c, 1), "never in the baseline: " + (unseen_names or "none")))
    rows.append(("missing", profile.missing / max(n_b, 1), dist["missing"] / max(n_c, 1), "null or NaN"))
    return rows


def _categorical_svg(profile, dist: dict, color: str, name: str) -> str:
    rows = _categorical_rows(profile, dist)
    label_w, row_h, bar_w = 120, 18, _W - 120 - 96
    height = row_h * len(rows) + 6
    top = max(max(b, c) for _l, b, c, _t in rows) or 1.0
    parts = [f'<svg class="chart" role="img" aria-label="{_esc(name)}: baseline and window category shares" '
             f'width="{_W}" height="{height}" viewBox="0 0 {_W} {height}">']
    for k, (label, b, c, title) in enumerate(rows):
        y = 3 + k * row_h
        short = label if len(label) <= 18 else label[:17] + "…"
        special = label in ("unseen", "missing", "other (rare)") or label.endswith(" more")
        muted = ' class="muted"' if special else ""
        parts.append(f'<g><title>{_esc(title)}: baseline {_pct(b)}, window {_pct(c)}</title>'
                     f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end"'
                     f'{muted}>{_esc(short)}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{max(b / top * bar_w, 0.5 if b else 0):.1f}" '
                     f'height="6" fill="{_GREY}"/>'
                     f'<rect x="{label_w}" y="{y + 9}" width="{max(c / top * bar_w, 0.5 if c else 0):.1f}" '
                     f'height="6" fill="{color}"/>'
                     f'<text x="{label_w + bar_w + 4}" y="{y + 12}" class="muted">{_pct(b)} → {_pct(c)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _chart(profile, r: dict, name: str) -> str:
    dist = r.get("distribution")
    if dist is None:
        return '<p class="muted">This window result carries no distribution (written by an older driftmon).</p>'
    color = _RED if r["drift"] else _BLUE
    if isinstance(profile, CategoricalProfile):
        return _categorical_svg(profile, dist, color, name)
    if profile.n == 0 or dist.get("min") is None:
        return '<p class="muted">No values to draw.</p>'
    return _numeric_svg(profile, dist, color, name)


def _facts(profile, r: dict) -> str:
    """One line of plain numbers under a chart."""
    dist = r.get("distribution") or {}
    items = [f"missing {_pct(profile.missing_ratio)} → {_pct(r.get('missing_ratio'))}"]
    if isinstance(profile, CategoricalProfile):
        items.append(f"unseen {_pct(r.get('unseen_ratio'))}")
        if dist.get("unseen_top"):
            items.append("new: " + ", ".join(_esc(k) for k in list(dist["unseen_top"])[:5]))
    else:
        items.append(f"out of baseline range {_pct(r.get('out_of_range_ratio'))}")
        if dist.get("mean") is not None:
            items.append(f"mean {_num(profile.mean)} → {_num(dist['mean'])}")
            items.append(f"std {_num(profile.std)} → {_num(dist['std'])}")
    stats = r.get("statistics", {})
    items.append(" · ".join(f"{k} {_num(v)}" for k, v in stats.items() if v is not None))
    return '<p class="facts">' + " · ".join(i for i in items if i) + "</p>"


# ---- the page ---------------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2329;margin:0;
background:#f5f6f8}
main{max-width:1320px;margin:0 auto;padding:16px 20px 48px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dde3;
padding-bottom:4px}
.muted{color:#65707b;fill:#65707b}.sub{color:#65707b;margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:10px 14px;min-width:130px}
.card b{display:block;font-size:20px}.card span{color:#65707b;font-size:12px}
.verdict{border-left:5px solid #2e8540;background:#fff;padding:10px 14px;margin-top:12px;border-radius:4px}
.verdict.bad{border-color:#c9302c}.verdict h3{margin:0 0 4px;font-size:16px}
table{border-collapse:collapse;background:#fff;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:3px 5px;font-size:12.5px;border-bottom:1px solid #e6e9ed;text-align:right;white-space:nowrap}
th{background:#eef1f4;position:sticky;top:0;cursor:pointer;user-select:none}
th:first-child,td:first-child,td.l,th.l{text-align:left}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
tr.drifted td:first-child{font-weight:600}
.badge{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px;background:#e6e9ed;color:#333}
.badge.drift{background:#c9302c;color:#fff}.badge.ok{background:#d9eedd;color:#1e5b2a}
.badge.thin{background:#fff3cd;color:#6b5200}
.tools{display:flex;gap:14px;align-items:center;margin:8px 0;flex-wrap:wrap}
.tools input[type=search]{padding:4px 8px;width:240px}
.scroll{max-height:520px;overflow:auto;border:1px solid #d8dde3}
details.feature{background:#fff;border:1px solid #d8dde3;border-radius:6px;margin:8px 0;padding:6px 12px}
details.feature.drifted{border-left:5px solid #c9302c}
details.feature summary{cursor:pointer;font-weight:600}
details.feature summary .muted{font-weight:400}
.plot{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap;margin-top:6px}
.chart text{font-size:11px;fill:#333}.chart text.muted{fill:#65707b}
.facts{color:#4a545e;font-size:12px;margin:4px 0;max-width:1100px}
.legend{font-size:12px;color:#4a545e}.sw{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
.pager button{padding:2px 10px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:10px}
.panel{background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:8px 12px}
.panel h3{font-size:15px;margin:2px 0 4px}
footer{margin-top:32px;color:#65707b;font-size:12px}
@media print{.tools,.pager{display:none}details.feature{break-inside:avoid}}
"""

_JS = """
(function(){
var PAGE=%(page)d;
var table=document.getElementById('features');
var rows=[].slice.call(table.tBodies[0].rows);
var cards=[].slice.call(document.querySelectorAll('details.feature'));
var q=document.getElementById('filter'), only=document.getElementById('only-drifted');
var page=0, shown=cards;
function match(el){
  var name=el.getAttribute('data-feature').toLowerCase();
  return (!only.checked||el.classList.contains('drifted'))&&name.indexOf(q.value.toLowerCase())>=0;
}
function render(){
  shown=cards.filter(match);
  var pages=Math.max(1,Math.ceil(shown.length/PAGE));
  page=Math.min(page,pages-1);
  cards.forEach(function(c){c.hidden=true;});
  shown.slice(page*PAGE,(page+1)*PAGE).forEach(function(c){c.hidden=false;});
  rows.forEach(function(r){r.hidden=!match(r);});
  document.getElementById('page-info').textContent='page '+(page+1)+' of '+pages+' ('+shown.length+' features)';
  document.getElementById('prev').disabled=page===0;
  document.getElementById('next').disabled=page>=pages-1;
  document.getElementById('row-count').textContent=rows.filter(function(r){return !r.hidden;}).length;
}
q.addEventListener('input',function(){page=0;render();});
only.addEventListener('change',function(){page=0;render();});
document.getElementById('prev').addEventListener('click',function(){page--;render();});
document.getElementById('next').addEventListener('click',function(){page++;render();});
document.getElementById('expand').addEventListener('click',function(){
  shown.forEach(function(c){c.open=true;});});
document.getElementById('collapse').addEventListener('click',function(){
  cards.forEach(function(c){c.open=false;});});
table.addEventListener('click',function(e){
  var a=e.target.closest('a[data-go]');
  if(a){
    var card=document.getElementById(a.getAttribute('data-go'));
    q.value='';only.checked=false;shown=cards;page=Math.floor(cards.indexOf(card)/PAGE);render();
    card.open=true;card.scrollIntoView();e.preventDefault();return;
  }
  var th=e.target.closest('th');
  if(!th)return;
  var i=th.cellIndex, num=th.getAttribute('data-type')==='num';
  var dir=th.getAttribute('aria-sort')==='descending'?1:-1;
  [].forEach.call(table.tHead.rows[0].cells,function(c){c.removeAttribute('aria-sort');});
  th.setAttribute('aria-sort',dir===1?'ascending':'descending');
  rows.sort(function(a,b){
    var x=a.cells[i].getAttribute('data-v'),y=b.cells[i].getAttribute('data-v');
    if(num){x=x===''?-Infinity:+x;y=y===''?-Infinity:+y;return x<y?-dir:x>y?dir:0;}
    return x.localeCompare(y)*(-dir);
  });
  rows.forEach(function(r){table.tBodies[0].appendChild(r);});
});
var target=location.hash&&document.getElementById(decodeURIComponent(location.hash.slice(1)));
if(target&&target.tagName==='DETAILS'){page=Math.floor(cards.indexOf(target)/PAGE);target.open=true;}
render();
if(target&&target.tagName==='DETAILS')target.scrollIntoView();
})();
"""


def _status_badge(r: dict) -> str:
    if r["drift"]:
        return '<span class="badge drift">drift</span>'
    if r["status"] != "ok":
        return f'<span class="badge thin">{_esc(r["status"].replace("_", " "))}</span>'
    return '<span class="badge ok">ok</span>'


def _td(text: str, value=None, cls: str = "") -> str:
    v = "" if value is None else (f"{value:.10g}" if isinstance(value, float) else str(value))
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} data-v="{_esc(v)}">{text}</td>'


def _column_panel(title: str, name: str, profile, r: dict) -> str:
    e = r["effect"]
    return (f'<div class="panel"><h3>{_esc(title)}: {_esc(name)} {_status_badge(r)}</h3>'
            f'<p class="facts">{_esc(e["method"])} {_num(e["value"])} (threshold {_num(e["threshold"])}), '
            f'{_esc(r["test"]["method"])} p {_p(r["test"].get("p_value_adjusted"))}</p>'
            f'{_chart(profile, r, name)}{_facts(profile, r)}</div>')


def _performance_section(perf: dict | None, estimated: dict | None) -> str:
    if not perf and not estimated:
        return ""
    out = ["<h2>Performance</h2>"]
    if perf:
        w = perf.get("window", {})
        out.append(f'<p class="sub">Labelled window {_esc(w.get("index"))}: {_esc(w.get("labelled"))} labelled '
                   f'predictions, {_esc(w.get("start") or "?")} to {_esc(w.get("end") or "?")}; task '
                   f'{_esc(perf.get("task"))}.</p>')
        drops = perf.get("drops", {})
        body = []
        for metric, value in perf.get("metrics", {}).items():
            if metric == "n":
                continue
            d = drops.get(metric, {})
            flag = '<span class="badge drift">drop</span>' if d.get("drop") else (
                '<span class="badge ok">ok</span>' if d.get("p_value") is not None else "")
            body.append(f'<tr><td>{_esc(metric)}</td><td>{_num(perf.get("baseline", {}).get(metric))}</td>'
                        f'<td>{_num(value)}</td><td>{_num(d.get("margin"))}</td><td>{_p(d.get("p_value"))}</td>'
                        f'<td>{flag}</td></tr>')
        out.append('<table class="perf"><thead><tr><th>metric</th><th>baseline</th><th>this window</th>'
                   '<th>margin</th><th>p-value</th><th></th></tr></thead><tbody>' + "".join(body) + "</tbody></table>")
        errors = perf.get("error_rate")
        if errors:
            out.append(f'<p class="facts">error rate (ADWIN) {_num(errors.get("estimate"))}, '
                       f'{"change detected" if errors.get("drift_detected") else "no change detected"}</p>')
        for attr, rep in perf.get("fairness", {}).items():
            overall = rep.get("overall", {})
            badge = '<span class="badge drift">alert</span>' if rep.get("alert") else ""
            out.append(f"<h2>Fairness: {_esc(attr)} {badge}</h2>")
            out.append('<p class="facts">' + " · ".join(
                f"{_esc(k.replace('_', ' '))} {_num(v) if not isinstance(v, str) else _esc(v)}"
                for k, v in overall.items() if v is not None and not isinstance(v, (dict, list))) + "</p>")
            groups = rep.get("groups", {})
            keys = [k for k in ("n", "positive_rate", "tpr", "fpr", "accuracy", "precision")
                    if any(k in g for g in groups.values())]
            body = "".join(f"<tr><td>{_esc(g)}</td>" + "".join(f"<td>{_num(v.get(k))}</td>" for k in keys) + "</tr>"
                           for g, v in groups.items())
            out.append('<table class="fairness"><thead><tr><th>group</th>' + "".join(
                f"<th>{_esc(k.replace('_', ' '))}</th>" for k in keys) + "</tr></thead><tbody>" + body +
                "</tbody></table>")
            if rep.get("insufficient"):
                out.append(f'<p class="facts">too few rows to judge: {_esc(", ".join(map(str, rep["insufficient"])))}</p>')
    if estimated:
        out.append('<p class="facts">Estimated from calibrated scores, before labels: ' + " · ".join(
            f"{_esc(k)} {_num(v)}" for k, v in estimated.items()
            if isinstance(v, (int, float)) and k not in ("tp", "fp", "fn", "tn", "sparse_share")) + "</p>")
    return "".join(out)


def _segments_section(segments: dict | None) -> str:
    if not segments:
        return ""
    out = ["<h2>Segments</h2><table><thead><tr><th>segment</th><th>events</th><th>status</th>"
           "<th class=\"l\">drifted features</th></tr></thead><tbody>"]
    for field, values in segments.items():
        for value, s in values.items():
            out.append(f'<tr><td>{_esc(field)} = {_esc(value)}</td><td>{s["events"]:,}</td><td>{_esc(s["status"])}'
                       f'</td><td class="l">{_esc(", ".join(s["drifted"]) or "none")}</td></tr>')
    return "".join(out) + "</tbody></table>"


def render_report(config: Config, baseline: Baseline, result: dict, *, history: list[dict] | None = None,
                  performance: dict | None = None, source: str | None = None, seed: int = 0) -> str:
    """The HTML report of one window (or file comparison) result.

    Parameters
    ----------
    config, baseline : Config, Baseline
        The ones the result was computed with.
    result : dict
        A window result (``replay``, the window log, ``/status``) or a ``compare`` result.
    history : list of dict, optional
        Window results ending with ``result``, for the retraining verdict (default: just ``result``).
    performance : dict, optional
        A labelled-window performance result to show with it.
    source : str, optional
        Where the result came from, for the header.
    seed : int
        Seed of the bootstrap intervals.
    """
    history = history or [result]
    fingerprint = result.get("baseline_fingerprint")
    if fingerprint is not None and fingerprint != baseline.fingerprint:
        raise ValueError(f"window {result['window'].get('index')} was evaluated against baseline {fingerprint[:19]}, "
                         f"not {config.baseline} ({baseline.fingerprint[:19]}): its counts are on other bins")
    window = result["window"]
    features = result["features"]
    verdict = retrain_verdict(config, baseline, history)
    intervals = {name: _interval(baseline.profiles[name], r, seed + k) for k, (name, r) in enumerate(features.items())}

    def rank(item):
        name, r = item
        e = r["effect"]
        ratio = (e["value"] or 0.0) / e["threshold"] if e["threshold"] else 0.0
        return (not r["drift"], -ratio, name)

    ordered = sorted(features.items(), key=rank)
    n_drift = len(result["drifted"])
    fp = result.get("baseline_fingerprint", baseline.fingerprint)
    src = baseline.meta.get("source") or {}
    when = " to ".join(x for x in (window.get("start"), window.get("end")) if x) or "no event times"
    title = f"driftmon report: {result.get('model', config.model)}, window {window.get('index', '')}"
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        # Nothing may be fetched: the page must open the same offline, in a mail or an incident ticket.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src data:\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(result.get('model', config.model))}: drift report</h1>",
        f'<p class="sub">Window {_esc(window.get("index", "–"))} ({_esc(when)})'
        + (f", from {_esc(source)}" if source else "") + f' · baseline <code title="{_esc(fp)}">{_esc(fp[:19])}</code>'
        f' from {_esc(src.get("file", "?"))} ({_num(src.get("rows"))} rows'
        + (f", {_esc(baseline.meta['created_at'])}" if baseline.meta.get("created_at") else "") + ")</p>",
        '<div class="cards">',
        f'<div class="card"><b>{n_drift} of {len(features)}</b><span>features drifted</span></div>',
        f'<div class="card"><b>{window.get("events", 0):,}</b><span>events</span></div>',
        f'<div class="card"><b>{window.get("invalid", 0):,}</b><span>invalid messages</span></div>',
        f'<div class="card"><b>{_esc(window.get("status", "ok"))}</b><span>window status</span></div>',
    ]
    for role in ("prediction", "score", "label"):
        r = result.get(role)
        if r is not None:
            parts.append(f'<div class="card"><b>{"drift" if r["drift"] else "stable"}</b><span>{role} '
                         f'({_esc(r["effect"]["method"])} {_num(r["effect"]["value"])})</span></div>')
    parts.append("</div>")
    cls = "verdict bad" if verdict["recommended"] else "verdict"
    parts.append(f'<div class="{cls}" id="verdict"><h3>{_esc(verdict["headline"])}</h3>'
                 + "".join(f"<div>{_esc(x)}</div>" for x in verdict["reasons"])
                 + f'<div class="muted">{_esc(verdict["rule"][0].upper() + verdict["rule"][1:])}.</div></div>')
    if result["drifted"]:
        top = ", ".join(f'{_esc(n)} ({_esc(features[n]["effect"]["method"])} {_num(features[n]["effect"]["value"])})'
                        for n, _r in ordered[:n_drift][:8])
        parts.append(f'<p>Drifted: {top}{" …" if n_drift > 8 else ""}</p>')
    # model outputs
    outputs = []
    for role in ("prediction", "score", "label"):
        r = result.get(role)
        spec = getattr(config.schema, role, None)
        if r is not None and spec is not None and spec.name in baseline.profiles:
            outputs.append(_column_panel(role.capitalize(), spec.name, baseline.profiles[spec.name], r))
    if outputs:
        parts.append('<h2>Model outputs</h2><div class="grid">' + "".join(outputs) + "</div>")
    parts.append(_performance_section(performance, result.get("estimated_performance")))
    parts.append(_segments_section(result.get("segments")))
    # the feature table
    lvl = f"{INTERVAL_LEVEL:.0%}"
    parts.append(
        f'<h2>Features</h2><p class="sub">A feature drifts when its effect reaches the threshold and the test is '
        f'significant after Holm\'s correction across all features (alpha {_num(config.drift.alpha)}). The interval '
        f'is a {lvl} bootstrap interval of the effect (both samples redrawn; near zero a distance is biased '
        f'upwards, so read its lower end against the threshold). Click a column to sort, a name to see '
        f'its distributions.</p>'
        '<div class="tools"><input type="search" id="filter" placeholder="filter features by name" '
        'aria-label="filter features"><label><input type="checkbox" id="only-drifted"> drifted only</label>'
        '<span class="muted"><span id="row-count"></span> shown</span></div>'
        '<div class="scroll"><table id="features"><thead><tr>'
        '<th data-type="text">feature</th><th data-type="text">type</th><th data-type="text">decision</th>'
        '<th data-type="text">effect</th><th data-type="num">value</th>'
        f'<th data-type="num">{lvl} interval</th><th data-type="num">threshold</th>'
        '<th data-type="num" title="effect / threshold: 1 or more is past the threshold">× threshold</th><th data-type="text">test</th><th data-type="num">p-value</th>'
        '<th data-type="num">Holm p</th><th data-type="num">missing</th>'
        '<th data-type="num" title="numeric: share outside the baseline range; categorical: share of unseen '
        'categories">new values</th>'
        '<th data-type="num">events</th></tr></thead><tbody>')
    for name, r in ordered:
        e, t = r["effect"], r["test"]
        ci = intervals[name]
        ratio = e["value"] / e["threshold"] if e["value"] is not None and e["threshold"] else None
        new = r.get("unseen_ratio", r.get("out_of_range_ratio"))
        decision = 2 if r["drift"] else (1 if r["status"] == "ok" else 0)
        parts.append(
            f'<tr class="{"drifted" if r["drift"] else ""}" data-feature="{_esc(name)}">'
            + _td(f'<a href="#{_slug(name)}" data-go="{_slug(name)}">{_esc(name)}</a>', name)
            + _td(_esc(r["type"]), r["type"]) + _td(_status_badge(r), decision)
            + _td(_esc(e["method"]), e["method"]) + _td(_num(e["value"]), e["value"])
            + _td("–" if ci is None else f"{_num(ci[0])} – {_num(ci[1])}", None if ci is None else ci[0])
            + _td(_num(e["threshold"]), e["threshold"]) + _td(_num(ratio), ratio)
            + _td(_esc(t["method"]), t["method"]) + _td(_p(t.get("p_value")), t.get("p_value"))
            + _td(_p(t.get("p_value_adjusted")), t.get("p_value_adjusted"))
            + _td(_pct(r.get("missing_ratio")), r.get("missing_ratio"))
            + _td(_pct(new), new)
            + _td(f'{r["events"]:,}', r["events"]) + "</tr>")
    parts.append("</tbody></table></div>")
    # per-feature distributions
    parts.append(
        '<h2>Distributions</h2><p class="sub legend">Drifted features first, then by effect over threshold.'
        f'<span class="sw" style="background:{_GREY}"></span>baseline<span class="sw" style="background:{_BLUE}">'
        f'</span>this window<span class="sw" style="background:{_RED}"></span>this window, drifted. Numeric '
        'features on the baseline\'s bins (densities); categories as shares, with unseen and missing.</p>'
        '<div class="tools pager"><button id="prev" type="button">‹ previous</button><span id="page-info"></span>'
        '<button id="next" type="button">next ›</button><button id="expand" type="button">expand all</button>'
        '<button id="collapse" type="button">collapse all</button></div>')
    for k, (name, r) in enumerate(ordered):
        e = r["effect"]
        ci = intervals[name]
        open_ = " open" if r["drift"] or k < 6 else ""
        parts.append(
            f'<details class="feature{" drifted" if r["drift"] else ""}" id="{_slug(name)}" '
            f'data-feature="{_esc(name)}"{open_}><summary>{_esc(name)} {_status_badge(r)} '
            f'<span class="muted">{_esc(r["type"])} · {_esc(e["method"])} {_num(e["value"])}'
            + ("" if ci is None else f" [{_num(ci[0])}, {_num(ci[1])}]")
            + f' vs threshold {_num(e["threshold"])} · Holm p {_p(r["test"].get("p_value_adjusted"))}</span>'
            f'</summary><div class="plot">{_chart(baseline.profiles[name], r, name)}</div>'
            f'{_facts(baseline.profiles[name], r)}</details>')
    now = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    parts.append(f'<footer>driftmon {_esc(__version__)} · generated {now} · config hash {_esc(config.hash()[:16])}'
                 f' · baseline {_esc(fp)}</footer></main>')
    parts.append(f"<script>{_JS % {'page': PAGE_SIZE}}</script></body></html>\n")
    return "".join(parts)


def state_logs(state_dir: str, name: str = "windows") -> list[str]:
    """The window (or performance) log files of a state directory, oldest first."""
    path = os.path.join(state_dir, f"{name}.jsonl")
    return [path + ".1", path]


def performance_for(paths: list[str], result: dict) -> dict | None:
    """The last performance result that ended by the end of ``result``'s window (None if none).

    ``paths`` are performance logs, or ``replay --out`` files, which hold both kinds of window.
    """
    end = result["window"].get("end")
    best = None
    for perf in _log_records(paths):
        try:
            perf_end = perf["window"].get("end")
        except (KeyError, TypeError, AttributeError):
            continue
        if "metrics" not in perf:
            continue  # a drift window (replay --out has both kinds)
        if end is None or (perf_end is not None and perf_end <= end):
            best = perf
    return best


def daemon_report(daemon, query: str = "") -> tuple[int, bytes]:
    """``/report[?index=N]`` of a running daemon (its :class:`monitor.view.ServiceView`): (HTTP status, body).

    The latest closed window comes from memory, older ones from the window log in the state
    directory (as far back as it reaches, rotation included).
    """
    from urllib.parse import parse_qs

    raw = parse_qs(query).get("index", [None])[-1]
    try:
        index = None if raw in (None, "") else int(raw)
    except ValueError:
        return 400, f"index must be a window number, got {raw!r}\n".encode()
    windows = state_logs(daemon.config.state.dir, "windows")
    snapshot = daemon.snapshot  # published by the daemon after each change: no lock, as /status
    last, live_performance = snapshot.get("last_window"), snapshot.get("last_performance")
    if last is None:
        return 404, b"no window has closed yet: try again after the first one\n"
    if index is None or index == last["window"]["index"]:
        result, performance = last, live_performance
        try:
            history = load_windows(windows, result["window"]["index"])[1]
        except ValueError:
            history = [result]  # not yet in the log (emitted right after its checkpoint)
    else:
        try:
            result, history = load_windows(windows, index)
        except ValueError as exc:
            return 404, f"{exc}\n".encode()
        performance = performance_for(state_logs(daemon.config.state.dir, "performance"), result)
    try:
        body = render_report(daemon.config, daemon.baseline, result, history=history, performance=performance,
                             source="the daemon's window log" if index is not None else "the daemon (latest window)")
    except ValueError as exc:  # a logged window of an earlier baseline
        return 404, f"{exc}\n".encode()
    except Exception:  # the page is a convenience: never take the HTTP thread down with it
        log.exception("rendering /report failed")
        return 500, b"the report could not be rendered: see the daemon's log\n"
    return 200, body.encode()
