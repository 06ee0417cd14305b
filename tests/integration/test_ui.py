"""trainctl's runs in the MLflow UI, seen by a real browser.

Two short digits jobs write a fresh store; trainctl's own MLflow server serves it; headless Chromium (Debian's
`chromium`, driven by Playwright) opens the pages trainctl links to. Screenshots land in tests/output/ui/.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, require, serve_mlflow
from helpers import SHORT, run_info, submit
from mlflow import MlflowClient

from trainctl import tracking

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("TRAINCTL_TEST_CHROMIUM", "/usr/bin/chromium"))  # Debian's package
OUTPUT = ROOT / "tests" / "output" / "ui"
# Root needs --no-sandbox; the network is closed, so nothing may call home (updates, sync, first-run pages).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
BOUND_MS = 60_000  # the UI's first load and its charts are slow on a busy machine
EXPERIMENT = "trainctl-ui"
CARD = "[data-testid='experiment-view-compare-runs-card']"  # one metric chart of MLflow's run and compare views


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    """A fresh headless Chromium page (Playwright's launch gives it its own new profile)."""
    require(CHROMIUM.exists(), "Chromium", "apt-get install -y chromium (.ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "Playwright", "pip install -c constraints.txt -e '.[dev]' (never `playwright install`)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_page(viewport={"width": 1600, "height": 1400})
        tab.set_default_timeout(BOUND_MS)
        yield tab
        browser.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, list[str]]]:
    """(server URI, experiment id, [run a, run b]): two finished 1-epoch jobs in a store trainctl's server serves.
    The experiment exists before trainctl sees it, untagged, as one made by hand or by an older trainctl."""
    workdir = tmp_path_factory.mktemp("ui")
    for uri in serve_mlflow(workdir, "trainctl's MLflow server"):
        exp_id = MlflowClient(tracking_uri=uri).create_experiment(EXPERIMENT)
        # One rank each and both at once keep the test short; b's higher rate sets its train/loss apart from a's.
        sets = [*SHORT, "trainer.max_epochs=1", "resources.devices_per_node=1", f"experiment={EXPERIMENT}"]
        a, run_a = submit(workdir, uri, sets, "--detach")
        b, run_b = submit(workdir, uri, [*sets, "model.init_args.lr=0.01"], "--detach")
        assert run_a and run_b, a.stdout[-2000:] + a.stderr[-2000:] + b.stdout[-2000:] + b.stderr[-2000:]
        assert f"run page:  {tracking.ui_link(uri, exp_id, run_a)}\n" in a.stdout, a.stdout
        deadline = time.monotonic() + 300
        while {tracking.current_state(uri, r).terminal for r in (run_a, run_b)} != {True}:
            assert time.monotonic() < deadline, "the two jobs did not end within 300 s"
            time.sleep(1)
        for run_id in (run_a, run_b):
            assert run_info(uri, run_id).data.tags["trainctl.state"] == "FINISHED"
        yield uri, exp_id, [run_a, run_b]


def _shot(tab: Any, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{name}.png"
    tab.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def _training_view(tab: Any) -> None:
    """MLflow 3's model-training navigation (Runs, Models), not its GenAI one (Traces, Evaluation runs)."""
    tab.get_by_text("Model registry", exact=True).first.wait_for()
    for genai in ("Evaluation runs", "Evaluations"):
        assert tab.get_by_text(genai, exact=True).count() == 0, f"GenAI view: {genai!r} is on the page"


def _chart(tab: Any, metric: str, run_names: list[str]) -> Any:
    """The chart card of `metric`, once it has drawn a line for each run (its legend names each)."""
    card = tab.locator(CARD).filter(has_text=f"({metric})").first
    for name in run_names:
        card.get_by_text(f"{name} ({metric})").wait_for()
    deadline = time.monotonic() + BOUND_MS / 1000
    while card.locator(".js-plotly-plot .scatterlayer .trace").count() < len(run_names):
        assert time.monotonic() < deadline, f"the {metric} chart has no line for each of {run_names}"
        tab.wait_for_timeout(250)
    return card


def _close_assistant(tab: Any) -> None:
    """MLflow's assistant panel opens itself on a browser's first visit; closed, the page has room."""
    close = tab.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()


def test_run_page_shows_the_run(page: Any, served: tuple[str, str, list[str]]) -> None:
    """The run page trainctl prints: name, state, description, params, attempt tags; the train/loss chart; the
    checkpoints/ and logs/ artifacts."""
    uri, exp_id, (run_a, _) = served
    run = run_info(uri, run_a)
    page.goto(tracking.ui_link(uri, exp_id, run_a))
    page.get_by_role("heading", name=run.data.tags["mlflow.runName"]).wait_for()
    _close_assistant(page)
    _training_view(page)
    for text in ["Finished", "trainctl.state", "FINISHED", "trainctl.attempt.1.cause", "model.class_path",
                 "trainctl.examples.digits.DigitsClassifier", "trainer.max_epochs",
                 "trains trainctl.examples.digits.DigitsClassifier on trainctl.examples.digits.DigitsDataModule"]:
        page.get_by_text(text, exact=False).first.wait_for()
    _shot(page, "run-overview")

    page.get_by_role("tab", name="Model metrics").click()
    _chart(page, "train/loss", [run.data.tags["mlflow.runName"]])
    page.get_by_placeholder("Search metric charts").fill("train/loss")
    page.locator(CARD).filter(has_text="(grad/norm)").wait_for(state="detached")
    _shot(page, "run-model-metrics")

    page.get_by_role("tab", name="Artifacts").click()
    for name in ["checkpoints", "logs", "spec.yaml"]:
        page.get_by_text(name, exact=True).first.wait_for()
    page.get_by_text("checkpoints", exact=True).first.click()
    page.get_by_text("last", exact=True).first.wait_for()
    _shot(page, "run-artifacts")


def test_experiment_page_compares_two_runs(page: Any, served: tuple[str, str, list[str]]) -> None:
    """The experiment page trainctl links to, in chart mode: both runs' train/loss on one chart."""
    uri, exp_id, runs = served
    names = [run_info(uri, r).data.tags["mlflow.runName"] for r in runs]
    page.goto(tracking.ui_link(uri, exp_id))
    for name in names:
        page.get_by_text(name, exact=True).first.wait_for()
    _close_assistant(page)
    _training_view(page)
    page.locator("label:has(input[value='CHART'])").click()
    # Filtered first: the page draws only the cards in view, and the system metrics add a screenful of them.
    page.get_by_placeholder("Search metric charts").fill("train/loss")
    page.locator(CARD).filter(has_text="(grad/norm)").wait_for(state="detached")
    _chart(page, "train/loss", names)
    _shot(page, "experiment-compare")
