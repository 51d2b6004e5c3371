#!/usr/bin/env python
"""Mutation testing (issues 18 and 40): plant one bug at a time in components/ (the maths) or pipelines/ (the wiring:
guidance composition, seeds, cache keys, champion comparison, keep_best, resume) and run the tests that must catch it.

Each mutant below replaces one exact snippet of one file. A pipelines/ mutant runs its stage's own tests (real Ray and
MLflow, minutes each) before the fast tier; `--only wiring` runs those. The script never touches the checkout it lives
in: it copies the tracked and untracked-but-not-ignored files into a temporary folder (one per job), mutates the copy,
runs

    python -m pytest -x -q -p no:cacheprovider <golden test files first> <the other tests/components files>

there with ADM_SHARED pointing at the shared folder, restores the file, and deletes the copies at the end (also on
Ctrl-C or SIGTERM). A mutant is "caught" when pytest fails (or errors, or runs past the per-mutant timeout) and
"missed" when the fast tier stays green. Before any mutant runs, every original snippet must occur exactly once in its
file and every mutated file must compile, so the table stays true as the code changes; then the unmutated tier must
pass in the copy (the baseline), or no score would mean anything.

    python scripts/mutants.py --list
    python scripts/mutants.py --only guidance --no-baseline
    python scripts/mutants.py --json mutants.json          # all of them, about 40-60 min on 2 busy cores

Exit status: 0 when every mutant was caught, 1 when some were missed, 2 on a usage or table error.
"""

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN_FIRST = ("test_golden_networks.py", "test_golden_diffusion.py", "test_golden_guidance.py",
                "test_golden_superres.py", "test_golden_inception.py")


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str  # under components/, or pipelines/... from the checkout's root
    original: str  # exact snippet, must occur once in the file
    replacement: str
    description: str
    tests: tuple = ()  # the stage's own tests, run before the fast tier (pipelines/ wiring: real Ray and MLflow)

    @property
    def path(self) -> str:
        return self.file if self.file.startswith("pipelines/") else f"components/{self.file}"


