"""The evaluation loop on a tiny model and tiny local eval sets: teacher-forced sums against a
direct computation, generation scored and written out, oracle answers, skips and errors."""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest
import seqio
from conftest import make_shard_dir
from test_metrics_models import make_tiny_clap

from anygpt_jax.api import AnyGPT
from anygpt_jax.data.shards import ShardExample, serialize
from anygpt_jax.evaluation import loop
from anygpt_jax.evaluation import tasks as eval_tasks
from anygpt_jax.evaluation.hook import EvalHook
from anygpt_jax.inference.media import MediaCodecs, MediaSettings
from anygpt_jax.model import ModelConfig, Transformer
from anygpt_jax.vocab import ModalitySpan

WORDS = "a cat dog sits runs on the red mat near blue house".split()
TEXT_ONLY = {"text": {"do_sample": False, "num_beams": 1, "max_new_tokens": 8, "min_new_tokens": 0}}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _examples(kind: str, n: int, seed: int) -> list[ShardExample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, rng.integers(4, 8)))
        if kind == "image_text":
            span = ModalitySpan("image", rng.integers(0, 8192, 32))
            meta = {"references": [text, " ".join(rng.choice(WORDS, 5))]}
        elif kind == "speech_text":
            span = ModalitySpan("speech", rng.integers(0, 1024, rng.integers(10, 30)))
            meta = {"references": [text]}
        else:
            span = ModalitySpan("music", rng.integers(0, 2048, (4, 6)))
            meta = {}
        out.append(ShardExample(f"{kind}-{i}", kind, text, [span], meta=meta))
    return out


@pytest.fixture(scope="module")
def eval_sets(tmp_path_factory, merged_vocab) -> dict:
    root = tmp_path_factory.mktemp("eval_sets")
    out = {}
    for k, (kind, n) in enumerate({"image_text": 5, "speech_text": 4, "music_text": 3}.items()):
        exs = _examples(kind, n, k)
        out[kind] = (make_shard_dir(str(root / kind), kind, exs, merged_vocab, num_shards=2), exs)
    return out


@pytest.fixture(scope="module")
def model(merged_vocab) -> AnyGPT:
    cfg = ModelConfig(vocab_size=merged_vocab.vocab_size, hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=2, num_kv_heads=1, max_position_embeddings=512,
                      scan_layers=False)  # fmt: skip
    params = Transformer(cfg).init(jax.random.PRNGKey(0), np.zeros((1, 1), np.int32))["params"]
    import flax.linen as nn

    return AnyGPT(nn.meta.unbox(params), cfg, merged_vocab)


def _register(merged_vocab, eval_sets, **kw):
    image, speech, music = (eval_sets[k][0] for k in ("image_text", "speech_text", "music_text"))
    dirs = dict(coco_dirs=[image], librispeech_dirs=[speech], vctk_dirs=[speech],
                musiccaps_dirs=[music])  # fmt: skip
    return eval_tasks.register_eval(merged_vocab, **{**dirs, **kw})


def test_render_eval_record(merged_vocab, eval_sets):
    ex = eval_sets["image_text"][1][0]
    ids, weights, prompt, ex_id, meta = eval_tasks.render_eval_record(
        serialize(ex), merged_vocab, "image_to_text", "Describe this image."
    )
    # The prompt is the sample cut where the answer starts; the answer is the caption.
    assert ids[: len(prompt)].tolist() == prompt.tolist()
    answer = merged_vocab.decode(ids[len(prompt) :].tolist())
    assert answer.strip().startswith(ex.text)
    assert ex_id == ex.id.encode() and np.all(weights[1:] == 1.0)
    assert json.loads(meta)["references"] == ex.meta["references"]
    assert json.loads(meta)["text"] == ex.text


def _direct_sums(model, task_name, vocab) -> dict[str, tuple[float, float]]:
    """Per-modality (loss sum, tokens) from the model's logits, one example at a time."""
    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(None, shuffle=False, num_epochs=1, use_cached=False,
                          trim_output_features=False)  # fmt: skip
    index = vocab.id_modality_index()
    sums: dict[str, list[float]] = {}
    examples = list(ds.as_numpy_iterator())
    # Causal attention: padding at the end leaves earlier logits alone; one compile.
    batch = np.zeros((len(examples), 160), np.int32)
    for i, ex in enumerate(examples):
        batch[i, : len(ex["targets"]) - 1] = ex["targets"][:-1]
    all_logits = model.logits(batch).astype(np.float64)
    for i, ex in enumerate(examples):
        ids, w = ex["targets"], ex["loss_weights"]
        logits = all_logits[i, : len(ids) - 1]
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        loss = logz - logits[np.arange(len(ids) - 1), ids[1:]]
        for t, target in enumerate(ids[1:]):
            name = vocab.modality_names[index[target]]
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += w[t + 1] * loss[t]
            acc[1] += w[t + 1]
    return {k: (v[0], v[1]) for k, v in sums.items()}


