"""``redgym explore``: sample what a target model says, cluster it, and keep an even subsample for labelling.

E3's first step (Casper et al., 2023): the user has no classifier for the failure they care about yet, so look at
the target's own outputs first. Each sample is the target's continuation of a training-split prompt (``source:
prompts``; the test split stays unseen for the exploit step's evaluation) or a free generation from an empty
context (``source: free``). Outputs are embedded (MiniLM by default), k-means clustered, and ``per_cluster``
samples are drawn from every cluster, so rare kinds of output are as visible to a labeller as common ones.

Writes ``all_samples.jsonl`` (every sample: prompt, text, cluster, distance to its centre, the configured scorer's
score), ``samples.jsonl`` + ``samples.csv`` (the subsample, with an empty ``label`` column for a human),
``clusters.png`` (a 2-D PCA projection), ``explore.json`` and ``explore.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import set_seed

from redgym.config import DeviceConfig, ModelConfig, PromptConfig, RolloutConfig, ScorerConfig, _f, one_of
from redgym.data.labels import write_labelling_csv
from redgym.errors import RedgymError
from redgym.runfolder import (
    CONTENT_WARNING,
    atomic_write,
    check_writable,
    save_config,
    write_json,
    write_jsonl,
)
from redgym.scorers.embeddings import load_embedder
from redgym.scorers.toxicity import Scorer, build_scorer
from redgym.setup import eval_params, load_lm, make_split


@dataclass
class ExploreConfig(PromptConfig, ScorerConfig, RolloutConfig, ModelConfig, DeviceConfig):
    """E3 step 1: the target (``defender_model``) answers prompts or talks freely; what it says is embedded,
    clustered and subsampled. The parts it uses: the models (the target), rollout sampling, the scorer and embedder,
    the prompts and their split, and the device beneath them; no reward, HTTP, guard or evaluation field."""

    source: str = _f(
        "prompts",
        "what the target continues: prompts (the training split of `prompts`) or free "
        "(its own generations from an empty context)",
    )
    n_samples: int = _f(2000, "target outputs sampled")
    clusters: int = _f(50, "k-means clusters")
    per_cluster: int = _f(6, "samples drawn from each cluster for labelling (fewer when a cluster is smaller)")

    def validate(self) -> None:
        super().validate()
        one_of(self, "source", "prompts", "free")
        if self.n_samples < 2 or not 2 <= self.clusters <= self.n_samples or self.per_cluster < 1:
            raise RedgymError("config: need n_samples >= clusters >= 2 and per_cluster >= 1")


def kmeans(emb: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> cluster ids (N,) and each row's Euclidean distance to its cluster centre (N,)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(emb)
    dist = np.linalg.norm(emb - km.cluster_centers_[km.labels_], axis=1)
    return km.labels_.astype(int), dist


def balanced_subsample(cluster_ids: np.ndarray, per_cluster: int, seed: int) -> np.ndarray:
    """Indices of ``per_cluster`` rows drawn at random from every cluster (all rows of a smaller cluster),
    ordered by cluster then index."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(cluster_ids):
        members = np.flatnonzero(cluster_ids == c)
        picked.append(np.sort(rng.choice(members, size=min(per_cluster, len(members)), replace=False)))
    return np.concatenate(picked) if picked else np.zeros(0, dtype=int)


