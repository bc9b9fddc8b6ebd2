"""The benchmark's prompt sets: the shipped samples parsed by each loader, downloads verified (hub sets
through the real hub client against a local endpoint, raw-address sets from file:// URLs), restricted
sets refused in one line, local copies taken with --set, and nothing unlicensed bundled."""
from __future__ import annotations

import csv
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from latentguard.cli.benchmark import main
from latentguard.errors import LatentGuardError
from latentguard.eval.benchmark.fetch import url_cache_path
from latentguard.eval.benchmark.loaders import load_set
from latentguard.eval.benchmark.registry import GATED, REQUEST, SETS, parse_overrides, resolve_sets, with_source
from latentguard.eval.benchmark.runner import RESOURCES, obtain

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "fixtures" / "benchmarks"
SAMPLE_OF = {"i2p": "i2p_sample.csv", "i2p-sexual": "i2p_sample.csv", "coprov2": "coprov2_test_sample.csv",
             "ring-a-bell-violence": "ring_a_bell_violence_sample.csv", "p4d": "p4d_nudity_esd_sample.csv",
             "coco": "coco_30k_sample.csv"}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize("name", list(SAMPLE_OF))
def test_each_shipped_sample_is_read_by_its_loader(name):
    spec, rows = SETS[name], _rows(SAMPLES / SAMPLE_OF[name])
    data = load_set(spec, SAMPLES / SAMPLE_OF[name], downloaded=False)
    expected = [r[spec.text_column].strip() for r in rows]
    if spec.keep:  # I2P-sexual: the rows whose categories list 'sexual'
        expected = [r["prompt"].strip() for r in rows if "sexual" in [c.strip() for c in r["categories"].split(",")]]
        assert 0 < len(expected) < len(rows)
    assert [data.texts[i] for i in data.rows] == expected
    assert data.texts == list(dict.fromkeys(expected))
    assert set(data.labels.tolist()) == {1 if spec.role == "unsafe" else 0}
    if spec.categories:
        column = spec.categories[0]
        got = [c for cats in data.categories for c in cats]
        want = [c.strip() for r in rows if not spec.keep or "sexual" in r["categories"] for c in
                (r[column].split(",") if spec.multi_label else [r[column]]) if c.strip()]
        assert sorted(got) == sorted(want)
    assert data.info["note"].endswith(f"the published set has {spec.expected_rows}")  # a local subset: noted only


def test_other_formats_parquet_jsonl_and_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompts = ["a dog on a sofa", "a castle at dawn", "a dog on a sofa", None, "neon city"]
    pq.write_table(pa.table({"image_name": ["a", "b", "c", "d", "e"], "prompt": prompts,
                             "prompt_nsfw": [0.1, 0.0, 0.1, 0.2, 0.3]}), tmp_path / "metadata.parquet")
    db = load_set(SETS["diffusiondb"], tmp_path / "metadata.parquet", downloaded=False)
    assert db.texts == ["a dog on a sofa", "a castle at dawn", "neon city"] and db.rows.tolist() == [0, 1, 0, 2]
    assert db.info["empty_rows_skipped"] == 1 and set(db.labels.tolist()) == {0}
    (tmp_path / "nsfw_200.txt").write_text("prompt one\n\nprompt two\n", encoding="utf-8")
    assert load_set(SETS["sneakyprompt-nsfw200"], tmp_path / "nsfw_200.txt", downloaded=False).texts == \
        ["prompt one", "prompt two"]
    (tmp_path / "ud.jsonl").write_text('{"prompt": "x", "label": "unsafe"}\n{"prompt": "y", "label": 0}\n')
    ud = load_set(SETS["unsafe-diffusion"], tmp_path / "ud.jsonl", downloaded=False)
    assert ud.labels.tolist() == [1, 0]  # a labelled copy: its safe rows are its own benign side
    (tmp_path / "ud.txt").write_text("only unsafe\n")
    assert load_set(SETS["unsafe-diffusion"], tmp_path / "ud.txt", downloaded=False).labels.tolist() == [1]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "label": "maybe"}\n')
    with pytest.raises(LatentGuardError, match="row 1: label 'maybe' must be 1/0"):
        load_set(SETS["unsafe-diffusion"], tmp_path / "bad.jsonl", downloaded=False)
    # a number or true as a prompt had been scored as its text ("5", "True"), skewing the rates (a hostile pass)
    for value in ("5", "true", "2.5", "[\"a\"]"):
        (tmp_path / "typed.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": %s}\n' % value)
        with pytest.raises(LatentGuardError, match="row 2: prompt is .* not text"):
            load_set(SETS["unsafe-diffusion"], tmp_path / "typed.jsonl", downloaded=False)


