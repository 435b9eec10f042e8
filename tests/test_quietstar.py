"""The Quiet-STaR training call: the reference reproduces the official implementation's numbers, the fast path
reproduces the reference on Llama, Mistral and Qwen2 models, and bad input is refused clearly."""
import contextlib
import dataclasses
import functools
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the HF integration tests need transformers")

from backends import KERNEL_IMPLS  # noqa: E402
from host_waits import HostWaits  # noqa: E402
from tolerance import (  # noqa: E402
    gradient_spreads, max_abs_error, relative_error, rms_norm_in_model_dtype, spread_bound,
)
from quietstar_fast import (  # noqa: E402
    QuietStar, QuietStarOutput, apply_quietstar_kernels, revert_quietstar_kernels,
)

DATA = torch.load(Path(__file__).parent / "data" / "official_quietstar_tiny.pt", weights_only=True)
SIZES = DATA["meta"]["sizes"]
OWN = ("start_embedding", "end_embedding", "talk_head.")


def _official_model(**quietstar_options) -> QuietStar:
    """The test vector's tiny Mistral (its README gives the config), wrapped with the official hyperparameters."""
    config = transformers.MistralConfig(
        vocab_size=302, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=1e4, sliding_window=4096,
        tie_word_embeddings=False, pad_token_id=2, eos_token_id=2, bos_token_id=1, attn_implementation="sdpa",
    )
    ids = DATA["meta"]["token_ids"]
    return QuietStar(transformers.MistralForCausalLM(config), start_token_id=ids["startthought"],
                     end_token_id=ids["endthought"], init_token_id=ids["dash(---)"], n_ahead=SIZES["N"],
                     n_ahead_talk=SIZES["T"], n_passes=SIZES["P"], **quietstar_options)


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _parameter(model: QuietStar, official_name: str) -> torch.nn.Parameter:
    name = official_name if official_name.startswith(OWN) else f"model.{official_name}"
    return dict(model.named_parameters())[name]


@functools.cache
def _official_step(case_name: str, impl: str, kernel_impl: str, dtype: torch.dtype = torch.float32,
                   device: str = "cpu", options: tuple = ()):
    """One training step on a test-vector case: (the output moved to the CPU, {official parameter name: gradient});
    ``options``: extra QuietStar (name, value) pairs."""
    case = DATA["cases"][case_name]
    model = _official_model(impl=impl, kernel_impl=kernel_impl, **dict(options))
    model.load_official_state_dict(case["state_dict"])
    model.to(device=device, dtype=dtype)
    with rms_norm_in_model_dtype(model) if dtype == torch.float64 else contextlib.nullcontext():
        out = model(case["input_ids"].to(device), case["attention_mask"].to(device),
                    gumbel_noise=case["gumbel_noise"].to(device=device, dtype=dtype), output_hidden_states=True)
        out.loss.backward()
    out = dataclasses.replace(out, **{f.name: _to_cpu(getattr(out, f.name)) for f in dataclasses.fields(out)})
    return out, {name: _parameter(model, name).grad.detach().cpu() for name in case["grads"]}


def _values(source) -> dict[str, torch.Tensor]:
    """Every compared value of a step, named as the test vector names them (``source``: a case or a step output)."""
    if isinstance(source, QuietStarOutput):
        def get(name):
            value = getattr(source, "loss" if name == "total_loss" else name)
            return value[:, :, :-1] if name == "action_logprobs" else value  # the vector omits the last step
    else:
        get = source.__getitem__
    values = {name: get(name) for name in ("hidden_states", "talk_weights", "base_nll", "action_logprobs",
                                            "reward_raw", "reward_baselined", "reward_clamped", "nll_loss",
                                            "policy_loss", "total_loss")}
    for name in ("talk_nll", "base_nll_for_reward"):
        values.update({f"{name}[{i}]": item for i, item in enumerate(get(name))})
    return {name: value.detach().double() for name, value in values.items()}


def _within(name: str, error: float, bound: float) -> None:
    assert error <= bound, f"{name}: error {error:.3g} > bound {bound:.3g}"


