"""thin_dump's XML (thin-provisioning-tools 0.9.0) from a model pool's metadata."""

from __future__ import annotations

from .model.metadata import TIME_BITS, TIME_MASK, PoolMetadata


def dump_xml(pmd: PoolMetadata, *, metadata_snap: bool = False):
    """The lines ``thin_dump [-m]`` prints for ``pmd`` (its held snapshot with ``-m``).

    Runs of mappings contiguous in virtual and data blocks with one time become
    ``range_mapping``; single ones ``single_mapping``.
    """
    if metadata_snap:
        held = pmd.held_snapshot()
        if held is None:
            raise ValueError("no metadata snapshot")
        root, details_root = held
        sb = pmd.held_superblock
        # the held superblock copy has its space map roots wiped, so the data space map
        # thin_dump reads from it is empty
        nr_data_blocks = 0
    else:
        root, details_root = pmd.root, pmd.details_root
        sb = (pmd.time, pmd.trans_id, 1 if pmd.needs_check else 0)
        nr_data_blocks = pmd.data_dev_size()
    time, trans_id, flags = sb
    lines = [
        (
            f'<superblock uuid="" time="{time}" transaction="{trans_id}" flags="{flags}" '
            f'version="2" data_block_size="{pmd.data_block_size}" nr_data_blocks="{nr_data_blocks}">'
        )
    ]
    details = pmd.all_details(details_root)
    roots = pmd.thin_roots(root)
    for dev in sorted(roots):
        mapped, trans, ctime, stime = details.get(dev, (0, 0, 0, 0))
        lines.append(
            f'  <device dev_id="{dev}" mapped_blocks="{mapped}" transaction="{trans}" '
            f'creation_time="{ctime}" snap_time="{stime}">'
        )
        run = None  # [origin_begin, data_begin, length, time]
        for key, value in pmd.device_mappings(roots[dev]):
            data, t = value >> TIME_BITS, value & TIME_MASK
            if (
                run is not None
                and key == run[0] + run[2]
                and data == run[1] + run[2]
                and t == run[3]
            ):
                run[2] += 1
                continue
            if run is not None:
                lines.append(_mapping(run))
            run = [key, data, 1, t]
        if run is not None:
            lines.append(_mapping(run))
        lines.append("  </device>")
    lines.append("</superblock>")
    return lines


def _mapping(run) -> str:
    origin, data, length, t = run
    if length == 1:
        return f'    <single_mapping origin_block="{origin}" data_block="{data}" time="{t}"/>'
    return (
        f'    <range_mapping origin_begin="{origin}" data_begin="{data}" '
        f'length="{length}" time="{t}"/>'
    )
