"""The `ocellus-tools` command line: export, import, quantize, validate, manifest, prototypes, check-prompts,
train-demo (tools/README.md)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from . import __version__
from .errors import ToolError


def _quiet() -> None:
    """Silences library chatter (progress bars of transformers, info logs) so our messages stand out."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:
        pass


def cmd_export(args) -> int:
    from .files import ensure_writable_dir

    only = {"--tokens": args.tokens, "--width": args.width, "--state-dict": args.state_dict}
    if not args.resampler_only and any(v is not None for v in only.values()):
        given = ", ".join(k for k, v in only.items() if v is not None)
        raise ToolError(f"{given} apply to --resampler-only: add --resampler-only or drop them")
    if args.resampler_only:
        if args.tokenizer is not None or args.demo_checkpoint is not None or args.no_text:
            raise ToolError("--tokenizer, --demo-checkpoint and --no-text do not apply to --resampler-only: drop them")
        return _export_resampler_only(args)
    hf_only = {"--resampler": args.resampler, "--latents": args.latents, "--resampler-depth": args.resampler_depth,
               "--latent-dim": args.latent_dim, "--resampler-heads": args.resampler_heads, "--tokenizer": args.tokenizer}
    if args.hf is not None and args.demo_checkpoint is not None:
        raise ToolError("--demo-checkpoint applies to --builtin demo only: drop it or export --builtin demo")
    if args.builtin is not None and any(v is not None for v in hf_only.values()):
        given = ", ".join(k for k, v in hf_only.items() if v is not None)
        raise ToolError(f"{given} apply to --hf checkpoints only; the built-in demo has its own trained resampler "
                        "and tokenizer: drop them")
    for flag, v in (("--latents", args.latents), ("--resampler-depth", args.resampler_depth),
                    ("--latent-dim", args.latent_dim), ("--resampler-heads", args.resampler_heads)):
        if v is not None and v <= 0:
            raise ToolError(f"{flag} must be positive, got {v}")
    existed = args.out.exists()
    out = ensure_writable_dir(args.out)
    try:
        return _export(args, out)
    except BaseException:
        if not existed:  # leave no empty bundle directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _export(args, out: Path) -> int:
    from .export import export_bundle
    from .sources import build_bundle, builtin_spec, hf_spec

    name = args.name or out.resolve().name
    if args.hf is not None:
        spec = hf_spec(args.hf, resampler=args.resampler or "perceiver", latents=args.latents or 16,
                       resampler_depth=args.resampler_depth or 2, latent_dim=args.latent_dim,
                       resampler_heads=args.resampler_heads, seed=args.seed, tokenizer=args.tokenizer)
    else:
        spec = builtin_spec(args.builtin, checkpoint=args.demo_checkpoint, seed=args.seed)
    bundle = build_bundle(spec, name)
    names = export_bundle(bundle, out, spec, text=not args.no_text)
    print(f"exported {bundle.source} ({bundle.resampler_kind} resampler{', no text encoder' if args.no_text else ''}) "
          f"to {out}: {', '.join(names)}")
    return 0


def _export_resampler_only(args) -> int:
    from .export import export_resampler_only
    from .files import ensure_writable_dir

    existed = args.out.exists()
    out = ensure_writable_dir(args.out)
    try:
        r = export_resampler_only(out, kind=args.resampler or "perceiver", tokens=args.tokens, width=args.width,
                                  latents=args.latents, latent_dim=args.latent_dim, depth=args.resampler_depth,
                                  heads=args.resampler_heads, seed=args.seed, state_dict=args.state_dict,
                                  name=args.name)
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(f"exported a {r['description']} to {out / r['names'][0]}")
    if r["removed"]:
        print(f"removed what described the old resampler: {', '.join(r['removed'])}")
    if not r["bundle"]:
        print(f"{out} holds no vision encoder: this resampler file is not a bundle on its own (run it after "
              "`ocellus-tools import` or `export` into the same directory to replace a bundle's resampler)")
    return 0


