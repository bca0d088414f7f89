"""The real engine (scheduler + runner + audio thread) on a tiny random LM with a fake pipeline."""

import asyncio

import numpy as np
import pytest

from service.engine.types import Draining, InvalidRequest, NotReady, QueueFull, StreamFailed
from tests.conftest import collect_chunks
from tests.service.engine import fakes
from tests.service.engine.fakes import SAMPLES_PER_TOKEN, make_engine


@pytest.fixture(autouse=True, params=[False, True], ids=["lockstep", "overlap"])
def _loop_mode(request, monkeypatch):
    """Every test here runs with the engine loop in lockstep and overlapped (MAMTRA_STEP_OVERLAP)."""
    monkeypatch.setattr(fakes, "STEP_OVERLAP", request.param)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _started(**kw):
    engine = make_engine(**kw)
    await engine.start()
    return engine


def test_synthesize_streams_small_first_chunk_then_larger_with_word_timings():
    async def main():
        engine = await _started(align_chunks=False)
        try:
            handle = engine.synthesize("Hello there world. Second one!", voice="ava", request_id="r1")
            chunks = await collect_chunks(handle)
        finally:
            await engine.stop()
        return chunks

    chunks = run(main())
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert len(chunks[0].pcm) == 2 * SAMPLES_PER_TOKEN  # first chunk: first_chunk_tokens
    assert len(chunks[1].pcm) == 4 * SAMPLES_PER_TOKEN
    total_tokens = sum(len(c.pcm) for c in chunks) // SAMPLES_PER_TOKEN
    assert total_tokens == 20  # two sentences, each capped at 0.4 s x 25 tokens/s
    words = [w for c in chunks for w in c.words]
    assert [w.word for w in words] == ["Hello", "there", "world.", "Second", "one!"]
    assert all(w.estimated for w in words)
    assert words[0].start == 0 and abs(words[2].end - 0.4) < 1e-3 and abs(words[-1].end - 0.8) < 1e-3
    assert all(a.end <= b.start + 1e-9 for a, b in zip(words, words[1:]))


def test_admission_limits_and_429():
    async def main():
        engine = await _started(max_streams=1, max_queue=1)
        try:
            a = engine.open_stream(voice="ava", request_id="a")
            engine.open_stream(voice="ava", request_id="b")
            with pytest.raises(QueueFull) as e:
                engine.open_stream(voice="ava", request_id="c")
            assert e.value.retry_after_s > 0
            with pytest.raises(InvalidRequest):
                engine.open_stream(voice="nobody", request_id="d")
            with pytest.raises(InvalidRequest):
                engine.open_stream(voice="ava", speed=9.0, request_id="e")
            with pytest.raises(InvalidRequest):
                engine.synthesize("...", voice="ava", request_id="f")
            a.cancel()
            await asyncio.sleep(0.2)
            assert engine.scheduler.slot_of("b") is not None  # b took a's slot
        finally:
            await engine.stop()

    run(main())


def test_cancel_frees_slot_within_a_step_and_engine_stays_healthy():
    async def main():
        engine = await _started(max_streams=1, max_queue=0, cap_seconds=4.0)
        try:
            handle = engine.synthesize("A long sentence to speak.", voice="ava", request_id="a")
            it = handle.chunks().__aiter__()
            await it.__anext__()
            handle.cancel()
            assert engine.scheduler.num_running == 0  # freed at once, before the next step
            rest = [c async for c in it]
            assert len(rest) <= 2  # at most what was already decoded
            second = await collect_chunks(engine.synthesize("Next one.", voice="ben", request_id="b"))
            assert second and engine.ready
        finally:
            await engine.stop()

    run(main())


def test_timeout_fails_the_stream_and_frees_the_slot():
    async def main():
        engine = await _started(request_timeout_s=0.3, cap_seconds=40.0, max_context=2048)  # 1000-token cap
        try:
            handle = engine.synthesize("Forever and ever.", voice="ava", request_id="t")
            with pytest.raises(StreamFailed) as e:
                await collect_chunks(handle)
            assert e.value.code == "timeout"
            assert engine.scheduler.num_running == 0
        finally:
            await engine.stop()

    run(main())


