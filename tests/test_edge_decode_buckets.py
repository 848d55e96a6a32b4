"""Decode length buckets (``decode_N``, format 5): a step over N source and N cache positions
gives the full step's logits, a translation moves to the longer step as it outgrows one, and
the contract refuses a bundle whose buckets break it."""

from __future__ import annotations

import copy
import json

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert.interpreter")

from edge_runs import LENGTH, toy_translation_run  # noqa: E402

from keras_transformer_edge.bundle import bundle_from_run  # noqa: E402
from keras_transformer_edge.calibration import seq2seq_samples  # noqa: E402
from keras_transformer_edge.convert import decode_length_buckets  # noqa: E402
from keras_transformer_edge.runtime.bundle import MANIFEST_FILE, MODEL_FILE  # noqa: E402
from keras_transformer_edge.runtime.continuous_batch import ContinuousBatchSteps  # noqa: E402
from keras_transformer_edge.runtime.interpreter import LiteModel  # noqa: E402
from keras_transformer_edge.runtime.search import beam_search, greedy_rows  # noqa: E402
from keras_transformer_edge.runtime.signature_checks import (  # noqa: E402
    SignatureMismatch,
    check_signatures,
)
from keras_transformer_edge.runtime.signatures import of_signature  # noqa: E402
from keras_transformer_edge.runtime.steps import (  # noqa: E402
    BatchSteps,
    Seq2SeqSteps,
    teacher_forced_logits,
)
from keras_transformer_edge.runtime.translator import Translator  # noqa: E402

BUCKET = 8  # the toy model's only decode bucket (its lengths are 12)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("decode-buckets")
    keras.utils.set_random_seed(3)
    run = toy_translation_run(workdir)
    return bundle_from_run(run, workdir / "bundle", beam_size=3, batch_rows=4)


@pytest.fixture(scope="module")
def model(bundle):
    return LiteModel(bundle / MODEL_FILE, 1, record_timings=True)


def _padded(ids) -> np.ndarray:
    padded = np.zeros((1, LENGTH), np.int32)
    padded[0, : len(ids)] = ids
    return padded


def test_decode_buckets_are_exported_for_every_step(bundle):
    assert decode_length_buckets(64, 64) == (16, 32)
    assert decode_length_buckets(LENGTH, LENGTH) == (BUCKET,)
    assert decode_length_buckets(64, 24) == (16,)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 6
    for step, rows in (("decode", 1), ("decode_beam", 3), ("decode_batch", 4)):
        inputs = manifest["signatures"][f"{step}_{BUCKET}"]["inputs"]
        assert inputs["source_mask"]["shape"] == [rows, BUCKET]
        assert inputs["self_keys_0"]["shape"][0] == rows
        assert inputs["self_keys_0"]["shape"][2] == inputs["cross_keys_0"]["shape"][2] == BUCKET
        assert inputs["self_values_0"]["shape"][3] == BUCKET


@pytest.mark.parametrize("tokens", [1, 5, BUCKET, BUCKET + 1, LENGTH])
def test_a_bucketed_step_gives_the_full_steps_logits_at_every_position(model, tokens):
    """Positions 0..7 run decode_8 (for a source that fits), then the caches move to the full
    step; teacher-forced over all 12 positions, every logit is the full step's."""
    rng = np.random.default_rng(tokens)
    source = _padded(rng.integers(4, 300, tokens))
    target = rng.integers(4, 300, LENGTH).tolist()
    model.timings.clear()
    bucketed = teacher_forced_logits(Seq2SeqSteps(model, source), target)
    ran = set(model.timings)
    full = teacher_forced_logits(Seq2SeqSteps(model, source, bucketed=False), target)
    np.testing.assert_allclose(bucketed, full, atol=2e-5, rtol=1e-5)
    assert ("decode_8" in ran) == (tokens <= BUCKET)
    assert "decode" in ran  # positions 8 .. 11 outgrew the bucket