def test_teacher_forced_matches_direct_computation(model, merged_vocab, eval_sets):
    _register(merged_vocab, eval_sets)
    from anygpt_jax.evaluation.teacher_forced import teacher_forced_eval

    for task in ("anygpt_eval_coco_caption",):
        # Batch 4 with 5 examples packed 2-3 per row: the last batch is padded, not dropped.
        got = teacher_forced_eval(model, task, seq_len=160, batch_size=4)
        want = _direct_sums(model, task, merged_vocab)
        total = sum(t for _, t in want.values())
        assert got["tokens"] == total
        assert got["loss"] == pytest.approx(sum(s for s, _ in want.values()) / total, rel=1e-4)
        assert got["perplexity"] == pytest.approx(math.exp(got["loss"]), rel=1e-9)
        for name, (s, t) in want.items():
            assert got[f"tokens/{name}"] == t
            assert got[f"loss/{name}"] == pytest.approx(s / t, rel=1e-4)
            assert 0.0 <= got[f"accuracy/{name}"] <= 1.0


def test_evaluate_end_to_end(model, merged_vocab, eval_sets, tmp_path):
    _register(merged_vocab, eval_sets)
    options = loop.EvalOptions(seq_len=160, batch_size=4, max_examples=4, generation=TEXT_ONLY,
                               generation_batch_size=4)  # fmt: skip
    out = str(tmp_path / "eval")
    summary = loop.evaluate(model, out, step=7, options=options)
    metrics = summary["metrics"]
    for key in ("anygpt_eval_coco_caption/cider", "anygpt_eval_coco_caption/bleu4",
                "anygpt_eval_librispeech_asr/wer",
                "anygpt_eval_musiccaps_music/teacher_forced/loss/music",
                "anygpt_eval_vctk_tts/teacher_forced/perplexity/speech"):  # fmt: skip
        assert key in metrics and math.isfinite(metrics[key]), key
    # Media metrics cannot run here: each says what to configure, none is scored as zero.
    skipped = summary["skipped"]
    assert "tokenizer_dirs['image']" in skipped["anygpt_eval_coco_text_to_image/ClipScore"]
    assert "tokenizer_dirs['speech']" in skipped["anygpt_eval_vctk_tts/TtsWer"]
    assert "anygpt_eval_musiccaps_music/clap_score" not in metrics
    with open(os.path.join(out, "metrics-00000007.json")) as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    with open(os.path.join(out, "predictions-00000007.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [r["task"] for r in lines] == ["anygpt_eval_coco_caption"] * 4 + [
        "anygpt_eval_librispeech_asr"] * 4  # fmt: skip
    assert all(isinstance(r["prediction"], str) and r["num_generated"] <= 8 for r in lines)
    assert lines[0]["references"] == eval_sets["image_text"][1][0].meta["references"]
    import tensorflow as tf

    [events] = glob.glob(os.path.join(out, "tensorboard", "events.out.tfevents.*"))
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events) for v in e.summary.value}
    assert "anygpt_eval_coco_caption/cider" in tags


def test_oracle_answers_score_perfectly(model, merged_vocab, eval_sets, tmp_path, monkeypatch):
    """Generation replaced by each example's own answer: decoding and scoring must align."""
    names = _register(merged_vocab, eval_sets)
    answers = {}
    for name in names:
        ds = seqio.get_mixture_or_task(name).get_dataset(
            None, shuffle=False, num_epochs=1, use_cached=False, trim_output_features=False
        )
        for ex in ds.as_numpy_iterator():
            answers[tuple(ex["prompt"].tolist())] = ex["targets"][len(ex["prompt"]) :].tolist()
    import anygpt_jax.inference

    def oracle(model, prompts, settings, *, seed=0, stop_ids=None, constrain=True):
        return [answers[tuple(p)] for p in prompts]

    monkeypatch.setattr(anygpt_jax.inference, "generate", oracle)
    names = ["anygpt_eval_coco_caption", "anygpt_eval_librispeech_asr"]
    options = loop.EvalOptions(teacher_forced=False, generation=TEXT_ONLY, tasks=names)
    metrics = loop.evaluate(model, str(tmp_path), options=options)["metrics"]
    assert metrics["anygpt_eval_librispeech_asr/wer"] == 0.0
    assert metrics["anygpt_eval_coco_caption/bleu1"] == pytest.approx(100.0, rel=1e-6)


