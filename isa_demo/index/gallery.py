"""A persistent gallery index: VL image features in faiss, with a manifest and the model identity.

Layout of an index directory::

    meta.json       format, model identity, factory, dim, count, search parameters, recall@10
                    of approximate search against exact search, dates, the folders it was built from
    index.faiss     the faiss index (inner product over L2-normalized features); id i = manifest row i
    manifest.jsonl  one row per vector: path (relative to the index directory), sha256, bytes,
                    width, height
    skipped.json    files that were not indexed, with the reason

``meta.json`` carries ``checksums``: the sha256 of each of the other three files and of its own
content (:func:`meta_digest`). Loading checks them all before reading anything else, so a
damaged index (one flipped byte) is refused with a message instead of answering wrongly.
Indexes written before the checksums load as they are (``info`` says so).

Every write (build, add) writes a complete new directory next to the target and renames it into
place, so an interrupted write leaves either the previous index or none, never a mixed one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np

from ..common import file_sha256
from ..errors import IntegrityError
from ..vl.model import describe_identity, same_model
from . import ann
from .encode import IMAGE_EXTENSIONS, Encoded, GalleryError, Progress, encode_files, scan_folder

FORMAT = "isa-demo-gallery"
VERSION = 1
META, INDEX, MANIFEST, SKIPPED = "meta.json", "index.faiss", "manifest.jsonl", "skipped.json"
CHECKSUMS = "checksums"
IVFDATA = "index.ivfdata"  # the inverted lists of an index built with on_disk=True
TRAIN_SIZE = 262_144  # vectors sampled to train an index that needs training (IVF, PQ), when there are as many
RECALL_QUERIES = 1000


class GalleryIdentityError(GalleryError):
    """The index was built with another VL model than the one asking."""


class GalleryIntegrityError(GalleryError, IntegrityError):
    """A file of the index no longer matches the checksum in its meta.json."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def check_identity(index_identity: dict, query_identity: dict, where: str | os.PathLike) -> None:
    if not same_model(index_identity, query_identity):
        raise GalleryIdentityError(
            f"gallery index {where} was built with {describe_identity(index_identity)}, but the query model is "
            f"{describe_identity(query_identity)}; features of different models are not comparable. Rebuild it "
            f"with `python -m isa_demo index build --images DIR --out {where} --force` and the query model.")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the index is an ordinary directory
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)  # old is an empty directory: rename over it is allowed
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_target(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to replace an index without ``overwrite``, and anything that is not an index at all."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise GalleryError(f"{out} exists and is not a directory; choose another --out")
    if (out / META).exists():
        if not overwrite:
            raise GalleryError(f"{out} already holds a gallery index; pass --force (overwrite=True) to rebuild it, "
                               f"or add new images with `python -m isa_demo index add --index {out} --images DIR`")
        return
    if any(out.iterdir()):
        raise GalleryError(f"{out} is a non-empty directory that is not a gallery index; refusing to replace it")


class GalleryIndex:
    """Gallery features in a faiss index, with one manifest record per vector.

    ``records[i]`` describes vector ``i``: ``path`` (relative to the index directory), ``sha256``,
    ``bytes``, ``width``, ``height``. ``path_of(i)`` gives the image file.
    """

    def __init__(self, path: str | os.PathLike, index: faiss.Index, records: list[dict], meta: dict,
                 skipped: list[dict] | None = None):
        self.path = Path(path)
        self.index = index
        self.records = records
        self.meta = meta
        self.skipped = skipped or []
        self.checksummed = True  # False: loaded from an index written before meta.json had checksums
        ann.set_search_params(index, meta.get("search_params", ""))

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def identity(self) -> dict:
        return self.meta["model"]

    @property
    def factory(self) -> str:
        return self.meta["factory"]

    def path_of(self, i: int) -> Path:
        return Path(os.path.normpath(self.path / self.records[int(i)]["path"]))

    def hashes(self) -> set[str]:
        return {r["sha256"] for r in self.records}

    @property
    def engine(self) -> str:
        return f"faiss {self.factory} inner product"

    def ids_with_content(self, sha256: str) -> list[int]:
        """Gallery ids whose file has this content hash."""
        if getattr(self, "_by_sha", None) is None or self._by_sha[0] != len(self.records):
            table: dict[str, list[int]] = {}
            for i, r in enumerate(self.records):
                if r.get("sha256"):
                    table.setdefault(r["sha256"], []).append(i)
            self._by_sha = (len(self.records), table)
        return self._by_sha[1].get(sha256, [])

    def image_roots(self) -> list[str]:
        """The image folders the index was built from (what a server may serve)."""
        roots = [os.path.normpath(os.path.join(str(self.path), s["images"])) for s in self.meta.get("sources") or []]
        if not roots and len(self):
            parents = {str(self.path_of(i).parent) for i in range(len(self))}
            roots.append(os.path.commonpath(sorted(parents)) if len(parents) > 1 else parents.pop())
        return roots

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` gallery ids for query features ``(B, D)`` or ``(D,)`` (torch or numpy).

        Returns ``(scores, ids)``, both ``(B, min(k, len(self)))`` numpy arrays; scores are cosine
        similarities (queries are L2-normalized here)."""
        q = ann.as_float32(queries)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query features have shape {tuple(q.shape)}; gallery {self.path} holds "
                             f"{self.dim}-d features of {describe_identity(self.identity)}")
        faiss.normalize_L2(q)
        return self.index.search(q, min(int(k), len(self)))

    # ------------------------------------------------------------------ persistence
    def save(self, overwrite: bool = True) -> None:
        """Write the whole index directory atomically (replacing a previous version)."""
        check_target(self.path, overwrite)
        with atomic_dir(self.path) as tmp:
            self._write(tmp)

    def _write(self, tmp: Path) -> None:
        self.meta["count"] = len(self)
        self.meta.pop(CHECKSUMS, None)
        if self.meta.get("on_disk") and not (tmp / self.meta["on_disk"]).exists():
            shutil.copyfile(self.path / self.meta["on_disk"], tmp / self.meta["on_disk"])
        faiss.write_index(self.index, str(tmp / INDEX))
        with open(tmp / MANIFEST, "w") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
        (tmp / SKIPPED).write_text(json.dumps(self.skipped, indent=1))
        sums = {name: file_sha256(tmp / name) for name in (INDEX, MANIFEST, SKIPPED)}
        sums[META] = meta_digest(self.meta)
        (tmp / META).write_text(json.dumps({**self.meta, CHECKSUMS: sums}, indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike, expected_identity: dict | None = None) -> "GalleryIndex":
        """Open an index; with ``expected_identity`` (``vl.identity()``) refuse one made by another model."""
        path = Path(path)
        meta_path = path / META
        if not meta_path.exists():
            hint = "it is not a gallery index" if path.exists() else "no such directory"
            done = [p for p in path.parent.glob(f".{path.name}.*.tmp") if (p / META).exists()] if path.name else []
            if not path.exists() and done:  # killed between the two renames of atomic_dir
                hint = f"a write was interrupted; its complete new version is {done[0]} (rename it to {path})"
            raise GalleryError(f"cannot load gallery index {path}: {hint}; build one with "
                               f"`python -m isa_demo index build --images DIR --out {path}`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise GalleryError(f"gallery index {path} is damaged: {META} cannot be read ({e}); rebuild it with "
                               f"`python -m isa_demo index build --images DIR --out {path} --force`") from None
        sums = meta.pop(CHECKSUMS, None)
        if sums is not None:
            _verify(path, meta, sums)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise GalleryError(f"{path} is not a version-{VERSION} {FORMAT} index "
                               f"(format={meta.get('format')!r}, version={meta.get('version')!r})")
        if expected_identity is not None:
            check_identity(meta["model"], expected_identity, path)
        try:
            index = faiss.read_index(str(path / INDEX), faiss.IO_FLAG_ONDISK_SAME_DIR if meta.get("on_disk") else 0)
            with open(path / MANIFEST, encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
            skipped = json.loads((path / SKIPPED).read_text()) if (path / SKIPPED).exists() else []
        except (RuntimeError, ValueError, OSError) as e:  # faiss, JSON, a missing file
            raise GalleryError(f"gallery index {path} is damaged ({str(e).splitlines()[0][:200]}); rebuild it with "
                               f"`python -m isa_demo index build --images DIR --out {path} --force`") from None
        if not (index.ntotal == len(records) == meta["count"]) or index.d != meta["dim"]:
            raise GalleryError(f"gallery index {path} is inconsistent: faiss holds {index.ntotal} x {index.d}, the "
                               f"manifest {len(records)} rows, meta.json says {meta['count']} x {meta['dim']}; "
                               f"rebuild it")
        g = cls(path, index, records, meta, skipped)
        g.checksummed = sums is not None
        return g

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_features(cls, path: str | os.PathLike, features: np.ndarray, records: list[dict], identity: dict,
                      factory: str = ann.EXACT, search_params: str | None = None, target_recall: float = 0.95,
                      skipped: list[dict] | None = None, extra_meta: dict | None = None) -> "GalleryIndex":
        """An (unsaved) index of ``features`` ``(N, D)``; ``records[i]["file"]`` (or ``["path"]``,
        relative to ``path``) names the image of row i. Approximate factories get their search
        parameter tuned to ``target_recall`` unless ``search_params`` is given."""
        path = Path(path)
        x = ann.as_float32(features)
        if x.ndim != 2 or len(x) != len(records) or len(x) == 0:
            raise GalleryError(f"need (N, D) features for N >= 1 records; got {x.shape} for {len(records)}")
        faiss.normalize_L2(x)
        try:
            index = ann.new_index(x.shape[1], factory)
            ann.train_and_add(index, x, factory)
        except ValueError as e:
            raise GalleryError(str(e)) from None
        if identity.get("embed_dim") not in (None, x.shape[1]):
            raise GalleryError(f"features are {x.shape[1]}-d but the model identity says {identity['embed_dim']}")
        now = _now()
        meta = {"format": FORMAT, "version": VERSION, "created": now, "updated": now, "model": identity,
                "factory": factory, "exact": ann.is_exact(factory), "metric": "inner_product", "dim": int(x.shape[1]),
                "count": len(x), "search_params": "", "recall_at_10": 1.0 if ann.is_exact(factory) else None,
                "sources": [], **(extra_meta or {})}
        g = cls(path, index, [_record(r, path) for r in records], meta,
                [_skip(s, path) for s in (skipped or [])])
        if not ann.is_exact(factory):
            g._measure_recall(x, search_params, target_recall)
        return g

    @classmethod
    def build(cls, images: str | os.PathLike, out: str | os.PathLike, vl, factory: str = ann.EXACT, *,
              batch_size: int = 64, workers: int = 0, search_params: str | None = None, target_recall: float = 0.95,
              overwrite: bool = False, progress: Callable | None = None) -> "GalleryIndex":
        """Encode every image under ``images`` with ``vl`` and write the index to ``out``."""
        out = Path(out)
        check_target(out, overwrite)
        try:
            ann.new_index(vl.embed_dim, factory)  # a bad factory string fails before any encoding
        except ValueError as e:
            raise GalleryError(str(e)) from None
        files, skipped = scan_folder(images, exclude=[out])
        if not files:
            raise GalleryError(_no_images_message(images, skipped))
        enc = encode_files(vl, files, batch_size=batch_size, workers=workers, progress=progress,
                           desc=f"encode {images}")
        enc.skipped = skipped + enc.skipped
        if not enc.records:
            raise GalleryError(f"none of the {len(files)} image files under {images} could be used: "
                               f"{_summarize(enc.skipped)}")
        g = cls.from_features(out, enc.features, enc.records, vl.identity(), factory, search_params,
                              target_recall, enc.skipped)
        g.meta["sources"].append(_source(images, out, enc, len(files)))
        g.save(overwrite=overwrite)
        return g

    @classmethod
    def build_ray(cls, images: str | os.PathLike, out: str | os.PathLike, vl, factory: str = ann.EXACT, *,
                  address: str | None = None, workers: int | None = None, batch_size: int = 64,
                  work: str | os.PathLike | None = None, shard_files: int = 4096, on_disk: bool = False,
                  train_size: int = TRAIN_SIZE, search_params: str | None = None, target_recall: float = 0.95,
                  overwrite: bool = False, progress: Callable | None = None) -> "GalleryIndex":
        """:meth:`build` with the encoding on Ray (:mod:`isa_demo.index.distributed`): embedding
        shards under ``work`` (default ``.OUT.shards`` next to ``out``; kept when the run fails, so
        a rerun resumes), then the index filled shard by shard (:meth:`from_shards`). ``vl``: a
        VL model or an :class:`~isa_demo.index.distributed.ImageEncoder`."""
        from .distributed import ImageEncoder, encode_to_shards

        out = Path(out)
        check_target(out, overwrite)
        encoder = vl if isinstance(vl, ImageEncoder) else ImageEncoder(vl)
        try:
            ann.new_index(encoder.embed_dim, factory)
        except ValueError as e:
            raise GalleryError(str(e)) from None
        work = Path(work) if work is not None else out.parent / f".{out.name}.shards"
        files, skipped = scan_folder(images, exclude=[out, work])
        if not files:
            raise GalleryError(_no_images_message(images, skipped))
        shards = encode_to_shards(encoder, files, work, address=address, workers=workers, batch_size=batch_size,
                                  shard_files=shard_files, progress=progress, desc=f"encode {images}")
        g = cls.from_shards(out, shards, encoder.identity, factory, images=images, skipped=skipped,
                            on_disk=on_disk, train_size=train_size, search_params=search_params,
                            target_recall=target_recall, overwrite=overwrite, progress=progress)
        shards.remove()
        return g

    @classmethod
    def from_shards(cls, out: str | os.PathLike, shards, identity: dict, factory: str = ann.EXACT, *,
                    images: str | os.PathLike | None = None, skipped: list[dict] | None = None, on_disk: bool = False,
                    train_size: int = TRAIN_SIZE, search_params: str | None = None, target_recall: float = 0.95,
                    overwrite: bool = False, seed: int = 0, progress: Callable | None = None) -> "GalleryIndex":
        """Write the index of embedding shards (:class:`isa_demo.index.shards.ShardSet`) to ``out``,
        holding one shard of vectors in memory at a time: an index that needs training is trained
        on ``train_size`` vectors sampled from all shards, then filled shard by shard; with
        ``on_disk`` its inverted lists go to ``index.ivfdata`` beside it (faiss
        ``OnDiskInvertedLists``). Recall@10 of an approximate index is measured against exact
        search (computed shard by shard) on 1,000 sampled vectors, as in :meth:`from_features`."""
        from .shards import collect, kept_vectors

        out = Path(out)
        check_target(out, overwrite)
        kept, keep = collect(shards)
        kept.skipped = list(skipped or []) + kept.skipped
        n = len(kept.records)
        if not n:
            raise GalleryError(f"none of the {len(shards.files)} image files under {images} could be used: "
                               f"{_summarize(kept.skipped)}")
        dim = int(shards.read_vectors(0).shape[1]) if len(shards) else int(identity.get("embed_dim") or 0)
        exact = ann.is_exact(factory)

        def chunks():
            for x in kept_vectors(shards, keep):
                x = ann.as_float32(x)
                faiss.normalize_L2(x)
                yield x

        train, q = ann.sample_rows(chunks(), n, [0 if exact else train_size, 0 if exact else RECALL_QUERIES], seed)
        now = _now()
        meta = {"format": FORMAT, "version": VERSION, "created": now, "updated": now, "model": identity,
                "factory": factory, "exact": exact, "metric": "inner_product", "dim": dim, "count": n,
                "search_params": "", "recall_at_10": 1.0 if exact else None, "sources": []}
        if on_disk:
            meta["on_disk"] = IVFDATA
        bar = Progress(n, f"fill {factory} index", progress)
        with atomic_dir(out) as tmp:
            try:
                index = ann.build_from_chunks(dim, factory, chunks, train if len(train) else None,
                                              on_disk=tmp / IVFDATA if on_disk else None, progress=bar.update)
            except ValueError as e:
                raise GalleryError(str(e)) from None
            finally:
                bar.close()
            g = cls(out, index, [_record(r, out) for r in kept.records], meta, [_skip(s, out) for s in kept.skipped])
            if not exact:
                _, truth = ann.chunked_knn(q, chunks(), min(10, n))
                g.meta.update(ann.recall_against(index, q, truth, search_params, target_recall))
            if images is not None:
                g.meta["sources"].append(_source(images, out, kept, len(shards.files)))
            g._write(tmp)
        if on_disk:  # the lists were written in the temporary folder: reopen them where they are now
            g.index = faiss.read_index(str(out / INDEX), faiss.IO_FLAG_ONDISK_SAME_DIR)
            ann.set_search_params(g.index, g.meta["search_params"])
        return g

    def add(self, images: str | os.PathLike, vl, *, batch_size: int = 64, workers: int = 0,
            progress: Callable | None = None) -> Encoded:
        """Encode the images under ``images`` that are not indexed yet (by content hash), add them
        and rewrite the index atomically. Returns what was encoded (``.records``, ``.skipped``,
        ``.known``: files already indexed)."""
        if self.meta.get("on_disk"):
            raise GalleryError(f"{self.path} keeps its inverted lists on disk ({self.meta['on_disk']}), which `index "
                               f"add` does not extend; rebuild it with `index build --force` over all the images")
        check_identity(self.identity, vl.identity(), self.path)
        files, skipped = scan_folder(images, exclude=[self.path])
        if not files:
            raise GalleryError(_no_images_message(images, skipped))
        enc = encode_files(vl, files, known_hashes=self.hashes(), batch_size=batch_size, workers=workers,
                           progress=progress, desc=f"encode {images}")
        enc.skipped = skipped + enc.skipped
        if enc.records:
            x = ann.as_float32(enc.features)
            faiss.normalize_L2(x)
            self.index.add(x)
            self.records += [_record(r, self.path) for r in enc.records]
            if not self.meta["exact"]:
                self._measure_recall(ann.all_vectors(self.index), self.meta["search_params"], 0.0)
        self.skipped += [_skip(s, self.path) for s in enc.skipped]
        self.meta["updated"] = _now()
        self.meta["sources"].append(_source(images, self.path, enc, len(files)))
        self.save()
        return enc

    def _measure_recall(self, x: np.ndarray, search_params: str | None, target: float) -> None:
        r = ann.sample_recall(self.index, x, search_params, target)
        self.meta.update(r)

    # ------------------------------------------------------------------ description
    def info(self) -> str:
        m = self.meta
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file()) if self.path.exists() else 0
        kind = "exact search" if m["exact"] else "approximate search"
        lines = [f"gallery index {self.path}",
                 f"  images     {len(self):,} ({size / 1e6:.1f} MB on disk)",
                 f"  features   {self.dim}-d, {m['metric']}",
                 f"  factory    {m['factory']} ({kind})"]
        if not m["exact"]:
            lines.append(f"  recall@10  {m['recall_at_10']:.4f} vs exact search ({m['search_params'] or 'defaults'}, "
                         f"{m['recall_queries']} gallery vectors as queries)")
        lines += [f"  model      {describe_identity(m['model'])}",
                  f"  created    {m['created']}",
                  f"  updated    {m['updated']}",
                  f"  skipped    {len(self.skipped)} file(s){' (see ' + SKIPPED + ')' if self.skipped else ''}",
                  "  checksums  " + ("verified on load" if self.checksummed else
                                     "none (written before checksums; add them by rebuilding it)")]
        for s in m.get("sources", []):
            lines.append(f"  source     {s['images']}: +{s['added']} on {s['date']} "
                         f"({s['skipped']} skipped, {s.get('already_indexed', 0)} already indexed)")
        return "\n".join(lines)


