"""The benchmark trees: a fleet of snapshot directories like our users'."""
from __future__ import annotations

import json
import os

import snapshot

FLEET_SIZE = 2000
TEMPLATES = ("ubuntu-22.04", "debian-12", "alpine-3.19")


def make_fleet(base, n: int = FLEET_SIZE) -> list:
    """n snapshot directories of five files each; returns their names, sorted.

    memory-ranges and rootfs.cow are 4 GiB sparse files with a few blocks written,
    as Cloud Hypervisor and a copy-on-write diff leave them.
    """
    names = []
    for i in range(n):
        name = f"vm-{i:05d}"
        d = snapshot.ensure_dir(base, name)
        with open(os.path.join(d, snapshot.CH_CONFIG_FILE), "w") as f:
            json.dump({"cpus": {"boot_vcpus": 2}, "memory": {"size": 1 << 30}, "id": i}, f)
        with open(os.path.join(d, snapshot.CH_STATE_FILE), "w") as f:
            f.write("{}" * (50 + i % 200))
        for fname, written in ((snapshot.CH_MEM_RANGES_FILE, 8192), (snapshot.ROOTFS_COW_NAME, 4096 * (1 + i % 4))):
            with open(os.path.join(d, fname), "wb") as f:
                f.truncate(4 << 30)
                f.seek((i * 4096) % (1 << 30))
                f.write(b"\x5a" * written)
        template = TEMPLATES[i % len(TEMPLATES)]  # a few templates and VM shapes, as in a real fleet
        snapshot.write_meta(base, name, snapshot.RootfsMeta(template, f"{template}-v1", vcpus=(1, 2, 4, 8)[i % 4],
                                                            memory_mb=512 << (i % 5)))
        names.append(name)
    return names
