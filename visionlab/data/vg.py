"""Visual Genome (Krishna et al. 2017): a read-only reader of its objects and relationships.

Layout: ``objects.json`` (``[{"image_id", "objects": [{"object_id", "x", "y", "w", "h",
"names": [...]}]}]``), ``relationships.json`` (``[{"image_id", "relationships":
[{"relationship_id", "predicate", "subject": {...}, "object": {...}}]}]``, subject and object
shaped as the objects, with ``names`` or ``name``), optional ``image_data.json``
(``[{"image_id", "width", "height", "url"}]``; ``id`` is read where ``image_id`` is absent, as
the first releases spelt it). Image ``ID`` is ``ID.jpg`` in ``VG_100K/``, ``VG_100K_2/`` or
``images/`` (the first that holds it: the download spreads the images over the first two).
Sizes come from ``image_data.json``, else from each image's header.

Objects: those of ``objects.json``, plus any subject or object of a relationship that
``objects.json`` lacks (added from the relationship's own entry). A box ``x, y, w, h`` is
``(x, y, x + w, y + h)``. The class is the first name, the predicate the predicate's text,
each lower-cased with its whitespace stripped and runs of it made one space.

Vocabulary: ``classes.txt`` and ``predicates.txt`` (one name per line, normalised the same
way), when present, are the classes (label k <-> line k) and predicates, and nothing else is
kept: objects of other classes are skipped, relationships with them or with other predicates
dropped, each kind with one warning that counts them. Without the files every name seen is
kept, sorted. Objects without a name, relationships without a predicate and relationships
of an object with itself (the release has a few) are dropped the same way.

Visual Genome has no official split, so the dataset is one split, ``all`` (``train`` reads
all of it too); the splits papers use (e.g. Xu et al. 2017's) are lists of their own.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from visionlab.data.coco import read_json
from visionlab.data.imageio import image_size
from visionlab.data.problems import Problems
from visionlab.data.records import ObjectsBuilder, ParsedSplit
from visionlab.errors import DataError

IMAGE_FOLDERS = ("VG_100K", "VG_100K_2", "images")


def normalise(name: str) -> str:
    """``"  Wearing A "`` -> ``"wearing a"``: lower case, whitespace stripped and single."""
    return " ".join(name.lower().split())


# ----------------------------------------------------------------------------- layout


def looks_like(path: Path) -> bool:
    """A folder with ``objects.json`` and ``relationships.json``."""
    return path.is_dir() and all(
        (path / name).is_file() for name in ("objects.json", "relationships.json")
    )


def find_splits(path: Path, *, task: str = "detection") -> list[str]:
    """None: Visual Genome is one split, ``all``."""
    return []


# ----------------------------------------------------------------------------- reading


class _Dropped:
    """Counts what the vocabulary (or a missing name) leaves out: one warning per kind."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.examples: dict[tuple[str, str], set[str]] = {}

    def add(self, path: Path, message: str, example: str = "") -> None:
        self.counts[(str(path), message)] += 1
        if example:
            self.examples.setdefault((str(path), message), set()).add(example)

    def report(self, problems: Problems) -> None:
        for (path, message), n in self.counts.items():
            names = sorted(self.examples.get((path, message), ()))
            shown = f" ({', '.join(map(repr, names[:5]))}{', ...' if len(names) > 5 else ''})"
            problems.warn(path, f"{n} {message}" + (shown if names else ""), kind=message)


# object id -> (its entry, ref, the file it is from), per image id
_Entries = dict[int, dict[int, tuple[dict[str, Any], str, Path]]]
# (subject id, predicate text, object id, ref), per image id
_Triples = dict[int, list[tuple[int, str, int, str]]]


def read_split(
    path: Path, split: str | None, *, task: str = "detection", problems: Problems
) -> ParsedSplit:
    """Every image with objects or relationships (or listed in ``image_data.json``)."""
    entries, triples = _gather(path, problems)
    sizes, sizes_file = _sizes(path / "image_data.json", problems)
    classes, class_file = _vocabulary(
        path / "classes.txt",
        (_name(e) for found in entries.values() for e, _, _ in found.values()),
    )
    predicates, predicate_file = _vocabulary(
        path / "predicates.txt", (normalise(t[1]) for ts in triples.values() for t in ts)
    )
    class_label = {name: k + 1 for k, name in enumerate(classes)}
    predicate_index = {name: k for k, name in enumerate(predicates)}
    rels_file, dropped = path / "relationships.json", _Dropped()

    records = []
    for image_id in sorted(set(entries) | set(sizes)):
        image_path = _image_path(path, image_id)
        if image_path is None:
            folders = ", ".join(f"{f}/" for f in IMAGE_FOLDERS)
            problems.error(
                path,
                f"image file {image_id}.jpg not found in {folders}",
                field=f"image_id={image_id}",
            )
            continue
        if image_id in sizes:
            height, width = sizes[image_id]
        else:
            try:
                height, width = image_size(image_path, ref=f"image_id={image_id}")
            except DataError as err:
                problems.add(err)
                continue
        builder = ObjectsBuilder(problems, rels_file, height, width)
        left_out = set()
        for key, (entry, ref, source) in entries.get(image_id, {}).items():
            name = _name(entry)
            if name not in class_label:
                left_out.add(key)
                if not name:
                    dropped.add(source, "objects without a name skipped")
                else:
                    message = f"objects of classes not in {class_file.name} skipped"
                    dropped.add(class_file, message, name)
                continue
            box = _box(entry)
            if box is None:
                problems.error(source, "an object needs numbers x, y, w, h", field=ref)
                builder.skipped[key] = True
                continue
            builder.add(box, class_label[name], ref=ref, key=key, path=source)
        kept = []
        for subject, text, obj, ref in triples.get(image_id, []):
            predicate = normalise(text)
            if predicate not in predicate_index:
                if not predicate:
                    dropped.add(rels_file, "relationships without a predicate dropped")
                else:
                    message = f"relationships with predicates not in {predicate_file.name} dropped"
                    dropped.add(predicate_file, message, predicate)
            elif subject in left_out or obj in left_out:
                dropped.add(rels_file, "relationships with a skipped subject or object dropped")
            elif subject == obj:  # the release has some: a counted warning, not a stop
                dropped.add(rels_file, "relationships of an object with itself dropped")
            else:
                kept.append((subject, predicate, obj, ref))
        source = sizes_file if image_id in sizes else path / "objects.json"
        record = builder.record(
            image_id=image_id, file_name=image_path.name, path=image_path, source=str(source)
        )
        record.relations = builder.relations(kept, predicate_index)
        records.append(record)
    dropped.report(problems)
    return ParsedSplit(records, classes, predicates)


