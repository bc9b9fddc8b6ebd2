"""The prompt sets `latentguard benchmark` knows: what each is, where it lives, its license, how to read it.

One entry per set, written from what its authors publish (README, hub card, repository). Where a
source publishes no checksum (none of these repositories or hub cards does), the entry says so and
a download is verified by content instead: the columns the set must have and its published row count.
GitHub files are pinned to a commit and hub files to a revision where one is known, so the bytes
behind a raw address cannot change underneath a result; the revision actually used is recorded.

Nothing here is bundled with the package: only small MIT / CC BY samples ship, as test fixtures.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from ...errors import LatentGuardError

UNSAFE, BENIGN = "unsafe", "benign"          # a set's role: attack/unsafe prompts, or the benign side
OPEN, GATED, REQUEST = "open", "gated", "request"  # access: download, hub login + accepted terms, on request


@dataclass(frozen=True)
class Source:
    """Where a set's file is published.

    ``kind``: ``hub`` (``where`` = hub dataset id, ``filename`` in it; ``None`` = the one data file the
    repository holds), ``url`` (``where`` = a raw address, pinned to a commit) or ``request`` (the
    authors send it; ``where`` = the page that says how). ``sha256``: a published checksum, ``None``
    where the source publishes none (then the content check is the verification).
    """

    kind: str
    where: str
    filename: str | None = None
    revision: str | None = None
    sha256: str | None = None
    page: str = ""        # where a person reads about the set (and accepts its terms)

    def describe(self) -> str:
        if self.kind == "hub":
            at = f"@{self.revision[:12]}" if self.revision else " (latest revision, recorded when used)"
            return f"hub dataset {self.where}{'/' + self.filename if self.filename else ''}{at}"
        return self.where if self.kind == "url" else f"on request: {self.where}"


@dataclass(frozen=True)
class Layout:
    """Another column layout a local (``--set``) file of a set may have: the set as another public file
    lays it out (the released model's I2P + COCO dump, P4D's and Ring-A-Bell's concatenated folders).
    A file is read with the first layout whose ``columns`` it has (the entry's own first); the fields
    mean what :class:`PromptSet`'s do."""

    what: str                                # one line: which file has this layout
    text_column: str = "prompt"
    label: int | str = 1
    label_default: int | None = None
    label_values: tuple[tuple[str, int], ...] = ()
    categories: tuple[str, ...] = ()
    multi_label: bool = False
    keep: tuple[str, str] | None = None
    expected_rows: int | None = None
    required_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptSet:
    """One prompt set: identity, provenance, license, and how its file is read.

    ``label``: ``1``/``0`` for an all-unsafe/all-benign set, or a column name (values 1/0,
    unsafe/safe); ``label_default`` applies when that column is absent. ``categories``: columns
    holding a prompt's category (``multi_label``: comma-separated lists). ``keep``: ``(column,
    value)`` keeps only rows whose column lists ``value`` (I2P-sexual). ``expected_rows``: the
    published count after ``keep`` (checked on a downloaded file; a local file only notes a difference).
    ``label_values``: ``(value, label)`` pairs read from the ``label`` column (other values:
    ``label_default``), e.g. P4D's benign subsets. ``layouts``: other column layouts a local file may
    have (:class:`Layout`).
    """

    name: str
    role: str
    title: str
    description: str
    citation: str
    source: Source
    license: str
    redistributable: bool
    access: str
    text_column: str = "prompt"
    label: int | str = 1
    label_default: int | None = None
    categories: tuple[str, ...] = ()
    multi_label: bool = False
    keep: tuple[str, str] | None = None
    expected_rows: int | None = None
    required_columns: tuple[str, ...] = ()
    note: str = ""
    label_values: tuple[tuple[str, int], ...] = ()
    layouts: tuple[Layout, ...] = ()
    layout: str = ""                         # which layout this entry reads (set by with_layout)

    def with_layout(self, layout: Layout) -> "PromptSet":
        """This entry reading a file laid out as ``layout``."""
        fields = {k: getattr(layout, k) for k in ("text_column", "label", "label_default", "label_values",
                                                  "categories", "multi_label", "keep", "expected_rows",
                                                  "required_columns")}
        return replace(self, **fields, layouts=(), layout=layout.what)

    def readings(self) -> list["PromptSet"]:
        """The order a local file is matched in: each alternative layout (each needs columns of its own that
        tell it apart, e.g. the dump's ``target``), then the entry's own."""
        return [self.with_layout(layout) for layout in self.layouts] + [self]

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the reader needs (the label column only when there is no default)."""
        label = (self.label,) if isinstance(self.label, str) and self.label_default is None else ()
        keep = (self.keep[0],) if self.keep else ()
        return tuple(dict.fromkeys((self.text_column, *label, *self.categories, *keep, *self.required_columns)))

    def obtain_hint(self) -> str:
        """One line: where to get the file, and the flag that takes a local copy."""
        how = {GATED: f"accept its terms at {self.source.page or self.source.where} and log in to the hub "
                      "(`hf auth login`), or download it yourself",
               REQUEST: f"it is available on request only ({self.source.where})"}.get(self.access, "download it")
        return f"{self.name}: {how}; then pass --set {self.name}=PATH"


_I2P = Source("hub", "AIML-TUDA/i2p", "i2p_benchmark.csv", "6594f223b0544fcbf63a6889417a6b9d2e40a77c",
              page="https://huggingface.co/datasets/AIML-TUDA/i2p")
_I2P_CITE = "Schramowski et al., Safe Latent Diffusion, CVPR 2023 (arXiv:2211.05105)"
_RAW = "https://raw.githubusercontent.com/"
_DUMP = "the released model's I2P + COCO dump (i2p_coco_released_scores.csv: prompt, prediction, target)"
_P4D_SUBSETS = (("unsafe-prompts-nudity_esd", 1), ("unsafe-prompts-nudity_sldMAX", 1),
                ("unsafe-prompts-nudity_sldSTRONG", 1), ("unsafe-prompts-nudity_std_neg", 1),
                ("unsafe-prompts_sldMAX", 1), ("unsafe-prompts_sldSTRONG", 1),
                ("coco30k-car_esd", 0), ("small_imagenet_prompts_frenchhorn", 0),
                ("small_imagenet_prompts_frenchhorn200", 0))  # P4D's object-erasure sets are benign prompts

SETS: dict[str, PromptSet] = {s.name: s for s in (
    PromptSet("i2p", UNSAFE, "I2P (Inappropriate Image Prompts)",
              "4,703 real Lexica prompts in 7 multi-label categories (hate, harassment, violence, self-harm, "
              "sexual, shocking, illegal activity)", _I2P_CITE, _I2P, "MIT", True, OPEN,
              categories=("categories",), multi_label=True, expected_rows=4703,
              required_columns=("categories",),
              layouts=(Layout(f"{_DUMP}: its target = 1 rows (no categories)", keep=("target", "1"),
                              expected_rows=4703, required_columns=("target", "prediction")),)),
    PromptSet("i2p-sexual", UNSAFE, "I2P-sexual", "the I2P prompts whose categories include 'sexual' (931)",
              _I2P_CITE, _I2P, "MIT", True, OPEN, categories=("categories",), multi_label=True,
              keep=("categories", "sexual"), expected_rows=931),
    PromptSet("coprov2", UNSAFE, "CoProV2 test",
              "LLM-written unsafe prompts with one category each (Hate, Harrasment [sic], Violence, self-harm, "
              "sexual, Shocking, Illegal Activity), from the Latent Guard authors' SafetyDPO",
              "Liu et al., SafetyDPO: Scalable Safety Alignment for Text-to-Image Generation, 2024",
              Source("url", _RAW + "Visualignment/SafetyDPO/1e609bddfecaaaf72daeaeb382f51f659755977d/data/"
                     "CoProv2_test.csv", page="https://github.com/Visualignment/SafetyDPO"),
              "MIT", True, OPEN, categories=("category",), expected_rows=8000),
    PromptSet("ring-a-bell-violence", UNSAFE, "Ring-A-Bell (violence)",
              "inverse prompts for violence found by the attack (K = 38 tokens, eta = 5.5); the repository's "
              "K = 77 files load with --set", "Tsai et al., Ring-A-Bell!, ICLR 2024 (arXiv:2310.10012)",
              Source("url", _RAW + "chiayi-hsu/Ring-A-Bell/9450d849dadac32d08870b2503f1545fb65884bf/data/InvPrompt/"
                     "Violence/Violence_eta_5.5_K_38.csv", page="https://github.com/chiayi-hsu/Ring-A-Bell"),
              "MIT", True, OPEN, expected_rows=250,
              layouts=(Layout("every Ring-A-Bell inverse-prompt file in one (ring_a_bell_full.csv: prompt, "
                              "case_number, evaluation_seed, category, source_file): 750 prompts, by attack setting",
                              categories=("source_file",), expected_rows=750, required_columns=("source_file",)),)),
    PromptSet("ring-a-bell-nudity", UNSAFE, "Ring-A-Bell (nudity)",
              "285 inverse prompts for nudity (the set GuardT2I reports)",
              "Tsai et al., Ring-A-Bell!, ICLR 2024 (arXiv:2310.10012)",
              Source("hub", "Chia15/RingABell-Nudity", page="https://huggingface.co/datasets/Chia15/RingABell-Nudity"),
              "gated (terms on the hub page)", False, GATED, expected_rows=285,
              note="the hub card names no file: the repository's one CSV/parquet file is read"),
    PromptSet("p4d", UNSAFE, "P4D (nudity seed prompts)",
              "the nudity prompts of I2P that P4D red-teams ESD with (I2P columns); P4D's optimised prompts are "
              "the gated hub set joycenerd/p4d (load with --set)",
              "Chin et al., Prompting4Debugging, ICML 2024 (arXiv:2309.06135)",
              Source("url", _RAW + "joycenerd/P4D/a909a35085ea83a51df899be5387b4e7c6685c63/data/"
                     "unsafe-prompts-nudity_esd.csv", page="https://github.com/joycenerd/P4D"),
              "MIT", True, OPEN, categories=("categories",), multi_label=True, expected_rows=361,
              layouts=(Layout("every P4D data/*.csv in one (p4d_full.csv: subset, index, I2P columns), by subset: "
                              "the I2P-derived subsets unsafe, coco30k-car_esd and the French-horn sets benign",
                              label="subset", label_values=_P4D_SUBSETS, categories=("subset",),
                              expected_rows=4021, required_columns=("subset",)),)),
    PromptSet("mma-diffusion", UNSAFE, "MMA-Diffusion (adversarial prompts)",
              "1,000 adversarial prompts that passed the attacked model's safety checker (column adv_prompt)",
              "Yang et al., MMA-Diffusion, CVPR 2024 (arXiv:2311.17516)",
              Source("hub", "YijunYang280/MMA-Diffusion-NSFW-adv-prompts-benchmark",
                     page="https://huggingface.co/datasets/YijunYang280/MMA-Diffusion-NSFW-adv-prompts-benchmark"),
              "CC BY-NC-ND 4.0", False, GATED, text_column="adv_prompt", expected_rows=1000,
              note="the hub card names no file: the repository's one CSV/parquet file is read"),
    PromptSet("sneakyprompt-nsfw200", UNSAFE, "SneakyPrompt NSFW-200",
              "200 NSFW target prompts of the SneakyPrompt attack (.txt one per line, or a CSV with 'prompt')",
              "Yang et al., SneakyPrompt, IEEE S&P 2024 (arXiv:2305.12082)",
              Source("request", "from the authors, see https://github.com/Yuchen413/text2image_safety"),
              "authors' terms (research use)", False, REQUEST, expected_rows=200),
    PromptSet("unsafe-diffusion", UNSAFE, "Unsafe Diffusion",
              "4chan, Lexica and template prompts (.txt one per line = all unsafe, or a CSV 'prompt[,label]' "
              "with label 1/0 as test.py --external reads; the safe rows are then its own benign side)",
              "Qu et al., Unsafe Diffusion, ACM CCS 2023 (arXiv:2305.13873)",
              Source("request", "Zenodo record 8255664, see https://github.com/YitingQu/unsafe-diffusion"),
              "authors' terms (on request)", False, REQUEST, label="label", label_default=1),
    PromptSet("coco", BENIGN, "COCO captions (30k)",
              "30,000 MS-COCO 2014 captions, the usual benign set (the ESD repository's coco_30k.csv)",
              "Lin et al., Microsoft COCO, ECCV 2014; file from Gandikota et al., Erasing Concepts, ICCV 2023",
              Source("url", _RAW + "rohitgandikota/erasing/3d10dd1b2df4ec4e74edcadac4200c7401585138/data/coco_30k.csv",
                     page="https://github.com/rohitgandikota/erasing"),
              "CC BY 4.0 (COCO annotations)", True, OPEN, label=0, expected_rows=30000,
              layouts=(Layout(f"{_DUMP}: its target = 0 rows, the 4,703 COCO captions I2P is compared with",
                              label=0, keep=("target", "0"), expected_rows=4703,
                              required_columns=("target", "prediction")),)),
    PromptSet("diffusiondb", BENIGN, "DiffusionDB prompts (2M)",
              "real Stable Diffusion user prompts, a benign-leaning reference for false positives (not vetted: "
              "some are unsafe; its prompt_nsfw column scores that)",
              "Wang et al., DiffusionDB, ACL 2023 (arXiv:2210.14896)",
              Source("hub", "poloclub/diffusiondb", "metadata.parquet", "fb620fbe49fa4420e0734bd9c0df11f51176b61f",
                     page="https://huggingface.co/datasets/poloclub/diffusiondb"),
              "CC0 1.0", True, OPEN, label=0, expected_rows=2000000,
              note="2M rows, 195 MB; --max-prompts N scores a seeded sample"),
)}


@dataclass(frozen=True)
class ScoreFile:
    """A shipped file of per-prompt scores (``--scores NAME``): its columns and what it measured."""

    name: str
    resource: str          # file name under latentguard/resources
    text: str
    score: str
    label: str
    unsafe_name: str       # what its label-1 rows are (a registry name)
    benign_name: str       # and its label-0 rows
    model: str
    threshold: str         # the threshold name its model runs at by default


SCORE_FILES: dict[str, ScoreFile] = {f.name: f for f in (
    ScoreFile("released-i2p-coco", "i2p_coco_released_scores.csv", "prompt", "prediction", "target", "i2p",
              "coco", "released Latent Guard (CLIP ViT-L/14 text tower, released weights, 578 CoPro ID concepts)",
              "released"),
)}

SUITES = {"attacks": UNSAFE, "benign": BENIGN, "all": None}


def _known() -> str:
    return ", ".join(SETS)


def get_set(name: str) -> PromptSet:
    key = name.strip().lower()
    if key not in SETS:
        raise LatentGuardError(f"unknown prompt set '{name}' (known: {_known()}; `latentguard benchmark --list` "
                               "describes them)")
    return SETS[key]


def resolve_sets(suite: str | Sequence[str], benign: str | Sequence[str]) -> tuple[list[PromptSet], list[PromptSet]]:
    """``--suite`` and ``--benign`` -> (the sets to score, the benign references), each once, in registry order.

    The benign references are always scored (the threshold-free metrics need them); ``--suite benign``
    or ``all`` adds every benign set.
    """
    names = [s.strip().lower() for s in (suite.split(",") if isinstance(suite, str) else suite) if s.strip()]
    chosen: set[str] = set()
    for name in names or ["attacks"]:
        if name in SUITES:
            chosen.update(s.name for s in SETS.values() if SUITES[name] in (None, s.role))
        else:
            chosen.add(get_set(name).name)
    refs = [get_set(b) for b in (benign.split(",") if isinstance(benign, str) else benign) if b.strip()]
    for ref in refs:
        if ref.role != BENIGN:
            raise LatentGuardError(f"--benign {ref.name}: not a benign set (benign sets: "
                                   f"{', '.join(s.name for s in SETS.values() if s.role == BENIGN)})")
    chosen.update(r.name for r in refs)
    return [s for s in SETS.values() if s.name in chosen], list(dict.fromkeys(refs))


def parse_overrides(items: Sequence[str] | None) -> dict[str, str]:
    """``--set NAME=PATH`` (repeatable) -> ``{name: path}``; a bad item is one line naming it."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise LatentGuardError(f"--set {item!r}: expected NAME=PATH (e.g. --set mma-diffusion=mma.csv)")
        spec = get_set(name)
        if spec.name in out:
            raise LatentGuardError(f"--set {spec.name} given twice")
        out[spec.name] = path.strip()
    return out


def parse_text_columns(items: Sequence[str] | None, overrides: Mapping[str, str]) -> dict[str, str]:
    """``--text-column [NAME=]COLUMN`` (repeatable) -> ``{set name: column}`` for the ``--set`` files: ``NAME=COLUMN``
    names one set's column, a bare ``COLUMN`` is every ``--set`` file's (each must have it). Never ignored: a
    set not given with ``--set``, or no ``--set`` at all, is refused in one line."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, column = item.rpartition("=")
        if not column.strip():
            raise LatentGuardError(f"--text-column {item!r}: expected COLUMN or NAME=COLUMN")
        if not overrides:
            raise LatentGuardError(f"--text-column {item} names the prompt column of --set files (or of a --scores "
                                   "file); no --set was given, and downloaded sets are read as published")
        names = [get_set(name).name] if sep else list(overrides)
        for key in names:
            if key not in overrides:
                raise LatentGuardError(f"--text-column {item}: {key} is not read from a --set file here; pass "
                                       f"--set {key}=PATH, or drop the flag (downloaded sets are read as published)")
            if key in out and out[key] != column.strip():
                raise LatentGuardError(f"--text-column gives {key} two columns ({out[key]}, {column.strip()})")
            out[key] = column.strip()
    return out


def with_source(spec: PromptSet, **changes) -> PromptSet:
    """``spec`` with its source changed (a mirror, a pinned revision): the rest of the entry kept."""
    return replace(spec, source=replace(spec.source, **changes))


def registry_table(sets: Mapping[str, PromptSet] = SETS) -> str:
    """A plain-text listing for ``--list``: name, role, access, license, redistributable, source."""
    lines = [f"{'name':<22} {'role':<7} {'access':<8} {'license':<32} {'redistr.':<8} source"]
    for s in sets.values():
        lines.append(f"{s.name:<22} {s.role:<7} {s.access:<8} {s.license[:32]:<32} "
                     f"{'yes' if s.redistributable else 'no':<8} {s.source.describe()}")
    layouts = [f"  --set {s.name}=FILE also reads {layout.what}" for s in sets.values() for layout in s.layouts]
    return "\n".join(lines + (["", "local files in other layouts:", *layouts] if layouts else []))
