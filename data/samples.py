"""Small real datasets in the formats users have, built from what installed packages ship (no
downloads): scikit-learn's digits as WebDataset shards with captions, scripted CartPole episodes
in LeRobot format (frames encoded to mp4 by PyAV), and a text corpus as JSONL and Parquet. The
tests, the demo and the data benchmark train on them.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

FPS = 10
FRAME = 32  # rendered CartPole frames are upscaled to this side (even, as the video codec wants)
ACTION_CHUNK = 4  # forces per action row: the controller's next ACTION_CHUNK forces


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0  # fixed mtime: the same shards byte for byte
    tar.addfile(info, io.BytesIO(data))


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(image * 255, 0, 255).astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def write_digits_webdataset(folder: Path, shards: int = 2, per_shard: int = 64) -> str:
    """Digits as `png` + `txt` caption + `json` {label} samples; returns the brace pattern."""
    from vlac.runtime.datasets.digits import load

    images, labels = load()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(folder / f"digits-{s:03d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for k in range(per_shard):
                i = s * per_shard + k
                key = f"{i:06d}"
                _add(tar, f"{key}.png", _png(images[i]))
                _add(tar, f"{key}.txt", f"a handwritten {int(labels[i])}".encode())
                _add(tar, f"{key}.json", json.dumps({"label": int(labels[i])}).encode())
    return str(folder / f"digits-{{000..{shards - 1:03d}}}.tar")


def _encode_mp4(path: Path, frames: list[np.ndarray]) -> None:
    import av
    from PIL import Image

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.width = stream.height = FRAME
        stream.pix_fmt = "yuv420p"
        for f in frames:
            big = Image.fromarray((f * 255).astype(np.uint8), "L").resize((FRAME, FRAME), Image.NEAREST)
            frame = av.VideoFrame.from_ndarray(np.stack([np.asarray(big)] * 3, -1), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def write_cartpole_lerobot(root: Path, episodes: int = 3, steps: int = 24, seed: int = 0) -> Path:
    """Scripted CartPole episodes (vlac.runtime.datasets.cartpole's controller and renderer) in
    LeRobot v2 layout: observation.state, action (the next ACTION_CHUNK forces), a camera."""
    import gymnasium as gym
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vlac.runtime.datasets.cartpole import TARGETS, controller, render

    root = Path(root)
    env = gym.make("CartPole-v1").unwrapped
    rng = np.random.default_rng(seed)
    camera = "observation.images.top"
    index = 0
    for e in range(episodes):
        task = e % len(TARGETS)
        state, _ = env.reset(seed=seed * 1000 + e)
        states, forces, frames, prev = [], [], [], state
        for _ in range(steps + ACTION_CHUNK):
            f = controller(state, TARGETS[task][1]) + float(rng.normal(0, 0.05))
            states.append(np.asarray(state, np.float32))
            frames.append(render(state, prev))
            forces.append(f)
            env.force_mag = 10.0 * abs(f)
            env.steps_beyond_terminated = None
            prev, (state, *_) = state, env.step(int(f > 0))
        chunk = f"chunk-{e // 1000:03d}"
        (root / "data" / chunk).mkdir(parents=True, exist_ok=True)
        (root / "videos" / chunk / camera).mkdir(parents=True, exist_ok=True)
        table = {"observation.state": [s.tolist() for s in states[:steps]],
                 "action": [forces[t:t + ACTION_CHUNK] for t in range(steps)],
                 "timestamp": [t / FPS for t in range(steps)], "frame_index": list(range(steps)),
                 "episode_index": [e] * steps, "index": list(range(index, index + steps)), "task_index": [task] * steps}
        index += steps
        pq.write_table(pa.table(table), root / "data" / chunk / f"episode_{e:06d}.parquet")
        _encode_mp4(root / "videos" / chunk / camera / f"episode_{e:06d}.mp4", frames[:steps])
    (root / "meta").mkdir(parents=True, exist_ok=True)
    info = {"codebase_version": "v2.0", "fps": FPS, "total_episodes": episodes, "total_frames": index, "chunks_size": 1000,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": {"observation.state": {"dtype": "float32", "shape": [4]},
                         "action": {"dtype": "float32", "shape": [ACTION_CHUNK]},
                         camera: {"dtype": "video", "shape": [FRAME, FRAME, 3]},
                         "timestamp": {"dtype": "float32", "shape": [1]}}}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=1))
    tasks = "".join(json.dumps({"task_index": i, "task": f"keep {name}"}) + "\n" for i, (name, _) in enumerate(TARGETS))
    (root / "meta" / "tasks.jsonl").write_text(tasks)
    return root


CORPUS = ("the cart moves left", "the pole stays up", "a digit is drawn in ink", "robots learn from demonstrations",
          "tokens are packed into sequences", "every document has its own positions")


def write_text_corpus(folder: Path, rows: int = 60) -> tuple[str, str]:
    """Sentences of varied length (up to 42 bytes) as a JSONL file and a Parquet file (column `text`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = [CORPUS[i % len(CORPUS)] + (" again" * (i // len(CORPUS) % 2)) for i in range(rows)]
    jsonl = folder / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    parquet = folder / "corpus.parquet"
    pq.write_table(pa.table({"text": texts}), parquet)
    return str(jsonl), str(parquet)


# The spec of docs/data.md's worked example (tests/data/test_data_guide.py checks the guide shows
# exactly this): image-caption WebDataset shards and a LeRobot dataset, relative to the spec.
GUIDE_SPEC = """\
name: my-vla
modalities:
  text: {kind: text, tokenizer: bpe, vocab_size: 512, tokens: 16, path: tokenizers/text}
  image: {kind: image, image_size: 16, channels: 1, patch_size: 4, codebook_size: 64, codebook_dim: 8, path: tokenizers/image}
  action: {kind: action, dims: 4, bins: 16, horizon: 1}
backbone: {layers: 2, hidden: 64, heads: 4, ffn_hidden: 128, context_length: 128}
train: {seq_len: 128, global_batch_tokens: 1024, total_tokens: 20480}
cluster: {nodes: 1, gpus_per_node: 1}
data:
  mixture:
    - name: captions
      modalities: [image, text]
      source: {kind: webdataset, pattern: "data/captions/*.tar", fields: {image: png, text: txt}}
    - name: robot
      modalities: [text, image, action]
      source: {kind: lerobot, root: data/robot, fields: {text: task, image: observation.images.top, action: action}}
"""


def write_guide_example(folder: Path) -> Path:
    """The worked example's folder: data/captions (digits with captions as WebDataset shards),
    data/robot (CartPole episodes in LeRobot format) and spec.yaml; returns the spec's path."""
    folder = Path(folder)
    write_digits_webdataset(folder / "data" / "captions")
    write_cartpole_lerobot(folder / "data" / "robot")
    spec = folder / "spec.yaml"
    spec.write_text(GUIDE_SPEC)
    return spec


if __name__ == "__main__":  # python -m vlac.data.samples DIR: the worked example of docs/data.md in DIR
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m vlac.data.samples DIR (writes DIR/data/captions, DIR/data/robot, DIR/spec.yaml)")
    print(write_guide_example(Path(sys.argv[1])))
