"""Fuzz the spec: hundreds of single mutations of valid specs, each refused cleanly at its field.

Mutations are generated deterministically (seeded) from three valid specs (digits on this machine, a SLURM
variant and a Ray variant): wrong types, missing and unknown keys, bad class paths and init_args, negative and
absurd numbers, shell metacharacters and path traversal in names, paths and URIs. Every one must raise a
UserError naming the mutated field (or its parent for a missing key), with a HINT on every problem and no
traceback. Most run in-process; a handful go through the real CLI (validate and submit), which must exit 2
without a traceback and without writing anything.
"""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainctl import cli
from trainctl.errors import UserError
from trainctl.spec import parse_spec, read_yaml

from .spec_helpers import DELETE

ROOT = Path(__file__).resolve().parents[2]
SEED = 20240611


def base_specs() -> dict[str, dict[str, Any]]:
    digits = read_yaml(ROOT / "jobs" / "digits.yaml")
    slurm = copy.deepcopy(digits)
    slurm["name"] = "digits-slurm"
    slurm["resources"]["nodes"] = 2
    slurm["tracking"]["uri"] = "http://127.0.0.1:5000"
    slurm["tracking"]["redact"] = ["backend.slurm.account"]
    slurm["backend"] = {"kind": "slurm", "slurm": {
        "partition": "debug", "account": "ml-team", "qos": "normal", "constraint": "intel&gpu",
        "setup": ["module load cuda/12.4", "source /opt/env.sh && echo ready"],
        "sbatch": {"exclusive": True, "mail-type": "END,FAIL", "nice": 10}}}
    ray = copy.deepcopy(digits)
    ray["name"] = "digits-ray"
    ray["resources"]["nodes"] = 2
    ray["tracking"]["uri"] = "http://127.0.0.1:5000"
    ray["callbacks"] = [{"class_path": "pytorch_lightning.callbacks.LearningRateMonitor",
                         "init_args": {"logging_interval": "step"}}]
    ray["backend"] = {"kind": "ray", "ray": {"address": "http://127.0.0.1:8265", "cpus_per_worker": 1,
                                             "env_vars": {"HF_TOKEN": "${env:HF_TOKEN}"}, "spread": True}}
    return {"digits": digits, "slurm": slurm, "ray": ray}


BASES = base_specs()


