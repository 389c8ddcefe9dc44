"""`tumor-infer --ray`: the same rows as a local run, on a local Ray instance with the CI machine's 2 CPUs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.helpers.comparisons import assert_same_rows
from tests.helpers.datasets import SAMPLES
from tests.helpers.dicom import write_dicom
from tests.helpers.processes import block_imports, one_line_error, run_infer
from tumor_runtime.core.errors import UsageError
from tumor_runtime.inference import ray_batch
from tumor_runtime.inference.classifier import Classifier
from tumor_runtime.inference.ray_batch import check_reachable


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The sample slices, a truncated JPEG, a text file named .png and a 2-frame DICOM: rows of every kind."""
    root = tmp_path_factory.mktemp("ray-inputs")
    for path in sorted(SAMPLES.rglob("*.jpg")):
        shutil.copy(path, root / f"{path.parent.name}-{path.name}")
    (root / "broken.jpg").write_bytes((SAMPLES / "glioma").glob("*.jpg").__next__().read_bytes()[:300])
    (root / "notes.png").write_text("not an image")
    slice_ = np.asarray(Image.open(sorted(SAMPLES.rglob("*.jpg"))[0]).convert("L"), np.uint16) * 16
    pytest.importorskip("pydicom")
    write_dicom(root / "series.dcm", np.stack([slice_, slice_[:, ::-1]]), bits_stored=12)
    return root


def test_ray_run_writes_the_same_file_and_exit_code_as_a_local_run(folder, tmp_path):
    pytest.importorskip("ray")
    local = run_infer([folder, "--format", "csv", "-q", "-o", tmp_path / "local.csv"])
    on_ray = run_infer([folder, "--ray", "auto", "--format", "csv", "-q", "-o", tmp_path / "ray.csv"])
    assert on_ray.returncode == local.returncode == 1, on_ray.stderr  # two unreadable inputs: exit 1 both ways
    local_text, ray_text = (tmp_path / "local.csv").read_text(), (tmp_path / "ray.csv").read_text()
    assert_same_rows(ray_text, local_text)  # other actor batches: numbers equal within ACROSS_BATCHES
    rows = local_text.splitlines()[1:]
    assert len(rows) == len(list(folder.iterdir())) + 1  # the DICOM file gives one row per frame
    assert sum(",true," in r or ",false," in r for r in rows) == len(rows) - 2  # classified rows
    assert "Traceback" not in on_ray.stderr and "broken.jpg" in on_ray.stderr  # errors reported as locally
    # Only the kit's own lines: Ray's notices (token authentication, restartable actors, progress bars) are not
    lines = on_ray.stderr.splitlines()
    assert lines and all(line.startswith(("error: ", "Wrote ")) for line in lines), on_ray.stderr


def test_ray_records_with_two_actors_keep_input_order(folder):
    """The Python API with two one-CPU actors (batches finish out of order): rows in input order, equal to
    Classifier.predict's."""
    pytest.importorskip("ray")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    files = files[::-1] + files  # more rows than one actor batch would hold in order by chance
    program = (
        "import json, sys\nfrom tumor_runtime.inference.ray_batch import ray_records\n"
        f"rows = list(ray_records({[str(f) for f in files]!r}, threads=1, actors=2))\n"
        "print(json.dumps(rows))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    expected = json.loads(json.dumps(Classifier.load(threads=1).predict(files)))
    assert_same_rows(json.loads(result.stdout.splitlines()[-1]), expected)


@pytest.mark.parametrize("extra", [["--heatmaps", "maps"], ["--evaluate"]])
def test_ray_refuses_local_only_options_before_starting(extra, tmp_path):
    target = SAMPLES if "--evaluate" in extra else SAMPLES / "glioma"
    result = run_infer([target, "--ray", "auto", *[str(tmp_path / e) if e == "maps" else e for e in extra]])
    one_line_error(result)
    assert "--ray classifies only" in result.stderr and not (tmp_path / "maps").exists()


def test_ray_without_the_extra_says_how_to_install_it():
    program = block_imports("ray") + (
        "import sys\nfrom tumor_runtime.cli.infer import main\n"
        f"sys.argv = ['tumor-infer', {str(SAMPLES / 'glioma')!r}, '--ray', 'auto']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    one_line_error(result)
    assert 'pip install -e ".[ray]" in a clone of the repository' in result.stderr


def test_unreachable_cluster_is_one_line_within_seconds():
    pytest.importorskip("ray")
    result = run_infer([SAMPLES / "glioma", "--ray", "127.0.0.1:1"])
    one_line_error(result)
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in result.stderr


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters=":"), max_size=40))
def test_an_address_without_a_port_is_refused_with_its_form(text):
    with pytest.raises(UsageError, match="give auto, HOST:PORT or ray://HOST:PORT"):
        check_reachable(text)