def test_missing_dataset_and_task_errors(model, merged_vocab, eval_sets, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"register_eval.coco_dirs: .*absent is not a dir"):
        eval_tasks.register_eval(merged_vocab, coco_dirs=[str(tmp_path / "absent")])
    empty = tmp_path / "unbuilt"
    empty.mkdir()
    eval_tasks.register_eval(merged_vocab, librispeech_dirs=[str(empty)])
    from anygpt_jax.data.shards import ShardError

    with pytest.raises(ShardError, match="manifest.json: missing"):
        loop.evaluate(model, str(tmp_path / "o"), options=loop.EvalOptions(inference=False))
    _register(merged_vocab, eval_sets)
    with pytest.raises(ValueError, match="not registered"):
        loop.evaluate(model, str(tmp_path / "o"), options=loop.EvalOptions(tasks=["nope"]))


def test_bound_metric_weights_missing_fail_before_generation(model, merged_vocab, eval_sets,
                                                             tmp_path):  # fmt: skip
    from anygpt_jax.evaluation import models, scoring

    gin.bind_parameter("ClipScore.model", models.HFClip)
    gin.bind_parameter("HFClip.path", str(tmp_path / "no_clip"))
    _register(merged_vocab, eval_sets)
    task = seqio.get_mixture_or_task("anygpt_eval_coco_text_to_image")
    [clip] = task.predict_metric_fns
    assert isinstance(clip, scoring.ClipScore)
    # Decoders configured (image tokenizer and unCLIP directories), so scoring is next.
    codecs = MediaCodecs(model.vocab, MediaSettings({"image": str(tmp_path)},
                                                    unclip_pipeline=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=r"HFClip.path .*no_clip does not exist"):
        loop.inference_eval(model, "anygpt_eval_coco_text_to_image", loop.EvalOptions(),
                            codecs=codecs, media_dir=str(tmp_path))  # fmt: skip


def test_cli_config_errors(capsys):
    from anygpt_jax import eval as eval_cli

    assert eval_cli.main(["--gin_file=eval/cpu_demo.gin", "--gin.MODEL_DIR=None"]) == 1
    assert "required gin macros not set: ['MODEL_DIR']" in capsys.readouterr().err
    assert eval_cli.main(["--gin_file=eval/nope.gin"]) == 1
    assert "gin file not found: eval/nope.gin" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["eval/paper.gin", "eval/cpu_demo.gin"])
def test_eval_gin_files_parse(name):
    from anygpt_jax import eval as eval_cli

    eval_cli.parse_gin([name], [])
    assert gin.query_parameter("run_eval.model_dir") is not None


@pytest.mark.slow
def test_music_generation_decoded_and_clap_scored(model, merged_vocab, eval_sets, tmp_path):
    """The media path: music spans generated, decoded by the (demo) codec, written as WAV and
    scored by a CLAP model bound through gin."""
    from anygpt_jax.evaluation import models

    clap_dir = make_tiny_clap(str(tmp_path / "clap"))

    gin.bind_parameter("ClapScore.model", models.HFClap)
    gin.bind_parameter("HFClap.path", clap_dir)
    _register(merged_vocab, eval_sets)
    music = {"max_new_tokens": 26, "min_new_tokens": 0, "do_sample": True, "top_k": 0}
    options = loop.EvalOptions(tasks=["anygpt_eval_musiccaps_music"], teacher_forced=False,
                               max_examples=2, generation={"music": music})  # fmt: skip
    codecs = MediaCodecs(model.vocab, MediaSettings({"music": "demo"}))
    summary = loop.evaluate(model, str(tmp_path), step=3, options=options, codecs=codecs)
    metrics = summary["metrics"]
    assert summary["skipped"] == {}
    assert -1.0 <= metrics["anygpt_eval_musiccaps_music/clap_score"] <= 1.0
    with open(tmp_path / "predictions-00000003.jsonl") as f:
        records = [json.loads(line) for line in f]
    made = [r for r in records if r["prediction"].endswith(".wav")]
    assert metrics["anygpt_eval_musiccaps_music/clap_score_missing"] == len(records) - len(made)
    for r in made:
        import soundfile as sf

        wav, rate = sf.read(tmp_path / r["prediction"])
        assert rate == 32000 and len(wav) % 640 == 0 and len(wav) > 0