M = Mutant
MUTANTS = [
    # --- diffusion.py: schedules, posterior, learned-range variance, respacing -------------------------------------
    M("diffusion.linear_end", "diffusion.py", "scale * 0.0001, scale * 0.02,", "scale * 0.0001, scale * 0.01,",
      "linear schedule ends at beta 0.01 instead of 0.02"),
    M("diffusion.cosine_offset", "diffusion.py", "math.cos((t + 0.008) / 1.008 * math.pi / 2)",
      "math.cos(t * math.pi / 2)",
      "cosine schedule without the s = 0.008 offset"),
    M("diffusion.max_beta", "diffusion.py", "max_beta: float = 0.999", "max_beta: float = 0.99",
      "cosine betas clipped at 0.99 instead of 0.999"),
    M("diffusion.posterior_variance", "diffusion.py",
      "self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - ac)",
      "self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev)",
      "posterior variance without the / (1 - alpha_bar_t)"),
    M("diffusion.logvar_clip", "diffusion.py",
      "np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))",
      "np.log(np.maximum(self.posterior_variance, 1e-20))",
      "posterior log-variance not clipped at t = 0 (released: t = 0 takes the t = 1 value)"),
    M("diffusion.mean_coef1", "diffusion.py", "betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - ac)",
      "betas * np.sqrt(ac) / (1.0 - ac)", "posterior mean coef1 with sqrt(abar_t) instead of sqrt(abar_{t-1})"),
    M("diffusion.mean_coef2", "diffusion.py", "(1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - ac)",
      "(1.0 - self.alphas_cumprod_prev) * alphas / (1.0 - ac)", "posterior mean coef2 with alpha_t, not sqrt(alpha_t)"),
    M("diffusion.q_sample_scale", "diffusion.py", "self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)",
      "self.sqrt_one_minus_alphas_cumprod = 1.0 - ac", "q_sample noise scaled by 1 - abar, not sqrt(1 - abar)"),
    M("diffusion.xstart_from_eps", "diffusion.py", "- extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps",
      "+ extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps", "x_0 from eps with the wrong sign"),
    M("diffusion.learned_range_swap", "diffusion.py", "log_variance = frac * max_log + (1 - frac) * min_log",
      "log_variance = frac * min_log + (1 - frac) * max_log", "learned range: v = 1 gives beta~_t instead of beta_t"),
    M("diffusion.learned_range_frac", "diffusion.py", "frac = (var_values + 1) / 2", "frac = var_values",
      "learned range: v used as the fraction (no (v + 1) / 2)"),
    M("diffusion.fixed_large", "diffusion.py", "large = np.append(self.posterior_variance[1], self.betas[1:])",
      "large = self.betas", "fixed-large variance: t = 0 takes beta_0, not the posterior variance at t = 1"),
    M("diffusion.no_clip", "diffusion.py", "pred_xstart = pred_xstart.clamp(-1, 1)", "pred_xstart = pred_xstart",
      "clip_denoised ignored"),
    M("diffusion.predict_xstart", "diffusion.py", "if self.config.predict_xstart:", "if False:",
      "predict_xstart ignored: the output is always read as eps"),
    M("diffusion.rescale_timesteps", "diffusion.py", "(1000.0 / self.original_num_steps)",
      "(1000.0 / self.num_timesteps)", "rescale_timesteps scales by the respaced T, not the original"),
    M("diffusion.respacing_round", "config/respacing.py", "steps.append(start + round(position))",
      "steps.append(start + int(position))", "respacing floors the fractional stride instead of rounding"),
    M("diffusion.timestep_map", "diffusion.py",
      "mapped = torch.as_tensor(self.timestep_map, device=t.device, dtype=t.dtype)[t]", "mapped = t",
      "respaced process: the network sees respaced t, not the original timesteps"),
    M("diffusion.respaced_betas", "diffusion.py", "new_betas.append(1 - alphas_cumprod[i] / last)",
      "new_betas.append(betas[i])", "respaced betas taken from the full schedule, not 1 - abar_i / abar_prev"),
    # --- losses.py: KL, discretized likelihood, hybrid loss ----------------------------------------------------------
    M("losses.kl_ratio", "losses.py", "torch.exp(logvar1 - logvar2)", "torch.exp(logvar2 - logvar1)",
      "KL: variance ratio inverted"),
    M("losses.kl_mean_term", "losses.py", "(mean1 - mean2) ** 2 * torch.exp(-logvar2)",
      "(mean1 - mean2) ** 2 * torch.exp(-logvar1)", "KL: mean term divided by the wrong variance"),
    M("losses.edge_bins_swapped", "losses.py",
      "torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))",
      "torch.where(x < -0.999, log_one_minus_cdf_min, torch.where(x > 0.999, log_cdf_plus, log_cdf_delta))",
      "discretized likelihood: the open bins at -1 and +1 swapped"),
    M("losses.edge_bins_closed", "losses.py", "torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta)",
      "log_cdf_delta", "discretized likelihood: no open bin at +1"),
    M("losses.bin_width", "losses.py", "centered_x + 1.0 / 255.0", "centered_x + 2.0 / 255.0",
      "discretized likelihood: upper bin edge at x + 2/255"),
    M("losses.no_detach", "losses.py", "eps_out.detach()", "eps_out", "hybrid loss: L_vlb also trains the mean"),
    M("losses.rescaled_kl", "losses.py", '"loss": vb * diffusion.num_timesteps', '"loss": vb',
      "use_kl returns the unscaled bound, not RESCALED_KL (T x)"),
    M("losses.mean_flat", "losses.py", "x.mean(dim=list(range(1, x.ndim)))", "x.sum(dim=list(range(1, x.ndim)))",
      "mean_flat sums instead of averaging"),
    M("losses.kl_nats", "losses.py", 'out["log_variance"])) / math.log(2.0)', 'out["log_variance"]))',
      "KL term in nats, not bits"),
    M("losses.vb_dropped", "losses.py", 'terms["mse"] + terms["vb"] if', 'terms["mse"] if',
      "the L_vlb term left out of the hybrid loss"),
    M("losses.decoder_t", "losses.py", "torch.where(t == 0, nll, kl)", "torch.where(t == 1, nll, kl)",
      "decoder NLL used at t = 1 instead of t = 0"),
    M("losses.vb_clipped", "losses.py", "x_t, t, clip_denoised=False)", "x_t, t, clip_denoised=True)",
      "L_vlb computed with a clipped x_0 (released: unclipped)"),
    M("losses.rescale_learned_sigmas", "losses.py", "(diffusion.num_timesteps / 1000.0)",
      "(1000.0 / diffusion.num_timesteps)", "rescale_learned_sigmas scales L_vlb by 1000 / T, not T / 1000"),
    M("losses.top5", "losses.py", "hit.any(dim=-1).float()", "hit.all(dim=-1).float()",
      "top-5 correctness needs the label at every rank"),
    M("losses.classifier_clean", "losses.py", "logits = classifier(x_t, diffusion.model_timesteps(t))",
      "logits = classifier(x_start, diffusion.model_timesteps(t))",
      "the noisy classifier is trained on clean x_0 instead of x_t"),
    # --- sampling.py: DDPM and DDIM steps -----------------------------------------------------------------------------
    M("sampling.ddpm_std", "sampling.py", 'torch.exp(0.5 * out["log_variance"]) * z',
      'torch.exp(out["log_variance"]) * z',
      "DDPM noise scaled by the variance, not the standard deviation"),
    M("sampling.noise_at_t0", "sampling.py", "(t != 0).float()", "(t != -1).float()",
      "noise added at the last step (t = 0) too"),
    M("sampling.ddpm_clip_ignored", "sampling.py",
      "x, t, clip_denoised, model_kwargs, cost)\n            if cond_fn is not None:\n"
      "                out = condition_mean",
      "x, t, True, model_kwargs, cost)\n            if cond_fn is not None:\n"
      "                out = condition_mean", "DDPM loop always clips x_0 (clip_denoised ignored)"),
    M("sampling.ddim_clip_ignored", "sampling.py",
      "x, t, clip_denoised, model_kwargs, cost)\n            if cond_fn is not None:\n"
      "                out = condition_score",
      "x, t, True, model_kwargs, cost)\n            if cond_fn is not None:\n"
      "                out = condition_score", "DDIM loop always clips x_0 (clip_denoised ignored)"),
    M("sampling.ddim_sigma", "sampling.py", "eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))", "eta * 1.0",
      "DDIM sigma without the sqrt((1 - abar_prev) / (1 - abar)) factor"),
    M("sampling.ddim_direction", "sampling.py", "torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps",
      "torch.sqrt(1 - alpha_bar_prev) * eps", "DDIM direction term ignores sigma^2"),
    M("sampling.ddim_xstart_coef", "sampling.py", 'out["pred_xstart"] * torch.sqrt(alpha_bar_prev)',
      'out["pred_xstart"] * torch.sqrt(alpha_bar)', "DDIM scales x_0 by sqrt(abar_t), not sqrt(abar_{t-1})"),
    # --- sampling.py: DPM-Solver++(2M), EDM's Heun, the solvers' timesteps (issue 22) ------------------------------
    M("sampling.dpm_ratio", "sampling.py", "(1 + h / (2 * h_prev)) * x0 - h / (2 * h_prev) * x0_prev",
      "(1 + h_prev / (2 * h)) * x0 - h_prev / (2 * h) * x0_prev", "DPM-Solver++(2M): r = h_i / h_{i-1}, inverted"),
    M("sampling.dpm_alpha", "sampling.py", "- alpha[s] * np.expm1(-h) * d", "- alpha[t] * np.expm1(-h) * d",
      "DPM-Solver++: the x_0 term scaled by alpha of the step's start, not its end"),
    M("sampling.heun_sigma_shift", "sampling.py", "sigmas = [float(trained[t]) for t in timesteps] + [0.0]",
      "sigmas = [float(trained[max(t - 1, 0)]) for t in timesteps] + [0.0]",
      "Heun: each noise level taken one trained timestep off the one the network sees"),
    M("sampling.heun_euler", "sampling.py", "return x + (sigma_next - sigma) * (d + d_next) / 2", "return x_next",
      "Heun: the second-order correction dropped (Euler, at twice the evaluations)"),
    M("sampling.heun_churn_noise", "sampling.py", "np.sqrt(sigma_hat**2 - sigmas[i] ** 2) * s_noise",
      "sigma_hat * s_noise", "Heun churn adds noise of std sigma_hat, not sqrt(sigma_hat^2 - sigma_i^2)"),
    M("sampling.solver_timesteps_distinct", "sampling.py", "out.append(min(max(t, num - 1 - i), highest))",
      "out.append(t)", "solver timesteps not kept distinct: crowded targets repeat a timestep"),
    M("samplers.heun_evals", "config/grid.py", 'return 2 * self.steps - 1 if self.kind == "heun" else self.steps',
      'return 2 * self.steps if self.kind == "heun" else self.steps',
      "heun-N reported as 2N network evaluations (the last step, to sigma = 0, is Euler: 2N - 1)"),
    M("samplers.zero_steps", "config/grid.py", "int(text) < 1", "int(text) < 0", "sampler strings accept 0 steps"),
    # --- guidance.py: cond_fn, condition_mean, condition_score ----------------------------------------------------
    M("guidance.ddim_sign", "guidance.py", "eps = eps - torch.sqrt(1 - alpha_bar) * gradient",
      "eps = eps + torch.sqrt(1 - alpha_bar) * gradient", "DDIM guidance term with the wrong sign"),
    M("guidance.ddim_sqrt", "guidance.py", "eps = eps - torch.sqrt(1 - alpha_bar) * gradient",
      "eps = eps - (1 - alpha_bar) * gradient", "DDIM guidance scaled by 1 - abar, not sqrt(1 - abar)"),
    M("guidance.mean_timesteps", "guidance.py", "cond_fn(x, diffusion.model_timesteps(t), **(model_kwargs or {}))\n",
      "cond_fn(x, t, **(model_kwargs or {}))\n", "DDPM guidance: the classifier sees respaced t, not the original"),
    M("guidance.score_timesteps", "guidance.py",
      "cond_fn(x, diffusion.model_timesteps(t), **(model_kwargs or {})).float()",
      "cond_fn(x, t, **(model_kwargs or {})).float()",
      "DDIM guidance: the classifier sees respaced t, not the original"),
    M("guidance.mean_std", "guidance.py", 'p_mean_var["variance"] * gradient.float()',
      'torch.exp(0.5 * p_mean_var["log_variance"]) * gradient.float()',
      "DDPM guidance shifts the mean by std * gradient, not variance * gradient"),
    M("guidance.softmax", "guidance.py", "F.log_softmax(logits.float(), dim=-1)", "F.softmax(logits.float(), dim=-1)",
      "gradient of p(y | x) instead of log p(y | x)"),
    M("guidance.one_scale", "guidance.py", "g.float() * scales[active].view(-1, *([1] * (x.ndim - 1)))",
      "g.float() * scales.max()", "one guidance scale (the largest) for the whole batch"),
    M("guidance.scale0_roundtrip", "guidance.py",
      'out["pred_xstart"] = torch.where(keep, p_mean_var["pred_xstart"], pred_xstart)',
      'out["pred_xstart"] = pred_xstart', "scale-0 rows get a round-tripped x_0 (not exactly unguided)"),
    M("guidance.score_clamped", "guidance.py", "pred_xstart = diffusion.predict_xstart_from_eps(x, t, eps)",
      "pred_xstart = diffusion.predict_xstart_from_eps(x, t, eps).clamp(-1, 1)",
      "DDIM guidance clips the guided x_0 (released: no clipping after condition_score)"),
    M("guidance.interval_closed", "guidance.py", "(lo <= sigma) & (sigma <= hi)", "(lo < sigma) & (sigma <= hi)",
      "guidance interval open at sigma_lo: an interval from the lowest trained sigma leaves t = 0 unguided"),
    M("guidance.interval_ignored", "guidance.py", "return (lo <= sigma) & (sigma <= hi)",
      "return torch.ones(n, dtype=torch.bool, device=t.device)",
      "guidance interval ignored: guidance at every noise level"),
    M("guidance.passes_all_rows", "guidance.py", "self.cost.add_classifier_passes(active)",
      "self.cost.add_classifier_passes(scales == scales)", "classifier passes counted for every row, guided or not"),
    # classifier-free guidance (issue 23)
    M("guidance.cfg_weight_swapped", "guidance.py", "guided[both, :channels] = eps_u + weight * (eps_c - eps_u)",
      "guided[both, :channels] = eps_c + weight * (eps_u - eps_c)", "CFG extrapolates from eps_c towards eps_u"),
    M("guidance.cfg_w1_pass", "guidance.py", "uncond = (w != 1) & inside_interval", "uncond = inside_interval",
      "CFG at w = 1 still runs (and counts) the unconditional pass"),
    M("guidance.cfg_variance_uncond", "guidance.py", "guided[cond] = out[:num_cond]",
      "guided[cond] = out[:num_cond]\n        guided[both] = out[num_cond:][cond[uncond]]",
      "CFG rows take their learned variance from the unconditional branch"),
    M("guidance.cfg_null_label", "guidance.py", "torch.full_like(y[uncond], self.null_label)",
      "torch.full_like(y[uncond], 0)", "the unconditional pass uses class 0 instead of the null class"),
    M("unet.null_row_always", "unet.py", "num_classes + (self.null_label is not None)", "num_classes + 1",
      "every class-conditional UNet gets a null-class row (released layouts no longer load)"),
    M("training.label_dropout_inverted", "training.py", "torch.rand(y.shape, device=y.device) < p",
      "torch.rand(y.shape, device=y.device) > p", "label dropout drops 1 - p of the labels"),
    # --- config/grid.py: the grid's cells (issue 22) -----------------------------------------------------------
    M("samplers.cfg_scale_of_classifier", "config/grid.py",
      'return self.scale if self.method in ("cfg", "both") else 0.0',
      'return self.scale if self.method in ("cfg", "both", "classifier") else 0.0',
      "classifier-guided cells also get classifier-free guidance"),
    M("samplers.interval_not_validated", "config/grid.py",
      "if bounds is None or not (0 <= bounds[0] <= bounds[1]) or bounds[0] == float(\"inf\"):",
      "if bounds is None:", "reversed or negative guidance intervals accepted"),
    M("samplers.scale0_per_method", "config/grid.py", '"classifier" if unguided else parse_method(method))',
      "parse_method(method))", "scale 0 sampled once per method (the same bytes three times)"),
    # --- nn.py: embedding, norm, attention ------------------------------------------------------------------------
    M("nn.embedding_order", "nn.py", "torch.cat([torch.cos(args), torch.sin(args)], dim=-1)",
      "torch.cat([torch.sin(args), torch.cos(args)], dim=-1)", "timestep embedding: sin before cos"),
    M("nn.max_period", "nn.py", "max_period: int = 10000", "max_period: int = 1000",
      "timestep embedding max_period 1000 instead of 10000"),
    M("nn.groupnorm_eps", "nn.py", "x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)",
      "x.float(), self.num_groups, self.weight.float(), self.bias.float(), 1e-4)",
      "GroupNorm eps 1e-4 instead of 1e-5"),
    M("nn.groups", "nn.py", "GROUPS = 32", "GROUPS = 16", "GroupNorm with 16 groups instead of 32"),
    M("nn.zero_module", "nn.py", "nn.init.zeros_(p)", "nn.init.constant_(p, 1e-3)",
      "zero_module leaves small nonzero weights"),
    M("nn.attention_scale", "nn.py", "return F.scaled_dot_product_attention(q, k, v)",
      "return F.scaled_dot_product_attention(q, k, v, scale=1.0)", "attention logits not scaled by 1/sqrt(ch)"),
    M("nn.einsum_scale", "nn.py", "scale = 1 / math.sqrt(math.sqrt(q.shape[-1]))", "scale = 1 / math.sqrt(q.shape[-1])",
      "einsum attention baseline scaled by 1/ch instead of 1/sqrt(ch)"),
    M("nn.attention_order", "nn.py", "if self.new_order:", "if not self.new_order:",
      "legacy and new qkv attention orders swapped"),
    M("nn.attention_residual", "nn.py", "return (x + h).reshape(b, c, *spatial)", "return h.reshape(b, c, *spatial)",
      "attention block without its residual connection"),
    M("nn.pool_mean_token", "nn.py", "x.mean(dim=-1, keepdim=True)", "x.amax(dim=-1, keepdim=True)",
      "attention pool's query token is the max, not the mean"),
    M("nn.pool_positional", "nn.py", "x = x + self.positional_embedding[None].to(x.dtype)", "x = x",
      "attention pool without its positional embedding"),
    # --- unet.py / classifier.py --------------------------------------------------------------------------------------
    M("unet.adagn_scale", "unet.py", "h = self.out_layers[0](h) * (1 + scale) + shift",
      "h = self.out_layers[0](h) * scale + shift", "AdaGN scales by s, not (1 + s)"),
    M("unet.adagn_chunk", "unet.py", "scale, shift = emb_out.chunk(2, dim=1)", "shift, scale = emb_out.chunk(2, dim=1)",
      "AdaGN scale and shift halves swapped"),
    M("unet.no_scale_shift_emb", "unet.py", "h = self.out_layers(h + emb_out)", "h = self.out_layers(h)",
      "without scale-shift norm, the ResBlock ignores the embedding"),
    M("unet.resblock_skip", "unet.py", "return self.skip_connection(x) + h", "return h",
      "ResBlock without its skip connection"),
    M("unet.skip_concat_order", "unet.py", "torch.cat([h, hs.pop()], dim=1)", "torch.cat([hs.pop(), h], dim=1)",
      "UNet skip features concatenated in the wrong order"),
    M("unet.upsample_mode", "unet.py", 'mode="nearest"', 'mode="bilinear"', "upsampling bilinear, not nearest"),
    M("unet.downsample_pool", "unet.py", "nn.AvgPool2d(kernel_size=2, stride=2)",
      "nn.MaxPool2d(kernel_size=2, stride=2)",
      "downsampling without conv uses max pooling, not average"),
    M("unet.updown_order", "unet.py", "h = self.in_layers[-1](self.h_upd(h))", "h = self.h_upd(self.in_layers[-1](h))",
      "BigGAN up/down block resamples after its conv, not before"),
    M("unet.label_ignored", "unet.py", "emb = emb + self.label_emb(y)", "emb = emb + self.label_emb(y * 0)",
      "class embedding ignores the label"),
    M("classifier.no_middle", "classifier.py", "return self.middle_block(h, emb).type(x.dtype)",
      "return h.type(x.dtype)", "noisy classifier skips its middle block"),
    M("classifier.t_ignored", "classifier.py", "timestep_embedding(timesteps, self.model_channels)",
      "timestep_embedding(timesteps * 0, self.model_channels)", "noisy classifier ignores t"),
    M("classifier.adaptive_pool", "classifier.py", "nn.AdaptiveAvgPool2d((1, 1))", "nn.AdaptiveMaxPool2d((1, 1))",
      "adaptive head (the evaluator's) max-pools instead of averaging"),
    # --- superres.py: ADM-U, the super-resolution UNet, and its training pairs (issue "ADM-U") ------------------
    M("superres.nearest_upsample", "superres.py", 'mode="bilinear", align_corners=False', 'mode="nearest"',
      "low_res upsampled nearest-neighbour instead of bilinearly"),
    M("superres.align_corners", "superres.py", "align_corners=False)", "align_corners=True)",
      "low_res upsampled bilinearly with align_corners=True (released: False, half-pixel centres)"),
    M("superres.low_res_zeros", "superres.py", "torch.cat([x, upsampled], dim=1)",
      "torch.cat([x, torch.zeros_like(upsampled)], dim=1)", "low_res not concatenated (zeros in its channels)"),
    M("superres.concat_order", "superres.py", "torch.cat([x, upsampled], dim=1)", "torch.cat([upsampled, x], dim=1)",
      "low_res concatenated before x_t instead of after"),
    M("superres.area_bilinear", "superres.py", 'mode="area"', 'mode="bilinear"',
      "training pairs downsampled bilinearly instead of by area"),
    M("superres.area_nearest", "superres.py", 'mode="area"', 'mode="nearest"',
      "training pairs downsampled nearest-neighbour instead of by area"),
    M("superres.channel_mult_512", "config/sections.py", "    512: (1, 1, 2, 2, 4, 4),",
      "    512: (0.5, 1, 1, 2, 2, 4, 4),", "the 512 upsampler takes the diffusion model's channel_mult"),
    M("superres.small_size_multiple", "config/validation.py", "if cfg.image_size % cfg.small_size:", "if False:",
      "an image size that is no multiple of small_size is accepted"),
    M("superres.cfg_low_res_rows", "guidance.py",
      "out = self.model(x[rows], t[rows], y=labels, **per_row(kwargs, rows, n))",
      "out = self.model(x[rows], t[rows], y=labels, **kwargs)",
      "classifier-free guidance passes low_res whole, not indexed by the rows of its passes"),
    M("superres.unconditional_kwargs", "sampling.py", "return model(x, t, **kwargs)", "return model(x, t)",
      "the unconditional wrapper drops low_res"),
    # --- the cascade (issue "ADM-U" pipeline part): training pairs, augmentation, upsampling, seeds, base data -------
    M("cascade.pairs_bilinear", "training.py",
      "low_res = downsample_area(x0, self.network.network_config(self.preset).small_size)",
      "low_res = upsample_bilinear(x0, (self.network.network_config(self.preset).small_size,) * 2)",
      "the Learner's training pairs downsampled bilinearly instead of by area"),
    M("cascade.one_level_per_batch", "training.py", "sigma = torch.rand(x0.shape[0], device=x0.device) * level",
      "sigma = torch.rand(1, device=x0.device).expand(x0.shape[0]) * level",
      "conditioning augmentation draws one level per batch, not per image"),
    M("cascade.level_not_given", "training.py", '"low_res_sigma": sigma}', '"low_res_sigma": 0 * sigma}',
      "the augmented upsampler is told level 0 in training"),
    M("cascade.shared_process", "training.py", 'create_diffusion(self.network.process_config(preset), "")',
      'create_diffusion(preset.diffusion, "")', "the upsampler trains under the base model's process"),
    M("cascade.level_ignored", "superres.py", "emb = emb + self.noise_level_embed(level.to(emb.dtype))",
      "emb = emb + 0 * self.noise_level_embed(level.to(emb.dtype))", "the network ignores the augmentation level"),
    M("cascade.unsalted_noise", "guided.py", "SampleNoise([s ^ AUGMENT_SALT for s in seeds]", "SampleNoise(list(seeds)",
      "sampling-time augmentation noise drawn from the loop's own stream"),
    M("cascade.conditioning_dropped", "guided.py", '{"y": y, **(conditioning or {})}', '{"y": y}',
      "sample_batch drops the upsampler's low_res"),
    M("cascade.seed_ignores_cell", "sampling.py", 'f"{int(base_seed)}:{cell}:{int(index)}"',
      'f"{int(base_seed)}:{int(index)}"', "two cells upsample with the same noise"),
    M("cascade.base_data_truncated", "images.py", "return np.rint(blocks).astype(np.uint8)",
      "return blocks.astype(np.uint8)", "a cascade's base data truncated instead of rounded"),
    M("cascade.upsampler_null_class", "config/kinds.py", "and kind.train_config(preset).label_dropout > 0",
      "and preset.train_diffusion.label_dropout > 0", "the upsampler gets a null class from the base's dropout"),
    M("cascade.small_size_unchecked", "config/validation.py", "if up.small_size != unet.image_size:", "if False:",
      "an upsampler whose input is not the base model's size is accepted"),
    # --- features.py: Inception input convention ----------------------------------------------------------------------
    M("features.input_scaling", "features.py", "x = (x - 128) / 128", "x = x / 127.5 - 1",
      "Inception input (x - 127.5) / 127.5 instead of (x - 128) / 128"),
    M("features.resize_offset", "features.py", "1.0 / w - 1.0 / size], [0.0, 1.0, 1.0 / h - 1.0 / size]",
      "0.0], [0.0, 1.0, 0.0]", "half-pixel bilinear resize instead of TF1's legacy alignment"),
    M("features.spatial_hwc", "features.py", ".permute(0, 2, 3, 1).reshape(len(spatial), -1)",
      ".reshape(len(spatial), -1)",
      "sFID spatial features flattened CHW, not HWC"),
    M("features.spatial_channels", "features.py", "SPATIAL_CHANNELS = 7", "SPATIAL_CHANNELS = 8",
      "sFID spatial features from 8 channels, not 7"),
    M("features.evaluator_t", "features.py", "t = torch.zeros(len(x), dtype=torch.long, device=self.device)",
      "t = torch.full((len(x),), 999, dtype=torch.long, device=self.device)",
      "evaluator network sees t = 999 instead of t = 0 (clean images)"),
    # --- inception.py: the archive's network rebuilt (batch norm folded) ------------------------------------------
    M("inception.avg_pool_pad", "inception.py", "F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)",
      "F.avg_pool2d(x, 3, 1, 1, count_include_pad=True)",
      "Inception's 3x3 average pools count the zero padding"),
    M("inception.bn_eps", "inception.py", "BATCH_NORM_EPS = 1e-3", "BATCH_NORM_EPS = 1e-5",
      "batch norm folded with eps 1e-5, not the archive's 1e-3"),
    M("inception.folded_bias", "inception.py", "layer.mean.double() * scale", "layer.mean.double()",
      "folded bias subtracts the running mean unscaled"),
    M("inception.last_pool", "inception.py", "return F.max_pool2d(x, 3, 1, 1)", "return F.avg_pool2d(x, 3, 1, 1)",
      "the last block's pooling branch averages instead of taking the max"),
    M("inception.spatial_layer", "inception.py", "spatial, x = outs[0], torch.cat(outs, 1)",
      "spatial, x = outs[1], torch.cat(outs, 1)",
      "sFID features read from the wrong branch of mixed_6"),
    M("inception.bf16_rounds_input", "inception.py", "        for i, stage in enumerate(self.stages):",
      "        x = x.to(self.body_dtype).float()\n        for i, stage in enumerate(self.stages):",
      "bf16 Inception rounds the resized image to bf16 before its first (float32) convolution"),
    # --- metrics.py: FID, precision/recall, Inception score -----------------------------------------------------------
    M("metrics.fid_trace", "metrics.py", "- 2 * FID_METHODS[method](sigma1, sigma2))",
      "- FID_METHODS[method](sigma1, sigma2))", "FID trace term without its factor 2"),
    M("metrics.fid_ref_trace", "metrics.py", "- 2 * trace_sqrt)", "- trace_sqrt)",
      "FID against a reference root without the factor 2"),
    M("metrics.cov_ddof", "metrics.py", "np.cov(features, rowvar=False)", "np.cov(features, rowvar=False, bias=True)",
      "feature covariance with 1/N, not 1/(N - 1)"),
    M("metrics.k", "metrics.py", "K_NEAREST = 3", "K_NEAREST = 4", "precision/recall with k = 4, not 3"),
    M("metrics.kth_index", "metrics.py", "np.partition(d, k, axis=1)[:, k]", "np.partition(d, k - 1, axis=1)[:, k - 1]",
      "manifold radius counts the point itself as a neighbour"),
    M("metrics.sqdist", "metrics.py", "- 2 * a @ b.T +", "- a @ b.T +",
      "squared distances expanded without the factor 2"),
    M("metrics.ball_strict", "metrics.py", "(d <= radii[None, :])", "(d < radii[None, :])",
      "a point on a ball's boundary counts as outside (released: <=)"),
    M("metrics.is_marginal", "metrics.py", "marginal = part.mean(axis=0, keepdims=True)",
      "marginal = probs.mean(axis=0, keepdims=True)", "Inception score: marginal over all samples, not per split"),
    M("metrics.is_mean", "metrics.py", "np.exp(kl.sum(axis=1).mean())", "np.exp(kl.mean(axis=1).mean())",
      "Inception score averages the KL over classes instead of summing"),
    M("metrics.kid_exponent", "metrics.py", "return (a @ b.T / a.shape[1] + 1.0) ** 3",
      "return (a @ b.T / a.shape[1] + 1.0) ** 2", "KID's polynomial kernel of degree 2, not 3"),
    M("metrics.kid_biased", "metrics.py", "within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))",
      "within_x = k_xx.sum() / (m * m)", "KID pairs a sample with itself (the biased MMD^2)"),
    M("metrics.kid_replacement", "metrics.py", "subsets = [(rng.choice(len(x), size, replace=False)",
      "subsets = [(rng.choice(len(x), size, replace=True)", "KID subsets of the samples drawn with replacement"),
    # --- uncertainty.py: intervals by subsampling (delete-d jackknife) ------------------------------------------------
    M("uncertainty.fid_centring", "uncertainty.py", "inner = basis.T @ _submatrices(self._gram, s) @ basis",
      "inner = _submatrices(self._gram, s)", "FID replicates: the subsample's Gram matrix not centred"),
    M("uncertainty.fid_mean", "uncertainty.py",
      "mean_term = mean_sq + 2 * self._cross[s].mean(axis=1) + self._offset2", "mean_term = self._offset2",
      "FID replicates: the mean term of the full set, not of the subsample"),
    M("uncertainty.kid_diagonal", "uncertainty.py", "        np.fill_diagonal(self._within, 0.0)  # a sample",
      "        pass  # a sample", "KID replicates pair a sample with itself"),
    M("uncertainty.recall_radii", "uncertainty.py",
      "radii = np.partition(_submatrices(self._within, s), self.k, axis=2)[..., self.k]",
      "radii = np.partition(self._within, self.k, axis=1)[:, self.k][s]",
      "recall replicates keep the full set's k-NN radii"),
    M("uncertainty.score_marginal", "uncertainty.py", "marginal = self._probs[part].mean(axis=1)",
      "marginal = np.broadcast_to(self._probs.mean(axis=0), (len(part), self._probs.shape[1]))",
      "score replicates with the full set's marginal p(y)"),
    M("uncertainty.replacement", "uncertainty.py",
      "return Subsamples(np.argsort(keys, axis=1)[:, :size], num_samples)",
      "return Subsamples(np.random.default_rng(seed).integers(0, num_samples, (replicates, size)), num_samples)",
      "subsamples drawn with replacement"),
    M("uncertainty.scale", "uncertainty.py", "return float(np.sqrt(r / (self.num_samples - r)))",
      "return float(r / (self.num_samples - r))", "standard error scaled by r / (N - r), not its square root"),
    M("uncertainty.z", "uncertainty.py", "half = scipy.stats.norm.ppf((1 + level) / 2) * scale",
      "half = scipy.stats.norm.ppf(level) * scale", "one-sided z for a two-sided interval"),
    M("uncertainty.centre", "uncertainty.py",
      "return Interval(float(estimate), float(estimate - half), float(estimate + half), level)",
      "centre = replicates.mean()\n"
      "    return Interval(float(estimate), float(centre - half), float(centre + half), level)",
      "interval centred on the replicates' mean (FID's bias at r samples), not on the estimate"),
    M("uncertainty.unpaired", "uncertainty.py",
      "self.replicates[name] - other.replicates[name], self.sub, level)",
      "self.replicates[name] - np.roll(other.replicates[name], 1), self.sub, level)",
      "paired differences subtract replicates of different subsamples"),
    # --- timestep_sampler.py: importance sampling of L_vlb -------------------------------------------------------
    M("timestep_sampler.sqrt", "timestep_sampler.py", "w = np.sqrt(np.mean(self.loss_history**2, axis=-1))",
      "w = np.mean(self.loss_history**2, axis=-1)", "p_t proportional to E[L_t^2], not sqrt(E[L_t^2])"),
    M("timestep_sampler.history", "timestep_sampler.py", "self.loss_history[t, :-1] = self.loss_history[t, 1:]",
      "pass", "a full loss history overwrites its newest entry instead of dropping the oldest"),
    M("timestep_sampler.uniform_mix", "timestep_sampler.py",
      "w * (1 - self.uniform_prob) + self.uniform_prob / len(w)", "w + self.uniform_prob / len(w)",
      "uniform mixing without the (1 - uniform_prob) factor"),
    M("timestep_sampler.importance_weight", "timestep_sampler.py", "weights = 1 / (len(p) * p[indices])",
      "weights = 1 / p[indices]", "importance weights 1 / p_t instead of 1 / (T p_t)"),
    # --- config/validation.py: the data section (issue 24's limit) ----------------------------------------------
    M("validation.limit_unchecked", "config/validation.py",
      '    out += _at_least("data.limit", cfg.limit, 0, hint="0: every image")\n', "",
      "data.limit is not checked: a negative limit reaches the ingest stage"),
    # --- checkpoint.py / images.py ----------------------------------------------------------------------------------
    M("checkpoint.ema_decay", "checkpoint.py", "torch._foreach_mul_(ema_params, rate)",
      "torch._foreach_mul_(ema_params, 1 - rate)", "EMA keeps (1 - rate) of the average"),
    M("checkpoint.ema_alpha", "checkpoint.py", "alpha=1 - rate", "alpha=rate", "EMA adds rate x the new parameters"),
    M("images.model_input", "images.py", "return x / 127.5 - 1", "return x / 128 - 1",
      "images scaled to [-1, 0.99], not [-1, 1]"),
    M("images.to_uint8", "images.py", "((x.float() + 1) * 127.5)", "((x.float() + 1) * 127.5 + 0.5)",
      "samples quantised by rounding, not the released truncation"),
    # --- guided.py: the one guidance composition (issue 34) ------------------------------------------------------
    M("guided.cfg_weight_twice", "guided.py", "model = ClassifierFreeGuidance(model, cfg_scales,",
      "model = ClassifierFreeGuidance(model, [1 + s for s in cfg_scales],",
      "CFG handed the weight w = 1 + s where it takes the cell's scale s"),
    M("guided.classifier_interval_dropped", "guided.py",
      "cond_fn = ClassifierGuidance(nets.classifier, classifier_scales, interval, nets.sigmas, cost)",
      "cond_fn = ClassifierGuidance(nets.classifier, classifier_scales, None, nets.sigmas, cost)",
      "the classifier guides at every noise level, whatever the cell's interval"),
    M("guided.classifier_half_scale", "guided.py",
      "cond_fn = ClassifierGuidance(nets.classifier, classifier_scales, interval,",
      "cond_fn = ClassifierGuidance(nets.classifier, classifier_scales / 2, interval,",
      "the classifier guides at s/2"),
    M("guided.all_is_bounded", "guided.py", 'bounds = [c.interval or (0.0, float("inf")) for c in cells]',
      "bounds = [c.interval or (0.0, 1e3) for c in cells]",
      "'all' rows of a batch with intervals stop guiding above sigma 1000"),
    M("guided.auto_weight_twice", "guided.py", "model = Autoguidance(model, nets.conditional_guide, auto_scales,",
      "model = Autoguidance(model, nets.conditional_guide, [1 + s for s in auto_scales],",
      "autoguidance handed w = 1 + s"),
    # --- pipelines/: the wiring (issue 40); each with the tests of its stage ----------------------------------
    M("wiring.sample_seed", "pipelines/stages/sample.py",
      "seeds = [sample_seed(self.job.config.seed, i) for i in indices]",
      "seeds = [sample_seed(self.job.config.seed, i + 1) for i in indices]",
      "the actors draw each sample from its neighbour's seed", ("tests/pipelines/test_sample.py",)),
    M("wiring.sample_label", "pipelines/stages/sample.py", "else sample_label(s, self.num_classes) for s in seeds]",
      "else sample_label(s + 1, self.num_classes) for s in seeds]",
      "the actors draw labels from other seeds", ("tests/pipelines/test_sample.py",)),
    M("wiring.resume_redoes_shards", "pipelines/stages/sample.py",
      "pending = [k for k in range(len(shards)) if not fs.exists(fsspec.core.url_to_fs(shard_url(job.out, k))[1])]",
      "pending = list(range(len(shards)))",
      "a rerun samples the shards already written again", ("tests/pipelines/test_sample.py",)),
    M("wiring.train_key_eval_scale", "pipelines/stages/train.py",
      'key["eval_scale"] = eval_scale(preset)', 'key["eval_scale"] = None',
      "the train stage's key leaves out the scale in-training evaluation ranks by",
      ("tests/pipelines/test_stage_keys.py",)),
    M("wiring.sample_key_section", "pipelines/stages/sample.py",
      '"sample": to_dict(ctx.preset.sample)}', '}',
      "the sample stage's key leaves out the sample section", ("tests/pipelines/test_stage_keys.py",)),
    M("wiring.evaluate_key_section", "pipelines/stages/evaluate.py",
      '"evaluate": to_dict(ctx.preset.evaluate)}', '"evaluate": {}}',
      "the evaluate stage's key leaves out the evaluate section", ("tests/pipelines/test_stage_keys.py",)),
    M("wiring.reused_not_told", "pipelines/workflow/stage_cache.py",
      'reused=frozenset(n for n, (_, how) in self.times.items() if how == "reused")', "reused=frozenset()",
      "a stage is not told which upstream outputs came from another pipeline run",
      ("tests/pipelines/test_stage_cache.py",)),
    M("wiring.champion_on_noise", "pipelines/stages/register.py",
      'better = compared["resolved"] and improves(metric, compared["delta"])',
      'better = improves(metric, compared["delta"])',
      "the champion moves on a difference the data does not resolve",
      ("tests/pipelines/test_run.py::test_smoke_pipeline_tree_cache_and_registry",)),
    M("wiring.keep_best_last", "pipelines/stages/train.py",
      "    if not network_kind(kind).train_config(preset).keep_best:\n        return result.checkpoint",
      "    if True:\n        return result.checkpoint",
      "keep_best reports the last checkpoint, not the best", ("tests/pipelines/test_train_eval.py",)),
    M("wiring.resume_logs_twice", "pipelines/stages/train_worker.py",
      "_log_step(tracker, job, learner, metrics, progress, log=step > logged,",
      "_log_step(tracker, job, learner, metrics, progress, log=True,",
      "a resumed trainer logs again the steps its lost worker group logged", ("tests/pipelines/test_train.py",)),
]


