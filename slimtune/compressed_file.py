"""The Deep Compression container: a model's sparse, shared weights Huffman-coded.

Its size is the size objective of a policy with ``sparsity`` or ``clusters``
(:mod:`slimtune.deep_compression`); ``slimtune export --format compressed`` writes it,
``slimtune load`` reads it back bit-exactly.

Container layout (little-endian; ``slimtune export --format compressed`` writes it,
``slimtune load`` reads it)::

    magic b"SLIMTDC\\x01" | u32 records | record* | sha256 of all preceding bytes (32)
    record: u16 name length, name (utf-8) | u8 kind | u8 dtype length, numpy dtype str
            | u8 ndim, u32 shape[ndim] | payload
      kind 0 (dense):   the raw tensor bytes
      kind 1 (shared):  u8 gap bits b | u32 entries | huffman(gaps)
                        | u16 k | f32 codebook[k] | huffman(cluster index; k = filler)
      kind 2 (sparse):  u8 gap bits b | u32 entries | huffman(gaps) | f32 values[entries]
    huffman(symbols):   u16 alphabet | u8 code length per symbol (canonical code)
                        | u32 bits | ceil(bits / 8) bytes, MSB first

Non-zero weights are stored in row-major order with relative indexing: each entry moves
the position on by gap + 1, gap in [0, 2**b); a jump longer than 2**b is bridged by
filler entries (gap 2**b - 1, value zero), b chosen per tensor to make the file
smallest. Everything that is not a sparse or shared conv/linear weight (biases,
BatchNorm statistics, fp32 weights) is stored dense.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import io
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimtune.deep_compression import check_layers, compress_weights
from slimtune.errors import UserInputError
from slimtune.layers import LayerTable

__all__ = ["MAGIC", "CompressedFileError", "encode_state", "read_compressed", "stored_sizes",
           "write_compressed"]

MAGIC = b"SLIMTDC\x01"
_DIGEST = 32
_DENSE, _SHARED, _SPARSE = 0, 1, 2
_MAX_GAP_BITS = 8


class CompressedFileError(UserInputError):
    """A compressed model file that is not one, is truncated, or fails its checksum."""


# --- Huffman coding ------------------------------------------------------------------------

def _code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length per symbol (0 for unused symbols; 1 if only one is used)."""
    lengths = np.zeros(len(counts), dtype=np.int64)
    used = [(int(c), i, (i,)) for i, c in enumerate(counts) if c > 0]
    if len(used) == 1:
        lengths[used[0][1]] = 1
        return lengths
    heapq.heapify(used)
    tiebreak = len(counts)
    while len(used) > 1:
        c1, _, s1 = heapq.heappop(used)
        c2, _, s2 = heapq.heappop(used)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(used, (c1 + c2, tiebreak, s1 + s2))
        tiebreak += 1
    return lengths


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes: symbols sorted by (length, symbol) get consecutive codes."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, 0
    for s in sorted((i for i in range(len(lengths)) if lengths[i]), key=lambda i: (lengths[i], i)):
        code <<= int(lengths[s]) - prev
        codes[s] = code
        prev = int(lengths[s])
        code += 1
    return codes


def _huffman_encode(symbols: np.ndarray, alphabet: int) -> bytes:
    """Canonical Huffman code of ``symbols`` (in [0, alphabet)); the stored table stops at
    the largest symbol used, so a wide alphabet with few symbols in use costs little."""
    used = int(symbols.max()) + 1 if len(symbols) else 0
    if used > alphabet:
        raise ValueError(f"symbol {used - 1} outside the alphabet of {alphabet}")
    alphabet = used
    lengths = _code_lengths(np.bincount(symbols, minlength=alphabet))
    codes = _canonical_codes(lengths)
    sym_len, sym_code = lengths[symbols], codes[symbols]
    n_bits = int(sym_len.sum())
    max_len = int(lengths.max(initial=0))
    if n_bits:
        shifts = np.arange(max_len - 1, -1, -1)  # bit j of a code, MSB first, left-aligned
        aligned = sym_code << (max_len - sym_len)
        bits = ((aligned[:, None] >> shifts) & 1).astype(np.uint8)
        keep = np.arange(max_len)[None, :] < sym_len[:, None]
        packed = np.packbits(bits[keep]).tobytes()
    else:
        packed = b""
    return (struct.pack("<H", alphabet) + lengths.astype(np.uint8).tobytes()
            + struct.pack("<I", n_bits) + packed)


