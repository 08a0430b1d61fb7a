"""A chaos run on a cluster it is given (ChaosConfig.cluster_dir): what it refuses before it
starts anything. The run on such a cluster, handing it back running, is tests/chaos'."""

from __future__ import annotations

import pytest
from rich.console import Console

from choreo.devtools.chaos import ChaosConfig, run_chaos
from choreo.devtools.cluster import Cluster, ClusterError


def _stopped_cluster(tmp_path, tls: bool = False) -> Cluster:
    """A cluster's folder as `choreo cluster down` leaves it: its state, no node running."""
    c = Cluster(tmp_path / "cluster", base_port=20000, tls=tls)
    c.base_dir.mkdir(parents=True)
    c._save()
    return c


def _run(**cfg):
    return run_chaos(ChaosConfig(**cfg), console=Console(quiet=True))


def test_a_cluster_folder_without_a_cluster_run_is_refused(tmp_path):
    folder = _stopped_cluster(tmp_path).base_dir
    with pytest.raises(ValueError, match="cluster_dir is for a cluster run"):
        _run(cluster_dir=folder)


def test_a_folder_without_a_cluster_is_refused(tmp_path):
    with pytest.raises(ClusterError, match="no cluster in"):
        _run(cluster=True, cluster_dir=tmp_path)


def test_a_cluster_whose_nodes_do_not_run_is_refused_with_the_command_that_starts_them(tmp_path):
    c = _stopped_cluster(tmp_path)
    with pytest.raises(ClusterError) as refused:
        _run(cluster=True, cluster_dir=c.base_dir)
    assert all(c.name(i) in str(refused.value) for i in c.nodes)
    assert f"choreo cluster up --dir {c.base_dir}" in str(refused.value)


@pytest.mark.parametrize("cluster_tls", [False, True])
def test_the_run_s_tls_must_be_the_cluster_s(tmp_path, cluster_tls):
    c = _stopped_cluster(tmp_path, tls=cluster_tls)
    with pytest.raises(ValueError, match=f"runs {'with' if cluster_tls else 'without'} TLS"):
        _run(cluster=True, cluster_dir=c.base_dir, tls=not cluster_tls)
