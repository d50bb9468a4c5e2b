"""Options shared by both walkers, as one int so the compiled loop reads them cheaply."""
UNIQUE_INODES = 1  # count_links=False: each (st_dev, st_ino) once, as GNU du
ONE_FILE_SYSTEM = 2  # do not enter directories on another st_dev, as du -x
SHARED_EXTENTS = 4  # FIEMAP: shared and shared_physical bytes