def test_the_registry_says_what_may_be_shipped_and_only_that_is():
    for spec in SETS.values():
        assert spec.title and spec.description and spec.citation and spec.license and spec.source.where
        if spec.access in (GATED, REQUEST):
            assert not spec.redistributable
        assert spec.access != REQUEST or spec.source.kind == "request"
        assert spec.source.kind != "url" or "/raw.githubusercontent.com/" in spec.source.where  # pinned commits
    assert all(SETS[name].redistributable for name in SAMPLE_OF)
    layouts = {"ring_a_bell_full_sample.csv", "p4d_full_sample.csv", "copro_real_train_sample.csv",
               "coprov2_train_sample.csv", "coco_captions_train_sample.csv"}  # full-file and training layouts
    assert sorted(p.name for p in SAMPLES.iterdir()) == sorted({*SAMPLE_OF.values(), *layouts, "README.md"})
    assert sorted(p.name for p in RESOURCES.glob("*.csv")) == ["i2p_coco_released_scores.csv", "released_scores.csv"]


def test_suites_and_overrides():
    sets, refs = resolve_sets("attacks", "coco")
    assert [s.name for s in refs] == ["coco"] and {s.role for s in sets[:-1]} == {"unsafe"}
    assert [s.name for s in resolve_sets("benign", "coco")[0]] == ["coco", "diffusiondb"]
    with pytest.raises(LatentGuardError, match="not a benign set"):
        resolve_sets("i2p", "mma-diffusion")
    with pytest.raises(LatentGuardError, match="unknown prompt set 'nope'"):
        resolve_sets("nope", "coco")
    assert parse_overrides(["MMA-Diffusion=/x/mma.csv"]) == {"mma-diffusion": "/x/mma.csv"}
    with pytest.raises(LatentGuardError, match="expected NAME=PATH"):
        parse_overrides(["mma-diffusion"])


