#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Writes the sysfs sample trees for lockd_block_key()'s tests.  Each sample is a sysfs
# root laid out like the real one: device directories under devices/, and
# dev/block/MAJ:MIN plus block/X/device as *relative* symlinks, so that ".."
# from a partition reaches its disk exactly as in /sys.  VPD pages are written
# as the raw bytes the kernel shows in vpd_pg83/vpd_pg80.
import os, shutil, struct, sys

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))


def wr(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def ln(target, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)


def page(code, body, devtype=0):
    # VPD header: peripheral type, page code, 16-bit page length (SPC-4 7.8.1)
    return bytes([devtype, code]) + struct.pack(">H", len(body)) + body


def desig(code_set, assoc, dtype, ident, proto=0, piv=0):
    # Designation descriptor (SPC-4 7.8.6.1): proto|code set, piv|assoc|type, 0, len
    return bytes([(proto << 4) | code_set, (piv << 7) | (assoc << 4) | dtype, 0,
                  len(ident)]) + ident


def disk(root, hostpath, name, majmin, vendor, model, pg83=None, pg80=None,
         parts=(), extra=None):
    dev = f"{root}/devices/{hostpath}"
    blk = f"{dev}/block/{name}"
    wr(f"{blk}/dev", majmin + "\n")
    ln(f"../../../{os.path.basename(hostpath)}", f"{blk}/device")
    ln(f"../../devices/{hostpath}/block/{name}", f"{root}/dev/block/{majmin}")
    # scsi_sysfs.c: sdev_rd_attr(vendor, "%.8s\n"), (model, "%.16s\n")
    wr(f"{dev}/vendor", vendor + "\n")
    wr(f"{dev}/model", model + "\n")
    if pg83 is not None:
        wr(f"{dev}/vpd_pg83", pg83)
    if pg80 is not None:
        wr(f"{dev}/vpd_pg80", pg80)
    for pname, pmm, num in parts:
        wr(f"{blk}/{pname}/dev", pmm + "\n")
        wr(f"{blk}/{pname}/partition", f"{num}\n")
        ln(f"../../devices/{hostpath}/block/{name}/{pname}", f"{root}/dev/block/{pmm}")


def dm(root, n, name, uuid, slaves=()):
    d = f"{root}/devices/virtual/block/dm-{n}"
    wr(f"{d}/dev", f"253:{n}\n")
    wr(f"{d}/dm/name", name + "\n")
    wr(f"{d}/dm/uuid", uuid + "\n")
    wr(f"{d}/dm/suspended", "0\n")
    os.makedirs(f"{d}/slaves", exist_ok=True)
    for s in slaves:  # s is a path below devices/, e.g. "virtual/block/dm-7"
        ln(f"../../../../{s}", f"{d}/slaves/{os.path.basename(s)}")
    ln(f"../../devices/virtual/block/dm-{n}", f"{root}/dev/block/253:{n}")


# ---- LIO (drivers/target/target_core_spc.c) -------------------------------
LIO_SERIAL = "4f7c1d2e-8a9b-4c3d-9e1f-20a1b2c3d4e5"  # rtslib: uuid4 vpd_unit_serial
LIO_IQN = "iqn.2003-01.org.linux-iscsi.tgt1.x8664:sn.3f2a1b4c5d6e"


def lio_naa6(serial):
    # spc_emulate_evpd_83 + spc_parse_naa_6h_vendor_specific: 0x6, OUI 001405,
    # then the first 25 hex digits of the unit serial (non-hex skipped).
    b = bytearray([0x60, 0x01, 0x40, 0x50]) + bytearray(12)
    digits = [int(c, 16) for c in serial if c in "0123456789abcdefABCDEF"]
    cnt, nxt = 0, True
    for v in digits:
        if cnt >= 13:
            break
        if nxt:
            nxt = False
            b[3 + cnt] |= v
            cnt += 1
        else:
            nxt = True
            b[3 + cnt] = v << 4
    return bytes(b)


def lio_pg83():
    naa = desig(1, 0, 3, lio_naa6(LIO_SERIAL))
    t10 = desig(2, 0, 1, b"LIO-ORG " + f"IBLOCK:{LIO_SERIAL}".encode() + b"\0")
    rtp = desig(1, 1, 4, b"\0\0\0\x01", proto=5, piv=1)   # relative target port 1
    tpg = desig(1, 1, 5, b"\0\0\0\x00", proto=5, piv=1)   # default_tg_pt_gp, id 0
    lug = desig(1, 0, 6, b"\0\0\0\x00")                   # default_lu_gp, id 0

    def name(s):
        raw = s.encode() + b"\0"
        raw += b"\0" * ((-len(raw)) & 3)
        return raw
    port = desig(3, 1, 8, name(f"{LIO_IQN},t,0x0001"), proto=5, piv=1)
    tdev = desig(3, 2, 8, name(LIO_IQN), proto=5, piv=1)
    return page(0x83, naa + t10 + rtp + tpg + lug + port + tdev)


def lio_pg80():
    return page(0x80, LIO_SERIAL.encode() + b"\0")  # spc_emulate_evpd_80: len+1


def lio_disk(root, host, name, majmin, parts=()):
    disk(root, f"platform/host{host}/session1/target{host}:0:0/{host}:0:0:0", name,
         majmin, "LIO-ORG ", "IBLOCK          ", lio_pg83(), lio_pg80(), parts)


# ---- QEMU scsi-hd (hw/scsi/scsi-disk.c scsi_disk_emulate_vpd_page) --------
QEMU_HOST = "pci0000:00/0000:00:03.0/virtio0/host0/target0:0:0/0:0:0:0"


def qemu_disk(root, serial=None, wwn=None, blk_name=""):
    # scsi_realize: device_id = "%.20s" of serial, else blk_name() if non-empty
    device_id = serial[:20] if serial else (blk_name or None)
    body = b""
    if device_id:
        body += desig(2, 0, 0, device_id.encode())          # ASCII, vendor specific
    if wwn:
        body += desig(1, 0, 3, struct.pack(">Q", wwn))      # binary NAA
    pg80 = page(0x80, serial[:36].encode()) if serial else None
    disk(root, QEMU_HOST, "sda", "8:0", "QEMU    ", "QEMU HARDDISK   ",
         page(0x83, body), pg80)


# ---- libata SAT (drivers/ata/libata-scsi.c ata_scsiop_inq_83/_80/_std) ----
ATA_MODEL = "WDC WD10EZEX-08WN4A0"
ATA_SERIAL = "     WD-WCC6Y7HSTUZJ"  # IDENTIFY words 10-19 after ata_id_string


def ata_disk(root, wwn):
    serno = ATA_SERIAL.encode()
    prod = ATA_MODEL.ljust(40).encode()
    body = desig(2, 0, 0, serno) + desig(2, 0, 1, b"ATA     " + prod + serno)
    if wwn:
        body += desig(1, 0, 3, struct.pack(">Q", wwn))
    disk(root, "pci0000:00/0000:00:1f.2/ata1/host1/target1:0:0/1:0:0:0", "sda", "8:0",
         "ATA     ", ATA_MODEL[:16], page(0x83, body), page(0x80, serno))


def main():
    if os.path.exists(OUT):
        for e in os.listdir(OUT):
            if os.path.isdir(f"{OUT}/{e}") and not os.path.islink(f"{OUT}/{e}"):
                shutil.rmtree(f"{OUT}/{e}")
    os.makedirs(OUT, exist_ok=True)
    vg = "Xg9eYb3yR5Mft0d6nYk2vS8hPqL1wZcA"
    lv = "06UgP52rhbw3Bo3mdRWeoLpytOSAa2ky"

    # LVM LV on a QEMU disk's partition: vg0/lv-data (dash escaped in the dm name)
    r = f"{OUT}/lvm-lv"
    disk(r, QEMU_HOST, "sda", "8:0", "QEMU    ", "QEMU HARDDISK   ",
         page(0x83, desig(2, 0, 0, b"pv0")), page(0x80, b"pv0"), [("sda1", "8:1", 1)])
    dm(r, 0, "vg0-lv--data", f"LVM-{vg}{lv}", ["pci0000:00/0000:00:03.0/virtio0/host0/"
                                              "target0:0:0/0:0:0:0/block/sda/sda1"])
    dm(r, 1, "vg0-short", f"LVM-{vg}{lv[:31]}")            # 67 characters
    dm(r, 2, "vg0-long", f"LVM-{vg}{lv}x")                 # 69 characters
    dm(r, 3, "vg0-odd", f"LVM-{vg}{lv[:30]}/!")            # not lvm's alphabet

    # thin pool: the hidden -tpool layer and the public "pool" device (-pool layer)
    r = f"{OUT}/lvm-thinpool"
    pool = "Pq7Rr0Tt2Uu4Vv6Ww8Xx1Yy3Zz5Aa9Bb"
    dm(r, 4, "vg0-pool-tpool", f"LVM-{vg}{pool}-tpool")
    dm(r, 5, "vg0-pool", f"LVM-{vg}{pool}-pool", ["virtual/block/dm-4"])

    # LUKS2 (cryptsetup lib/setup.c: "CRYPT-" type "-" uuid-without-dashes "-" name)
    r = f"{OUT}/luks"
    name = "luks-0b1f3c4d-5e6f-4a1b-9c2d-3e4f5a6b7c8d"
    dm(r, 6, name, "CRYPT-LUKS2-0b1f3c4d5e6f4a1b9c2d3e4f5a6b7c8d-" + name)

    # LIO LUN over iSCSI, with one partition
    lio_disk(f"{OUT}/lio-naa6", 3, "sdb", "8:16", [("sdb1", "8:17", 1)])

    # dm-multipath over two iSCSI paths to the same LIO LUN, plus a kpartx partition
    r = f"{OUT}/multipath"
    lio_disk(r, 3, "sdb", "8:16")
    lio_disk(r, 4, "sdc", "8:32")
    wwid = "3" + lio_naa6(LIO_SERIAL).hex()
    dm(r, 7, "mpatha", f"mpath-{wwid}", [
        "platform/host3/session1/target3:0:0/3:0:0:0/block/sdb",
        "platform/host4/session1/target4:0:0/4:0:0:0/block/sdc"])
    dm(r, 8, "mpatha1", f"part1-mpath-{wwid}", ["virtual/block/dm-7"])

    # A broken "multipath" map whose two paths are different LUNs: -EIO, not a guess
    r = f"{OUT}/multipath-mismatch"
    lio_disk(r, 3, "sdb", "8:16")
    disk(r, QEMU_HOST, "sda", "8:0", "QEMU    ", "QEMU HARDDISK   ",
         page(0x83, desig(2, 0, 0, b"other")), None)
    dm(r, 7, "mpatha", "mpath-" + wwid, [
        "platform/host3/session1/target3:0:0/3:0:0:0/block/sdb", QEMU_HOST + "/block/sda"])

    # QEMU scsi-hd: serial only; serial + wwn; -blockdev without serial (no id at all)
    qemu_disk(f"{OUT}/qemu-scsi-hd", serial="lockd-disk-01")
    qemu_disk(f"{OUT}/qemu-scsi-hd-wwn", serial="lockd-disk-02", wwn=0x5000c50015ea71ac)
    qemu_disk(f"{OUT}/qemu-scsi-hd-noid")
    # QEMU before -blockdev: no serial, the drive name is the device_id
    qemu_disk(f"{OUT}/qemu-scsi-hd-legacy", blk_name="drive-scsi0-0-0-0")

    # SATA behind libata: with and without an IDENTIFY WWN
    ata_disk(f"{OUT}/sata-libata", 0x50014ee2b5c3ae96)
    ata_disk(f"{OUT}/sata-libata-nowwn", None)

    # An SPC-2 disk whose page 0 lists only 0x80 (no vpd_pg83 file)
    disk(f"{OUT}/old-pg80", "pci0000:00/0000:00:06.0/host5/target5:0:3/5:0:3:0", "sdd",
         "8:48", "SEAGATE ", "ST336753LW      ", None,
         page(0x80, b"    3HX0ABCD0000 7418  "))

    # Vendor-specific designator with characters udev replaces; the NAA with
    # association 1 (target port) and the SCSI name string must be ignored.
    body = (desig(1, 1, 3, bytes.fromhex("50060e8005a1b2c3"), proto=6, piv=1) +
            desig(3, 0, 8, b"naa.60060E8005A1B2C3\0\0\0\0") +
            desig(2, 0, 0, b"SN 42/7*x\\x2f\xc3\xa9\xff"))
    disk(f"{OUT}/vendor-specific", "pci0000:00/0000:00:07.0/host6/target6:0:0/6:0:0:2",
         "sde", "8:64", "HITACHI ", "OPEN-V          ", page(0x83, body),
         page(0x80, b"50 0A1B2"))

    # Several designators: priority beats page order (the LU NAA-6 comes last)
    body = (desig(2, 0, 1, b"ACME    ROADRUNNER 0042") +
            desig(1, 0, 2, bytes.fromhex("0011223344556677")) +
            desig(1, 0, 3, bytes.fromhex("5000c500a1b2c3d4")) +
            desig(1, 0, 3, bytes.fromhex("3000000000000001")) +
            desig(1, 1, 3, bytes.fromhex("6000c500000000000000000000000099"), piv=1) +
            desig(1, 0, 3, bytes.fromhex("600a0b80002a1b2c000004d25f1e2d3c")))
    disk(f"{OUT}/multi-designator", "pci0000:00/0000:00:08.0/host7/target7:0:0/7:0:0:0",
         "sdf", "8:80", "ACME    ", "ROADRUNNER      ", page(0x83, body), None)

    # EUI-64 beats T10 vendor id and vendor specific; an ASCII NAA beats nothing
    # binary of the same NAA type but beats EUI-64.
    body = (desig(2, 0, 0, b"VS-ID") + desig(2, 0, 1, b"ACME    X1") +
            desig(1, 0, 2, bytes.fromhex("0025388b91b2c3d4")))
    disk(f"{OUT}/eui64", "pci0000:00/0000:00:09.0/host8/target8:0:0/8:0:0:0", "sdg",
         "8:96", "ACME    ", "X1              ", page(0x83, body), None)
    body = desig(2, 0, 3, b"6006016012345678") + desig(1, 0, 2, bytes(8))
    disk(f"{OUT}/naa-ascii", "pci0000:00/0000:00:09.0/host8/target8:0:1/8:0:1:0", "sdh",
         "8:112", "ACME    ", "X2              ", page(0x83, body), None)

    # Pre-SPC-3 (SCSI-2) page 0x83 of an EMC Symmetrix: 16 bytes of WWN, no descriptors
    disk(f"{OUT}/emc-prespc3", "pci0000:00/0000:00:0a.0/host9/target9:0:0/9:0:0:0", "sdi",
         "8:128", "EMC     ", "SYMMETRIX       ",
         page(0x83, bytes.fromhex("60060480000187900123533030303435")), None)

    # Edge cases of scsi_id's parsing (synthetic; each checked against Debian's scsi_id)
    r = f"{OUT}/edge"
    host = "pci0000:00/0000:00:0b.0/host10/target10:0:0/10:0:0:"
    # page length 0x0100: scsi_id walks descriptors with the 16-bit length
    disk(r, host + "0", "sdj", "8:144", "ACME    ", "WIDGET          ",
         b"\x00\x83\x01\x00" + desig(2, 0, 0, b"abc") +
         desig(1, 0, 3, bytes.fromhex("5001020304050607")), None)
    # page 0x80 with whitespace runs (\t \v \f \n) and a NUL that ends the string
    disk(r, host + "1", "sdk", "8:160", "ACME    ", "WIDGET          ", None,
         page(0x80, b"\tA\x0b\x0cB\nC\x00DE"))
    # a binary designator too long for scsi_id's 256-byte serial is skipped
    disk(r, host + "2", "sdl", "8:176", "ACME    ", "WIDGET          ",
         page(0x83, desig(1, 0, 3, b"a" * 128) + desig(2, 0, 1, b"ACME    WIDGET")),
         None)
    # a page 0x83 whose page code byte is wrong is rejected; page 0x80 is used
    disk(r, host + "3", "sdm", "8:192", "ACME    ", "WIDGET          ",
         page(0x80, desig(2, 0, 0, b"abcd")), page(0x80, b"XYZ"))

    # NVMe namespace: no VPD pages in sysfs (nvme core has wwid/model/serial only)
    r = f"{OUT}/nvme"
    ns = f"{r}/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1"
    wr(f"{ns}/dev", "259:0\n")
    wr(f"{ns}/wwid", "eui.0025388b91b2c3d4\n")
    ln("../../nvme0", f"{ns}/device")
    wr(f"{r}/devices/pci0000:00/0000:00:04.0/nvme/nvme0/model", "Samsung SSD 970 EVO 1TB\n")
    wr(f"{r}/devices/pci0000:00/0000:00:04.0/nvme/nvme0/serial", "S467NX0M123456\n")
    ln("../../devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1", f"{r}/dev/block/259:0")


main()
