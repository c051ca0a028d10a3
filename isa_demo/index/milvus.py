"""A gallery stored and served by Milvus (``--backend milvus --uri URI``), through ``pymilvus``.

A local file URI (``./gallery.db``) is the embedded ``milvus-lite``; ``http://host:19530`` (or
``https://``, ``tcp://``) a Milvus server or cluster. One collection is one gallery:

    id      INT64 primary key: the gallery id (0..N-1, the same ids as the faiss index of the same images)
    vector  FLOAT_VECTOR(dim): the L2-normalized image features, inner-product metric
    path, sha256, bytes, width, height: the manifest row (path absolute)

and the collection property ``isa_demo.meta`` holds what ``meta.json`` holds for a faiss index:
the model identity (checked on load, as for a faiss index), the dimension, the count, the
Milvus index type, the image folders it was built from, the number of files skipped.

Writes are atomic at the collection level: a build fills ``NAME__building`` and renames it to
``NAME`` only when complete (dropping the previous ``NAME`` when asked to replace it), so a
failed build never leaves a half-filled gallery under the name the app reads.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..common import require_extra
from ..vl.model import describe_identity
from .encode import GalleryError

FEATURE = "the Milvus backend (--backend milvus)"
DEFAULT_COLLECTION = "isa_demo_gallery"
META_KEY = "isa_demo.meta"
FORMAT = "isa-demo-milvus-gallery"
BUILDING = "__building"
SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")
INDEX_TYPES = {"FLAT": {}, "IVF_FLAT": {"nlist": 1024}, "HNSW": {"M": 32, "efConstruction": 200}, "AUTOINDEX": {}}
INSERT_BATCH = 5000
TIMEOUT_S = 10.0


def is_server(uri: str) -> bool:
    return str(uri).startswith(SERVER_SCHEMES)


def connect(uri: str, timeout: float = TIMEOUT_S):
    """A ``MilvusClient`` for ``uri``, or a clear error when nothing answers there."""
    uri = str(uri)
    pymilvus = require_extra("pymilvus", FEATURE)
    if is_server(uri):
        hostport = uri.split("://", 1)[1].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        try:
            port = int(port) if port.isdigit() else 19530
            socket.create_connection((host or hostport, port), timeout=timeout).close()
        except OSError as e:
            raise GalleryError(f"no Milvus server answers at {uri} ({e.strerror or e}); start it, or give a local "
                               f"file (--uri ./gallery.db) for the embedded milvus-lite") from None
    else:
        require_extra("milvus_lite", FEATURE + " with a local file URI")
        parent = Path(uri).expanduser().resolve().parent
        if not parent.is_dir():
            raise GalleryError(f"cannot open Milvus file {uri}: folder {parent} does not exist")
    try:
        return pymilvus.MilvusClient(uri=uri, timeout=timeout)
    except Exception as e:  # MilvusException, ConnectionError, a lite server that would not start
        raise GalleryError(f"cannot connect to Milvus at {uri}: {_msg(e)}") from None


def _msg(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class MilvusGallery:
    """The gallery interface of :class:`isa_demo.index.GalleryIndex` (``search``, ``path_of``,
    ``ids_with_content``, ``image_roots``, ``identity``, ``info``), over a Milvus collection."""

    PATH_CACHE = 100_000

    def __init__(self, client, uri: str, collection: str, meta: dict):
        self.client = client
        self.uri = str(uri)
        self.collection = collection
        self.meta = meta
        self.path = Path(self.uri) if not is_server(self.uri) else Path(".")
        self._paths: dict[int, str] = {}

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self.meta["count"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def identity(self) -> dict:
        return self.meta["model"]

    @property
    def engine(self) -> str:
        return f"Milvus {self.meta['index_type']} inner product ({'server' if is_server(self.uri) else 'milvus-lite'})"

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` like :meth:`GalleryIndex.search` (ids -1 past the end)."""
        from .ann import as_float32

        q = as_float32(queries)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query features have shape {tuple(q.shape)}; Milvus collection {self.collection} "
                             f"holds {self.dim}-d features of {describe_identity(self.identity)}")
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        k = min(int(k), len(self))
        res = self.client.search(self.collection, data=q, limit=k, output_fields=["path"],
                                 search_params={"metric_type": "IP", "params": self.meta.get("search_params", {})})
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for row, hits in enumerate(res):
            for j, h in enumerate(list(hits)[:k]):
                i = int(h["id"])
                scores[row, j], ids[row, j] = h["distance"], i
                if len(self._paths) < self.PATH_CACHE:
                    self._paths[i] = h["entity"]["path"]
        return scores, ids

    def path_of(self, i: int) -> Path:
        i = int(i)
        if i not in self._paths:
            rows = self.client.query(self.collection, filter=f"id == {i}", output_fields=["path"])
            if not rows:
                raise IndexError(f"gallery id {i} is not in Milvus collection {self.collection}")
            self._paths[i] = rows[0]["path"]
        return Path(self._paths[i])

    def ids_with_content(self, sha256: str) -> list[int]:
        if not all(c in "0123456789abcdef" for c in sha256):
            return []
        rows = self.client.query(self.collection, filter=f'sha256 == "{sha256}"', output_fields=["id"])
        return sorted(int(r["id"]) for r in rows)

    def image_roots(self) -> list[str]:
        return [s["images"] for s in self.meta.get("sources", [])]

    def info(self) -> str:
        m = self.meta
        lines = [f"Milvus gallery {self.collection} at {self.uri}",
                 f"  images     {len(self):,}",
                 f"  features   {self.dim}-d, inner_product",
                 f"  index      {m['index_type']} {m.get('index_params') or ''}".rstrip(),
                 f"  model      {describe_identity(m['model'])}",
                 f"  created    {m['created']}",
                 f"  skipped    {m.get('skipped', 0)} file(s)"]
        lines += [f"  source     {s['images']}: +{s['added']} on {s['date']} ({s['skipped']} skipped)"
                  for s in m.get("sources", [])]
        return "\n".join(lines)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, uri: str, collection: str = DEFAULT_COLLECTION, expected_identity: dict | None = None
             ) -> "MilvusGallery":
        """Open a gallery collection; with ``expected_identity`` refuse one made by another model."""
        from .gallery import check_identity

        client = connect(uri)
        if not client.has_collection(collection):
            building = client.has_collection(collection + BUILDING)
            hint = (f"a build into it was interrupted ({collection + BUILDING} is left over; rerun the build with "
                    f"--force)" if building else "no such collection")
            raise GalleryError(f"cannot load Milvus gallery {collection} at {uri}: {hint}; build one with "
                               f"`python -m isa_demo index build --images DIR --backend milvus --uri {uri}"
                               f"{'' if collection == DEFAULT_COLLECTION else ' --collection ' + collection}`")
        props = client.describe_collection(collection).get("properties") or {}
        try:
            meta = json.loads(props[META_KEY])
            assert meta.get("format") == FORMAT
        except (KeyError, ValueError, AssertionError):
            raise GalleryError(f"Milvus collection {collection} at {uri} is not an isa-demo gallery (no "
                               f"{META_KEY} property)") from None
        if expected_identity is not None:
            check_identity(meta["model"], expected_identity, f"{uri} (collection {collection})")
        client.load_collection(collection)
        return cls(client, uri, collection, meta)

    @classmethod
    def create(cls, uri: str, collection: str, identity: dict, records: list[dict], chunks: Callable[[], Iterable],
               *, sources: list[dict] = (), skipped: int = 0, index_type: str = "FLAT", overwrite: bool = False,
               progress: Callable[[int], None] | None = None) -> "MilvusGallery":
        """Store ``records`` (manifest rows with ``file``) and their vectors (``chunks()``: arrays in
        record order) as collection ``collection``; atomic (see the module doc)."""
        pymilvus = require_extra("pymilvus", FEATURE)
        if index_type not in INDEX_TYPES:
            raise GalleryError(f"Milvus index type {index_type!r} is not one of {', '.join(INDEX_TYPES)}")
        client = connect(uri)
        check_target(client, uri, collection, overwrite)
        dim = int(identity.get("embed_dim") or 0)
        tmp = collection + BUILDING
        if client.has_collection(tmp):
            client.drop_collection(tmp)
        schema = pymilvus.MilvusClient.create_schema(auto_id=False)
        D = pymilvus.DataType
        schema.add_field("id", D.INT64, is_primary=True)
        first = True
        start = 0
        try:
            for x in chunks():
                x = np.ascontiguousarray(x, dtype=np.float32)
                x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
                if first:
                    dim = int(x.shape[1])
                    schema.add_field("vector", D.FLOAT_VECTOR, dim=dim)
                    schema.add_field("path", D.VARCHAR, max_length=4096)
                    schema.add_field("sha256", D.VARCHAR, max_length=64)
                    schema.add_field("bytes", D.INT64)
                    schema.add_field("width", D.INT32)
                    schema.add_field("height", D.INT32)
                    ip = client.prepare_index_params()
                    ip.add_index("vector", index_type=index_type, metric_type="IP", params=INDEX_TYPES[index_type])
                    client.create_collection(tmp, schema=schema, index_params=ip)
                    first = False
                for s in range(0, len(x), INSERT_BATCH):
                    rows = []
                    for j, v in enumerate(x[s:s + INSERT_BATCH], start + s):
                        r = records[j]
                        rows.append({"id": j, "vector": v, "path": os.path.abspath(r["file"]), "sha256": r["sha256"],
                                     "bytes": int(r["bytes"]), "width": int(r["width"]), "height": int(r["height"])})
                    client.insert(tmp, rows)
                    if progress:
                        progress(len(rows))
                start += len(x)
            if start != len(records):
                raise GalleryError(f"{start} vectors for {len(records)} records")
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            meta = {"format": FORMAT, "version": 1, "created": now, "model": identity, "dim": dim, "count": start,
                    "index_type": index_type, "index_params": INDEX_TYPES[index_type], "search_params": {},
                    "metric": "inner_product", "sources": list(sources), "skipped": int(skipped)}
            client.flush(tmp)
            client.alter_collection_properties(tmp, properties={META_KEY: json.dumps(meta)})
            if client.has_collection(collection):
                client.drop_collection(collection)
            client.rename_collection(tmp, collection)
        except BaseException:
            try:
                if client.has_collection(tmp):
                    client.drop_collection(tmp)
            except Exception:
                pass
            raise
        client.load_collection(collection)
        return cls(client, uri, collection, meta)


