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
/* The disk benchmark's buffer (BENCH_MAX_KIB, contiguous: identity-mapped pages). */
#define BENCH_MAX_KIB 64
static uint8_t *bench_buf;

int blk_init(void)
{
    struct pci_dev *p = pci_find(0x1af4, 0x1001, 0);
    if (!p)
        return 0;
    virtio_pci_start(&dev, p, VIRTIO_BLK_F_FLUSH);
    virtio_pci_setup_queue(&dev, &vq, 0);
    io = alloc_pages(1);
    bench_buf = alloc_pages(BENCH_MAX_KIB / 4);
    capacity = virtio_cfg32(&dev, 0) | (uint64_t)virtio_cfg32(&dev, 4) << 32;
    virtio_pci_ready(&dev);
    kprintf("COLO-GUEST BLK io=0x%x irq=%u sectors=%lu flush=%u\n", dev.io,
            p->irq_line, capacity, (dev.features & VIRTIO_BLK_F_FLUSH) ? 1 : 0);
    return 1;
}

uint64_t blk_capacity(void) { return capacity; }

/* One request: data_len bytes at data (none when 0), device-writable for reads. */
static int submit(uint32_t type, uint64_t sector, void *data, uint32_t data_len, int data_writable)
{
    uint64_t addr[3];
    uint32_t len[3];
    int wr[3], n = 0;
    io->hdr.type = type;
    io->hdr.reserved = 0;
    io->hdr.sector = sector;
    io->status = 0xFF;
    addr[n] = (uint64_t)&io->hdr; len[n] = sizeof io->hdr; wr[n++] = 0;
    if (data_len) {
        addr[n] = (uint64_t)data; len[n] = data_len; wr[n++] = data_writable;
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
    if (sector >= capacity || submit(VIRTIO_BLK_T_IN, sector, io->data, 512, 1))
        return -1;
    memcpy(buf, io->data, 512);
    return 0;
}

int blk_write(uint64_t sector, const void *buf)
{
    if (sector >= capacity)
        return -1;
    memcpy(io->data, buf, 512);
    return submit(VIRTIO_BLK_T_OUT, sector, io->data, 512, 0);
}

int blk_flush(void)
{
    if (!(dev.features & VIRTIO_BLK_F_FLUSH))
        return 0;        /* no write cache to flush: writes are already stable */
    return submit(VIRTIO_BLK_T_FLUSH, 0, 0, 0, 0);
}

int blk_bench(int write, int random, uint32_t kib, uint32_t count, uint64_t *bytes)
{
    uint32_t sectors = kib * 2;
    /* Sector 0 holds the request counter: the benchmark stays above 4 KiB. */
    const uint64_t first = 8;
    if (kib == 0 || kib > BENCH_MAX_KIB || kib % 4 || capacity < first + sectors)
        return -1;
    uint64_t span = (capacity - first) / sectors;         /* request-sized slots */
    uint64_t slot = 0, seed = 0x9E3779B97F4A7C15ull;
    if (write)
        for (uint32_t i = 0; i < kib * 1024; i++)
            bench_buf[i] = (uint8_t)(i * 31 + 7);
    *bytes = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (random) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            slot = (seed >> 33) % span;
        }
        uint64_t sector = first + slot * sectors;
        if (submit(write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, sector, bench_buf, kib * 1024, !write))
            return -1;
        *bytes += kib * 1024;
        if (!random)
            slot = (slot + 1) % span;
    }
    return 0;
}
