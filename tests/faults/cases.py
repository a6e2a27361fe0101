"""The fault table. Each row: what is broken, the command, and the outcome it must have.

A new fault is one more ``Case`` in ``CASES`` (its injection or library call, if new, goes in
actions.py). Rows with ``stores=True`` run once per backend (Zarr and HDF5). ``kept`` names
what the command must not lose (see ``KEPT`` in test_faults.py): ``store`` (the store's files are
byte-for-byte unchanged), ``run`` (the run directory is unchanged), ``no_out`` (nothing left
under the output folder), ``committed`` (every committed video still reads back as written),
``no_code_ran`` (a hostile pickle did nothing), and the row-specific checks listed there.
"""

from __future__ import annotations

from tests.faults.actions import (
    ARRAYS,
    BAD_INPUTS,
    EXTRACT,
    SMALL,
    append_one,
    bad_inputs_manifest,
    concurrent_shards,
    decoders_agree,
    delete,
    extract_with,
    file_at,
    flip,
    float16_overflow,
    hostile_checkpoint,
    killed_writer,
    locks_is_a_file,
    manifest,
    nan_in_attrs,
    newer_schema,
    one_class_store,
    one_video_store,
    open_schema_1,
    read_everything,
    special_files,
    truncate_predictions,
    two_writers,
)
from tests.faults.harness import Case, decode_job, heads, lib, truncate_part, vidfeat
from vidfeat_cli.core import EXIT_CANNOT_RUN as CANNOT_RUN
from vidfeat_cli.core import EXIT_OK as OK
from vidfeat_cli.core import EXIT_SOME_FAILED as SOME_FAILED

# ------------------------------------------------------------------------------ the table


def _integrity_rows() -> list[Case]:
    rows = []
    for what, array in ARRAYS.items():
        for damage, inject, message in (
            ("flip", flip(array), f"array {array}"),
            ("delete", delete(array), "missing"),
        ):
            fault = f"{damage} bytes of the first {what} chunk"
            common = dict(fault=fault, inject=inject, stores=True, code=CANNOT_RUN)
            rows += [
                Case(f"{damage}-{what}-read", run=lib(read_everything), message=message, **common),
                Case(
                    f"{damage}-{what}-train",
                    run=heads("train", "{store}", "-m", "bof", "-o", "{tmp}/run-out", *SMALL),
                    message=message,
                    kept=("store",),
                    **common,
                ),
                Case(
                    f"{damage}-{what}-verify",
                    run=vidfeat("verify", "{store}"),
                    message=message,
                    kept=("store",),
                    **common,
                ),
            ]
            # Reopening to append reads the per-video table (a damaged one must not let a rerun
            # add a ghost video); feature chunks are checked by readers and verify, not here.
            if what != "features":
                rows.append(
                    Case(
                        f"{damage}-{what}-append",
                        run=lib(append_one),
                        message=message,
                        kept=("store",),
                        **common,
                    )
                )
    return rows


