"""End-to-end training (``train --mode e2e``) on the tiny model: LLM LoRA + bridge heads + DiT LoRA on the LM
loss of the plan text plus the flow loss through the event tokens.

Latent targets are fixed tensors standing for the clips' latents (the tiny VAE cannot encode 64 channels).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from test_training import FRAMES, _wav, need_peft, two_rank_run
from audiostory_core.errors import GenerationInterrupted
from audiostory_core.progress import Hooks
from audiostory_core.stages.event_tokens import event_tokens
from audiostory_core.stages.grammar import build_instruction
from audiostory_core.stages.plan import StoryEvent, StoryPlan, generate_plan
from audiostory_core.training.datasets import TrainExample, load_examples
from audiostory_core.training.lora_files import apply_lora, apply_planner_lora, read_lora
from audiostory_core.training.trainer import TrainConfig, Trainer, e2e_data, e2e_terms, plan_sequence

CAPTIONS = ("a pure tone", "white noise hiss")
SECONDS = 1.5
STORY = ("Birds sing at dawn.", 6.0, [(0.0, 2.5, "birds chirp at dawn"), (2.5, 6.0, "a rooster crows")])


def _fresh(tiny_pipeline):
    return copy.deepcopy(tiny_pipeline.models.planner), copy.deepcopy(tiny_pipeline.models.dit)


def _latents(n: int):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(FRAMES, 64, generator=g) * 0.5 + (1 - 2 * (i % 2)) for i in range(n)]


@pytest.fixture(scope="module")
def two(tiny_pipeline):
    """Two one-event plans (a clip alone, its instruction as ``generate --instruction CAPTION`` builds it)."""
    exs = [TrainExample(StoryPlan(build_instruction(c, SECONDS), "", [StoryEvent(c, SECONDS)]), 0,
                        torch.zeros(2, 1), c) for c in CAPTIONS]
    return e2e_data(exs, _latents(2))


def _config(**kw) -> TrainConfig:
    base = dict(mode="e2e", steps=4, batch_size=2, lr=3e-3, rank=4, alpha=4.0, seed=3, llm_rank=8, llm_alpha=16.0)
    base.update(kw)
    return TrainConfig(**base)


def _fixed_terms(planner, dit, data) -> tuple[float, float]:
    """(LM loss, flow loss) on fixed (σ, ε) draws: an observable independent of the training's own draws."""
    g = torch.Generator().manual_seed(123)
    lm = fl = 0.0
    n = 6
    with torch.no_grad():
        for k in range(n):
            i = k % len(data.latents)
            x0 = data.latents[i][None]
            a, b = e2e_terms(planner, dit, [plan_sequence(planner, data.plans[i])], [data.events[i]], x0,
                             torch.randn(x0.shape, generator=g), torch.tensor([(k + 0.5) / n]),
                             torch.tensor([data.seconds[i]]))
            lm, fl = lm + float(a) / n, fl + float(b) / n
    return lm, fl


@pytest.fixture(scope="module")
def trained(tiny_pipeline, two, tmp_path_factory):
    need_peft()
    planner, dit = _fresh(tiny_pipeline)
    before = _fixed_terms(planner, dit, two)
    out = tmp_path_factory.mktemp("e2e")
    result = Trainer(dit, two, _config(steps=12), out, planner=planner).run()
    return planner, dit, result, before, out