def check_target(client, uri: str, collection: str, overwrite: bool) -> None:
    if client.has_collection(collection) and not overwrite:
        raise GalleryError(f"Milvus at {uri} already holds collection {collection}; pass --force to replace it, or "
                           f"choose another --collection")


def build(images: str | os.PathLike, uri: str, vl, collection: str = DEFAULT_COLLECTION, *, engine: str = "local",
          index_type: str = "FLAT", overwrite: bool = False, batch_size: int = 64, workers: int = 0,
          ray_address: str | None = None, ray_workers: int | None = None, work: str | os.PathLike | None = None,
          progress: Callable | None = None) -> MilvusGallery:
    """Encode every image under ``images`` (in this process, or on Ray with ``engine="ray"``) and
    store the gallery in Milvus; the same files, ids and skips as :meth:`GalleryIndex.build`."""
    from .encode import Progress, encode_files, scan_folder
    from .gallery import _no_images_message, _summarize

    check_target(connect(uri), uri, collection, overwrite)  # before any encoding
    files, skipped = scan_folder(images, exclude=[work] if work else [])
    if not files:
        raise GalleryError(_no_images_message(images, skipped))
    shards = None
    if engine == "ray":
        from .distributed import ImageEncoder, encode_to_shards
        from .shards import collect, kept_vectors

        encoder = vl if isinstance(vl, ImageEncoder) else ImageEncoder(vl)
        identity = encoder.identity
        work = Path(work) if work else Path(f".{collection}.shards")
        shards = encode_to_shards(encoder, files, work, address=ray_address, workers=ray_workers,
                                  batch_size=batch_size, progress=progress, desc=f"encode {images}")
        kept, keep = collect(shards)

        def chunks():
            return kept_vectors(shards, keep)
    else:
        identity = vl.identity()
        kept = encode_files(vl, files, batch_size=batch_size, workers=workers, progress=progress,
                            desc=f"encode {images}")

        def chunks():
            return [kept.features]
    kept.skipped = skipped + kept.skipped
    if not kept.records:
        raise GalleryError(f"none of the {len(files)} image files under {images} could be used: "
                           f"{_summarize(kept.skipped)}")
    source = {"images": os.path.abspath(images), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": len(files),
              "added": len(kept.records), "skipped": len(kept.skipped)}
    bar = Progress(len(kept.records), f"store in Milvus {collection}", progress)
    try:
        g = MilvusGallery.create(uri, collection, identity, kept.records, chunks, sources=[source],
                                 skipped=len(kept.skipped), index_type=index_type, overwrite=overwrite,
                                 progress=bar.update)
    finally:
        bar.close()
    g.skipped = kept.skipped
    if shards is not None:
        shards.remove()
    return g


def from_index(g, uri: str, collection: str = DEFAULT_COLLECTION, *, index_type: str = "FLAT",
               overwrite: bool = False, chunk: int = 100_000, progress: Callable | None = None) -> MilvusGallery:
    """Copy a faiss gallery index (:class:`isa_demo.index.GalleryIndex`, exact storage: Flat,
    HNSW, IVF-Flat) into a Milvus collection: the same ids, records and model identity."""
    from .ann import all_vectors
    from .encode import Progress

    records = [{**r, "file": g.path_of(i)} for i, r in enumerate(g.records)]
    x = all_vectors(g.index)
    sources = [{**s, "images": r} for s, r in zip(g.meta.get("sources", []), g.image_roots())]
    bar = Progress(len(records), f"store in Milvus {collection}", progress)
    try:
        return MilvusGallery.create(uri, collection, g.identity, records,
                                    lambda: (x[s:s + chunk] for s in range(0, len(x), chunk)), sources=sources,
                                    skipped=len(g.skipped), index_type=index_type, overwrite=overwrite,
                                    progress=bar.update)
    finally:
        bar.close()