def _check_against_official(case_name: str, impl: str, kernel_impl: str, device: str = "cpu", options: tuple = ()):
    case = DATA["cases"][case_name]
    out, grads = _official_step(case_name, impl, kernel_impl, device=device, options=options)
    ref32, ref32_grads = _official_step(case_name, "reference", "auto")
    ref64, ref64_grads = _official_step(case_name, "reference", "auto", torch.float64)
    # The sampled thoughts are exact: the same noise, and no near-tie in the vector's logits.
    assert torch.equal(out.thought_tokens, case["thought_tokens"])
    assert torch.equal(ref64.thought_tokens, case["thought_tokens"]), "fp64 sampled other thoughts: no oracle"
    official, ours, fp32, fp64 = _values(case), _values(out), _values(ref32), _values(ref64)
    # Bounds from the step's own fp32 rounding (tests/tolerance.py). The reference: the strong claim, equal to the
    # official fp32 numbers up to that rounding. The fast step: against the fp64 step, as FlashAttention's rule
    # (the reference's check covers the official numbers).
    for name, expected in official.items():
        magnitude = float(expected.abs().max()) if expected.numel() else 0.0
        target = expected if impl == "reference" else fp64[name]
        _within(name, max_abs_error(ours[name], target),
                spread_bound(max_abs_error(fp32[name], fp64[name]), magnitude))
    spreads = gradient_spreads(ref32_grads, ref64_grads)
    for name, expected in case["grads"].items():
        target = expected if impl == "reference" else ref64_grads[name]
        _within(f"{name} gradient (relative)", relative_error(grads[name], target),
                spread_bound(spreads[name], 1.0))


@pytest.mark.parametrize("case_name", ["official_init", "nonzero"])
def test_reference_reproduces_the_official_code(case_name):
    # Same operations in the same order: on the kind of CPU where the vector was made the reference matches to the
    # last bit; elsewhere within the fp32 rounding of the step (tests/tolerance.py).
    _check_against_official(case_name, "reference", "auto")


@pytest.mark.parametrize("case_name", ["official_init", "nonzero"])
def test_fast_path_reproduces_the_official_code(case_name):
    _check_against_official(case_name, "fast", "torch")


def test_official_vector_bounds_catch_a_changed_step():
    """Negative control: the derived bounds reject a step that differs from the official one in a detail, the
    REINFORCE temperature off by 0.1% (3.003 instead of 3)."""
    with pytest.raises(AssertionError, match="error"):
        _check_against_official("nonzero", "reference", "auto", options=(("reinforce_temperature", 3.003),))


@pytest.mark.parametrize("kernel_impl", KERNEL_IMPLS)
def test_fast_path_with_kernels_reproduces_the_official_code(kernel_impl, device):
    # On CPU the Triton kernels run in the interpreter (the CUDA ones in test_cuda_kernels_emulated.py); on a GPU,
    # both compiled.
    _check_against_official("nonzero", "fast", kernel_impl, device=device)


def test_every_parameter_gets_the_official_gradient_set():
    case = DATA["cases"]["nonzero"]
    model = _official_model(impl="reference")
    model.load_official_state_dict(case["state_dict"])
    model(case["input_ids"], case["attention_mask"], gumbel_noise=case["gumbel_noise"]).loss.backward()
    official_names = set(case["grads"])
    ours = {name if name.startswith(OWN) else name.removeprefix("model.") for name, _ in model.named_parameters()}
    assert ours == official_names
    assert all(p.grad is not None for p in model.parameters())


def test_meta_embedding_init_matches_the_official_lazy_init():
    state = DATA["cases"]["official_init"]["state_dict"]
    model = _official_model()
    model.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(OWN)})
    fresh = QuietStar(model.model, start_token_id=300, end_token_id=301, init_token_id=7, n_ahead=6, n_ahead_talk=3)
    torch.testing.assert_close(fresh.start_embedding.detach(), state["start_embedding"], rtol=0, atol=0)
    torch.testing.assert_close(fresh.end_embedding.detach(), state["end_embedding"], rtol=0, atol=0)
    assert torch.count_nonzero(fresh.talk_head[0][4].weight) == 0