def test_e2e_loss_both_terms_fall_on_two_examples(trained, two):
    planner, dit, result, (lm0, fl0), out = trained
    lm1, fl1 = _fixed_terms(planner, dit, two)
    assert lm1 < 0.5 * lm0, (lm0, lm1)
    assert fl1 < 0.8 * fl0, (fl0, fl1)
    log = (out / "train_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,lr,seconds,lm_loss,flow_loss" and len(log) == 13
    last = [float(x) for x in log[-1].split(",")]
    assert last[1] == pytest.approx(last[4] + last[5], rel=1e-4)          # lm_weight = flow_weight = 1


def test_e2e_file_reproduces_the_trained_models_and_strength_0_is_the_base(trained, tiny_pipeline, two):
    planner, dit, result, _, _ = trained
    lf = read_lora(result.lora_path)
    assert lf.metadata["target"] == "e2e" and lf.llm_pairs and lf.heads and lf.pairs
    assert json.loads(lf.metadata["llm_targets"]) == list(planner.config.lora.target_modules)
    assert lf.llm_scale == 2.0 and json.loads(lf.metadata["config"])["mode"] == "e2e"
    plan = two.plans[0]
    trained_tokens = event_tokens(planner, plan).fused
    base_p, base_d = _fresh(tiny_pipeline)
    base_tokens = event_tokens(base_p, plan).fused
    assert not torch.allclose(trained_tokens, base_tokens, atol=1e-3)        # training changed the conditioning
    p1, d1 = _fresh(tiny_pipeline)
    apply_lora(d1, lf, 1.0)
    assert apply_planner_lora(p1, lf, 1.0) == len(lf.llm_pairs) + len(lf.heads)
    assert torch.allclose(event_tokens(p1, plan).fused, trained_tokens, atol=1e-4)
    x, s = torch.stack(two.latents) * 0.5, torch.tensor([0.5, 0.5])
    with torch.no_grad():
        ctx, pooled = d1.condition(torch.cat([trained_tokens, trained_tokens]), torch.tensor(two.seconds))
        assert torch.allclose(d1(x, s, ctx, pooled), dit(x, s, ctx, pooled), atol=1e-4)
    p0, d0 = _fresh(tiny_pipeline)
    apply_lora(d0, lf, 0.0)
    apply_planner_lora(p0, lf, 0.0)
    for a, b in ((p0.llm, base_p.llm), (p0.heads, base_p.heads), (d0, base_d)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(event_tokens(p0, plan).fused, base_tokens)


def _story(tmp_path: Path):
    desc, total, events = STORY
    _wav(tmp_path / "dawn.wav", total)
    row = {"audio": "dawn.wav", "instruction": build_instruction(desc, total),
           "events": [{"start": s, "end": t, "caption": c} for s, t, c in events]}
    (tmp_path / "story.jsonl").write_text(json.dumps(row) + "\n")
    examples, report = load_examples(tmp_path / "story.jsonl", 44100, 2, 8.0)
    assert len(examples) == 2 and not report.skipped
    return e2e_data(examples, _latents(2))


def _emitted(planner) -> list[tuple[str, float]]:
    desc, total, _ = STORY
    plan = generate_plan(planner, desc, total, max_new_tokens=200).plan
    return [(e.caption, round(e.duration, 2)) for e in plan.events]


def test_after_e2e_training_the_planner_emits_the_trained_story(tiny_pipeline, tmp_path):
    """One long recording (instruction + two events): the LLM LoRA learns the plan text, so greedy decoding of
    the instruction emits its events (the tiny LLM only knew its own two stories before). Checked on a fresh
    planner with the saved file applied, i.e. through the file format and the release-style merge. lr 1e-2 makes
    the tiny heads' flow loss spike early; flow_weight 0.05 keeps those spikes from dominating the LLM LoRA's
    gradient (measured: LM loss 4.82 -> 0.085 in 40 steps; with flow_weight 1 the same run decoded garbage)."""
    need_peft()
    data = _story(tmp_path)
    want = [(c, round(t - s, 2)) for s, t, c in STORY[2]]
    planner, dit = _fresh(tiny_pipeline)
    assert _emitted(planner) != want
    result = Trainer(dit, data, _config(steps=40, lr=1e-2, flow_weight=0.05), tmp_path / "run", planner=planner).run()
    assert _emitted(planner) == want
    fresh, _ = _fresh(tiny_pipeline)
    apply_planner_lora(fresh, result.lora_path, 1.0)
    assert _emitted(fresh) == want


def test_e2e_resume_after_an_interrupt_equals_an_uninterrupted_run(tiny_pipeline, two, tmp_path):
    need_peft()
    cfg = _config(steps=4, batch_size=1, grad_accum=2, save_every=2, schedule="cosine", warmup_steps=1,
                  lm_weight=0.5, flow_weight=2.0)
    p, d = _fresh(tiny_pipeline)
    straight = Trainer(d, two, cfg, tmp_path / "a", planner=p).run()
    calls = []
    stop = Hooks(interrupt=lambda: calls.append(1) or len(calls) > 3)    # Cancel before step 4
    p, d = _fresh(tiny_pipeline)
    with pytest.raises(GenerationInterrupted):
        Trainer(d, two, cfg, tmp_path / "b", hooks=stop, planner=p).run()
    assert sorted(q.name for q in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-0000002.pt"]
    p, d = _fresh(tiny_pipeline)
    resumed = Trainer(d, two, cfg, tmp_path / "b", planner=p).run()
    assert len(resumed.losses) == 4
    for x, y in ((resumed.losses, straight.losses), (resumed.lm_losses, straight.lm_losses),
                 (resumed.flow_losses, straight.flow_losses)):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-6)
    assert straight.losses[-1] == pytest.approx(0.5 * straight.lm_losses[-1] + 2.0 * straight.flow_losses[-1],
                                                rel=1e-5)
    a, b = read_lora(tmp_path / "a" / "lora.safetensors"), read_lora(tmp_path / "b" / "lora.safetensors")
    for pa, pb in ((a.pairs, b.pairs), (a.llm_pairs, b.llm_pairs)):
        assert set(pa) == set(pb) and all(torch.allclose(pa[k][1], pb[k][1], atol=1e-5) for k in pa)
    assert set(a.heads) == set(b.heads) and all(torch.allclose(a.heads[k], b.heads[k], atol=1e-5) for k in a.heads)
    assert max(float(v.abs().max()) for v in a.heads.values()) > 1e-5          # the heads did train


def test_cli_train_e2e_writes_an_e2e_file_that_generate_lora_applies(tiny_root, tmp_path, capsys):
    """``train --mode e2e`` from a long-recording manifest (latent cache filled first: the tiny VAE cannot encode)
    writes an e2e file with the CLI's settings."""
    need_peft()
    from safetensors.torch import save_file

    from audiostory_core.cli.main import main
    from audiostory_core.models.config import locate
    from audiostory_core.models.loading import load_models
    from audiostory_core.training.datasets import latent_cache_key

    data = _story(tmp_path)
    frames = json.loads((tiny_root / "Flux_detokenizer" / "config.json").read_text())["audio_seq_len"]
    vae_cfg = dict(load_models(locate(tiny_root), torch.float32, "cpu", planner=False, dit=False).vae.config)
    examples, _ = load_examples(tmp_path / "story.jsonl", 44100, 2, 8.0)
    cache = tmp_path / "cache"
    cache.mkdir()
    for ex in examples:
        save_file({"latents": torch.randn(frames, 64)}, str(cache / f"{latent_cache_key(ex, vae_cfg, frames, 0)}.safetensors"))
    rc = main(["train", "--models", str(tiny_root), "--data", str(tmp_path / "story.jsonl"), "--out",
               str(tmp_path / "run"), "--mode", "e2e", "--steps", "2", "--lm-weight", "0.5", "--llm-rank", "4",
               "--latent-cache", str(cache), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    lf = read_lora(tmp_path / "run" / "lora.safetensors")
    assert lf.metadata["target"] == "e2e" and lf.metadata["llm_rank"] == "4"
    assert json.loads(lf.metadata["config"])["lm_weight"] == 0.5
    assert (tmp_path / "run" / "train_log.csv").read_text().splitlines()[0].endswith(",lm_loss,flow_loss")
    assert data.plans[0] is data.plans[1]


def test_e2e_two_rank_torchrun_equals_one_process_with_the_same_global_batch(tiny_root, tiny_pipeline, two,
                                                                              tmp_path):
    """2 gloo ranks x batch 1 = one process x batch 2: the same per-step losses (both terms) and the same DiT LoRA,
    LLM LoRA and bridge heads. DDP averages the ranks' gradients, one process averages the batch: equal up to
    float summation order: losses within 1e-5 (relative) and LoRA weights within 1e-5; the heads within 1e-4
    (measured 1.7e-5: AdamW divides by sqrt(v), which magnifies the order noise of their small gradients), while
    training moved them by > 1e-3."""
    need_peft()
    data = tmp_path / "data.pt"
    extra = dict(mode="e2e", llm_rank=8, llm_alpha=16.0, lm_weight=0.5, gradient_checkpointing=True)
    torch.save({"mode": "e2e", "instructions": [p.instruction for p in two.plans], "captions": list(CAPTIONS),
                "latents": torch.stack(two.latents), "seconds": torch.tensor(two.seconds), "lr": 3e-3, "seed": 3,
                "config": extra}, data)
    two_rank_run(tiny_root, data, tmp_path / "ddp", steps=3)
    planner, dit = _fresh(tiny_pipeline)
    one = Trainer(dit, two, _config(steps=3, batch_size=2, **extra), tmp_path / "one", planner=planner).run()
    log = [r.split(",") for r in (tmp_path / "ddp" / "train_log.csv").read_text().splitlines()[1:]]
    assert [float(r[4]) for r in log] == pytest.approx(one.lm_losses, rel=1e-5)
    assert [float(r[5]) for r in log] == pytest.approx(one.flow_losses, rel=1e-5)
    a, b = read_lora(tmp_path / "ddp" / "lora.safetensors"), read_lora(one.lora_path)
    assert max(float(b.heads[k].abs().max()) for k in b.heads) > 1e-3                # training moved the weights
    for pa, pb in ((a.pairs, b.pairs), (a.llm_pairs, b.llm_pairs)):
        assert set(pa) == set(pb) and pa
        for k in pa:
            for x, y in zip(pa[k], pb[k]):
                assert torch.allclose(x, y, atol=1e-5), k
    assert set(a.heads) == set(b.heads)
    worst = max(float((a.heads[k] - b.heads[k]).abs().max()) for k in a.heads)
    assert worst < 1e-4, worst


def _watch(planner, dit):
    """Hooks on the MLP of the first LLM decoder layer, the first DiT double block and the LM head: how often each starts
    (a pre-hook: a recomputation stops once it has what the backward needs, before the module returns) and the
    dtype of its output (what it really computed in). Inside the LLM layer: transformers checkpoints the layer's
    ``forward``, so the layer's own hooks would not see the recomputation."""
    calls = {"llm": 0, "dit": 0, "lm_head": 0}
    dtypes = {"llm": set(), "dit": set(), "lm_head": set()}
    handles = []
    for name, mod in (("llm", planner.llm.model.layers[0].mlp), ("dit", dit.transformer.transformer_blocks[0]),
                      ("lm_head", planner.llm.lm_head)):
        def pre(m, args, name=name):
            calls[name] += 1

        def post(m, args, out, name=name):
            dtypes[name].add((out[0] if isinstance(out, tuple) else out).dtype)
        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return calls, dtypes, handles


def _run(tiny_pipeline, two, out, **kw):
    planner, dit = _fresh(tiny_pipeline)
    calls, dtypes, handles = _watch(planner, dit)
    result = Trainer(dit, two, _config(**kw), out, planner=planner).run()
    for h in handles:
        h.remove()
    return planner, dit, result, (calls, dtypes)


def test_e2e_gradient_checkpointing_recomputes_and_gives_the_same_losses_and_weights(tiny_pipeline, two,
                                                                                       tmp_path):
    """Oracle: the same run without checkpointing. Checkpointing recomputes each LLM layer and DiT block in the
    backward (each runs twice per sample and step, observed by a forward hook) and changes no number beyond float
    noise: losses within 1e-5 (relative), LoRA and heads within 1e-5."""
    need_peft()
    steps = 3
    _, _, plain, (calls0, _) = _run(tiny_pipeline, two, tmp_path / "plain", steps=steps)
    _, _, ckpt, (calls1, _) = _run(tiny_pipeline, two, tmp_path / "ckpt", steps=steps, gradient_checkpointing=True)
    assert calls0 == {"llm": 2 * steps, "dit": steps, "lm_head": 2 * steps}     # 2 plans, one DiT batch a step
    assert calls1 == {"llm": 4 * steps, "dit": 2 * steps, "lm_head": 2 * steps}
    assert ckpt.lm_losses == pytest.approx(plain.lm_losses, rel=1e-5)
    assert ckpt.flow_losses == pytest.approx(plain.flow_losses, rel=1e-5)
    a, b = read_lora(ckpt.lora_path), read_lora(plain.lora_path)
    for pa, pb in ((a.pairs, b.pairs), (a.llm_pairs, b.llm_pairs)):
        assert all(torch.allclose(pa[k][1], pb[k][1], atol=1e-5) for k in pb)
    assert all(torch.allclose(a.heads[k], b.heads[k], atol=1e-5) for k in b.heads)


def test_e2e_bf16_computes_in_bf16_trains_and_stays_near_fp32(tiny_pipeline, two, tmp_path):
    """bf16 autocast: the LLM layer and the DiT block output bf16 (fp32 without it), the LM head fp32 (a 152k-way
    softmax over 8-bit-mantissa logits would be coarse); both loss terms fall on the fixed fp32 probe. Against
    the fp32 run: the first step (same weights, only the precision differs) within 1 %; the LM loss within 5 %
    at every step (measured: 3.1 % at most); the flow loss, whose single steps are noisy at this lr (a step
    differs by up to 27 %), within 10 % summed over the run (measured 3 %)."""
    need_peft()
    _, _, fp32, (_, dtypes32) = _run(tiny_pipeline, two, tmp_path / "fp32", steps=12)
    planner, dit = _fresh(tiny_pipeline)
    lm0, fl0 = _fixed_terms(planner, dit, two)
    planner, dit, bf16, (_, dtypes16) = _run(tiny_pipeline, two, tmp_path / "bf16", steps=12, bf16=True)
    f32, b16 = {torch.float32}, {torch.bfloat16}
    assert dtypes32 == {"llm": f32, "dit": f32, "lm_head": f32}
    assert dtypes16 == {"llm": b16, "dit": b16, "lm_head": f32}       # the LM loss's logits stay fp32
    lm1, fl1 = _fixed_terms(planner, dit, two)
    assert lm1 < 0.5 * lm0 and fl1 < 0.8 * fl0, (lm0, lm1, fl0, fl1)
    assert bf16.lm_losses[0] == pytest.approx(fp32.lm_losses[0], rel=0.01)
    assert bf16.flow_losses[0] == pytest.approx(fp32.flow_losses[0], rel=0.01)
    assert bf16.lm_losses == pytest.approx(fp32.lm_losses, rel=0.05)
    assert sum(bf16.flow_losses) == pytest.approx(sum(fp32.flow_losses), rel=0.1)
