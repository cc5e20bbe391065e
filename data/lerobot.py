"""LeRobot-format robot datasets (format v2), read directly with pyarrow and PyAV.

    ROOT/meta/info.json        fps, features {name: {dtype, shape}}, data_path / video_path templates
    ROOT/meta/tasks.jsonl      {"task_index": i, "task": "instruction"} per line
    ROOT/data/chunk-CCC/episode_EEEEEE.parquet                 one row per frame
    ROOT/videos/chunk-CCC/CAMERA/episode_EEEEEE.mp4            one video per camera and episode

A sample is one frame (every `frame_stride`-th): `task` is the episode's instruction, a camera
feature (dtype video) is the decoded frame nearest the row's timestamp, other features are the
row's values. An action modality with horizon h takes the actions of rows t .. t+h-1 (the last
row repeated at the episode's end), the action chunk of ACT/pi0-style policies.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np

from .records import Record, SourceError, Unit, decode

DEFAULT_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
DEFAULT_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def read_info(root: str, where: str) -> dict:
    path = os.path.join(root, "meta", "info.json")
    if not os.path.isfile(path):
        raise SourceError(f"{where}.root: {root!r} has no meta/info.json; point root at a LeRobot dataset folder")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def lerobot_units(src, index: int, where: str) -> list[Unit]:
    info = read_info(src.root, where)
    features = info.get("features", {})
    known = sorted(features) + ["task"]
    for name, feature in src.fields.items():
        if feature not in known:
            raise SourceError(f"{where}.fields.{name}: {feature!r} is not a feature of {src.root}; choose from {known}")
    total = int(info.get("total_episodes", 0))
    chosen = src.episodes if src.episodes is not None else list(range(total))
    bad = [e for e in chosen if not 0 <= e < total]
    if bad:
        raise SourceError(f"{where}.episodes: {bad} are outside 0..{total - 1} (meta/info.json total_episodes)")
    chunk = int(info.get("chunks_size", 1000))
    out = []
    for e in chosen:
        rel = info.get("data_path", DEFAULT_DATA).format(episode_chunk=e // chunk, episode_index=e)
        out.append(Unit(index, f"{e:06d}", f"{src.root}:episode {e}", (os.path.join(src.root, rel),), e))
    return out


def _tasks(root: str) -> dict[int, str]:
    path = os.path.join(root, "meta", "tasks.jsonl")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {int(r["task_index"]): str(r["task"]) for r in rows}


def decode_frames(path: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every frame of a video as [H, W] grayscale in [0, 1], with its time (seconds)."""
    import av

    times, frames = [], []
    with av.open(path) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            times.append(float(frame.pts * stream.time_base) if frame.pts is not None else len(times) / float(stream.average_rate or 1))
            frames.append(frame.to_ndarray(format="gray").astype(np.float32) / 255.0)
    return np.array(times), frames


def lerobot_records(exp, unit: Unit, src) -> Iterator[Record]:
    import pyarrow.parquet as pq

    comp = exp.data.mixture[unit.component]
    info = read_info(src.root, "")
    features = info.get("features", {})
    chunk = int(info.get("chunks_size", 1000))
    try:
        table = pq.read_table(unit.paths[0]).to_pydict()
    except Exception as e:  # a missing or damaged episode file
        yield Record(unit.label, problem=f"{unit.label}: unreadable episode {unit.paths[0]} ({type(e).__name__}: {e})",
                     reason="unreadable")
        return
    rows = len(next(iter(table.values()), []))
    videos = {}
    for name, feature in src.fields.items():
        if feature in features and features[feature].get("dtype") == "video":
            rel = info.get("video_path", DEFAULT_VIDEO).format(episode_chunk=unit.episode // chunk, video_key=feature,
                                                               episode_index=unit.episode)
            path = os.path.join(src.root, rel)
            try:
                videos[feature] = decode_frames(path)
            except Exception as e:  # PyAV raises its own error types for missing or corrupt files
                yield Record(unit.label, problem=f"{unit.label}: unreadable video {path} ({type(e).__name__}: {e})",
                             reason="unreadable")
                return
    tasks = _tasks(src.root)
    stamps = table.get("timestamp") or [i / float(info.get("fps", 1)) for i in range(rows)]
    for t in range(0, rows, src.frame_stride):
        where = f"{unit.label} frame {t}"
        out, problem, reason = {}, None, "undecodable"
        for name, feature in src.fields.items():
            m = exp.modalities[name]
            try:
                if feature == "task":
                    index = int(table["task_index"][t]) if "task_index" in table else -1
                    if index not in tasks:
                        raise ValueError(f"task_index {index} is not in meta/tasks.jsonl")
                    out[name] = tasks[index]
                elif feature in videos:
                    times, frames = videos[feature]
                    out[name] = frames[int(np.abs(times - stamps[t]).argmin())]
                elif feature not in table:
                    reason = "missing key"
                    raise ValueError(f"column {feature!r} is missing from {unit.paths[0]}")
                elif m.kind == "action":
                    rows_ahead = [table[feature][min(t + h, rows - 1)] for h in range(m.horizon)]
                    out[name] = decode("action", rows_ahead, where)
                else:
                    out[name] = decode(m.kind, table[feature][t], where)
            except ValueError as e:
                problem = f"{where} feature {feature!r}: {e}"
                break
        yield Record(where, problem=problem, reason=reason) if problem else Record(where, out)
