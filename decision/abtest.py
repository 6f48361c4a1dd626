"""A/B readout for the production step: is arm B (the fine-tuned student) different from arm A?

Input: two logs, one per arm, JSONL (one object or bare number per line) or CSV, holding a
per-request outcome (0/1 -> a rate) or a metric (any number -> a mean) in one column.
Output: effect B - A, its 95 % CI, a two-sided p-value, the sample size per arm needed to detect a
given minimum detectable effect (MDE) at a given power, and warnings.

Tests used (textbook forms, so a reader can check them by hand):
- rates: two-proportion z-test with the pooled SE for the p-value; the CI uses the unpooled
  (Wald) SE, as the CI is about the difference rather than under H0.
- means: Welch's t-test (unequal variances, Welch-Satterthwaite df); CI from the t quantile.
- sample size per arm, rates: n = (z_{1-a/2} sqrt(2 pbar(1-pbar)) + z_{power} sqrt(p1(1-p1)+p2(1-p2)))^2 / mde^2
  with p1 = arm A's rate (or `baseline`), p2 = p1 + mde, pbar = (p1+p2)/2.
- sample size per arm, means: n = 2 (z_{1-a/2} + z_{power})^2 sd^2 / mde^2 (sd pooled from both arms).
Peeking: a fixed-sample test read before its planned sample size overstates significance (each
look is another chance for a false positive), so an early read is flagged, never silently trusted.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from distilforge.errors import UserError

_N = statistics.NormalDist()


class ABTestError(UserError, ValueError):
    """Bad A/B input, phrased as the one line a user should see."""


def _z(q: float) -> float:
    return _N.inv_cdf(q)


def _t_sf(t: float, df: float) -> float:
    from scipy import stats  # scipy: t distribution for Welch's test

    return float(stats.t.sf(t, df))


def _t_ppf(q: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def _number(v, where: str) -> float:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        x = float(v)
    elif isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "false"):
            return float(s == "true")
        try:
            x = float(s)
        except ValueError:
            raise ABTestError(f"{where}: not a number: {v!r}") from None
    else:
        raise ABTestError(f"{where}: not a number: {v!r}")
    if math.isnan(x) or math.isinf(x):
        raise ABTestError(f"{where}: not a finite number: {v!r}")
    return x


def _jsonl(p: Path):
    """(line number, parsed value) for each non-blank line; a bad line is one error naming it."""
    for i, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            raise ABTestError(f"{p}:line {i}: invalid JSON ({e.msg})") from None


def load_arm(path: str | Path, metric: str = "outcome") -> list[float]:
    """Values of column `metric` in a JSONL or CSV log (CSV by extension, else JSONL)."""
    p = Path(path)
    if not p.exists():
        raise ABTestError(f"{p}: no such file")
    values: list[float] = []
    if p.suffix.lower() in (".csv", ".tsv"):
        with p.open(newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
            if not reader.fieldnames or metric not in reader.fieldnames:
                raise ABTestError(f"{p}: no column '{metric}' (columns: {', '.join(reader.fieldnames or [])})")
            for i, row in enumerate(reader, start=2):
                values.append(_number(row[metric], f"{p}:row {i}: field '{metric}'"))
    else:
        for i, obj in _jsonl(p):
            if isinstance(obj, dict):
                if metric not in obj:
                    raise ABTestError(f"{p}:line {i}: no field '{metric}'")
                obj = obj[metric]
            values.append(_number(obj, f"{p}:line {i}: field '{metric}'"))
    if len(values) < 2:
        raise ABTestError(f"{p}: needs at least 2 observations, found {len(values)}")
    return values


def is_binary(values: list[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


@dataclass
class Comparison:
    kind: str  # "rate" or "mean"
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    sd_a: float
    sd_b: float
    effect: float  # B - A
    ci: tuple[float, float]
    p_value: float
    stat: float  # z or t
    df: float | None
    confidence: float


def compare_proportions(x_a: int, n_a: int, x_b: int, n_b: int, confidence: float = 0.95) -> Comparison:
    """Two-proportion z-test (pooled SE for the p-value) and Wald CI for p_b - p_a."""
    if min(n_a, n_b) <= 0 or not (0 <= x_a <= n_a and 0 <= x_b <= n_b):
        raise ABTestError(f"proportions: need 0 <= x <= n and n > 0, got A {x_a}/{n_a}, B {x_b}/{n_b}")
    pa, pb = x_a / n_a, x_b / n_b
    diff = pb - pa
    pool = (x_a + x_b) / (n_a + n_b)
    se0 = math.sqrt(pool * (1 - pool) * (1 / n_a + 1 / n_b))
    if se0 == 0:
        z, p = 0.0, 1.0  # both arms all-0 or all-1: no evidence of a difference
    else:
        z = diff / se0
        p = math.erfc(abs(z) / math.sqrt(2))
    se = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    h = _z(0.5 + confidence / 2) * se
    return Comparison("rate", n_a, n_b, pa, pb, math.sqrt(pa * (1 - pa)), math.sqrt(pb * (1 - pb)),
                      diff, (diff - h, diff + h), p, z, None, confidence)


def compare_means(a: list[float], b: list[float], confidence: float = 0.95) -> Comparison:
    """Welch's t-test and CI for mean(b) - mean(a)."""
    if len(a) < 2 or len(b) < 2:
        raise ABTestError(f"means: each arm needs >= 2 observations, got A {len(a)}, B {len(b)}")
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    va, vb = statistics.variance(a), statistics.variance(b)
    na, nb = len(a), len(b)
    diff = mb - ma
    qa, qb = va / na, vb / nb
    se = math.sqrt(qa + qb)
    if se == 0:
        return Comparison("mean", na, nb, ma, mb, 0.0, 0.0, diff, (diff, diff),
                          1.0 if diff == 0 else 0.0, 0.0 if diff == 0 else math.copysign(math.inf, diff),
                          None, confidence)
    df = (qa + qb) ** 2 / (qa**2 / (na - 1) + qb**2 / (nb - 1))
    t = diff / se
    p = min(1.0, 2 * _t_sf(abs(t), df))
    h = _t_ppf(0.5 + confidence / 2, df) * se
    return Comparison("mean", na, nb, ma, mb, math.sqrt(va), math.sqrt(vb), diff, (diff - h, diff + h),
                      p, t, df, confidence)


