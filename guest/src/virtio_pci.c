/* Legacy virtio-pci transport and split virtqueues.
 *
 * Interrupts: the device raises INTx on the line firmware (or vmmd) wrote into
 * config register 0x3C. Those are level-triggered, so the line is set to level
 * in the ELCR, and the handler reads the ISR register, which both tells us the
 * device interrupted and deasserts the line. The handler only flags the device;
 * the drivers reap used rings from the main loop. */
#include "virtio_pci.h"
#include "memory.h"
#include "console.h"
#include "idt.h"
#include "pic.h"
#include "io.h"
#include <string.h>

/* Firmware normally assigns BARs (SeaBIOS does, and vmmd will). qboot assigns
 * memory BARs but leaves I/O BARs at 0; then we place BAR0 ourselves in an I/O
 * window no firmware here uses (0xC000 up), naturally aligned to its size. */
static uint16_t next_io = 0xC000;

static uint32_t assign_io_bar0(struct pci_dev *p)
{
    pci_write32(p, 0x10, 0xFFFFFFFF);
    uint32_t mask = pci_read32(p, 0x10) & 0xFFFC;
    uint32_t size = (~mask + 1) & 0xFFFF;
    if (!mask || size > 0x1000)
        return pci_read32(p, 0x10);
    next_io = (uint16_t)((next_io + size - 1) & ~(size - 1));
    pci_write32(p, 0x10, next_io | 1);
    kprintf("COLO-GUEST PCI %02x:%02x.%u BAR0 unassigned: put at io 0x%x size 0x%x\n",
            p->bus, p->dev, p->fn, next_io, size);
    next_io = (uint16_t)(next_io + size);
    return pci_read32(p, 0x10);
}

void virtio_pci_start(struct virtio_dev *v, struct pci_dev *p, uint32_t wanted)
{
    v->pci = p;
    uint32_t bar0 = pci_read32(p, 0x10);
    if ((bar0 & 1) && (bar0 & ~3u) == 0)
        bar0 = assign_io_bar0(p);
    if (!(bar0 & 1) || (bar0 & ~3u) == 0)
        fatal("virtio %04x:%04x at %02x:%02x.%u: BAR0 is not an I/O BAR (0x%x): "
              "a legacy (transitional) virtio-pci device is needed",
              p->vendor, p->device, p->bus, p->dev, p->fn, bar0);
    if (p->irq_line == 0 || p->irq_line >= 16 || p->irq_line == 2)
        fatal("virtio %04x:%04x at %02x:%02x.%u: no usable IRQ line in config 0x3C (%u)",
              p->vendor, p->device, p->bus, p->dev, p->fn, p->irq_line);
    v->io = bar0 & 0xFFFC;
    /* Command register: I/O space on, bus master on, INTx not disabled. */
    uint16_t cmd = pci_read16(p, 0x04);
    pci_write16(p, 0x04, (cmd | 0x1 | 0x4) & ~0x400);
    outb(v->io + VIRTIO_REG_STATUS, 0);                       /* reset */
    outb(v->io + VIRTIO_REG_STATUS, VIRTIO_STATUS_ACK);
    outb(v->io + VIRTIO_REG_STATUS, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER);
    v->features = inl(v->io + VIRTIO_REG_DEVICE_FEATURES) & wanted;
    outl(v->io + VIRTIO_REG_GUEST_FEATURES, v->features);
}

void virtio_pci_setup_queue(struct virtio_dev *v, struct virtq *q, uint16_t index)
{
    outw(v->io + VIRTIO_REG_QUEUE_SELECT, index);
    uint16_t size = inw(v->io + VIRTIO_REG_QUEUE_SIZE);
    if (size == 0 || size > 256 || (size & (size - 1)))
        fatal("virtio queue %u: unusable size %u", index, size);
    /* Legacy layout: desc[size], avail (6 + 2*size), pad to 4096, used. */
    uint64_t desc_sz = 16ull * size, avail_sz = 6 + 2ull * size;
    uint64_t used_off = (desc_sz + avail_sz + 4095) & ~4095ull;
    uint64_t used_sz = 6 + 8ull * size;
    uint64_t pages = (used_off + used_sz + 4095) / 4096;
    uint8_t *mem = alloc_pages(pages);
    q->index = index;
    q->size = size;
    q->desc = (struct vring_desc *)mem;
    q->avail = (volatile uint16_t *)(mem + desc_sz);
    q->used = mem + used_off;
    q->io_base = v->io;
    for (uint16_t i = 0; i < size; i++)
        q->desc[i].next = i + 1;
    q->free_head = 0;
    q->num_free = size;
    q->last_used = 0;
    outl(v->io + VIRTIO_REG_QUEUE_PFN, (uint32_t)((uint64_t)mem >> 12));
}

static void on_irq(void *arg)
{
    struct virtio_dev *v = arg;
    if (inb(v->io + VIRTIO_REG_ISR))      /* read-to-clear: deasserts INTx */
        v->pending = 1;
}

void virtio_pci_ready(struct virtio_dev *v)
{
    pic_set_level(v->pci->irq_line);
    irq_register(v->pci->irq_line, on_irq, v);
    outb(v->io + VIRTIO_REG_STATUS,
         VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK);
}

int virtq_add(struct virtq *q, const uint64_t *addr, const uint32_t *len,
              const int *writable, int n, void *cookie)
{
    if (q->num_free < n)
        return -1;
    uint16_t head = q->free_head, d = head, last = head;
    for (int i = 0; i < n; i++) {
        q->desc[d].addr = addr[i];
        q->desc[d].len = len[i];
        q->desc[d].flags = (writable[i] ? VRING_DESC_F_WRITE : 0) |
                           (i + 1 < n ? VRING_DESC_F_NEXT : 0);
        last = d;
        d = q->desc[d].next;
    }
    q->free_head = q->desc[last].next;
    q->num_free -= n;
    q->cookie[head] = cookie;
    uint16_t idx = q->avail[1];
    q->avail[2 + (idx & (q->size - 1))] = head;
    barrier();                        /* ring entry before the index (x86: TSO) */
    q->avail[1] = idx + 1;
    return head;
}

void virtq_notify(struct virtq *q)
{
    mb();                             /* avail idx visible before the kick */
    outw(q->io_base + VIRTIO_REG_QUEUE_NOTIFY, q->index);
}

void *virtq_get(struct virtq *q, uint32_t *len)
{
    volatile uint16_t *used_idx = (volatile uint16_t *)(q->used + 2);
    if (*used_idx == q->last_used)
        return 0;
    barrier();
    volatile struct vring_used_elem *e =
        (volatile struct vring_used_elem *)(q->used + 4) + (q->last_used & (q->size - 1));
    uint16_t head = (uint16_t)e->id;
    if (len)
        *len = e->len;
    q->last_used++;
    /* Return the chain to the free list. */
    uint16_t d = head;
    int n = 1;
    while (q->desc[d].flags & VRING_DESC_F_NEXT) {
        d = q->desc[d].next;
        n++;
    }
    q->desc[d].next = q->free_head;
    q->free_head = head;
    q->num_free += n;
    return q->cookie[head];
}