def check_table(repo: Path, mutants: list[Mutant]) -> None:
    """Every id unique, every original snippet exactly once in its file, every mutated file valid Python."""
    problems, seen = [], set()
    for m in mutants:
        if m.id in seen:
            problems.append(f"{m.id}: duplicate id")
        seen.add(m.id)
        path = repo / m.path
        if not path.is_file():
            problems.append(f"{m.id}: {path} does not exist")
            continue
        text = path.read_text()
        count = text.count(m.original)
        if count != 1:
            problems.append(f"{m.id}: the original snippet occurs {count} times in {m.path}: "
                            f"{m.original!r}")
            continue
        if m.original == m.replacement:
            problems.append(f"{m.id}: replacement equals the original")
        try:
            compile(text.replace(m.original, m.replacement), str(path), "exec")
        except SyntaxError as e:
            problems.append(f"{m.id}: the mutated file does not compile: {e}")
    if problems:
        raise SystemExit("mutant table out of date with the code:\n  " + "\n  ".join(problems))


def copy_checkout(repo: Path, dest: Path) -> None:
    """Tracked files plus untracked files that git does not ignore, as they are in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = repo / name
        if src.is_file():  # a tracked file deleted in the working tree is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def test_files(copy: Path) -> list[str]:
    tests = sorted(p.name for p in (copy / "tests" / "components").glob("test_*.py"))
    first = [name for name in GOLDEN_FIRST if name in tests]
    return [f"tests/components/{name}" for name in first + [t for t in tests if t not in first]]


class Runner:
    """Runs the fast tier in copies of the checkout; kills what it started when interrupted."""

    def __init__(self, env: dict, timeout: float):
        self.env, self.timeout = env, timeout
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def env_for(self, copy: Path) -> dict:
        return {**self.env, "PYTHONPATH": str(copy)}  # the copy's components, never the editable install's

    def pytest(self, copy: Path, timeout: float | None = None, first: tuple = ()) -> tuple[str, float, str]:
        """(outcome, seconds, output): outcome passed | failed | error | timeout. `first`: test files (or node ids)
        run before the fast tier."""
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *first, *test_files(copy)]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=copy, env=self.env_for(copy), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)  # own process group
        with self.lock:
            self.live.add(proc)
        try:
            out, _ = proc.communicate(timeout=timeout or self.timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, _ = proc.communicate()
            rc = None
        except BaseException:  # Ctrl-C / SIGTERM in the main thread: it is no longer in self.live for kill_all
            kill_group(proc)
            raise
        finally:
            with self.lock:
                self.live.discard(proc)
        text = out.decode(errors="replace")
        outcome = "timeout" if rc is None else {0: "passed", 1: "failed"}.get(rc, "error")
        return outcome, time.monotonic() - start, text

    def check_imports(self, copy: Path) -> None:
        """Mutants change nothing unless the copy's components shadow the editable install of the checkout."""
        where = subprocess.run([sys.executable, "-c", "import components; print(components.__file__)"], cwd=copy,
                               env=self.env_for(copy), check=True, capture_output=True, text=True).stdout.strip()
        if not Path(where).resolve().is_relative_to(copy.resolve()):
            raise SystemExit(f"in the copy, components is imported from {where}, not from {copy}")

    def kill_all(self) -> None:
        self.stopping.set()
        with self.lock:
            for proc in list(self.live):
                kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def first_failure(output: str) -> str:
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return match.group(1) if match else ""