# ---- fast vs reference on the three supported families --------------------------------------------------------

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    # Llama 3.x's rope scaling, with an original context short enough that the tiny sequences reach its ramp.
    "llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 7}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    # q/k norms; layer 1 a sliding-window layer, layer 0 full: per-layer windows in one cache.
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {
        "head_dim": 8, "use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1}),
    # Scaled embeddings, (1 + w) norms, query_pre_attn_scalar's softmax scale, a sliding and a full layer.
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, {
        "head_dim": 8, "query_pre_attn_scalar": 12, "sliding_window": 6,
        "layer_types": ["sliding_attention", "full_attention"]}),
    # Fused qkv and gate/up projections, partial rotary embedding.
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, {"partial_rotary_factor": 0.5}),
    # q/k norms over the whole projection.
    "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM, {}),
}


def _tiny_pair(family: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    config_cls, model_cls, extra = FAMILIES[family]
    config = config_cls(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        tie_word_embeddings=False, pad_token_id=0, eos_token_id=0, attn_implementation="sdpa",
                        **extra)
    models = []
    for impl in ("reference", "fast"):
        torch.manual_seed(seed)
        quiet = QuietStar(model_cls(config), start_token_id=95, end_token_id=96, init_token_id=5, n_ahead=5,
                          n_ahead_talk=3, n_passes=2, impl=impl, kernel_impl="torch")
        with torch.no_grad():  # a non-zero mixing head, so rewards and the policy loss are non-zero
            quiet.talk_head[0][4].weight.normal_(0, 1.0)
        models.append(quiet.to(dtype))
    return models


def _run_step(model: QuietStar, dtype: torch.dtype, decisive_noise: bool = False):
    """One training step on fixed data. ``decisive_noise``: noise of 60 on one random token per row and 0 elsewhere,
    so that the sampled thoughts do not depend on the rounding of the logits (bf16 flips Gumbel near-ties)."""
    torch.manual_seed(1)
    ids = torch.randint(1, 95, (2, 16))
    mask = torch.ones_like(ids)
    ids[1, 11:] = 0  # right padding, as the official collator pads
    mask[1, 11:] = 0
    if decisive_noise:
        noise = torch.zeros(2, 4, 16, 97).scatter_(-1, torch.randint(1, 95, (2, 4, 16, 1)), 60.0)
    else:
        noise = -torch.empty(2, 4, 16, 97).exponential_().log()
    out = model(ids, mask, gumbel_noise=noise.to(dtype))
    out.loss.backward()
    return out, {name: p.grad for name, p in model.named_parameters()}


FIELDS = ("loss", "nll_loss", "policy_loss", "base_nll", "reward_raw", "reward_clamped", "action_logprobs",
          "talk_weights")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fast_equals_reference_in_float64(family):
    """In fp64 the two paths compute the same function: thought tokens and every loss part agree to ~1e-12. HF's
    RMSNorm and rotary embedding run in fp32 even in an fp64 model, and the fast path sums the P passes' gradients of
    the shared step 0 before its backward (the reference after), so parameter gradients differ at fp32 rounding
    (measured <= 1.1e-7 relative; any semantic difference is orders of magnitude larger)."""
    reference, fast = _tiny_pair(family, dtype=torch.float64)
    (ref, ref_grads), (got, got_grads) = _run_step(reference, torch.float64), _run_step(fast, torch.float64)
    assert torch.equal(ref.thought_tokens, got.thought_tokens)
    assert float(ref.policy_loss.detach()) != 0.0
    for field in FIELDS:
        torch.testing.assert_close(getattr(got, field), getattr(ref, field), rtol=1e-9, atol=1e-9, msg=field)
    for ref_part, got_part in zip(ref.talk_nll, got.talk_nll, strict=True):
        torch.testing.assert_close(got_part, ref_part, rtol=1e-9, atol=1e-9)
    for name, grad in ref_grads.items():
        relative = float((got_grads[name] - grad).norm() / grad.norm().clamp_min(1e-300))
        assert relative <= 1e-6, f"{family} {name}: relative gradient difference {relative:.2e}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fast_matches_reference_in_float32(family):
    """fp32: the fast path's error against the fp64 reference is at most twice the fp32 reference's own error plus
    1e-4 relative (FlashAttention's rule): the 1e6-weighted policy term amplifies rounding in both paths alike."""
    reference, fast = _tiny_pair(family)
    assert_step_follows_the_flash_attention_rule(family, _run_step(fast, torch.float32),
                                                 _run_step(reference, torch.float32), torch.float32)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_talk_gradients_in_the_forward_give_the_same_step(family):
    """talk_grad_in_forward: the same loss, every field and every gradient as the default fast step (fp64; both
    paths sum the same terms in other orders), and the fp32 step follows FlashAttention's rule against the fp64
    reference."""
    _, fast = _tiny_pair(family, dtype=torch.float64)
    default, default_grads = _run_step(fast, torch.float64)
    fast.zero_grad(set_to_none=True)
    fast.talk_grad_in_forward = True
    got, got_grads = _run_step(fast, torch.float64)
    for field in FIELDS:
        torch.testing.assert_close(getattr(got, field), getattr(default, field), rtol=1e-12, atol=1e-12, msg=field)
    for got_part, part in zip(got.talk_nll, default.talk_nll, strict=True):
        torch.testing.assert_close(got_part, part, rtol=1e-12, atol=1e-12)
    for name, grad in default_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    reference, fast32 = _tiny_pair(family)
    fast32.talk_grad_in_forward = True
    assert_step_follows_the_flash_attention_rule(family, _run_step(fast32, torch.float32),
                                                 _run_step(reference, torch.float32), torch.float32)


def test_talk_gradients_in_the_forward_count_rows_as_the_official_non_zero_mean():
    """A valid talk row whose NLL is exactly 0 is left out of the official non-zero mean's count; the term and its
    gradients must follow that count, not the count of valid targets. Here row 2 of the first step has logit 800 for
    its target and 0 for every other id, so its NLL underflows to exactly 0 in fp64."""
    from quietstar_fast import mixed_cross_entropy
    from quietstar_fast.quietstar.config import QuietStarConfig
    from quietstar_fast.quietstar.fast import _talk_terms_with_gradients
    from quietstar_fast.quietstar.objective import nonzero_mean

    cfg = QuietStarConfig(n_ahead_talk=2, original_loss_weight=0.3)
    weight = torch.randn(7, 5, dtype=torch.float64)
    weight[:, 0] = (torch.arange(7) == 3).double()
    mixed = [torch.randn(6, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)]
    mixed[0][2] = torch.tensor([800.0, 0, 0, 0, 0], dtype=torch.float64)
    targets = [torch.tensor([1, 4, 3, -100, 0, 6]), torch.tensor([2, -100, 5, 1])]
    results = []
    for formed_in_forward in (True, False):
        leaves = [x.clone().requires_grad_(True) for x in (*mixed, weight)]
        if formed_in_forward:
            talk_nll, talk_loss = _talk_terms_with_gradients(cfg, leaves[:2], targets, leaves[2])
        else:
            talk_nll = [mixed_cross_entropy(h, leaves[2], t, impl="reference") for h, t in zip(leaves[:2], targets)]
            talk_loss = (1 - cfg.original_loss_weight) * sum(nonzero_mean(nll) for nll in talk_nll) / 2
        results.append((talk_loss, torch.autograd.grad(talk_loss, leaves), talk_nll))
    (loss, grads, _), (official_loss, official_grads, official_nll) = results
    assert float(official_nll[0][2].detach()) == 0.0 and int((official_nll[0] != 0).sum()) == 4  # 5 valid, 4 non-0
    torch.testing.assert_close(loss, official_loss, rtol=1e-13, atol=0)
    for got, want in zip(grads, official_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


# The rule's small absolute term, relative to the exact value's norm: 1e-4 in fp32; bf16's unit roundoff in bf16.
RULE_SLACK = {torch.float32: 1e-4, torch.bfloat16: 2.0 ** -8}


def assert_step_follows_the_flash_attention_rule(family: str, step, reference_step, dtype: torch.dtype,
                                                 decisive_noise: bool = False):
    """(output, gradients) of a step in ``dtype`` against the fp64 reference step of the same tiny model: the error of
    every loss part and gradient is at most twice the same-dtype reference's plus ``RULE_SLACK`` relative."""
    oracle, oracle_grads = _run_step(_tiny_pair(family, dtype=torch.float64)[0], torch.float64, decisive_noise)
    (got, got_grads), (ref, ref_grads) = step, reference_step
    assert torch.equal(oracle.thought_tokens, got.thought_tokens)
    slack = RULE_SLACK[dtype]

    def check(name, ours, baseline, truth, floor=0.0):
        truth = truth.detach().double()
        error = float((ours.detach().double() - truth).norm())
        bound = 2 * float((baseline.detach().double() - truth).norm()) + slack * float(truth.norm()) + floor
        assert error <= bound, f"{family} {dtype} {name}: error {error:.3g} > bound {bound:.3g}"

    for field in FIELDS:
        check(field, getattr(got, field), getattr(ref, field), getattr(oracle, field))
    # Gradients that are nearly zero in exact arithmetic (e.g. key biases) carry only rounding noise, whose size is set
    # by the whole gradient: the dtype's rounding at the global gradient norm is the floor.
    global_norm = float(torch.cat([g.flatten() for g in oracle_grads.values()]).norm())
    for name, grad in oracle_grads.items():
        check(name, got_grads[name], ref_grads[name], grad, floor=torch.finfo(dtype).eps * global_norm)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_step_matches_the_reference_under_the_flash_attention_rule(family):
    """A bf16 model (weights, activations, attention and LM-head inputs in bf16; softmax statistics, NLLs, rewards and
    the loss in fp32): the fast step's error against the fp64 reference is at most twice the bf16 reference's plus
    bf16's unit roundoff relative, for every loss part and gradient. Decisive noise keeps the thoughts equal (Gumbel
    near-ties flip in bf16); the fast step is the more accurate one (the reference's bf16 logits put its rewards off
    by up to 150%, the fast step's by 6%)."""
    reference, fast = _tiny_pair(family, dtype=torch.bfloat16)
    step = _run_step(fast, torch.bfloat16, decisive_noise=True)
    assert step[0].loss.dtype == torch.float32
    assert_step_follows_the_flash_attention_rule(family, step, _run_step(reference, torch.bfloat16, True),
                                                 torch.bfloat16, decisive_noise=True)


def test_sample_temperature_switch_is_honoured_by_both_paths():
    """The official quirk (temperature-1 sampling) is the default; the fix changes the thoughts in both paths alike."""
    reference, fast = _tiny_pair("llama", dtype=torch.float64)
    ids = torch.randint(1, 95, (2, 12))
    noise = -torch.empty(2, 4, 12, 97, dtype=torch.float64).exponential_().log()
    default = fast(ids, gumbel_noise=noise).thought_tokens
    for model in (reference, fast):
        model.quietstar_config = dataclasses.replace(model.quietstar_config, sample_temperature=0.25)
    hot_reference, hot_fast = reference(ids, gumbel_noise=noise), fast(ids, gumbel_noise=noise)
    assert torch.equal(hot_reference.thought_tokens, hot_fast.thought_tokens)
    assert not torch.equal(hot_fast.thought_tokens, default)
    torch.testing.assert_close(hot_fast.loss, hot_reference.loss, rtol=1e-9, atol=1e-9)


def test_generated_noise_runs_and_is_seeded():
    _, fast = _tiny_pair("llama")
    ids = torch.randint(1, 95, (2, 12))
    draws = [fast(ids, generator=torch.Generator().manual_seed(3)).thought_tokens for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    assert not torch.isin(draws[0], torch.tensor([95, 96])).any()


@pytest.mark.parametrize("layers, n_ahead", [(1, 4), (3, 4), (1, 7)])
def test_a_whole_training_call_waits_for_the_device_once(layers, n_ahead, device):
    """QuietStar.__call__ plus backward, input checks included: one host wait (the right-padding check of the
    attention mask), whatever the number of layers and thought steps."""
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      pad_token_id=0, eos_token_id=0, attn_implementation="sdpa")
    quiet = QuietStar(transformers.LlamaForCausalLM(config), start_token_id=95, end_token_id=96, init_token_id=5,
                      n_ahead=n_ahead, n_ahead_talk=2).to(device)
    ids = torch.randint(1, 95, (2, 8), device=device)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with HostWaits() as waits:
        quiet(ids, mask).loss.backward()
    assert waits.ops == ["aten::_local_scalar_dense"]


@pytest.mark.parametrize("kernel_impl", ["auto", "torch", *KERNEL_IMPLS])
def test_fast_step_never_makes_the_host_wait(kernel_impl, device):
    """The fast step's forward and backward (after QuietStar.forward's input checks) never read a value back from the
    device, with padding and in-step thought sampling; on a GPU CUDA's sync debug mode checks the same."""
    from quietstar_fast.quietstar.module import run_step

    _, fast = _tiny_pair("llama")
    fast.kernel_impl = kernel_impl
    fast.to(device)
    ids = torch.randint(1, 95, (2, 8), device=device)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    generator = torch.Generator(device=device).manual_seed(0)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_sync_debug_mode("error")
    try:
        with HostWaits() as waits:
            run_step(fast, ids, mask, None, generator).loss.backward()
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    assert waits.ops == []


def test_kernels_apply_and_revert_leave_ordinary_calls_unchanged():
    config_cls, model_cls, _ = FAMILIES["llama"]
    config = config_cls(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    model = model_cls(config)
    ids = torch.randint(0, 50, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    before = model(ids, attention_mask=mask).logits
    apply_quietstar_kernels(model)
    assert model.config._attn_implementation == "quietstar_thought"
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, before)
    revert_quietstar_kernels(model)
    assert model.config._attn_implementation == "sdpa"


# ---- bad input ---------------------------------------------------------------------------------------------------

def test_bad_input_is_refused():
    reference, _ = _tiny_pair("llama")
    model = reference.model
    with pytest.raises(ValueError, match="model_type"):
        QuietStar(transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2)),
                  start_token_id=0, end_token_id=1, init_token_id=2)
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        apply_quietstar_kernels(transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2)))
    with pytest.raises(ValueError, match="n_ahead must be at least 3"):
        QuietStar(model, start_token_id=95, end_token_id=96, init_token_id=5, n_ahead=2)
    with pytest.raises(ValueError, match="end_token_id=200 is outside"):
        QuietStar(model, start_token_id=95, end_token_id=200, init_token_id=5)
    with pytest.raises(ValueError, match="pad_token_id=97 is outside"):
        QuietStar(model, start_token_id=95, end_token_id=96, init_token_id=5, pad_token_id=97)
    with pytest.raises(ValueError, match="impl must be one of"):
        QuietStar(model, start_token_id=95, end_token_id=96, init_token_id=5, impl="turbo")
    with pytest.raises(ValueError, match="kernel_impl must be one of"):
        QuietStar(model, start_token_id=95, end_token_id=96, init_token_id=5, kernel_impl="reference")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        reference(torch.randint(1, 95, (1, 125)))
    left_padded = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        reference(torch.randint(1, 95, (1, 8)), left_padded)
    with pytest.raises(ValueError, match="gumbel_noise must have shape"):
        reference(torch.randint(1, 95, (1, 8)), gumbel_noise=torch.zeros(2, 2, 8, 96))


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_a_config_without_pad_or_eos_ids_ignores_no_label(impl):
    """A config built by hand (no pad, no eos id) trains and generates. No label is ignored, and the filler of the
    teacher-forced tail (0) changes nothing: the step equals one with a pad id that never occurs in the data."""
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                      pad_token_id=None, eos_token_id=None, bos_token_id=None)
    steps = []
    for pad_token_id in (None, 94):
        torch.manual_seed(0)
        quiet = QuietStar(transformers.LlamaForCausalLM(config), start_token_id=95, end_token_id=96, init_token_id=5,
                          pad_token_id=pad_token_id, n_ahead=5, n_ahead_talk=3, impl=impl,
                          kernel_impl="torch").double()
        assert quiet.pad_token_id == pad_token_id
        with torch.no_grad():
            quiet.talk_head[0][4].weight.normal_(0, 1.0)
        torch.manual_seed(1)
        ids = torch.randint(0, 94, (2, 12))
        noise = -torch.empty(2, 4, 12, 97, dtype=torch.float64).exponential_().log()
        out = quiet(ids, gumbel_noise=noise)
        out.loss.backward()
        steps.append((out, {name: p.grad for name, p in quiet.named_parameters()}))
    (without_pad, grads), (with_unused_pad, expected_grads) = steps
    for field in FIELDS:  # the same function: fp64 rounding differences at most
        value, expected = getattr(without_pad, field), getattr(with_unused_pad, field)
        if field == "talk_weights":  # reported at every position; those past the end (talk step k: the last k) see
            tail = quiet.quietstar_config.n_ahead_talk  # the filler, which is all that differs
            value, expected = value[:, :, :-tail], expected[:, :, :-tail]
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14, msg=field)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-12, atol=1e-14, msg=name)
    generated = quiet.generate(ids[:1, :4], max_new_tokens=3)  # no eos id anywhere: runs to max_new_tokens
    assert generated.sequences.shape == (1, 7)