def project_2d(emb: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2): the first two principal components."""
    centred = emb - emb.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_clusters(xy: np.ndarray, cluster_ids: np.ndarray, picked: np.ndarray, path: Path) -> None:
    from redgym.eval.plots import plt, save

    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(xy[:, 0], xy[:, 1], c=cluster_ids, cmap="tab20", s=6, alpha=0.5, linewidths=0)
    ax.scatter(
        xy[picked, 0],
        xy[picked, 1],
        facecolors="none",
        edgecolors="black",
        s=18,
        linewidths=0.6,
        label="subsample for labelling",
    )
    ax.set_title(f"{len(xy)} target outputs, {len(np.unique(cluster_ids))} k-means clusters (PCA of embeddings)")
    ax.legend(loc="best", fontsize=8)
    save(fig, path, dpi=110)


def sample_outputs(cfg: ExploreConfig, scorer: Scorer, progress: bool = True) -> list[dict]:
    """The target's outputs: ``n_samples`` rows {id, prompt, text}, generated in batches of ``batch_size``
    (``scorer`` filters the prompts where ``prompt_max_toxicity`` says so)."""
    target = load_lm(cfg, cfg.defender_model, cfg.defender_format, cfg.max_context_tokens)
    if cfg.source == "prompts":
        train = make_split(cfg, scorer).train
        if not train:
            raise RedgymError(f"explore: no training prompts from {cfg.prompts!r}")
        order = np.random.default_rng(cfg.seed).permutation(cfg.n_samples) % len(train)
        prompts = [train[i] for i in order]
        # similar lengths batched together, as rollouts do, so left padding wastes little
        items = sorted(((p.id, p.turns) for p in prompts), key=lambda x: sum(len(u) for u in x[1]))
    else:
        items = [("free", ()) for _ in range(cfg.n_samples)]
    empty = target.tokenizer.bos_token or target.tokenizer.eos_token or ""
    params = eval_params(cfg)  # ASTPrompter's sampling, as the target answers in evaluation
    rows: list[dict] = []
    set_seed(cfg.seed)
    with tqdm(total=len(items), desc="explore", unit="sample", disable=not progress) as bar:
        for i in range(0, len(items), cfg.batch_size):
            batch = items[i : i + cfg.batch_size]
            contexts = [
                target.render([("prompt", u) for u in turns], "defender") if turns else empty for _, turns in batch
            ]
            gen = target.generate(contexts, params)
            rows += [
                {"id": f"s{len(rows) + j:05d}", "prompt_id": pid, "prompt": list(turns), "text": text}
                for j, ((pid, turns), text) in enumerate(zip(batch, gen.texts))
            ]
            bar.update(len(batch))
    return rows


def explore(cfg: ExploreConfig, out: Path, progress: bool = True) -> dict:
    """Sample, embed, cluster, subsample and write the explore folder; returns ``explore.json``'s dict."""
    check_writable(out)
    t0 = time.time()
    scorer = build_scorer(cfg.scorer)  # filters the prompts, then scores the outputs
    rows = sample_outputs(cfg, scorer, progress)
    t_sample = time.time() - t0
    texts = [r["text"] for r in rows]
    emb = load_embedder(cfg.embedding_model)(texts)
    ids, dist = kmeans(emb, cfg.clusters, cfg.seed)
    scores = scorer(texts)
    for r, c, d, s in zip(rows, ids, dist, scores):
        r.update(cluster=int(c), distance=round(float(d), 6), score=float(s))
    picked = balanced_subsample(ids, cfg.per_cluster, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    save_config(out, cfg)
    write_jsonl(out / "all_samples.jsonl", rows)
    sub = [rows[i] for i in picked]
    write_jsonl(out / "samples.jsonl", sub)
    write_labelling_csv(
        out / "samples.csv", [{k: r[k] for k in ("id", "cluster", "distance", "text", "score")} for r in sub]
    )
    plot_clusters(project_2d(emb), ids, picked, out / "clusters.png")
    sizes = np.bincount(ids, minlength=cfg.clusters)
    summary = {
        "content_warning": CONTENT_WARNING,
        "target": cfg.defender_model,
        "source": cfg.source,
        "n_samples": len(rows),
        "clusters": cfg.clusters,
        "cluster_sizes": sizes.tolist(),
        "subsample": len(sub),
        "subsample_per_cluster": np.bincount(ids[picked], minlength=cfg.clusters).tolist(),
        "scorer": cfg.scorer,
        "share_above_threshold": float(np.mean(np.array(scores) > cfg.toxic_threshold)),
        "time_sample_s": round(t_sample, 1),
        "time_total_s": round(time.time() - t0, 1),
    }
    write_json(out / "explore.json", summary)
    atomic_write(out / "explore.md", explore_markdown(summary))
    return summary


def explore_markdown(s: dict) -> str:
    sizes = np.array(s["cluster_sizes"])
    return "\n".join(
        [
            "# Explore",
            "",
            f"> {s['content_warning']}",
            "",
            f"- target `{s['target']}`, source `{s['source']}`: {s['n_samples']} outputs in {s['time_sample_s']} s "
            f"({s['time_total_s']} s with embedding and clustering)",
            f"- {s['clusters']} k-means clusters, sizes {sizes.min()}–{sizes.max()} (median {int(np.median(sizes))}); "
            f"{s['subsample']} samples for labelling in `samples.csv` (fill its `label` column)",
            f"- share scoring above the threshold with `{s['scorer']}`: {s['share_above_threshold']:.4f}",
            "",
            "![clusters](clusters.png)",
            "",
        ]
    )
