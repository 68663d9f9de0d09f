"""Find a target sound in your own recordings with a trained model (docs/detect.md).

    # 1. one detector file from a finished run: final MS student + encoder + tuned post-processing
    python jobs/detect.py export --run ~/tsd_runs/tiny --out detector.pt
    # 2. one recording of any length / sample rate: events (DCASE TSV), frame probabilities, picture
    python jobs/detect.py --checkpoint detector.pt --reference dog.wav --audio street.wav \\
        --out events.tsv --frames frames.tsv --plot street.png [--labels truth.tsv]
    # 3. a folder or a list of files (one path per line): a Ray Data actor pool, GPU when present
    python jobs/detect.py --checkpoint detector.pt --reference dog1.wav --reference dog2.wav \\
        --audio recordings/ --out events.tsv

Several --reference clips (one class) are averaged. Events are labelled --label (default
"target"). Exit codes: 0 done; 1 some files of a folder/list failed (listed in failures.tsv,
the rest processed); 2 bad input (unreadable audio, silent reference, wrong checkpoint...).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from tsd_ray.apps import detect
from tsd_ray.apps.detect import DetectError, export_from_run, write_text
from tsd_ray.apps.plots import plot_detection
from tsd_ray.data.audio import AudioError
from tsd_ray.metrics.scoring import score_event_lists
from tsd_ray.models.checkpoint import CheckpointError, export_detector


def _export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="jobs/detect.py export", description="Write a self-contained detector file.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="finished run folder (<storage>/<run name>, holds ledger.json)")
    src.add_argument("--student", help="an f/w student model.pt (then --encoder, unless the student "
                     "was trained with encoder.joint and carries its own)")
    p.add_argument("--recipe", default="MS", help="with --run: SS, WS, MS or an ablation name (default MS)")
    p.add_argument("--encoder", help="with --student: the encoder model.pt of the same run (ignored "
                   "when the student carries its own)")
    p.add_argument("--threshold", type=float, default=0.5, help="with --student: probability threshold")
    p.add_argument("--median-frames", type=int, default=1, help="with --student: median window (odd, frames)")
    p.add_argument("--fill-gap-frames", type=int, default=0, help="with --student: fill gaps up to this long (frames)")
    p.add_argument("--min-event-frames", type=int, default=0, help="with --student: drop events shorter (frames)")
    p.add_argument("--out", required=True, help="detector file to write (path or URI)")
    args = p.parse_args(argv)

    try:
        if args.run:
            out = export_from_run(args.run, args.out, recipe=args.recipe)
        else:
            pp = {"threshold": args.threshold, "median_frames": args.median_frames,
                  "fill_gap_frames": args.fill_gap_frames, "min_event_frames": args.min_event_frames}
            out = export_detector(args.student, args.encoder, pp, args.out)
    except (CheckpointError, DetectError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"detector written: {out}", file=sys.stderr)
    return 0


def _write(path: str | None, text: str) -> None:
    if path in (None, "-"):
        sys.stdout.write(text)
    else:
        write_text(path, text)


def _detect(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="detector file (jobs/detect.py export) or f/w student model.pt")
    p.add_argument("--encoder", help="encoder model.pt, needed with a plain student file")
    p.add_argument("--reference", action="append", required=True, help="reference clip of the target (repeatable)")
    p.add_argument("--audio", required=True, help="a recording, a folder (recursive) or a text list of paths")
    p.add_argument("--out", help="events TSV (filename onset offset event_label); default: stdout")
    p.add_argument("--frames", help="also write frame probabilities (filename time prob) here")
    p.add_argument("--plot", help="PNG of the recording (one recording only): mel, probability, events")
    p.add_argument("--labels", help="true events (DCASE strong TSV) drawn in the picture and scored")
    p.add_argument("--label", help="event_label of the detections (default: 'target')")
    p.add_argument("--threshold", type=float, help="override the stored probability threshold")
    p.add_argument("--median-frames", type=int, help="override the stored median window (odd, 40 ms frames)")
    p.add_argument("--fill-gap-frames", type=int, help="override the longest gap filled inside an event (frames)")
    p.add_argument("--min-event-frames", type=int, help="override the shortest event kept (frames)")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap fraction (default 0.5)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (single recording)")
    p.add_argument("--num-actors", type=int, help="folder mode: actor pool size (default: GPUs, else CPUs - 1)")
    p.add_argument("--batch-size", type=int, default=4, help="folder mode: files per actor call")
    p.add_argument("--progress-every", type=int, default=100, help="folder mode: progress line every N files")
    p.add_argument("--failures", help="folder mode: failures TSV (default: failures.tsv beside --out)")
    p.add_argument("--serial", action="store_true", help="folder mode without Ray (one process)")
    args = p.parse_args(argv)

    label = args.label or detect.DEFAULT_LABEL
    try:
        det = detect.load_detector(args.checkpoint, encoder_uri=args.encoder, device=args.device)
        overrides = {k: getattr(args, k) for k in ("threshold", "median_frames", "fill_gap_frames", "min_event_frames")
                     if getattr(args, k) is not None}
        if overrides:  # override what was tuned
            det = dataclasses.replace(det, postprocessing=dataclasses.replace(det.postprocessing, **overrides))
        ref = detect.embed_reference(det, args.reference)
        items = detect.list_audio(args.audio)
        single = len(items) == 1 and items[0][0] == str(args.audio)  # an audio file, not a folder/list
        if args.plot and not single:
            raise detect.DetectError(f"{args.audio}: --plot draws one recording; give a single audio file")
    except (CheckpointError, AudioError, detect.DetectError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pp = det.postprocessing
    print(f"detector {args.checkpoint}: {det.student_kind} student, {pp.describe()}; "
          f"reference resembles training class '{ref.guess}' "
          f"(p={ref.guess_prob:.2f}); events labelled '{label}'", file=sys.stderr)

    if single:
        path, name = items[0]
        try:
            d = detect.detect_file(det, ref, path, name=name, label=label, overlap=args.overlap, keep_mel=bool(args.plot))
            truth = []
            if args.labels:
                rows = detect.read_events_tsv(args.labels, filename=name)
                truth = [e for _, e in rows if e.label == label] or [e for _, e in rows]
        except (AudioError, detect.DetectError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        _write(args.out, detect.format_events_tsv([d]))
        if args.frames:
            _write(args.frames, detect.format_frames_tsv([d]))
        if truth and all(e.label == label for e in truth):

            sc = score_event_lists({name: truth}, {name: list(d.events)}, {name: d.duration_s}, classes=[label])
            print(f"vs {args.labels}: event-F {sc.event_f:.1f} %, segment-F {sc.segment_f:.1f} % "
                  f"({len(truth)} true, {len(d.events)} detected events)", file=sys.stderr)
        if args.plot:

            plot_detection(d, args.plot, true_events=truth)
        print(f"{name}: {d.duration_s:.1f} s, {len(d.events)} events", file=sys.stderr)
        return 0

    res = detect.detect_many(
        det, ref, items, label=label, overlap=args.overlap, keep_probs=bool(args.frames),
        use_ray=not args.serial, num_actors=args.num_actors, batch_size=args.batch_size,
        progress_every=args.progress_every, progress=lambda s: print(s, file=sys.stderr, flush=True),
    )
    _write(args.out, detect.format_events_tsv(res.detections))
    if args.frames:
        _write(args.frames, detect.format_frames_tsv(res.detections))
    fail_path = args.failures or os.path.join(os.path.dirname(args.out) if args.out not in (None, "-") else ".", "failures.tsv")
    _write(fail_path, detect.format_failures_tsv(res.failures))
    n_events = sum(len(d.events) for d in res.detections)
    print(f"{res.n_files} files in {res.seconds:.1f} s ({res.files_per_s:.2f} files/s, {res.settings}): "
          f"{n_events} events, {len(res.failures)} failed (see {fail_path})", file=sys.stderr)
    for f in res.failures[:20]:
        print(f"  failed: {f.reason}", file=sys.stderr)
    return 1 if res.failures else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        return _export(argv[1:])
    return _detect(argv)


if __name__ == "__main__":
    sys.exit(main())