def test_an_actor_larger_than_the_cluster_is_refused_not_waited_for():
    pytest.importorskip("ray")
    result = run_infer([SAMPLES / "glioma", "--ray", "auto", "--threads", "64"])
    one_line_error(result)
    assert "asks for 64 CPUs" in result.stderr


# The driver's logic against a stand-in `ray` module (in-process, no cluster): connection, sizing, options.


class FakeRay(types.ModuleType):
    """Records ray.init calls and what ray.data was asked for; `fail_auto` makes ray.init(address="auto") fail."""

    def __init__(self, cpus=4, fail_auto=False, fail_with=None):
        super().__init__("ray")
        self.cpus, self.fail_auto, self.fail_with, self.inits, self.initialized = cpus, fail_auto, fail_with, [], False
        self.data = types.ModuleType("ray.data")
        self.data.context = types.SimpleNamespace(
            execution_options=types.SimpleNamespace(preserve_order=False), enable_progress_bars=True
        )
        self.data.DataContext = types.SimpleNamespace(get_current=lambda: self.data.context)
        self.data.ActorPoolStrategy = lambda size: ("pool", size)
        self.data.from_items = self.from_items
        self.mapped = None

    def is_initialized(self):
        return self.initialized

    def init(self, **kwargs):
        self.inits.append(kwargs)
        if self.fail_with is not None:
            raise self.fail_with
        if kwargs.get("address") == "auto" and self.fail_auto:
            raise ConnectionError("no cluster")
        self.initialized = True

    def cluster_resources(self):
        return {"CPU": float(self.cpus)}

    def from_items(self, items):
        fake = self

        class Dataset:
            def map_batches(self, fn, **kwargs):
                fake.mapped = (fn, kwargs)
                actor = fn(**kwargs["fn_constructor_kwargs"])
                rows = actor({key: [item[key] for item in items] for key in ("path", "shown")})["row"]

                class Rows:
                    def iter_rows(self):
                        return ({"row": r} for r in rows)

                return Rows()

        return Dataset()


@pytest.fixture
def fake_ray(monkeypatch):
    def install(**kwargs):
        ray = FakeRay(**kwargs)
        monkeypatch.setitem(sys.modules, "ray", ray)
        monkeypatch.setitem(sys.modules, "ray.data", ray.data)
        return ray

    return install


def test_without_the_extra_the_message_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError) as caught:
        ray_batch.require_ray()
    assert str(caught.value) == '--ray needs the [ray] extra: pip install -e ".[ray]" in a clone of the repository'


def test_auto_starts_a_private_ray_with_the_cores_given_and_connects_once(fake_ray, monkeypatch):
    import logging

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = fake_ray()
    ray_batch.connect("auto", 3)
    assert ray.inits == [
        {
            "address": "local",
            "num_cpus": 3,
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
        }
    ]
    ray_batch.connect("auto", 3)  # already connected: nothing more
    assert len(ray.inits) == 1


def test_an_address_is_checked_then_joined_and_failures_are_one_line(fake_ray, monkeypatch):
    checked = []
    monkeypatch.setattr(ray_batch, "check_reachable", checked.append)
    ray = fake_ray()
    ray_batch.connect("10.0.0.1:6379", 2)
    assert checked == ["10.0.0.1:6379"] and ray.inits[0]["address"] == "10.0.0.1:6379"
    fake_ray(fail_with=RuntimeError("version mismatch\nmore detail"))
    with pytest.raises(UsageError) as caught:
        ray_batch.connect("10.0.0.1:6379", 2)
    assert str(caught.value) == "cannot reach the Ray cluster at 10.0.0.1:6379: version mismatch"