def _preprocess_for_import(args):
    """(Preprocess, size hint, where the hint comes from) from --preprocessor and the preprocessing flags; the
    input size is settled by the import (--size, the hint or the model's static size)."""
    from .files import read_json
    from .hf import apply_preprocessor_config, preprocessor_size
    from .importer import default_preprocess

    hint, hint_from = None, ""
    pre = default_preprocess(1, 1)
    if args.preprocessor is not None:
        pc = read_json(args.preprocessor, "pass a Hugging Face preprocessor_config.json with --preprocessor")
        if not isinstance(pc, dict):
            raise ToolError(f"{args.preprocessor} is not a preprocessor config (a JSON object): pass the model's "
                            "preprocessor_config.json")
        hint = preprocessor_size(pc)
        hint_from = f"{args.preprocessor.name}"
        pre = apply_preprocessor_config(pre, pc, args.preprocessor, hint[0] if hint else 0)
    if args.resize is not None:
        pre.resize = args.resize
        pre.crop = "center" if args.resize == "shortest_edge" else "none"
    for attr in ("interpolation", "rescale", "channel_order"):
        if getattr(args, attr) is not None:
            setattr(pre, attr, getattr(args, attr))
    if args.mean is not None:
        pre.mean = tuple(args.mean)
    if args.std is not None:
        pre.std = tuple(args.std)
    if args.pad is not None:
        if pre.resize != "letterbox":
            raise ToolError("--pad is the letterbox fill colour: add --resize letterbox or drop --pad")
        pre.pad = tuple(args.pad)
    try:
        pre.check()
    except ValueError as e:
        raise ToolError(f"{e}: fix the preprocessing flags") from e
    return pre, hint, hint_from


def cmd_import(args) -> int:
    from .files import ensure_writable_dir
    from .importer import ImportOptions, import_bundle, parse_size

    opts = ImportOptions(input=args.input, tokens=args.tokens, pool=args.pool, pool_after=args.pool_after,
                         size=parse_size(args.size) if args.size else None, fold=not args.no_fold,
                         ignore_declared_shapes=args.ignore_declared_shapes)
    pre, hint, hint_from = _preprocess_for_import(args)
    resampler = {"kind": args.resampler, "latents": args.latents, "latent_dim": args.latent_dim,
                 "depth": args.resampler_depth, "heads": args.resampler_heads, "seed": args.seed,
                 "state_dict": args.resampler_state_dict}
    existed = args.out.exists()
    out = ensure_writable_dir(args.out)
    try:
        r = import_bundle(args.onnx, out, opts, pre, resampler, name=args.name, size_hint=hint,
                          size_hint_from=hint_from)
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    sp = r["spec"]
    pooled = {"cls": f"the class token (token 0) of {sp['pool_after'] or sp['tokens']}",
              "mean": f"the mean of the tokens of {sp['pool_after'] or sp['tokens']}"}.get(sp["pool"], sp["pool"])
    print(f"imported {sp['file']} (opset {sp['opset']}) at {r['height']}x{r['width']}: patch_tokens [1, {r['tokens']}, "
          f"{r['dim']}] = {sp['tokens']}, image_embeds [1, {r['embed_dim']}] = {pooled}")
    print(f"graph: {r['nodes']['original']} nodes -> {r['nodes']['imported']} (cut to the two outputs, "
          + ("constants folded by onnxruntime's basic optimisation)" if sp["fold"] != "none" else "not folded)"))
    o, t = r["figures"]["original"], r["figures"]["tract"]
    print(f"onnxruntime vs the original file: patch_tokens cosine {o['patch_tokens']:.7f}, image_embeds cosine "
          f"{o['image_embeds']:.7f}; tract vs onnxruntime: patch_tokens cosine {t['patch_tokens']:.7f}, "
          f"image_embeds cosine {t['image_embeds']:.7f}")
    p = pre.record()
    pad = f", pad {p['pad']}" if "pad" in p else ""
    print(f"preprocess: {p['resize']} {p['interpolation']}{pad}, mean {p['mean']}, std {p['std']}")
    print(f"resampler: {r['resampler']}")
    print(f"wrote {', '.join(r['names'])} to {out}" + (f"; removed stale {', '.join(r['removed'])}"
                                                        if r["removed"] else ""))
    return 0


