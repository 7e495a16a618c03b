"""Bad data-parallel / ZeRO configs are rejected up front, on every rank, naming the key."""
import pytest

from minidist import distributed as dist
from minidist.training.config import ConfigError, load_config
from minidist.training.trainer import Trainer

pytestmark = pytest.mark.zero

BAD = [
    ({"zero_optimization": {"stage": 4}}, "zero_optimization.stage"),
    ({"zero_optimization": {"reduce_bucket_size": 0}}, "zero_optimization.reduce_bucket_size"),
    ({"zero_optimization": {"allgather_bucket_size": -5}}, "zero_optimization.allgather_bucket_size"),
    ({"zero_optimization": {"stage3_prefetch_bucket_size": -1}}, "zero_optimization.stage3_prefetch_bucket_size"),
    ({"zero_optimization": {"stage3_max_live_parameters": 0}}, "zero_optimization.stage3_max_live_parameters"),
    ({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}, "zero_optimization.offload_optimizer.device"),
    ({"zero_optimization": {"offload_optimizer": {"device": "nvme"}}}, "zero_optimization.offload_optimizer.device"),
    ({"zero_optimization": {"stage": 1}, "optimizer": {"type": "LAMB"}}, "optimizer.type"),
    ({"zero_optimization": {"stage": 2}, "parallel": {"data_parallel": "parameter_server"}},
     "parallel.data_parallel"),
    ({"zero_optimization": {"overlap_comm": "yes"}}, "zero_optimization.overlap_comm"),
    ({"zero_optimization": {"stage3_prefetch": 5}}, "zero_optimization.stage3_prefetch"),
    ({"dtype": "float16"}, "dtype"),
]


@pytest.mark.parametrize("config,key", BAD)
def test_bad_config_names_key(config, key):
    with pytest.raises(ConfigError) as e:
        load_config(config, world_size=2)
    assert e.value.key == key and key in str(e.value)


def test_every_rank_fails_the_same_way_without_hanging():
    def main(comm):
        try:
            Trainer({"zero_optimization": {"stage": 4}}, comm)
        except ConfigError as e:
            return e.key
        return None
    assert dist.spawn(main, 3, timeout=5) == ["zero_optimization.stage"] * 3


def test_valid_zero_configs_accepted():
    for stage in range(4):
        cfg = load_config({"zero_optimization": {"stage": stage, "stage3_prefetch_bucket_size": 0}}, world_size=5)
        assert cfg["zero_optimization"]["stage"] == stage
    assert load_config({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}, 2)