def _huffman_decode(r: _Reader, count: int) -> np.ndarray:
    alphabet = r.unpack("<H")
    lengths = np.frombuffer(r.take(alphabet), dtype=np.uint8).astype(np.int64)
    n_bits = r.unpack("<I")
    bits = np.unpackbits(np.frombuffer(r.take((n_bits + 7) // 8), dtype=np.uint8))[:n_bits]
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    max_len = int(lengths.max(initial=0))
    if max_len == 0:
        raise CompressedFileError("corrupt Huffman table")
    codes = _canonical_codes(lengths)
    if max_len <= 20:  # look-up table on a max_len-bit window at every bit position
        lut_sym = np.full(1 << max_len, -1, dtype=np.int64)
        lut_len = np.zeros(1 << max_len, dtype=np.int64)
        for s in np.flatnonzero(lengths):
            lo = int(codes[s]) << (max_len - int(lengths[s]))
            hi = lo + (1 << (max_len - int(lengths[s])))
            lut_sym[lo:hi], lut_len[lo:hi] = s, lengths[s]
        padded = np.concatenate([bits, np.zeros(max_len, dtype=np.uint8)]).astype(np.int64)
        window = np.zeros(n_bits + 1, dtype=np.int64)
        for j in range(max_len):
            window = (window << 1) | padded[j:j + n_bits + 1]
        syms, lens = lut_sym[window].tolist(), lut_len[window].tolist()
        out, pos = [], 0
        for _ in range(count):
            if pos >= n_bits or syms[pos] < 0:
                raise CompressedFileError("corrupt Huffman bit stream")
            out.append(syms[pos])
            pos += lens[pos]
    else:
        table = {(int(lengths[s]), int(codes[s])): int(s) for s in np.flatnonzero(lengths)}
        out, code, n, pos = [], 0, 0, 0
        for b in bits.tolist():
            code, n = (code << 1) | b, n + 1
            if (n, code) in table:
                out.append(table[(n, code)])
                code, n = 0, 0
                if len(out) == count:
                    break
            elif n > max_len:
                break
    if len(out) != count:
        raise CompressedFileError("corrupt Huffman bit stream")
    return np.asarray(out, dtype=np.int64)


# --- relative indexing ---------------------------------------------------------------------

def _gaps(positions: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaps (each entry advances gap + 1) and a filler flag per entry, for sorted positions."""
    span = 1 << gap_bits
    diffs = np.diff(positions, prepend=-1)
    fillers = (diffs - 1) // span
    real_gap = diffs - 1 - fillers * span
    n = len(positions) + int(fillers.sum())
    gaps = np.full(n, span - 1, dtype=np.int64)
    is_filler = np.ones(n, dtype=bool)
    real_at = np.cumsum(fillers + 1) - 1
    gaps[real_at] = real_gap
    is_filler[real_at] = False
    return gaps, is_filler


def _huffman_bits(symbols: np.ndarray, alphabet: int) -> int:
    """Bits of the coded stream plus its code-length table."""
    counts = np.bincount(symbols, minlength=alphabet)
    return int((_code_lengths(counts) * counts).sum()) + 8 * (int(symbols.max(initial=-1)) + 1)


# --- the container -------------------------------------------------------------------------

def _encode_tensor(name: str, t: torch.Tensor, kind: int) -> bytes:
    array = np.array(t.detach().cpu().numpy(), order="C")  # keeps 0-d tensors 0-d
    dtype = array.dtype.newbyteorder("<").str.encode()
    name_b = name.encode()
    head = (struct.pack("<H", len(name_b)) + name_b + struct.pack("<BB", kind, len(dtype))
            + dtype + struct.pack("<B", array.ndim)
            + struct.pack(f"<{array.ndim}I", *array.shape))
    if kind == _DENSE:
        return head + array.astype(array.dtype.newbyteorder("<")).tobytes()
    flat = array.astype("<f4").ravel()
    positions = np.flatnonzero(flat)
    # the gap width that makes the entries smallest (gap and index streams both count)
    best = min(range(1, _MAX_GAP_BITS + 1),
               key=lambda b: _huffman_bits(_gaps(positions, b)[0], 1 << b)
               + _gaps(positions, b)[1].sum() * (8 if kind == _SHARED else 32))
    gaps, is_filler = _gaps(positions, best)
    body = struct.pack("<BI", best, len(gaps)) + _huffman_encode(gaps, 1 << best)
    entry_pos = np.cumsum(gaps + 1) - 1
    if kind == _SHARED:
        codebook = np.unique(flat[positions]).astype("<f4")
        idx = np.searchsorted(codebook, flat[entry_pos])
        idx[is_filler] = len(codebook)
        body += struct.pack("<H", len(codebook)) + codebook.tobytes()
        body += _huffman_encode(idx, len(codebook) + 1)
    else:
        values = flat[entry_pos].copy()
        values[is_filler] = 0.0
        body += values.astype("<f4").tobytes()
    return head + body


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)
        self._size = len(data)

    def take(self, n: int) -> bytes:
        chunk = self._buf.read(n)
        if len(chunk) != n:
            raise CompressedFileError("record runs past the end of the file")
        return chunk

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    @property
    def done(self) -> bool:
        return self._buf.tell() == self._size


def _decode_tensor(r: _Reader) -> tuple[str, torch.Tensor]:
    name = r.take(r.unpack("<H")).decode()
    kind = r.unpack("<B")
    dtype = np.dtype(r.take(r.unpack("<B")).decode())
    ndim = r.unpack("<B")
    shape = struct.unpack(f"<{ndim}I", r.take(4 * ndim))
    numel = int(np.prod(shape, dtype=np.int64))
    if kind == _DENSE:
        array = np.frombuffer(r.take(numel * dtype.itemsize), dtype=dtype).reshape(shape)
    elif kind in (_SHARED, _SPARSE):
        gap_bits, entries = r.unpack("<B"), r.unpack("<I")
        gaps = _huffman_decode(r, entries)
        positions = np.cumsum(gaps + 1) - 1
        if entries and positions[-1] >= numel:
            raise CompressedFileError(f"{name}: sparse index beyond the tensor")
        if kind == _SHARED:
            k = r.unpack("<H")
            codebook = np.append(np.frombuffer(r.take(4 * k), dtype="<f4"), np.float32(0))
            idx = _huffman_decode(r, entries)
            if entries and idx.max() > k:
                raise CompressedFileError(f"{name}: cluster index out of range")
            values = codebook[idx]
        else:
            values = np.frombuffer(r.take(4 * entries), dtype="<f4")
        flat = np.zeros(numel, dtype="<f4")
        flat[positions] = values
        array = flat.reshape(shape)
        del gap_bits
    else:
        raise CompressedFileError(f"{name}: unknown record kind {kind}")
    return name, torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def encode_state(model: nn.Module, table: LayerTable, policy) -> bytes:
    """The container bytes of ``compress_weights(copy of model)``."""
    shared = compress_weights(copy.deepcopy(model), table, policy)
    modules = dict(shared.named_modules())
    kinds = {f"{n}.weight": _SHARED for n in policy.clusters}
    kinds.update({f"{n}.weight": _SPARSE for n in policy.sparsity if n not in policy.clusters})
    del modules
    state = shared.state_dict()
    body = struct.pack("<I", len(state)) + b"".join(
        _encode_tensor(k, v, kinds.get(k, _DENSE)) for k, v in state.items())
    data = MAGIC + body
    return data + hashlib.sha256(data).digest()


def write_compressed(model: nn.Module, table: LayerTable, policy,
                     path: str | os.PathLike[str]) -> int:
    """Write ``model`` with ``policy``'s sparsity and shared weights applied; its bytes.

    Atomic: a reader never sees a half-written file. ``model`` itself is not changed; the
    stored tensors are those of ``compress_weights(copy.deepcopy(model), table, policy)``.
    """
    from slimtune.policy import write_bytes_atomic

    check_layers(table, policy)
    data = encode_state(model, table, policy)
    write_bytes_atomic(Path(path), data)
    return len(data)


def read_compressed(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict stored in a compressed file, bit-exact; CompressedFileError (one line,
    nothing returned) when the file is not one, is truncated or fails its SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise CompressedFileError(f"compressed model file not found: {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CompressedFileError(f"{path}: not a slimtune compressed model (bad magic)")
    if len(data) < len(MAGIC) + 4 + _DIGEST:
        raise CompressedFileError(f"{path}: truncated")
    payload, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(payload).digest() != digest:
        raise CompressedFileError(f"{path}: checksum mismatch (the file is truncated or "
                                  "corrupt); nothing loaded")
    try:
        r = _Reader(payload[len(MAGIC):])
        state = dict(_decode_tensor(r) for _ in range(r.unpack("<I")))
    except CompressedFileError as err:
        raise CompressedFileError(f"{path}: {err}") from None
    except (ValueError, TypeError, struct.error, UnicodeDecodeError, IndexError) as err:
        raise CompressedFileError(f"{path}: malformed record ({type(err).__name__})") from None
    if not r.done:
        raise CompressedFileError(f"{path}: trailing bytes after the last record")
    return state


def stored_sizes(path: str | os.PathLike[str]) -> Mapping[str, int]:
    """Bytes each tensor's record takes in a compressed file (for ``slimtune load``)."""
    data = Path(path).read_bytes()
    r = _Reader(data[len(MAGIC):-_DIGEST])
    sizes = {}
    for _ in range(r.unpack("<I")):
        start = r._buf.tell()
        name, _tensor = _decode_tensor(r)
        sizes[name] = r._buf.tell() - start
    return sizes