@pytest.mark.slow
def test_cli_runs_on_a_model_directory(model, merged_vocab, eval_sets, tmp_path):
    """`python -m anygpt_jax.eval` on a saved model directory and a gin file of eval sets."""
    from anygpt_jax import checkpointing

    model_dir = str(tmp_path / "model")
    checkpointing.save_model(model_dir, model.params, model.config, merged_vocab)
    config = tmp_path / "eval.gin"
    config.write_text(
        "import anygpt_jax.evaluation.loop\n"
        "import anygpt_jax.inference\n"
        "run_eval.model_dir = %MODEL_DIR\n"
        "run_eval.options = @EvalOptions()\n"
        "run_eval.data_parallel = False\n"
        f"register_eval.librispeech_dirs = ['{eval_sets['speech_text'][0]}']\n"
        "EvalOptions.seq_len = 160\n"
        "EvalOptions.max_examples = 2\n"
        "text/GenerationSettings.do_sample = False\n"
        "text/GenerationSettings.max_new_tokens = 6\n"
        "text/GenerationSettings.min_new_tokens = 0\n"
    )
    from synthetic_task import cli_env, noisy_lines, user_env

    # One CPU device, and no TPU pod variables (a library imported by the suite may set them).
    env = {k: v for k, v in user_env(cli_env(1)).items()
           if k not in ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID")}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "anygpt_jax.eval", f"--gin_file={config}",
         f"--gin.MODEL_DIR='{model_dir}'"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert noisy_lines(run.stdout + run.stderr) == [], run.stderr[-3000:]  # a user's env
    summary = json.loads(run.stdout[run.stdout.index("{") :])
    assert summary["step"] == 0
    assert math.isfinite(summary["metrics"]["anygpt_eval_librispeech_asr/wer"])
    assert os.path.isfile(os.path.join(model_dir, "eval", "metrics-00000000.json"))
    out_dir = os.path.join(model_dir, "eval")
    assert (f"wrote metrics-00000000.json and predictions-00000000.jsonl to {out_dir}"
            in run.stdout)
    with open(os.path.join(out_dir, "predictions-00000000.jsonl")) as f:
        records = [json.loads(line) for line in f]
    empty = [r for r in records if r["prediction"] == ""]
    assert all(r.get("empty_because") for r in empty)  # every empty answer says why
    counted = sum(e["count"] for e in summary["empty_predictions"].values())
    assert counted == len(empty)


@pytest.mark.slow
def test_trainer_evaluates_every_n_steps(merged_vocab, eval_sets, tmp_path):
    from test_trainer import TASK, register_synthetic_task, tiny_config

    from anygpt_jax.training.trainer import train

    register_synthetic_task(merged_vocab)
    image, speech, music = (eval_sets[k][0] for k in ("image_text", "speech_text", "music_text"))
    gin.bind_parameter("make_mesh.num_devices", 1)
    gin.bind_parameter("register_eval.coco_dirs", [image])
    gin.bind_parameter("register_eval.librispeech_dirs", [speech])
    for key, value in dict(seq_len=160, batch_size=4, max_examples=2, generation=TEXT_ONLY,
                           generation_batch_size=2).items():  # fmt: skip
        gin.bind_parameter(f"EvalOptions.{key}", value)
    model_dir = tmp_path / "run"
    train(model_dir=str(model_dir), train_steps=3, batch_size=2, seq_len=32,
          mixture_or_task_name=TASK, checkpoint_every=3, model_config=tiny_config(merged_vocab),
          register_tasks=False, peak_flops_per_device=1e9, hooks=[EvalHook(2)])  # fmt: skip
    written = sorted(os.listdir(model_dir / "eval"))
    assert "metrics-00000002.json" in written and "metrics-00000003.json" in written
    with open(model_dir / "eval" / "metrics-00000003.json") as f:
        metrics = json.load(f)["metrics"]
    assert math.isfinite(metrics["anygpt_eval_librispeech_asr/teacher_forced/loss/speech"])
    assert "anygpt_eval_coco_caption/cider" in metrics
    # Without eval data the run refuses to start rather than train blind.
    gin.clear_config()
    gin.bind_parameter("make_mesh.num_devices", 1)
    with pytest.raises(ValueError, match="EvalHook is set but no eval task has data"):
        train(model_dir=str(tmp_path / "none"), train_steps=1, batch_size=2, seq_len=32,
              mixture_or_task_name=TASK, checkpoint_every=1,
              model_config=tiny_config(merged_vocab), register_tasks=False,
              hooks=[EvalHook(1)])


def test_an_empty_text_prediction_is_explained(merged_vocab):
    v = merged_vocab
    stops = {v.eos_id, v.token_to_id("<eos>")}
    image = v.modality("image")
    assert loop.empty_text_reason(v, [], stops) == "nothing generated"
    assert loop.empty_text_reason(v, [v.token_to_id("<eos>"), 5], stops) == (
        "stopped at once: the first generated id is <eos>")
    codes = [image.start_id, image.first_id + 1, image.first_id + 2, image.end_id]
    assert loop.empty_text_reason(v, [*codes, v.eos_id], stops) == (
        "no text before the stop: image codes instead")
    records = [{"task": "t", "empty_because": "nothing generated"}, {"task": "t"},
               {"task": "u"}]
    assert loop._empty_predictions(records) == {
        "t": {"count": 1, "of": 2, "reasons": {"nothing generated": 1}}}