# ---- thinking generation -----------------------------------------------------------------------------------------

def _uncached_next_token(quiet: QuietStar, prefix: torch.Tensor, thought: torch.Tensor) -> torch.Tensor:
    """The greedy next token recomputed from scratch: [prefix, start, thought, end] in one causal pass."""
    embed = quiet.model.get_input_embeddings()
    scale = quiet.quietstar_config.embedding_scale
    batch = prefix.shape[0]
    parts = [embed(prefix), (scale * quiet.start_embedding[0]).expand(batch, 1, -1), embed(thought),
             (scale * quiet.end_embedding[0]).expand(batch, 1, -1)]
    hidden = quiet.model.get_decoder()(inputs_embeds=torch.cat(parts, dim=1)).last_hidden_state
    base, thought_end = hidden[:, prefix.shape[1] - 1], hidden[:, -1]
    weight = quiet.talk_head[0](torch.cat([base, thought_end], dim=-1))
    logits = ((1 - weight) * base + weight * thought_end) @ quiet.model.get_output_embeddings().weight.T
    logits[:, [quiet.start_token_id, quiet.end_token_id]] = float("-inf")
    return logits.argmax(dim=-1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generation_with_a_kept_cache_equals_recomputing_from_scratch(family):
    _, fast = _tiny_pair(family)
    prompt = torch.randint(1, 95, (2, 7))
    out = fast.generate(prompt, max_new_tokens=4, eos_token_id=None, generator=torch.Generator().manual_seed(0))
    assert out.sequences.shape == (2, 11) and out.thoughts.shape == (2, 4, fast.quietstar_config.num_thought_tokens)
    assert torch.equal(out.sequences[:, :7], prompt)
    with torch.no_grad():
        for t in range(4):
            prefix = out.sequences[:, :7 + t]
            assert torch.equal(_uncached_next_token(fast, prefix, out.thoughts[:, t]), out.sequences[:, 7 + t])


def test_generation_never_emits_meta_tokens_and_stops_at_eos():
    _, fast = _tiny_pair("llama")
    with torch.no_grad():  # make the delimiters the most likely tokens: they must still never be emitted
        weight = fast.model.get_output_embeddings().weight
        weight[[95, 96]] = weight[[95, 96]] * 50
    prompt = torch.randint(1, 95, (3, 5))
    out = fast.generate(prompt, max_new_tokens=6, do_sample=True, eos_token_id=None,
                        generator=torch.Generator().manual_seed(1))
    assert out.sequences.shape == (3, 11)
    assert not torch.isin(out.sequences[:, 5:], torch.tensor([95, 96])).any()
    assert not torch.isin(out.thoughts, torch.tensor([95, 96])).any()
    with torch.no_grad():  # all-zero logits: greedy picks id 0, the eos here, so every row stops at once
        weight.zero_()
    out = fast.generate(prompt, max_new_tokens=6, eos_token_id=0)
    assert out.sequences.shape == (3, 6) and torch.all(out.sequences[:, -1] == 0)


def test_shortest_thought_has_no_policy_term():
    """n_ahead = 3: start and end only, no sampled token, so no REINFORCE term (not a NaN mean of nothing)."""
    config_cls, model_cls, _ = FAMILIES["llama"]
    config = config_cls(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa", pad_token_id=0)
    ids = torch.randint(1, 95, (2, 8))
    losses = []
    for impl in ("reference", "fast"):
        torch.manual_seed(0)
        quiet = QuietStar(model_cls(config), start_token_id=95, end_token_id=96, init_token_id=5, n_ahead=3,
                          n_ahead_talk=1, impl=impl)
        out = quiet(ids)
        assert out.thought_tokens.shape == (0, 4, 8) and float(out.policy_loss) == 0.0
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[1], losses[0])