def _gather(path: Path, problems: Problems) -> tuple[_Entries, _Triples]:
    """Each image's objects (``objects.json``'s, then the relationships' that it lacks)
    and relationships, as found in the files."""
    objects_file, rels_file = path / "objects.json", path / "relationships.json"
    entries: _Entries = {}
    for image_id, items in _per_image(objects_file, "objects", problems).items():
        found = entries.setdefault(image_id, {})
        for j, obj in enumerate(items):
            ref = f"image_id={image_id} object_id={_get(obj, 'object_id', 'id', f'#{j}')}"
            key = _object_id(obj)
            if key is None:
                problems.error(objects_file, "an object needs an object_id", field=ref)
            elif key in found:
                problems.error(objects_file, f"duplicate object_id {key}", field=ref)
            else:
                found[key] = (obj, ref, objects_file)
    triples: _Triples = {}
    for image_id, items in _per_image(rels_file, "relationships", problems).items():
        found = entries.setdefault(image_id, {})
        for j, rel in enumerate(items):
            rid = _get(rel, "relationship_id", "id", None)
            ref = f"image_id={image_id} " + (f"[{j}]" if rid is None else f"relationship_id={rid}")
            rel = rel if isinstance(rel, dict) else {}
            ends = [rel.get("subject"), rel.get("object")]
            subject, obj = (_object_id(end) for end in ends)
            if subject is None or obj is None or not isinstance(rel.get("predicate"), str):
                problems.error(
                    rels_file,
                    "a relationship needs a predicate (text), and a subject and an object "
                    "each with an object_id",
                    field=ref,
                )
                continue
            for role, end, key in zip(("subject", "object"), ends, (subject, obj)):
                found.setdefault(key, (end, f"{ref} {role}", rels_file))
            triples.setdefault(image_id, []).append((subject, rel["predicate"], obj, ref))
    return entries, triples


def _per_image(path: Path, key: str, problems: Problems) -> dict[int, list[Any]]:
    """``image_id -> list`` from a file of ``[{"image_id", key: [...]}]``."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(path, f'expected a JSON list of {{"image_id", "{key}": [...]}}')
    out: dict[int, list[Any]] = {}
    for i, item in enumerate(data):
        image_id = _image_id(item)
        items = item.get(key) if isinstance(item, dict) else None
        if image_id is None or not isinstance(items, list):
            problems.error(path, f"needs an integer image_id and a list {key!r}", field=f"[{i}]")
        elif image_id in out:
            problems.error(path, f"duplicate image_id {image_id}", field=f"[{i}]")
        else:
            out[image_id] = items
    return out


def _sizes(path: Path, problems: Problems) -> tuple[dict[int, tuple[int, int]], Path]:
    """``image_id -> (H, W)`` from ``image_data.json`` (empty without the file)."""
    if not path.is_file():
        return {}, path
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(path, 'expected a JSON list of {"image_id", "width", "height"}')
    sizes = {}
    for i, item in enumerate(data):
        image_id = _image_id(item)
        try:
            height, width = int(item["height"]), int(item["width"])
            if image_id is None or height <= 0 or width <= 0:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            problems.error(
                path, "needs an integer image_id and a positive width and height", field=f"[{i}]"
            )
            continue
        sizes[image_id] = (height, width)
    return sizes, path


def _vocabulary(path: Path, seen: Any) -> tuple[list[str], Path]:
    """The names in ``path`` (one a line, normalised, first spelling kept) or the sorted
    names ``seen``."""
    if not path.is_file():
        return sorted({name for name in seen if name}), path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read the file ({err})") from None
    return list(dict.fromkeys(name for name in map(normalise, lines) if name)), path


def _get(entry: Any, key: str, old_key: str, default: Any) -> Any:
    if not isinstance(entry, dict):
        return default
    return entry.get(key, entry.get(old_key, default))


def _image_id(item: Any) -> int | None:
    value = _get(item, "image_id", "id", None)
    return value if type(value) is int else None


def _object_id(entry: Any) -> int | None:
    value = _get(entry, "object_id", "id", None)
    return value if type(value) is int else None


def _name(entry: dict[str, Any]) -> str:
    """The normalised first name ('' when there is none)."""
    names = entry.get("names")
    name = names[0] if isinstance(names, list) and names else entry.get("name")
    return normalise(name) if isinstance(name, str) else ""


def _box(entry: dict[str, Any]) -> list[float] | None:
    try:
        x, y, w, h = (float(entry[k]) for k in ("x", "y", "w", "h"))
    except (KeyError, TypeError, ValueError):
        return None
    return [x, y, x + w, y + h]


def _image_path(root: Path, image_id: int) -> Path | None:
    for folder in IMAGE_FOLDERS:
        candidate = root / folder / f"{image_id}.jpg"
        if candidate.is_file():
            return candidate
    return None