def test_same_seed_same_audio_alone_or_batched():
    async def main():
        engine = await _started(max_streams=3, eos_bias=0.0, cap_seconds=1.0)
        try:
            alone = await collect_chunks(engine.synthesize("Seeded words here.", voice="ava", request_id="x", seed=7))
            other = engine.synthesize("Some other text runs beside.", voice="ben", request_id="y", seed=1)
            again = engine.synthesize("Seeded words here.", voice="ava", request_id="z", seed=7)
            batched, _ = await asyncio.gather(collect_chunks(again), collect_chunks(other))
        finally:
            await engine.stop()
        return alone, batched

    alone, batched = run(main())
    a = np.concatenate([c.pcm for c in alone])
    b = np.concatenate([c.pcm for c in batched])
    assert len(a) > 0 and np.array_equal(a, b)


def test_overlapped_steps_give_the_same_audio_as_lockstep():
    """MAMTRA_STEP_OVERLAP: with the next step launched before this one's tokens are read (void decodes after each
    sentence that ends by EOS), seeded requests sound exactly as with one step at a time, and every stream ends."""
    texts = ["One two three. Four five six. Seven.", "Eight nine. Ten eleven twelve.", "Thirteen. Fourteen fifteen.",
             "Sixteen seventeen eighteen."]

    async def main(overlap):
        engine = await _started(max_streams=3, max_queue=4, eos_bias=0.0, cap_seconds=0.6, step_overlap=overlap)
        try:
            handles = [engine.synthesize(t, voice="ava", request_id=f"r{i}", seed=i) for i, t in enumerate(texts)]
            results = await asyncio.gather(*(collect_chunks(h) for h in handles))
        finally:
            await engine.stop()
        return [np.concatenate([c.pcm for c in r]) for r in results]

    lockstep = run(main(False))
    overlapped = run(main(True))
    assert all(len(a) > 0 for a in lockstep)
    assert [len(a) for a in overlapped] == [len(a) for a in lockstep]
    assert all(np.array_equal(a, b) for a, b in zip(lockstep, overlapped))
    assert any(len(a) // SAMPLES_PER_TOKEN % 15 for a in lockstep)  # not every sentence ran to its 15-token cap


def test_incremental_text_word_by_word_with_flush():
    async def main():
        engine = await _started()
        try:
            handle = engine.open_stream(voice="ava", request_id="w")
            for word in "one two three. four".split(" "):
                handle.push_text(word + " ")
            await asyncio.sleep(0.3)
            # "one two three." is complete and spoken; "four" waits for more text or a flush
            handle.flush()
            handle.end_input()
            chunks = await collect_chunks(handle)
        finally:
            await engine.stop()
        return chunks

    chunks = run(main())
    words = [w.word for c in chunks for w in c.words]
    assert words == ["one", "two", "three.", "four"]


@pytest.mark.parametrize("decode_delay_s", [0.0, 0.05])  # also with an audio thread that lags behind the LM
def test_back_pressure_pauses_a_slow_reader(decode_delay_s):
    async def main():
        engine = await _started(cap_seconds=20.0, client_queue_chunks=3, chunk_tokens=2,
                                decode_delay_s=decode_delay_s)
        try:
            handle = engine.synthesize("A slow reader.", voice="ava", request_id="s")
            for _ in range(200):  # nobody reads: wait until the queue reaches its bound
                await asyncio.sleep(0.05)
                if handle.outstanding >= 3:
                    break
            await asyncio.sleep(0.3)  # let a step already in flight land
            produced = handle.produced
            assert 3 <= produced <= 3 + 1  # bounded even when the audio thread lags behind the LM
            await asyncio.sleep(0.5)
            assert handle.produced == produced  # generation is paused, not buffering
            got = 0
            async for _ in handle.chunks():
                got += 1
                if got == 6:
                    break
            assert handle.produced > produced  # reading resumes it
            handle.cancel()
        finally:
            await engine.stop()

    run(main())


def test_drain_finishes_in_flight_and_refuses_new():
    async def main():
        engine = await _started()
        handle = engine.synthesize("Finish me please.", voice="ava", request_id="d")
        collector = asyncio.create_task(collect_chunks(handle))
        await asyncio.sleep(0.05)
        drain = asyncio.create_task(engine.drain(10.0))
        await asyncio.sleep(0.01)
        assert not engine.ready
        with pytest.raises(Draining):
            engine.open_stream(voice="ava", request_id="late")
        chunks = await collector
        await drain
        await engine.stop()
        return chunks

    chunks = run(main())
    assert sum(len(c.pcm) for c in chunks) == 10 * SAMPLES_PER_TOKEN  # the in-flight stream finished whole


def test_not_ready_before_start():
    engine = make_engine()
    assert not engine.ready
    with pytest.raises(NotReady):
        engine.open_stream(voice="ava", request_id="early")


def test_long_text_restarts_context_and_keeps_going():
    async def main():
        engine = await _started(max_context=64, cap_seconds=0.4)
        try:
            text = " ".join(f"Sentence number {i}." for i in range(8))
            chunks = await collect_chunks(engine.synthesize(text, voice="ava", request_id="long"))
        finally:
            await engine.stop()
        return chunks

    chunks = run(main())
    assert sum(len(c.pcm) for c in chunks) == 8 * 10 * SAMPLES_PER_TOKEN
    assert len([w for c in chunks for w in c.words]) == 24


def test_metrics_are_recorded():
    async def main():
        engine = await _started()
        try:
            await collect_chunks(engine.synthesize("Count me.", voice="ava", request_id="m"))
            await asyncio.sleep(0.1)
        finally:
            await engine.stop()
        return engine.metrics.render().decode()

    text = run(main())
    assert "mamtra_speech_tokens_total 10.0" in text
    assert "mamtra_state_slots_total 2.0" in text
    assert 'mamtra_step_seconds_count{kind="decode"}' in text
    assert 'mamtra_prefill_steps_total{path="eager"} 1.0' in text  # one sentence, one prefill step (no graphs on CPU)
    assert "mamtra_audio_seconds_total 0.4" in text


def test_first_audio_stages_account_for_the_first_two_chunks():
    """Each of the first two chunks records every stage once; chunk 1's stages add up to no more than the time from
    the request to its first chunk in the client's hands."""
    async def main():
        engine = await _started(align_chunks=False, decode_delay_s=0.02)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            handle = engine.synthesize("Hello there world. Second one!", voice="ava", request_id="s")
            first_at, chunks = None, []
            async for chunk in handle.chunks():
                first_at = first_at or loop.time()
                chunks.append(chunk)
        finally:
            await engine.stop()
        return engine.metrics.registry.get_sample_value, first_at - start, len(chunks)

    value, ttfa, n_chunks = run(main())
    assert n_chunks >= 3
    stages = {1: ("queue", "prefill", "tokens", "audio_wait", "audio_decode", "delivery"),
              2: ("tokens", "audio_wait", "audio_decode", "delivery")}
    for chunk, names in stages.items():
        for stage in names:
            labels = {"chunk": str(chunk), "stage": stage}
            assert value("mamtra_first_audio_stage_seconds_count", labels) == 1, (chunk, stage)
    assert value("mamtra_first_audio_stage_seconds_count", {"chunk": "2", "stage": "prefill"}) is None
    total = sum(value("mamtra_first_audio_stage_seconds_sum", {"chunk": "1", "stage": s}) for s in stages[1])
    assert value("mamtra_first_audio_stage_seconds_sum", {"chunk": "1", "stage": "audio_decode"}) >= 0.02
    assert 0.02 <= total <= ttfa + 1e-3


def test_a_requests_first_chunks_are_urgent_whether_the_step_clock_or_a_sentence_end_closes_them():
    """A one-sentence request shorter than the first chunk: its only chunk is the sentence end's flush, and it is
    urgent like any first chunk (time to first audio); later chunks are not."""
    async def main(text, first_chunk_tokens):
        engine = await _started(align_chunks=False, first_chunk_tokens=first_chunk_tokens)
        submitted = []
        submit_many = engine._audio.submit_many

        def spy(jobs):
            submitted.extend(jobs)
            submit_many(jobs)

        engine._audio.submit_many = spy
        try:
            await collect_chunks(engine.synthesize(text, voice="ava", request_id="u"))
        finally:
            await engine.stop()
        return [(job.index, job.flush, job.urgent) for job in submitted if job.is_decode]

    short = run(main("Hi.", 12))  # a sentence is 10 tokens here
    assert short == [(1, True, True)]
    longer = run(main("Hello there world. Second one!", 2))
    assert [urgent for _, _, urgent in longer] == [i <= 2 for i, _, _ in longer] and len(longer) >= 3


def test_audio_of_concurrent_requests_is_decoded_in_batches_in_order():
    """With a slow decoder that has push_many, chunks of concurrent requests are decoded together (never two chunks
    of one request in a batch), and every request gets the same audio, words and chunk order as when chunks are
    decoded one at a time."""
    texts = [f"Request number {i} speaks now. Then it says more." for i in range(4)]

    async def go(max_batch):
        engine = await _started(max_streams=4, max_queue=4, cap_seconds=0.8, batching=True, decode_delay_s=0.03,
                                audio_max_batch=max_batch)
        try:
            handles = [engine.synthesize(t, voice="ava", request_id=f"r{i}", seed=i) for i, t in enumerate(texts)]
            results = await asyncio.gather(*(collect_chunks(h) for h in handles))
        finally:
            await engine.stop()
        value = engine.metrics.registry.get_sample_value
        mean = value("mamtra_audio_decode_batch_size_sum") / value("mamtra_audio_decode_batch_size_count")
        return results, engine.pipeline.decoder.batches, mean

    one, batches_one, _ = run(go(1))
    many, batches_many, mean_batch = run(go(8))
    assert batches_one == [] and batches_many and mean_batch > 1.5
    assert all(len(set(b)) == len(b) <= 4 for b in batches_many)  # distinct requests only
    for a, b in zip(one, many):  # chunk boundaries follow the step clock, so only the whole audio must match
        assert [c.seq for c in b] == list(range(len(b))) and [c.seq for c in a] == list(range(len(a)))
        assert np.array_equal(np.concatenate([c.pcm for c in a]), np.concatenate([c.pcm for c in b]))
        assert [w.word for c in a for w in c.words] == [w.word for c in b for w in c.words]


def test_later_chunks_close_on_the_step_clock_so_streams_decode_together():
    """Streams admitted at different steps: the first chunk is first_chunk_tokens, the second at least half a chunk
    up to the next clock tick, and from then on every stream's chunk closes on the same steps (one batch)."""
    async def main():
        engine = await _started(max_streams=3, max_queue=3, cap_seconds=2.0, batching=True, chunk_tokens=4,
                                first_chunk_tokens=3)
        try:
            first = engine.synthesize("One long sentence here.", voice="ava", request_id="a", seed=1)
            first_chunks = first.chunks()
            head = [await first_chunks.__anext__()]  # the second is admitted some steps later, while the first runs
            second = engine.synthesize("Another long sentence.", voice="ben", request_id="b", seed=2)

            async def rest():
                return head + [c async for c in first_chunks]

            results = await asyncio.gather(rest(), collect_chunks(second))
        finally:
            await engine.stop()
        return results, engine.pipeline.decoder.batches

    results, batches = run(main())
    for chunks in results:
        tokens = [len(c.pcm) // SAMPLES_PER_TOKEN for c in chunks]
        assert tokens[0] == 3 and 2 <= tokens[1] <= 5 and all(t == 4 for t in tokens[2:-1]), tokens
    assert sum(len(b) == 2 for b in batches) >= 5  # the two streams' steady chunks decoded together


def _aligned_run(aligner, word_timestamps=True):
    async def main():
        engine = await _started(align_chunks=False, aligner=aligner)
        try:
            handle = engine.synthesize("Hello there world. Second one!", voice="ava", request_id="r1",
                                       word_timestamps=word_timestamps)
            chunks = await collect_chunks(handle)
            return chunks, engine.pipeline.decoder.streams[-1].pushed, engine.metrics
        finally:
            await engine.stop()

    return run(main())


def test_word_timings_come_from_the_pipelines_aligner_on_each_sentences_own_tokens():
    from tests.service.engine.fakes import FakeAligner

    aligner = FakeAligner()
    chunks, pushed, metrics = _aligned_run(aligner)
    words = [w for c in chunks for w in c.words]
    assert [w.word for w in words] == ["Hello", "there", "world.", "Second", "one!"]
    assert not any(w.estimated for w in words)
    # sentence 1 is 0.0-0.4 s (10 tokens), three words at (i + 0.25) / 3 .. (i + 0.75) / 3 of it; sentence 2 0.4-0.8 s
    expected = [(0.4 * (i + 0.25) / 3, 0.4 * (i + 0.75) / 3) for i in range(3)] + \
               [(0.4 + 0.4 * (i + 0.25) / 2, 0.4 + 0.4 * (i + 0.75) / 2) for i in range(2)]
    got = [t for w in words for t in (w.start, w.end)]
    assert got == pytest.approx([t for pair in expected for t in pair], abs=1e-3)
    # each call got its sentence's text ids, one span per word, and exactly the speech tokens of that sentence
    assert len(aligner.calls) == 2
    assert [len(c[1]) for c in aligner.calls] == [3, 2]
    assert list(aligner.calls[0][2]) + list(aligner.calls[1][2]) == pushed
    assert [len(c[2]) for c in aligner.calls] == [10, 10]
    assert metrics.word_alignments.labels(result="aligned")._value.get() == 2


@pytest.mark.parametrize("fail", ["none", "raise"])
def test_a_sentence_that_cannot_be_aligned_falls_back_to_labelled_estimates(fail):
    from tests.service.engine.fakes import FakeAligner

    chunks, pushed, metrics = _aligned_run(FakeAligner(fail=fail))
    words = [w for c in chunks for w in c.words]
    assert [w.word for w in words] == ["Hello", "there", "world.", "Second", "one!"]
    assert all(w.estimated for w in words)
    assert sum(len(c.pcm) for c in chunks) == len(pushed) * SAMPLES_PER_TOKEN  # no audio lost
    assert metrics.word_alignments.labels(result="estimated")._value.get() == 2


def test_streams_without_word_timestamps_skip_the_aligner():
    from tests.service.engine.fakes import FakeAligner

    aligner = FakeAligner()
    chunks, pushed, _ = _aligned_run(aligner, word_timestamps=False)
    assert not any(c.words for c in chunks)
    assert aligner.calls == []
    assert sum(len(c.pcm) for c in chunks) == len(pushed) * SAMPLES_PER_TOKEN


@pytest.mark.parametrize("continuous", [True, False])
def test_queued_sentences_continue_one_decode_session_and_only_the_last_flushes(continuous):
    """Three sentences given at once: with continuous audio the decoder is flushed once, at the end, and every chunk
    but the first and the last has the steady size (sentence ends do not cut chunks); without it each sentence
    flushes. Either way the words come once each, in order, inside their sentence's audio."""
    async def main():
        engine = await _started(align_chunks=False, continuous_audio=continuous)
        try:
            handle = engine.synthesize("One two. Three four. Five six.", voice="ava", request_id="r1")
            return await collect_chunks(handle), engine.pipeline.decoder.streams[-1]
        finally:
            await engine.stop()

    chunks, stream = run(main())
    sizes = [len(c.pcm) // SAMPLES_PER_TOKEN for c in chunks]
    assert sum(sizes) == 30
    if continuous:
        assert stream.flushes == [False] * (len(stream.flushes) - 1) + [True]
        assert sizes[0] == 2 and all(n == 4 for n in sizes[1:-1]), sizes
    else:
        assert stream.flushes.count(True) == 3
    words = [w for c in chunks for w in c.words]
    assert [w.word for w in words] == ["One", "two.", "Three", "four.", "Five", "six."]
    ends = [0.4, 0.4, 0.8, 0.8, 1.2, 1.2]
    assert all(w.end <= e + 1e-6 and w.start >= e - 0.4 - 1e-6 for w, e in zip(words, ends))
    sent = 0.0  # a word is sent with (or after) the chunk that completes its audio
    for c in chunks:
        sent += len(c.pcm) / 24000
        assert all(w.end <= sent + 1e-6 for w in c.words)


def test_start_up_cap_lets_one_request_start_at_a_time_and_changes_no_audio():
    """MAMTRA_MAX_STARTING=1: a request's first audio comes after the request before it has had its first two
    (urgent) chunks delivered; every request completes with the audio it has without the cap."""
    texts = {"a": "First of three here.", "b": "Second one speaks now.", "c": "Third and last words."}

    async def main(cap):
        engine = await _started(max_streams=3, max_queue=0, max_starting=cap, eos_bias=0.0, cap_seconds=1.0)
        try:
            handles = [engine.synthesize(text, voice="ava", request_id=rid, seed=3) for rid, text in texts.items()]
            out = await asyncio.gather(*(collect_chunks(h) for h in handles))
            await asyncio.sleep(0.05)
        finally:
            await engine.stop()
        return out, engine.metrics.render().decode()

    capped, text = run(main(1))
    free, _ = run(main(0))
    for a, b in zip(capped, free):
        assert len(a) >= 2 and np.array_equal(np.concatenate([c.pcm for c in a]), np.concatenate([c.pcm for c in b]))
    for before, after in zip(capped, capped[1:]):
        assert after[0].made_at >= before[1].made_at
    assert "mamtra_requests_starting 0.0" in text


def test_a_paced_stream_never_runs_far_ahead_of_a_real_time_player_and_keeps_its_audio():
    """MAMTRA_PACE_AHEAD_S: a request whose client (playing in real time from its first audio) would have more than
    the pace buffered skips LM steps, so the audio leaves at about real time past the pace — the same audio."""
    pace = 0.3

    async def main(pace_s):
        engine = await _started(pace_ahead_s=pace_s, cap_seconds=1.0)
        try:
            chunks = await collect_chunks(engine.synthesize("One long sentence. And a second.", voice="ava",
                                                            request_id="p", seed=5))
        finally:
            await engine.stop()
        return chunks

    paced, free = run(main(pace)), run(main(0.0))
    assert np.array_equal(np.concatenate([c.pcm for c in paced]), np.concatenate([c.pcm for c in free]))
    audio = np.cumsum([len(c.pcm) / fakes.SAMPLE_RATE for c in paced])
    assert audio[-1] > 1.0
    start = paced[0].made_at
    chunk_s = 4 * SAMPLES_PER_TOKEN / fakes.SAMPLE_RATE  # chunk_tokens = 4
    for before, chunk in zip(audio, paced[1:]):
        # what the player holds when the chunk arrives: at most the pace, the chunk in the pipeline, and slack
        assert before - (chunk.made_at - start) <= pace + 2 * chunk_s + 0.05


def test_the_real_time_player_the_pace_follows_stalls_when_it_runs_out():
    from types import SimpleNamespace

    from service.engine.engine import _Handle

    h = SimpleNamespace(posted_s=0.0, played_s=0.0, played_at=None)
    assert _Handle.buffered_s(h, 5.0) == 0.0  # nothing posted yet
    _Handle._posted(h, 1.0, 10.0)
    assert _Handle.buffered_s(h, 10.25) == 0.75
    assert _Handle.buffered_s(h, 12.0) == 0.0  # ran out at 11.0 and waits
    _Handle._posted(h, 0.5, 12.0)  # plays on from where it stopped
    assert abs(_Handle.buffered_s(h, 12.1) - 0.4) < 1e-9
