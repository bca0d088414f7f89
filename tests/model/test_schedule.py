import pytest

from model.schedule import warmup_cosine


def test_warmup_then_cosine_to_the_floor():
    kw = dict(lr=1.0, warmup=10, total=110, min_ratio=0.1)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)
    assert warmup_cosine(60, **kw) == pytest.approx(0.55)  # half way: the mid-point of 1.0 and 0.1
    assert warmup_cosine(110, **kw) == pytest.approx(0.1) == warmup_cosine(500, **kw)
    rates = [warmup_cosine(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
