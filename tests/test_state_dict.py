"""Module.state_dict / load_state_dict: round trip, and clear errors naming the bad key."""
import numpy as np
import pytest

from minidist.model import GPT, GPTConfig
from minidist.nn import Linear, Module

pytestmark = pytest.mark.engine

CFG = GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8)
IDX = np.arange(16).reshape(2, 8) % 11


def test_round_trip_gives_the_same_model():
    a, b = GPT(CFG, seed=1), GPT(CFG, seed=2)
    assert not np.allclose(a(IDX)[0].data, b(IDX)[0].data)
    assert b.load_state_dict(a.state_dict()) == ([], [])
    assert np.array_equal(a(IDX)[0].data, b(IDX)[0].data)
    sd = b.state_dict()
    assert list(sd) == [n for n, _ in a.named_parameters()]        # nanoGPT names, model order
    for name, p in b.named_parameters():
        assert np.array_equal(sd[name], a.state_dict()[name])
        assert sd[name] is not p.data                                # copies, not the live arrays
    sd["transformer.wte.weight"][...] = 0
    assert b.transformer.wte.weight.data.any()


def test_loading_copies_in_place_and_casts():
    model = GPT(CFG, seed=1)
    wte = model.transformer.wte.weight.data                        # the optimizer holds this array
    state = {n: v.astype(np.float64) + 1.0 for n, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert model.transformer.wte.weight.data is wte and wte.dtype == np.float32
    np.testing.assert_allclose(wte, state["transformer.wte.weight"], rtol=1e-7)


def test_missing_key_is_named():
    model = GPT(CFG)
    state = model.state_dict()
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(KeyError, match=r"missing key\(s\) \['transformer\.h\.1\.mlp\.c_fc\.bias'\]"):
        model.load_state_dict(state)


def test_unexpected_key_is_named_with_the_likely_rename():
    model = GPT(CFG)
    state = model.state_dict()
    state["transformer.h.0.attn.c_atn.weight"] = state.pop("transformer.h.0.attn.c_attn.weight")
    with pytest.raises(KeyError) as err:
        model.load_state_dict(state)
    msg = str(err.value)
    assert "unexpected key(s) ['transformer.h.0.attn.c_atn.weight']" in msg
    assert "'transformer.h.0.attn.c_atn.weight' → 'transformer.h.0.attn.c_attn.weight'?" in msg
    assert "strict=False" in msg


def test_wrong_shape_is_named_and_nothing_is_loaded():
    model, other = GPT(CFG, seed=1), GPT(CFG, seed=2)
    before = model.state_dict()
    state = other.state_dict()
    state["transformer.wpe.weight"] = np.zeros((16, 8))                # a checkpoint with block_size 16
    with pytest.raises(ValueError, match=r"'transformer\.wpe\.weight' has shape \(8, 8\) in this model but "
                                         r"\(16, 8\) in the state dict"):
        model.load_state_dict(state)
    for name, value in model.state_dict().items():                  # checked before anything was copied
        assert np.array_equal(value, before[name]), name


def test_non_strict_loads_what_matches_and_reports_the_rest():
    model, other = GPT(CFG, seed=1), GPT(CFG, seed=2)
    state = {"transformer.wte.weight": other.transformer.wte.weight.data.copy(), "lm_head.weight": np.zeros(3)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == ["lm_head.weight"]
    assert "transformer.wte.weight" not in missing and len(missing) == len(model.state_dict()) - 1
    assert np.array_equal(model.transformer.wte.weight.data, other.transformer.wte.weight.data)


def test_nested_modules_and_a_linear_without_bias():
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.a = Linear(3, 4, rng=np.random.default_rng(0))
            self.b = Linear(4, 2, bias=False, rng=np.random.default_rng(1))
    net, copy = Net(), Net()
    assert list(net.state_dict()) == ["a.weight", "a.bias", "b.weight"]
    copy.b.weight.data[...] = 7
    net.load_state_dict(copy.state_dict())
    assert (net.b.weight.data == 7).all()
