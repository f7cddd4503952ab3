"""`ocellus-tools train-demo`: trains the bundled demo model contrastively on generated scenes, and
`ocellus-tools evaluate`: scores an exported bundle's ONNX files on held-out scenes.

Training is seeded and reproducible on a given machine and thread count: the weights are initialised from
`--seed`, scenes, captions and augmentations come from numpy Generators seeded from it, torch runs with
deterministic algorithms and a fixed number of threads.

Each step draws a batch of scenes with one caption each and contrasts the images with the batch's distinct
captions; every caption that is true of an image (class, and any position it names) is a positive
(:func:`ocellus_tools.metrics.contrastive_loss`). A second, identical loss aligns the Perceiver Resampler's
mean-pooled latents (through a linear head) with the same text embeddings, so the exported latents carry the
scene content.

Augmentations make the camera's frames look familiar: part of each batch is rendered as the synthetic camera
does (no supersampling, at a larger size), converted to YUYV 4:2:2 and back, and downscaled with an antialiased
bilinear filter; all images get random colour gain and offset, blur and noise.

Evaluation (fixed: 1000 held-out scenes, seed 1234, one caption each): zero-shot top-1 over the 16 class prompts,
and image->text / text->image retrieval over the held-out captions (R@1/5/10, median rank; a caption is a true
match of every scene it describes correctly). The manifest's r1/r5/r10/median_rank are image->text.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import metrics, scenes
from . import tokenizer as demo_tokenizer
from .demo import DemoConfig, DemoModel, load_checkpoint, save_checkpoint, to_pixel_values

DEFAULT_OUT = Path("~/.cache/ocellus/train-demo").expanduser()
EVAL_SCENES = 1000
EVAL_SEED = 1234
IMAGE_SIZE = 64


# ---------------------------------------------------------------------------------------------- data


def yuyv_roundtrip(img: np.ndarray, full_range: bool) -> np.ndarray:
    """RGB float [n,h,w,3] in [0,1] -> u8 YUYV 4:2:2 (BT.601; chroma of each horizontal pixel pair averaged)
    -> RGB float, as a V4L2 camera's frames arrive after the runtime's conversion."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    if full_range:
        y = 0.299 * r + 0.587 * g + 0.114 * b
        y8 = np.clip(np.rint(y * 255), 0, 255)
        cb = (b - y) / 1.772
        cr = (r - y) / 1.402
        cb8 = np.clip(np.rint(128 + 255 * cb), 0, 255)
        cr8 = np.clip(np.rint(128 + 255 * cr), 0, 255)
    else:
        y8 = np.clip(np.rint(16 + 65.481 * r + 128.553 * g + 24.966 * b), 0, 255)
        cb8 = np.clip(np.rint(128 - 37.797 * r - 74.203 * g + 112.0 * b), 0, 255)
        cr8 = np.clip(np.rint(128 + 112.0 * r - 93.786 * g - 18.214 * b), 0, 255)
    n, h, w = y8.shape
    w2 = w // 2 * 2

    def pair(c):
        c = c[:, :, :w2].reshape(n, h, w2 // 2, 2).mean(axis=-1)
        c = np.rint(np.repeat(c, 2, axis=-1))
        if w2 != w:
            c = np.concatenate([c, c[:, :, -1:]], axis=-1)
        return c

    cb8, cr8 = pair(cb8), pair(cr8)
    if full_range:
        yf, cbf, crf = y8 / 255, (cb8 - 128) / 255, (cr8 - 128) / 255
        out = np.stack([yf + 1.402 * crf, yf - 0.344136 * cbf - 0.714136 * crf, yf + 1.772 * cbf], axis=-1)
    else:
        yf = 1.164383 * (y8 - 16)
        out = np.stack([yf + 1.596027 * (cr8 - 128), yf - 0.391762 * (cb8 - 128) - 0.812968 * (cr8 - 128),
                        yf + 2.017232 * (cb8 - 128)], axis=-1) / 255
    return np.clip(np.rint(np.clip(out, 0, 1) * 255), 0, 255) / 255


def camera_like(batch: scenes.SceneBatch, rng: np.random.Generator) -> torch.Tensor:
    """The scenes as the synthetic camera path shows them: rendered at a larger size without supersampling,
    through YUYV, downscaled to 64x64 with antialiased bilinear filtering. float [n,3,64,64] in [0,1]."""
    side = int(rng.choice([96, 128, 160, 192]))
    img = scenes.render_batch(batch, side, supersample=1).astype(np.float64) / 255
    img = yuyv_roundtrip(img, full_range=bool(rng.random() < 0.5))
    x = torch.from_numpy(img.astype(np.float32)).permute(0, 3, 1, 2)
    return F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)