def run_mutant(runner: Runner, copy: Path, m: Mutant) -> dict:
    path = copy / m.path
    original = path.read_text()
    path.write_text(original.replace(m.original, m.replacement, 1))
    try:
        outcome, seconds, output = runner.pytest(copy, first=m.tests)
    finally:
        path.write_text(original)
    caught = outcome != "passed"
    label = {"failed": "caught", "passed": "missed"}.get(outcome, outcome)  # error / timeout count as caught
    return {**asdict(m), "outcome": label, "caught": caught, "seconds": round(seconds, 1),
            "killed_by": first_failure(output) if caught else "",
            "tail": "" if outcome in ("failed", "passed") else output[-2000:]}


def work(runner: Runner, copy: Path, todo: queue.Queue, results: list, total: int, done: threading.Event) -> None:
    try:
        while not runner.stopping.is_set():
            try:
                m = todo.get_nowait()
            except queue.Empty:
                return
            result = run_mutant(runner, copy, m)
            if runner.stopping.is_set():
                return
            with runner.lock:
                results.append(result)
                print(f"[{len(results):3d}/{total}] {result['outcome']:7s} {result['seconds']:6.1f}s  {m.id:28s} "
                      f"{result['killed_by']}", flush=True)
    finally:
        done.set()  # an Event, not Thread.join: a join interrupted by Ctrl-C may later return while the thread runs


