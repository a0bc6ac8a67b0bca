"""The dataset export: verified (source, target) pairs with provenance, as JSONL, CSV, Parquet or a
Hugging Face dataset.

One record per verified pool item (its latest annotation in force), read from the ledger or straight
from a Label Studio project. Output is deterministic: records are sorted, columns fixed, no export
timestamp, so a re-export of the same ledger is byte-identical. Annotators appear only as salted-hash
ids; no secret is ever part of a record.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rapidfuzz.distance import Levenshtein

from loop.errors import ExportError
from loop.ledger import Ledger
from loop.status import anonymise
from loop.team import votes_text
from loop.vocab import VERDICTS

FORMATS = ("jsonl", "csv", "parquet", "hf")
SPLIT_NAMES = ("train", "dev", "test")
# column -> Arrow type name (the fixed schema of every format)
FIELDS: dict[str, str] = {
    "id": "string", "source": "string", "target": "string", "draft": "string", "verdict": "string",
    "edit_distance": "int64", "round": "int64", "cluster": "int64", "subgroup": "string",
    "subgroups": "string_list", "references": "string_list",
    "teacher_model": "string", "template": "string", "learner_version": "string", "informativeness": "float64",
    "annotator": "string", "lead_time_s": "float64", "created_at": "string", "updated_at": "string",
    "skips": "int64", "annotations": "int64", "votes": "string", "decided_by": "string",
}




def edit_distance(draft: str | None, final: str | None) -> int | None:
    """Character-level Levenshtein distance from the teacher's draft to the final target (None for a reject)."""
    if draft is None or final is None:
        return None
    return Levenshtein.distance(draft, final)


def split_teacher(model_version: str | None) -> tuple[str | None, str | None]:
    """'teacher-name|template@version' (a round's model_version) -> (teacher model, template@version)."""
    if not model_version:
        return None, None
    model, _, template = model_version.partition("|")
    return model or None, template or None


def _strings(values: Any) -> list[str]:
    """A list of strings from a task's data (a list, one value, or nothing)."""
    if values is None:
        return []
    return [str(v) for v in values] if isinstance(values, list | tuple) else [str(values)]


def _record(*, pool_id: int | None, round_: int | None, source: str, target: str | None, draft: str | None,
            verdict: str, cluster: Any, subgroup: Any, teacher: str | None, learner_version: str | None,
            score: Any, annotator: str | None, lead_time: Any, created_at: Any, updated_at: Any,
            task_id: int | None = None, subgroups: Any = None, references: Any = None,
            skips: int | None = None, annotations: int | None = None, votes: str | None = None,
            decided_by: str | None = None) -> dict:
    model, template = split_teacher(teacher)
    target = None if verdict == "reject" else target
    subgroups = _strings(subgroups) or _strings(subgroup)
    return {
        "id": f"r{round_}-p{pool_id}" if pool_id is not None else f"task-{task_id}",
        "source": source, "target": target, "draft": draft, "verdict": verdict,
        "edit_distance": edit_distance(draft, target), "round": round_,
        "cluster": int(cluster) if cluster is not None else None,
        "subgroup": None if subgroup is None else str(subgroup),
        "subgroups": subgroups, "references": _strings(references),
        "teacher_model": model, "template": template, "learner_version": learner_version,
        "informativeness": float(score) if score is not None else None, "annotator": annotator,
        "lead_time_s": float(lead_time) if lead_time is not None else None,
        "created_at": created_at, "updated_at": updated_at,
        "skips": skips,  # people who skipped the item's task: a skip is information too
        "annotations": annotations, "votes": votes,  # how many verified it, and how they voted
        "decided_by": decided_by,  # single (one person per task), majority, adjudicator, or latest (--from-studio)
    }


def _check_filters(rounds: Iterable[int] | None, verdicts: Iterable[str] | None) -> tuple:
    verdicts = None if verdicts is None else list(verdicts)
    bad = [v for v in verdicts or [] if v not in VERDICTS]
    if bad:
        raise ExportError(f"verdict filter: unknown verdict(s) {bad}; expected some of {list(VERDICTS)}")
    return (None if rounds is None else list(rounds)), verdicts