def test_actors_fill_the_cluster_and_one_that_cannot_fit_is_refused(fake_ray):
    fake_ray(cpus=8)
    assert ray_batch.actor_count(2) == 4 and ray_batch.actor_count(3) == 2 and ray_batch.actor_count(8) == 1
    with pytest.raises(UsageError) as caught:
        ray_batch.actor_count(9)
    assert str(caught.value) == "each Ray actor asks for 9 CPUs (--threads) but the cluster has 8"


def test_ray_records_asks_for_ordered_batches_on_an_actor_pool(fake_ray, folder):
    ray = fake_ray(cpus=4)
    paths = sorted(folder.iterdir())[:5]
    rows = list(ray_batch.ray_records(paths, model=None, threads=2, batch_size=8, tumor_threshold=0.4))
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert ray.data.context.execution_options.preserve_order is True and ray.data.context.enable_progress_bars is False
    fn, kwargs = ray.mapped
    assert fn is ray_batch.ClassifyPaths and kwargs["compute"] == ("pool", 2) and kwargs["num_cpus"] == 2
    assert kwargs["batch_size"] == ray_batch.PATHS_PER_BATCH == 64 and kwargs["udf_modifying_row_count"] is True
    assert kwargs["fn_constructor_kwargs"] == {
        "model": None,
        "threads": 2,
        "batch_size": 8,
        "tumor_threshold": 0.4,
        "backend": "onnxruntime",
    }
    local = Classifier.load(threads=2, tumor_threshold=0.4).predict([str(p) for p in paths])
    assert [r["label"] for r in rows] == [r["label"] for r in local]
    assert [r["tumor"] for r in rows] == [r["tumor"] for r in local]


def test_ray_records_resolves_the_model_path_and_takes_an_explicit_actor_count(fake_ray, folder, monkeypatch):
    from tumor_runtime.model.manifest import default_model_path

    ray = fake_ray(cpus=4)
    monkeypatch.chdir(default_model_path().parent)
    list(
        ray_batch.ray_records(
            sorted(folder.iterdir())[:1], model=default_model_path().name, actors=3, backend="onnxruntime"
        )
    )
    _, kwargs = ray.mapped
    assert kwargs["compute"] == ("pool", 3)
    assert kwargs["fn_constructor_kwargs"]["model"] == str(default_model_path().resolve())


def test_check_reachable_connects_to_a_listening_port_and_names_a_refused_one():
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")
        check_reachable(f"ray://127.0.0.1:{port}")
    with pytest.raises(UsageError, match=rf"^cannot reach the Ray cluster at 127\.0\.0\.1:{port}: "):
        check_reachable(f"127.0.0.1:{port}", timeout=2)


def test_each_actor_holds_a_classifier_built_from_the_driver_options(tmp_path):
    """What the driver passes (model, threads, batch size, threshold, backend) is what each actor's Classifier uses."""
    from tumor_runtime.model.manifest import default_model_path

    model = tmp_path / "copy.onnx"
    shutil.copy(default_model_path(), model)  # a copy outside the artifacts folder: no manifest vouches for it
    actor = ray_batch.ClassifyPaths(str(model), threads=1, batch_size=3, tumor_threshold=0.25, backend="onnxruntime")
    classifier = actor.classifier
    assert (classifier.path, classifier.threads, classifier.batch_size) == (model, 1, 3)
    assert classifier.tumor_threshold == 0.25 and classifier.backend == "onnxruntime"
    paths = sorted(SAMPLES.rglob("*.jpg"))[:2]
    names = np.array([str(p) for p in paths])
    rows = [json.loads(r) for r in actor({"path": names, "shown": names})["row"]]
    assert rows == json.loads(json.dumps(classifier.predict([str(p) for p in paths])))


def test_an_address_splits_at_its_last_colon():
    """An IPv6-style host keeps its colons: only the part after the last one is the port."""
    with pytest.raises(UsageError, match=r"^cannot reach the Ray cluster at ray://::1:1: "):
        check_reachable("ray://::1:1", timeout=2)


