/* PCI configuration mechanism #1. Every access is two port I/Os, each a VM
 * exit, so the scan reads as little as it can: vendor id first, and the
 * header type only for function 0. */
#include "pci.h"
#include "io.h"
#include "console.h"

#define MAX_DEVS 32
static struct pci_dev devs[MAX_DEVS];
static int ndevs;

static uint32_t addr(const struct pci_dev *d, uint8_t off)
{
    return 0x80000000u | (uint32_t)d->bus << 16 | (uint32_t)d->dev << 11 |
           (uint32_t)d->fn << 8 | (off & 0xFC);
}

uint32_t pci_read32(const struct pci_dev *d, uint8_t off)
{
    outl(0xCF8, addr(d, off));
    return inl(0xCFC);
}

uint16_t pci_read16(const struct pci_dev *d, uint8_t off)
{
    outl(0xCF8, addr(d, off));
    return inw(0xCFC + (off & 2));
}

uint8_t pci_read8(const struct pci_dev *d, uint8_t off)
{
    outl(0xCF8, addr(d, off));
    return inb(0xCFC + (off & 3));
}

void pci_write32(const struct pci_dev *d, uint8_t off, uint32_t v)
{
    outl(0xCF8, addr(d, off));
    outl(0xCFC, v);
}

void pci_write16(const struct pci_dev *d, uint8_t off, uint16_t v)
{
    outl(0xCF8, addr(d, off));
    outw(0xCFC + (off & 2), v);
}

void pci_write8(const struct pci_dev *d, uint8_t off, uint8_t v)
{
    outl(0xCF8, addr(d, off));
    outb(0xCFC + (off & 3), v);
}

static void scan_bus(uint8_t bus, int depth);

static void scan_fn(uint8_t bus, uint8_t dev, uint8_t fn, int depth)
{
    struct pci_dev d = { .bus = bus, .dev = dev, .fn = fn };
    uint32_t id = pci_read32(&d, 0);
    if ((id & 0xFFFF) == 0xFFFF)
        return;
    d.vendor = id & 0xFFFF;
    d.device = id >> 16;
    d.irq_line = pci_read8(&d, 0x3C);
    kprintf("COLO-GUEST PCI %02x:%02x.%u %04x:%04x irq=%u\n",
            bus, dev, fn, d.vendor, d.device, d.irq_line);
    if (ndevs < MAX_DEVS)
        devs[ndevs++] = d;
    /* PCI-PCI bridge (class 06, subclass 04): follow its secondary bus. */
    if ((pci_read32(&d, 0x08) >> 16) == 0x0604 && depth < 4)
        scan_bus(pci_read8(&d, 0x19), depth + 1);
}

static void scan_bus(uint8_t bus, int depth)
{
    for (uint8_t dev = 0; dev < 32; dev++) {
        struct pci_dev d = { .bus = bus, .dev = dev, .fn = 0 };
        if (pci_read16(&d, 0) == 0xFFFF)
            continue;
        scan_fn(bus, dev, 0, depth);
        if (pci_read8(&d, 0x0E) & 0x80)          /* multi-function */
            for (uint8_t fn = 1; fn < 8; fn++)
                scan_fn(bus, dev, fn, depth);
    }
}

void pci_scan(void)
{
    ndevs = 0;
    scan_bus(0, 0);
}

struct pci_dev *pci_find(uint16_t vendor, uint16_t device, int n)
{
    for (int i = 0; i < ndevs; i++)
        if (devs[i].vendor == vendor && devs[i].device == device && n-- == 0)
            return &devs[i];
    return 0;
}