def from_ledger(ledger: Ledger, *, rounds: Iterable[int] | None = None,
                verdicts: Iterable[str] | None = None) -> list[dict]:
    """Export records from the ledger, optionally only some rounds and verdicts, in (round, pool id) order."""
    rounds, verdicts = _check_filters(rounds, verdicts)
    salt = ledger.annotator_salt()
    quota = ledger.team_rule()[0]
    decisions = ledger.decisions()
    rows = ledger.export_rows(rounds)
    ids = [r["pool_id"] for r in rows]
    references, groups = ledger.references(ids), ledger.memberships(ids)
    out = []
    for r in rows:
        item, decision = decisions[(r["round_id"], r["pool_id"])]
        if decision.status != "decided" or (verdicts is not None and decision.verdict not in verdicts):
            continue  # an item still open or awaiting adjudication has no verdict yet
        by = "adjudicator" if decision.adjudicated else "single" if quota == 1 else "majority"
        out.append(_record(
            pool_id=r["pool_id"], round_=r["round_id"], source=r["source"], target=decision.target,
            draft=r["draft"] if r["draft"] is not None else r["shown_draft"], verdict=decision.verdict,
            cluster=r["cluster"], subgroup=r["subgroup"], teacher=r["teacher"], learner_version=r["learner_version"],
            score=r["score"], annotator=anonymise(r["annotator"], salt), lead_time=r["lead_time"],
            created_at=r["created_at"], updated_at=r["updated_at"], skips=r["skips"], annotations=decision.voters,
            votes=votes_text(decision.votes), decided_by=by, subgroups=groups.get(r["pool_id"]),
            references=references.get(r["pool_id"])))
    return out


def from_studio(studio: Any, project_id: int, *, salt: str, rounds: Iterable[int] | None = None,
                verdicts: Iterable[str] | None = None) -> list[dict]:
    """Export records straight from a Label Studio project (a `loop.studio.Studio`), for teams that
    verified without the scheduler: the latest annotation of each task; round and cluster come from the
    task's data, teacher and informativeness from its prediction."""
    from loop.rounds import parse_task_key

    rounds, verdicts = _check_filters(rounds, verdicts)
    latest: dict[int, dict] = {}
    votes: dict[int, dict[str, int]] = {}
    for row in studio.export_annotations(project_id):
        latest[row["annotation"].task_id] = row  # rows come in annotation id order: the last one wins
        counted = votes.setdefault(row["annotation"].task_id, {})
        counted[row["annotation"].verdict] = counted.get(row["annotation"].verdict, 0) + 1
    out = []
    for row in latest.values():
        ann, data = row["annotation"], row["data"]
        key = parse_task_key(ann.key) if ann.key else None
        round_ = key[0] if key else data.get("round")
        if (rounds is not None and round_ not in rounds) or (verdicts is not None and ann.verdict not in verdicts):
            continue
        out.append(_record(
            pool_id=key[1] if key else None, task_id=ann.task_id, round_=round_, source=str(data.get("text") or ""),
            target=ann.text, draft=ann.draft, verdict=ann.verdict, cluster=data.get("cluster"),
            subgroup=_first_group(data), subgroups=data.get("subgroups"), teacher=row["model_version"],
            learner_version=data.get("learner_version"),
            score=row["score"], annotator=anonymise(ann.annotator, salt), lead_time=ann.lead_time,
            created_at=ann.created_at, updated_at=ann.updated_at, annotations=sum(votes[ann.task_id].values()),
            votes=votes_text(votes[ann.task_id]), decided_by="latest",
        ))
    out.sort(key=lambda r: (r["round"] is None, r["round"] or 0, r["id"]))
    return out


def _first_group(data: dict) -> str | None:
    """A task's own subgroup as the ledger export gives it: the first of its groups (tasks imported before
    labelloop sent the list carry only `subgroup`; "" means none)."""
    groups = data.get("subgroups")
    if isinstance(groups, list) and groups:
        return str(groups[0])
    return data.get("subgroup") or None


