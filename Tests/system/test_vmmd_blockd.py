"""vmmd and blockd together (issue 8): the real blockd, sandboxed, serves
the virtio-blk disk of the test guest running under the real vmmd, over a
SOCK_SEQPACKET pair whose ends the test hands to each daemon as
supervisord will. The HTTP counter the guest keeps on that disk must
survive a power-off and a second boot, and read the same through the raw
image and through blockd's own NBD export."""

from __future__ import annotations

import subprocess
import time

import pytest

import colo_proto
import netns
import vmm
from blockd_helpers import PRIMARY, Blockd, attach_guest, disk_info, open_disk, wait_for
from test_guest_qemu import disk_counter, http_get
from test_vmmd import power_off

_missing = vmm.missing_prerequisite()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"vmmd guest tests: {_missing}")


@pytest.fixture
def client():
    with netns.client_namespace(subnet=5) as ns:
        yield ns


@pytest.fixture
def blockd():
    daemon = Blockd("blockd-guest")
    yield daemon
    daemon.close()


def boot(daemon: vmm.Vmmd, blockd: Blockd, client, forwarder: vmm.Forwarder) -> vmm.Console:
    block_end = attach_guest(blockd.sock, "guest")
    try:
        reply = daemon.create(cmdline=f"ip={client.guest_ip}/24", net=forwarder.vmm_end, block=block_end)
    finally:
        block_end.close()
    assert reply.WhichOneof("body") == "vm_status", reply
    return daemon.console()


def test_blockd_serves_the_guest_disk_across_boots(client, blockd):
    """20 HTTP requests (each a counter write + flush through vmmd and
    blockd), power-off, second boot reads count=20; the raw image and the
    NBD export agree."""
    t0 = time.monotonic()
    image = blockd.dir / "disk.img"
    open_disk(blockd.sock, "guest", PRIMARY, image, size=1 << 20)
    with vmm.Vmmd() as daemon:
        with vmm.Forwarder(client) as forwarder:
            console = boot(daemon, blockd, client, forwarder)
            console.wait_for(r"^COLO-GUEST BLK .* flush=1$", timeout=60, alive=daemon.alive)
            console.wait_for(r"^COLO-GUEST DISK count=0 fresh=1$", timeout=60, alive=daemon.alive)
            console.wait_for(r"^COLO-GUEST READY ", timeout=60, alive=daemon.alive)
            assert disk_info(blockd.sock, "guest").guest_attached
            for i in range(1, 21):
                assert http_get(client) == (200, i)
            status = daemon.status()
            assert status.block.writes >= 20 and status.block.flushes >= 20, status
            assert status.block.failed_requests == 0 and not status.device_events, status
            power_off(client, daemon, console)
        assert disk_counter(image) == 20
        wait_for(lambda: not disk_info(blockd.sock, "guest").guest_attached, timeout=10,
                 what="blockd to see the powered-off guest's block socket close")

        with vmm.Forwarder(client) as forwarder:
            console = boot(daemon, blockd, client, forwarder)
            console.wait_for(r"^COLO-GUEST DISK count=20 fresh=0$", timeout=60, alive=daemon.alive)
            console.wait_for(r"^COLO-GUEST READY ", timeout=60, alive=daemon.alive)
            power_off(client, daemon, console)
    assert disk_counter(image) == 20

    copy = blockd.dir / "nbd-copy.img"
    subprocess.run(["nbdcopy", blockd.uri("guest"), str(copy)], check=True, timeout=30)
    assert disk_counter(copy) == 20
    assert copy.read_bytes() == image.read_bytes()
    assert colo_proto.status(blockd.sock).state.startswith("serving")
    print(f"two boots under vmmd + blockd, 20 HTTP requests: {time.monotonic() - t0:.1f}s")