@dataclass(frozen=True)
class Mutation:
    base: str
    path: tuple[str | int, ...]  # keys and list indices
    value: Any  # DELETE removes the key
    category: str
    classes: bool = False  # needs the class-path / init_args / trainer checks

    @property
    def yaml_path(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out

    @property
    def parent_path(self) -> str:
        return Mutation(self.base, self.path[:-1], None, "").yaml_path

    def apply(self) -> dict[str, Any]:
        raw = copy.deepcopy(BASES[self.base])
        node: Any = raw
        for part in self.path[:-1]:
            node = node[part] if isinstance(part, int) else node.setdefault(part, {})
        if self.value is DELETE:
            del node[self.path[-1]]
        else:
            node[self.path[-1]] = copy.deepcopy(self.value)
        return raw

    def __str__(self) -> str:
        shown = "<delete>" if self.value is DELETE else repr(self.value)
        return f"{self.category}:{self.base}:{self.yaml_path}={shown[:40]}"


# ---------------------------------------------------------------- the mutations

# Typed scalar fields: (path, kind, optional, lo, hi)
NUMBERS = [
    ("resources.nodes", int, False, 1, 1024), ("resources.devices_per_node", int, False, 1, 64),
    ("resources.cpus_per_task", int, False, 1, 512), ("resources.mem_gb", float, False, 0.1, 16384),
    ("resources.time_min", int, False, 1, 43200), ("checkpoint.save_top_k", int, False, -1, 1000),
    ("checkpoint.every_n_train_steps", int, True, 1, 10**9), ("checkpoint.every_n_minutes", float, True, 0.05, 10**6),
    ("checkpoint.keep_resume", int, False, 1, 100), ("early_stopping.patience", int, False, 0, 10**6),
    ("early_stopping.min_delta", float, False, 0, 1e12), ("fault_tolerance.max_restarts", int, False, 0, 1000),
    ("fault_tolerance.collective_timeout_s", float, False, 5, 86400),
    ("fault_tolerance.signal_lead_s", int, False, 5, 3600), ("tracking.log_every_n_steps", int, False, 1, 10**6),
    ("seed_everything", int, True, 0, 2**32 - 1), ("backend.slurm.gpus_per_node", int, True, 0, 64),
    ("backend.ray.cpus_per_worker", float, True, 0.1, 512),
]
BOOLS = ["checkpoint.save_last", "checkpoint.async_save", "tracking.log_grad_norm", "tracking.log_checkpoints",
         "backend.ray.spread"]
ENUMS = {"resources.accelerator": ["tpu", "GPU", 1, True], "checkpoint.mode": ["maximum", "", 0],
         "early_stopping.mode": ["up", None], "fault_tolerance.on_failure": ["retry", False],
         "backend.kind": ["k8s", "Slurm", ["slurm"]]}
SECTIONS = ["resources", "checkpoint", "early_stopping", "fault_tolerance", "tracking", "backend", "model",
            "data", "backend.slurm", "backend.ray"]
SHELL = ["a;rm -rf /", "$(id)", "`id`", "a|tee x", "a&&b", "a>b", "x\0y", "x\ny", "a'b", 'a"b', "a\\b"]
TRAVERSAL = ["../../etc", "../x", "a/../../b"]
NAME_BAD = [*SHELL, *TRAVERSAL, "a b", "-rf", ".hidden", "*", "x" * 65, ""]
PATH_BAD = [*SHELL, *TRAVERSAL, "/tmp/../../etc", "~/runs", "run dir", "-rf", "", "${env:HOME}/runs",
            "x" * 1100]
URI_BAD = ["http://127.0.0.1:5000/;rm -rf /", "http://127.0.0.1:5000/$(id)", "http://h`id`:5000", "http://a b",
           "http://h:5000|tee", "sqlite:///../../etc/x.db", "file:///srv/../../etc", "ftp://host/x", "http://",
           "http://h:99999", "mlflow-host:5000", "sqlite://relative.db", "http://h:5000\nX: y"]
METRIC_BAD = ["", "val/../../x", "val;rm", "$(id)", "a\nb", "`x`", "-loss"]
CLASS_BAD = ["", "nope", "trainctl.examples.digits.Nope", "trainctl.examples.nope.Model", "os.system",
             "subprocess.Popen", "collections.OrderedDict", "../../etc/passwd", "a.b; rm -rf /", "$(id).X",
             "trainctl.examples.digits.DigitsClassifier ", 42, ["x.Y"], "torch.nn.Linear", "builtins.print"]


def _wrong_types(kind: type, optional: bool) -> list[Any]:
    values: list[Any] = {int: ["abc", "3", True, 2.5, [1], {"a": 1}],
                         float: ["fast", "1e3", False, [1.0], float("nan"), float("inf"), float("-inf")],
                         bool: ["yes", "true", 1, 0, [True]],
                         str: [123, ["x"], {"a": "b"}, True]}[kind]
    return values if optional else [*values, None]


def _absurd(kind: type, lo: float, hi: float) -> list[Any]:
    step = 1 if kind is int else 0.01
    return [lo - step, hi + step, -(10**6), 10**12, 2**64, -(2**70)] if kind is int else [lo - step, hi * 10, -1e300]


def _present(base: str, dotted: str) -> bool:
    node: Any = BASES[base]
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _typo(key: str, rng: random.Random) -> str:
    i = rng.randrange(len(key))
    return key[:i] + key[i + 1 :] if len(key) > 3 else key + "x"


def _p(dotted: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def mutations() -> list[Mutation]:
    rng = random.Random(SEED)
    out: list[Mutation] = []
    names = list(BASES)

    def pick() -> str:
        return rng.choice(names)

    # wrong types and negative/absurd numbers
    for dotted, kind, optional, lo, hi in NUMBERS:
        base = "ray" if dotted.startswith("backend.ray") else "slurm" if dotted.startswith("backend.slurm") else pick()
        out += [Mutation(base, _p(dotted), v, "wrong-type") for v in _wrong_types(kind, optional)]
        out += [Mutation(pick(), _p(dotted), v, "absurd-number") for v in _absurd(kind, lo, hi)]
    for dotted in BOOLS:
        out += [Mutation(pick(), _p(dotted), v, "wrong-type") for v in _wrong_types(bool, False)]
    for dotted, values in ENUMS.items():
        out += [Mutation(pick(), _p(dotted), v, "bad-enum") for v in values]
    for dotted in ["name", "experiment", "workdir", "checkpoint.monitor", "tracking.uri", "backend.slurm.partition"]:
        out += [Mutation(pick(), _p(dotted), v, "wrong-type") for v in _wrong_types(str, dotted != "name")[:3]]
    for dotted in SECTIONS:
        for v in ["oops", [1, 2], 7]:
            out.append(Mutation(pick(), _p(dotted), v, "wrong-type-section"))
    out += [Mutation(b, ("callbacks",), v, "wrong-type-section")
            for b, v in [("digits", {"class_path": "x.Y"}), ("ray", "x.Y"), ("ray", [["x"]]), ("slurm", [None])]]
    out += [Mutation(b, ("trainer",), v, "wrong-type-section") for b, v in [("digits", ["max_epochs"]),
                                                                         ("ray", "fast")]]
    out += [Mutation(b, p, v, "wrong-type-section") for b, p, v in [
        ("digits", ("model", "init_args"), [1]), ("slurm", ("data", "init_args"), "batch_size=3"),
        ("slurm", ("backend", "slurm", "setup"), "module load cuda"),
        ("slurm", ("backend", "slurm", "sbatch"), ["exclusive"]), ("ray", ("backend", "ray", "env_vars"), "A=1"),
        ("digits", ("tracking", "redact"), "model.init_args.lr")]]

    # missing required keys
    for base, dotted in [("digits", "name"), ("slurm", "name"), ("digits", "model"), ("ray", "model"),
                         ("digits", "model.class_path"), ("slurm", "model.class_path"), ("digits", "data.class_path"),
                         ("ray", "data.class_path"), ("digits", "early_stopping.monitor"),
                         ("ray", "callbacks.0.class_path")]:
        out.append(Mutation(base, _p(dotted), DELETE, "missing-key"))

    # unknown keys: a typo of a real key (did you mean) and a junk key, in every mapping section
    for section in ["", *SECTIONS]:
        base = "slurm" if section == "backend.slurm" else "ray" if section == "backend.ray" else pick()
        node: Any = BASES[base]
        for part in section.split(".") if section else []:
            node = node[part]
        keys = [k for k in node if k not in ("init_args",)] if isinstance(node, dict) else []
        prefix = _p(section) if section else ()
        if keys:
            typo = _typo(rng.choice(keys), rng)
            if typo not in node:
                out.append(Mutation(base, (*prefix, typo), 1, "unknown-key"))
        out.append(Mutation(base, (*prefix, f"zz_{rng.randrange(10**6)}"), "x", "unknown-key"))

    # shell metacharacters and path traversal in names, paths, URIs and scheduler options
    for value in NAME_BAD:
        out.append(Mutation(pick(), ("name",), value, "shell-or-traversal"))
    for value in [*SHELL, *TRAVERSAL, "", "/abs", "x" * 129]:
        out.append(Mutation(pick(), ("experiment",), value, "shell-or-traversal"))
    for value in PATH_BAD:
        out.append(Mutation(pick(), ("workdir",), value, "shell-or-traversal"))
    for value in URI_BAD:
        out.append(Mutation(pick(), ("tracking", "uri"), value, "shell-or-traversal"))
    for value in METRIC_BAD:
        out.append(Mutation(pick(), ("checkpoint", "monitor"), value, "shell-or-traversal"))
        out.append(Mutation(pick(), ("early_stopping", "monitor"), value, "shell-or-traversal"))
    for key in ["partition", "account", "qos"]:
        for value in rng.sample([*SHELL, "a b", "", "x" * 200], 5):
            out.append(Mutation("slurm", ("backend", "slurm", key), value, "shell-or-traversal"))
    for value in ["intel;id", "a b", "$(id)", "x\ny", "`x`", "a'b"]:
        out.append(Mutation("slurm", ("backend", "slurm", "constraint"), value, "shell-or-traversal"))
    for value in ["module load x\nrm -rf /", "x\0", "x\r", 5, None, ["nested"], "x" * 5000]:
        out.append(Mutation("slurm", ("backend", "slurm", "setup", 1), value, "shell-or-traversal"))
    for key in ["nodes", "time", "partition", "chdir", "output", "Bad Key", "--exclusive", "x", "a;b"]:
        out.append(Mutation("slurm", ("backend", "slurm", "sbatch", key), "1", "sbatch-option"))
    for value in ["END\nFAIL", "$(id)", "a b", "a;b", "`x`", None, False, [1], {"a": 1}, 1.5, 2**40, ""]:
        out.append(Mutation("slurm", ("backend", "slurm", "sbatch", "mail-type"), value, "sbatch-option"))
    for value in [1, None, ["x"], {"a": 1}, True, 1.5]:
        out.append(Mutation("ray", ("backend", "ray", "env_vars", "HF_TOKEN"), value, "env-vars"))
    for key in ["bad name", "1X", "A-B", "$(id)", "A;B"]:
        out.append(Mutation("ray", ("backend", "ray", "env_vars", key), "x", "env-vars"))
    for value in ["http://h;id:8265", "not a url", "http://", "ftp://h:8265", "http://h:0", "$(id)"]:
        out.append(Mutation("ray", ("backend", "ray", "address"), value, "shell-or-traversal"))
    for value in [[1], [None], [["x"]], ["a b"], ["$(id)"], ["../x"], [{"a": 1}], [""]]:
        out.append(Mutation(pick(), ("tracking", "redact"), value, "redact"))

    # class paths, init_args and trainer arguments: these go through the real import and signature checks
    for value in CLASS_BAD:
        out.append(Mutation(pick(), ("model", "class_path"), value, "bad-class-path", classes=True))
    for value in [*rng.sample(CLASS_BAD, 8), "trainctl.examples.digits.DigitsClassifier",
                  "lightning.pytorch.LightningDataModule"]:
        out.append(Mutation(pick(), ("data", "class_path"), value, "bad-class-path", classes=True))
    for value in [*rng.sample(CLASS_BAD, 5), "pytorch_lightning.LightningModule",
                  "lightning.pytorch.callbacks.EarlyStopping"]:
        out.append(Mutation("ray", ("callbacks", 0, "class_path"), value, "bad-class-path", classes=True))
    for arg, values in {"hidden": ["wide", 1.5, [1], True, None], "dropout": ["x", [0.1], {"p": 1}],
                        "lr": ["fast", None], "hiden": [3], "step_lr": [0.5]}.items():
        out += [Mutation(pick(), ("model", "init_args", arg), v, "bad-init-arg", classes=True) for v in values]
    for arg, values in {"batch_size": ["big", 3.5, [32]], "batchsize": [32], "seed": ["x"]}.items():
        out += [Mutation(pick(), ("data", "init_args", arg), v, "bad-init-arg", classes=True) for v in values]
    out.append(Mutation("ray", ("callbacks", 0, "init_args", "logging_interval"), "hourly", "bad-init-arg",
                        classes=True))
    out.append(Mutation("ray", ("callbacks", 0, "init_args", "log_momentum"), "sure", "bad-init-arg",
                        classes=True))
    for arg, value in [("strategy", "ddp"), ("devices", 4), ("num_nodes", 2), ("accelerator", "gpu"),
                       ("logger", False), ("callbacks", []), ("default_root_dir", "/tmp"), ("plugins", []),
                       ("max_epoch", 3), ("gpus", 1), ("max_epochs", "ten"), ("precision", "17"),
                       ("deterministic", 5), ("max_steps", None), ("accumulate_grad_batches", "x"),
                       ("enable_checkpointing", False)]:
        out.append(Mutation(pick(), ("trainer", arg), value, "trainer-arg", classes=True))
    return out


MUTATIONS = mutations()


def named(mut: Mutation, paths: list[str]) -> bool:
    want = mut.yaml_path
    for p in paths:
        if p == want or p.startswith((f"{want}.", f"{want}[")):
            return True
        if mut.value is DELETE and p == mut.parent_path:
            return True
    return False


def test_the_base_specs_are_valid() -> None:
    for name, raw in BASES.items():
        spec = parse_spec(copy.deepcopy(raw), name)
        assert spec.name.startswith("digits")


def test_enough_mutations_of_every_kind() -> None:
    assert len(MUTATIONS) >= 200
    assert sum(m.classes for m in MUTATIONS) >= 40
    assert len({str(m) for m in MUTATIONS}) == len(MUTATIONS), "duplicate mutations"
    kinds = {m.category for m in MUTATIONS}
    assert {"wrong-type", "missing-key", "unknown-key", "bad-class-path", "absurd-number",
            "shell-or-traversal"} <= kinds
    assert [str(m) for m in mutations()] == [str(m) for m in MUTATIONS], "the generator must be deterministic"


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd
    assert list(cwd.iterdir()) == [], "a refused spec wrote files"


def test_every_mutation_is_refused_at_its_field(empty_cwd: Path) -> None:
    failures: list[str] = []
    for mut in MUTATIONS:
        try:
            parse_spec(mut.apply(), "fuzz.yaml", check_classes=mut.classes)
        except UserError as err:
            paths = [p.path for p in err.problems]
            text = str(err)
            if not named(mut, paths):
                failures.append(f"{mut}: the field is not named in {paths}")
            if not all(p.hint.strip() for p in err.problems):
                failures.append(f"{mut}: a problem without a HINT: {text}")
            if "Traceback" in text or "HINT:" not in text or not text.startswith("fuzz.yaml: "):
                failures.append(f"{mut}: badly rendered: {text}")
        except Exception as exc:  # anything but a UserError is a bug
            failures.append(f"{mut}: raised {type(exc).__name__}: {exc}")
        else:
            failures.append(f"{mut}: was accepted")
    assert not failures, f"{len(failures)} of {len(MUTATIONS)} mutations:\n" + "\n".join(failures)


def test_every_mutation_exits_2_through_main_in_process(tmp_path: Path, empty_cwd: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A seeded sample through `trainctl validate` in-process (YAML file, full checks): exit 2, no traceback."""
    sample = random.Random(SEED).sample(MUTATIONS, 60)
    failures: list[str] = []
    for i, mut in enumerate(sample):
        job = tmp_path / f"job{i}.yaml"
        job.write_text(yaml.safe_dump(mut.apply(), sort_keys=False))
        rc = cli.main(["validate", str(job)])
        _, err = capsys.readouterr()
        if rc != 2 or "Traceback" in err or not err.startswith("error: ") or mut.yaml_path.split("[")[0] not in err:
            failures.append(f"{mut}: rc={rc} stderr={err[-500:]!r}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- a handful through the real CLI

# What the real process adds to the in-process runs above (exit status, nothing on stderr but the error, no file
# written) does not depend on the mutation, so four cases suffice: submit and validate twice each, the three
# backends, shell metacharacters, a path traversal and a class check.
CLI_CASES = [
    Mutation("digits", ("name",), "x; touch pwned", "shell-or-traversal"),
    Mutation("digits", ("model", "class_path"), "trainctl.examples.digits.Nope", "bad-class-path", classes=True),
    Mutation("slurm", ("tracking", "uri"), "http://h:5000/$(touch pwned)", "shell-or-traversal"),
    Mutation("ray", ("experiment",), "../../etc", "shell-or-traversal"),
]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "trainctl.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_handful_through_the_real_cli(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    calls = []
    for i, mut in enumerate(CLI_CASES):
        cwd = tmp_path / f"cwd{i}"
        cwd.mkdir()
        job = jobs / f"job{i}.yaml"
        job.write_text(yaml.safe_dump(mut.apply(), sort_keys=False))
        # each CLI run imports torch and Lightning (~3.5 CPU-s), so each case runs one command: half submit
        if i % 2 == 0:
            calls.append((mut, cwd, ["submit", str(job), "--set", f"workdir={cwd}/w"]))
        else:
            calls.append((mut, cwd, ["validate", str(job), "--set", f"workdir={cwd}/w"]))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda c: _run(c[2], c[1]), calls))
    failures = []
    for (mut, cwd, args), res in zip(calls, results):
        where = mut.yaml_path.split("[")[0]
        if res.returncode != 2 or where not in res.stderr:
            failures.append(f"{args[0]} {mut}: rc={res.returncode} stderr={res.stderr[-800:]!r}")
        if "Traceback" in res.stderr or "HINT:" not in res.stderr:
            failures.append(f"{args[0]} {mut}: stderr={res.stderr[-800:]!r}")
        if list(cwd.iterdir()):
            failures.append(f"{args[0]} {mut}: wrote {sorted(p.name for p in cwd.iterdir())}")
    assert not failures, "\n".join(failures)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["jobs", *(f"cwd{i}" for i in range(len(CLI_CASES)))])
