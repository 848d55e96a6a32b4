"""The bundle format and the TF-free device runtime: bundles written from pipeline runs of all
four tasks, verified before they run, and giving the Keras models' ids and text (fp32); bad
bundles and bad input as one-line errors; the command line and the benchmark."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert.interpreter")

from edge_runs import LENGTH, SMALL, VOCABULARY, fake_run, toy_translation_run, trim  # noqa: E402

from keras_transformer.models import (  # noqa: E402
    SequenceClassifier,
    TokenClassifier,
    TransformerLanguageModel,
)
from keras_transformer_edge.bundle import bundle_from_run, write_bundle  # noqa: E402
from keras_transformer_edge.convert import classifier_endpoints, convert  # noqa: E402
from keras_transformer_edge.runtime import cli, interpreter  # noqa: E402
from keras_transformer_edge.runtime.bundle import (  # noqa: E402
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    load_bundle,
    manifest_checksum,
    sha256_of,
)
from keras_transformer_edge.runtime.classifier import Classifier, Tagger  # noqa: E402
from keras_transformer_edge.runtime.errors import (  # noqa: E402
    BackendError,
    BundleError,
    InputError,
)
from keras_transformer_edge.runtime.generator import Generator  # noqa: E402
from keras_transformer_edge.runtime.interpreter import LiteModel  # noqa: E402
from keras_transformer_edge.runtime.model_metadata import bundle_facts  # noqa: E402
from keras_transformer_edge.runtime.signature_checks import check_signatures  # noqa: E402
from keras_transformer_edge.runtime.signatures import SIGNATURES, signature_table  # noqa: E402
from keras_transformer_edge.runtime.steps import encode_source  # noqa: E402
from keras_transformer_edge.runtime.translator import Translator  # noqa: E402
from keras_transformer_pipelines import task_recipes, translation_recipe  # noqa: E402
from keras_transformer_pipelines.config import recipe_from_dict  # noqa: E402
from keras_transformer_pipelines.decoding import sampler_from, translate_ids  # noqa: E402
from keras_transformer_pipelines.synthetic import (  # noqa: E402
    entity_sentences,
    topic_sentences,
    word_translation_pairs,
)
from keras_transformer_pipelines.tokenizers import load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("edge_runtime")


@pytest.fixture(scope="module")
def run_dir(workdir) -> Path:
    keras.utils.set_random_seed(0)
    return toy_translation_run(workdir)


@pytest.fixture(scope="module")
def seq2seq_bundle(run_dir, workdir) -> Path:
    return bundle_from_run(run_dir, workdir / "seq2seq", batch_rows=8)


@pytest.fixture(scope="module")
def translator(seq2seq_bundle) -> Translator:
    return Translator.from_bundle(seq2seq_bundle, num_threads=1)


@pytest.fixture(scope="module")
def keras_model(run_dir):
    return translation_recipe.load_trained(run_dir)[0]


@pytest.fixture(scope="module")
def single_sequence(run_dir, workdir) -> dict[str, tuple[Path, keras.Model, Path]]:
    """Language-model, classifier and tagger runs (untrained models) and their bundles."""
    keras.utils.set_random_seed(1)
    tokenizer_dir = run_dir / "tokenizer"
    models = {
        "language_model": TransformerLanguageModel(VOCABULARY, 16, **SMALL),
        "classification": SequenceClassifier(VOCABULARY, 12, 3, **SMALL),
        "tagging": TokenClassifier(VOCABULARY, 10, 5, **SMALL),
    }
    labels = {"classification": ["animal", "colour", "nature"], "tagging": "B-A I-A B-C I-C O"}
    runs = {}
    for task, model in models.items():
        run = fake_run(workdir / task, task, model, tokenizer_dir)
        if task in labels:
            names = labels[task] if task == "classification" else labels[task].split()
            (run / task_recipes.LABEL_FILES[task]).write_text("".join(f"{n}\n" for n in names))
        # These runs have no data for the parity gate (tested in test_edge_calibration.py).
        bundle = bundle_from_run(
            run, workdir / f"{task}-bundle", prefill_length=4, parity_examples=0
        )
        runs[task] = (run, keras.saving.load_model(run / "model.keras"), bundle)
    return runs


def _recipe(run: Path):
    return recipe_from_dict(json.loads((run / "recipe.json").read_text()))


TEXTS = [source for source, _ in word_translation_pairs(10, max_words=6, seed=7)] + [
    "red cat open",
    "sun",
    "moon " * 20,  # longer than the source: truncated
    "Ouvrir le fichier « rapport » ? 東京 🚀",  # byte fallback pieces
]


# --- Bundles: written, read, verified -------------------------------------------------------


def test_bundle_round_trip_and_manifest(seq2seq_bundle, run_dir):
    bundle = load_bundle(seq2seq_bundle)
    manifest = bundle.manifest
    assert sorted(p.name for p in seq2seq_bundle.iterdir()) == [
        MANIFEST_FILE,
        MODEL_FILE,
        TOKENIZER_FILE,
    ]
    assert manifest["kind"] == "seq2seq" and manifest["quantization"] == "fp32"
    assert manifest["special_tokens"] == {"pad": 0, "start": 1, "end": 2, "unk": 3}
    assert manifest["max_lengths"] == {"source": LENGTH, "target": LENGTH}
    assert manifest["vocabulary_size"] == VOCABULARY
    assert manifest["decoding"] == {"beam_size": 3, "length_penalty": 0.6, "max_length": None}
    assert set(manifest["signatures"]) == {
        "encode",
        "encode_8",
        *(
            f"{step}{bucket}"
            for step in ("decode", "decode_beam", "decode_batch")
            for bucket in ("", "_8")
        ),
    }
    decode = manifest["signatures"]["decode_beam"]
    assert decode["inputs"]["token"] == {"shape": [3, 1], "dtype": "int32"}
    assert decode["inputs"]["source_mask"] == {"shape": [3, LENGTH], "dtype": "bool"}
    assert decode["outputs"]["logits"] == {"shape": [3, 1, VOCABULARY], "dtype": "float32"}
    for name in ("keras_transformer", "tensorflow", "keras", "ai_edge_litert"):
        assert manifest["versions"][name], name
    for name in (MODEL_FILE, TOKENIZER_FILE):
        entry = manifest["files"][name]
        assert entry == {"sha256": sha256_of(seq2seq_bundle / name), "bytes": entry["bytes"]}
        assert entry["bytes"] == (seq2seq_bundle / name).stat().st_size
    assert (seq2seq_bundle / TOKENIZER_FILE).read_bytes() == (
        run_dir / "tokenizer" / TOKENIZER_FILE
    ).read_bytes()
    assert manifest["checksum"] == manifest_checksum(manifest)
    # No scratch folder is left beside the bundle.
    assert not [p for p in seq2seq_bundle.parent.iterdir() if p.name.startswith(".")]


def _copy(bundle: Path, destination: Path) -> Path:
    destination.mkdir()
    for file in bundle.iterdir():
        (destination / file.name).write_bytes(file.read_bytes())
    return destination


def _rewrite_manifest(bundle: Path, change) -> None:
    """Edit the manifest and re-seal it, as a careless tool would."""
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    change(manifest)
    for name, entry in manifest["files"].items():
        entry.update(sha256=sha256_of(bundle / name), bytes=(bundle / name).stat().st_size)
    manifest["checksum"] = manifest_checksum(manifest)
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))


def _bundle_error(path: Path) -> str:
    with pytest.raises(BundleError) as error:
        Translator.from_bundle(path)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_damaged_bundles_are_one_line_errors_before_anything_runs(
    seq2seq_bundle, tmp_path, monkeypatch
):
    made = []
    original = interpreter.LiteModel.__init__

    def spy(self, *args, **kwargs):
        made.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.LiteModel, "__init__", spy)

    flipped = _copy(seq2seq_bundle, tmp_path / "flipped")
    data = bytearray((flipped / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x10
    (flipped / MODEL_FILE).write_bytes(bytes(data))
    assert "model.tflite: sha256 mismatch" in _bundle_error(flipped)

    truncated = _copy(seq2seq_bundle, tmp_path / "truncated")
    (truncated / MODEL_FILE).write_bytes(data[: len(data) // 3])
    assert "bytes, the manifest says" in _bundle_error(truncated)

    missing = _copy(seq2seq_bundle, tmp_path / "missing")
    (missing / MANIFEST_FILE).unlink()
    assert "manifest.json: missing" in _bundle_error(missing)

    # The same damage under a manifest re-sealed to match it: the model file's own record.
    resealed = _copy(flipped, tmp_path / "flipped_resealed")
    _rewrite_manifest(resealed, lambda manifest: None)
    assert "model.tflite" in _bundle_error(resealed)

    altered = _copy(seq2seq_bundle, tmp_path / "altered")
    text = (altered / MANIFEST_FILE).read_text().replace('"fp32"', '"float16"')
    (altered / MANIFEST_FILE).write_text(text)
    assert "checksum mismatch" in _bundle_error(altered)

    broken = _copy(seq2seq_bundle, tmp_path / "broken")
    (broken / MANIFEST_FILE).write_text(text[:100])
    assert "not valid JSON" in _bundle_error(broken)

    schema = _copy(seq2seq_bundle, tmp_path / "schema")
    _rewrite_manifest(schema, lambda manifest: manifest.pop("special_tokens"))
    assert "key 'special_tokens' is missing" in _bundle_error(schema)

    assert "no such bundle folder" in _bundle_error(tmp_path / "nowhere")
    assert made == []  # no interpreter was made for any of them


def test_a_vocabulary_that_does_not_match_is_refused(seq2seq_bundle, tmp_path):
    from keras_transformer_pipelines.tokenizers import save_tokenizer, train_tokenizer

    other = tmp_path / "other_tokenizer"
    texts = [text for pair in word_translation_pairs(300, seed=9) for text in pair]
    save_tokenizer(train_tokenizer(texts, VOCABULARY - 20), other)

    swapped = _copy(seq2seq_bundle, tmp_path / "swapped")
    (swapped / TOKENIZER_FILE).write_bytes((other / TOKENIZER_FILE).read_bytes())
    assert "sentencepiece.model" in _bundle_error(swapped)  # caught by its hash

    resealed = _copy(swapped, tmp_path / "resealed")
    _rewrite_manifest(resealed, lambda manifest: None)
    message = _bundle_error(resealed)
    assert f"{VOCABULARY - 20} pieces, the model's vocabulary has {VOCABULARY}" in message

    # Another tokenizer of exactly the model's size, the manifest re-sealed: the fingerprint
    # recorded inside model.tflite still tells.
    same_size = tmp_path / "same_size_tokenizer"
    save_tokenizer(train_tokenizer(texts, VOCABULARY), same_size)
    impostor = _copy(seq2seq_bundle, tmp_path / "impostor")
    (impostor / TOKENIZER_FILE).write_bytes((same_size / TOKENIZER_FILE).read_bytes())
    _rewrite_manifest(impostor, lambda manifest: None)
    assert "not the tokenizer this model was made with" in _bundle_error(impostor)

    # The writer refuses the same mismatch, and WordPiece tokenizers (the runtime has none).
    flatbuffer = (seq2seq_bundle / MODEL_FILE).read_bytes()
    options = dict(kind="seq2seq", tokenizer_directory=other, quantization="fp32")
    with pytest.raises(ValueError, match="the tokenizer has 380 pieces, the model's vocabulary"):
        write_bundle(tmp_path / "w", flatbuffer, **options)
    assert not (tmp_path / "w").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    (other / "tokenizer.json").write_text(json.dumps({"kind": "wordpiece"}))
    with pytest.raises(ValueError, match="a 'wordpiece' tokenizer; bundles need a sentencepiece"):
        write_bundle(tmp_path / "w", flatbuffer, **options)


def test_a_bundle_of_another_kind_or_with_other_signatures_is_refused(
    seq2seq_bundle, single_sequence, tmp_path
):
    classifier_bundle = single_sequence["classification"][2]
    with pytest.raises(BundleError, match="a classifier bundle, not seq2seq"):
        Translator.from_bundle(classifier_bundle)
    # A manifest re-sealed over another model's file: the signatures disagree.
    mixed = _copy(seq2seq_bundle, tmp_path / "mixed")
    (mixed / MODEL_FILE).write_bytes((classifier_bundle / MODEL_FILE).read_bytes())
    _rewrite_manifest(mixed, lambda manifest: None)
    # Caught before an interpreter is made: the model file records what it was made as.
    assert 'made with kind "classifier", the manifest says "seq2seq"' in _bundle_error(mixed)


# --- Translation: the Keras model's ids and text ----------------------------------------------


def test_greedy_and_beam_ids_equal_the_keras_models(translator, keras_model):
    sources = np.zeros((len(TEXTS), LENGTH), np.int32)
    for row, text in enumerate(TEXTS):
        ids = translator.source_ids(text)
        sources[row, : len(ids)] = ids
    expected = {
        beams: translate_ids(keras_model, sources, LENGTH, num_beams=beams, length_penalty=0.6)
        for beams in (1, 2, 3)
    }
    ended = 0
    for row, source in enumerate(sources):
        source = trim(source)
        greedy = translator.translate_ids(source, beam_size=1)
        assert trim(greedy) == trim(expected[1][row]), TEXTS[row]
        ended += greedy[-1] == translator.end_id
        # 3 beams run in one decode_beam call; 2 beams fall back to one decode call per row.
        for beams in (2, 3):
            found = translator.translate_ids(source, beam_size=beams, length_penalty=0.6)
            assert trim(found) == trim(expected[beams][row]), (TEXTS[row], beams)
    assert ended >= len(TEXTS) // 2  # most translations stop at the end token


def test_text_translations_equal_the_keras_translators(translator, keras_model, run_dir, caplog):
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    for beams in (1, 3):
        keras_translator = translation_recipe.KerasTranslator(
            keras_model, tokenizer, beam_size=beams, length_penalty=0.6, batch_size=len(TEXTS)
        )
        expected = keras_translator(TEXTS)
        with caplog.at_level(logging.WARNING, "keras_transformer_edge.runtime"):
            caplog.clear()
            found = [translator.translate(text, beam_size=beams) for text in TEXTS]
        assert found == expected
        # One warning for each text longer than the source, and only for those.
        long = [text for text in TEXTS if len(translator.tokenizer.encode(text)) > LENGTH]
        assert 3 <= len(long) == len(caplog.records) < len(TEXTS)
        assert (
            f"text 'moon moon moon moon moon moon moon moon…' has more than the model's {LENGTH} "
            "source tokens; cut"
        ) in [record.getMessage() for record in caplog.records]


def test_batches_and_length_buckets_give_each_sentence_its_own_translation(
    seq2seq_bundle, translator
):
    model = LiteModel(seq2seq_bundle / MODEL_FILE, 1, record_timings=True)
    timed = Translator(load_bundle(seq2seq_bundle), model)
    assert timed.batch_rows == 8
    texts = TEXTS * 2 + ["", "moon"]  # several batches, a partial last one, an empty text
    alone = [translator.translate(text, beam_size=1) for text in texts]
    assert timed.translate_many(texts, beam_size=1) == alone
    assert timed.translate_many(texts[:5], beam_size=3) == [
        translator.translate(text, beam_size=3) for text in texts[:5]
    ]
    # Short sentences ran the 8-position encoder, long ones the full one.
    assert {"encode", "encode_8", "decode_batch", "decode_beam"} <= set(model.timings)
    # A bucket's outputs are the full encode's at the sentence's positions, zeros past it.
    ids = translator.source_ids("moon sun")
    padded = np.zeros((1, LENGTH), np.int32)
    padded[0, : len(ids)] = ids
    full, bucketed = model.run("encode", source_ids=padded), encode_source(model, padded)
    np.testing.assert_array_equal(bucketed["source_mask"], full["source_mask"])
    real = full["source_mask"][0]
    cache_full, cache_bucket = full["cross_attention_cache"], bucketed["cross_attention_cache"]
    assert cache_bucket.shape == cache_full.shape
    np.testing.assert_allclose(cache_bucket[..., real, :], cache_full[..., real, :], atol=1e-5)
    assert real.sum() <= 8 and not cache_bucket[..., 8:, :].any()


def test_bound_steps_give_the_copying_paths_outputs(translator, monkeypatch):
    from keras_transformer_edge.runtime import reserved

    texts = TEXTS[:6]
    bound = {beams: [translator.translate(t, beam_size=beams) for t in texts] for beams in (1, 3)}
    batched = translator.translate_many(texts, beam_size=1)
    calls = []
    real_invoke = reserved.BoundStep.invoke  # step() writes its inputs, then invokes
    monkeypatch.setattr(
        reserved.BoundStep, "invoke", lambda self: calls.append(1) or real_invoke(self)
    )
    translator.translate(texts[0], beam_size=3)
    assert calls  # the reserved interpreter's steps were bound
    # Without tensor views (another runtime): every input copied in, every output out.
    monkeypatch.setattr(reserved.ReservedModel, "bind", lambda self, *args: None)
    for beams, expected in bound.items():
        assert [translator.translate(t, beam_size=beams) for t in texts] == expected
    assert translator.translate_many(texts, beam_size=1) == batched == bound[1]


def test_empty_text_and_bad_input(translator):
    assert translator.translate("") == "" and translator.translate("   ") == ""
    assert translator.translate_ids([]) == []
    with pytest.raises(InputError, match="text must be str, got bytes"):
        translator.translate(b"red cat")
    with pytest.raises(InputError, match="not valid Unicode: surrogates not allowed"):
        translator.translate("red \udcff cat")
    with pytest.raises(InputError, match=r"token ids must be in \[0, 400\), got 5..400"):
        translator.translate_ids([5, 400])
    with pytest.raises(InputError, match="13 token ids, the model takes at most 12"):
        translator.translate_ids([5] * 13)
    with pytest.raises(InputError, match=r"beam_size must be an integer in \[1, 64\], got 0"):
        translator.translate("red", beam_size=0)
    with pytest.raises(InputError, match=r"max_length must be an integer in \[1, 12\], got 13"):
        translator.translate("red", max_length=13)
    model = translator.model
    good = np.zeros((1, LENGTH), np.int32)
    with pytest.raises(InputError) as error:
        model.run("encode", source_ids=good.astype(np.int64))
    assert str(error.value) == "encode: input 'source_ids' has dtype int64, expected int32"
    with pytest.raises(InputError, match=r"has shape \[1, 5\], expected \[1, 12\]"):
        model.run("encode", source_ids=good[:, :5])
    with pytest.raises(InputError, match="is a list, expected a numpy array of int32"):
        model.run("encode", source_ids=good.tolist())
    with pytest.raises(InputError, match="do not match the signature's"):
        model.run("encode", source_ids=good, extra=good)
    with pytest.raises(InputError, match="no signature 'prefill'"):
        model.run("prefill", tokens=good)
    with pytest.raises(InputError, match=r"num_threads must be an integer in \[1, 256\], got 0"):
        LiteModel(translator.bundle.model_path, num_threads=0)


def test_xnnpack_off_and_threads_give_the_same_translation(seq2seq_bundle, translator):
    plain = Translator.from_bundle(seq2seq_bundle, num_threads=2, xnnpack=False)
    for text in TEXTS[:4]:
        assert plain.translate(text) == translator.translate(text)
    source = np.array([translator.source_ids(TEXTS[0]) + [0] * LENGTH][:1], np.int32)[:, :LENGTH]
    ours = plain.model.run("encode", source_ids=source)["cross_attention_cache"]
    theirs = translator.model.run("encode", source_ids=source)["cross_attention_cache"]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_the_interpreter_falls_back_to_tflite_runtime(seq2seq_bundle, monkeypatch):
    import ai_edge_litert.interpreter as litert

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    fake = types.ModuleType("tflite_runtime")
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", litert)  # the same API
    model = Translator.from_bundle(seq2seq_bundle).model
    assert model.backend == "tflite_runtime"
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(BackendError, match="no TFLite interpreter: pip install ai-edge-litert"):
        Translator.from_bundle(seq2seq_bundle)


# --- Language model, classifier, tagger -------------------------------------------------------

LINES = [
    "red green",
    "blue cat dog bird tree house",  # longer than the 4-token prefill
    "",  # the start token alone
    "moon " * 20,  # longer than the context: truncated
]


def test_language_model_greedy_generation_equals_keras(single_sequence, caplog):
    run, model, bundle = single_sequence["language_model"]
    generator = Generator.from_bundle(bundle, num_threads=1)
    assert generator.prefill_length == 4 and generator.context_length == 16
    tokenizer = load_tokenizer(run / "tokenizer")
    expected = task_recipes.continue_lines(model, tokenizer, LINES, sampler_from("greedy"))
    with caplog.at_level(logging.WARNING, "keras_transformer_edge.runtime"):
        found = [generator.generate(line) for line in LINES]
    assert found == expected
    assert all(found[:3]) and found[3] == ""  # a full context leaves no room
    assert len(caplog.records) == 1 and "more than the model's 15 prompt tokens" in caplog.text
    ids = generator.generate_ids(generator.prompt_ids(LINES[0]), max_new_tokens=3)
    assert len(ids) == 3
    # Top-k: reproducible with a seed, and drawn from the k best.
    first = generator.generate(LINES[0], top_k=5, seed=3)
    assert generator.generate(LINES[0], top_k=5, seed=3) == first
    one = generator.generate_ids(generator.prompt_ids(LINES[0]), top_k=1, seed=0)
    assert one == generator.generate_ids(generator.prompt_ids(LINES[0]))
    with pytest.raises(InputError, match=r"top_k must be an integer in \[1, 400\], got 0"):
        generator.generate("red", top_k=0)


def test_language_model_prefill_buckets_give_the_same_generation(single_sequence, workdir):
    run, model, _ = single_sequence["language_model"]
    bundle = bundle_from_run(run, workdir / "lm-buckets", prefill_length=12, parity_examples=0)
    assert "prefill_8" in load_bundle(bundle).manifest["signatures"]
    generator = Generator.from_bundle(bundle, num_threads=1, record_timings=True)
    tokenizer = load_tokenizer(run / "tokenizer")
    lines = LINES[:3]
    expected = task_recipes.continue_lines(model, tokenizer, lines, sampler_from("greedy"))
    assert [generator.generate(line) for line in lines] == expected
    assert "prefill_8" in generator.model.timings  # short prompts ran 8 positions, not 12


def test_classifier_and_tagger_outputs_equal_keras(single_sequence, caplog):
    run, model, bundle = single_sequence["classification"]
    classifier = Classifier.from_bundle(bundle)
    recipe = _recipe(run)
    tokenizer = load_tokenizer(run / "tokenizer")
    texts = [text for text, _ in topic_sentences(12, seed=2)] + ["", "red " * 30]
    expected = task_recipes.classify(model, tokenizer, texts, recipe)
    assert [classifier.classify(text) for text in texts] == [classifier.labels[i] for i in expected]
    for text in texts[:3]:
        ids = np.zeros((1, 12), np.int32)
        found = classifier.token_ids(text)
        ids[0, : len(found)] = found
        logits = np.asarray(model(ids))[0]
        np.testing.assert_allclose(classifier.logits_of_ids(found), logits, atol=1e-4)
        probabilities = classifier.probabilities(text)
        assert probabilities.sum() == pytest.approx(1.0) and probabilities.argmax() == (
            logits.argmax()
        )

    run, model, bundle = single_sequence["tagging"]
    tagger = Tagger.from_bundle(bundle)
    tags = "B-A I-A B-C I-C O".split()
    assert tagger.labels == tags
    sentences = [words for words, _ in entity_sentences(8, seed=4)] + [["red"] * 14]
    expected = task_recipes.tag(
        model, load_tokenizer(run / "tokenizer"), sentences, tags, _recipe(run)
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, "keras_transformer_edge.runtime"):
        found = [tagger.tag(" ".join(words)) for words in sentences]
    assert found == expected
    assert found[-1][10:] == ["O"] * 4
    cut = [words for words in sentences if len(tagger.token_ids(words)[1]) < len(words)]
    assert 1 <= len(cut) == len(caplog.records)
    assert tagger.tag("") == [] and tagger.tag(" \t ") == []


def test_bundle_from_run_refuses_a_wordpiece_run_before_converting(tmp_path):
    run = tmp_path / "run"
    (run / "tokenizer").mkdir(parents=True)
    recipe = {"task": "classification", "data": {"train": "x.jsonl"}}
    (run / "recipe.json").write_text(json.dumps(recipe))
    (run / "tokenizer" / "tokenizer.json").write_text(json.dumps({"kind": "wordpiece"}))
    with pytest.raises(ValueError, match="bundles need a sentencepiece tokenizer") as error:
        bundle_from_run(run, tmp_path / "bundle")  # there is no model.keras to load
    assert "\n" not in str(error.value)


def test_write_bundle_checks_labels_and_replaces_a_bundle_atomically(single_sequence, tmp_path):
    run, model, bundle = single_sequence["classification"]
    flatbuffer = (bundle / MODEL_FILE).read_bytes()
    options = dict(kind="classifier", tokenizer_directory=run / "tokenizer", quantization="fp32")
    with pytest.raises(ValueError, match="2 labels for a model with 3 outputs"):
        write_bundle(tmp_path / "b", flatbuffer, labels=["a", "b"], vocabulary_size=400, **options)
    with pytest.raises(ValueError, match="needs vocabulary_size"):
        write_bundle(tmp_path / "b", flatbuffer, **options)
    first = write_bundle(tmp_path / "b", flatbuffer, vocabulary_size=400, **options)
    assert load_bundle(first).labels is None and Classifier.from_bundle(first).labels == [
        "0",
        "1",
        "2",
    ]
    second = convert(model, classifier_endpoints(model), "dynamic_int8")
    write_bundle(tmp_path / "b", second, vocabulary_size=400, extra={"parity": 1.0}, **options)
    replaced = load_bundle(tmp_path / "b")
    assert replaced.manifest["extra"] == {"parity": 1.0}
    written = replaced.manifest["files"][MODEL_FILE]["bytes"]
    assert len(second) < written < len(second) + 1024 < len(flatbuffer)  # + the model's facts
    assert bundle_facts(replaced.model_path)["tokenizer_sha256"] == replaced.tokenizer.fingerprint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


# --- Command line and benchmark ---------------------------------------------------------------


def _cli(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    code = cli.run(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def test_cli_translates_tags_classifies_and_generates(
    seq2seq_bundle, translator, single_sequence, tmp_path, capsys
):
    lines = ["red cat open", "", "moon " * 20, "blue river"]
    source = tmp_path / "in.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    code, out, err = _cli(capsys, "translate", str(seq2seq_bundle), "--input", str(source))
    assert code == 0 and out == [translator.translate(line) for line in lines]
    assert out[1] == "" and len(err) == 1 and err[0].startswith("warning: line 3: text 'moon")
    code, out, _ = _cli(
        capsys, "translate", str(seq2seq_bundle), "--input", str(source), "--beam", "1", "--ids"
    )
    expected = [translator.translate_ids(translator.source_ids(line), 1) for line in lines]
    assert code == 0 and out == [" ".join(map(str, ids)) for ids in expected]

    tagger_bundle = single_sequence["tagging"][2]
    code, out, _ = _cli(capsys, "tag", str(tagger_bundle), "--input", str(source))
    tagger = Tagger.from_bundle(tagger_bundle)
    assert code == 0 and out == [" ".join(tagger.tag(line)) for line in lines]

    classifier_bundle = single_sequence["classification"][2]
    code, out, _ = _cli(
        capsys, "classify", str(classifier_bundle), "--input", str(source), "--probabilities"
    )
    scores = [json.loads(line) for line in out]
    assert code == 0 and len(scores) == 4
    assert all(set(s) == {"animal", "colour", "nature"} for s in scores)
    assert all(abs(sum(s.values()) - 1) < 1e-4 for s in scores)

    lm_bundle = single_sequence["language_model"][2]
    code, out, _ = _cli(
        capsys,
        "generate",
        str(lm_bundle),
        "--input",
        str(source),
        "--max-new-tokens",
        "2",
        "--ids",
    )
    generator = Generator.from_bundle(lm_bundle)
    expected = [generator.generate_ids(generator.prompt_ids(line), 2) for line in lines]
    assert code == 0 and out == [" ".join(map(str, ids)) for ids in expected]
    assert [len(ids) for ids in expected][2] == 0  # a full context leaves no room

    code, out, _ = _cli(capsys, "info", str(seq2seq_bundle))
    assert code == 0 and json.loads("\n".join(out))["kind"] == "seq2seq"


def test_cli_errors_are_one_line_with_exit_codes(seq2seq_bundle, single_sequence, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"red cat\nblue \xff river\n")
    code, out, err = _cli(capsys, "translate", str(seq2seq_bundle), "--input", str(bad))
    assert code == 2 and len(out) == 1  # the good line before the bad one is written
    assert err == [
        "error: line 2: not valid UTF-8 (byte 0xff at offset 5); pass --encoding-errors "
        "replace to read it as U+FFFD"
    ]
    code, out, err = _cli(
        capsys,
        "translate",
        str(seq2seq_bundle),
        "--input",
        str(bad),
        "--encoding-errors",
        "replace",
    )
    assert code == 0 and len(out) == 2 and err == []

    code, _, err = _cli(capsys, "translate", str(tmp_path / "none"), "--input", str(bad))
    assert code == 3 and len(err) == 1 and "no such bundle folder" in err[0]
    code, _, err = _cli(capsys, "tag", str(seq2seq_bundle), "--input", str(bad))
    assert code == 3 and err == [
        f"error: {seq2seq_bundle}: a seq2seq bundle, not tagger (manifest 'kind')"
    ]
    code, _, err = _cli(capsys, "translate", str(seq2seq_bundle), "--input", str(tmp_path / "x"))
    assert code == 2 and "cannot read it" in err[0]
    code, _, err = _cli(
        capsys, "translate", str(seq2seq_bundle), "--input", str(bad), "--beam", "0"
    )
    # Checked before the first line is read.
    assert code == 2 and err == ["error: beam_size must be an integer in [1, 64], got 0"]
    code, _, err = _cli(capsys, "translate")  # argparse's complaint, on one line
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert "the following arguments are required: bundle" in err[0]


def test_cli_reads_stdin_and_imports_no_tensorflow_or_keras(seq2seq_bundle, translator):
    script = (
        "import sys\n"
        "from keras_transformer_edge.runtime import cli\n"
        "code = cli.run(sys.argv[1:])\n"
        # keras_transformer.errors (the exit-code table, standard library only) is shared
        "light = {'keras_transformer', 'keras_transformer.errors'}\n"
        "heavy = sorted(m for m in set(sys.modules) - light if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf_keras', 'keras_nlp', 'keras_hub', 'sentencepiece', "
        "'keras_transformer', 'keras_transformer_pipelines'))\n"
        "print('heavy:', heavy, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "translate", str(seq2seq_bundle), "--threads", "1"],
        input=b"red cat open\nblue river\n",
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        translator.translate("red cat open"),
        translator.translate("blue river"),
    ]
    assert "heavy: []" in result.stderr.decode()


def test_benchmark_reports_sane_numbers(seq2seq_bundle, single_sequence, capsys):
    code, out, _ = _cli(
        capsys,
        "bench",
        str(seq2seq_bundle),
        "--runs",
        "6",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--beam",
        "3",
        "--text",
        "red cat open",
    )
    report = json.loads("\n".join(out))
    assert code == 0
    latency = report["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
    assert latency["p99"] <= latency["max"] and latency["count"] == 6
    assert 0 < report["verify_ms"] < report["init_ms"]
    assert report["first_inference_ms"] > 0 and report["peak_rss_mb"] > 10
    assert report["model_size_bytes"] == (seq2seq_bundle / MODEL_FILE).stat().st_size
    assert report["backend"]["name"] == "ai_edge_litert" and report["num_threads"] == 1
    assert report["input_tokens"] == len(
        load_bundle(seq2seq_bundle).tokenizer.encode("red cat open")
    )
    assert report["quantization"] == "fp32"
    steps = report["generated_tokens_per_run"]
    assert 1 <= steps <= LENGTH and report["tokens_per_second"] > 0
    assert report["signatures_ms"]["encode"]["count"] == 6
    assert report["signatures_ms"]["decode_beam"]["count"] >= 6 * steps  # each step, all beams
    assert report["signatures_ms"]["decode_beam"]["p50"] < latency["p50"]

    code, out, _ = _cli(capsys, "bench", str(single_sequence["classification"][2]), "--runs", "3")
    report = json.loads("\n".join(out))
    assert code == 0 and report["tokens_per_second"] is None
    assert report["signatures_ms"]["classify"]["count"] == 3
    code, _, err = _cli(capsys, "bench", str(seq2seq_bundle), "--runs", "0")
    assert code == 2 and len(err) == 1


def test_bundles_carry_their_parity_report_and_a_failed_gate_writes_nothing(
    run_dir, seq2seq_bundle, workdir
):
    from keras_transformer_edge.parity import ParityError, Tolerance

    report = load_bundle(seq2seq_bundle).manifest["extra"]["parity"]
    assert report["passed"] and report["mode"] == "fp32" and report["metric"] == "bleu"
    assert report["max_abs_error"] < 1e-3 and report["top1_agreement"] >= 0.999
    assert report["keras"] == report["tflite"] and report["examples"] > 0
    target = workdir / "gated"
    impossible = Tolerance(max_abs_error=0.0, min_top1_agreement=1.0, max_metric_drop=-1.0)
    with pytest.raises(ParityError) as error:
        bundle_from_run(run_dir, target, "dynamic_int8", tolerance=impossible)
    assert "\n" not in str(error.value) and "dynamic_int8 parity failed" in str(error.value)
    assert not target.exists() and not list(workdir.glob(".gated*"))


def test_conversion_cli_writes_a_gated_bundle_a_report_and_onnx(run_dir, workdir, capsys):
    from keras_transformer_edge import cli as edge_cli

    target = workdir / "cli-bundle"
    assert edge_cli.run(["convert", str(run_dir), str(target), "--mode", "float16"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["parity"]["passed"] and load_bundle(target).manifest["quantization"] == "float16"
    code = edge_cli.run(
        ["quantize", str(run_dir), str(workdir / "x"), "--float-fallback-threshold", "0.5"]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and "full_int8" in error
    assert edge_cli.run(["report", str(run_dir), "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    errors = [float(line.split()[0]) for line in lines]
    assert len(lines) == 3 and errors == sorted(errors, reverse=True)
    # int4 through ai-edge-quantizer's own validate: activations, no quantization step size.
    assert edge_cli.run(["report", str(run_dir), "--mode", "int4_blockwise", "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    errors = [float(line.split()[0]) for line in lines]
    assert len(lines) == 3 and errors == sorted(errors, reverse=True) and 0 < errors[0] < 1
    assert all(line.split()[1] == "-" for line in lines)
    code = edge_cli.run(["onnx", str(run_dir), str(workdir / "onnx")])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (workdir / "onnx").iterdir()) == ["decode.onnx", "encode.onnx"]
    assert edge_cli.run(["convert", str(workdir / "missing"), str(workdir / "y")]) == 2


# --- The format specification (docs/bundle-format.md) ---------------------------------------


def test_every_bundle_kind_follows_the_format_spec(seq2seq_bundle, single_sequence):
    paths = [seq2seq_bundle] + [bundle for _, _, bundle in single_sequence.values()]
    kinds = set()
    for path in paths:
        bundle = load_bundle(path)  # which checks the manifest's signatures against the spec
        assert bundle.manifest["format_version"] == 6
        kinds.add(bundle.kind)
        found = LiteModel(bundle.model_path, xnnpack=False).signatures
        assert found == bundle.manifest["signatures"]
        for name, sides in found.items():
            for side, tensors in sides.items():
                for tensor, spec in tensors.items():
                    # A rank-0 input crashes LiteRT's signature runner on aarch64.
                    assert len(spec["shape"]) >= 1, f"{path.name} {name} {side} {tensor}"
        sizes = dict(bundle.max_lengths)
        if bundle.kind in ("seq2seq", "language_model"):
            sizes["vocabulary"] = bundle.manifest["vocabulary_size"]
        check_signatures(bundle.kind, found, sizes)
    assert kinds == set(SIGNATURES)
    spec = (Path(__file__).parents[1] / "docs" / "bundle-format.md").read_text(encoding="utf-8")
    assert signature_table() in spec, "docs/bundle-format.md's table differs from signatures.py"


def test_a_manifest_that_contradicts_its_model_or_itself_is_refused(seq2seq_bundle, tmp_path):
    def refused(change) -> str:
        path = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        _copy(seq2seq_bundle, path)
        _rewrite_manifest(path, change)
        return _bundle_error(path)

    def set_in(*keys, value):
        def change(manifest):
            target = manifest
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value

        return change

    index = ("signatures", "decode", "inputs", "index", "shape")
    assert "expected [1] in format version 6" in refused(set_in(*index, value=[]))
    assert "target is" in refused(set_in("max_lengths", "target", value=LENGTH + 1))
    assert "vocabulary is 400 here but 999" in refused(set_in("vocabulary_size", value=999))
    assert "outside the vocabulary" in refused(set_in("special_tokens", "end", value=VOCABULARY))
    assert "not distinct" in refused(set_in("special_tokens", "end", value=1))
    assert "decoding.beam_size" in refused(set_in("decoding", "beam_size", value=0))
    assert "decoding.beam_size" in refused(set_in("decoding", "beam_size", value="4"))
    assert "not a finite number" in refused(set_in("decoding", "length_penalty", value=1e400))
    assert "decoding.max_length" in refused(set_in("decoding", "max_length", value=LENGTH + 1))
    assert "not a seq2seq decoding option" in refused(set_in("decoding", "top_k", value=3))
    assert "has no labels" in refused(set_in("labels", value=["a"]))
    assert "not part of a seq2seq bundle" in refused(
        lambda manifest: manifest["signatures"].update(extra=manifest["signatures"]["encode"])
    )
    # Format version 1 (a rank-0 index, no batch or bucket signatures) is still read.
    version1 = tmp_path / "version1"
    _copy(seq2seq_bundle, version1)
    assert "need format version 3, not 1" in refused(set_in("format_version", value=1))
    assert "need format version 5, not 4" in refused(set_in("format_version", value=4))
    newer = ("decode_batch", "encode_8", "decode_8", "decode_beam_8", "decode_batch_8")
    _rewrite_manifest(version1, lambda manifest: [manifest["signatures"].pop(n) for n in newer])

    # Before format version 4, decode carried one packed cache.
    def version_3(manifest):
        [
            manifest["signatures"].pop(f"{step}_8")
            for step in ("decode", "decode_beam", "decode_batch")
        ]
        manifest["format_version"] = 3

    assert "expected ['cache', 'cross_attention_cache'" in refused(version_3)
    _rewrite_manifest(version1, _packed_decode)
    _rewrite_manifest(version1, set_in(*index, value=[]))
    _rewrite_manifest(version1, set_in("signatures", "decode_beam", *index[2:], value=[]))
    _rewrite_manifest(version1, set_in("format_version", value=1))
    assert load_bundle(version1).manifest["format_version"] == 1


def _packed_decode(manifest):
    """The decode signatures of format versions 1 to 3: one packed cache in and out."""
    rows_of = {"decode": 1, "decode_beam": manifest["decoding"]["beam_size"]}
    cross = manifest["signatures"]["encode"]["outputs"]["cross_attention_cache"]["shape"]
    target = manifest["max_lengths"]["target"]
    for name, rows in rows_of.items():
        signature = manifest["signatures"][name]
        cache = {"shape": [rows, *cross[1:4], target, cross[5]], "dtype": "float32"}
        signature["inputs"] = {
            "token": signature["inputs"]["token"],
            "cache": cache,
            "index": signature["inputs"]["index"],
            "cross_attention_cache": {"shape": [rows, *cross[1:]], "dtype": "float32"},
            "source_mask": signature["inputs"]["source_mask"],
        }
        signature["outputs"] = {"logits": signature["outputs"]["logits"], "cache": cache}


# --- Threads ----------------------------------------------------------------------------------


def test_one_task_shared_by_threads_gives_the_single_threaded_outputs(
    run_dir, workdir, single_sequence
):
    int8 = bundle_from_run(run_dir, workdir / "seq2seq-int8", "dynamic_int8")
    texts = [source for source, _ in word_translation_pairs(200, max_words=6, seed=21)]
    jobs = [(text, 1 if index % 2 else 3) for index, text in enumerate(texts)]
    for bundle in (int8, workdir / "seq2seq"):
        for max_interpreters in (1, 4):  # a lock around one interpreter, and a pool of four
            translator = Translator.from_bundle(bundle, max_interpreters=max_interpreters)
            expected = [translator.translate(text, beam_size=beam) for text, beam in jobs]
            with ThreadPoolExecutor(6) as pool:
                found = list(
                    pool.map(lambda job, t=translator: t.translate(job[0], beam_size=job[1]), jobs)
                )
            assert found == expected, f"{bundle.name}, {max_interpreters} interpreters"
            assert translator.model.interpreters <= max_interpreters
    generator = Generator.from_bundle(single_sequence["language_model"][2])
    prompts = [(text, seed) for seed, text in enumerate(texts[:40])]
    expected = [generator.generate(text, top_k=5, seed=seed) for text, seed in prompts]
    with ThreadPoolExecutor(4) as pool:
        found = list(
            pool.map(lambda job: generator.generate(job[0], top_k=5, seed=job[1]), prompts)
        )
    assert found == expected
    for task, name in ((Classifier, "classification"), (Tagger, "tagging")):
        model = task.from_bundle(single_sequence[name][2])
        run = model.classify if task is Classifier else model.tag
        expected = [run(text) for text in texts]
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(run, texts)) == expected, name
