"""The `ocellus-tools` command line: export, quantize, validate, manifest, train-demo (tools/README.md)."""

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
    names = export_bundle(bundle, out, spec)
    print(f"exported {bundle.source} ({bundle.resampler_kind} resampler) to {out}: {', '.join(names)}")
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
    if args.images is not None:
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
                             cos_int8=args.min_cosine_int8, use_tract=not args.no_tract)
    for name, f in parity["files"].items():
        figures = ", ".join(f"{o['name']} cosine {o['cosine']:.7f} max_abs {o['max_abs']:.3g}" for o in f["outputs"])
        print(f"{name} vs {f['reference']}: {figures}")
    ch = ", ".join(f"{o['name']} cosine {o['cosine']:.7f}" for o in parity["chained_int8"]["outputs"])
    print(f"int8 chain (vision -> resampler) vs fp32 chain: {ch}")
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
    ex.add_argument("--demo-checkpoint", type=Path, metavar="FILE",
                    help="trained demo weights for --builtin demo (default: random init from --seed)")
    ex.add_argument("--out", type=Path, required=True, metavar="DIR", help="bundle directory, e.g. models/NAME")
    ex.add_argument("--name", help="bundle name (default: the --out directory's name)")
    ex.add_argument("--tokenizer", type=Path, metavar="FILE", help="tokenizer.json to use instead of the checkpoint's")
    ex.add_argument("--resampler", choices=["perceiver", "qformer"], help="new resampler (default perceiver)")
    ex.add_argument("--latents", type=int, help="number of latents/queries L (default 16)")
    ex.add_argument("--resampler-depth", type=int, help="resampler layers (default 2)")
    ex.add_argument("--latent-dim", type=int, help="resampler width Dl (default: the vision width D)")
    ex.add_argument("--resampler-heads", type=int, help="resampler attention heads (default: from the width)")
    ex.add_argument("--seed", type=int, default=0, help="seed of the new resampler's (or demo's) initialisation")
    ex.set_defaults(func=cmd_export)

    q = sub.add_parser("quantize", help="write int8 ONNX files (tract-friendly QOperator format)")
    q.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    cal = q.add_mutually_exclusive_group()
    cal.add_argument("--images", type=Path, metavar="DIR", help="calibration images (png, jpg, ...)")
    cal.add_argument("--scenes", type=int, default=64, metavar="N", help="generated scenes to calibrate on (default 64)")
    q.add_argument("--seed", type=int, default=7, help="seed of the generated calibration scenes")
    q.add_argument("--target-cosine", type=float, default=0.9995,
                   help="smallest cosine to fp32 an int8 file may have on any output (measured in the engine the "
                        "file is for, on 32 held-out scenes, or a subset of the --images); nodes are left in float "
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
    v.set_defaults(func=cmd_validate)

    m = sub.add_parser("manifest", help="write manifest.toml")
    m.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    m.add_argument("--evaluation", type=Path, metavar="FILE",
                   help="evaluation figures (default: BUNDLE_DIR/evaluation.json if present)")
    m.set_defaults(func=cmd_manifest)

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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet()
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
