# The numbers shared with the pure-Python twin, defined once in _codes.py, as the C globals
# the loops read.
from snapshot import _codes

cdef int F_UNIQUE = _codes.UNIQUE_INODES
cdef int F_ONE_FS = _codes.ONE_FILE_SYSTEM
cdef int F_SHARED = _codes.SHARED_EXTENTS
cdef int F_SNAPSHOT = _codes.SNAPSHOT_FILES
cdef int F_KEEP_GOING = _codes.KEEP_GOING
cdef int F_RECORDS = _codes.RECORDS
cdef int F_ALL_FILES = _codes.ALL_FILES

cdef int NO_BLOCKS = _codes.NO_BLOCKS
cdef int SCAN = _codes.SCAN
cdef int PUNCH = _codes.PUNCH
cdef int DRY_RUN = _codes.DRY_RUN

cdef int DONE = _codes.DONE
cdef int LEASED = _codes.LEASED
cdef int BUSY = _codes.BUSY
cdef int UNCHECKED = _codes.UNCHECKED
cdef int STOPPED = _codes.STOPPED
cdef int FAILED = _codes.FAILED
cdef int UNSAFE_FS = _codes.UNSAFE_FS
cdef int EXPIRED = _codes.EXPIRED
cdef int NO_PROC = _codes.NO_PROC

cdef int64_t META_MAX = _codes.META_READ_MAX
cdef long CHUNK_BYTES = _codes.CHUNK
cdef int64_t PUNCH_PIECE_BYTES = _codes.PUNCH_PIECE
