"""`vlac submit` follows a job through the metrics.jsonl its program appends to: every record as
it arrives (a half-written line waits), progress lines with the ETA and the measured step time
and memory beside the plan's, the held-out loss, then the run summary."""

import io
import json

from vlac.follow import MetricsTail, follow

START = {"event": "start", "step": 0, "total_steps": 4, "world": 2, "layout": "dp 2", "time": 100.0,
         "predicted": {"step_time_s": 0.002, "peak_memory_gb": 0.015}, "memory_kind": "process RSS on CPU"}


def step(i: int) -> dict:
    return {"event": "step", "step": i, "loss": 5.0 - i, "ar_loss": 4.9 - i, "aux_loss": 0.1, "grad_norm": 1.0,
            "lr": 1e-3, "tokens_per_s": 1234.0, "modality_loss": {"text": 3.0}, "skipped": False,
            "step_time_s": 0.25, "peak_memory_bytes": 4.5e8, "time": 100.0 + (i + 1) * 2.0, "perplexity": 42.0}


SUMMARY = {"event": "summary", "steps": 4, "wall_s": 8.0, "first_loss": 5.0, "last_loss": 2.0, "eval_loss": 2.5,
           "tokens_per_s": 1234.0, "step_time_s": 0.25, "predicted_step_time_s": 0.002, "peak_memory_bytes": 4.5e8,
           "memory_kind": "process RSS on CPU", "preempted": False}


def lines(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_a_half_written_line_waits_for_the_next_read(tmp_path):
    path = tmp_path / "metrics.jsonl"
    text = lines(START, step(0))
    path.write_text(text + '{"event": "st')
    tail = MetricsTail(path)
    assert [r["event"] for r in tail.read()] == ["start", "step"]
    assert tail.read() == []
    with path.open("a") as f:
        f.write('ep", "step": 1}\n')
    assert tail.read() == [{"event": "step", "step": 1}]
    assert MetricsTail(path, start_at=len(text)).read()[0]["step"] == 1  # an earlier run's records are skipped


class FakeJob:
    """Done after `polls` polls; each poll the 'job' appends the next batch of records."""

    def __init__(self, path, batches):
        self.path, self.batches = path, list(batches)

    def done(self) -> bool:
        return not self.batches

    def advance(self, _seconds: float) -> None:
        with self.path.open("a") as f:
            f.write(lines(*self.batches.pop(0)))


def test_follow_prints_progress_with_eta_and_plan_figures_then_the_summary(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text(lines({"event": "step", "step": 99, "loss": 9.0}))  # an earlier run: not shown
    start_at = path.stat().st_size
    job = FakeJob(path, [[START, step(0), step(1)], [step(2), step(3), {"event": "eval", "step": 4, "loss": 2.5}],
                         [SUMMARY]])
    out = io.StringIO()
    follow(job, path.parent, start_at=start_at, stream=out, live=False, sleep=job.advance)
    text = out.getvalue()
    assert "step 99" not in text and "training dp 2 on 2 process(es)" in text
    second = next(line for line in text.splitlines() if line.startswith("step      2/4"))
    assert "loss 4.0000" in second and "1,234 tok/s" in second and "perplexity 42" in second
    assert "step 250 ms (plan 2 ms)" in second and "mem 450.00 MB (plan 15.00 MB)" in second
    assert "ETA 0:00:04" in second  # 2 s a step since the start record, 2 steps left
    assert "held-out loss 2.5000 at step 4" in text
    assert text.rstrip().splitlines()[-1].startswith("run summary: 4 steps in 8 s, loss 5.0000 -> 2.0000")
    assert "125.00 x plan" in text
