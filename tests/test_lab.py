"""The variant lab end to end: studies, resume after SIGKILL, workers, failures, reports
(checked in a real browser), reproducibility, and that learning works."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

from lstmc.cli import main  # noqa: E402
from lstmc.lab.errors import ExperimentError  # noqa: E402
from lstmc.lab.experiment import define  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LSTM = str(ROOT / "specs" / "lstm.lstm")
CIFG = str(ROOT / "specs" / "greff" / "cifg.lstm")

# A cell whose output overflows at once: its training loss is NaN or infinite.
BLOWUP = """
cell blowup(x: I) -> h: H {
  param W, U, b
  h' = exp(exp(W @ x + U @ h + b + 40))
}
"""


def config_file(path: Path, variants: list[str], trials: int, *, epochs: int = 2,
                train: int = 64, length: int = 8, extra: str = "") -> Path:
    """A tiny experiment on `adding`: fixed hidden and batch sizes, so every trial reuses
    one compiled kernel per variant."""
    listed = ", ".join(f'"{v}"' for v in variants)
    path.write_text(f"""
task = "adding"
variants = [{listed}]
trials = {trials}
epochs = {epochs}
heartbeat = 1
{extra}
[task_options]
length = {length}
train = {train}
valid = 32
test = 32
[space]
hidden_size = 8
batch_size = 32
""", encoding="utf-8")
    return path


def lab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lstmc.cli", "experiment", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=_env(),
                          check=False)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def trials_of(url: str, study: str):
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def assert_each_slot_once(url: str, study: str, budget: int) -> None:
    """Every slot of the budget completed exactly once; any other attempt is a failed
    (interrupted) one that was retried."""
    trials = trials_of(url, study)
    done = [t.user_attrs["slot"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(done) == list(range(budget))
    for t in trials:
        assert t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """2 variants x 2 trials on tiny sizes, run through the CLI in this process, reported."""
    where = tmp_path_factory.mktemp("lab")
    url = f"sqlite:///{where / 'lab.db'}"
    config = config_file(where / "small.toml", [LSTM, CIFG], trials=4)
    assert main(["experiment", "run", "--config", str(config), "--storage", url]) == 0
    assert main(["experiment", "report", "--storage", url, "-o", str(where / "report")]) == 0
    return where, url


def test_small_experiment_end_to_end(small_study):
    where, url = small_study
    study = optuna.load_study(study_name="adding", storage=url)
    assert "lstmc_experiment" in study.user_attrs
    trials = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 4
    assert sorted(t.params["variant"] for t in trials) == ["cifg", "cifg", "lstm", "lstm"]
    report = where / "report"
    for name in ("summary.csv", "summary.md", "trials.csv", "index.html", "boxplot.png",
                 "curves.png", "importance.png", "time.png"):
        assert (report / name).stat().st_size > 0, name
    from PIL import Image

    for png in report.glob("*.png"):
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    # the summary's numbers are those the trials recorded
    from scipy import stats

    with open(report / "summary.csv", newline="") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    tests = {v: np.array([t.user_attrs["test"] for t in trials if t.params["variant"] == v])
             for v in ("lstm", "cifg")}
    for variant, values in tests.items():
        row = rows[variant]
        assert int(row["trials"]) == 2 and int(row["failed"]) == 0
        assert float(row["best"]) == pytest.approx(values.min(), rel=1e-12)
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        assert float(row["median"]) == pytest.approx(median, rel=1e-12)
        assert float(row["q1"]) == pytest.approx(q1, rel=1e-12)
        assert float(row["q3"]) == pytest.approx(q3, rel=1e-12)
    p = stats.ttest_ind(tests["cifg"], tests["lstm"], equal_var=False).pvalue
    assert float(rows["cifg"]["p_value"]) == pytest.approx(p, rel=1e-9)
    assert rows["lstm"]["p_value"] == ""  # the baseline
    text = (report / "summary.md").read_text()
    assert "| lstm | 2 | 0 |" in text and "| cifg | 2 | 0 |" in text


def test_rerun_of_a_finished_experiment_runs_nothing(small_study):
    where, url = small_study
    before = len(trials_of(url, "adding"))
    config = where / "small.toml"
    assert main(["experiment", "run", "--config", str(config), "--storage", url]) == 0
    assert len(trials_of(url, "adding")) == before
    # resume by name alone: the stored definition is enough
    assert main(["experiment", "run", "--storage", url, "--study", "adding"]) == 0
    assert len(trials_of(url, "adding")) == before


def test_reproducible_on_cpu(small_study):
    """A configuration trained twice with its seed gives the same metrics."""
    from lstmc.lab.study import read_experiment
    from lstmc.lab.train import train

    _, url = small_study
    experiment = read_experiment(url, "adding")
    task = experiment.make_task()
    trial = next(t for t in trials_of(url, "adding")
                 if t.state == optuna.trial.TrialState.COMPLETE)
    from lstmc.lab.runner import seed_of

    config = trial.user_attrs["config"]
    variant = experiment.variant(trial.params["variant"])
    seed = seed_of(experiment, trial.user_attrs["slot"], 0)
    a = train(task, variant, config, epochs=experiment.epochs, seed=seed)
    b = train(task, variant, config, epochs=experiment.epochs, seed=seed)
    assert a.valid_curve == b.valid_curve and a.test == b.test
    assert a.test == trial.user_attrs["test_per_seed"][0]


def test_resume_after_sigkill(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    # Enough trials that the poll below (every 50 ms, slower on a loaded machine) sees
    # two complete long before the last: a run of 4 could finish between two polls.
    trials = 10
    config = config_file(tmp_path / "resume.toml", [LSTM, CIFG], trials=trials, train=512,
                         length=16)
    command = [sys.executable, "-m", "lstmc.cli", "experiment", "run", "--config", str(config),
               "--storage", url]
    proc = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    complete = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                complete = sum(t.state == optuna.trial.TrialState.COMPLETE
                               for t in trials_of(url, "adding"))
            except Exception:  # noqa: BLE001 -- not created yet, or being written
                complete = 0
            if complete >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert complete >= 2, "the run did not complete two trials"
    assert complete < trials, "the run finished before it could be killed"
    again = lab("run", "--config", str(config), "--storage", url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert_each_slot_once(url, "adding", trials)


def test_two_workers_share_the_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    _two_workers(tmp_path, url)


def _two_workers(where: Path, url: str, study: str = "adding") -> None:
    config = config_file(where / "jobs.toml", [LSTM, CIFG], trials=4)
    result = lab("run", "--config", str(config), "--storage", url, "--study", study,
                 "--jobs", "2", cwd=where)
    assert result.returncode == 0, result.stderr
    assert_each_slot_once(url, study, 4)
    trials = trials_of(url, study)
    assert len(trials) == 4  # nothing retried, nothing run twice
    assert "[worker 0]" in result.stderr or "[worker 1]" in result.stderr


def test_failing_trial_is_recorded_and_the_rest_finish(tmp_path):
    spec = tmp_path / "blowup.lstm"
    spec.write_text(BLOWUP)
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    config = config_file(tmp_path / "fail.toml", [LSTM, str(spec)], trials=4, epochs=1)
    assert main(["experiment", "run", "--config", str(config), "--storage", url]) == 0
    trials = trials_of(url, "adding")
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(failed) == 2 and len(complete) == 2
    for t in failed:
        assert t.params["variant"] == "blowup"
        assert "TrialDiverged" in t.user_attrs["error"] and "blowup" in t.user_attrs["error"]
    assert {t.params["variant"] for t in complete} == {"lstm"}
    out = tmp_path / "report"
    assert main(["experiment", "report", "--storage", url, "-o", str(out)]) == 0
    assert "TrialDiverged" in (out / "index.html").read_text()


def test_bad_definitions_are_named(tmp_path, capsys):
    with pytest.raises(ExperimentError, match="unknown task 'nope'"):
        define({"task": "nope", "variants": [LSTM]})
    with pytest.raises(ExperimentError, match="unknown hyperparameter 'lr'"):
        define({"task": "adding", "variants": [LSTM], "space": {"lr": 0.1}})
    with pytest.raises(ExperimentError, match="cannot read the spec"):
        define({"task": "adding", "variants": [str(tmp_path / "missing.lstm")]})
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["experiment", "report", "--storage", url, "-o", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "holds no study" in err and "Traceback" not in err


@pytest.mark.parametrize("keys, message", [
    ({"seed": -1}, "'seed' must be an integer >= 0, got -1"),  # SeedSequence refuses it
    ({"seed": 1.5}, "'seed' must be an integer >= 0"),
    ({"max_retry": "x"}, "'max_retry' must be an integer >= 0"),
    ({"clip": "x"}, "'clip' must be a positive number, got 'x'"),
    ({"trials": True}, "'trials' must be a positive integer, got True"),
    ({"task": ["adding"]}, "'task' must be a task's name"),
    ({"preset": ["greff"]}, "'preset' must be a preset's name"),
    ({"variants": [1, 2]}, "'variants' must be a list of spec paths"),
    ({"task_options": 5}, "'task_options' must be a table"),
    ({"task_options": {"seed": -3}}, "option 'seed' must be at least 0, got -3"),
    ({"space": 5}, "'space' must be a table"),
    ({"space": {"learning_rate": float("nan")}}, "learning_rate': expected a finite number"),
    ({"space": {"input_noise": float("inf")}}, "input_noise': expected a finite number"),
    ({"space": {"learning_rate": {"low": 1e-3, "high": 1e-2, "log": "no"}}},
     "log must be true or false, got 'no'"),  # "no" once read as true
])
def test_bad_values_in_a_definition_are_named(keys, message):
    with pytest.raises(ExperimentError, match=message.replace("(", r"\(")):
        define({"task": "adding", "variants": [LSTM], **keys})


def test_a_bad_seed_stores_no_study(tmp_path, capsys):
    """A negative seed is refused before the study is created: nothing is stored that a
    corrected rerun would find to be 'a different experiment'."""
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    config = config_file(tmp_path / "seed.toml", [LSTM], trials=1, extra="seed = -1")
    assert main(["experiment", "run", "--config", str(config), "--storage", url]) == 1
    assert "'seed' must be an integer >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # the flag: a usage error
        main(["experiment", "run", LSTM, "--task", "adding", "--seed", "-1", "--storage", url])
    assert exit_info.value.code == 2
    assert "expected an integer in 0..2**64-1, got -1" in capsys.readouterr().err
    assert optuna.get_all_study_summaries(url) == []


def test_a_config_that_is_not_utf8_is_named(tmp_path, capsys):
    path = tmp_path / "lab.toml"
    path.write_bytes(b'task = "adding"\n\xff\n')
    assert main(["experiment", "run", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lstmc: error: {path}: not valid TOML: not UTF-8 text"), err


def test_report_of_a_study_whose_trials_all_failed_says_why(tmp_path, capsys):
    """Not 'run it first': running again fails the same way. The first failure is shown."""
    broken = tmp_path / "broken.lstm"
    broken.write_text("cell broken(x: I) -> h: H {\n  param W\n  h' = W @ x +\n}\n")
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    config = config_file(tmp_path / "lab.toml", [str(broken)], trials=1, epochs=1)
    assert main(["experiment", "run", "--config", str(config), "--storage", url]) == 0
    capsys.readouterr()
    assert main(["experiment", "report", "--storage", url, "-o", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "all 1 trial(s) failed" in err and "SpecSyntaxError" in err, err
    assert "Traceback" not in err


def test_a_resumed_run_cannot_lower_the_budget(tmp_path):
    """Six trials queued, resumed with --trials 2: refused, and the stored definition
    keeps its budget of six (all six would run under a budget that said two)."""
    from lstmc.lab.study import create_or_resume, read_experiment

    url = f"sqlite:///{tmp_path / 'lab.db'}"
    create_or_resume(url, "adding", define({"task": "adding", "variants": [LSTM],
                                            "trials": 6}))
    lower = define({"task": "adding", "variants": [LSTM], "trials": 2})
    with pytest.raises(ExperimentError, match="already holds 6 trials.*not lower it to 2"):
        create_or_resume(url, "adding", lower)
    assert read_experiment(url, "adding").trials == 6
    assert len(trials_of(url, "adding")) == 6
    more = define({"task": "adding", "variants": [LSTM], "trials": 8})
    assert create_or_resume(url, "adding", more).trials == 8  # raising it still works
    assert len(trials_of(url, "adding")) == 8


def test_tasks_command_lists_every_task(capsys):
    from lstmc.lab.tasks import TASKS

    assert main(["experiment", "tasks"]) == 0
    out = capsys.readouterr().out
    for name in TASKS:
        assert name in out


def test_learning_works_on_adding():
    """The standard LSTM beats the trivial predictor's MSE (about 1/6) by 10x on adding
    with T = 50, within a small budget."""
    from lstmc.lab.experiment import load_variants
    from lstmc.lab.tasks import get_task
    from lstmc.lab.train import train

    task = get_task("adding", length=50, train=2000, valid=200, test=500)
    test = task.splits()["test"]
    trivial = task.score(np.full_like(test.y, task.splits()["train"].y.mean()), test)
    variant = load_variants([LSTM], None)[0]
    config = {"learning_rate": 1e-2, "optimizer": "adam", "momentum": 0.9, "hidden_size": 32,
              "batch_size": 32, "input_noise": 0.0, "dropout": 0.0}
    result = train(task, variant, config, epochs=12, seed=0, patience=12)
    assert result.test < trivial / 10, (result.test, trivial, result.valid_curve)


def _chromium() -> tuple[str, str] | None:
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_report_in_a_real_browser(small_study):
    """index.html loads in headless Chromium with no console error, and every image
    renders with a non-zero natural size."""
    webdriver = pytest.importorskip("selenium.webdriver")
    found = _chromium()
    if found is None:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium "
                    "chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    where, _ = small_study
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        driver.get((where / "report" / "index.html").resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map("
            "i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        title = driver.title
    finally:
        driver.quit()
    assert title == "lstmc experiment: adding"
    assert len(images) == 4
    for alt, complete, width, height in images:
        assert complete and width > 0 and height > 0, alt
    assert errors == []


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    """LSTMC_TEST_POSTGRES_URL, or a private throwaway server started with Debian's
    initdb / pg_ctl (as the postgres user when run as root); skipped if neither works."""
    url = os.environ.get("LSTMC_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    pytest.importorskip("psycopg2")
    import glob
    import shutil
    import socket
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        pytest.skip("no PostgreSQL server: set LSTMC_TEST_POSTGRES_URL or apt-get install "
                    "postgresql")
    initdb, pg_ctl = os.path.join(bins[-1], "initdb"), os.path.join(bins[-1], "pg_ctl")
    home = tempfile.mkdtemp(prefix="lstmc-pg-")
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        shutil.chown(home, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = os.path.join(home, "data")
    try:
        subprocess.run(prefix + [initdb, "-D", data, "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run(prefix + [pg_ctl, "-D", data, "-l", os.path.join(home, "log"), "-w",
                                 "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1",
                                 "start"], check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"could not start a private PostgreSQL server: {exc}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [pg_ctl, "-D", data, "-m", "immediate", "stop"],
                       capture_output=True, timeout=120, check=False)
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_on_postgresql(tmp_path, postgres_url):
    study = f"adding-{os.getpid()}-{int(time.time())}"
    _two_workers(tmp_path, postgres_url, study)


def test_shipped_specs_are_found_by_name():
    from lstmc.lab.experiment import load_variants, specs_dir

    variants = load_variants(["lstm", "greff/cifg", "mine=peephole_lstm.lstm"], None)
    assert [v.name for v in variants] == ["lstm", "cifg", "mine"]
    assert variants[0].text == (specs_dir() / "lstm.lstm").read_text(encoding="utf-8")
    assert variants[1].text == (specs_dir() / "greff" / "cifg.lstm").read_text(encoding="utf-8")
    with pytest.raises(ExperimentError, match="cannot read the spec no_such_cell"):
        load_variants(["no_such_cell"], None)


def test_a_worker_killed_inside_its_claim_leaves_a_trial_that_goes_stale(tmp_path):
    """The claim's state write done, the worker dies before anything else: the trial it
    took must still turn stale (it has a heartbeat), or a resumed run waits for ever."""
    from lstmc.lab.study import claim, claims_locked, create_or_resume, load_study

    url = f"sqlite:///{tmp_path / 'lab.db'}"
    experiment = define({"task": "adding", "variants": [LSTM], "trials": 2, "heartbeat": 1})
    create_or_resume(url, "adding", experiment)
    study = load_study(url, "adding", experiment)
    storage = study._storage
    real = storage.set_trial_state_values

    class Killed(BaseException):
        pass

    def dies_after_writing(*args, **kwargs):
        real(*args, **kwargs)
        raise Killed

    storage.set_trial_state_values = dies_after_writing
    with pytest.raises(Killed), claims_locked(url):
        claim(study)
    storage.set_trial_state_values = real
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    assert len(running) == 1
    time.sleep(3 * experiment.heartbeat + 1.5)  # the grace period: three missed beats
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) == []


def _claim_all(url: str, name: str, out: str) -> None:
    """A worker process's loop of claims, without running anything: the ids it took."""
    from lstmc.lab.study import claim, claims_locked, load_study

    experiment = define({"task": "adding", "variants": [LSTM], "trials": 1})
    study = load_study(url, name, experiment)
    taken = []
    while True:
        with claims_locked(url):
            trial_id = claim(study)
        if trial_id is None:
            break
        taken.append(trial_id)
    Path(out).write_text(" ".join(map(str, taken)))


def test_workers_racing_on_an_sqlite_study_never_take_one_trial_twice(tmp_path):
    """SQLite ignores the SELECT ... FOR UPDATE that makes Optuna's WAITING -> RUNNING
    update atomic (optuna issues 4002, 4621): without a lock of the lab's own, two
    processes claiming at once both took trial 0 (seen in test_two_workers_share_the_budget
    as an UpdateFinishedTrialError)."""
    import multiprocessing

    from lstmc.lab.study import create_or_resume

    url = f"sqlite:///{tmp_path / 'lab.db'}"
    trials = 48
    create_or_resume(url, "race", define({"task": "adding", "variants": [LSTM],
                                          "trials": trials}))
    context = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"taken{i}.txt" for i in range(4)]
    workers = [context.Process(target=_claim_all, args=(url, "race", str(out)))
               for out in outs]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    taken = [int(t) for out in outs for t in out.read_text().split()]
    assert len(taken) == trials and len(set(taken)) == trials
