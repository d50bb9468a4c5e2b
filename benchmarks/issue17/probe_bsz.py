import ctypes, fcntl, os, struct, sys, array, glob
libc = ctypes.CDLL(None, use_errno=True)
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
v = os.fstatvfs(fd)
print("fstatvfs f_bsize", v.f_bsize, "f_frsize", v.f_frsize)
class Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("f_blocks", ctypes.c_ulong),
                ("f_bfree", ctypes.c_ulong), ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2), ("f_namelen", ctypes.c_long),
                ("f_frsize", ctypes.c_long), ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]
s = Statfs()
assert libc.fstatfs(fd, ctypes.byref(s)) == 0
print("fstatfs f_type %#x f_bsize %d f_frsize %d f_blocks %d" % (s.f_type, s.f_bsize, s.f_frsize, s.f_blocks))
st = os.fstat(fd)
print("st_blksize", st.st_blksize, "st_blocks", st.st_blocks, "size", st.st_size)
buf = array.array("i", [0])
try:
    fcntl.ioctl(fd, 2, buf)  # FIGETBSZ
    print("FIGETBSZ", buf[0])
except OSError as e:
    print("FIGETBSZ", e)
sx = ctypes.create_string_buffer(256)
mask = 0xfff | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000
rc = libc.syscall(332, fd, b"", 0x1000, mask, sx)  # statx AT_EMPTY_PATH
if rc != 0:
    print("statx errno", ctypes.get_errno())
else:
    b = sx.raw
    m, blksize = struct.unpack_from("II", b, 0)
    blocks = struct.unpack_from("Q", b, 48)[0]
    dio_mem, dio_off = struct.unpack_from("II", b, 152)
    awmin, awmax, awseg, dio_read, awmax_opt = struct.unpack_from("IIIII", b, 168)
    print("statx mask %#x blksize %d blocks %d dio_mem_align %d dio_offset_align %d atomic_unit_min %d "
          "atomic_unit_max %d atomic_segs %d dio_read_offset_align %d atomic_max_opt %d" %
          (m, blksize, blocks, dio_mem, dio_off, awmin, awmax, awseg, dio_read, awmax_opt))
pbuf = ctypes.create_string_buffer(129)
FS_IOC_GETFSSYSFSPATH = (2 << 30) | (129 << 16) | (0x15 << 8) | 1
r = libc.ioctl(fd, ctypes.c_ulong(FS_IOC_GETFSSYSFSPATH), pbuf)
if r != 0:
    print("GETFSSYSFSPATH errno", ctypes.get_errno())
else:
    n = pbuf.raw[0]
    print("GETFSSYSFSPATH", pbuf.raw[1:1 + n])
