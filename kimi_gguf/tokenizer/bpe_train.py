"""A small byte-level BPE trainer: the tiny checkpoint's tokenizer is trained, not hand-written.

Text is first cut by the Kimi pre-tokenizer (merges never cross its pieces, exactly as at encode
time), then the most frequent adjacent pair of tokens is merged, again and again. Ranks follow the
order of creation: the 256 single bytes first (rank = byte value), then one rank per merge, which is
the order tiktoken's encoder replays by always merging the lowest-ranked pair.

Pair counts are kept incrementally (each merge touches only the words that contain the pair), so
training ~1500 merges on the built-in corpus takes well under a second. Ties are broken by the merged
bytes, so the result is the same on every machine.
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from importlib import resources

from .kimi_regex import split_words

DEFAULT_MERGES = 1200


def builtin_corpus() -> str:
    return resources.files("kimi_gguf").joinpath("data/corpus.txt").read_text(encoding="utf-8")


def train_bpe(text: str, num_merges: int = DEFAULT_MERGES, min_count: int = 2) -> dict[bytes, int]:
    """Ranks {token bytes: rank}: 256 single bytes, then up to `num_merges` merges (fewer when no
    pair occurs `min_count` times any more)."""
    word_freq = Counter(piece.encode("utf-8") for piece in split_words(text))
    words = sorted(word_freq)                       # fixed order -> deterministic
    freqs = [word_freq[w] for w in words]
    seqs: list[list[bytes]] = [[bytes([b]) for b in w] for w in words]

    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    pair_count: dict[tuple[bytes, bytes], int] = defaultdict(int)
    pair_words: dict[tuple[bytes, bytes], set[int]] = defaultdict(set)
    for wi, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pair_count[pair] += freqs[wi]
            pair_words[pair].add(wi)

    # max-heap on count, then smallest merged bytes, then smallest left part; stale entries skipped.
    heap = [(-c, a + b, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    def bump(pair: tuple[bytes, bytes], delta: int, wi: int) -> None:
        pair_count[pair] += delta
        if delta > 0:
            pair_words[pair].add(wi)
        heapq.heappush(heap, (-pair_count[pair], pair[0] + pair[1], pair[0], pair[1]))

    merges = 0
    while merges < num_merges and heap:
        neg, merged, a, b = heapq.heappop(heap)
        if -neg != pair_count.get((a, b), 0):
            continue                                 # stale entry
        if -neg < min_count:
            break
        if merged in ranks:
            # Another split already made these bytes; a byte string has one rank in tiktoken.
            pair_count[(a, b)] = 0
            continue
        ranks[merged] = len(ranks)
        merges += 1
        for wi in sorted(pair_words.pop((a, b), ())):
            seq, f = seqs[wi], freqs[wi]
            # remove this word's old pairs, re-merge, add the new pairs
            for pair in zip(seq, seq[1:]):
                pair_count[pair] -= f
            out: list[bytes] = []
            i = 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[wi] = out
            for pair in zip(out, out[1:]):
                bump(pair, f, wi)
        pair_count[(a, b)] = 0
    return ranks
