"""The audio thread's batching: distinct requests per batch, at most max_batch, and each request's jobs in order."""

from service.engine.audio_worker import AudioJob, AudioWorker


def _round(jobs, max_batch):
    calls = []
    worker = AudioWorker(run_batch=lambda b: calls.append(("batch", [j.tokens[0] for j in b])),
                         run_end=lambda j: calls.append(("end", j.handle)), max_batch=max_batch)
    worker._round(jobs)
    return calls


def test_a_round_batches_distinct_requests_and_keeps_each_requests_order():
    a, b, c = "A", "B", "C"
    jobs = [AudioJob(a, ["a1"]), AudioJob(b, ["b1"]), AudioJob(a, ["a2"]), AudioJob(b, None), AudioJob(c, ["c1"]),
            AudioJob(a, None)]
    assert _round(jobs, 8) == [("batch", ["a1", "b1"]), ("end", "B"), ("batch", ["a2", "c1"]), ("end", "A")]
    # one at a time: an end whose request has nothing pending runs at once (B's chunk already went, A's too)
    assert _round(jobs, 1) == [("batch", ["a1"]), ("batch", ["b1"]), ("end", "B"), ("batch", ["a2"]), ("end", "A"),
                               ("batch", ["c1"])]
    many = [AudioJob(i, [i]) for i in range(5)]
    assert _round(many, 2) == [("batch", [0, 1]), ("batch", [2, 3]), ("batch", [4])]