def _interrupt(*_):
    raise KeyboardInterrupt


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", metavar="PATTERN", help="run the mutants whose id matches this regular expression")
    p.add_argument("--list", action="store_true", help="print the mutant table and exit")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its own copy (default 1)")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    p.add_argument("--timeout", type=float, help="seconds per mutant (default: 3 x the baseline run, at least 600)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (timeout then defaults to 900)")
    p.add_argument("--shared", help="the shared folder (default: $ADM_SHARED, else ../shared beside the checkout)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_table(REPO, MUTANTS)
    selected = [m for m in MUTANTS if not args.only or re.search(args.only, m.id)]
    if args.list:
        for m in selected:
            print(f"{m.id:28s} {m.path:28s} {m.description}")
        print(f"{len(selected)} mutants")
        return 0
    if not selected:
        print(f"no mutant id matches {args.only!r}", file=sys.stderr)
        return 2
    shared = Path(args.shared or os.environ.get("ADM_SHARED") or REPO.parent / "shared").resolve()
    jobs = max(1, min(args.jobs, len(selected)))
    env = {**os.environ, "ADM_SHARED": str(shared), "PYTHONDONTWRITEBYTECODE": "1"}
    if jobs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    runner, copies, finished, started = Runner(env, args.timeout or 900), [], [], time.monotonic()
    results: list[dict] = []
    baseline = None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for _ in range(jobs):
            copies.append(Path(tempfile.mkdtemp(prefix="adm-mutants-")))  # listed first: removed whatever happens
            copy_checkout(REPO, copies[-1])
            check_table(copies[-1], selected)  # the copy is what gets mutated: the snippets must hold there too
            runner.check_imports(copies[-1])
        if not args.no_baseline:
            outcome, baseline, output = runner.pytest(copies[0], timeout=3600)
            print(f"baseline (no mutant): {outcome} in {baseline:.1f}s", flush=True)
            if outcome != "passed":
                print(output[-4000:], file=sys.stderr)
                print("the fast tier fails without any mutant: fix it first", file=sys.stderr)
                return 2
            runner.timeout = args.timeout or max(600.0, 3 * baseline)
        todo: queue.Queue = queue.Queue()
        for m in selected:
            todo.put(m)
        for copy in copies:
            finished.append(threading.Event())
            threading.Thread(target=work, args=(runner, copy, todo, results, len(selected), finished[-1])).start()
        while not all(done.is_set() for done in finished):
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("interrupted: removing the temporary copies", file=sys.stderr)
        return 130
    finally:
        runner.kill_all()
        for done in finished:
            done.wait()  # each worker stops once its pytest is killed, after restoring its file
        for copy in copies:
            shutil.rmtree(copy, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    if len(results) != len(selected):
        print(f"only {len(results)} of {len(selected)} mutants have a result (see the errors above)", file=sys.stderr)
        return 2
    return report(results, args.json, time.monotonic() - started, baseline, runner.timeout, jobs)


def report(results: list[dict], json_out: str | None, elapsed: float, baseline, timeout: float, jobs: int) -> int:
    order = {m.id: i for i, m in enumerate(MUTANTS)}
    results.sort(key=lambda r: order[r["id"]])
    caught = sum(r["caught"] for r in results)
    print(f"\nmutation score: {caught}/{len(results)} caught in {elapsed / 60:.1f} min "
          f"(baseline {baseline or 0:.1f}s, timeout {timeout:.0f}s per mutant, {jobs} job(s))")
    for r in results:
        if not r["caught"]:
            print(f"  missed: {r['id']} (components/{r['file']}): {r['description']}")
    if json_out:
        Path(json_out).write_text(json.dumps({"caught": caught, "total": len(results), "seconds": round(elapsed, 1),
                                              "baseline_seconds": baseline, "timeout_seconds": timeout, "jobs": jobs,
                                              "mutants": results}, indent=2) + "\n")
    return 0 if caught == len(results) else 1

if __name__ == "__main__":
    sys.exit(main())