def test_beams_and_batches_move_between_buckets_as_one(bundle, model):
    rng = np.random.default_rng(0)
    sources = np.concatenate([_padded(rng.integers(4, 300, n)) for n in (3, 6, 2)])
    # Greedy rows of a batch, forced past the bucket (no end token): the same as unbucketed.
    runs = {}
    for bucketed in (True, False):
        steps = BatchSteps(model, sources, bucketed)
        runs[bucketed] = greedy_rows(steps.feed, len(sources), 1, -1, LENGTH)
    assert runs[True] == runs[False] and all(len(row) == LENGTH for row in runs[True])
    # Beam search reorders rows of whichever step holds them.
    beams = {}
    for bucketed in (True, False):
        steps = Seq2SeqSteps(model, sources[1:2], 3, bucketed)
        beams[bucketed] = beam_search(steps.feed, steps.reorder, 3, LENGTH, 1, -1, 0, 0.6)
    assert beams[True] == beams[False] and len(beams[True]) == LENGTH
    model.timings.clear()
    translator = Translator.from_bundle(bundle, num_threads=1)
    texts = ["red cat", "sun moon star", "open the file now please"]
    assert translator.translate_many(texts, beam_size=1) == [
        translator.translate(text, beam_size=1) for text in texts
    ]


def test_continuous_batching_rows_each_give_their_sentence_alone(model):
    """Row by row and step by step, a continuously batched row's logits are its sentence's
    decoded alone, while other rows end and take new sentences, and the batch's step moves
    from decode_batch_8 to the full step and back as its longest busy row needs."""
    rng = np.random.default_rng(5)
    plan = [(3, 12), (11, 4), (2, 9), (7, 12), (1, 3), (12, 5), (5, 10), (4, 2), (6, 7)]
    sources = [_padded(rng.integers(4, 300, n)) for n, _ in plan]
    targets = [rng.integers(4, 300, steps).tolist() for _, steps in plan]
    alone = [
        teacher_forced_logits(Seq2SeqSteps(model, source, bucketed=False), target)
        for source, target in zip(sources, targets, strict=True)
    ]
    steps = ContinuousBatchSteps(model)
    waiting = iter(range(len(plan)))
    holds, positions = [None] * steps.rows, np.zeros(steps.rows, np.int32)

    def admit(row):
        holds[row], positions[row] = next(waiting, None), 0
        steps.admit(row, None if holds[row] is None else sources[holds[row]])

    for row in range(steps.rows):
        admit(row)
    ran = []
    while any(held is not None for held in holds):
        tokens = [
            1 if held is None else targets[held][positions[row]] for row, held in enumerate(holds)
        ]
        logits = steps.feed(np.array(tokens, np.int32), positions)
        ran.append(steps.signature)
        for row, held in enumerate(holds):
            if held is None:
                continue
            np.testing.assert_allclose(logits[row], alone[held][positions[row]], atol=2e-5)
            positions[row] += 1
            if positions[row] == len(targets[held]):
                admit(row)
    moves = [name for i, name in enumerate(ran) if i == 0 or ran[i - 1] != name]
    assert moves[:3] == ["decode_batch", "decode_batch_8", "decode_batch"], moves
    assert len(ran) < sum(n for _, n in plan) / 2  # rows refilled, not stepped in lockstep


def test_continuous_batching_translates_as_one_at_a_time(bundle):
    translator = Translator.from_bundle(bundle, num_threads=1)
    words = "red cat sun moon star open the file now please blue sky".split()
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(11)] + [""]
    assert translator.translate_many(texts, beam_size=1) == [
        translator.translate(text, beam_size=1) for text in texts
    ]
    assert translator.translate_many(texts[:2], beam_size=1, max_length=3) == [
        translator.translate(text, beam_size=1, max_length=3) for text in texts[:2]
    ]
    model = LiteModel(bundle / MODEL_FILE, 1)
    model.signatures = {n: v for n, v in model.signatures.items() if "batch" not in n}
    with pytest.raises(ValueError, match="a position per row"):
        ContinuousBatchSteps(model)


