"""Benchmark outputs: the per-prompt CSV of each set, ``benchmark.json``, ``benchmark.md`` (our numbers,
then the published ones beside them) and ``roc.png`` (one curve per set against each benign set).
Files are written atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...csv_files import report_writer
from ...io import atomic_path, atomic_write_text
from ...published import METHOD_NAMES, PUBLISHED_BENCHMARKS
from ..report import fmt
from ..run import LATENT_GUARD, json_safe
from .tables import OWN, Scored

ASR_DEFINITION = ("attack success rate (ASR) = share of a set's unsafe prompts the method does NOT flag at its "
                  "operating threshold = 1 - detection rate; benign FPR = share of the benign set's prompts flagged "
                  "at it. Every listed prompt counts (duplicates too); each distinct text is scored once.")
_COLUMN = {LATENT_GUARD: ""}


def _prefix(key: str) -> str:
    return _COLUMN.get(key, f"{key}_")


def write_prompt_csv(path: str | Path, s: Scored, concepts: Sequence[str]) -> Path:
    """One row per distinct (prompt, label): ``prompt, count, label[, categories]``, then per method
    ``score, flagged, concept`` (baselines prefixed with their key)."""
    data = s.data
    key = data.rows.astype(np.int64) * 2 + data.labels
    _, first, inverse, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    cats: list[set[str]] | None = None
    if data.categories is not None:
        cats = [set() for _ in first]
        for row, group in enumerate(inverse):
            cats[group].update(data.categories[row])
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = report_writer(handle)  # every text cell: prompts, concepts and a set's own categories
        header = ["prompt", "count", "label"] + (["categories"] if cats is not None else [])
        for k, out in s.outputs.items():
            header += [f"{_prefix(k)}score"] + ([f"{_prefix(k)}flagged"] if out.flagged is not None else [])
            header += [f"{_prefix(k)}concept"]
        writer.writerow(header)
        for group in order:
            row = int(first[group])
            text_index = int(data.rows[row])
            line = [data.texts[text_index], int(counts[group]), int(data.labels[row])]
            if cats is not None:
                line.append(", ".join(sorted(cats[group])))
            for out in s.outputs.values():
                line.append(repr(float(out.score[text_index])))
                if out.flagged is not None:
                    line.append(int(out.flagged[text_index]))
                c = int(out.concept[text_index])
                line.append(concepts[c] if 0 <= c < len(concepts) else "")
            writer.writerow(line)
    return path


def _ref_title(ref: str, results: Mapping[str, Any]) -> str:
    if ref == OWN:
        return "each set's own safe rows"
    entry = next((b for b in results["benign_sets"] if b["name"] == ref), None)
    return f"{entry['title']} (`{ref}`, {entry['prompts_total']:,} prompts)" if entry else ref


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{100 * value:.1f}%"


def _ours_entry(figure, results: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Our set a figure is compared with: the same name, else the first of its family (``ring-a-bell`` ->
    ``ring-a-bell-violence``)."""
    sets = results["unsafe_sets"]
    return next((u for u in sets if u["name"] == figure.set), None) or \
        next((u for u in sets if figure.set and u["name"].startswith(figure.set + "-")), None)


def ours_for(figure, results: Mapping[str, Any], threshold: float | None = None) -> float | None:
    """Our Latent Guard number comparable with a published figure (same set or family, same metric; an accuracy
    only at the figure's threshold), if we have one."""
    entry = _ours_entry(figure, results)
    if entry is None or (figure.threshold is not None and figure.threshold != threshold):
        return None
    lg = entry["methods"].get(LATENT_GUARD, {})
    if figure.metric == "asr":
        return lg.get("attack_success_rate")
    refs = lg.get("against", {})
    ref = "coco" if "coco" in refs else OWN if OWN in refs else next(iter(refs), None)
    return None if ref is None else refs[ref].get({"auroc": "auroc", "accuracy": "accuracy"}.get(figure.metric, ""))


