"""Sampling and log-prob speed: default MAF (teacher), distilled IAF sampler (student), BNAF.

Models are freshly built with the default architectures (speed does not depend on the trained
weights): the MAF of ``configs/maf_hits.yaml`` (hits representation tracks 16 / ECAL 240 /
HCAL 12: D = 807; 5 blocks of [256, 256], batch norm), the student ``tfjetflows.flows.iaf.IAF``
with the same constructor arguments (skipped with a message when it cannot be imported) and the
BNAF of ``configs/bnaf_hits.yaml`` (D = 279). Their preprocessing is fitted on a few hundred
synthetic jets so that sampled vectors decode into plausible jets.

Every figure is jets per second of one call of a ``tf.function`` (optionally XLA-compiled,
``jit_compile=True``): one warm-up call (tracing) first, then ``--repeats`` timed calls; the
table gives the median and the slowest-fastest range. Sampling is reported three ways for each
batch size ``n``: flow vectors only (``vectors``), vectors decoded into 3x125x125 images
(``images``, ``representation.decode``) and into hit lists (``hits``, ``decode_hits``), each
timed end to end inside one ``tf.function`` for the student. The teacher's sampling is
sequential (807 passes per block), so it is timed on a few hundred jets, XLA at its smallest
batch size only, and its decoded rates are derived (marked so) from its vector rate and the
decode-only rates (``decode images`` / ``decode hits`` rows: decoding fixed vectors), since
decoding is a small fraction of its time. Decoded images are capped at ``--max-image-batch``
jets per call (10,000 images are 1.9 GB).

Usage:
    python bench/bench_sampling.py [--quick] [--json out.json] [--skip student bnaf ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    Row,
    fill_ratios,
    machine_info,
    markdown_table,
    rate_row,
    skipped_row,
    time_calls,
    write_json,
)

__all__ = ["PARTS", "build_parser", "main", "run"]

PARTS = ("teacher", "student", "bnaf")
REPO = Path(__file__).resolve().parent.parent
FULL = {
    "teacher_n": [100, 200],
    "student_n": [100, 1000, 10000],
    "log_prob_n": [256, 4096],
    "repeats": 3,
    "teacher_repeats": 2,
    "teacher_xla": True,
    "student_xla": 3,
    "fit_jets": 512,
}
QUICK = {
    "teacher_n": [10],
    "student_n": [100, 1000],
    "log_prob_n": [256],
    "repeats": 2,
    "teacher_repeats": 1,
    "teacher_xla": False,
    "student_xla": 1,
    "fit_jets": 128,
}


def _setup(config_name: str, jets: int) -> tuple[Any, Any, Any]:
    """Config, representation and a fitted preprocessing config, from synthetic jets."""
    import numpy as np

    from tfjetflows.config import load_config
    from tfjetflows.data.preprocessing import fit_preprocessing
    from tfjetflows.data.synthetic import generate_synthetic
    from tfjetflows.training.fit import build_representation

    config = load_config(REPO / "configs" / config_name)
    representation = build_representation(config)
    rng = np.random.default_rng(0)
    vectors = [
        representation.encode(images, {"pt": pt, "m0": m0, "y": y}, rng)
        for images, pt, m0, y in generate_synthetic(jets, seed=5, chunk=256)
    ]
    x = np.concatenate(vectors)
    preprocessing = fit_preprocessing(representation, x).get_config()
    return config, representation, (preprocessing, x)


def _model_kwargs(config: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(config.model).items() if k != "kind"}


def _sampling_rows(
    label: str,
    model: Any,
    representation: Any,
    sizes: list[int],
    repeats: int,
    *,
    decode_sizes: list[int],
    xla_sizes: list[int],
    max_image_batch: int,
) -> list[Row]:
    """Sampling rows of ``model`` for each batch size (and variant, see the module docstring)."""
    import tensorflow as tf

    seed = tf.constant([1, 2], tf.int32)
    rows: list[Row] = []
    variants = {
        "vectors": lambda v: v,
        "images": representation.decode,
        "hits": representation.decode_hits,
    }
    for n in sizes:
        for variant, after in variants.items():
            if variant != "vectors" and n not in decode_sizes:
                continue
            if variant == "images" and n > max_image_batch:
                continue
            for xla in (False, True):
                if xla and (variant != "vectors" or n not in xla_sizes):
                    continue
                fn = tf.function(
                    lambda n=n, after=after: after(model.sample(n, seed=seed)), jit_compile=xla
                )
                name = f"sampling {label} {variant} n={n}" + (" XLA" if xla else "")
                try:
                    timing = time_calls(fn, repeats)
                except Exception as err:  # noqa: BLE001 - an XLA failure is a figure too
                    rows.append(skipped_row(name, f"{type(err).__name__}: {err}"[:200], "jets/s"))
                    continue
                row = rate_row(
                    name,
                    n,
                    timing,
                    "jets/s",
                    key=f"{label}.{variant}.n{n}" + (".xla" if xla else ""),
                )
                rows.append(row)
                print(
                    f"{name}: {row['value']:.1f} jets/s (first call {timing['first_s']:.1f} s)",
                    flush=True,
                )
    return rows


def _decode_rows(
    representation: Any, x: Any, sizes: list[int], repeats: int, max_image_batch: int
) -> list[Row]:
    """Decode-only rates: fixed vectors [n, D] to images and to hit lists, in a tf.function."""
    import numpy as np
    import tensorflow as tf

    rows = []
    for n in sizes:
        batch = tf.constant(np.resize(x, (n, x.shape[1])))
        for variant, decode in (
            ("images", representation.decode),
            ("hits", representation.decode_hits),
        ):
            if variant == "images" and n > max_image_batch:
                continue
            fn = tf.function(lambda batch=batch, decode=decode: decode(batch))
            name = f"decode {variant} n={n}"
            rows.append(
                rate_row(name, n, time_calls(fn, repeats), "jets/s", key=f"decode.{variant}.n{n}")
            )
            print(f"{name}: {rows[-1]['value']:.0f} jets/s", flush=True)
    return rows


def _derived_rows(label: str, rows: list[Row], sizes: list[int]) -> list[Row]:
    """Decoded-jet rates of ``label`` from its vector rate and the decode-only rate."""
    by_key = {r.get("key"): r for r in rows if r.get("value") is not None}
    out = []
    for n in sizes:
        vectors = by_key.get(f"{label}.vectors.n{n}")
        for variant in ("images", "hits"):
            decode = by_key.get(f"decode.{variant}.n{n}")
            if vectors is None or decode is None:
                continue
            value = 1.0 / (1.0 / vectors["value"] + 1.0 / decode["value"])
            out.append(
                {
                    **vectors,
                    "name": f"sampling {label} {variant} n={n}",
                    "key": f"{label}.{variant}.n{n}",
                    "value": value,
                    "spread": None,
                    "note": "derived: 1/(1/vectors + 1/decode)",
                    "detail": {"vectors": vectors["value"], "decode": decode["value"]},
                }
            )
    return out


def _student_vs_teacher(rows: list[Row]) -> list[Row]:
    """Give student rows the teacher's figure at the same variant and n as their peer; add a
    row with the ratio of the best vector rates of the two sweeps."""
    teacher = {
        r["key"]: r["value"]
        for r in rows
        if str(r.get("key", "")).startswith("MAF teacher.") and r.get("value") is not None
    }
    student = [r for r in rows if str(r.get("key", "")).startswith("IAF student.")]
    for row in student:
        if row["key"].replace("IAF student", "MAF teacher") in teacher:
            row["peer_key"] = row["key"].replace("IAF student", "MAF teacher")
    fill_ratios(student, {k: ("MAF teacher", v) for k, v in teacher.items()})
    best_teacher = [v for k, v in teacher.items() if ".vectors." in k and not k.endswith("xla")]
    best_student = [
        r["value"]
        for r in student
        if ".vectors." in r["key"] and not r["key"].endswith("xla") and r.get("value")
    ]
    if not best_teacher or not best_student:
        return []
    ratio = max(best_student) / max(best_teacher)
    return [
        {
            "name": "student/teacher speed ratio (best vectors jets/s of each sweep)",
            "value": ratio,
            "unit": "x",
            "spread": None,
            "peer": None,
            "peer_name": None,
            "ratio": None,
            "load": os.getloadavg()[0],
            "note": "not at the same batch size: each model at its fastest measured n",
            "detail": {"student": max(best_student), "teacher": max(best_teacher)},
            "key": "student_over_teacher",
        }
    ]


def _log_prob_rows(label: str, model: Any, x: Any, sizes: list[int], repeats: int) -> list[Row]:
    import numpy as np
    import tensorflow as tf

    rows = []
    for n in sizes:
        batch = tf.constant(np.resize(x, (n, x.shape[1])))
        fn = tf.function(lambda batch=batch: model.log_prob(batch))
        timing = time_calls(fn, repeats)
        name = f"log-prob {label} batch={n}"
        rows.append(rate_row(name, n, timing, "jets/s", key=f"{label}.log_prob.n{n}"))
        print(f"{name}: {rows[-1]['value']:.0f} jets/s", flush=True)
    return rows


def _student_class() -> tuple[Any, str]:
    try:
        from tfjetflows.flows.iaf import IAF
    except ImportError as err:
        return None, f"the distilled sampler is not available (tfjetflows.flows.iaf: {err})"
    return IAF, ""


def run(args: argparse.Namespace) -> list[Row]:
    """Run the sampling benches of ``args``; return the rows."""
    import keras

    from tfjetflows.training.fit import build_flow

    sizes = QUICK if args.quick else FULL
    teacher_n = args.teacher_n or sizes["teacher_n"]
    student_n = args.student_n or sizes["student_n"]
    repeats = args.repeats or sizes["repeats"]
    rows: list[Row] = []
    need_maf = "teacher" not in args.skip or "student" not in args.skip
    if need_maf:
        keras.utils.set_random_seed(0)
        config, representation, (preprocessing, x) = _setup("maf_hits.yaml", sizes["fit_jets"])
        dim = representation.dim
        print(f"MAF: {config.model}, D={dim}", flush=True)
    if "teacher" not in args.skip:
        teacher = build_flow(config, event_size=dim, context_size=0, preprocessing=preprocessing)
        teacher.log_prob(x[:2])  # build the weights
        rows += _sampling_rows(
            "MAF teacher",
            teacher,
            representation,
            teacher_n,
            args.teacher_repeats or sizes["teacher_repeats"],
            decode_sizes=[],
            xla_sizes=[] if args.no_xla or not sizes["teacher_xla"] else teacher_n[:1],
            max_image_batch=args.max_image_batch,
        )
        rows += _log_prob_rows("MAF teacher", teacher, x, sizes["log_prob_n"], repeats)
    if "student" not in args.skip:
        iaf, reason = _student_class()
        if iaf is None:
            print(f"student: {reason}", flush=True)
            rows.append(skipped_row("sampling IAF student", reason, "jets/s"))
        else:
            student = iaf(
                event_size=dim,
                context_size=0,
                preprocessing=preprocessing,
                **_model_kwargs(config),
            )
            student.sample(2, seed=keras.ops.convert_to_tensor([1, 2], "int32"))  # build
            rows += _sampling_rows(
                "IAF student",
                student,
                representation,
                student_n,
                repeats,
                decode_sizes=student_n,
                xla_sizes=[] if args.no_xla else student_n[: sizes["student_xla"]],
                max_image_batch=args.max_image_batch,
            )
    if need_maf:
        decode_n = sorted(set(teacher_n[:1] if "teacher" not in args.skip else []) | set(student_n))
        rows += _decode_rows(representation, x, decode_n, repeats, args.max_image_batch)
        if "teacher" not in args.skip:
            rows += _derived_rows("MAF teacher", rows, teacher_n[:1])
    rows += _student_vs_teacher(rows)
    if "bnaf" not in args.skip:
        keras.utils.set_random_seed(0)
        bconfig, brep, (bpre, bx) = _setup("bnaf_hits.yaml", sizes["fit_jets"])
        bnaf = build_flow(bconfig, event_size=brep.dim, context_size=0, preprocessing=bpre)
        print(f"BNAF: {bconfig.model}, D={brep.dim}", flush=True)
        rows += _log_prob_rows("BNAF", bnaf, bx, sizes["log_prob_n"], repeats)
    return rows


def devices() -> list[str]:
    """The physical devices TensorFlow sees (CPU, GPUs)."""
    import tensorflow as tf

    return [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()]


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (``run_all.py`` builds its arguments with it too)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    parser.add_argument("--teacher-n", type=int, nargs="+", help="teacher sampling batch sizes")
    parser.add_argument("--student-n", type=int, nargs="+", help="student sampling batch sizes")
    parser.add_argument("--repeats", type=int, help="timed calls per figure")
    parser.add_argument("--teacher-repeats", type=int, help="timed calls per teacher figure")
    parser.add_argument("--max-image-batch", type=int, default=1000)
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA variants")
    parser.add_argument("--json", dest="json_path", help="write rows and machine to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: run the benches, print the table, write JSON."""
    args = build_parser().parse_args(argv)
    machine = machine_info()
    start = time.perf_counter()
    rows = run(args)
    print("\n" + markdown_table(rows))
    if args.json_path:
        write_json(
            args.json_path,
            {
                "bench": "sampling",
                "machine": machine,
                "devices": devices(),
                "quick": args.quick,
                "seconds": time.perf_counter() - start,
                "loadavg_after": list(os.getloadavg()),
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
