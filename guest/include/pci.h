/* PCI configuration mechanism #1 (ports 0xCF8/0xCFC) and a bus-0 scan. */
#pragma once
#include <stdint.h>

struct pci_dev {
    uint8_t bus, dev, fn;
    uint16_t vendor, device;
    uint8_t irq_line;       /* config 0x3C, as firmware / vmmd assigned it */
};

uint32_t pci_read32(const struct pci_dev *d, uint8_t off);
uint16_t pci_read16(const struct pci_dev *d, uint8_t off);
uint8_t pci_read8(const struct pci_dev *d, uint8_t off);
void pci_write32(const struct pci_dev *d, uint8_t off, uint32_t v);
void pci_write16(const struct pci_dev *d, uint8_t off, uint16_t v);
void pci_write8(const struct pci_dev *d, uint8_t off, uint8_t v);

/* Scans bus 0 (and buses behind PCI-PCI bridges) once; prints each function. */
void pci_scan(void);
/* The n-th function with this vendor/device id (n from 0), or 0. */
struct pci_dev *pci_find(uint16_t vendor, uint16_t device, int n);
