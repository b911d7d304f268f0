"""Read back what an offline W&B run recorded (its run-*.wandb file), for the tests.

The file is a LevelDB-style log (32 KiB blocks; each chunk has a 7-byte header: crc32,
length, type FULL/FIRST/MIDDLE/LAST) of `wandb_internal_pb2.Record` protobufs, after a
7-byte file header ":W&B", magic, version.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a .wandb file"
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        parts.append(chunk)
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None

    @classmethod
    def read(cls, run_dir: Path) -> "OfflineRun":
        (path,) = Path(run_dir).glob("run-*.wandb")
        run = cls()
        for r in records(path):
            kind = r.WhichOneof("record_type")
            if kind == "config":
                run.config.update({_key(i): json.loads(i.value_json) for i in r.config.update})
            elif kind == "history":
                run.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
            elif kind == "summary":
                run.summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
            elif kind == "exit":
                run.exit_code = r.exit.exit_code
        return run

    def logged_keys(self) -> set[str]:
        return {k for row in self.history for k in row}
