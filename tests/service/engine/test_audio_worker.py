"""The audio thread's batching: distinct requests per batch, at most max_batch, and each request's jobs in order."""

from service.engine.audio_worker import AudioJob, AudioWorker


def _round(jobs, max_batch, urgent_first=True, merge_tokens=0):
    calls = []
    worker = AudioWorker(run_batch=lambda b: calls.append(("batch", [j.tokens[0] for j in b])),
                         run_end=lambda j: calls.append(("end", j.handle)), max_batch=max_batch,
                         urgent_first=urgent_first, merge_tokens=merge_tokens)
    worker._round(jobs)
    return calls


def test_a_round_batches_distinct_requests_and_keeps_each_requests_order():
    a, b, c = "A", "B", "C"
    jobs = [AudioJob(a, ["a1"]), AudioJob(b, ["b1"]), AudioJob(a, ["a2"]), AudioJob(b, None), AudioJob(c, ["c1"]),
            AudioJob(a, None)]
    # in waves: every request's first chunk, then the second; an end right after its request's last chunk
    assert _round(jobs, 8) == [("batch", ["a1", "b1", "c1"]), ("end", "B"), ("batch", ["a2"]), ("end", "A")]
    # one at a time, in the same order
    assert _round(jobs, 1) == [("batch", ["a1"]), ("batch", ["b1"]), ("end", "B"), ("batch", ["c1"]),
                               ("batch", ["a2"]), ("end", "A")]
    # an end whose request has no chunk in the round runs first (its chunks went in an earlier round)
    assert _round([AudioJob(a, ["a4"]), AudioJob(b, None)], 8) == [("end", "B"), ("batch", ["a4"])]
    # requests ending in one round (a last chunk, then the end, each): one batch, their ends after it
    ending = [AudioJob(a, ["a9"], flush=True), AudioJob(a, None), AudioJob(b, ["b9"], flush=True), AudioJob(b, None),
              AudioJob(c, ["c3"])]
    assert _round(ending, 8) == [("batch", ["a9", "b9", "c3"]), ("end", "A"), ("end", "B")]
    # a request's first chunks go first, in a batch of their own; every request's jobs stay in order
    urgent = [AudioJob(a, ["a5"]), AudioJob(b, ["b1"], urgent=True), AudioJob(c, ["c7"]), AudioJob(a, ["a6"]),
              AudioJob(b, ["b2"], urgent=True)]
    assert _round(urgent, 8) == [("batch", ["b1"]), ("batch", ["b2"]), ("batch", ["a5", "c7"]), ("batch", ["a6"])]
    # without urgent_first (an urgent lane delivers those chunks): jobs like the others, in waves
    assert _round(urgent, 8, urgent_first=False) == [("batch", ["a5", "b1", "c7"]), ("batch", ["a6", "b2"])]
    # a backlog of three chunks a request, arrived out of step: three batches of every request (not four, cut
    # wherever the arrival order repeats a request)
    backlog = [AudioJob(r, [f"{r}{k}"]) for r, k in (("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2), ("a", 3),
                                                       ("c", 2), ("b", 3), ("c", 3))]
    assert _round(backlog, 8) == [("batch", ["a1", "b1", "c1"]), ("batch", ["a2", "b2", "c2"]),
                                  ("batch", ["a3", "b3", "c3"])]
    many = [AudioJob(i, [i]) for i in range(5)]
    assert _round(many, 2) == [("batch", [0, 1]), ("batch", [2, 3]), ("batch", [4])]


def test_under_load_a_round_lets_its_batch_fill_and_idle_rounds_do_not_wait():
    import threading
    import time

    started, gate = [], threading.Event()  # (batch size, time the batch started)

    def run_batch(batch):
        started.append((len(batch), time.perf_counter()))
        if len(started) == 1:
            gate.wait(2)  # a slow first round: jobs pile up behind it (a backlog)
        time.sleep(0.1)

    def submit(name):
        worker.submit(AudioJob(name, [name], submitted=time.perf_counter()))

    worker = AudioWorker(run_batch=run_batch, run_end=lambda j: None, max_batch=64, max_wait_s=0.5)
    submit("first")
    time.sleep(0.15)
    for i in range(3):  # queued while the first round runs
        submit(i)
    gate.set()  # the round ends ~0.1 s later, having taken ~0.25 s: the next may fill until ~0.25 s after job 0
    time.sleep(0.17)
    for i in range(3, 6):
        submit(i)
    time.sleep(0.4)
    assert [n for n, _ in started] == [1, 6]  # without the wait: [1, 3, 3]
    submit("idle")  # no backlog behind the last round: decoded at once
    t0 = time.perf_counter()
    while len(started) < 3 and time.perf_counter() - t0 < 2:
        time.sleep(0.001)
    assert started[-1][0] == 1 and started[-1][1] - t0 < 0.05
    worker.shutdown()


def test_an_urgent_job_cuts_the_fill_wait_only_with_urgent_first():
    import threading
    import time

    def fill_then_urgent(urgent_first):
        started, gate = [], threading.Event()

        def run_batch(batch):
            started.append((len(batch), time.perf_counter()))
            if len(started) == 1:
                gate.wait(2)
            time.sleep(0.1)

        worker = AudioWorker(run_batch=run_batch, run_end=lambda j: None, max_batch=64, max_wait_s=0.5,
                             urgent_first=urgent_first)
        worker.submit(AudioJob("first", ["first"]))
        time.sleep(0.15)
        worker.submit(AudioJob(0, [0]))  # queued while the first round runs: a backlog, the next round may wait
        gate.set()  # the first round took ~0.25 s: the next may let its batch fill until ~0.25 s after job 0
        time.sleep(0.15)  # the second round is waiting for its batch to fill
        t_urgent = time.perf_counter()
        worker.submit(AudioJob("new", ["new"], urgent=True))
        t0 = time.perf_counter()
        while len(started) < 2 and time.perf_counter() - t0 < 2:
            time.sleep(0.001)
        worker.shutdown()
        return started[1][0], started[1][1] - t_urgent

    size, wait = fill_then_urgent(True)
    assert size == 1 and wait < 0.05  # the urgent job ends the fill wait at once, and runs in a batch of its own
    size, wait = fill_then_urgent(False)
    assert size == 2 and wait > 0.05  # the round waited its fill time out (~0.1 s after the urgent job), one batch


def test_a_requests_consecutive_steady_chunks_join_while_their_tokens_fit():
    a, b = "A", "B"
    s1, s2 = "sentence 1", "sentence 2"
    jobs = [AudioJob(a, ["a1", "x"], submitted=1.0, index=3), AudioJob(b, ["b1"], index=3),
            AudioJob(a, ["a2"], ended=[(s1, 1)], submitted=2.0, index=4),
            AudioJob(a, ["a3", "x"], index=5),  # would pass 4 tokens: a chunk of its own
            AudioJob(b, ["b2"], flush=True, index=4), AudioJob(b, ["b3"], index=5),  # nothing joins a flush
            AudioJob(b, None), AudioJob(a, ["a4"], ended=[(s2, 1)], index=6)]
    worker = AudioWorker(run_batch=lambda b: None, run_end=lambda j: None, max_batch=8, merge_tokens=4)
    merged = worker._merged(jobs)
    assert [(j.handle, j.tokens, j.index, j.absorbed) for j in merged] == [
        ("A", ["a1", "x", "a2"], 4, 1), ("B", ["b1", "b2"], 4, 1), ("A", ["a3", "x", "a4"], 6, 1), ("B", ["b3"], 5, 0),
        ("B", None, 0, 0)]
    first = merged[0]
    assert first.submitted == 1.0 and first.ended == [(s1, 3)] and not first.flush  # the later sentence end, offset
    assert merged[1].flush and merged[2].ended == [(s2, 3)]
    # an urgent chunk (the lane decodes it too, by number) and an end job join nothing
    urgent = [AudioJob(a, ["a1"], urgent=True, index=1), AudioJob(a, ["a2"], urgent=True, index=2),
              AudioJob(a, ["a3"], index=3), AudioJob(a, None), AudioJob(b, ["b7"], index=7)]
    assert worker._merged(urgent) == urgent
    # off by default; on, a round's batches carry the joined chunks
    assert _round(jobs, 8) != _round(jobs, 8, merge_tokens=4)
    assert _round(jobs, 8, merge_tokens=4) == [("batch", ["a1", "b1"]), ("batch", ["a3", "b3"]), ("end", "B")]