# ---------------------------------------------------------------------- integrity
def meta_digest(meta: dict) -> str:
    """sha256 of meta.json's content (without its checksums), independent of its layout."""
    import hashlib

    body = {k: v for k, v in meta.items() if k != CHECKSUMS}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _verify(path: Path, meta: dict, sums: dict) -> None:
    """Refuse an index whose files are not the ones its meta.json was written with."""
    rebuild = f"rebuild it with `python -m isa_demo index build --images DIR --out {path} --force`"
    if not isinstance(sums, dict) or sums.get(META) != meta_digest(meta):
        raise GalleryIntegrityError(f"gallery index {path} is damaged: {META} does not match its own checksum; "
                                    f"it was not used; {rebuild}")
    for name in (INDEX, MANIFEST, SKIPPED):
        if not (path / name).exists():
            raise GalleryError(f"gallery index {path} is incomplete: {name} is missing; {rebuild}")
        if file_sha256(path / name) != sums.get(name):
            raise GalleryIntegrityError(f"gallery index {path} is damaged: {name} does not match the checksum in "
                                        f"{META}; it was not used; {rebuild}")


# ---------------------------------------------------------------------- helpers
def _rel(file: str | os.PathLike, root: Path) -> str:
    try:
        return Path(os.path.relpath(os.path.abspath(file), os.path.abspath(root))).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(os.path.abspath(file)).as_posix()


