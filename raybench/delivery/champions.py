"""What `raybench serve` serves: every registered `raybench-<dataset>-<category>` model that has
the alias (the banner lists them), and loading each once at start so no first request waits for
a cold model (about 10-20 s on CPU)."""
from __future__ import annotations

import time

from raybench.delivery.registry import registry_client

PREFIX = "raybench-"


def champions(uri: str, alias: str) -> list[tuple[str, str, str]]:
    """(dataset/category, version, method) of each registered raybench model with `alias`."""
    from mlflow.exceptions import MlflowException
    client = registry_client(uri)
    out = []
    for model in client.search_registered_models(max_results=1000):
        if not model.name.startswith(PREFIX):
            continue
        try:
            version = client.get_model_version_by_alias(model.name, alias)
        except MlflowException:
            continue
        rest = model.name[len(PREFIX):]
        run = client.get_run(version.run_id) if version.run_id else None
        dataset = (run.data.tags.get("dataset") if run else None) or rest.split("-", 1)[0]
        category = rest[len(dataset) + 1:] if rest.startswith(dataset + "-") else rest
        method = run.data.tags.get("method", "?") if run else "?"
        out.append((f"{dataset}/{category}", str(version.version), method))
    return sorted(out)


def warm_up(handle, model_ids, log=print) -> None:
    """Load each champion in a replica now (`CategoryScorer.warm`), saying how long each took."""
    for model_id in model_ids:
        start = time.perf_counter()
        try:
            handle.warm.remote(model_id).result()
            log(f"  loaded {model_id} ({time.perf_counter() - start:.1f} s)")
        except Exception as err:  # noqa: BLE001 - serving goes on; the first request retries the load
            log(f"  {model_id} not loaded ({type(err).__name__}: {err}); its first request loads it")
