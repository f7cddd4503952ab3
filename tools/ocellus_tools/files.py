"""Bundle directory helpers: atomic writes, the output-directory check and source.json.

source.json records how the PyTorch reference of a bundle is rebuilt (which checkpoint or built-in model, the
resampler's configuration and seed) plus the facts the manifest needs that the ONNX files do not hold.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ToolError

SOURCE_FILE = "source.json"
PARITY_FILE = "parity.json"
EVALUATION_FILE = "evaluation.json"
QUANTIZE_FILE = "quantize.json"  # written by `quantize`: the int8 files, their format and engines
PROTOTYPES_FILE = "prototypes.npy"
PROTOTYPES_RECORD = "prototypes.json"  # written by `prototypes` beside the array: labels, counts, vision sha256
ROLES = ("vision", "resampler", "text")
VARIANTS = ("fp32", "int8")


def onnx_name(role: str, variant: str) -> str:
    return f"{role}.{variant}.onnx"


def ort_int8_name(role: str) -> str:
    """The int8 file quantize makes for onnxruntime (QDQ or dynamic); `<role>.int8.onnx` is tract's QOperator."""
    return f"{role}.int8-ort.onnx"


def derived_files(roles=ROLES) -> list[str]:
    """What quantize, validate, prototypes and manifest write from the fp32 files of `roles`: stale once those
    change."""
    names = [n for r in roles for n in (onnx_name(r, "int8"), ort_int8_name(r))]
    return names + [QUANTIZE_FILE, PARITY_FILE, "reference", "manifest.toml"]


def remove_files(bundle: Path, names: list[str]) -> list[str]:
    """Removes the named files or directories of `bundle` that exist; returns those it removed."""
    removed = []
    for name in names:
        p = Path(bundle) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def ensure_writable_dir(path: Path, what: str = "output directory") -> Path:
    """Creates `path` if needed and proves it writable; ToolError naming the path and the fix otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ToolError(f"{what} {path} is not writable ({e.strerror or e}): choose another --out or fix its "
                        "permissions") from e
    return path


def staging_dir(bundle: Path) -> Path:
    """A fresh temporary directory inside `bundle` (same file system, so os.replace is atomic)."""
    ensure_writable_dir(bundle, "bundle directory")
    return Path(tempfile.mkdtemp(dir=bundle, prefix=".staging-"))


def commit_files(staging: Path, bundle: Path, names: list[str]) -> None:
    """Moves staged files (or directories) into the bundle, each with an atomic rename, then drops staging."""
    try:
        for name in names:
            src, dst = staging / name, bundle / name
            if src.is_dir():
                old = None
                if dst.exists():
                    old = bundle / f".old-{name}-{os.getpid()}"
                    os.replace(dst, old)
                os.replace(src, dst)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(src, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    ensure_writable_dir(path.parent, "bundle directory")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path, fix: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ToolError(f"{path} does not exist: {fix}") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ToolError(f"cannot read {path}: {e}: {fix}") from e


def read_source(bundle: Path) -> dict:
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise ToolError(f"bundle directory {bundle} does not exist: run `ocellus-tools export --out {bundle}` first")
    return read_json(bundle / SOURCE_FILE, f"run `ocellus-tools export --out {bundle}` first")


def require_files(bundle: Path, names: list[str], step: str) -> None:
    missing = [n for n in names if not (Path(bundle) / n).is_file()]
    if missing:
        raise ToolError(f"{bundle} lacks {', '.join(missing)}: run `ocellus-tools {step} {bundle}` first")


ENGINES = ("tract", "onnxruntime")
QUANT_FORMATS = ("qoperator", "qdq", "dynamic")


def bundle_roles(bundle: Path, rec: dict) -> list[str]:
    """The roles of a bundle: vision and resampler always, text when source.json has a text tower."""
    if rec.get("preprocess") is None or rec.get("spec", {}).get("kind") == "resampler-only":
        raise ToolError(f"{bundle} holds only a resampler (export --resampler-only into an empty directory): import "
                        "or export a vision encoder into it first")
    return ["vision", "resampler"] + (["text"] if rec.get("text") else [])


def quant_format(path: Path) -> str:
    """"qoperator", "dynamic" or "qdq", read from the operators of an int8 ONNX file."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    if ops & {"QLinearMatMul", "QLinearConv"}:
        return "qoperator"
    if ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}:
        return "dynamic"
    if "DequantizeLinear" in ops:
        return "qdq"
    raise ToolError(f"{path} holds no quantized operator: it is not an int8 file; re-run `ocellus-tools quantize`")