def _record(r: dict, root: Path) -> dict:
    out = {k: v for k, v in r.items() if k != "file"}
    if "file" in r:
        out["path"] = _rel(r["file"], root)
    return out


def _skip(s: dict, root: Path) -> dict:
    return {"path": _rel(s["path"], root) if isinstance(s["path"], Path) else s["path"], "reason": s["reason"],
            "date": s.get("date", _now())}


def _source(images, root: Path, enc, n_files: int) -> dict:
    return {"images": _rel(images, root), "date": _now(), "files": n_files, "added": len(enc.records),
            "skipped": len(enc.skipped), "already_indexed": enc.known}


def _summarize(skipped: list[dict], n: int = 5) -> str:
    parts = [f"{Path(s['path']).name}: {s['reason']}" for s in skipped[:n]]
    more = f"; and {len(skipped) - n} more" if len(skipped) > n else ""
    return "; ".join(parts) + more


def _no_images_message(images, skipped: list[dict]) -> str:
    if not skipped:
        return f"no images found in {images}: the folder is empty (indexed types: {' '.join(IMAGE_EXTENSIONS)})"
    return (f"no images found in {images}: {len(skipped)} file(s), none of an indexed type "
            f"({' '.join(IMAGE_EXTENSIONS)}): {_summarize(skipped)}")
