/* virtio-blk driver. Requests are synchronous: the only user is the request
 * counter, which must be on stable storage before the HTTP reply is sent, so
 * waiting (in hlt, woken by the device interrupt) is exactly the semantics
 * needed. One request is a 3-descriptor chain: header (device-readable), data
 * (512 bytes), status byte (device-writable). */
#include "virtio_blk.h"
#include "virtio_pci.h"
#include "memory.h"
#include "console.h"
#include "io.h"
#include <string.h>

#define VIRTIO_BLK_F_FLUSH (1u << 9)
#define VIRTIO_BLK_T_IN    0
#define VIRTIO_BLK_T_OUT   1
#define VIRTIO_BLK_T_FLUSH 4

struct blk_req_hdr { uint32_t type, reserved; uint64_t sector; };

static struct virtio_dev dev;
static struct virtq vq;
static uint64_t capacity;
/* One request at a time: header, data and status in one page of DMA memory. */
static struct { struct blk_req_hdr hdr; uint8_t status; uint8_t pad[7]; uint8_t data[512]; } *io;

int blk_init(void)
{
    struct pci_dev *p = pci_find(0x1af4, 0x1001, 0);
    if (!p)
        return 0;
    virtio_pci_start(&dev, p, VIRTIO_BLK_F_FLUSH);
    virtio_pci_setup_queue(&dev, &vq, 0);
    io = alloc_pages(1);
    capacity = virtio_cfg32(&dev, 0) | (uint64_t)virtio_cfg32(&dev, 4) << 32;
    virtio_pci_ready(&dev);
    kprintf("COLO-GUEST BLK io=0x%x irq=%u sectors=%lu flush=%u\n", dev.io,
            p->irq_line, capacity, (dev.features & VIRTIO_BLK_F_FLUSH) ? 1 : 0);
    return 1;
}

uint64_t blk_capacity(void) { return capacity; }

static int submit(uint32_t type, uint64_t sector, int with_data, int data_writable)
{
    uint64_t addr[3];
    uint32_t len[3];
    int wr[3], n = 0;
    io->hdr.type = type;
    io->hdr.reserved = 0;
    io->hdr.sector = sector;
    io->status = 0xFF;
    addr[n] = (uint64_t)&io->hdr; len[n] = sizeof io->hdr; wr[n++] = 0;
    if (with_data) {
        addr[n] = (uint64_t)io->data; len[n] = 512; wr[n++] = data_writable;
    }
    addr[n] = (uint64_t)&io->status; len[n] = 1; wr[n++] = 1;
    if (virtq_add(&vq, addr, len, wr, n, io) < 0)
        return -1;
    virtq_notify(&vq);
    /* Wait for completion. Check with interrupts off, then sti;hlt atomically,
     * so the completion interrupt cannot slip in between check and halt. */
    for (;;) {
        cli();
        if (virtq_get(&vq, 0)) {
            dev.pending = 0;
            break;
        }
        cpu_idle();
    }
    sti();
    return io->status == 0 ? 0 : -1;
}

int blk_read(uint64_t sector, void *buf)
{
    if (sector >= capacity || submit(VIRTIO_BLK_T_IN, sector, 1, 1))
        return -1;
    memcpy(buf, io->data, 512);
    return 0;
}

int blk_write(uint64_t sector, const void *buf)
{
    if (sector >= capacity)
        return -1;
    memcpy(io->data, buf, 512);
    return submit(VIRTIO_BLK_T_OUT, sector, 1, 0);
}

int blk_flush(void)
{
    if (!(dev.features & VIRTIO_BLK_F_FLUSH))
        return 0;        /* no write cache to flush: writes are already stable */
    return submit(VIRTIO_BLK_T_FLUSH, 0, 0, 0);
}
