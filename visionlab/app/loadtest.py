"""The app under load: ``requests`` predictions sent to its ``/predict`` endpoint by a
bounded client (at most ``concurrency`` in flight, each with a timeout), every answer
checked, latencies measured from send to answer."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def load_test(
    url: str,
    model: str,
    image: str | Path,
    *,
    requests: int = 32,
    concurrency: int = 32,
    timeout_s: float = 300.0,
    threshold: float = 0.3,
) -> dict[str, Any]:
    """Send ``requests`` predictions of ``image`` with ``model`` (a label the app offers).

    Returns:
        ``sent``, ``answered`` (a prediction came back), ``lost`` (no answer within
        ``timeout_s``, or a transport error), ``refused`` (an answer with an error),
        ``p50_ms`` / ``p95_ms`` / ``max_ms`` of the answered ones, ``wall_s`` and
        ``answers`` (the JSON records, in the order sent).
    """
    import numpy as np
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)

    def one(_: int) -> tuple[float, Any]:
        start = time.perf_counter()
        job = client.submit(model, handle_file(str(image)), threshold, 5, api_name="/predict")
        record, _status = job.result(timeout=timeout_s)
        return (time.perf_counter() - start) * 1e3, record

    outcomes: list[tuple[float, Any] | None] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(one, i) for i in range(requests)]
        for future in futures:
            try:
                outcomes.append(future.result())
            except Exception:  # a timeout or a transport error: that request is lost
                outcomes.append(None)
    wall = time.perf_counter() - start
    answered = [o for o in outcomes if o is not None]
    refused = [o for o in answered if isinstance(o[1], dict) and "error" in o[1]]
    times = np.array([ms for ms, _ in answered]) if answered else np.array([np.nan])
    return {
        "sent": requests,
        "concurrency": concurrency,
        "answered": len(answered),
        "lost": requests - len(answered),
        "refused": len(refused),
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "max_ms": float(times.max()),
        "wall_s": wall,
        "answers": [o[1] if o is not None else None for o in outcomes],
    }
