"""checksums.json (make_jax/checkpoint/integrity.py): the record against an independent CRC-32, damage named in
one line, and the SHA-256 records of older versions still verified."""

import hashlib
import json
import os

import pytest

from make_jax.checkpoint import integrity
from make_jax.checkpoint.integrity import CHECKSUM_FILE, verify_checksums, write_checksums
from make_jax.checkpoint.open_clip_layout import CheckpointError


def _crc32_by_hand(data: bytes) -> int:
    """CRC-32 as ISO-HDLC / zip / PNG define it: reflected polynomial 0xEDB88320, register starting at and
    finally XORed with 0xFFFFFFFF, one table lookup per byte."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _tree(root):
    """Three files, one in a subdirectory and one empty; {relative name: bytes}."""
    files = {"a.json": b'{"x": 1}\n', "params/d/blob": os.urandom(3000) + b"123456789", "params/empty": b""}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_the_reference_crc_is_the_catalogued_one():
    assert _crc32_by_hand(b"123456789") == 0xCBF43926  # the CRC catalogue's check value of CRC-32/ISO-HDLC
    assert _crc32_by_hand(b"") == 0


def test_the_record_holds_the_size_and_crc32_of_every_file(tmp_path, monkeypatch):
    files = _tree(tmp_path)
    monkeypatch.setattr(integrity, "_CHUNK", 7)  # many chunks: the running CRC is carried from one to the next
    write_checksums(tmp_path, tmp_path / CHECKSUM_FILE)
    record = json.loads((tmp_path / CHECKSUM_FILE).read_text())
    assert record["algorithm"] == "crc32"
    assert record["files"] == {name: {"bytes": len(data), "crc32": f"{_crc32_by_hand(data):08x}"}
                               for name, data in files.items()}  # the record itself is not listed
    assert verify_checksums(tmp_path, tmp_path / CHECKSUM_FILE)


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "delete"])
def test_damage_is_named_in_one_line(tmp_path, damage):
    _tree(tmp_path)
    write_checksums(tmp_path, tmp_path / CHECKSUM_FILE)
    victim = tmp_path / "params" / "d" / "blob"
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[1234] ^= 0x01
        victim.write_bytes(bytes(data))
        want = f"{victim}: checksum mismatch (the file changed"
    elif damage == "truncate":
        victim.write_bytes(bytes(data[:1000]))
        want = f"{victim}: checksum mismatch (1000 bytes, 3009 recorded)"
    elif damage == "append":
        victim.write_bytes(bytes(data) + b"\0")
        want = f"{victim}: checksum mismatch (3010 bytes, 3009 recorded)"
    else:
        victim.unlink()
        want = f"{victim}: missing (listed in {tmp_path / CHECKSUM_FILE}); the checkpoint is incomplete"
    with pytest.raises(CheckpointError) as e:
        verify_checksums(tmp_path, tmp_path / CHECKSUM_FILE)
    assert str(e.value).startswith(want) and "\n" not in str(e.value), str(e.value)


def test_sha256_records_of_older_versions_still_verify(tmp_path):
    files = _tree(tmp_path)
    # the format make_jax wrote before CRC-32: {"algorithm": "sha256", "files": {name: hex digest}}
    record = {"algorithm": "sha256", "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    (tmp_path / CHECKSUM_FILE).write_text(json.dumps(record))
    assert verify_checksums(tmp_path, tmp_path / CHECKSUM_FILE)
    victim = tmp_path / "a.json"
    victim.write_bytes(b'{"x": 2}\n')  # same size, other bytes
    with pytest.raises(CheckpointError) as e:
        verify_checksums(tmp_path, tmp_path / CHECKSUM_FILE)
    assert str(e.value).startswith(f"{victim}: checksum mismatch (the file changed"), str(e.value)


CRC_ENTRY = "{'bytes': size, 'crc32': 8 lowercase hex digits}"


@pytest.mark.parametrize("record,words", [
    ({"algorithm": "md5", "files": {}}, "unknown algorithm 'md5'"),
    ({"files": {}}, "'algorithm'"),
    (["crc32", {}], "not a JSON object"),
    ({"algorithm": "crc32", "files": ["a.json"]}, "'files' is not an object"),
    ({"algorithm": "crc32", "files": {"a.json": "0badc0de"}}, f"the entry of 'a.json' is not {CRC_ENTRY}"),
    ({"algorithm": "crc32", "files": {"a.json": {"crc32": "0badc0de"}}}, "the entry of 'a.json' is not"),
    ({"algorithm": "crc32", "files": {"a.json": {"bytes": "9", "crc32": "0badc0de"}}}, "the entry of 'a.json'"),
    ({"algorithm": "crc32", "files": {"a.json": {"bytes": True, "crc32": "0badc0de"}}}, "the entry of 'a.json'"),
    ({"algorithm": "crc32", "files": {"a.json": {"bytes": 9, "crc32": 195936478}}}, "the entry of 'a.json'"),
    ({"algorithm": "crc32", "files": {"a.json": {"bytes": 9, "crc32": "0BADC0DE"}}}, "the entry of 'a.json'"),
    ({"algorithm": "sha256", "files": {"a.json": "0badc0de"}}, "the entry of 'a.json' is not 64 lowercase hex"),
    ({"algorithm": "crc32", "files": {"../a.json": {"bytes": 9, "crc32": "0badc0de"}}},
     "'../a.json' is not a path inside the checkpoint"),
    ({"algorithm": "crc32", "files": {"/etc/hosts": {"bytes": 9, "crc32": "0badc0de"}}},
     "'/etc/hosts' is not a path inside the checkpoint"),
])
def test_a_record_that_cannot_be_read_is_refused(tmp_path, record, words):
    _tree(tmp_path)
    (tmp_path / CHECKSUM_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError) as e:
        verify_checksums(tmp_path, tmp_path / CHECKSUM_FILE)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / CHECKSUM_FILE}: unreadable checksum record (") and words in message


def test_a_file_that_cannot_be_read_is_named_in_one_line(tmp_path, monkeypatch):
    _tree(tmp_path)
    write_checksums(tmp_path, tmp_path / CHECKSUM_FILE)

    def bad_disk(path):
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(integrity, "crc32_file", bad_disk)
    with pytest.raises(CheckpointError) as e:
        verify_checksums(tmp_path, tmp_path / CHECKSUM_FILE)
    assert str(e.value).startswith(f"{tmp_path / 'a.json'}: cannot be read ([Errno 5] Input/output error")
    (tmp_path / CHECKSUM_FILE).write_text("[" * 100_000)  # nested past Python's recursion limit
    with pytest.raises(CheckpointError, match="unreadable checksum record"):
        verify_checksums(tmp_path, tmp_path / CHECKSUM_FILE)


def test_no_record_is_reported_not_refused(tmp_path):
    _tree(tmp_path)
    assert verify_checksums(tmp_path, tmp_path / CHECKSUM_FILE) is False