def _gaussian_kernels(sigmas: np.ndarray, radius: int = 2) -> torch.Tensor:
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t[None, :] / sigmas[:, None]) ** 2)
    return torch.from_numpy((k / k.sum(1, keepdims=True)).astype(np.float32))


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random colour gain/offset, Gaussian blur and noise on float [n,3,h,w] in [0,1]; then u8 quantisation."""
    n = x.shape[0]
    gain = rng.uniform(0.92, 1.08, size=(n, 3, 1, 1)) * rng.uniform(0.9, 1.1, size=(n, 1, 1, 1))
    offset = rng.uniform(-0.04, 0.04, size=(n, 3, 1, 1))
    x = x * torch.from_numpy(gain.astype(np.float32)) + torch.from_numpy(offset.astype(np.float32))
    blur = rng.random(n) < 0.3
    if blur.any():
        idx = torch.from_numpy(np.nonzero(blur)[0])
        k = _gaussian_kernels(rng.uniform(0.4, 1.1, size=int(blur.sum())))  # [m, 5]
        xb = x[idx]
        m, c, h, w = xb.shape
        xb = xb.reshape(1, m * c, h, w)
        kk = k.repeat_interleave(c, dim=0)
        xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), kk[:, None, None, :], groups=m * c)
        xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), kk[:, None, :, None], groups=m * c)
        x = x.clone()
        x[idx] = xb.reshape(m, c, h, w)
    sigma = rng.uniform(0, 0.03, size=(n, 1, 1, 1)) * (rng.random((n, 1, 1, 1)) < 0.5)
    noise = rng.standard_normal(size=tuple(x.shape)).astype(np.float32) * sigma.astype(np.float32)
    x = x + torch.from_numpy(noise)
    return torch.round(x.clamp(0, 1) * 255) / 255


class Batches:
    """Training batches: (pixel_values [n,3,64,64], input_ids [u,T] of the distinct captions, positives [n,u])."""

    def __init__(self, rng: np.random.Generator, tok, batch: int, camera_fraction: float):
        self.rng, self.tok, self.batch, self.camera_fraction = rng, tok, batch, camera_fraction
        self._ids: dict[str, np.ndarray] = {}

    def ids(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in texts if t not in self._ids]
        if missing:
            ids, _ = demo_tokenizer.encode_batch(self.tok, missing)
            self._ids.update(zip(missing, ids))
        return torch.from_numpy(np.stack([self._ids[t] for t in texts]))

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = self.rng
        b = scenes.sample_batch(rng, self.batch)
        caps = scenes.captions(b, rng)
        n_cam = int(round(self.batch * self.camera_fraction))
        parts = []
        if n_cam:
            parts.append(camera_like(scenes.SceneBatch.stack(list(b)[:n_cam]), rng))
        if n_cam < self.batch:
            rest = scenes.SceneBatch.stack(list(b)[n_cam:])
            img = scenes.render_batch(rest, IMAGE_SIZE)
            parts.append(torch.from_numpy(img).permute(0, 3, 1, 2).to(torch.float32) / 255)
        self.labels = b.labels
        x = augment(torch.cat(parts), rng)
        texts = sorted({c.text for c in caps})
        col = {t: j for j, t in enumerate(texts)}
        uniq = [next(c for c in caps if c.text == t) for t in texts]
        pos = scenes.positives(b.labels, scenes.x_band(b.cx), scenes.y_band(b.cy), uniq)
        assert all(pos[i, col[c.text]] for i, c in enumerate(caps))
        return (x - 0.5) / 0.5, self.ids(texts), torch.from_numpy(pos)


def heldout(n: int = EVAL_SCENES, seed: int = EVAL_SEED):
    """The held-out evaluation set: images u8 [n,64,64,3], labels, x/y bands, captions (one per scene)."""
    imgs, labels, xs, ys, caps = [], [], [], [], []
    for img, b, c in scenes.generate(seed, n, size=IMAGE_SIZE):
        imgs.append(img)
        labels.append(b.labels)
        xs.append(scenes.x_band(b.cx))
        ys.append(scenes.y_band(b.cy))
        caps += c
    return np.concatenate(imgs), np.concatenate(labels), np.concatenate(xs), np.concatenate(ys), caps


def camera_heldout(n: int, seed: int, width: int = 640, height: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """Held-out scenes as the synthetic camera path delivers them to the model: a W x H frame (the canvas in its
    centre square rendered without supersampling, the margins continuing the background, scene-spec "Canvas and
    coordinates"), through YUYV 4:2:2 (BT.601 limited range) and back, then the manifest's preprocessing
    (`prepare.prepare_image`: centre crop, Pillow bilinear resize to 64x64, normalisation).
    Returns pixel_values f32 [n,3,64,64] and labels."""
    from .demo import preprocess
    from .prepare import prepare_image

    rng = np.random.default_rng([seed, 7])
    b = scenes.sample_batch(rng, n)
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    pre = preprocess()
    out = np.empty((n, 3, pre.height, pre.width), dtype=np.float32)
    ys = (np.arange(height, dtype=np.float64) - y0 + 0.5) / side
    for i, p in enumerate(b):
        bg = p.g0 + (p.g1 - p.g0) * ys[:, None, None] + np.asarray(p.tint)[None, None, :]
        bg = np.broadcast_to(bg, (height, width, 3)) + np.random.default_rng([seed, 8, i]).uniform(
            -p.noise, p.noise, size=(height, width, 3))
        frame = scenes.to_u8(bg)
        frame[y0:y0 + side, x0:x0 + side] = scenes.render(p, side, supersample=1)
        frame = yuyv_roundtrip(frame[None].astype(np.float64) / 255, full_range=False)[0]
        out[i] = prepare_image(np.rint(frame * 255).astype(np.uint8), pre)[0]
    return out, b.labels


# ---------------------------------------------------------------------------------------------- evaluation


def figures(image_embeds: np.ndarray, caption_embeds: np.ndarray, prompt_embeds: np.ndarray, labels: np.ndarray,
            xs: np.ndarray, ys: np.ndarray, caps: list[scenes.Caption]) -> dict:
    """Zero-shot top-1 and retrieval figures (manifest keys = image->text; both directions in detail)."""
    pos = scenes.positives(labels, xs, ys, caps)
    ret = metrics.retrieval_metrics(metrics.cosine_scores(image_embeds, caption_embeds), pos)
    top1 = metrics.zero_shot_top1(image_embeds, prompt_embeds, labels)
    i2t = ret["i2t"]
    return {"top1": top1, "r1": i2t["r1"], "r5": i2t["r5"], "r10": i2t["r10"], "median_rank": i2t["median_rank"],
            "i2t": i2t, "t2i": ret["t2i"]}


@torch.no_grad()
def embed_images(model: DemoModel, images_u8: np.ndarray, chunk: int = 250) -> tuple[np.ndarray, np.ndarray]:
    outs, lats = [], []
    for s in range(0, len(images_u8), chunk):
        e, lat = model.encode_image(to_pixel_values(torch.from_numpy(images_u8[s:s + chunk])))
        outs.append(e.numpy())
        lats.append(lat.numpy())
    return np.concatenate(outs), np.concatenate(lats)


@torch.no_grad()
def embed_pixels(model: DemoModel, pixel_values: np.ndarray, chunk: int = 250) -> tuple[np.ndarray, np.ndarray]:
    outs, lats = [], []
    for s in range(0, len(pixel_values), chunk):
        e, lat = model.encode_image(torch.from_numpy(pixel_values[s:s + chunk]))
        outs.append(e.numpy())
        lats.append(lat.numpy())
    return np.concatenate(outs), np.concatenate(lats)


@torch.no_grad()
def embed_texts(model: DemoModel, tok, texts: list[str]) -> np.ndarray:
    ids, _ = demo_tokenizer.encode_batch(tok, texts)
    return model.text(torch.from_numpy(ids)).numpy()


def evaluate_model(model: DemoModel, tok, data, camera=None) -> dict:
    """PyTorch figures of the image embedding, of the resampler's latent head, and on camera-path frames."""
    model.eval()
    imgs, labels, xs, ys, caps = data
    img_e, lat_e = embed_images(model, imgs)
    cap_e = embed_texts(model, tok, [c.text for c in caps])
    prm_e = embed_texts(model, tok, scenes.prompts())
    out = {"image": figures(img_e, cap_e, prm_e, labels, xs, ys, caps),
           "latents": figures(lat_e, cap_e, prm_e, labels, xs, ys, caps)}
    if camera is not None:
        cam_imgs, cam_labels = camera
        ce, cl = embed_pixels(model, cam_imgs)
        out["camera_top1"] = metrics.zero_shot_top1(ce, prm_e, cam_labels)
        out["camera_latents_top1"] = metrics.zero_shot_top1(cl, prm_e, cam_labels)
    return out


# ---------------------------------------------------------------------------------------------- training


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"work directory for demo.pt, training-eval.json and train-log.json (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, scenes and augmentations (default 0)")
    parser.add_argument("--steps", type=int, default=800, help="optimiser steps (default 800)")
    parser.add_argument("--batch", type=int, default=64, help="scenes per step (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, AdamW (default 1e-3)")
    parser.add_argument("--warmup", type=int, default=60, help="linear warm-up steps (default 60)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--latent-weight", type=float, default=1.0,
                        help="weight of the resampler's auxiliary contrastive loss (default 1.0)")
    parser.add_argument("--prompt-weight", type=float, default=1.0,
                        help="weight of the loss against the 16 class prompts of the classes in the batch (default 1.0)")
    parser.add_argument("--camera-fraction", type=float, default=0.25,
                        help="fraction of each batch rendered through the camera path (default 0.25)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, fixed for reproducibility (default 1: on a shared 2-core machine one thread "
                             "trained 4x faster than two)")
    parser.add_argument("--eval-scenes", type=int, default=EVAL_SCENES)
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--probe-every", type=int, default=0,
                        help="every N steps print zero-shot top-1 on 256 validation scenes (default 0: never)")
    return parser