DEMO_SOURCES = ("train-demo", "builtin:demo")


def _calibration(args, pre, source: str) -> tuple[list, list, dict]:
    """(calibration pixel_values, held-out pixel_values to check the int8 result on (empty for --images), what
    quantize.json records about them)."""
    from tqdm import tqdm

    from .images import calibration_frames
    from .prepare import list_images, load_images, prepare_image

    held_out = []
    record = {}
    if getattr(args, "recording", None) is not None:
        from .recording import open_recording

        rec = open_recording(args.recording)
        images = [cam.rgb(i) for cam in rec.cameras for i in range(len(cam))]
        if not images:
            raise ToolError(f"recording {args.recording} holds no frames: record longer (ocellus record --duration S)")
        what = f"{len(images)} recorded frames from {args.recording}"
        record["source"] = f"recording:{Path(args.recording).resolve()}"
    elif args.images is not None:
        files = list_images(args.images)
        images = load_images(files)
        if not images:
            raise ToolError(f"calibration folder {args.images} holds no readable image: add PNG or JPEG files")
        what = f"{len(images)} images from {args.images}"
        record["source"] = f"images:{Path(args.images).resolve()}"
    else:
        if args.scenes <= 0:
            raise ToolError(f"--scenes must be positive, got {args.scenes}")
        images = calibration_frames(args.scenes, pre.width, pre.height, args.seed)
        held_out = calibration_frames(32, pre.width, pre.height, args.seed + 1_000_003)
        what = f"{len(images)} generated scenes (seed {args.seed})"
        record["source"] = f"scenes:{len(images)}"
        record["seed"] = args.seed
        if source not in DEMO_SOURCES:
            record["warning"] = (f"calibrated on generated demo scenes (coloured shapes on plain backgrounds), but "
                                 f"the model is {source}, not the demo: activation ranges from these scenes may "
                                 "not cover real camera frames, and int8 may lose more accuracy on them than the "
                                 "figures here say; pass --images DIR with 100 or more of your own frames")
            print(f"warning: {record['warning']}", file=sys.stderr)
    record["samples"] = len(images)
    print(f"calibrating on {what}")
    if len(images) < 16:
        print(f"warning: only {len(images)} calibration images; activation ranges from so few may clip on other "
              "inputs (use 32 or more)", file=sys.stderr)
    return ([prepare_image(im, pre) for im in tqdm(images, desc="preparing", unit="image", leave=False)],
            [prepare_image(im, pre) for im in held_out], record)


def cmd_quantize(args) -> int:
    from .bundle import Preprocess
    from .files import read_source
    from .images import text_corpus
    from .quantize import quantize_bundle

    rec = read_source(args.bundle)
    p = rec["preprocess"]
    pre = Preprocess(**{**p, "mean": tuple(p["mean"]), "std": tuple(p["std"])})
    pixel_values, held_out, record = _calibration(args, pre, rec.get("source", "?"))
    doc = quantize_bundle(args.bundle, pixel_values, text_corpus(), args.target_cosine, held_out,
                          keep_slower=args.keep_slower, calibration=record)
    print(quantize_table(doc))
    return 0


