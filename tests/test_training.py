"""Stage 5 on the tiny model: the five objectives start where theory says, training moves the margins the
right way, Delta carries no gradient, LoRA's reference is the adapter-disabled model, precomputed reference
log-probs change nothing, and the refiner learns its assistant turns (and only those)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shared.config import ActorTrainConfig, LoraSettings, SftConfig
from shared.templates import judge_messages, refine_conversation
from workers.training import encode_chat

pytestmark = pytest.mark.timeout(300)

BETA = 0.1
LOG2 = math.log(2.0)
IPO_INIT = (1.0 / (2.0 * BETA)) ** 2

PAIRS = [
    {
        "prompt": f"Write a short poem about {topic} in {n} sentences.",
        "chosen": " ".join(["The sea was calm and blue."] * n),
        "rejected": "the river light, quiet stone, " * (n + 1),
    }
    for n, topic in enumerate(["the sea", "rain", "a garden", "the moon", "coffee", "winter"], start=1)
]
GROUPS = [
    {
        "x1": f"Describe {topic} in exactly {n} sentences.",
        "y1": " ".join(["It is quiet."] * n),
        "x2": f"Describe {topic} in exactly {n + 2} sentences.",
        "y2": " ".join(["It is quiet."] * (n + 2)),
    }
    for n, topic in enumerate(["rain", "bees", "a river", "music"], start=1)
]
OBJECTIVES = ("dpo", "ipo", "sr_dpo", "sr_ipo", "iopo")


def records_for(objective: str) -> list[dict[str, str]]:
    return GROUPS if objective == "iopo" else PAIRS


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matrices on a shared 2-core machine: a second intra-op thread makes each step ~40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with random weights (no imprinting: builds in seconds; training needs no skill)."""
    from workers.models.tiny import tiny_model_cached

    return tiny_model_cached(tmp_path_factory.mktemp("train-models"), seed=0, imprint_steps=0)


@pytest.fixture(scope="module")
def tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def actor_cfg(objective: str, **overrides) -> ActorTrainConfig:
    values = dict(
        objective=objective,
        beta=BETA,
        sft_weight=0.0,
        learning_rate=1e-3,
        max_steps=4,
        batch_size=2,
        grad_accum=1,
        max_length=256,
        warmup_ratio=0.0,
        # the objective's arithmetic is checked in float32; mixed precision has tests of its own
        bf16=False,
    )
    return ActorTrainConfig(**(values | overrides))


