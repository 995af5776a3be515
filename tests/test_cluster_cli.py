"""``[simulation] scheduler`` and ``sbiflow simulate CONFIG.toml --scheduler ADDR``.

The cluster test starts a real ``dask scheduler`` and two ``dask worker`` processes on
127.0.0.1 (see ``_fault_helpers.LoopbackCluster``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _fault_helpers import LoopbackCluster

import sbiflow
import sbiflow.cli
from sbiflow.cli import main
from sbiflow.config import ConfigError, load_config

RUN = """
[simulator]
name = "two_moons"

[simulation]
num_simulations = 2000
chunk_size = 250
seed = 4
store = "sims.zarr"
{extra}

[observation]
index = 1

[output]
directory = "{out}"
progress = false
"""


def config(tmp_path: Path, extra: str = "", name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(RUN.format(extra=extra, out=tmp_path / name.replace(".toml", "")))
    return path


def test_scheduler_key_is_read_and_checked(tmp_path: Path) -> None:
    loaded = load_config(config(tmp_path, 'scheduler = "tcp://10.1.2.3:8786"'))
    assert loaded.simulation.scheduler == "tcp://10.1.2.3:8786"
    assert load_config(config(tmp_path)).simulation.scheduler == ""
    file = load_config(config(tmp_path, 'scheduler = "cluster/scheduler.json"'))
    assert file.simulation.scheduler == "cluster/scheduler.json"
    for value, says in [
        ("localhost:8786", "give the scheduler's address 'tcp://host:port'"),
        ("tcp://10.1.2.3", "is not a scheduler address: use 'tcp://host:port'"),
        ("http://10.1.2.3:8787", "is not a scheduler address"),
    ]:
        with pytest.raises(ConfigError, match=says):
            load_config(config(tmp_path, f'scheduler = "{value}"'))
    with pytest.raises(ConfigError, match="workers = 2 and simulation.scheduler"):
        load_config(config(tmp_path, 'workers = 2\nscheduler = "tcp://10.1.2.3:8786"'))
    with pytest.raises(ConfigError, match="must be of type str"):
        load_config(config(tmp_path, "scheduler = 8786"))
    compare = Path(__file__).parent / "configs" / "compare_tiny.toml"
    text = compare.read_text().replace("seed = 0", 'seed = 0\nscheduler = "tcp://1.2.3.4:8786"')
    (tmp_path / "compare.toml").write_text(text)
    with pytest.raises(ConfigError, match="simulation.scheduler does not apply to a model comp"):
        load_config(tmp_path / "compare.toml")


def test_unreachable_scheduler_says_so(tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(sbiflow.cli, "CONNECT_TIMEOUT", 2)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["simulate", str(config(tmp_path)), "--scheduler", f"tcp://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"Cannot reach the Dask scheduler at 'tcp://127.0.0.1:{port}' within 2 s" in err
    missing = config(tmp_path, 'scheduler = "nowhere/scheduler.json"', name="missing.toml")
    assert main(["simulate", str(missing)]) == 2
    assert "no scheduler file at" in capsys.readouterr().err
    both = config(tmp_path, "workers = 2", name="both.toml")
    assert main(["simulate", str(both), "--scheduler", f"tcp://127.0.0.1:{port}"]) == 2
    assert "run on the cluster's workers" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCluster]:
    """One scheduler and two workers for the module's tests (each counts its own chunks)."""
    pytest.importorskip("distributed")
    cluster = LoopbackCluster(tmp_path_factory.mktemp("cluster"), n_workers=2)
    try:
        yield cluster
    finally:
        cluster.close()


def chunks_run_on(address: str) -> int:
    """How many sbiflow chunk results the scheduler at ``address`` has seen computed."""
    from distributed import Client

    def count(dask_scheduler) -> int:  # noqa: ANN001
        prefix = dask_scheduler.task_prefixes.get("sbiflow-chunk")
        return 0 if prefix is None else prefix.state_counts["memory"]  # transitions to it

    with Client(address, timeout=30) as client:
        return client.run_on_scheduler(count)


def test_simulate_on_a_cluster(tmp_path: Path, cluster: LoopbackCluster, capsys) -> None:  # noqa: ANN001
    local = sbiflow.simulate(sbiflow_sim(), 2000, seed=4, chunk_size=250, progress=False)
    before = chunks_run_on(cluster.address)
    # --scheduler ADDR on the command line
    path = config(tmp_path, name="flag.toml")
    assert main(["simulate", str(path), "--scheduler", cluster.address]) == 0
    assert f"2000 simulations in {tmp_path / 'flag' / 'sims.zarr'} on {cluster.address}" in (
        capsys.readouterr().out
    )
    theta, x = sbiflow.load_store(tmp_path / "flag" / "sims.zarr")
    assert torch.equal(theta, local[0]) and torch.equal(x, local[1])
    assert chunks_run_on(cluster.address) == before + 8
    # [simulation] scheduler = the scheduler file, relative to the configuration
    relative = os.path.relpath(cluster.scheduler_file, tmp_path)
    path = config(tmp_path, f'scheduler = "{relative}"', name="key.toml")
    assert main(["simulate", str(path)]) == 0
    theta, x = sbiflow.load_store(tmp_path / "key" / "sims.zarr")
    assert torch.equal(theta, local[0]) and torch.equal(x, local[1])
    assert chunks_run_on(cluster.address) == before + 16


def sbiflow_sim():  # noqa: ANN201
    import simulators

    return simulators.get("two_moons")


def test_run_simulates_on_the_scheduler_and_streams_the_store(
    tmp_path: Path,
    cluster: LoopbackCluster,
    capsys,  # noqa: ANN001
) -> None:
    extra = f'scheduler = "{cluster.address}"\n\n[training]\nstream = true\nmax_epochs = 3'
    path = config(tmp_path, extra, name="stream.toml")
    before = chunks_run_on(cluster.address)
    assert main(["run", str(path)]) == 0
    assert chunks_run_on(cluster.address) == before + 8  # every chunk ran on the cluster
    summary = (tmp_path / "stream" / "summary.txt").read_text()
    assert "2000 valid of 2000" in summary and "3 epochs" in summary
    theta, _ = sbiflow.load_store(tmp_path / "stream" / "sims.zarr")
    assert theta.shape == (2000, 2)


def test_stream_needs_a_store(tmp_path: Path) -> None:
    path = tmp_path / "nostore.toml"
    path.write_text(
        RUN.format(extra="", out=tmp_path / "nostore").replace('store = "sims.zarr"', "")
        + "\n[training]\nstream = true\n"
    )
    with pytest.raises(ConfigError, match="training.stream = true streams the simulation store"):
        load_config(path)
