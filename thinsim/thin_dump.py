"""thin_dump's XML (thin-provisioning-tools 0.9.0) straight from a model pool's metadata,
without writing it to a device first: the emitter is thin_dump's own
(thinsim.thin_tools.dump), fed from the model's trees."""

from __future__ import annotations

from .model.metadata import TIME_BITS, TIME_MASK, PoolMetadata
from .thin_tools.dump import XmlEmitter
from .thin_tools.metadata_dumper import _MappingRuns


def dump_xml(pmd: PoolMetadata, *, metadata_snap: bool = False) -> list[str]:
    """The lines ``thin_dump [-m]`` prints for ``pmd`` (its held snapshot with ``-m``).

    Runs of mappings contiguous in virtual and data blocks with one time become
    ``range_mapping``; single ones ``single_mapping``.
    """
    if metadata_snap:
        held = pmd.held_snapshot()
        if held is None:
            raise ValueError("no metadata snapshot")
        root, details_root = held
        time, trans_id, flags = pmd.held_superblock
        # metadata_dumper.cc: get_nr_blocks -- through a snapshot the data size is unknown
        nr_data_blocks = 0
    else:
        root, details_root = pmd.root, pmd.details_root
        time, trans_id, flags = pmd.time, pmd.trans_id, 1 if pmd.needs_check else 0
        nr_data_blocks = pmd.data_dev_size()
    text: list[str] = []
    e = XmlEmitter(text.append)
    e.begin_superblock("", time, trans_id, flags, 2, pmd.data_block_size, nr_data_blocks, None)
    details = pmd.all_details(details_root)
    roots = pmd.thin_roots(root)
    for dev in sorted(roots):
        mapped, trans, ctime, stime = details.get(dev, (0, 0, 0, 0))
        e.begin_device(dev, mapped, trans, ctime, stime)
        runs = _MappingRuns(e)
        for key, value in pmd.device_mappings(roots[dev]):
            runs.add(key, value >> TIME_BITS, value & TIME_MASK)
        runs.end()
        e.end_device()
    e.end_superblock()
    return "".join(text).splitlines()