def make_trainer(model_path: Path, tokenizer, objective: str, records=None, peft=None, **overrides):
    """A PreferenceTrainer built the way train_actor builds one (same argument mapping)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from workers.training.actor import PreferenceConfig, PreferenceTrainer, common_training_kwargs

    cfg = actor_cfg(objective, **overrides)
    _, kwargs = common_training_kwargs(cfg, model_path.parent / "unused-out", seed=0)
    args = PreferenceConfig(
        objective=objective,
        beta=cfg.beta,
        sft_weight=cfg.sft_weight,
        lam=cfg.lam,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        **kwargs,
    )
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return PreferenceTrainer(
        model,
        args=args,
        train_dataset=Dataset.from_list(records or records_for(objective)),
        processing_class=tokenizer,
        peft_config=peft,
    )


def first_batch(trainer, size: int = 2) -> dict[str, torch.Tensor]:
    """The first ``size`` prepared examples, collated (no shuffling: comparable across trainers)."""
    rows = [trainer.train_dataset[i] for i in range(size)]
    return trainer._prepare_inputs(trainer.data_collator(rows))


# --- the actor ---------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_first_step_loss_is_the_theoretical_value(model_path, tokenizer, objective) -> None:
    trainer = make_trainer(model_path, tokenizer, objective)
    inputs = first_batch(trainer)
    expected_rows = 8 if objective == "iopo" else 4
    assert inputs["input_ids"].shape[0] == expected_rows
    assert ("sr_input_ids" in inputs) == objective.startswith("sr_")
    loss = trainer.compute_loss(trainer.model, inputs)
    expected = IPO_INIT if objective.endswith("ipo") and objective != "iopo" else LOG2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_fused_log_probs_match_plain_logits(model_path, tokenizer) -> None:
    from workers.training.actor import score_records

    trainer = make_trainer(model_path, tokenizer, "iopo")
    inputs = first_batch(trainer)
    with torch.no_grad():
        fused, counts = trainer.sequence_logps(
            trainer.model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        )
    plain = score_records(trainer.model, tokenizer, GROUPS[:2], "iopo")  # [N, S]
    assert torch.allclose(fused.view(4, 2).T, plain, atol=1e-4)
    # The response span is the assistant content plus the end-of-turn token, never ChatML's trailing newline.
    completion = trainer.train_dataset[0]["seq_completion_ids"][0]
    assert tokenizer.decode(completion) == GROUPS[0]["y1"] + tokenizer.eos_token
    assert int(counts[0]) == len(completion)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_a_few_steps_raise_the_preference_margin(model_path, tokenizer, tmp_path, objective) -> None:
    from transformers import AutoModelForCausalLM

    from workers.training.actor import preference_margins, score_records, train_actor

    records = records_for(objective)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    before = preference_margins(score_records(base, tokenizer, records, objective), objective).sum()
    cfg = actor_cfg(objective, max_steps=6, learning_rate=5e-4 if objective.endswith("ipo") else 1e-3)
    metrics = train_actor(model_path, records, cfg, tmp_path / "out", seed=0)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    after = preference_margins(score_records(trained, tokenizer, records, objective), objective).sum()
    assert float(after) > float(before) + 1.0, (objective, float(before), float(after))

    assert metrics["steps"] == 6 and len(metrics["loss_curve"]) == 6
    expected_first = IPO_INIT if objective in ("ipo", "sr_ipo") else LOG2
    assert metrics["first_loss"] == pytest.approx(expected_first, rel=1e-4)
    assert metrics["margin_start"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["margin_end"] > 0 and metrics["distributed"] == "none"
    assert metrics["peak_rss_mb"] > 0 and metrics["train_seconds"] > 0
    assert (tmp_path / "out" / "tokenizer_config.json").exists()
    marker = json.loads((tmp_path / "out" / "spar_train.json").read_text())
    assert marker["objective"] == objective and marker["lora"] is False


@pytest.mark.parametrize("objective", ["dpo", "iopo"])
def test_sft_term_adds_the_chosen_nll(model_path, tokenizer, objective) -> None:
    trainer = make_trainer(model_path, tokenizer, objective, sft_weight=0.5)
    inputs = first_batch(trainer)
    lp = trainer.batch_logps(trainer.model, inputs)
    nll = (-lp.policy / lp.counts).mean(dim=1)  # per-token NLL of each sequence, averaged over the batch
    nll = nll[0] + nll[3] if objective == "iopo" else nll[0]  # iopo: y1|x1 and y2|x2
    loss = trainer.compute_loss(trainer.model, inputs)
    assert loss.item() == pytest.approx(LOG2 + 0.5 * nll.item(), rel=1e-5)


def test_delta_is_computed_without_gradient(model_path, tokenizer) -> None:
    trainer = make_trainer(model_path, tokenizer, "sr_dpo", lam=1.0)
    inputs = first_batch(trainer)
    # Move the policy away from the reference so that Delta is not zero.
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    lp = trainer.batch_logps(trainer.model, inputs)
    assert lp.policy.requires_grad
    assert lp.policy_p is not None and not lp.policy_p.requires_grad and lp.policy_p.grad_fn is None
    assert not lp.ref.requires_grad and lp.ref_p is not None and not lp.ref_p.requires_grad
    per_item, _, metrics = trainer.objective_losses(lp)
    assert float(metrics["sr/delta"].abs().sum()) > 0
    # With Delta a constant, the gradient is exactly that of -log sigma(beta m - lam Delta).
    m = (lp.policy[0] - lp.ref[0]) - (lp.policy[1] - lp.ref[1])
    by_hand = -torch.nn.functional.logsigmoid(BETA * m - 1.0 * metrics["sr/delta"])
    assert torch.allclose(per_item, by_hand, atol=1e-6)


def test_lora_reference_is_the_adapter_disabled_model(model_path, tokenizer, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from workers.training.actor import lora_config, score_records, train_actor

    lora = LoraSettings(r=8, alpha=16, dropout=0.0)
    trainer = make_trainer(model_path, tokenizer, "dpo", peft=lora_config(lora), max_steps=5)
    assert trainer.ref_model is None  # no second copy: the reference is the base without the adapter
    inputs = first_batch(trainer)
    ref_before, _ = trainer.reference_logps(inputs)
    with torch.no_grad():
        policy_before = trainer.batch_logps(trainer.model, inputs).policy
    trainer.train()
    ref_after, _ = trainer.reference_logps(inputs)
    with torch.no_grad():
        policy_after = trainer.batch_logps(trainer.model, inputs).policy
    assert torch.allclose(ref_before, ref_after, atol=1e-5)
    assert not torch.allclose(policy_before, policy_after, atol=1e-3)
    base = score_records(AutoModelForCausalLM.from_pretrained(model_path), tokenizer, PAIRS[:2], "dpo")
    assert torch.allclose(ref_after.T, base, atol=1e-4)

    metrics = train_actor(model_path, PAIRS, actor_cfg("dpo", lora=lora, max_steps=3), tmp_path / "lora")
    assert metrics["lora"] is True and metrics["base_model"] == str(model_path)
    assert (tmp_path / "lora" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "lora" / "spar_train.json").read_text())["base_model"] == str(model_path)
    assert metrics["first_loss"] == pytest.approx(LOG2, rel=1e-4)


@pytest.mark.parametrize("objective", ["dpo", "iopo", "sr_dpo"])
def test_precomputed_reference_gives_the_same_first_step(model_path, tokenizer, objective) -> None:
    live = make_trainer(model_path, tokenizer, objective)
    cached = make_trainer(model_path, tokenizer, objective, precompute_ref_log_probs=True)
    assert cached.ref_model is None  # full fine-tuning: the policy scored the reference before training
    table = torch.tensor(cached.train_dataset["ref_logps"])
    width = {"dpo": 2, "iopo": 4, "sr_dpo": 4}[objective]
    assert table.shape == (len(records_for(objective)), width)

    inputs_live = first_batch(live)
    inputs_cached = first_batch(cached)
    assert "ref_logps" in inputs_cached and "ref_logps" not in inputs_live
    ref, ref_p = live.reference_logps(inputs_live)
    rows = ref if ref_p is None else torch.cat([ref, ref_p])
    assert torch.allclose(inputs_cached["ref_logps"], rows.T, atol=1e-4)  # same values, same fixed order
    loss_live = live.compute_loss(live.model, inputs_live)
    loss_cached = cached.compute_loss(cached.model, inputs_cached)
    assert loss_cached.item() == pytest.approx(loss_live.item(), abs=1e-5)
    assert loss_cached.item() == pytest.approx(LOG2, rel=1e-5)


def test_iopo_needs_groups_and_pairs_need_pairs(model_path, tokenizer, tmp_path) -> None:
    from workers.training.actor import train_actor

    with pytest.raises(ValueError, match="IOPO groups"):
        train_actor(model_path, PAIRS, actor_cfg("iopo"), tmp_path / "x")
    with pytest.raises(ValueError, match="preference pairs"):
        train_actor(model_path, GROUPS, actor_cfg("dpo"), tmp_path / "y")


def test_distributed_settings() -> None:
    from workers.training.actor import CHECKPOINTING, distributed_settings

    cfg = actor_cfg("dpo", distributed="deepspeed_zero3")
    strategy, kwargs = distributed_settings(cfg, cuda_available=True)
    assert strategy == "deepspeed_zero3" and kwargs["deepspeed"]["zero_optimization"]["stage"] == 3
    strategy, kwargs = distributed_settings(actor_cfg("dpo", distributed="fsdp"), cuda_available=True)
    assert strategy == "fsdp" and kwargs["fsdp"] is True and kwargs[CHECKPOINTING] is False
    custom = actor_cfg("dpo", distributed="deepspeed_zero3", accelerate_config="ds.json")
    assert distributed_settings(custom, cuda_available=True)[1] == {"deepspeed": "ds.json"}


def test_deepspeed_missing_is_a_one_line_error_with_the_fix(monkeypatch) -> None:
    import importlib.util

    from workers.training.actor import distributed_settings

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "deepspeed" else real(name))
    with pytest.raises(ValueError, match=r"train\.distributed=deepspeed_zero3 needs DeepSpeed.*\[train\]"):
        distributed_settings(actor_cfg("dpo", distributed="deepspeed_zero3"))


def test_precision_bf16_weights_on_gpu_fp32_on_cpu() -> None:
    from workers.training.actor import common_training_kwargs, model_dtype

    cfg = actor_cfg("dpo")
    assert model_dtype(cfg, cuda=True) == torch.bfloat16 and model_dtype(cfg, cuda=False) == torch.float32
    assert model_dtype(actor_cfg("dpo", dtype="float32"), cuda=True) == torch.float32
    assert model_dtype(actor_cfg("dpo", dtype="bfloat16"), cuda=False) == torch.bfloat16
    _, kwargs = common_training_kwargs(actor_cfg("dpo", bf16=False), Path("unused"), seed=0)
    assert kwargs["bf16"] is torch.cuda.is_available()  # bf16 autocast follows bf16 weights


@pytest.mark.parametrize(
    ("bf16", "cuda", "native", "expected"),
    [
        ("auto", True, False, "bfloat16"),  # GPU: bfloat16 weights, as before
        ("auto", False, True, "bf16_mixed"),  # a CPU with AVX512-BF16/AMX: autocast, fp32 master weights
        ("auto", False, False, "float32"),  # AVX2-only CPU: emulated bfloat16 would be slower
        (True, False, False, "bf16_mixed"),  # asked for explicitly: honoured anywhere
        (False, False, True, "float32"),
    ],
)
def test_precision_resolves_per_machine(bf16, cuda, native, expected) -> None:
    from workers.training.precision import resolve_precision

    assert resolve_precision(actor_cfg("dpo", bf16=bf16), cuda=cuda, native_bf16=native) == expected


def test_mixed_precision_is_in_the_stage_hash_and_the_resolved_record() -> None:
    from shared.config import RunConfig
    from workers.resolved import resolved_settings

    base = {"prompts": "p.jsonl", "actor": {"model": "tiny"}, "refiner": {"model": "tiny"}}
    auto = RunConfig.model_validate(base)
    off = RunConfig.model_validate({**base, "train_actor": {"bf16": False}})
    assert auto.stage_hash("train_actor") != off.stage_hash("train_actor")
    assert auto.stage_hash("sample") == off.stage_hash("sample")
    record = resolved_settings(off, "train_actor")["train_actor"]
    assert record["precision"] == "float32"
    assert torch.__version__.startswith(record["torch"]) and record["trl"] and record["transformers"]


@pytest.mark.parametrize("enabled", [True, False])
def test_gradient_checkpointing_setting_is_honoured(model_path, tokenizer, enabled) -> None:
    trainer = make_trainer(model_path, tokenizer, "dpo", gradient_checkpointing=enabled)
    trainer.train()  # TRL turns checkpointing on (its default) or off when training starts
    assert trainer.model.is_gradient_checkpointing is enabled


def test_checkpoints_cut_off_by_a_kill_are_never_resumed_from(tmp_path) -> None:
    from workers.training.outcome import checkpoint_settings, prune_incomplete, resume_point

    for step, complete in ((4, True), (8, True), (12, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert resume_point(tmp_path) == tmp_path / "checkpoint-8"
    assert prune_incomplete(tmp_path) == [tmp_path / "checkpoint-12"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert resume_point(tmp_path / "absent") is None
    assert checkpoint_settings(None, 100) == {"save_strategy": "no"}
    assert checkpoint_settings(tmp_path, 4)["save_steps"] == 4


def test_the_clock_asks_for_a_checkpoint_between_step_counts_but_not_at_the_last_step() -> None:
    from transformers import TrainerControl, TrainerState

    from workers.training.timed_checkpoints import TimedCheckpoints

    now = [0.0]
    clock = TimedCheckpoints(60.0, clock=lambda: now[0])
    state, control = TrainerState(max_steps=10), TrainerControl()
    clock.on_train_begin(None, state, control)
    saved = []
    for step in range(1, 11):
        now[0] += 25.0  # 25 s a step: every third step passes the minute
        state.global_step = step
        control.should_save = False
        clock.on_step_end(None, state, control)
        if control.should_save:
            saved.append(step)
            clock.on_save(None, state, control)
    assert saved == [3, 6, 9]  # 10 is the last: the final model is saved anyway
    now[0] += 59.0
    clock.on_save(None, state, control)  # a save_steps checkpoint restarts the count
    state.global_step, control.should_save = 5, False
    now[0] += 30.0
    clock.on_step_end(None, state, control)
    assert control.should_save is False


def test_a_slow_training_checkpoints_by_the_clock_and_a_rerun_resumes_from_it(model_path, tmp_path) -> None:
    from workers.training.actor import train_actor

    cfg = actor_cfg("dpo", max_steps=4, save_steps=1000, save_minutes=1e-6)  # every step passes it
    first = train_actor(model_path, PAIRS, cfg, tmp_path / "out", seed=0, checkpoint_dir=tmp_path / "ckpt")
    # steps 1-3 checkpointed by the clock (save_steps never comes), 4 by transformers at the end;
    # the two newest are kept
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("checkpoint-"))
    assert names == ["checkpoint-3", "checkpoint-4"], names
    assert first["resumed_from_step"] == 0
    shutil.rmtree(tmp_path / "ckpt" / "checkpoint-4")  # as if killed during the last step
    again = train_actor(model_path, PAIRS, cfg, tmp_path / "out2", seed=0, checkpoint_dir=tmp_path / "ckpt")
    assert again["resumed_from_step"] == 3 and again["steps"] == 4


def test_clock_checkpoints_need_a_checkpoint_folder_and_one_process() -> None:
    from types import SimpleNamespace

    from workers.training.outcome import add_timed_checkpoints

    added = []
    trainer = SimpleNamespace(
        args=SimpleNamespace(save_strategy="steps", world_size=1), add_callback=added.append
    )
    assert add_timed_checkpoints(trainer, 15.0, Path("ckpt")) is True and len(added) == 1
    assert add_timed_checkpoints(trainer, None, Path("ckpt")) is False  # off
    assert add_timed_checkpoints(trainer, 15.0, None) is False  # nowhere to checkpoint
    trainer.args.world_size = 2  # ranks would not agree on the step
    assert add_timed_checkpoints(trainer, 15.0, Path("ckpt")) is False
    trainer.args.world_size, trainer.args.save_strategy = 1, "no"  # save_steps: None
    assert add_timed_checkpoints(trainer, 15.0, Path("ckpt")) is False
    assert added[0].seconds == 900.0


def test_launch_runs_a_job_file(model_path, tmp_path) -> None:
    from workers.training import launch

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS[:4]))
    job = {
        "model_path": str(model_path),
        "data_file": str(data),
        "out_dir": str(tmp_path / "out"),
        "config": {"objective": "dpo", "max_steps": 2, "batch_size": 2, "grad_accum": 1, "max_length": 256},
    }
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    assert launch.main(["--role", "actor", "--job", str(job_file)]) == 0
    metrics = json.loads((tmp_path / "out" / "train_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["role"] == "actor"
    argv = launch.accelerate_command("actor", job_file, 8, launch.job_config("actor", job), progress=True)
    assert argv[1:3] == ["-m", "accelerate.commands.launch"] and "workers.training.launch" in argv
    assert (
        argv[argv.index("--num_processes") + 1] == "8" and "--multi_gpu" in argv and argv[-1] == "--progress"
    )
    one = launch.accelerate_command("actor", job_file, 1, launch.job_config("actor", job))
    assert "--multi_gpu" not in one  # accelerate refuses it below 2; single_rank_env sets the ranks
    assert launch.single_rank_env(1)["WORLD_SIZE"] == "1" and launch.single_rank_env(2) == {}
    summary = launch.error_summary(["noise", "[rank1]: ValueError: bad data", "ChildFailedError:", "end"])
    assert summary.splitlines()[:2] == ["errors:", "[rank1]: ValueError: bad data"]
    native = launch.error_summary(
        [
            "terminate called after throwing an instance of 'gloo::IoException'",
            "  what():  Connection reset",
            "x",
        ]
    )
    assert native.splitlines()[:3] == [
        "errors:",
        "terminate called after throwing an instance of 'gloo::IoException'",
        "  what():  Connection reset",
    ]
    assert "errors:" not in launch.error_summary(["ErrorFree run ended", "a whatever(): line"])


# --- the refiner -------------------------------------------------------------------------------

JUDGMENT = (
    "Step-by-step verification: The keyword is missing.\n"
    "Final Judgement (if the Output accurately follows the Prompt): No"
)
REFINED = (
    "Reflection on how to refine the Output: Add the missing keyword once.\n"
    "Final Refined Output: [[start]] The river was quiet and blue. [[end]]"
)


def rft_examples() -> list[dict]:
    examples = []
    for n, topic in enumerate(["the sea", "rain", "a garden"], start=2):
        prompt = f"Write about {topic} in {n} sentences and include the keyword 'river'."
        response = " ".join(["The sea was calm."] * n)
        judged = judge_messages(prompt, response) + [{"role": "assistant", "content": JUDGMENT}]
        examples.append({"messages": judged})
        examples.append(
            {
                "messages": refine_conversation(prompt, response, JUDGMENT)
                + [{"role": "assistant", "content": REFINED}]
            }
        )
    return examples


def test_label_mask_covers_exactly_the_assistant_turns(tokenizer) -> None:
    from workers.training.refiner import encode_example

    chat = rft_examples()[1]["messages"]  # user, assistant (judgment), user, assistant (refinement)
    ids, mask = encode_chat(tokenizer, chat)
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(chat, tokenize=False)
    spans, current = [], []
    for token, bit in zip(ids, mask, strict=True):
        if bit:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    eos = tokenizer.eos_token
    assert [tokenizer.decode(s) for s in spans] == [JUDGMENT + eos, REFINED + eos]
    unmasked = tokenizer.decode([t for t, bit in zip(ids, mask, strict=True) if not bit])
    assert JUDGMENT not in unmasked and REFINED not in unmasked and chat[0]["content"] in unmasked

    full = encode_example(tokenizer, chat)
    assert [t if b else -100 for t, b in zip(ids, mask, strict=True)] == full["labels"]
    last = encode_example(tokenizer, chat, assistant_turns="last")
    assert tokenizer.decode([t for t in last["labels"] if t != -100]) == REFINED + eos


def test_refiner_rft_lowers_the_target_nll(model_path, tmp_path) -> None:
    from workers.training.refiner import train_refiner

    cfg = SftConfig(
        learning_rate=1e-3, max_steps=8, batch_size=2, grad_accum=1, max_length=512, warmup_ratio=0.1
    )
    metrics = train_refiner(model_path, rft_examples(), cfg, tmp_path / "refiner", seed=0)
    assert metrics["steps"] == 8 and len(metrics["loss_curve"]) == 8
    assert metrics["target_nll_after"] < metrics["target_nll_before"] - 0.5, metrics
    # TRL's logged loss is the same masked NLL: it starts at the measured value (random weights: ~log V).
    assert metrics["loss_curve"][0] == pytest.approx(metrics["target_nll_before"], rel=0.05)
    assert (tmp_path / "refiner" / "model.safetensors").exists()
    assert (tmp_path / "refiner" / "tokenizer_config.json").exists()


def test_the_nll_probe_is_the_first_examples_and_zero_measures_nothing(
    model_path, tmp_path, monkeypatch
) -> None:
    from workers.training import refiner

    probed: list[int] = []
    real = refiner.mean_target_nll

    def counting(model, rows, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        probed.append(len(rows))
        return real(model, rows, *args, **kwargs)

    monkeypatch.setattr(refiner, "mean_target_nll", counting)
    examples = rft_examples()
    assert len(examples) > 2
    cfg = SftConfig(learning_rate=1e-3, max_steps=1, batch_size=1, grad_accum=1, max_length=256, nll_probe=2)
    metrics = refiner.train_refiner(model_path, examples, cfg, tmp_path / "two", seed=0)
    assert probed == [2, 2] and metrics["target_nll_before"] > 0
    probed.clear()
    off = cfg.model_copy(update={"nll_probe": 0})
    none = refiner.train_refiner(model_path, examples, off, tmp_path / "none", seed=0)
    assert probed == [] and none["target_nll_before"] is None and none["target_nll_after"] is None
    with pytest.raises(ValueError, match="nll_probe"):
        SftConfig(nll_probe=-1)


def test_refiner_lora_saves_the_adapter_and_its_base(model_path, tmp_path) -> None:
    from workers.training.refiner import train_refiner

    cfg = SftConfig(
        learning_rate=1e-3,
        max_steps=4,
        batch_size=2,
        grad_accum=1,
        max_length=512,
        lora=LoraSettings(r=8, alpha=16),
    )
    metrics = train_refiner(model_path, rft_examples(), cfg, tmp_path / "adapter", seed=0)
    assert metrics["lora"] is True and metrics["base_model"] == str(model_path)
    assert metrics["target_nll_after"] < metrics["target_nll_before"]
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()


# --- mixed precision (bf16 autocast over float32 master weights) -------------------------------


def test_mixed_precision_trains_like_float32(model_path, tmp_path) -> None:
    """The same pairs, steps and seed in float32 and in bf16 mixed precision (forced, so it runs on any
    CPU): both start at exactly log 2 (policy and reference are computed in the same precision), the
    curves stay within bfloat16's rounding of each other, and the margins move the same way.

    Tolerance: bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.2% per operand); summed
    over a response's ~30 token log-probs (each |logp| ~ 5-10) that is at most a few hundredths of a
    nat per sequence sum, and beta = 0.1 scales it down tenfold in the loss; 0.01 is about 30 times
    what was measured here (max |diff| 3.5e-4 over the 8 steps; end margins 7.27 and 7.26).
    """
    from workers.training.actor import train_actor

    runs = {}
    for bf16 in (False, True):
        cfg = actor_cfg("dpo", bf16=bf16, max_steps=8, learning_rate=5e-3)
        runs[bf16] = train_actor(model_path, PAIRS, cfg, tmp_path / f"bf16-{bf16}", seed=0)
    fp32, mixed = runs[False], runs[True]
    assert fp32["precision"] == "float32" and mixed["precision"] == "bf16_mixed"
    assert mixed["first_loss"] == pytest.approx(LOG2, rel=1e-5)
    assert len(fp32["loss_curve"]) == len(mixed["loss_curve"]) == 8
    gap = max(abs(a - b) for a, b in zip(fp32["loss_curve"], mixed["loss_curve"], strict=True))
    assert gap < 0.01, (fp32["loss_curve"], mixed["loss_curve"])
    assert fp32["last_loss"] < fp32["first_loss"] and mixed["last_loss"] < mixed["first_loss"]
    assert fp32["margin_end"] > 0 and mixed["margin_end"] > 0
    assert mixed["margin_end"] == pytest.approx(fp32["margin_end"], rel=0.1, abs=0.05)


def test_refiner_sft_in_mixed_precision_records_it_and_learns(model_path, tmp_path) -> None:
    from workers.training.refiner import train_refiner

    cfg = SftConfig(
        learning_rate=1e-3, max_steps=6, batch_size=2, grad_accum=1, max_length=512, bf16=True, nll_probe=4
    )
    metrics = train_refiner(model_path, rft_examples(), cfg, tmp_path / "refiner-mixed", seed=0)
    assert metrics["precision"] == "bf16_mixed"
    assert metrics["dtype"] == "float32"  # master weights stay float32 (the saved version too)
    assert metrics["target_nll_after"] < metrics["target_nll_before"], metrics