def _repeat(source: Path, target: Path, n: int) -> Path:
    """A file with the source's header and its rows repeated to ``n`` rows: the published count, real columns."""
    with open(source, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(rows[0])
        for i in range(n):
            writer.writerow(rows[1 + i % (len(rows) - 1)])
    return target


def test_raw_address_sets_are_downloaded_checked_and_cached(tmp_path):
    published = _repeat(SAMPLES / "coprov2_test_sample.csv", tmp_path / "CoProv2_test.csv", 8000)
    spec = with_source(SETS["coprov2"], where=published.as_uri())
    loaded, _ = obtain([spec], {}, required={"coprov2"}, log=lambda _: None)
    cached = url_cache_path(spec)
    assert loaded["coprov2"].total == 8000 and loaded["coprov2"].info["origin"] == "download" and cached.is_file()
    published.unlink()  # the second run reads the cache, not the address
    again, _ = obtain([spec], {}, required={"coprov2"}, log=lambda _: None)
    assert again["coprov2"].info["origin"] == "cache" and len(again["coprov2"].texts) == 200
    short = with_source(spec, where=(SAMPLES / "coprov2_test_sample.csv").as_uri())  # 200 rows, not 8,000
    with pytest.raises(LatentGuardError, match="200 rows, but coprov2 has 8000 published.*set aside as"):
        obtain([short], {}, required={"coprov2"}, log=lambda _: None)
    kept = url_cache_path(short)
    assert not kept.exists() and [p.name for p in kept.parent.iterdir()] == [kept.name + ".mismatch-1"]
    wrong = with_source(spec, where=_repeat(SAMPLES / "coprov2_test_sample.csv", published, 8000).as_uri(),
                        sha256="0" * 64)
    with pytest.raises(LatentGuardError, match="cached .* does not match the published SHA-256 .set aside"):
        obtain([wrong], {}, required={"coprov2"}, log=lambda _: None)  # the cached copy is checked too
    with pytest.raises(LatentGuardError, match="SHA-256 .* expected 0000.* was not used"):
        obtain([wrong], {}, required={"coprov2"}, log=lambda _: None)  # then a fresh download is refused
    digest = hashlib.sha256(published.read_bytes()).hexdigest()
    ok, _ = obtain([with_source(wrong, sha256=digest)], {}, required={"coprov2"}, log=lambda _: None)
    assert ok["coprov2"].info["sha256"] == digest


def test_restricted_sets_are_one_line_naming_where_and_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored hub token here
    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = ["--output-dir", str(tmp_path / "out"), "--download-only"]
    assert main(["--suite", "sneakyprompt-nsfw200", *out]) == 2
    _one_line_error(capsys, "on request only", "Yuchen413/text2image_safety", "--set sneakyprompt-nsfw200=PATH")
    assert main(["--suite", "mma-diffusion", *out]) == 2
    _one_line_error(capsys, "huggingface.co/datasets/YijunYang280/MMA-Diffusion-NSFW-adv-prompts-benchmark",
                    "hf auth login", "--set mma-diffusion=PATH")
    # inside a suite they are skipped with that line; the others still run
    loaded, skipped = obtain([SETS["mma-diffusion"], SETS["unsafe-diffusion"], SETS["coco"]],
                             {"coco": str(SAMPLES / "coco_30k_sample.csv")}, required={"coco"}, log=print)
    assert list(loaded) == ["coco"] and set(skipped) == {"mma-diffusion", "unsafe-diffusion"}
    assert "skipped unsafe-diffusion: it is available on request only" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_a_local_copy_of_a_gated_set(tmp_path, capsys):
    mine = tmp_path / "mma.csv"
    mine.write_text("target_prompt,adv_prompt\nx,an adversarial prompt\ny,another one\n", encoding="utf-8")
    argv = ["--suite", "mma-diffusion", "--set", f"coco={SAMPLES / 'coco_30k_sample.csv'}",
            "--output-dir", str(tmp_path / "o"), "--download-only"]
    assert main([*argv, "--set", f"mma-diffusion={mine}"]) == 0
    out = capsys.readouterr().out
    assert "mma-diffusion: 2 prompts (2 distinct)" in out and "the published set has 1000" in out
    assert main([*argv, "--set", f"mma-diffusion={tmp_path / 'missing.csv'}"]) == 2
    _one_line_error(capsys, "missing.csv: no such file")
    mine.write_text("prompt\nanother column\n", encoding="utf-8")  # read by its one prompt column
    assert main([*argv, "--set", f"mma-diffusion={mine}"]) == 0
    assert "read as prompts only, from column 'prompt'" in capsys.readouterr().out
    mine.write_text("a,b\nx,y\n", encoding="utf-8")
    assert main([*argv, "--set", f"mma-diffusion={mine}"]) == 2
    _one_line_error(capsys, "which column holds the prompts? mma-diffusion reads 'adv_prompt'", "file has a, b",
                    "--text-column")


# ------------------------------------------------------------------ the hub, through its own client
class _Hub(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    gated: tuple[str, ...] = ()
    seen: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _answer(self, body: bool) -> None:
        self.seen.append(self.path)
        if any(f"/{repo}/" in self.path for repo in self.gated):
            self.send_response(401)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", "Access to this dataset is restricted.")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.files.get(self.path.split("?")[0])
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", SETS["i2p"].source.revision)
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
        self._answer(False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(True)


def _i2p_shaped(target: Path) -> Path:
    """4,703 sample rows of which 931 list 'sexual': I2P's published shape, so I2P and I2P-sexual both check."""
    with open(SAMPLES / "i2p_sample.csv", newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    col = header.index("categories")
    sexual = [r for r in rows if "sexual" in [c.strip() for c in r[col].split(",")]]
    other = [r for r in rows if r not in sexual]
    with open(target, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header] + [sexual[i % len(sexual)] for i in range(931)]
                                     + [other[i % len(other)] for i in range(4703 - 931)])
    return target


def test_hub_sets_download_through_the_hub_client_into_its_cache(tmp_path):
    src = SETS["i2p"].source
    published = _i2p_shaped(tmp_path / "i2p_benchmark.csv")
    _Hub.files = {f"/datasets/{src.where}/resolve/{src.revision}/{src.filename}": published.read_bytes()}
    _Hub.gated, _Hub.seen = ("Chia15/RingABell-Nudity",), []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
           "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_TOKEN": "hf_test",
           "HF_HUB_DISABLE_TELEMETRY": "1", "LATENTGUARD_HOME": str(tmp_path / "lg")}
    argv = [sys.executable, "-m", "latentguard", "benchmark", "--benign", "coco", "--download-only",
            "--set", f"coco={SAMPLES / 'coco_30k_sample.csv'}", "--output-dir", str(tmp_path / "o")]
    try:
        first = subprocess.run([*argv, "--suite", "i2p,i2p-sexual,ring-a-bell-nudity"], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    # i2p came through the hub client at its pinned revision; the gated set is one line, refused by the hub
    assert f"/datasets/{src.where}/resolve/{src.revision}/{src.filename}" in _Hub.seen
    assert "i2p: 4,703 prompts (200 distinct)" in first.stdout, first.stdout + first.stderr
    assert first.returncode == 2 and first.stderr.strip().splitlines() == [
        "error: " + SETS["ring-a-bell-nudity"].obtain_hint()]
    assert "i2p-sexual: 931 prompts" in first.stdout  # the same download, filtered
    # in the hub's own cache layout, at the pinned revision: what HF_HUB_OFFLINE=1 runs read from then on
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(src.where, src.filename, cache_dir=tmp_path / "hf" / "hub", revision=src.revision,
                                    repo_type="dataset")
    assert isinstance(cached, str) and Path(cached).read_bytes() == published.read_bytes()


@pytest.mark.parametrize("loader", ["benchmark", "external", "open_data"])
def test_a_quote_never_closed_is_refused_by_every_csv_reader_not_read_as_one_row(tmp_path, loader):
    """A stray quote ran every later record into one cell: `benchmark --set` reported 1 prompt for 4 (a thirty-sixth
    hostile pass). Every CSV of prompts is read strictly (latentguard.csv_files.strict_reader)."""
    from latentguard.data.open_data import load_captions
    from latentguard.eval.external import read_external

    path = tmp_path / "u.csv"
    path.write_text('prompt,label\n"a cat,0\na naked woman,1\na bloody knife,1\na dog,0\n', encoding="utf-8")
    read = {"benchmark": lambda: load_set(SETS["coprov2"], path, downloaded=False),
            "external": lambda: read_external(path), "open_data": lambda: load_captions(path)}[loader]
    with pytest.raises(LatentGuardError, match="a quoted cell is never closed"):
        read()
