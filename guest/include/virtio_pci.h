/* Legacy ("transitional") virtio over PCI: registers in the I/O BAR0, split
 * virtqueues in the legacy layout (descriptors, avail ring, then the used ring
 * on the next 4 KiB boundary, the queue's address given as a page number). */
#pragma once
#include <stdint.h>
#include "pci.h"
#include "io.h"

/* Legacy register offsets from BAR0 (no MSI-X, so config starts at 0x14). */
#define VIRTIO_REG_DEVICE_FEATURES 0x00
#define VIRTIO_REG_GUEST_FEATURES  0x04
#define VIRTIO_REG_QUEUE_PFN       0x08
#define VIRTIO_REG_QUEUE_SIZE      0x0C
#define VIRTIO_REG_QUEUE_SELECT    0x0E
#define VIRTIO_REG_QUEUE_NOTIFY    0x10
#define VIRTIO_REG_STATUS          0x12
#define VIRTIO_REG_ISR             0x13
#define VIRTIO_REG_CONFIG          0x14

#define VIRTIO_STATUS_ACK       1
#define VIRTIO_STATUS_DRIVER    2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FAILED    128

#define VRING_DESC_F_NEXT  1
#define VRING_DESC_F_WRITE 2

struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vring_used_elem { uint32_t id, len; };

struct virtq {
    uint16_t index, size;
    struct vring_desc *desc;
    volatile uint16_t *avail;        /* flags, idx, ring[size], used_event */
    volatile uint8_t *used;          /* flags, idx, ring[size] of used_elem */
    uint16_t free_head, num_free, last_used;
    uint16_t io_base;
    void *cookie[256];               /* per head descriptor, driver data */
};

struct virtio_dev {
    struct pci_dev *pci;
    uint16_t io;                     /* BAR0 I/O port base */
    uint32_t features;               /* negotiated */
    volatile int pending;            /* set by the IRQ handler, cleared by the driver */
};

/* Reset, ACK|DRIVER, negotiate (device & wanted). Fatal on a device with no
 * I/O BAR0 or no IRQ line. Also enables I/O decoding and bus mastering. */
void virtio_pci_start(struct virtio_dev *v, struct pci_dev *p, uint32_t wanted);
void virtio_pci_setup_queue(struct virtio_dev *v, struct virtq *q, uint16_t index);
/* DRIVER_OK, and the interrupt handler on the device's PCI IRQ line. */
void virtio_pci_ready(struct virtio_dev *v);

/* Chain n buffers (addr, len, device-writable?) as one request; returns the
 * head id or -1 if the ring is full. Makes it available but does not notify. */
int virtq_add(struct virtq *q, const uint64_t *addr, const uint32_t *len,
              const int *writable, int n, void *cookie);
void virtq_notify(struct virtq *q);
/* Next completed request: its cookie and the bytes written; 0 if none. */
void *virtq_get(struct virtq *q, uint32_t *len);

static inline uint8_t virtio_cfg8(struct virtio_dev *v, int off) { return inb(v->io + VIRTIO_REG_CONFIG + off); }
static inline uint32_t virtio_cfg32(struct virtio_dev *v, int off) { return inl(v->io + VIRTIO_REG_CONFIG + off); }