def _param_groups(model: DemoModel, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "pos" not in name and "latents" not in name and name != "vision.cls"
         else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _log(msg: str) -> None:
    print(msg, flush=True)


def train(args: argparse.Namespace, log=_log) -> tuple[DemoModel, "tokenizers.Tokenizer", dict]:  # noqa: F821
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    tok = demo_tokenizer.train_tokenizer()
    cfg = DemoConfig()
    model = DemoModel(cfg).init_weights(args.seed).train()
    opt = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    batches = Batches(np.random.default_rng([args.seed, 1]), tok, args.batch, args.camera_fraction)
    prompt_ids = batches.ids(scenes.prompts())
    history = []
    probe = None
    if args.probe_every:
        pimgs, plabels, *_ = heldout(256, seed=args.seed + 99991)
        probe = (pimgs, plabels)
    t0 = time.perf_counter()
    run_loss = run_lat = 0.0
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, ids, pos = batches.next()
        img_e, lat_e = model.encode_image(x)
        # The batch's distinct captions, then the prompts of the classes present (as extra texts).
        present = np.unique(batches.labels)
        txt_e = model.text(torch.cat([ids, prompt_ids[present]]))
        cap_e, prm_e = txt_e[: len(ids)], txt_e[len(ids):]
        prm_pos = torch.from_numpy(batches.labels[:, None] == present[None, :])
        loss_img = metrics.contrastive_loss(metrics.logits(img_e, cap_e, model.scale()), pos)
        loss_lat = metrics.contrastive_loss(metrics.logits(lat_e, cap_e, model.latent_scale()), pos)
        if args.prompt_weight:
            loss_img = loss_img + args.prompt_weight * metrics.contrastive_loss(
                metrics.logits(img_e, prm_e, model.scale()), prm_pos)
            loss_lat = loss_lat + args.prompt_weight * metrics.contrastive_loss(
                metrics.logits(lat_e, prm_e, model.latent_scale()), prm_pos)
        loss = loss_img + args.latent_weight * loss_lat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run_loss += loss_img.item()
        run_lat += loss_lat.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            k = (step % args.log_every) + 1
            entry = {"step": step + 1, "loss": run_loss / k, "latent_loss": run_lat / k,
                     "logit_scale": float(model.scale().item()), "seconds": time.perf_counter() - t0}
            history.append(entry)
            log(f"step {entry['step']:5d}  loss {entry['loss']:.3f}  latent loss {entry['latent_loss']:.3f}  "
                f"scale {entry['logit_scale']:.1f}  {entry['seconds']:.0f} s")
            run_loss = run_lat = 0.0
        if probe is not None and (step + 1) % args.probe_every == 0:
            model.eval()
            e, lat = embed_images(model, probe[0])
            prm = embed_texts(model, tok, scenes.prompts())
            log(f"step {step + 1:5d}  probe top-1 {metrics.zero_shot_top1(e, prm, probe[1]):.3f}  "
                f"latents {metrics.zero_shot_top1(lat, prm, probe[1]):.3f}")
            model.train()
    seconds = time.perf_counter() - t0
    model.eval()
    meta = {"seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
            "weight_decay": args.weight_decay, "latent_weight": args.latent_weight,
            "prompt_weight": args.prompt_weight,
            "camera_fraction": args.camera_fraction, "threads": args.threads, "train_seconds": seconds,
            "torch": str(torch.__version__), "history": history}
    return model, tok, meta


def main(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"output directory {out} is not writable")
    model, tok, meta = train(args)
    print(f"trained in {meta['train_seconds']:.0f} s; evaluating on {args.eval_scenes} held-out scenes "
          f"(seed {args.eval_seed})")
    data = heldout(args.eval_scenes, args.eval_seed)
    camera = camera_heldout(min(args.eval_scenes, 200), args.eval_seed)
    ev = evaluate_model(model, tok, data, camera)
    meta["evaluation"] = ev
    save_checkpoint(out / "demo.pt", model, tok, meta)
    report = {"scenes": args.eval_scenes, "seed": args.eval_seed, "pytorch": ev, "train_seconds": meta["train_seconds"],
              "train": {k: v for k, v in meta.items() if k not in ("history", "evaluation")}}
    (out / "training-eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "train-log.json").write_text(json.dumps(meta["history"], indent=2) + "\n")
    _print_figures("pytorch, image embedding", ev["image"])
    _print_figures("pytorch, resampler latents (auxiliary head)", ev["latents"])
    print(f"camera-path frames (640x480 -> YUYV -> prepare): top-1 {ev['camera_top1']:.4f} "
          f"(latents {ev['camera_latents_top1']:.4f})")
    print(f"checkpoint: {out / 'demo.pt'}")
    return 0


def _print_figures(title: str, f: dict) -> None:
    print(f"{title}: zero-shot top-1 {f['top1']:.4f}; image->text R@1 {f['i2t']['r1']:.4f} R@5 {f['i2t']['r5']:.4f} "
          f"R@10 {f['i2t']['r10']:.4f} median rank {f['i2t']['median_rank']:g}; text->image R@1 {f['t2i']['r1']:.4f} "
          f"R@5 {f['t2i']['r5']:.4f} R@10 {f['t2i']['r10']:.4f} median rank {f['t2i']['median_rank']:g}")


# ---------------------------------------------------------------------------------------------- ONNX evaluation


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("bundle", type=Path, help="bundle directory with vision/text fp32 and int8 ONNX files")
    parser.add_argument("--scenes", type=int, default=EVAL_SCENES, help=f"held-out scenes (default {EVAL_SCENES})")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help=f"held-out scene seed (default {EVAL_SEED})")
    parser.add_argument("--out", type=Path, default=None,
                        help="evaluation JSON to write (default BUNDLE/evaluation.json, read by `manifest`)")
    parser.add_argument("--camera-scenes", type=int, default=200,
                        help="also score N held-out 640x480 camera-path frames (YUYV, the manifest's preprocessing); "
                             "0: skip (default 200)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recording", type=Path, default=None,
                        help="instead of generated scenes, score a recording's frames (`ocellus record`, "
                             "docs/recorder.md) with the fp32 and the int8 files: each one's top-1 against the "
                             "ground truth and their top-1 agreement (default --out: DIR/evaluation.json)")
    return parser


def _ort_sessions(bundle: Path, variant: str, threads: int):
    """onnxruntime sessions of `bundle`'s vision and text files of `variant`, and its tokenizer."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    paths = {r: bundle / f"{r}.{variant}.onnx" for r in ("vision", "text")}
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: run `ocellus-tools export` and `quantize` on {bundle} first")
    vis = ort.InferenceSession(str(paths["vision"]), opts, providers=["CPUExecutionProvider"])
    txt = ort.InferenceSession(str(paths["text"]), opts, providers=["CPUExecutionProvider"])
    return vis, txt, demo_tokenizer.load(bundle / "tokenizer.json")


def _ort_embed_texts(txt, tok, texts: list[str]) -> np.ndarray:
    names = [i.name for i in txt.get_inputs()]
    ids, mask = demo_tokenizer.encode_batch(tok, texts)
    rows = []
    for i in range(len(texts)):
        feed = {"input_ids": ids[i:i + 1]}
        if "attention_mask" in names:
            feed["attention_mask"] = mask[i:i + 1]
        rows.append(txt.run(["text_embeds"], feed)[0])
    return np.concatenate(rows)


def evaluate_recording(bundle: Path, path: Path, threads: int = 2) -> dict:
    """fp32 and int8 on a recording's frames (prepared as the runtime prepares them: decoded to RGB, then the
    bundle's preprocessing), scored against the recording's prompt labels: each variant's top prompt per frame,
    its top-1 against the frames' ground truth (synthetic source), and the fraction of frames on which the two
    variants' top prompts agree (`agreement`, the figure `ocellus replay` gives for the same frames)."""
    from .bundle import Preprocess
    from .files import read_source
    from .prepare import prepare_image
    from .recording import open_recording

    rec = open_recording(path)
    p = read_source(bundle)["preprocess"]
    pre = Preprocess(**{**p, "mean": tuple(p["mean"]), "std": tuple(p["std"])})
    where, truth, pv = [], [], []
    for cam in rec.cameras:
        for i in range(len(cam)):
            where.append((cam.index, i))
            truth.append(cam.label(i))
            pv.append(prepare_image(cam.rgb(i), pre)[0])
    if not pv:
        raise ValueError(f"recording {path} holds no frames")
    labels = list(rec.header["prompts"][0]["labels"]) if rec.header["prompts"] else scenes.prompts()
    pv = np.stack(pv)
    preds = {}
    for variant in ("fp32", "int8"):
        vis, txt, tok = _ort_sessions(bundle, variant, threads)
        img = np.concatenate([vis.run(["image_embeds"], {"pixel_values": pv[i:i + 1]})[0] for i in range(len(pv))])
        preds[variant] = metrics.zero_shot_predict(img, _ort_embed_texts(txt, tok, labels))
    agree = preds["fp32"] == preds["int8"]
    report = {"recording": str(path), "frames": len(pv), "labels": labels, "agreement": float(agree.mean()),
              "changed": [{"camera": c, "frame": i, "fp32": labels[a], "int8": labels[b]}
                          for (c, i), a, b, same in zip(where, preds["fp32"], preds["int8"], agree) if not same],
              "predictions": {v: [labels[k] for k in p] for v, p in preds.items()}}
    judged = [(k, t) for k, t in enumerate(truth) if t is not None and scenes.class_name(t) in labels]
    for variant in ("fp32", "int8"):
        hits = [labels[preds[variant][k]] == scenes.class_name(t) for k, t in judged]
        report[variant] = {"top1": float(np.mean(hits)) if hits else None, "labelled": len(hits)}
    return report


def evaluate_onnx(bundle: Path, variant: str, data, threads: int = 2, camera=None) -> dict:
    """Figures of `bundle`'s vision and text files of `variant`, run through onnxruntime one input at a time
    (batch 1, as exported)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    paths = {r: bundle / f"{r}.{variant}.onnx" for r in ("vision", "text")}
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: run `ocellus-tools export` and `quantize` on {bundle} first")
    vis = ort.InferenceSession(str(paths["vision"]), opts, providers=["CPUExecutionProvider"])
    txt = ort.InferenceSession(str(paths["text"]), opts, providers=["CPUExecutionProvider"])
    tok = demo_tokenizer.load(bundle / "tokenizer.json")
    imgs, labels, xs, ys, caps = data

    def embed_images_ort(pv: np.ndarray) -> np.ndarray:
        return np.concatenate([vis.run(["image_embeds"], {"pixel_values": pv[i:i + 1]})[0] for i in range(len(pv))])

    img_e = embed_images_ort(to_pixel_values(torch.from_numpy(imgs)).numpy())
    txt_inputs = [i.name for i in txt.get_inputs()]

    def embed(texts: list[str]) -> np.ndarray:
        ids, mask = demo_tokenizer.encode_batch(tok, texts)
        rows = []
        for i in range(len(texts)):
            feed = {"input_ids": ids[i:i + 1]}
            if "attention_mask" in txt_inputs:
                feed["attention_mask"] = mask[i:i + 1]
            rows.append(txt.run(["text_embeds"], feed)[0])
        return np.concatenate(rows)

    uniq = sorted({c.text for c in caps})
    table = dict(zip(uniq, embed(uniq)))
    cap_e = np.stack([table[c.text] for c in caps])
    prm_e = embed(scenes.prompts())
    out = figures(img_e, cap_e, prm_e, labels, xs, ys, caps)
    if camera is not None:
        out["camera_top1"] = metrics.zero_shot_top1(embed_images_ort(camera[0]), prm_e, camera[1])
    return out


def main_evaluate(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle)
    if args.recording is not None:
        report = evaluate_recording(bundle, Path(args.recording), args.threads)
        for variant in ("fp32", "int8"):
            f = report[variant]
            if f["top1"] is not None:
                print(f"onnxruntime {variant}: top-1 {f['top1']:.4f} on {f['labelled']} labelled recorded frames")
        print(f"fp32/int8 top-1 agreement on {report['frames']} recorded frames: {report['agreement']:.4f} "
              f"({len(report['changed'])} changed)")
        out = args.out or Path(args.recording) / "evaluation.json"
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
        return 0
    data = heldout(args.scenes, args.seed)
    camera = camera_heldout(args.camera_scenes, args.seed) if args.camera_scenes else None
    report = {"scenes": args.scenes, "seed": args.seed}
    for variant in ("fp32", "int8"):
        f = evaluate_onnx(bundle, variant, data, args.threads, camera)
        report[variant] = {k: f[k] for k in ("top1", "r1", "r5", "r10", "median_rank")}
        report[f"{variant}_detail"] = {"i2t": f["i2t"], "t2i": f["t2i"]}
        _print_figures(f"onnxruntime {variant}", f)
        if camera is not None:
            report[f"{variant}_detail"]["camera"] = {"frames": args.camera_scenes, "width": 640, "height": 480,
                                                     "top1": f["camera_top1"]}
            print(f"onnxruntime {variant}: camera-path frames (640x480 -> YUYV -> prepare): "
                  f"top-1 {f['camera_top1']:.4f}")
    out = args.out or bundle / "evaluation.json"
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(add_arguments(argparse.ArgumentParser(description=__doc__)).parse_args()))