def int8_files(bundle: Path, roles: list[str]) -> list[dict]:
    """The bundle's int8 files as {"role", "path", "quant", "engines"}: those quantize.json lists (in its order),
    or, without quantize.json, the `<role>.int8.onnx` files that exist (tract's QOperator format, as quantize
    wrote them before quantize.json) and then any `<role>.int8-ort.onnx` (for onnxruntime; the format read from
    its operators). int8 files quantize.json does not list are left out, with a warning."""
    bundle = Path(bundle)
    qfile = bundle / QUANTIZE_FILE
    if not qfile.is_file():
        files = [{"role": r, "path": onnx_name(r, "int8"), "quant": "qoperator", "engines": ["tract"]}
                 for r in roles if (bundle / onnx_name(r, "int8")).is_file()]
        return files + [{"role": r, "path": ort_int8_name(r), "quant": quant_format(bundle / ort_int8_name(r)),
                         "engines": ["onnxruntime"]} for r in roles if (bundle / ort_int8_name(r)).is_file()]
    fix = f"run `ocellus-tools quantize {bundle}` again"
    q = read_json(qfile, fix)
    files = q.get("files") if isinstance(q, dict) else None
    if not isinstance(files, list):
        raise ToolError(f"{qfile} has no \"files\" list: {fix}")
    out = []
    for f in files:
        try:
            role, path = f["role"], f["path"]
            quant, engines = f.get("quant"), f.get("engines")
        except (KeyError, TypeError) as e:
            raise ToolError(f"{qfile}: a file entry lacks {e}: {fix}") from e
        if f.get("variant", "int8") != "int8":
            continue
        if role not in roles:
            raise ToolError(f"{qfile} lists {path} for role {role!r}, which this bundle does not have: {fix}")
        if quant is not None and quant not in QUANT_FORMATS:
            raise ToolError(f"{qfile}: {path} has quant {quant!r}, not one of {', '.join(QUANT_FORMATS)}: {fix}")
        if engines is not None and (not isinstance(engines, list) or not engines
                                    or any(e not in ENGINES for e in engines)):
            raise ToolError(f"{qfile}: {path} has engines {engines!r}, not a list of {', '.join(ENGINES)}: {fix}")
        if Path(path).name != path or not (bundle / path).is_file():
            raise ToolError(f"{qfile} lists {path}, which is not a file in {bundle}: {fix}")
        out.append({"role": role, "path": path, "quant": quant, "engines": engines})
    listed = {f["path"] for f in out}
    for name in (n for r in roles for n in (onnx_name(r, "int8"), ort_int8_name(r))):
        if (bundle / name).is_file() and name not in listed:
            import sys

            print(f"warning: {bundle / name} is not listed in {qfile.name}, so it is not part of the bundle: "
                  f"remove it, or run `ocellus-tools quantize {bundle}` again", file=sys.stderr)
    return out


def select_file(files: list[dict], role: str, engine: str) -> dict | None:
    """The file the runtime runs for (role, engine) among `files` of one variant: the first whose engines contain
    the engine or that names none (docs/manifest.md, [[files]])."""
    return next((f for f in files if f["role"] == role and (not f.get("engines") or engine in f["engines"])), None)
