"""Speech tokens and audio: mel front-end, FSQ speech tokenizer, streaming token decoder and HiFi-GAN vocoder.

Pipeline (all rates exact, see ``model.codec.config``)::

    audio 22,050 Hz ─► log-mel 86.13 fps ─► (interp.) 100 fps ─► encoder ─► stride 4 ─► FSQ ─► ids, 25 per s
    ids ─► decoder (25 fps, 2 tokens look-ahead) ─► ×4 ─► mel 100 fps ─► (interp., speed) mel 86.13 fps
        ─► HiFi-GAN V1 (pretrained, exact per-layer streaming) ─► 22,050 Hz ─► polyphase 160/147 ─► 24,000 Hz

Modules: ``config`` (frozen configs), ``mel`` (the vocoder's mel), ``streaming`` (stateful twins of conv ops),
``vocoder`` (HiFi-GAN loader and streams, streaming resampler), ``fsq``, ``nets`` (encoder/decoder),
``codec`` (the codec and its checkpoint), ``stream`` (the service's ``SpeechDecoder``), ``train``, ``cli``.
"""
