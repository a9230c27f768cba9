"""The intensity contract: fitted once per dataset, input and target separately, outputs read in target units."""

import logging

import numpy as np
import pytest

from emdiffuse_jax.data import intensity
from emdiffuse_jax.data.normalize import NormParams


def _pair(seed, n=3, shape=(64, 64)):
    rng = np.random.default_rng(seed)
    targets = [rng.integers(10000, 30000, shape).astype(np.uint16) for _ in range(n)]
    inputs = [(0.5 * t + 2000 + rng.normal(0, 300, shape)).astype(np.uint16) for t in targets]
    return targets, inputs


def test_fit_pools_all_images_and_keeps_the_input_target_brightness_relation():
    targets, inputs = _pair(0)
    contract = intensity.fit(targets, inputs)
    lo, hi = np.percentile(np.concatenate([t.ravel() for t in targets]).astype(float), [0.1, 99.9])
    np.testing.assert_allclose([contract.target.lo, contract.target.hi], [lo, hi], rtol=1e-6)
    assert contract.input.hi < 0.6 * contract.target.hi and contract.target.mode == "percentile"
    # a target-unit value survives output_from_model(target_to_model(.)) in the target dtype
    back = contract.output_from_model(contract.target_to_model(targets[0]))
    assert back.dtype == np.uint16
    inside = (targets[0] >= contract.target.lo) & (targets[0] <= contract.target.hi)
    assert np.abs(back.astype(int) - targets[0])[inside].max() <= 1


def test_inputs_made_by_degradation_share_the_target_map_and_8_bit_data_uses_the_reference_map():
    targets, _ = _pair(1)
    contract = intensity.fit(targets)
    assert contract.input == contract.target
    eight = intensity.fit([np.zeros((4, 4), np.uint8)], [np.full((4, 4), 9, np.uint8)])
    assert (eight.input.mode, eight.input.lo, eight.input.hi) == ("uint8", 0.0, 255.0)


def test_the_contract_round_trips_through_json_and_refuses_unknown_versions():
    contract = intensity.fit(*_pair(2))
    assert intensity.Intensity.from_dict(contract.to_dict()) == contract
    with pytest.raises(ValueError, match="version 7 is not supported"):
        intensity.Intensity.from_dict({**contract.to_dict(), "version": 7})


def test_prediction_applies_the_stored_contract_not_the_image_statistics():
    targets, inputs = _pair(3)
    contract = intensity.fit(targets, inputs)
    dim = (inputs[0] * 0.8).astype(np.uint16)  # a dimmer image stays dimmer in model units
    mapping = intensity.prediction_mapping(dim, contract)
    assert mapping == contract and mapping.input_to_model(dim).mean() < contract.input_to_model(inputs[0]).mean()
    matched = intensity.prediction_mapping(dim, contract, "match")
    assert matched.target == contract.target
    np.testing.assert_allclose(matched.input_to_model(dim).mean(), contract.input_to_model(inputs[0]).mean(),
                               atol=0.05)
    legacy = intensity.prediction_mapping(dim, contract, "percentile")
    assert legacy.input == legacy.target and legacy.target.dtype == np.dtype(np.uint16).str


def test_prediction_refuses_another_integer_dtype_and_warns_for_out_of_range_inputs(caplog):
    contract = intensity.fit(*_pair(4))
    with pytest.raises(ValueError, match="trained on uint16 inputs but this image is uint8.*normalization=match"):
        intensity.prediction_mapping(np.zeros((8, 8), np.uint8), contract)
    with caplog.at_level(logging.WARNING):
        intensity.prediction_mapping(np.full((8, 8), 60000, np.uint16), contract, name="bright.tif")
    assert "bright.tif: 100 % of its pixels lie outside" in caplog.text


def test_checkpoints_without_a_contract_fall_back_to_per_image_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert intensity.from_meta({"task": "denoise"}, "runs/old") is None
    assert "runs/old stores no intensity contract" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert intensity.from_meta({"source": "torch"}) is None  # the reference's own map is the uint8 one
    assert caplog.text == ""
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    mapping = intensity.prediction_mapping(img, None)
    assert mapping.input == mapping.target == NormParams("uint8", 0.0, 255.0, np.dtype(np.uint8).str, False)
    with pytest.raises(ValueError, match="needs a checkpoint that stores an intensity contract"):
        intensity.prediction_mapping(img, None, "checkpoint")