def quantize_table(doc: dict) -> str:
    """The final table of `quantize`: one row per int8 file, written or skipped."""
    rows = [("file", "engine", "quant", "fp32 ms", "int8 ms", "speedup", "float", "cosine per output")]
    entries = [(e, "kept slower: --keep-slower" if e.get("forced") else "written") for e in doc["files"]]
    entries += [(e, "skipped") for e in doc["skipped"]]
    order = {"vision": 0, "resampler": 1, "text": 2}
    entries.sort(key=lambda x: (order.get(x[0]["role"], 9), x[0]["path"]))
    notes = []
    for e, state in entries:
        sp = e.get("speed_ms") or {}
        cos = ", ".join(f"{k} {v:.5f}" for k, v in (e.get("cosine") or {}).items()) or "-"
        floats = f"{e['candidates'] - e['quantized_nodes']}/{e['candidates']}" if "quantized_nodes" in e else "-"
        rows.append((e["path"] + ("" if state == "written" else f" [{state}]"), e["engines"][0], e["quant"],
                     f"{sp['fp32']:.3g}" if sp else "-", f"{sp['int8']:.3g}" if sp else "-",
                     f"{sp['speedup']:.2f}x" if sp else "-", floats, cos))
        if state != "written" or e.get("forced"):
            notes.append(f"  {e['path']}: {e.get('reason') or e.get('forced_reason')}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i in (0, 1, 2, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             .rstrip() for r in rows]
    cpu = doc["cpu"]
    head = (f"int8 against fp32 on this CPU ({cpu['model']}; {cpu['isa']}), 1 thread, median of warm runs; cosine "
            f"target {doc['target_cosine']}; float = MatMul/Conv nodes left in float of those with constant weights")
    return "\n".join([head, *lines, *notes])


def cmd_validate(args) -> int:
    from .validate import validate_bundle

    parity = validate_bundle(args.bundle, seed=args.seed, cos_fp32=args.min_cosine_fp32,
                             cos_int8=args.min_cosine_int8, use_tract=not args.no_tract, reference=args.reference,
                             original=args.original)
    for name, f in parity["files"].items():
        figures = ", ".join(f"{o['name']} cosine {o['cosine']:.7f} max_abs {o['max_abs']:.3g}" for o in f["outputs"])
        print(f"{name} vs {f['reference']}: {figures}")
    for key, c in parity["chains"].items():
        ch = ", ".join(f"{o['name']} cosine {o['cosine']:.7f}" for o in c["outputs"])
        print(f"{key} chain ({c['files']['vision']} -> {c['files']['resampler']}) vs fp32 chain: {ch}")
    tr = parity.get("tract")
    if tr is None:
        print("tract check skipped" + ("" if args.no_tract else " (the tract Python bindings are not installed: "
                                       "pip install tract==0.23.9)"))
    else:
        for name, f in tr["files"].items():
            same = min(o["cosine"] for o in f["onnxruntime"])
            extra = f", vs fp32 {min(o['cosine'] for o in f['fp32']):.7f}" if "fp32" in f else ""
            print(f"tract {tr['version']} {name}: min cosine vs onnxruntime {same:.7f}{extra}")
    print(f"parity ok; wrote {args.bundle / 'reference'} and {args.bundle / 'parity.json'}")
    return 0


def cmd_manifest(args) -> int:
    from .manifest import write_manifest

    path = write_manifest(args.bundle, args.evaluation)
    print(f"wrote {path}")
    return 0


def cmd_prototypes(args) -> int:
    import numpy as np

    from .prototypes import compute_prototypes

    r = compute_prototypes(args.bundle, args.images, args.logit_scale, args.logit_bias)
    for label, n in zip(r["labels"], r["images"]):
        print(f"  {label}: {n} image{'s' if n != 1 else ''}")
    a = r["array"]
    sims = a @ a.T
    off = sims[~np.eye(len(a), dtype=bool)] if len(a) > 1 else np.array([])
    worst = f"; most similar pair cosine {off.max():.4f}" if off.size else ""
    print(f"wrote {args.bundle / 'prototypes.npy'} ({len(a)} few-shot prototypes of width {a.shape[1]}{worst}) and "
          f"prototypes.json; run `ocellus-tools manifest {args.bundle}` to list them in [prototypes]")
    return 0


def cmd_check_prompts(args) -> int:
    from tokenizers import Tokenizer

    from .files import read_source
    from .prompts import content_tokens, unknown_prompts, warning

    rec = read_source(args.bundle)
    if not rec.get("text"):
        raise ToolError(f"{args.bundle} has no text encoder, so there are no prompts to check: score it with "
                        "few-shot prototypes (ocellus-tools prototypes)")
    prompts = list(args.prompts)
    if args.file is not None:
        try:
            lines = args.file.read_text().splitlines()
        except OSError as e:
            raise ToolError(f"cannot read {args.file}: {e.strerror or e}: pass a prompts file, one per line") from e
        prompts += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not prompts:
        raise ToolError("no prompts to check: pass them as arguments or with --file")
    tok = Tokenizer.from_file(str(args.bundle / rec["text"]["tokenizer"]))
    blind = set(unknown_prompts(tok, prompts))
    for p in prompts:
        tokens = " ".join(t for _, t in content_tokens(tok, p)) or "(none)"
        print(f"{'UNKNOWN' if p in blind else 'ok':8} {p!r}: {tokens}")
    for p in blind:
        print(f"warning: {warning(p)}", file=sys.stderr)
    if blind and args.strict:
        raise ToolError(f"{len(blind)} of {len(prompts)} prompts are unknown to the tokenizer: reword them")
    return 0


def _train_demo_module():
    try:
        from . import train_demo
    except ImportError as e:
        return None, e
    return train_demo, None


def cmd_train_demo(args) -> int:
    module, err = _train_demo_module()
    if module is None:
        raise ToolError(f"train-demo is unavailable ({err}): ocellus_tools/train_demo.py is missing")
    return int(module.main(args) or 0)


def cmd_evaluate(args) -> int:
    module, err = _train_demo_module()
    if module is None:
        raise ToolError(f"evaluate is unavailable ({err}): ocellus_tools/train_demo.py is missing")
    return int(module.main_evaluate(args) or 0)


def cmd_ort_bench(args) -> int:
    from . import ortbench

    return ortbench.main(args)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ocellus-tools", description="Build ocellus model bundles (tools/README.md).")
    ap.add_argument("--version", action="version", version=f"ocellus-tools {__version__}")
    ap.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (default: torch's default)")
    sub = ap.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("export", help="write fp32 ONNX files, tokenizer.json and source.json into a bundle dir")
    src = ex.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", type=Path, metavar="DIR", help="Hugging Face CLIP or SigLIP checkpoint directory")
    src.add_argument("--builtin", choices=["demo"], help="built-in model")
    src.add_argument("--resampler-only", action="store_true",
                     help="only a resampler for N x D tokens (--tokens, --width; read from the bundle in --out when "
                          "it has a vision file, whose resampler it then replaces)")
    ex.add_argument("--demo-checkpoint", type=Path, metavar="FILE",
                    help="trained demo weights for --builtin demo (default: random init from --seed)")
    ex.add_argument("--out", type=Path, required=True, metavar="DIR", help="bundle directory, e.g. models/NAME")
    ex.add_argument("--name", help="bundle name (default: the --out directory's name)")
    ex.add_argument("--tokenizer", type=Path, metavar="FILE", help="tokenizer.json to use instead of the checkpoint's")
    ex.add_argument("--no-text", action="store_true", help="a vision-only bundle: leave the text encoder and "
                    "tokenizer out")
    ex.add_argument("--resampler", choices=["perceiver", "qformer"], help="new resampler (default perceiver)")
    ex.add_argument("--latents", type=int, help="number of latents/queries L (default 16)")
    ex.add_argument("--resampler-depth", type=int, help="resampler layers (default 2)")
    ex.add_argument("--latent-dim", type=int, help="resampler width Dl (default: the vision width D)")
    ex.add_argument("--resampler-heads", type=int, help="resampler attention heads (default: from the width)")
    ex.add_argument("--seed", type=int, default=0, help="seed of the new resampler's (or demo's) initialisation")
    ex.add_argument("--tokens", type=int, metavar="N", help="--resampler-only: tokens N the resampler reads")
    ex.add_argument("--width", type=int, metavar="D", help="--resampler-only: width D of those tokens")
    ex.add_argument("--state-dict", type=Path, metavar="FILE.pt",
                    help="--resampler-only: trained weights (torch.save(resampler.state_dict())) instead of --seed")
    ex.set_defaults(func=cmd_export)

    im = sub.add_parser("import", help="an existing ONNX vision encoder -> vision.fp32.onnx, a resampler and "
                        "source.json (a vision-only bundle)")
    im.add_argument("onnx", type=Path, metavar="ONNX", help="the vision encoder's .onnx file")
    im.add_argument("--out", type=Path, required=True, metavar="DIR", help="bundle directory, e.g. models/NAME")
    im.add_argument("--name", help="bundle name (default: the --out directory's name)")
    im.add_argument("--input", metavar="NAME", help="the image input (default: the single float input)")
    im.add_argument("--tokens", metavar="TENSOR", help="the token sequence [batch, N, D] -> patch_tokens (a tensor "
                    "or node name; default: the single 3-D float output)")
    im.add_argument("--pool", default="cls", metavar="cls|mean|TENSOR",
                    help="image_embeds: the class token (token 0), the mean of the tokens, or a named [batch, E] "
                         "tensor, e.g. a pooled or projected embedding the graph computes (default cls)")
    im.add_argument("--pool-after", metavar="TENSOR",
                    help="with --pool cls|mean: pool these tokens instead of --tokens (e.g. the output of a final "
                         "LayerNorm or per-token projection in the graph)")
    im.add_argument("--size", metavar="HxW", help="model input size (default: --preprocessor's, else the file's "
                    "static input size)")
    im.add_argument("--ignore-declared-shapes", action="store_true",
                    help="accept tensors whose shape the file declares differently from what the engines compute")
    im.add_argument("--no-fold", action="store_true", help="do not fold constants with onnxruntime's basic "
                    "optimisation")
    pp = im.add_argument_group("preprocessing (default: ImageNet's shortest edge + centre crop, bicubic, ImageNet "
                               "mean/std; flags override --preprocessor)")
    pp.add_argument("--preprocessor", type=Path, metavar="FILE", help="a Hugging Face preprocessor_config.json")
    pp.add_argument("--resize", choices=["shortest_edge", "squash", "letterbox"])
    pp.add_argument("--interpolation", choices=["bilinear", "bicubic"])
    pp.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"))
    pp.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"))
    pp.add_argument("--rescale", type=float, metavar="F", help="x = u8 * F before mean/std (default 1/255)")
    pp.add_argument("--channel-order", choices=["rgb", "bgr"])
    pp.add_argument("--pad", type=int, nargs=3, metavar=("R", "G", "B"), help="letterbox fill (default 0 0 0)")
    rs = im.add_argument_group("resampler (new, for the imported tokens; `export --resampler-only` replaces it)")
    rs.add_argument("--resampler", choices=["perceiver", "qformer"], help="default perceiver")
    rs.add_argument("--latents", type=int, help="number of latents/queries L (default 16, or the state dict's)")
    rs.add_argument("--resampler-depth", type=int, help="layers (default 2, or the state dict's)")
    rs.add_argument("--latent-dim", type=int, help="width Dl (default: the token width D, or the state dict's)")
    rs.add_argument("--resampler-heads", type=int, help="attention heads (default: from the width)")
    rs.add_argument("--seed", type=int, default=0, help="seed of its initialisation (default 0)")
    rs.add_argument("--resampler-state-dict", type=Path, metavar="FILE.pt", help="trained weights instead of --seed")
    im.set_defaults(func=cmd_import)

    q = sub.add_parser("quantize", help="write int8 ONNX files (tract-friendly QOperator format)")
    q.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    cal = q.add_mutually_exclusive_group()
    cal.add_argument("--images", type=Path, metavar="DIR", help="calibration images (png, jpg, ...)")
    cal.add_argument("--recording", type=Path, metavar="DIR",
                     help="calibrate on a recording's frames (`ocellus record --duration S --out DIR`, docs/recorder.md)")
    cal.add_argument("--scenes", type=int, default=64, metavar="N", help="generated scenes to calibrate on (default 64)")
    q.add_argument("--seed", type=int, default=7, help="seed of the generated calibration scenes")
    q.add_argument("--target-cosine", type=float, default=0.9995,
                   help="smallest cosine to fp32 an int8 file may have on any output (measured in the engine the "
                        "file is for, on 32 held-out scenes, or a subset of the --images or --recording's frames); nodes are left in float "
                        "until it is met (default 0.9995; 0 quantizes every candidate)")
    q.add_argument("--keep-slower", "--force", dest="keep_slower", action="store_true",
                   help="write int8 files even where they run slower than fp32 on this CPU (for bundles deployed "
                        "to another CPU, e.g. arm64 with dotprod); quantize.json marks them \"forced\"")
    q.set_defaults(func=cmd_quantize)

    v = sub.add_parser("validate", help="parity checks; writes reference/ and parity.json")
    v.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    v.add_argument("--seed", type=int, default=1234, help="seed of the reference images")
    v.add_argument("--min-cosine-fp32", type=float, default=0.99999, help="fp32 vs PyTorch threshold")
    v.add_argument("--min-cosine-int8", type=float, default=0.999, help="int8 vs fp32 threshold")
    v.add_argument("--no-tract", action="store_true", help="skip running the files in tract (the runtime's engine)")
    v.add_argument("--reference", choices=["pytorch", "onnxruntime"],
                   help="what the fp32 vision file is compared with: the PyTorch model (exported bundles) or the "
                        "original ONNX file in onnxruntime (imported bundles; the default for them)")
    v.add_argument("--original", type=Path, metavar="FILE",
                   help="imported bundles: the original ONNX file, when it moved since the import (checked by sha256)")
    v.set_defaults(func=cmd_validate)

    m = sub.add_parser("manifest", help="write manifest.toml")
    m.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    m.add_argument("--evaluation", type=Path, metavar="FILE",
                   help="evaluation figures (default: BUNDLE_DIR/evaluation.json if present)")
    m.set_defaults(func=cmd_manifest)

    pr = sub.add_parser("prototypes", help="few-shot image prototypes from DIR/<label>/*.png (prototypes.npy, "
                        "prototypes.json; manifest lists them)")
    pr.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    pr.add_argument("images", type=Path, metavar="DIR", help="one folder of example images per label")
    pr.add_argument("--logit-scale", type=float, help="bundles without a text encoder: the scores' logit scale "
                    "(default 100)")
    pr.add_argument("--logit-bias", type=float, help="bundles without a text encoder: the scores' logit bias "
                    "(default 0)")
    pr.set_defaults(func=cmd_prototypes)

    cp = sub.add_parser("check-prompts", help="show how the bundle's tokenizer reads prompts; warn about those it "
                        "cannot see (every token unknown or padding)")
    cp.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    cp.add_argument("prompts", nargs="*", metavar="PROMPT")
    cp.add_argument("--file", type=Path, metavar="FILE", help="prompts, one per line (# comments)")
    cp.add_argument("--strict", action="store_true", help="fail (exit 2) when a prompt is unknown")
    cp.set_defaults(func=cmd_check_prompts)

    from . import ortbench

    ob = sub.add_parser("ort-bench", help="time the bundle's encoder and resampler in onnxruntime (JSON; ocellus "
                        "bench runs it; --threads 0 means 1)")
    ortbench.add_arguments(ob)
    ob.set_defaults(func=cmd_ort_bench)

    module, _ = _train_demo_module()
    t = sub.add_parser("train-demo", help="train the bundled demo model (writes a checkpoint for export --builtin demo)")
    if module is not None:
        module.add_arguments(t)
    t.set_defaults(func=cmd_train_demo)
    if module is not None and hasattr(module, "add_evaluate_arguments"):
        e = sub.add_parser("evaluate", help="zero-shot figures of a demo bundle's ONNX files (writes evaluation.json)")
        module.add_evaluate_arguments(e)
        e.set_defaults(func=cmd_evaluate)
    return ap


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = parser().parse_args(argv)
    _quiet()
    warnings.formatwarning = _warning_line  # one line, like the errors (not the source line that warned)
    if args.command not in ("train-demo", "evaluate", "ort-bench"):
        import torch

        if args.threads > 0:
            torch.set_num_threads(args.threads)
    start = time.monotonic()
    try:
        rc = args.func(args)
    except ToolError as e:
        print(f"ocellus-tools {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ocellus-tools {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ocellus-tools {args.command}: interrupted; nothing was overwritten", file=sys.stderr)
        return 130
    if args.command not in ("train-demo", "evaluate", "ort-bench"):
        print(f"{args.command} done in {time.monotonic() - start:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
