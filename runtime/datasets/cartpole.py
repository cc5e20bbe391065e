"""A scripted controller on gymnasium's CartPole: hold the pole up with the cart at a commanded
position (left, centre or right, given as a text instruction).

The controller is a saturated linear state feedback, force = clip(K . (x - x*, v, theta, omega),
-1, 1) in units of the env's 10 N; it is applied by setting the env's force magnitude each step
(CartPole's action only picks the direction). A sample is one moment of an episode: the rendered
picture (the current pole and, dimmer, the previous one, so motion is visible), the instruction,
the state, and the controller's next forces as the action chunk.
"""

from __future__ import annotations

import numpy as np

from . import Episode

TARGETS = (("left", -0.8), ("centre", 0.0), ("right", 0.8))
GAINS = np.array([0.5, 1.0, 12.0, 2.0])  # on (x - x*, v, theta, omega), pushing towards upright
WARMUP = 10  # random pushes before the controller takes over: varied starting states
MAX_STEPS = 60  # the sampled moment lies in the first MAX_STEPS controlled steps
RENDER = 16  # side of the rendered picture (pixels); resized to each image modality


def controller(state: np.ndarray, target: float) -> float:
    x, v, th, om = state
    return float(np.clip(GAINS @ np.array([x - target, v, th, om]), -1.0, 1.0))


def render(state: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """A RENDER x RENDER grayscale picture: cart on the bottom rows, pole (angle exaggerated 3x so
    it is visible at this size); the previous step's pole at half intensity."""
    img = np.zeros((RENDER, RENDER), np.float32)
    for s, value in ((previous, 0.5), (state, 1.0)):
        col = (s[0] + 2.4) / 4.8 * (RENDER - 1)
        ang = 3.0 * s[2]
        for r in np.linspace(0, 9, 19):
            y = int(round(RENDER - 4 - r * np.cos(ang)))
            xx = int(round(col + r * np.sin(ang)))
            if 0 <= y < RENDER and 0 <= xx < RENDER:
                img[y, xx] = max(img[y, xx], value)
    c = int(round((state[0] + 2.4) / 4.8 * (RENDER - 1)))
    img[RENDER - 3:RENDER - 1, max(0, c - 2):c + 3] = 1.0
    return img


class CartPoleGenerator:
    classes = len(TARGETS)

    def __init__(self, seed: int):
        import gymnasium as gym

        self.seed = seed
        self.env = gym.make("CartPole-v1").unwrapped

    def episode(self, rng: np.random.Generator, split: str, chunk: int = 1) -> Episode:
        """Eval episodes start from reset seeds disjoint from the training ones."""
        task = int(rng.integers(len(TARGETS)))
        name, target = TARGETS[task]
        reset_seed = int(rng.integers(1 << 30)) * 2 + (split == "eval")
        state, _ = self.env.reset(seed=reset_seed)
        prev = state
        for _ in range(WARMUP):
            prev, state = state, self._step(float(rng.uniform(-1, 1)))
        t_sample = int(rng.integers(0, MAX_STEPS - chunk))
        forces: list[float] = []
        for t in range(t_sample + chunk):
            if t == t_sample:
                snapshot, before = state.copy(), prev.copy()
            f = controller(state, target)
            if t >= t_sample:
                forces.append(f)
            prev, state = state, self._step(f)
        return Episode(label=task, prompt=f"keep {name}", image=render(snapshot, before),
                       actions=np.array(forces, np.float32), state=snapshot.astype(np.float32))

    def _step(self, force: float) -> np.ndarray:
        self.env.force_mag = 10.0 * abs(force)
        self.env.steps_beyond_terminated = None  # a sample may run past the env's failure bounds
        state, *_ = self.env.step(int(force > 0))
        return np.asarray(state, np.float32)

    def corpus(self) -> list[str]:
        return [f"keep {name}" for name, _ in TARGETS]