CASES: list[Case] = [
    *_integrity_rows(),
    # -- store structure -----------------------------------------------------------------------
    *[
        Case(
            f"truncated-part-{name}",
            "part main's zarr.json (HDF5: first segment) cut in half",
            run=run,
            inject=lambda env: truncate_part(env.store, env.fmt),
            stores=True,
            code=CANNOT_RUN,
            message="part main",
            kept=kept,
        )
        for name, run, kept in (
            ("read", lib(read_everything), ()),
            ("verify", vidfeat("verify", "{store}"), ("store",)),
            ("append", lib(append_one), ("store",)),
            ("train", heads("train", "{store}", "-m", "bof", "-o", "{tmp}/r", *SMALL), ("store",)),
        )
    ],
    *[
        Case(
            f"newer-schema-{name}",
            "root metadata says schema_version 99",
            run=run,
            inject=newer_schema,
            stores=True,
            code=CANNOT_RUN,
            message="schema",
            kept=("store",),
        )
        for name, run in (
            ("read", lib(read_everything)),
            ("append", lib(append_one)),
            ("train", heads("train", "{store}", "-m", "bof", "-o", "{tmp}/r", *SMALL)),
        )
    ],
    Case(
        "other-config-append",
        "append with another backbone in the attrs",
        run=lib(lambda env: append_one(env, backbone="other")),
        stores=True,
        code=CANNOT_RUN,
        message="backbone",
        kept=("store",),
    ),
    Case(
        "nan-in-attrs",
        "NaN inside a new store's attrs",
        run=lib(nan_in_attrs),
        stores=True,
        code=CANNOT_RUN,
        message="NaN",
        kept=("no_out",),
    ),
    Case(
        "float16-overflow",
        "1e5 written to a float16 store (inf after the cast)",
        run=lib(float16_overflow),
        stores=True,
        code=CANNOT_RUN,
        message="'big'.*inf",
        kept=("no_big",),
    ),
    # -- paths and file systems ----------------------------------------------------------------
    Case(
        "locks-is-a-file",
        "STORE.locks is a file",
        run=lib(append_one),
        inject=locks_is_a_file,
        stores=True,
        code=CANNOT_RUN,
        message="in the way",
        kept=("store",),
    ),
    Case(
        "train-out-under-a-file",
        "heads train -o below a file",
        run=heads("train", "{store}", "-m", "bof", "-o", "{tmp}/blocker/run", *SMALL),
        inject=file_at("blocker"),
        code=CANNOT_RUN,
        message="in the way",
    ),
    Case(
        "missing-store",
        "heads train on a store that does not exist",
        run=heads("train", "{tmp}/nope.zarr", "-m", "bof", "-o", "{tmp}/out/run"),
        code=CANNOT_RUN,
        message="no feature store",
        kept=("no_out",),
    ),
    Case(
        "read-only-append",
        "append to a store on a read-only file system",
        run=lib(append_one),
        stores=True,
        needs="ro",
        code=CANNOT_RUN,
        message="read-only file system",
        kept=("store", "committed"),
    ),
    Case(
        "read-only-read",
        "read and verify a store on a read-only file system",
        run=lib(read_everything),
        stores=True,
        needs="ro",
        code=OK,
    ),
    Case(
        "read-only-verify",
        "verify a store on a read-only file system",
        run=vidfeat("verify", "{store}"),
        stores=True,
        needs="ro",
        code=OK,
        message="clean",
    ),
    Case(
        "read-only-train-out",
        "heads train -o on a read-only file system",
        run=heads("train", "{store}", "-m", "bof", "-o", "{mnt}/run", *SMALL),
        stores=True,
        needs="ro",
        code=CANNOT_RUN,
        message="read-only file system",
    ),
    Case(
        "full-disk-append",
        "append to a store on a full file system, then free space and rerun",
        run=lib(append_one),
        stores=True,
        needs="full",
        code=CANNOT_RUN,
        message=r"<tmp>/mnt/store\.(zarr|h5)\S*.*\(disk full\)",
        kept=("committed", "resumes"),
    ),
    Case(
        "full-disk-checkpoint",
        "heads train writing its run to a full file system",
        run=heads("train", "{store}", "-m", "bof", "-o", "{mnt}/run", *SMALL),
        stores=True,
        needs="full",
        code=CANNOT_RUN,
        message=r"error: <tmp>/mnt/run/\S+: disk full$",
    ),
    # -- runs ----------------------------------------------------------------------------------
    Case(
        "resume-on-another-store",
        "train --resume of a run killed before its test results, with a store of another backbone",
        run=heads("train", "{other}", "-m", "bof", "-o", "{run}", "--resume", *SMALL),
        inject=lambda env: (env.run / "test_metrics.json").unlink(),
        stores=True,
        code=CANNOT_RUN,
        message="backbone",
        kept=("run",),
    ),
    Case(
        "resume-a-finished-run",
        "train --resume of a run that already finished",
        run=heads("train", "{store}", "-m", "bof", "-o", "{run}", "--resume", *SMALL),
        stores=True,
        code=OK,
        message="holds a finished run: nothing to resume",
        kept=("run",),
    ),
    Case(
        "evaluate-on-another-store",
        "evaluate a run on a store of another backbone",
        run=heads("evaluate", "{run}", "--store", "{other}"),
        stores=True,
        code=CANNOT_RUN,
        message="backbone",
        kept=("run",),
    ),
    Case(
        "predict-on-another-store",
        "predict with a store of another backbone",
        run=heads("predict", "{run}", "--store", "{other}", "--out", "{tmp}/out/p.csv"),
        stores=True,
        code=CANNOT_RUN,
        message="backbone",
        kept=("run", "no_out"),
    ),
    Case(
        "one-class-store",
        "every video of the store has the same single label",
        run=heads("train", "{tmp}/one{suffix}", "-m", "bof", "-o", "{tmp}/out/run", *SMALL),
        inject=one_class_store,
        stores=True,
        code=CANNOT_RUN,
        message="only one class",
        kept=("no_out",),
    ),
    Case(
        "report-truncated-predictions",
        "test_predictions.npz cut to 100 bytes",
        run=heads("report", "{run}", "--out", "{tmp}/out/rep"),
        inject=truncate_predictions,
        code=CANNOT_RUN,
        message="test_predictions.npz",
        kept=("no_out",),
    ),
    Case(
        "report-empty-directory",
        "heads report on an empty directory",
        run=heads("report", "{tmp}/empty", "--out", "{tmp}/out/rep"),
        inject=lambda env: env.path("empty").mkdir(),
        code=CANNOT_RUN,
        message="neither a heads run nor an ensemble",
        kept=("no_out",),
    ),
    Case(
        "hostile-checkpoint",
        "best.pt is a pickle that runs a shell command when loaded",
        run=heads("evaluate", "{run}"),
        inject=hostile_checkpoint,
        code=CANNOT_RUN,
        message="^error: refused checkpoint .*best.pt: (?!.*weights_only)",
        kept=("no_code_ran",),
    ),
    # -- manifests and input paths (refused at validation, before any model is loaded) --------
    Case(
        "manifest-trailing-field",
        "every row has one field more than the header",
        run=vidfeat(*EXTRACT),
        inject=manifest("a,{tmp}/a.mp4,x,extra", "b,{tmp}/b.mp4,y,extra"),
        code=CANNOT_RUN,
        message="line 2: 4 fields, the header has 3",
        kept=("no_out",),
    ),
    Case(
        "manifest-quoted-newline",
        "a quoted label spans two lines; a later row is bad",
        run=vidfeat(*EXTRACT),
        inject=manifest('a,{tmp}/a.mp4,"x;\ny"', "b,{tmp}/b.mp4,y,extra"),
        code=CANNOT_RUN,
        message="line 4: 4 fields",
        kept=("no_out",),
    ),
    Case(
        "video-path-is-special",
        "a directory, a FIFO and a device listed as videos",
        run=vidfeat(*EXTRACT),
        inject=lambda env: (
            special_files(env),
            manifest("d,{tmp}/a_dir.mp4,x", "f,{tmp}/a_fifo.mp4,x", "c,/dev/null,x")(env),
        ),
        code=CANNOT_RUN,
        message="(?s)a directory.*a FIFO.*a character device",
        kept=("no_out",),
    ),
    Case(
        "extract-out-is-a-file",
        "extract --out names an existing file",
        run=vidfeat(*EXTRACT),
        inject=lambda env: (manifest("a,{tmp}/a.mp4,x")(env), env.out.write_text("not a store")),
        code=CANNOT_RUN,
        message="is a file, not a vidfeat",
    ),
    # -- bad inputs and misbehaving decoders: recorded per video, the job goes on -------------
    *[
        Case(
            f"bad-input-{status}",
            f"a {status} file among good ones",
            run=lambda env, status=status: decode_job(env, ("good", status, "good2")),
            needs="media",
            code=SOME_FAILED,
            message=f"good: done\n{status}: {status}\ngood2: done",
        )
        for status in BAD_INPUTS
    ],
    Case(
        "extract-bad-inputs",
        "every kind of broken file and a missing one beside a good clip, through `vidfeat "
        "extract` with the real backbone",
        run=vidfeat(*EXTRACT, "--device", "cpu", "--decoder", "pyav", "--timeout", "60"),
        inject=bad_inputs_manifest,
        needs="media",
        code=SOME_FAILED,
        message="1 extracted, 0 already done, 7 failed",
        kept=("recorded",),
        slow=True,
    ),
    Case(
        "hung-decoder",
        "a decoder that sleeps forever and one stuck in C holding the GIL",
        run=lambda env: decode_job(env, ("good", "hang", "spin", "good2"), "faulty", 1.0),
        needs="media",
        code=SOME_FAILED,
        message="good: done\nhang: timeout\nspin: timeout\ngood2: done",
    ),
    Case(
        "crashing-decoder",
        "a decoder process killed by SIGSEGV",
        run=lambda env: decode_job(env, ("good", "segv", "good2"), "faulty", 30.0),
        needs="media",
        code=SOME_FAILED,
        message="good: done\nsegv: crashed\ngood2: done",
    ),
    # -- killed writers ------------------------------------------------------------------------
    *[
        Case(
            f"killed-writer-{name}",
            f"{name} after 3 commits, then the same command again",
            run=killed_writer(sig),
            stores=True,
            code=OK,
            kept=("equals_uninterrupted",),
        )
        for name, sig in (("sigkill", 9), ("sigterm", 15))
    ],
    # -- configuration identity ----------------------------------------------------------------
    Case(
        "fps-spellings-are-one-rate",
        "a store made with --fps 1 reopened with --fps 1.0 and --fps 1/1",
        run=lib(lambda env: extract_with(env, "fps", "1", "1.0", "1/1")),
        code=OK,
    ),
    Case(
        "fps-other-rate-refused",
        "a store made with --fps 1 reopened with --fps 2",
        run=lib(lambda env: extract_with(env, "fps", "1", "2")),
        code=CANNOT_RUN,
        message="fps",
    ),
    Case(
        "schema-1-inf-names-the-video",
        "a schema-1 store whose float16 features hold inf (written before the check)",
        run=lib(read_everything),
        inject=open_schema_1,
        stores=True,
        code=CANNOT_RUN,
        message="video 'd'.*non-finite",
    ),
    Case(
        "newer-schema-verify",
        "vidfeat verify on a store of schema_version 99",
        run=vidfeat("verify", "{store}"),
        inject=newer_schema,
        stores=True,
        code=CANNOT_RUN,
        message="schema",
        kept=("store",),
    ),
    Case(
        "train-over-a-finished-run",
        "heads train into the folder of a finished run, without --resume",
        run=heads("train", "{store}", "-m", "bof", "-o", "{run}", *SMALL),
        stores=True,
        code=CANNOT_RUN,
        message="already holds a finished run; add --force",
        kept=("run",),
    ),
    # -- decoders that used to disagree ----------------------------------------------------------
    Case(
        "decoders-rotated",
        "a video with a 90 degree display matrix, decoded by pyav and by decord",
        run=decoders_agree("rotated"),
        needs="media",
        code=OK,
        message="max difference 0$",
    ),
    Case(
        "decoders-444",
        "an H.264 4:4:4 video, decoded by pyav and by decord",
        run=decoders_agree("yuv444"),
        needs="media",
        code=OK,
        message="max difference 0$",
    ),
    *[
        Case(
            f"gif-refused-{decoder}",
            "an animated GIF listed as a video",
            run=lambda env, decoder=decoder: decode_job(env, ("good", "gif"), decoder),
            needs="media",
            code=SOME_FAILED,
            message="gif: not_video",
        )
        for decoder in ("pyav", "decord")
    ],
    Case(
        "decoder-mixing-refused",
        "a store made with --decoder decord reopened with --decoder pyav (10-bit 4:2:0 frames "
        "differ between the two, so one store never mixes them)",
        run=lib(lambda env: extract_with(env, "decoder", "decord", "pyav")),
        code=CANNOT_RUN,
        message="decoder: store has 'decord', this run has 'pyav'",
    ),
    # -- writers -----------------------------------------------------------------------------
    Case(
        "second-writer-of-a-part",
        "two writers of part main at once",
        run=lib(two_writers),
        stores=True,
        code=CANNOT_RUN,
        message="part 'main' .* is being written by another process",
    ),
    Case(
        "concurrent-shards",
        "three processes write one store at once, one part each",
        run=concurrent_shards,
        stores=True,
        code=OK,
        kept=("shards_complete",),
    ),
    Case(
        "one-video-store",
        "a store of a single labelled video",
        run=heads("train", "{tmp}/one{suffix}", "-m", "bof", "-o", "{tmp}/out/run", *SMALL),
        inject=one_video_store,
        stores=True,
        code=CANNOT_RUN,
        message="only 1 labelled video",
        kept=("no_out",),
    ),
    Case(
        "last-batch-of-one",
        "17 training videos in batches of 8: the last batch holds one video",
        run=heads(
            "train", "{store}", "-m", "bof", "-o", "{tmp}/out/run", *SMALL, "--batch-size", "8"
        ),
        stores=True,
        code=OK,
        message="test \\(5 videos\\)",
    ),
]