def sample_size_proportions(p1: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Per-arm n to detect p1 -> p1 + mde with a two-sided test (see module docstring)."""
    p2 = p1 + mde
    if mde == 0 or not (0 < p1 < 1) or not (0 < p2 < 1):
        raise ABTestError(f"sample size: need 0 < baseline < 1, mde != 0 and 0 < baseline+mde < 1 "
                          f"(baseline {p1:g}, mde {mde:g})")
    pbar = (p1 + p2) / 2
    num = (_z(1 - alpha / 2) * math.sqrt(2 * pbar * (1 - pbar))
           + _z(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2
    return math.ceil(num / mde**2)


def sample_size_means(sd: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Per-arm n to detect a mean difference of `mde` given common sd (normal approximation)."""
    if mde == 0 or sd <= 0:
        raise ABTestError(f"sample size: need sd > 0 and mde != 0 (sd {sd:g}, mde {mde:g})")
    return math.ceil(2 * (_z(1 - alpha / 2) + _z(power)) ** 2 * sd**2 / mde**2)


def readout(a: list[float], b: list[float], *, kind: str = "auto", mde: float | None = None,
            power: float = 0.8, alpha: float = 0.05, planned_n: int | None = None,
            baseline: float | None = None) -> dict:
    """The full readout as a JSON-able dict (effect, CI, p-value, needed n, warnings, one line)."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ABTestError(f"alpha and power must be in (0, 1), got alpha {alpha:g}, power {power:g}")
    if kind == "auto":
        kind = "rate" if is_binary(a) and is_binary(b) else "mean"
    if kind == "rate":
        if not (is_binary(a) and is_binary(b)):
            raise ABTestError("kind 'rate' needs 0/1 outcomes in both logs")
        c = compare_proportions(int(sum(a)), len(a), int(sum(b)), len(b), 1 - alpha)
    elif kind == "mean":
        c = compare_means(a, b, 1 - alpha)
    else:
        raise ABTestError(f"kind: must be auto, rate or mean, got {kind!r}")

    warnings: list[str] = []
    needed = None
    if mde is not None:
        if kind == "rate":
            needed = sample_size_proportions(baseline if baseline is not None else c.mean_a, mde, alpha, power)
        else:
            sd = math.sqrt(((c.n_a - 1) * c.sd_a**2 + (c.n_b - 1) * c.sd_b**2) / (c.n_a + c.n_b - 2))
            needed = sample_size_means(sd, mde, alpha, power)
    n_min = min(c.n_a, c.n_b)
    if planned_n is not None and n_min < planned_n:
        warnings.append(f"peeking: read at n={n_min} per arm before the planned {planned_n}; a fixed-sample "
                        "p-value checked early overstates significance. Wait for the planned sample "
                        "(or use a sequential test).")
    if needed is not None and n_min < needed:
        warnings.append(f"underpowered: {n_min} per arm < {needed} needed to detect {mde:g} at power {power:g}; "
                        "a non-significant result is not evidence of no effect.")
    if planned_n is None and needed is None:
        warnings.append("no planned sample size (--planned-n) or MDE (--mde) given: cannot tell whether this "
                        "read is early.")
    significant = c.p_value < alpha
    rel = c.effect / c.mean_a if c.mean_a else None
    what = "rate" if kind == "rate" else "mean"
    line = (f"B - A {what}: {c.effect:+.4f} ({c.mean_b:.4f} vs {c.mean_a:.4f}), "
            f"{c.confidence:.0%} CI [{c.ci[0]:+.4f}, {c.ci[1]:+.4f}], p = {c.p_value:.4g} -> "
            f"{'significant' if significant else 'not significant'} at alpha {alpha:g}")
    if warnings:
        line += " (WARNING: " + "; ".join(w.split(":")[0] for w in warnings) + ")"
    return {
        "kind": kind,
        "test": "two-proportion z-test" if kind == "rate" else "Welch t-test",
        "arms": {"A": {"n": c.n_a, what: c.mean_a, "sd": c.sd_a}, "B": {"n": c.n_b, what: c.mean_b, "sd": c.sd_b}},
        "effect": c.effect,
        "relative_effect": rel,
        "ci": list(c.ci),
        "confidence": c.confidence,
        "p_value": c.p_value,
        "statistic": c.stat,
        "df": c.df,
        "alpha": alpha,
        "significant": significant,
        "mde": mde,
        "power": power,
        "required_n_per_arm": needed,
        "planned_n": planned_n,
        "warnings": warnings,
        "readout_line": line,
    }


def readout_files(a_path: str | Path, b_path: str | Path, *, metric: str = "outcome", **kw) -> dict:
    """`readout` over two log files; records which files and column were read."""
    out = readout(load_arm(a_path, metric), load_arm(b_path, metric), **kw)
    out["logs"] = {"A": str(a_path), "B": str(b_path), "metric": metric}
    return out


# ---------------------------------------------------------------- shadow mode

def load_inputs(path: str | Path) -> list[dict]:
    """Shadow inputs: JSONL, one {"text": ..., "id"?: ..., "label"?: ...} object or a bare string a line."""
    p = Path(path)
    if not p.exists():
        raise ABTestError(f"{p}: no such file")
    rows = []
    for i, obj in _jsonl(p):
        if isinstance(obj, str):
            obj = {"text": obj}
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise ABTestError(f"{p}:line {i}: field 'text': a non-empty string is required")
        rows.append({"id": str(obj.get("id", f"line-{i}")), "text": obj["text"],
                     **({"label": obj["label"]} if obj.get("label") is not None else {})})
    if len(rows) < 2:
        raise ABTestError(f"{p}: needs at least 2 inputs, found {len(rows)}")
    return rows


def _rate_ci(x: list[float], confidence: float = 0.95) -> list[float]:
    p, n = statistics.fmean(x), len(x)
    h = _z(0.5 + confidence / 2) * math.sqrt(p * (1 - p) / n)
    return [max(0.0, p - h), min(1.0, p + h)]


def shadow(inputs: str | Path, a_url: str, b_url: str, *, system_prompt: str, labels: list[str],
           log: str | Path, structured: str = "none", timeout: float = 120, api_keys: tuple = (None, None),
           alpha: float = 0.05) -> dict:
    """Replay every input through arm A and arm B (e.g. the hosted teacher and the served student).

    Each input goes to A, then B, one request at a time (concurrent requests would make each arm's
    latency depend on the other's load). Every pair is logged to `log` (JSONL: both answers, labels,
    agreement, latencies). The readout uses the same statistics as log-file A/B tests: agreement
    as a rate with its Wald CI; latency B - A by Welch's t-test; and, when the inputs carry a
    gold `label`, accuracy B - A by the two-proportion z-test.
    """
    from openai import OpenAI

    from distilforge.atomic import atomic_write_text
    from distilforge.secrets import Secret, reveal
    from heldout.served import ask_timed, endpoint_model

    rows = load_inputs(inputs)
    if structured not in ("none", "llama_cpp", "openai"):
        raise ABTestError(f"--structured: must be none, llama_cpp or openai, got {structured!r}")
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": labels}}, "required": ["label"]}
    fmt = {"none": None, "llama_cpp": {"type": "json_object", "schema": schema},
           "openai": {"type": "json_schema", "json_schema": {"name": "label", "schema": schema, "strict": True}}}[structured]
    arms = {}
    for arm, url, key in (("A", a_url, api_keys[0]), ("B", b_url, api_keys[1])):
        if not str(url).startswith(("http://", "https://")):
            raise ABTestError(f"arm {arm}: shadow mode needs an endpoint URL (http://host:port/v1), got {url!r}")
        k = reveal(key or Secret("none"))
        model, _ = endpoint_model(str(url), k, "default")
        arms[arm] = (OpenAI(base_url=str(url).rstrip("/"), api_key=k, timeout=timeout, max_retries=2), model)
    out = []
    for r in rows:
        rec = {"id": r["id"], "text": r["text"], **({"label": r["label"]} if "label" in r else {})}
        for arm, (client, model) in arms.items():
            a = ask_timed(client, model, system_prompt, r["text"], labels, fmt)
            rec[arm] = {"label": a["label"], "answer": a["answer"], "latency_s": a["latency_s"]}
        rec["agree"] = int(rec["A"]["label"] == rec["B"]["label"])
        out.append(rec)
    atomic_write_text(log, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in out))
    agree = [float(x["agree"]) for x in out]
    lat = readout([x["A"]["latency_s"] for x in out], [x["B"]["latency_s"] for x in out], kind="mean", alpha=alpha)
    res = {"mode": "shadow", "inputs": str(inputs), "log": str(log), "n": len(out),
           "arms": {arm: {"endpoint": str(u), "model": arms[arm][1]} for arm, u in (("A", a_url), ("B", b_url))},
           "agreement": {"rate": statistics.fmean(agree), "ci": _rate_ci(agree, 1 - alpha), "n": len(agree)},
           "latency": lat, "accuracy": None}
    gold = [x for x in out if "label" in x]
    if len(gold) >= 2:
        res["accuracy"] = readout([float(x["A"]["label"] == x["label"]) for x in gold],
                                  [float(x["B"]["label"] == x["label"]) for x in gold], kind="rate", alpha=alpha)
    ag = res["agreement"]
    line = (f"shadow n={len(out)}: agreement {ag['rate']:.3f} [{ag['ci'][0]:.3f}, {ag['ci'][1]:.3f}]; latency B - A "
            f"{lat['effect'] * 1000:+.0f} ms ({lat['arms']['B']['mean'] * 1000:.0f} vs {lat['arms']['A']['mean'] * 1000:.0f} ms), "
            f"p = {lat['p_value']:.3g}")
    if res["accuracy"]:
        acc = res["accuracy"]
        line += (f"; accuracy B - A {acc['effect']:+.3f} ({acc['arms']['B']['rate']:.3f} vs {acc['arms']['A']['rate']:.3f}), "
                 f"CI [{acc['ci'][0]:+.3f}, {acc['ci'][1]:+.3f}], p = {acc['p_value']:.3g}")
    res["readout_line"] = line
    return res