def parse_split(text: str) -> dict[str, float]:
    """'0.8,0.1,0.1' -> {'train': 0.8, 'dev': 0.1, 'test': 0.1}; two values give train and test."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise ExportError(
            f"--split {text!r}: expected two or three comma-separated fractions, e.g. 0.8,0.1,0.1") from None
    if len(parts) not in (2, 3) or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise ExportError(f"--split {text!r}: expected two or three non-negative fractions summing to 1")
    names = SPLIT_NAMES if len(parts) == 3 else ("train", "test")
    return dict(zip(names, parts, strict=True))


def _unit(seed: int, record: dict) -> float:
    """A record's seeded hash as a number in [0, 1): where it falls decides its split."""
    digest = hashlib.sha256(f"{seed}\x00{record['id']}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _quotas(n: int, ratios: dict[str, float]) -> dict[str, int]:
    """n records shared by the ratios, rounded by largest remainder (the counts add up to n)."""
    exact = {name: share * n for name, share in ratios.items()}
    counts = {name: int(x) for name, x in exact.items()}
    for name in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


def assign_splits(records: list[dict], ratios: dict[str, float], seed: int, *,
                  allow_empty: bool = False, stratify: bool = False) -> dict[str, list[dict]]:
    """Split records by a seeded hash of their id: deterministic, and an item keeps its split when later
    rounds add records (no test item ever moves into train).

    `stratify` gives every subgroup the ratios' shares exactly (its records ranked by the same hash and
    cut by largest remainder): fair per-group test sets, at the price of that stability, since a later
    export with more records may cut a group elsewhere. A split given a share above 0 that receives no
    record is refused (ExportError) unless `allow_empty`: filling it would break the rule it was cut by.
    A share of 0 is a split asked to be empty."""
    out: dict[str, list[dict]] = {name: [] for name in ratios}
    if stratify:
        groups: dict[str, list[dict]] = {}
        for rec in records:
            groups.setdefault(str(rec.get("subgroup")), []).append(rec)
        for members in groups.values():
            ranked = iter(sorted(members, key=lambda r: _unit(seed, r)))
            for name, count in _quotas(len(members), ratios).items():
                out[name] += [next(ranked) for _ in range(count)]
        order = {id(rec): i for i, rec in enumerate(records)}
        for name in out:
            out[name].sort(key=lambda r: order[id(r)])
    else:
        for rec in records:
            u = _unit(seed, rec)
            edge, chosen = 0.0, list(ratios)[-1]  # float rounding past the last edge lands in the last split
            for name, share in ratios.items():
                edge += share
                if u < edge:
                    chosen = name
                    break
            out[chosen].append(rec)
    empty = [name for name, share in ratios.items() if share > 0 and not out[name]]
    if empty and not allow_empty:
        shares = ",".join(f"{share:g}" for share in ratios.values())
        raise ExportError(
            f"--split {shares} over {len(records)} record(s) leaves {', '.join(repr(n) for n in empty)} empty;"
            " export when more items are verified, use fewer splits (e.g. 0.9,0.1), or pass --allow-empty-splits"
        )
    return out


def _arrow_schema():
    import pyarrow as pa

    def arrow(kind: str) -> Any:
        return pa.list_(pa.string()) if kind == "string_list" else getattr(pa, kind)()

    return pa.schema([(name, arrow(kind)) for name, kind in FIELDS.items()])


def _csv_row(record: dict) -> dict:
    """A record as CSV cells: a list (references, subgroups) is written as a JSON array."""
    return {k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in record.items()}


def _write_file(records: list[dict], path: Path, fmt: str) -> None:
    """One file, written to a temporary sibling and renamed: a reader never sees half an export."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt == "jsonl":
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        elif fmt == "csv":
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(FIELDS), lineterminator="\n")
            writer.writeheader()
            writer.writerows(_csv_row(r) for r in records)
            tmp.write_text(buf.getvalue(), encoding="utf-8")
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(records, schema=_arrow_schema()), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _hf_dataset(records: list[dict]):
    import datasets

    datasets.disable_progress_bars()  # a bar per shard per split is noise in an export
    features = datasets.Features({
        name: datasets.Sequence(datasets.Value("string")) if kind == "string_list" else datasets.Value(kind)
        for name, kind in FIELDS.items()
    })
    if not records:  # an empty split still has the schema (from_list/from_dict cannot save an empty one)
        import pyarrow as pa

        return datasets.Dataset(pa.Table.from_pylist([], schema=_arrow_schema()))
    return datasets.Dataset.from_list(records, features=features)


def _save_hf(dataset: Any, out: Path) -> None:
    """save_to_disk into a temporary sibling, then move it into place: a failed export leaves no half directory."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # one shard per split at least: an empty split saved with none cannot be loaded again
        shards = {name: 1 for name in dataset} if isinstance(dataset, dict) else 1
        dataset.save_to_disk(str(tmp), num_shards=shards)
        if out.exists():
            a_dataset = (out / "dataset_dict.json").exists() or (out / "dataset_info.json").exists()
            if any(out.iterdir()) and not a_dataset:
                raise ExportError(f"{out}: a directory that holds something other than a dataset; give a new path")
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write(records: list[dict] | dict[str, list[dict]], out: str | Path, fmt: str) -> list[Path]:
    """Write records (or named splits of them) to `out`; returns the paths written.

    Without splits `out` is a file (a directory for `hf`); with splits it is a directory holding one
    file per split (`train.jsonl`, ...), or one `DatasetDict` for `hf`."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {list(FORMATS)}")
    out = Path(out)
    if isinstance(records, dict):
        if out.exists() and not out.is_dir():
            raise ExportError(f"{out}: a split export writes a directory, and this is a file")
        if fmt == "hf":
            import datasets

            out.parent.mkdir(parents=True, exist_ok=True)
            _save_hf(datasets.DatasetDict({n: _hf_dataset(rs) for n, rs in records.items()}), out)
            return [out]
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, rs in records.items():
            _write_file(rs, out / f"{name}.{fmt}", fmt)
            paths.append(out / f"{name}.{fmt}")
        return paths
    if fmt == "hf":
        if out.exists() and not out.is_dir():
            raise ExportError(f"{out}: an hf export writes a directory, and this is a file")
        out.parent.mkdir(parents=True, exist_ok=True)
        _save_hf(_hf_dataset(records), out)
        return [out]
    if out.is_dir():
        raise ExportError(f"{out} is a directory; give a file path such as {out / ('dataset.' + fmt)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_file(records, out, fmt)
    return [out]