def test_an_unreachable_cluster_gives_the_system_reason(monkeypatch):
    import socket

    def refuse(address, timeout=None):
        assert timeout == 0.5  # the caller's limit reaches the connection (Ray's own would retry for minutes)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(UsageError) as caught:
        check_reachable("head:6379", timeout=0.5)
    assert str(caught.value) == "cannot reach the Ray cluster at head:6379: Connection refused"


def test_connecting_quietens_ray_data_and_passes_the_options_to_a_named_cluster(fake_ray, monkeypatch):
    import logging

    monkeypatch.setattr(ray_batch, "check_reachable", lambda address: None)
    logging.getLogger("ray.data").setLevel(logging.NOTSET)
    ray = fake_ray()
    ray_batch.connect("10.0.0.1:6379", 2)
    assert ray.inits == [{"address": "10.0.0.1:6379", "logging_level": logging.ERROR, "log_to_driver": False}]
    assert logging.getLogger("ray.data").level == logging.CRITICAL  # its failures come back as RayRunError


def test_a_cluster_without_cpus_fits_no_actor(fake_ray):
    ray = fake_ray(cpus=0)
    ray.cluster_resources = lambda: {}  # a cluster that reports no CPU resource at all
    with pytest.raises(UsageError, match="asks for 1 CPUs .* but the cluster has 0$"):
        ray_batch.actor_count(1)


def test_ray_records_defaults_and_a_local_ray_sized_to_this_machine(fake_ray, folder, monkeypatch):
    from tumor_runtime.core import system

    monkeypatch.setattr(system, "available_cores", lambda: 5)
    ray = fake_ray(cpus=4, fail_auto=True)
    list(ray_batch.ray_records(sorted(folder.iterdir())[:1]))
    assert ray.inits[-1]["num_cpus"] == 5
    _, kwargs = ray.mapped
    assert kwargs["fn_constructor_kwargs"] == {
        "model": None,
        "threads": 2,
        "batch_size": 32,
        "tumor_threshold": None,
        "backend": "onnxruntime",
    }


class RecordingRay:
    """Stands in for the ray module: records how connect() initialises it."""

    def __init__(self):
        self.calls = []

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.calls.append(kwargs)


@pytest.mark.parametrize(
    "environment, expected",
    [
        ({}, {"address": "local", "num_cpus": 2}),  # a private instance: never whatever Ray runs on this machine
        ({"RAY_ADDRESS": "10.0.0.5:6379"}, {"address": "10.0.0.5:6379"}),
    ],
)
def test_auto_joins_only_the_cluster_it_is_told_of(monkeypatch, environment, expected):
    """`--ray auto` joined a Ray instance another program had started; when it stopped, so did the run
    (exit 1, no line, no file)."""
    fake = RecordingRay()
    monkeypatch.setattr(ray_batch, "require_ray", lambda: fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    ray_batch.connect("auto", 2)
    assert len(fake.calls) == 1 and {k: fake.calls[0][k] for k in expected} == expected


def test_an_actor_that_cannot_start_is_one_line_naming_the_cause(folder, tmp_path):
    """A model missing on a node: Ray's traceback and exit 70 before; now the kit's own message. Through the
    isolated driver tumor-infer uses: in-process, Ray's driver may also print "A worker died ..." to stdout."""
    pytest.importorskip("ray")
    program = (
        "import sys\nfrom tumor_runtime.inference.ray_driver import isolated_ray_records as ray_records\n"
        "from tumor_runtime.core.errors import RunStopped\n"
        f"rows = ray_records({[str(p) for p in sorted(folder.glob('*.jpg'))][:3]!r}, "
        f"model={str(tmp_path / 'gone.onnx')!r}, threads=1)\n"
        "try:\n    list(rows)\nexcept RunStopped as exc:\n    print(exc)\n    sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr
    assert (
        result.stdout == f"the Ray run failed: model {tmp_path / 'gone.onnx'} does not exist; pass --model or "
        "export one with tumor-export\n"
    )
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr


def test_check_reachable_takes_a_bracketed_ipv6_address():
    """--ray [::1]:6379, as an IPv6 address is written with a port: reached where something listens there."""
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(socket.AF_INET6) as listener:
        try:
            listener.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        listener.listen()
        port = listener.getsockname()[1]
        check_reachable(f"[::1]:{port}")
        check_reachable(f"ray://[::1]:{port}")
