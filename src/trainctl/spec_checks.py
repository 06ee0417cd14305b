"""Checks on a job spec beyond its types: safe names and paths, URIs, sbatch options, cross-field rules.

Every check here runs on a partially built spec too (a field whose type was wrong is None and is skipped),
so `validate` reports every problem at once. Each Problem names the YAML path, says what is valid and hints.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from trainctl.components import CLASS_PATH
from trainctl.errors import Problem

if TYPE_CHECKING:
    from trainctl.spec_types import Spec

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EXPERIMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/-]{0,127}$")
SAFE_PATH = re.compile(r"^[A-Za-z0-9._/+=@,:][A-Za-z0-9._/+=@,:-]{0,1023}$")
METRIC = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./:@ -]{0,249}$")
REDACT_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,+=@:-]{1,128}$")
SLURM_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.,+=@:&|\[\]*()!-]{1,256}$")
SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.,+=@:/%\[\]-]{1,256}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
URI_CHARS = re.compile(r"^[A-Za-z0-9._~:/?#@!*+,=%\[\]-]{1,2048}$")
SHELL_CHARS = re.compile(r"[\x00-\x1f\x7f`$;|&<>'\"\\]")
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every control character but tab
MAX_DEPTH = 32
INT64 = 2**63 - 1

# sbatch options trainctl renders itself: the spec owns them through `resources` and `fault_tolerance`.
OWNED_SBATCH = {
    "nodes": "resources.nodes", "ntasks-per-node": "resources.devices_per_node", "ntasks": "resources",
    "time": "resources.time_min", "cpus-per-task": "resources.cpus_per_task", "mem": "resources.mem_gb",
    "gpus-per-node": "backend.slurm.gpus_per_node", "signal": "fault_tolerance.signal_lead_s",
    "requeue": "fault_tolerance.max_restarts", "output": "(managed)", "error": "(managed)",
    "job-name": "name", "open-mode": "(managed)", "partition": "backend.slurm.partition",
    "account": "backend.slurm.account", "qos": "backend.slurm.qos", "constraint": "backend.slurm.constraint",
    "wckey": "(managed)", "array": "(not supported)", "wrap": "(not supported)", "chdir": "workdir",
    "wait": "(not supported: submit returns at once)", "test-only": "submit --dry-run",
    "parsable": "(managed)",
}


def check_tree(raw: Any, path: str = "", depth: int = 0, seen: set[int] | None = None) -> tuple[list[Problem], bool]:
    """Generic checks on the raw YAML tree: NUL/control bytes in keys, int64 range, depth and alias cycles.

    Returns (problems, fatal): fatal problems (cycles, absurd nesting) stop all further checking.
    """
    seen = set() if seen is None else seen
    where = path or "<spec>"
    if isinstance(raw, (dict, list)):
        if id(raw) in seen:
            return [Problem(where, "refers to itself (a YAML alias cycle)", "write the value out instead")], True
        if depth > MAX_DEPTH:
            return [Problem(where, f"is nested more than {MAX_DEPTH} levels deep", "flatten the value")], True
        seen = seen | {id(raw)}
    out: list[Problem] = []
    items: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and CONTROL.search(key):
                out.append(Problem(sub, "key contains a control character (NUL, newline, …)",
                                   "use plain printable key names"))
            items.append((sub, value))
    elif isinstance(raw, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(raw)]
    elif isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) > INT64:
        out.append(Problem(where, f"{raw} is too large", f"integers must lie within ±{INT64} (64-bit)"))
    elif isinstance(raw, str) and "\0" in raw:
        out.append(Problem(where, "contains a NUL byte", "remove the \\0 character"))
    for sub, value in items:
        found, fatal = check_tree(value, sub, depth + 1, seen)
        out += found
        if fatal:
            return out, True
    return out, False


def _kind(spec: Spec) -> str | None:
    backend = spec.backend
    kind = backend.kind if backend is not None else "local"
    return getattr(kind, "value", kind)


def semantic_checks(spec: Spec) -> list[Problem]:
    """Checks beyond types; every field may be None where its type was wrong (already reported)."""
    out: list[Problem] = []
    out += _match("name", spec.name, SAFE_NAME, "job name", "use letters, digits, '.', '_' or '-' (≤ 64 "
                  "characters, starting with a letter or digit; no spaces, slashes or shell characters)")
    out += _match("experiment", spec.experiment, EXPERIMENT, "experiment name", "use letters, digits, spaces, "
                  "'.', '_', '-', '/' (≤ 128 characters, starting with a letter or digit, no '..')", no_dotdot=True)
    if spec.workdir is not None:
        out += check_path("workdir", spec.workdir)
    for where, comp in _components(spec):
        out += _match(f"{where}.class_path", comp.class_path, CLASS_PATH, "class path",
                      "write an importable dotted path like package.module.ClassName")
    ck, es = spec.checkpoint, spec.early_stopping
    if ck is not None:
        out += _match("checkpoint.monitor", ck.monitor, METRIC, "metric name", _METRIC_HINT, no_dotdot=True)
    if es is not None:
        out += _match("early_stopping.monitor", es.monitor, METRIC, "metric name", _METRIC_HINT, no_dotdot=True)
    tr = spec.tracking
    if tr is not None:
        if tr.uri is not None:
            out += check_uri("tracking.uri", tr.uri)
        if tr.system_metrics is not None and 0 < tr.system_metrics < 1:
            out.append(Problem("tracking.system_metrics", f"{tr.system_metrics} s is below the 1 s a system-metric "
                               "step stands for", "write a number of seconds from 1 (10 is the default), or 0 for "
                               "none"))
        for i, item in enumerate(tr.redact or []):
            out += _match(f"tracking.redact[{i}]", item, REDACT_PATH, "spec path",
                          "write a dotted spec path, e.g. model.init_args.api_key (list items as .0)")
    if spec.backend is not None:
        out += _check_slurm(spec.backend.slurm)
        out += _check_ray(spec.backend.ray)
    return out + _cross_field(spec) + _check_fsdp(spec)


_METRIC_HINT = "write a logged metric name, e.g. val/loss (letters, digits, _ . / : @ - and spaces; no '..')"


def _components(spec: Spec) -> list[tuple[str, Any]]:
    comps = [("model", spec.model), ("data", spec.data)]
    comps += [(f"callbacks[{i}]", c) for i, c in enumerate(spec.callbacks or [])]
    return [(w, c) for w, c in comps if c is not None and c.class_path is not None]


def _match(where: str, value: str | None, pattern: re.Pattern[str], label: str, hint: str,
           no_dotdot: bool = False) -> list[Problem]:
    if value is None or (pattern.match(value) and not (no_dotdot and ".." in value)):
        return []
    return [Problem(where, f"{value!r} is not a valid {label}", hint)]


def check_path(where: str, value: str) -> list[Problem]:
    """A directory path that is safe to write into scripts: no '..', no shell characters, no leading '-'."""
    if not SAFE_PATH.match(value) or ".." in PurePosixPath(value).parts:
        return [Problem(where, f"{value!r} is not an acceptable directory path",
                        "use a plain absolute or relative path of letters, digits and . _ - / + = @ , : "
                        "(no '..', spaces, '~', '$' or other shell characters; ${env:…} is not expanded here)")]
    return []


def check_uri(where: str, uri: str) -> list[Problem]:
    """An MLflow URI: http(s) and databricks strictly; store paths (sqlite, file) may hold what a path may."""
    hint = "use http://host:5000, https://host, sqlite:///abs/path/mlflow.db or file:///abs/path"
    bad = f"{uri!r} contains characters a tracking URI cannot have"
    if SHELL_CHARS.search(uri):  # quotes, $ ; | & < > backslash, backticks, control characters
        return [Problem(where, f"{bad} (quotes, $ ; | & < > \\ or backticks)", hint)]
    if uri == "databricks":  # the default Databricks workspace
        return []
    scheme = "" if uri.startswith("/") else urlsplit(uri).scheme
    if scheme in ("http", "https", "databricks"):
        if not URI_CHARS.match(uri):
            return [Problem(where, f"{bad} (spaces, parentheses, …)", hint)]
        if scheme != "databricks" and not _url_ok(uri, ("http", "https")):
            return [Problem(where, f"{uri!r} needs a host and a valid port (1-65535)", hint)]
        return []
    if scheme == "" and uri.startswith("/"):
        path = uri
    elif scheme == "sqlite" and uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
    elif scheme == "file" and urlsplit(uri).path:
        path = urlsplit(uri).path
    else:
        return [Problem(where, f"{uri!r} is not an MLflow tracking URI", hint)]
    if ".." in PurePosixPath(path).parts:
        return [Problem(where, f"{uri!r} has '..' in its path", "write the store's path without '..'")]
    return []


def _cross_field(spec: Spec) -> list[Problem]:
    out: list[Problem] = []
    kind, res, ft = _kind(spec), spec.resources, spec.fault_tolerance
    if res is not None and res.nodes is not None and res.nodes > 1 and kind == "local":
        out.append(Problem("resources.nodes", f"{res.nodes} nodes need a cluster backend (backend.kind is local)",
                           "set backend.kind: slurm or ray, or resources.nodes: 1"))
    uri = spec.tracking.uri if spec.tracking is not None else None
    if kind not in (None, "local") and uri is not None and not uri.startswith(("http://", "https://")):
        out.append(Problem("tracking.uri", f"backend {kind} needs a tracking server reachable from the nodes",
                           "run `make mlflow` on the login node and set tracking.uri: http://<host>:5000"))
    if (res is not None and ft is not None and res.time_min is not None and ft.signal_lead_s is not None
            and ft.signal_lead_s >= res.time_min * 60):
        out.append(Problem("fault_tolerance.signal_lead_s", f"{ft.signal_lead_s} s is not shorter than the "
                           f"time limit (resources.time_min: {res.time_min} min)",
                           "the warning must come before the limit: lower it or raise resources.time_min"))
    return out


# Lightning's FSDP precision plugin takes these; 64-bit and transformer-engine precisions it refuses mid-setup.
FSDP_PRECISIONS = {"32-true", "32", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "16", "bf16"}


def _check_fsdp(spec: Spec) -> list[Problem]:
    """The fsdp block is read only with resources.strategy: fsdp; the combinations FSDP cannot run are named."""
    from trainctl.spec_types import Fsdp

    res, fs = spec.resources, spec.fsdp
    if res is None or fs is None:
        return []
    strategy = getattr(res.strategy, "value", res.strategy)
    if strategy != "fsdp":
        if fs != Fsdp():
            return [Problem("fsdp", "is set but resources.strategy is ddp, which ignores it",
                            "set resources.strategy: fsdp, or remove the fsdp section")]
        return []
    out: list[Problem] = []
    for i, path in enumerate(fs.wrap or []):
        out += _match(f"fsdp.wrap[{i}]", path, CLASS_PATH, "class path",
                      "write the layer's importable dotted path, e.g. trainctl.examples.gpt.Block")
    if fs.activation_checkpointing and not fs.wrap:
        out.append(Problem("fsdp.activation_checkpointing", "needs the layers to recompute (fsdp.wrap is empty)",
                           "list the repeated layer in fsdp.wrap, e.g. [trainctl.examples.gpt.Block]"))
    acc = getattr(res.accelerator, "value", res.accelerator)
    if fs.cpu_offload and acc == "cpu":
        out.append(Problem("fsdp.cpu_offload", "has nothing to offload: resources.accelerator is cpu",
                           "set fsdp.cpu_offload: false, or resources.accelerator: gpu"))
    if getattr(fs.sharding, "value", fs.sharding) == "hybrid_shard" and (acc != "gpu" or res.nodes == 1):
        out.append(Problem("fsdp.sharding", "hybrid_shard shards within a GPU node and replicates across nodes "
                           f"(here: accelerator {acc}, {res.nodes} node{'s' if res.nodes != 1 else ''})",
                           "use full_shard, or accelerator: gpu with resources.nodes > 1"))
    precision = (spec.trainer or {}).get("precision")
    if precision is not None and str(precision) not in FSDP_PRECISIONS:
        out.append(Problem("trainer.precision", f"{precision!r} is not a precision FSDP can shard",
                           f"use one of {', '.join(sorted(FSDP_PRECISIONS))}, or resources.strategy: ddp"))
    if _kind(spec) == "ray":
        out.append(Problem("resources.strategy", "fsdp runs on the local and slurm backends (backend.kind is ray)",
                           "set backend.kind: slurm or local, or resources.strategy: ddp"))
    return out


def check_devices(spec: Spec) -> list[Problem]:
    """A local GPU job on a machine without enough visible GPUs would crash on every rank: refuse it here."""
    res = spec.resources
    if _kind(spec) != "local" or res is None or getattr(res.accelerator, "value", res.accelerator) != "gpu":
        return []
    import torch

    visible = torch.cuda.device_count()  # honours CUDA_VISIBLE_DEVICES
    if visible == 0:
        return [Problem("resources.accelerator", "gpu: this machine has no visible GPU (backend.kind is local)",
                        "set resources.accelerator: cpu (or auto), or submit to a cluster with GPUs "
                        "(backend.kind: slurm or ray)")]
    if res.devices_per_node is not None and res.devices_per_node > visible:
        return [Problem("resources.devices_per_node", f"{res.devices_per_node} GPU ranks, but this machine shows "
                        f"{visible} GPU{'s' if visible != 1 else ''}",
                        f"set resources.devices_per_node: {visible} or less, or check CUDA_VISIBLE_DEVICES")]
    return []


def _check_slurm(opts: Any) -> list[Problem]:
    if opts is None:
        return []
    out: list[Problem] = []
    for name in ("partition", "account", "qos"):
        out += _match(f"backend.slurm.{name}", getattr(opts, name), SLURM_NAME, f"SLURM {name}",
                      "use letters, digits and _ . , + = @ : - (≤ 128; no spaces or shell characters)")
    out += _match("backend.slurm.constraint", opts.constraint, SLURM_CONSTRAINT, "SLURM constraint",
                  "a SLURM feature expression: letters, digits, _ . , & | [ ] * ( ) ! (no spaces or quotes)")
    for i, line in enumerate(opts.setup or []):
        if line is not None and len(line) > 4096:
            out.append(Problem(f"backend.slurm.setup[{i}]", "is longer than 4096 characters",
                               "split it into several list items"))
    for key, value in (opts.sbatch or {}).items():
        out += _check_sbatch_option(key, value)
    return out


def _check_sbatch_option(key: Any, value: Any) -> list[Problem]:
    path = f"backend.slurm.sbatch.{key}"
    if not isinstance(key, str) or not SBATCH_KEY.match(key):
        return [Problem(path, "is not an sbatch long option name",
                        "write the option without '--', lower case, e.g. exclusive, reservation, mail-type")]
    if key in OWNED_SBATCH:
        return [Problem(path, "is set by trainctl", f"set it through {OWNED_SBATCH[key]}")]
    if value is True:
        return []
    if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        return []
    if isinstance(value, str) and SBATCH_VALUE.match(value):
        return []
    return [Problem(path, f"{value!r} is not a valid sbatch value",
                    "write true for a flag, an integer, or one word of letters, digits and _ . , + = @ : / % [ ] -"
                    " (no spaces or shell characters); remove the key to leave the option unset")]


def _check_ray(opts: Any) -> list[Problem]:
    if opts is None:
        return []
    out: list[Problem] = []
    if opts.address is not None and not _url_ok(opts.address, ("http", "https", "ray")):
        out.append(Problem("backend.ray.address", f"{opts.address!r} is not a Ray address",
                           "use the Ray Jobs API (dashboard) URL, e.g. http://head-node:8265"))
    for key in opts.env_vars or {}:
        if not isinstance(key, str) or not ENV_NAME.match(key):
            out.append(Problem(f"backend.ray.env_vars.{key}", "is not an environment variable name",
                               "use letters, digits and _, not starting with a digit"))
    return out


def _url_ok(url: str, schemes: tuple[str, ...]) -> bool:
    if not URI_CHARS.match(url):
        return False
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.hostname) and (port is None or port > 0)