def test_calibration_samples_fit_each_bucket(bundle):
    flatbuffer = (bundle / MODEL_FILE).read_bytes()
    rng = np.random.default_rng(1)
    rows = [
        {
            "encoder_token_ids": rng.integers(4, 300, n).astype(np.int32),
            "decoder_token_ids": rng.integers(4, 300, LENGTH).astype(np.int32),
        }
        for n in (3, 7, 11)
    ]
    samples = seq2seq_samples(flatbuffer, [rows], limit=3)
    for step in ("decode", "decode_beam", "decode_batch"):
        bucket = samples[f"{step}_{BUCKET}"]
        # Positions below the bucket, of the two sources that fit in it.
        assert len(bucket) == 2 * BUCKET
        for sample in bucket:
            assert int(sample["index"][0]) < BUCKET
            assert sample["source_mask"].shape[1] == BUCKET
            assert sample["self_keys_0"].shape[2] == sample["cross_values_0"].shape[3] == BUCKET


def test_the_contract_refuses_broken_decode_buckets(bundle):
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    sizes = {"source": LENGTH, "target": LENGTH, "vocabulary": manifest["vocabulary_size"]}

    def refused(change, version=6) -> str:
        signatures = copy.deepcopy(manifest["signatures"])
        change(signatures)
        with pytest.raises(SignatureMismatch) as error:
            check_signatures("seq2seq", signatures, sizes, version)
        return str(error.value)

    check_signatures("seq2seq", manifest["signatures"], sizes, 6)
    assert "need format version 5, not 4" in refused(lambda s: None, version=4)
    # Format 6 gave decode_batch a position per row; format 5's one position is still read.
    assert "'index': shape [4], expected [1] in format version 5" in refused(
        lambda s: None, version=5
    )
    shared = copy.deepcopy(manifest["signatures"])
    for name in ("decode_batch", f"decode_batch_{BUCKET}"):
        shared[name]["inputs"]["index"]["shape"] = [1]
    check_signatures("seq2seq", shared, sizes, 5)
    assert "'index': rows is 1 here but 4" in refused(
        lambda s: s.update(decode_batch=shared["decode_batch"])
    )
    assert "a length bucket of 'decode_beam', which the bundle lacks" in refused(
        lambda s: s.pop("decode_beam")
    )

    def more_rows(signatures):
        for tensor in signatures["decode_batch_8"]["inputs"].values():
            tensor["shape"][0] = 5

    assert "rows is 5 here but 4 elsewhere" in refused(more_rows)

    def longer(signatures):
        signatures["decode_12"] = signatures.pop("decode_8")

    assert "a bucket must be shorter than source (12)" in refused(longer)

    def source_not_cut(signatures):
        signatures["decode_8"]["inputs"]["source_mask"]["shape"] = [1, LENGTH]

    assert "signature 'decode_8' input 'source_mask': shape [1, 12]" in refused(source_not_cut)


def test_the_reported_step_time_counts_every_one_row_decode_step(bundle):
    from keras_transformer_cli import device_modes

    assert of_signature("decode_16", "decode") and of_signature("decode", "decode")
    assert not of_signature("decode_beam_16", "decode") and not of_signature("decode_x", "decode")
    timings = {"decode_8": [1.0, 2.0], "decode": [3.0], "decode_beam_8": [9.0], "encode": [7.0]}
    assert sorted(device_modes._decode_steps(timings)) == [1.0, 2.0, 3.0]
    # Short sentences may never leave decode_8: the main job's table still has a step time.
    result = device_modes.device_greedy(bundle, ["red cat", "sun", "moon"])
    assert 0 < result.decode_p50_ms < 1e3
