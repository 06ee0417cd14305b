"""`trainctl reproduce RUN`: re-submit a run's stored spec in a checkout of its code as it ran.

The checkout is a clone of the recorded repository (`trainctl.git.root`) at the recorded commit with the recorded
uncommitted changes applied (trainctl.provenance), under `<workdir>/reproduce/<run name>/`. The job is submitted
from there, so the user's modules import from the checkout; a `src/` directory in it goes first on PYTHONPATH. The
new run is tagged `trainctl.reproduces=<run id>`; packages that differ from the recorded set are named.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from trainctl import control, provenance, tracking
from trainctl.errors import UserError
from trainctl.rundir import JobFile

HINT_GIT = "submit from inside a git repository (or keep the spec in one): its commit is what reproduce checks out"


def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def checkout(root: str, commit: str, dest: Path, patch: bytes | None) -> None:
    """A fresh clone of `root` at `commit`, the patch applied (the clone shares the repository's objects)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    cloned = _git("clone", "--quiet", "--no-checkout", root, str(dest))
    if cloned.returncode != 0:
        raise UserError.single("trainctl.git.root", f"cannot clone {root}: {cloned.stderr.strip()}",
                               "the repository the run was submitted from must still exist on this machine")
    done = _git("checkout", "--quiet", "--detach", commit, cwd=dest)
    if done.returncode != 0:
        raise UserError.single("mlflow.source.git.commit", f"commit {commit} is not in {root}",
                               "fetch it into that repository (it may have been rebased away)")
    if patch:
        with tempfile.NamedTemporaryFile(suffix=".patch") as fh:
            fh.write(patch)
            fh.flush()
            applied = _git("apply", "--binary", "--whitespace=nowarn", fh.name, cwd=dest)
        if applied.returncode != 0:
            raise UserError.single(provenance.DIFF, f"the recorded changes do not apply: {applied.stderr.strip()}",
                                   f"inspect the patch in the run's artifacts; the checkout is {dest}")


def _artifact(uri: str, run_id: str, path: str) -> bytes | None:
    from mlflow.artifacts import download_artifacts

    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                           tracking_uri=uri)).read_bytes()
    except Exception:
        return None


def package_drift(recorded: str, now: str) -> list[str]:
    """`name: recorded -> now` for every package whose version differs (or is missing on one side)."""
    def parse(text: str) -> dict[str, str]:
        return dict(line.split("==", 1) for line in text.splitlines() if "==" in line)

    a, b = parse(recorded), parse(now)
    return [f"{k}: {a.get(k, '-')} -> {b.get(k, '-')}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def reproduce(run_id: str, uri: str | None, into: str | Path | None = None, backend: str | None = None
              ) -> tuple[str, str, str]:
    """Check out the run's code, submit its spec there (detached). Returns (new run id, its store, what to say)."""
    ref = control.find_run(run_id, uri)
    cl = tracking.client(ref.uri)
    tags = cl.get_run(ref.run_id).data.tags
    commit, root = tags.get("mlflow.source.git.commit"), tags.get("trainctl.git.root")
    if not commit or not root:
        raise UserError.single("RUN_ID", f"run {ref.run_id} recorded no git commit and repository", HINT_GIT)
    if JobFile.path(ref.run_dir).is_file():
        spec = JobFile.read(ref.run_dir).spec  # unredacted: ${env:…} references stay references
    else:
        text = _artifact(ref.uri, ref.run_id, "spec.yaml")
        if text is None:
            raise UserError.single("RUN_ID", f"run {ref.run_id} has neither its run directory nor spec.yaml",
                                   "reproduce needs the spec the run was submitted with")
        spec = yaml.safe_load(text)
    patch = _artifact(ref.uri, ref.run_id, provenance.DIFF) if tags.get("trainctl.git.dirty") == "true" else None
    if tags.get("trainctl.git.dirty") == "true" and patch is None:
        raise UserError.single(provenance.DIFF, f"run {ref.run_id} ran on a dirty tree but its diff is missing",
                               "the run's artifacts must hold environment/git-diff.patch")
    dest = (Path(into) if into else ref.run_dir.parent / "reproduce" / ref.run_dir.name).absolute()
    checkout(root, commit, dest, patch)
    source = Path(tags.get("mlflow.source.name", "job.yaml"))
    rel = source.relative_to(root) if source.is_relative_to(root) else Path(source.name)
    spec_file = dest / rel.with_name(f"{rel.stem}.reproduce-{ref.run_id[:8]}.yaml")
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(yaml.safe_dump(json.loads(json.dumps(spec)), sort_keys=False))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*([str(dest / "src")] if (dest / "src").is_dir() else []),
                                         *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "trainctl.cli", "submit", str(spec_file), "--detach",
           *(["--backend", backend] if backend else [])]
    res = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=600, check=False)
    found = re.search(r"run id:\s+([0-9a-f]{32})", res.stdout)
    if res.returncode != 0 or not found:
        raise UserError.single("RUN_ID", f"the re-submission failed: {(res.stderr or res.stdout).strip()[-2000:]}",
                               f"the checkout is {dest}; submit {spec_file} there by hand to see why")
    new_id = found.group(1)
    store = re.search(r"tracking:\s+(\S+)", res.stdout)
    new_uri = store.group(1) if store else ref.uri
    tracking.client(new_uri).set_tag(new_id, "trainctl.reproduces", ref.run_id)
    lines = [f"reproducing run {ref.run_id} at commit {commit[:12]}"
             f"{' with its recorded changes' if patch else ''} in {dest}", res.stdout.rstrip()]
    recorded = _artifact(ref.uri, ref.run_id, provenance.PACKAGES)
    drift = package_drift(recorded.decode(), provenance.package_set()) if recorded else []
    if drift:
        lines.append(f"note: {len(drift)} installed package(s) differ from the run's: {'; '.join(drift[:8])}"
                     f"{' …' if len(drift) > 8 else ''} (pip install -r the run's {provenance.PACKAGES})")
    return new_id, new_uri, "\n".join(lines)
