"""The pager layer: parameter blocks moved between a store and RAM under a byte budget.

* :mod:`.pager` -- :class:`Pager`: row-range blocks (tiles of dense layers) with
  LRU eviction, write-back and prefetch; row sets (sparse layers) through
  per-parameter row caches;
* :mod:`.rowcache` -- :class:`RowCache`: the hot rows of a large table kept in RAM
  (S3-FIFO eviction, dirty rows written back), so a sparse step reads from disk only
  the rows it has not seen lately;
* :mod:`.idtable` -- :class:`IdTable`: a vectorised open-addressing hash map from
  row id to cache slot, sized by the cache, never by the vocabulary.
"""

from .pager import Pager, PagerStats, format_bytes, parse_bytes

__all__ = ["Pager", "PagerStats", "parse_bytes", "format_bytes"]
