"""Several Tritons and several nodes in the config (triton.urls, metrics.node) and on /metrics."""

from __future__ import annotations

import math
import re
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lasan.errors import ConfigError
from lasan.integration.config import TritonConfig, config_from_dict
from lasan.integration.metrics import Metrics
from lasan.integration.queue import DurableQueue, IdempotencyKey


def test_triton_url_is_a_one_element_urls_list():
    one = config_from_dict({"triton": {"url": "t1:8001"}}).triton
    assert one.urls == ("t1:8001",) and one.url == "t1:8001"
    many = config_from_dict({"triton": {"urls": ["t1:8001", "t2:8001"], "balance": "in_order", "reprobe_s": 2}}).triton
    assert many.urls == ("t1:8001", "t2:8001") and many.url == "t1:8001"
    assert many.balance == "in_order" and many.reprobe_s == 2.0
    assert config_from_dict({}).triton.urls == (TritonConfig().url,)
    assert TritonConfig(urls=("a:1", "b:2")).url == "a:1"  # built in code: url follows urls


@pytest.mark.parametrize(
    ("triton", "says"),
    [
        ({"url": "t1:8001", "urls": ["t2:8001"]}, "triton.url, triton.urls"),
        ({"urls": []}, "triton.urls: give at least one"),
        ({"urls": ["t1:8001", "t1:8001"]}, "triton.urls: give each"),
        ({"urls": ["grpc://t1:8001"]}, "triton.urls: give host:port"),
        ({"urls": "t1:8001"}, "triton.urls: must be a list"),
        ({"balance": "random"}, "triton.balance"),
        ({"reprobe_s": 0}, "triton.reprobe_s"),
    ],
)
def test_bad_triton_lists_name_the_key(triton, says):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"triton": triton})
    assert says in str(info.value)


def test_node_defaults_to_the_hostname_and_is_checked():
    assert config_from_dict({}).metrics.node == socket.gethostname()
    assert config_from_dict({"metrics": {"node": "ward7-a"}}).metrics.node == "ward7-a"
    with pytest.raises(ConfigError, match="metrics.node"):
        config_from_dict({"metrics": {"node": "two words"}})


def _samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_node_counters_and_the_oldest_lease_age_of_a_real_queue(tmp_path):
    metrics = Metrics("ward7-a")
    queue = DurableQueue(tmp_path / "q.sqlite")
    metrics.watch_queue(queue)
    node = (("node", "ward7-a"),)
    assert _samples(metrics)[("lasan_node_info", node)] == 1
    assert _samples(metrics)[("lasan_queue_oldest_lease_age_seconds", ())] == 0  # nothing leased
    queue.enqueue(IdempotencyKey("CART", "WARD7", "M1"), b"MSH|...", source="hl7", kind="hl7")
    (item,) = queue.lease("ward7-a:1", limit=4, lease_s=60, now=time.time() - 3.0)  # leased 3 s ago
    assert item.leased_by == "ward7-a:1"
    assert 2.5 < _samples(metrics)[("lasan_queue_oldest_lease_age_seconds", ())] < 60
    metrics.node_scored.inc()
    metrics.node_sent.inc(2)
    s = _samples(metrics)
    assert s[("lasan_node_scored_total", node)] == 1 and s[("lasan_node_sent_total", node)] == 2
    queue.close()
    # A queue that cannot be read makes the gauge NaN; the scrape itself still answers.
    assert math.isnan(_samples(metrics)[("lasan_queue_oldest_lease_age_seconds", ())])
    assert re.search(rb"lasan_node_info\{node=\"ward7-a\"\} 1\.0", metrics.render())