def benchmark_markdown(results: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    lines = ["# Latent Guard robustness benchmark", ""]
    for key in ("mode", "guard", "weights_sha256", "encoder", "concepts", "scores_file", "model"):
        if meta.get(key):
            what = f"{key} ({meta['guard_kind']})" if key == "guard" and meta.get("guard_kind") else key
            lines.append(f"- {what.replace('_', ' ')}: `{meta[key]}`")
    lines += [f"- operating threshold: **{meta['threshold']:.4f}** ({meta['threshold_origin']})"]
    if meta.get("training_overlap"):
        from .overlap import overlap_line

        lines.append(f"- {overlap_line(meta['training_overlap'])}")
    lines += ["", f"{ASR_DEFINITION}", ""]
    head = ("| set | method | prompts (unique / total) | AUROC | AUPRC | FPR@95%TPR | TPR@1%FPR | TPR@5%FPR | "
            "detection | ASR | benign FPR | accuracy |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    refs = list(results["references"]) + ([OWN] if any(OWN in u["references"] for u in results["unsafe_sets"]) else [])
    for ref in refs:
        lines += [f"## Against {_ref_title(ref, results)}", "", head]
        for u in results["unsafe_sets"]:
            if ref not in u["references"]:
                continue
            for key, m in u["methods"].items():
                r = m["against"][ref]
                lines.append(f"| {u['name']} | {METHOD_NAMES.get(key, key)} | {u['prompts_unique']:,} / "
                             f"{u['prompts_total']:,} | {fmt(r.get('auroc'))} | {fmt(r.get('auprc'))} | "
                             f"{fmt(r.get('fpr_at_95tpr'))} | {fmt(r.get('tpr_at_1fpr'))} | "
                             f"{fmt(r.get('tpr_at_5fpr'))} | {_pct(m['detection_rate'])} | "
                             f"{_pct(m['attack_success_rate'])} | {_pct(r.get('benign_fpr'))} | "
                             f"{fmt(r.get('accuracy'))} |")
        lines.append("")
    for u in results["unsafe_sets"]:
        if not u.get("categories"):
            continue
        first = u["references"][0] if u["references"] else None
        lines += [f"### {u['name']} by category (AUROC against `{first}`)", "",
                  "| category | prompts (unique / total) | method | AUROC | detection | ASR |",
                  "|---|---:|---|---:|---:|---:|"]
        for c in u["categories"]:
            if c.get("role") == "benign":
                continue
            for key, m in c["methods"].items():
                lines.append(f"| {c['category']} | {c['prompts_unique']:,} / {c['prompts_total']:,} | "
                             f"{METHOD_NAMES.get(key, key)} | {fmt(m.get('auroc'))} | {_pct(m['detection_rate'])} | "
                             f"{_pct(m['attack_success_rate'])} |")
        lines.append("")
        benign = [c for c in u["categories"] if c.get("role") == "benign"]
        if benign:
            lines += [f"### {u['name']}: its benign subsets at the operating threshold", "",
                      "| subset | prompts (unique / total) | method | false-positive rate |", "|---|---:|---|---:|"]
            lines += [f"| {c['category']} | {c['prompts_unique']:,} / {c['prompts_total']:,} | "
                      f"{METHOD_NAMES.get(key, key)} | {_pct(m['false_positive_rate'])} |"
                      for c in benign for key, m in c["methods"].items()]
            lines.append("")
    if results["benign_sets"]:
        lines += ["## Benign sets at the operating threshold", "", "| set | method | prompts (unique / total) | "
                  "false-positive rate |", "|---|---|---:|---:|"]
        for b in results["benign_sets"]:
            for key, m in b["methods"].items():
                lines.append(f"| {b['name']} | {METHOD_NAMES.get(key, key)} | {b['prompts_unique']:,} / "
                             f"{b['prompts_total']:,} | {_pct(m['false_positive_rate'])} |")
        lines.append("")
    from .released import released_markdown

    lines += released_markdown(results.get("released_beside", []))
    lines += ["## Published numbers beside ours (not recomputed here; other models, thresholds and subsets)", "",
              "| method | set | metric | published | n | Latent Guard here | source |",
              "|---|---|---|---:|---:|---:|---|"]
    for fig in PUBLISHED_BENCHMARKS:
        show = _pct if fig.metric in ("asr", "max_asr") else fmt
        ours = ours_for(fig, results, meta.get("threshold"))
        entry = _ours_entry(fig, results)
        where = f" ({entry['name']})" if ours is not None and entry and entry["name"] != fig.set else ""
        scope = f" ({fig.scope})" if fig.scope else ""
        lines.append(f"| {fig.method} | {fig.set or 'all attacks'}{scope} | {fig.metric} | {show(fig.value)} | "
                     f"{fig.n or '-'} | {show(ours)}{where} | {fig.source} |")
    lines.append("")
    if meta.get("training_overlap"):
        from .overlap import overlap_markdown

        lines += overlap_markdown(meta["training_overlap"])
    if meta.get("skipped"):
        lines += ["## Not run", ""] + [f"- {line}" for line in meta["skipped"].values()] + [""]
    lines += ["## Sets", ""]
    for name, info in meta.get("sets", {}).items():
        details = ", ".join(f"{k} {v}" for k, v in info.items() if k in ("source", "revision", "sha256", "license",
                                                                          "rows", "note", "empty_rows_skipped"))
        lines.append(f"- `{name}`: {details}")
    return "\n".join(lines) + "\n"


def plot_benchmark_roc(scored: Mapping[str, Scored], references: Sequence[str], path: str | Path,
                       threshold_label: str) -> Path:
    """One panel per benign reference; one Latent Guard ROC curve per unsafe set, its operating point marked."""
    from sklearn.metrics import roc_curve

    from ...decision.metrics import roc_auc
    from ..plots import _pyplot, _save

    plt = _pyplot()
    panels = list(references) or [OWN]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 5.0), squeeze=False)
    for ax, ref in zip(axes[0], panels):
        for name, s in scored.items():
            if not s.has(1) or (ref == OWN and not s.has(0)) or (ref != OWN and ref not in scored):
                continue
            pos, pos_flagged = s.rows(LATENT_GUARD, 1)
            neg, neg_flagged = (s if ref == OWN else scored[ref]).rows(LATENT_GUARD, 0)
            labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
            fpr, tpr, _ = roc_curve(labels, np.r_[pos, neg])
            line, = ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc(labels, np.r_[pos, neg]):.3f})")
            ax.plot(neg_flagged.mean(), pos_flagged.mean(), "o", color=line.get_color(), markeredgecolor="black")
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel(f"false positive rate ({ref} prompts blocked)")
        ax.set_ylabel("true positive rate (unsafe prompts blocked)")
        ax.set_title(f"Latent Guard against {ref}; dots: {threshold_label}", fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_json(path: str | Path, results: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    threshold = meta.get("threshold")
    published = [dict(fig._asdict(), ours=ours_for(fig, results, threshold)) for fig in PUBLISHED_BENCHMARKS]
    body = {"meta": dict(meta), "definitions": ASR_DEFINITION, **results, "published": published}
    atomic_write_text(path, json.dumps(json_safe(body), indent=1) + "\n")
    return Path(path)


def console_summary(results: Mapping[str, Any]) -> str:
    """A short fixed-width table: per unsafe set, Latent Guard's AUROC against the first reference, and its
    detection / ASR; then each benign set's FPR."""
    ref = results["references"][0] if results["references"] else OWN
    lines = [f"{'set':<22} {'prompts':>9} {'AUROC vs ' + ref:>16} {'detection':>10} {'ASR':>7}"]
    for u in results["unsafe_sets"]:
        m = u["methods"][LATENT_GUARD]
        r = m["against"].get(ref) or next(iter(m["against"].values()), {})
        lines.append(f"{u['name']:<22} {u['prompts_total']:>9,} {fmt(r.get('auroc')):>16} "
                     f"{_pct(m['detection_rate']):>10} {_pct(m['attack_success_rate']):>7}")
    for b in results["benign_sets"]:
        lines.append(f"{b['name']:<22} {b['prompts_total']:>9,} {'(benign) FPR':>16} "
                     f"{_pct(b['methods'][LATENT_GUARD]['false_positive_rate']):>10}")
    return "\n".join(lines)
